//! ADD, DEL and CHECK.
//!
//! An attachment is identified, as the spec says, by (CNI_CONTAINERID,
//! CNI_IFNAME); every piece of it can be found again from that pair alone,
//! which is what makes DEL work without the netns or a prevResult:
//!
//! | piece | where | found by |
//! |---|---|---|
//! | address lease | the IPAM plugin (host-local: a file per IP) | the IPAM plugin's DEL, same pair |
//! | host veth `kx<hex ip>` | node namespace | its alias `kxdp-cni:<container id>/<ifname>` |
//! | container end CNI_IFNAME | container namespace | name (goes with the host end) |
//! | pod in kxdp-control | control's run-time pods | name `<container id>/<ifname>` on `node` |

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use kxdp_proto::control::AddPodRequest;

use crate::control::Control;
use crate::env::{CniEnv, Command};
use crate::error::{CniError, Result, CHECK_FAILED, IPAM_FAILED, SETUP_FAILED, UNKNOWN_CONTAINER};
use crate::ipam::{self, Lease};
use crate::link::{self, ip, Ns};
use crate::types::{CniResult, Interface, IpConfig, NetConf, Route};

/// Offloads turned off inside the pod: AF_XDP forwards frames as they are,
/// so checksums must be complete and segments wire-sized.
pub const POD_OFFLOADS: &[&str] = &["tx", "tso", "gso"];
/// Offloads turned off on the node's end.
pub const HOST_OFFLOADS: &[&str] = &["tx"];
/// `ethtool -k`'s names for them, for CHECK.
const POD_OFFLOAD_NAMES: &[&str] = &[
    "tx-checksumming",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
];
const HOST_OFFLOAD_NAMES: &[&str] = &["tx-checksumming"];

/// A pod's eth0 MAC: `0a:58:` + its IP bytes (kxdp's convention, as in
/// control/src/conventions.rs, and the CNI bridge plugin's).
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The node-side veth of a pod: `kx` + 8 hex digits of its IP (kxdp's
/// convention, as in control/src/conventions.rs).
pub fn pod_ifname(ip: Ipv4Addr) -> String {
    format!("kx{:08x}", u32::from(ip))
}

/// The pod's name in kxdp-control: `<container id>/<ifname>`, the pair the
/// spec makes unique per attachment, and all that DEL is sure to get.
pub fn pod_name(env: &CniEnv) -> String {
    format!("{}/{}", env.container_id, env.ifname)
}

/// The host veth's alias, which marks it as this attachment's.
pub fn veth_alias(env: &CniEnv) -> String {
    format!("kxdp-cni:{}/{}", env.container_id, env.ifname)
}

fn netns_must_exist(path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(CniError::new(
            UNKNOWN_CONTAINER,
            format!("network namespace {} does not exist", path.display()),
        ))
    }
}

/// What an ADD has done so far, undone in reverse when a later step fails.
struct Undo<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    raw: &'a [u8],
    control: &'a Control,
    lease: bool,
    veth: Option<String>,
    registered: bool,
}

impl Undo<'_> {
    /// Undoes everything done; what could not be undone goes into `err`'s details.
    fn run(self, err: &mut CniError) {
        let mut left = Vec::new();
        if self.registered {
            if let Err(e) = self
                .control
                .unregister(&self.conf.node, &pod_name(self.env))
            {
                left.push(format!(
                    "pod {} may still be registered ({e})",
                    pod_name(self.env)
                ));
            }
        }
        if let Some(host) = &self.veth {
            if let Err(e) = ip(Ns::Host, &["link", "del", host]) {
                left.push(format!("veth {host} not deleted ({e})"));
            }
        }
        if self.lease {
            if let Err(e) = ipam::exec(self.conf.ipam_type(), Command::Del, self.env, self.raw) {
                left.push(format!("address lease not released ({e})"));
            }
        }
        if left.is_empty() {
            err.add_details("rolled back: nothing was left in place");
        } else {
            err.add_details(&format!("rollback incomplete: {}", left.join("; ")));
        }
    }
}

