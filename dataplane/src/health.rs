//! kube-proxy's health check for externalTrafficPolicy Local services: an
//! HTTP server per (NodePort address, `health_check_node_port`) that answers
//! any request with 200 while this node has ready local endpoints for the
//! service and 503 otherwise, so a cloud load balancer only sends to nodes
//! that keep the client's address and can serve it. The body has
//! kube-proxy's shape:
//! `{"service":{"namespace":"default","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}`.
//!
//! The servers run on the dataplane's tokio runtime; the engine thread
//! reconciles them with [`HealthChecks::sync`] after each write (binding is
//! synchronous, so a port that cannot be bound is logged there). The
//! uplink's XDP program does not redirect these ports: the kernel delivers
//! them here.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kxdp_proto::ops::{self, Response};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// What one health check port reports: the service, and its ready local
/// endpoints (updated in place on every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// "namespace/name".
    pub service: String,
    pub local_endpoints: usize,
}

struct Server {
    service: String,
    local: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The running health check servers, by (address, port).
pub struct HealthChecks {
    rt: Option<Handle>,
    servers: BTreeMap<(Ipv4Addr, u16), Server>,
}

impl HealthChecks {
    /// Servers run on `rt`; without one (an engine without a runtime)
    /// nothing is served.
    pub fn new(rt: Option<Handle>) -> HealthChecks {
        HealthChecks {
            rt,
            servers: BTreeMap::new(),
        }
    }

    /// Makes exactly `want` the ports served: new ones bound, gone ones
    /// stopped, the rest told their new endpoint count.
    pub fn sync(&mut self, want: &BTreeMap<(Ipv4Addr, u16), Want>) {
        let Some(rt) = self.rt.clone() else {
            return;
        };
        self.servers.retain(|at, s| {
            let keep = want.get(at).is_some_and(|w| w.service == s.service);
            if !keep {
                s.task.abort();
                log::info!("health check {}:{} for {} stopped", at.0, at.1, s.service);
            }
            keep
        });
        for (&at, w) in want {
            if let Some(s) = self.servers.get(&at) {
                s.local.store(w.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let local = Arc::new(AtomicUsize::new(w.local_endpoints));
            let listener = {
                let _guard = rt.enter();
                ops::bind(SocketAddr::from(at))
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    log::error!("health check {}:{} for {}: {e}", at.0, at.1, w.service);
                    continue;
                }
            };
            log::info!("health check {}:{} for {}", at.0, at.1, w.service);
            let task = rt.spawn(serve(listener, w.service.clone(), local.clone()));
            self.servers.insert(
                at,
                Server {
                    service: w.service.clone(),
                    local,
                    task,
                },
            );
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, service: String, local: Arc<AtomicUsize>) {
    // Every path gets the same answer, as from kube-proxy.
    ops::serve(listener, move |_| {
        let r = response(&service, local.load(Ordering::Relaxed));
        async move { r }
    })
    .await
}

/// kube-proxy's answer for a service with `local` ready local endpoints.
pub fn response(service: &str, local: usize) -> Response {
    let (namespace, name) = service.split_once('/').unwrap_or(("", service));
    let body = serde_json::json!({
        "service": { "namespace": namespace, "name": name },
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    let mut r = Response::json(if local > 0 { 200 } else { 503 }, &body);
    r.headers
        .push(("X-Load-Balancing-Endpoint-Weight", local.to_string()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_testkit::free_port;
    use std::time::Duration;

    fn get(at: (Ipv4Addr, u16)) -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(SocketAddr::from(at)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn answers_200_with_local_endpoints_and_503_without_then_stops() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut hc = HealthChecks::new(Some(rt.handle().clone()));
        let at = (Ipv4Addr::LOCALHOST, free_port());
        let want = |n| {
            BTreeMap::from([(
                at,
                Want {
                    service: "default/web".into(),
                    local_endpoints: n,
                },
            )])
        };
        hc.sync(&want(2));
        let r = get(at);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["service"]["namespace"], "default");
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 2);
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
        hc.sync(&want(0));
        let r = get(at);
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("\"localEndpoints\":0"), "{r}");
        hc.sync(&BTreeMap::new());
        // The listener goes with its task (aborted, then dropped).
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(SocketAddr::from(at)).is_err()
        });
        assert!(gone, "still listening");
    }
}
