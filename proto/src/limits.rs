//! What either API accepts at most, in one place: both servers (the control
//! process, for the cluster file, `kxdpctl apply` and `UpsertService`; each
//! dataplane, a separate trust boundary, for `Sync` and `Update`) refuse a
//! request over a limit whole, with INVALID_ARGUMENT naming the field, the
//! limit and the value, and apply nothing of it. A gRPC message over
//! [`MAX_MESSAGE_SIZE`] is refused by gRPC itself before it is decoded
//! (OUT_OF_RANGE, naming both sizes).
//!
//! The limits sit above Kubernetes' scalability thresholds
//! (sig-scalability `thresholds.md`: 10,000 services per cluster, 250
//! endpoints per service), so a cluster Kubernetes supports always fits,
//! while one request can no longer make every node allocate without bound.

/// Largest gRPC message either side accepts, in bytes: a full state of
/// 10,000 services with 100,000 endpoints and Kubernetes-length names is
/// ~7 MiB (`kxdp-svc-scale size`), over tonic's 4 MiB default, so one at
/// every other limit ([`MAX_SERVICES`], [`MAX_BACKENDS`]) is ~18 MiB; 32 MiB
/// leaves room over that. A decoded message takes several times its size in
/// memory. (It was 64 MiB.)
pub const MAX_MESSAGE_SIZE: usize = 32 << 20;

/// Most services a state holds: twice Kubernetes' 10,000 per cluster.
/// Every node holds every service.
pub const MAX_SERVICES: usize = 20_000;

/// Most endpoints one service has: 20 times Kubernetes' threshold of 250,
/// five full EndpointSlices (1,000 each at most). It bounds a service
/// port's Maglev table to [`MAX_MAGLEV_TABLE_SIZE`] slots.
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 5_000;

/// Most ports one service has: each is a frontend (times the NodePort and
/// outside addresses) with its own copy of the backends and its own Maglev
/// table.
pub const MAX_PORTS_PER_SERVICE: usize = 100;

/// Most external plus LoadBalancer IPs one service has: each serves every
/// port of the service as a frontend of its own.
pub const MAX_OUTSIDE_IPS_PER_SERVICE: usize = 64;

/// Most backends a state holds, summed over services: endpoints times
/// ports, what the dataplane keeps a backend entry and Maglev slots for.
/// 2.5 times the 100,000 of the 10,000-service scale test.
pub const MAX_BACKENDS: usize = 250_000;

/// Largest Maglev table, in slots of 4 bytes (2 MiB): the size kxdp-core's
/// `Maglev::size_for` picks for [`MAX_ENDPOINTS_PER_SERVICE`] (a prime at
/// least 100 times the backends), and the largest it ever picks.
pub const MAX_MAGLEV_TABLE_SIZE: usize = 524_309;

/// Most conntrack entries one `ListConntrack` page holds; a request's
/// `limit` of 0 means [`DEFAULT_CONNTRACK_PAGE`].
pub const MAX_CONNTRACK_PAGE: usize = 10_000;
/// A `ListConntrack` page's size when the request does not say.
pub const DEFAULT_CONNTRACK_PAGE: usize = 1_000;

/// A limit one request goes over: where, and the message (the limit and
/// the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The field, under the service's path (`endpoints`, `ports`, ...).
    pub field: &'static str,
    pub message: String,
}

fn over(field: &'static str, what: &str, n: usize, max: usize, per: &str) -> OverLimit {
    OverLimit {
        field,
        message: format!("{n} {what}, over the limit of {max}{per}"),
    }
}

/// Checks one service's list lengths, before anything is parsed: `ports`,
/// `endpoints`, external and LoadBalancer IPs.
pub fn check_service(
    ports: usize,
    endpoints: usize,
    external_ips: usize,
    load_balancer_ips: usize,
) -> Result<(), OverLimit> {
    if ports > MAX_PORTS_PER_SERVICE {
        return Err(over(
            "ports",
            "ports",
            ports,
            MAX_PORTS_PER_SERVICE,
            " per service",
        ));
    }
    if endpoints > MAX_ENDPOINTS_PER_SERVICE {
        return Err(over(
            "endpoints",
            "endpoints",
            endpoints,
            MAX_ENDPOINTS_PER_SERVICE,
            " per service",
        ));
    }
    let outside = external_ips + load_balancer_ips;
    if outside > MAX_OUTSIDE_IPS_PER_SERVICE {
        return Err(over(
            "external_ips",
            "external and LoadBalancer IPs",
            outside,
            MAX_OUTSIDE_IPS_PER_SERVICE,
            " per service",
        ));
    }
    Ok(())
}

/// Checks a whole state's services: how many, and their backends
/// (endpoints times ports) summed. `services` yields (ports, endpoints).
pub fn check_services(services: impl IntoIterator<Item = (usize, usize)>) -> Result<(), OverLimit> {
    let (mut n, mut backends) = (0, 0);
    for (ports, endpoints) in services {
        n += 1;
        backends += ports * endpoints;
    }
    if n > MAX_SERVICES {
        return Err(over("services", "services", n, MAX_SERVICES, ""));
    }
    if backends > MAX_BACKENDS {
        return Err(over(
            "services",
            "backends (endpoints times ports, summed over services)",
            backends,
            MAX_BACKENDS,
            "",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_refused_one_past_it_with_its_value() {
        assert!(check_service(MAX_PORTS_PER_SERVICE, MAX_ENDPOINTS_PER_SERVICE, 32, 32).is_ok());
        let e = check_service(MAX_PORTS_PER_SERVICE + 1, 1, 0, 0).unwrap_err();
        assert_eq!(e.field, "ports");
        assert_eq!(e.message, "101 ports, over the limit of 100 per service");
        let e = check_service(1, MAX_ENDPOINTS_PER_SERVICE + 1, 0, 0).unwrap_err();
        assert_eq!(e.field, "endpoints");
        assert_eq!(
            e.message,
            "5001 endpoints, over the limit of 5000 per service"
        );
        let e = check_service(1, 1, 40, 25).unwrap_err();
        assert_eq!(e.field, "external_ips");
        assert!(
            e.message.starts_with("65 external and LoadBalancer IPs"),
            "{e:?}"
        );

        assert!(check_services(vec![(1, 1); MAX_SERVICES]).is_ok());
        let e = check_services(vec![(1, 1); MAX_SERVICES + 1]).unwrap_err();
        assert_eq!(e.message, "20001 services, over the limit of 20000");
        assert!(check_services(vec![(50, 5_000)]).is_ok());
        let e = check_services(vec![(50, 5_000), (1, 1)]).unwrap_err();
        assert!(e.message.starts_with("250001 backends"), "{e:?}");
    }
}