/// ADD: address, veth pair, registration. All or nothing.
pub fn add(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<CniResult> {
    let netns = env.netns()?;
    netns_must_exist(netns)?;
    let control = Control::new(&conf.control_socket)?;

    // The address comes first: it names the host veth and the MAC.
    let ipam_result = ipam::exec(conf.ipam_type(), Command::Add, env, raw)?
        .ok_or_else(|| CniError::new(IPAM_FAILED, "IPAM ADD gave no result"))?;
    let mut undo = Undo {
        env,
        conf,
        raw,
        control: &control,
        lease: true,
        veth: None,
        registered: false,
    };
    match add_after_lease(env, conf, netns, &control, &ipam_result, &mut undo) {
        Ok(result) => Ok(result),
        Err(mut e) => {
            undo.run(&mut e);
            Err(e)
        }
    }
}

fn add_after_lease(
    env: &CniEnv,
    conf: &NetConf,
    netns: &Path,
    control: &Control,
    ipam_result: &CniResult,
    undo: &mut Undo<'_>,
) -> Result<CniResult> {
    let lease = Lease::from_result(ipam_result)?;
    let pod_ip = lease.address.addr();
    let host = pod_ifname(pod_ip);
    let mac = pod_mac(pod_ip);
    let mtu = conf.mtu.to_string();
    let netns_arg = netns.display().to_string();
    let gw = lease.gateway.to_string();
    let routes = extra_routes(&lease)?;

    if link::link(Ns::Host, &host)?.is_some() {
        return Err(CniError::new(
            SETUP_FAILED,
            format!("interface {host} (the veth of {pod_ip}) exists already on this node"),
        ));
    }
    // One TX and one RX queue per end: the dataplane binds one AF_XDP socket
    // per queue it serves, queue 0.
    #[rustfmt::skip]
    ip(Ns::Host, &[
        "link", "add", &host, "mtu", &mtu, "numtxqueues", "1", "numrxqueues", "1",
        "type", "veth", "peer", "name", &env.ifname, "address", &mac, "mtu", &mtu,
        "netns", &netns_arg, "numtxqueues", "1", "numrxqueues", "1",
    ])?;
    undo.veth = Some(host.clone());
    ip(Ns::Host, &["link", "set", &host, "alias", &veth_alias(env)])?;
    link::offloads_off(Ns::Host, &host, HOST_OFFLOADS)?;
    ip(Ns::Host, &["link", "set", &host, "up"])?;

    let pod = Ns::Container(netns);
    link::offloads_off(pod, &env.ifname, POD_OFFLOADS)?;
    ip(pod, &["link", "set", &env.ifname, "up"])?;
    ip(
        pod,
        &[
            "addr",
            "add",
            &lease.address.to_string(),
            "dev",
            &env.ifname,
        ],
    )?;
    ip(
        pod,
        &["route", "add", "default", "via", &gw, "dev", &env.ifname],
    )?;
    for r in &routes {
        let via = r.gw.as_deref().unwrap_or(&gw);
        ip(
            pod,
            &["route", "add", &r.dst, "via", via, "dev", &env.ifname],
        )?;
    }

    let host_mac = link::link(Ns::Host, &host)?
        .map(|l| l.address)
        .unwrap_or_default();

    let req = AddPodRequest {
        node: conf.node.clone(),
        name: pod_name(env),
        ip: pod_ip.to_string(),
        mac: mac.clone(),
        ifname: host.clone(),
        // The kubelet names the pod's namespace (network policies select
        // by it); its labels reach control from the API server, not the CNI.
        namespace: env
            .args
            .iter()
            .find(|(k, _)| k == "K8S_POD_NAMESPACE")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        ..AddPodRequest::default()
    };
    if let Err(e) = control.add_pod(req) {
        // Control may have recorded the pod before failing (e.g. the node's
        // dataplane did not take it in time): unregister it on the way back.
        undo.registered = e.reached;
        return Err(e.error);
    }

    let mut all_routes = vec![Route {
        dst: "0.0.0.0/0".into(),
        gw: Some(gw.clone()),
    }];
    all_routes.extend(routes);
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host,
                mac: host_mac,
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac,
                sandbox: Some(netns_arg),
            },
        ],
        ips: vec![IpConfig {
            address: lease.address.to_string(),
            gateway: Some(gw),
            interface: Some(1),
        }],
        routes: all_routes,
        dns: if lease.dns.is_empty() {
            conf.dns.clone()
        } else {
            lease.dns
        },
    })
}

/// The IPAM configuration's routes other than the default route (which kxdp
/// always sets), IPv4 only.
fn extra_routes(lease: &Lease) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for r in &lease.routes {
        let dst: Ipv4Net = r.dst.parse().map_err(|_| {
            CniError::new(
                IPAM_FAILED,
                format!(
                    "IPAM route {:?} is not an IPv4 prefix: kxdp is IPv4-only",
                    r.dst
                ),
            )
        })?;
        if let Some(gw) = &r.gw {
            gw.parse::<Ipv4Addr>().map_err(|_| {
                CniError::new(
                    IPAM_FAILED,
                    format!("IPAM route gateway {gw:?} is not IPv4"),
                )
            })?;
        }
        if dst.prefix_len() != 0 {
            out.push(Route {
                dst: dst.trunc().to_string(),
                gw: r.gw.clone(),
            });
        }
    }
    Ok(out)
}

/// DEL: unregister, delete the veth, release the address. Idempotent: each
/// step finds its piece by the (container id, ifname) pair and skips it when
/// gone. A control process that cannot be reached stops the DEL before the
/// address is released (so that it cannot be handed to another pod while
/// control still has it); the runtime retries DEL.
pub fn del(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<()> {
    let control = Control::new(&conf.control_socket)?;
    control.unregister(&conf.node, &pod_name(env))?;

    let alias = veth_alias(env);
    for l in link::links(Ns::Host)? {
        if l.is_veth() && l.ifalias.as_deref() == Some(alias.as_str()) {
            delete_link(Ns::Host, &l.ifname)?;
        }
    }
    // The container end goes with the host end; this catches a veth whose
    // alias was never set (an ADD killed between two steps). A namespace that
    // is gone, or cannot be entered, has no interfaces left to delete.
    if let Some(netns) = env.netns.as_deref().filter(|p| p.exists()) {
        match link::link(Ns::Container(netns), &env.ifname) {
            Ok(Some(l)) if l.is_veth() => delete_link(Ns::Container(netns), &l.ifname)?,
            Ok(_) => {}
            Err(e) => eprintln!("kxdp-cni: DEL: not looking into {}: {e}", netns.display()),
        }
    }

    ipam::exec(conf.ipam_type(), Command::Del, env, raw).map(|_| ())
}

/// Deletes a link that may vanish meanwhile (its peer deleted): gone is fine.
fn delete_link(ns: Ns<'_>, name: &str) -> Result<()> {
    match ip(ns, &["link", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if link::link(ns, name)?.is_none() => Ok(()),
        Err(e) => Err(e),
    }
}

/// CHECK: everything ADD set up is still as the prevResult says.
pub fn check(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<()> {
    let prev = conf.prev_result()?;
    let netns = env.netns()?;
    netns_must_exist(netns)?;

    let bad = |msg: String| CniError::new(CHECK_FAILED, msg);
    let (index, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            bad(format!(
                "prevResult has no interface {} in a sandbox",
                env.ifname
            ))
        })?;
    let ipc = prev
        .ips
        .iter()
        .find(|i| i.interface == Some(index))
        .ok_or_else(|| bad(format!("prevResult has no address on {}", env.ifname)))?;
    let lease = Lease::from_result(&CniResult {
        ips: vec![ipc.clone()],
        ..Default::default()
    })
    .map_err(|e| bad(format!("prevResult: {}", e.msg)))?;
    let pod_ip = lease.address.addr();
    let host = pod_ifname(pod_ip);
    let mac = pod_mac(pod_ip);

    let mut problems = Vec::new();
    if let Err(e) = ipam::exec(conf.ipam_type(), Command::Check, env, raw) {
        problems.push(format!("address lease: {}", e.msg));
    }
    let pod = Ns::Container(netns);
    match link::link(pod, &env.ifname)? {
        None => problems.push(format!(
            "no interface {} in {}",
            env.ifname,
            netns.display()
        )),
        Some(l) => {
            if !l.address.eq_ignore_ascii_case(&mac) || !l.address.eq_ignore_ascii_case(&iface.mac)
            {
                problems.push(format!(
                    "{}: MAC {} (expected {mac}, prevResult {})",
                    env.ifname, l.address, iface.mac
                ));
            }
            if l.mtu != conf.mtu {
                problems.push(format!(
                    "{}: MTU {} (expected {})",
                    env.ifname, l.mtu, conf.mtu
                ));
            }
            if !l.is_up() {
                problems.push(format!("{} is down", env.ifname));
            }
            let addrs = link::ipv4_addrs(pod, &env.ifname)?;
            if !addrs.contains(&(pod_ip, lease.address.prefix_len())) {
                problems.push(format!("{}: no address {}", env.ifname, lease.address));
            }
            let gw = lease.gateway.to_string();
            let has_default = link::ipv4_routes(pod)?.iter().any(|r| {
                r.dst == "default"
                    && r.gateway.as_deref() == Some(gw.as_str())
                    && r.dev.as_deref() == Some(env.ifname.as_str())
            });
            if !has_default {
                problems.push(format!("no default route via {gw} dev {}", env.ifname));
            }
            let on = link::offloads_on(pod, &env.ifname, POD_OFFLOAD_NAMES)?;
            if !on.is_empty() {
                problems.push(format!("{}: offloads on: {}", env.ifname, on.join(", ")));
            }
        }
    }
    match link::link(Ns::Host, &host)? {
        None => problems.push(format!("no host interface {host}")),
        Some(l) => {
            if l.ifalias.as_deref() != Some(veth_alias(env).as_str()) {
                problems.push(format!(
                    "{host} is not this attachment's (alias {:?})",
                    l.ifalias.as_deref().unwrap_or_default()
                ));
            }
            if !l.is_up() {
                problems.push(format!("{host} is down"));
            }
            if l.mtu != conf.mtu {
                problems.push(format!("{host}: MTU {} (expected {})", l.mtu, conf.mtu));
            }
            let on = link::offloads_on(Ns::Host, &host, HOST_OFFLOAD_NAMES)?;
            if !on.is_empty() {
                problems.push(format!("{host}: offloads on: {}", on.join(", ")));
            }
        }
    }
    let control = Control::new(&conf.control_socket)?;
    let name = pod_name(env);
    match control.find_pod(&conf.node, &name)? {
        None => problems.push(format!(
            "pod {name} is not registered with kxdp-control on node {}",
            conf.node
        )),
        Some(p) => {
            if p.ip != pod_ip.to_string() || !p.mac.eq_ignore_ascii_case(&mac) || p.ifname != host {
                problems.push(format!(
                    "kxdp-control holds pod {name} as ip {} mac {} ifname {} (expected {pod_ip} {mac} {host})",
                    p.ip, p.mac, p.ifname
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(bad(format!(
            "{} problem(s): {}",
            problems.len(),
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_match_control() {
        // The examples of control/src/conventions.rs.
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 1, 2)), "0a:58:0a:f4:01:02");
        assert_eq!(pod_ifname(Ipv4Addr::new(10, 244, 1, 2)), "kx0af40102");
        assert_eq!(pod_ifname(Ipv4Addr::new(10, 244, 255, 254)), "kx0af4fffe");
    }

    #[test]
    fn extra_routes_skip_default_and_refuse_ipv6() {
        let lease = |routes: Vec<Route>| Lease {
            address: "10.244.1.2/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            routes,
            dns: Default::default(),
        };
        let r = |dst: &str| Route {
            dst: dst.into(),
            gw: None,
        };
        let got = extra_routes(&lease(vec![r("0.0.0.0/0"), r("192.168.7.9/24")])).unwrap();
        assert_eq!(got, vec![r("192.168.7.0/24")]);
        assert_eq!(
            extra_routes(&lease(vec![r("::/0")])).unwrap_err().code,
            IPAM_FAILED
        );
    }
}
