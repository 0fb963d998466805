//! The etcd store (`--store https://host:2379[,host:port...]`), after
//! flannel's etcd backend and Calico's etcd datastore. Reached over TLS with
//! a client certificate for an etcd that asks for one ([`Access`]); plaintext
//! only when `--etcd-insecure` asks for it.
//!
//! Keys, all under `/kxdp/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `config` | cluster config, JSON ([`ClusterConfig`]); written once | none |
//! | `subnets/10.244.1.0-24` | the node name holding that pod CIDR | the node's reservation |
//! | `nodes/<name>` | [`NodeRecord`], JSON | the node's reservation |
//! | `alive/<name>` | empty | the node's liveness lease |
//! | `pods/<node>/<name>` | `AddPodRequest`, protobuf | none |
//! | `services/<ns>/<name>` | `dataplane.Service`, protobuf | none |
//! | `policies/<ns>/<name>` | `control.NetworkPolicy`, protobuf | none |
//! | `namespaces/<name>` | `control.Namespace` (its labels), protobuf | none |
//!
//! Each node's control process holds two leases and keeps both alive:
//! - a **reservation** (`--subnet-reservation-ttl-s`, 24 h by default, as
//!   flannel's subnet leases): its pod CIDR and node record hang on it, so
//!   a node that is away for less keeps its CIDR, and the others keep its
//!   route (its dataplane may well still forward). A returning node finds
//!   the subnet key naming it and takes it back on a fresh reservation; a
//!   node gone for good is dropped by everyone when the reservation expires.
//! - a **liveness** lease (`--lease-ttl-s`, 15 s): only `alive/<name>`
//!   hangs on it. A node whose liveness lapsed is *unreachable*: everyone
//!   keeps its CIDR, route and pods, and takes its endpoints as not ready
//!   and not serving (as Kubernetes does for the pods of an unreachable
//!   node), so services send new flows to the other endpoints; no other
//!   endpoint or service changes because of it.
//!
//! A pod CIDR is taken with a transaction that
//! compares the subnet key's create revision with 0, so two nodes asking at
//! once never get the same one; a restarted node takes back the subnet that
//! names it. Every process lists `/kxdp/` and watches it from the listed
//! revision; after a compaction or a lost watch it lists again. Writes made
//! through the Control API (pods, services) go to etcd and come back through
//! the watch, so any node's control process can take them and every node
//! sees them. Each process programs only its own node's dataplane.
//!
//! Uniqueness across objects (pod IPs, ClusterIPs, NodePorts) is checked by
//! the process taking the write against its view of the store; two
//! processes accepting colliding writes at the same instant is possible, and
//! then the later object is left out of every plan (logged) until fixed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, EventType, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use kxdp_proto::control::{AddPodRequest, Namespace, NetworkPolicy};
use kxdp_proto::dataplane as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::Status;

use crate::cli::EtcdFlags;
use crate::cluster::{Cluster, DataplaneKind, Node};
use crate::conventions::{self, Mac};
use crate::daemon;
use crate::reconcile::Shared;
use crate::runtime::{self, Runtime};
use crate::store::{Applied, DesiredStore, Opened};

pub const PREFIX: &str = "/kxdp/";
pub const CONFIG_KEY: &str = "/kxdp/config";
pub const SUBNETS: &str = "/kxdp/subnets/";
pub const NODES: &str = "/kxdp/nodes/";
pub const ALIVE: &str = "/kxdp/alive/";
pub const PODS: &str = "/kxdp/pods/";
pub const SERVICES: &str = "/kxdp/services/";
pub const POLICIES: &str = "/kxdp/policies/";
pub const NAMESPACES: &str = "/kxdp/namespaces/";
/// etcd's default `--max-txn-ops`: most writes one transaction holds.
pub const MAX_TXN_OPS: usize = 128;

/// Default liveness lease TTL: a vanished node's endpoints are not ready
/// within this.
pub const DEFAULT_LEASE_TTL_S: i64 = 15;
/// Default reservation TTL: a node away for less keeps its pod CIDR (and
/// everyone keeps its route); flannel's subnet leases last as long.
pub const DEFAULT_RESERVATION_TTL_S: i64 = 24 * 3600;
/// Pod CIDR prefix length taken out of the cluster CIDR by default.
pub const DEFAULT_SUBNET_LEN: u8 = 24;

/// How to reach etcd: its endpoints, and the TLS settings unless plaintext
/// was asked for (`--etcd-insecure`).
#[derive(Clone)]
pub struct Access {
    pub endpoints: Vec<String>,
    /// Boxed: large, and held in every `store::Source`.
    tls: Option<Box<TlsOptions>>,
}

/// Without the TLS settings: they hold the client's private key.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Access {
    /// The store URL with its flags, checked and the TLS files read, so that
    /// a bad combination stops the process at startup:
    /// `https://h1:2379,h2:2379` needs `--etcd-ca` (and `--etcd-cert` with
    /// `--etcd-key` when etcd asks for client certificates); `http://...`
    /// needs `--etcd-insecure` and takes no TLS file.
    pub fn new(url: &str, flags: &EtcdFlags) -> anyhow::Result<Access> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s @ ("https" | "http"), rest)) => (s, rest),
            _ => bail!(
                "{url:?} is not an etcd store: https://host:port[,host:port...] (TLS), \
                 or http://... with --etcd-insecure"
            ),
        };
        let mut endpoints = Vec::new();
        for host in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let host = host.strip_prefix(&format!("{scheme}://")).unwrap_or(host);
            if host.contains("://") {
                bail!("{url:?} mixes schemes: one scheme for every endpoint");
            }
            endpoints.push(format!("{scheme}://{}", host.trim_end_matches('/')));
        }
        if endpoints.is_empty() {
            bail!("{url:?} names no etcd endpoint");
        }
        let files = [&flags.etcd_ca, &flags.etcd_cert, &flags.etcd_key];
        if scheme == "http" {
            if !flags.etcd_insecure {
                bail!(
                    "{url:?} is plaintext etcd, refused: whoever reaches it could register \
                     nodes and write pods and services. Use https:// with --etcd-ca, \
                     --etcd-cert and --etcd-key, or give --etcd-insecure to accept plaintext"
                );
            }
            if files.iter().any(|f| f.is_some()) {
                bail!(
                    "--etcd-ca, --etcd-cert and --etcd-key are for an https:// store, not {url:?}"
                );
            }
            return Ok(Access::insecure(endpoints));
        }
        if flags.etcd_insecure {
            bail!("--etcd-insecure is for an http:// store; {url:?} is TLS");
        }
        let Some(ca) = &flags.etcd_ca else {
            bail!("{url:?} needs --etcd-ca FILE: the CA that signed etcd's server certificate");
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
            "--etcd-ca",
            ca,
            "CERTIFICATE",
        )?));
        match (&flags.etcd_cert, &flags.etcd_key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_pem("--etcd-cert", cert, "CERTIFICATE")?,
                    read_pem("--etcd-key", key, "PRIVATE KEY")?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => bail!("--etcd-cert needs --etcd-key (the client certificate's key)"),
            (None, Some(_)) => bail!("--etcd-key needs --etcd-cert (the client certificate)"),
        }
        // Parses the PEM now, not at the first connection.
        for e in &endpoints {
            tonic::transport::Endpoint::from_shared(e.clone())
                .and_then(|ep| ep.tls_config(tls.clone()))
                .map_err(|err| anyhow::anyhow!("{e}: {err}: {}", source_of(&err)))?;
        }
        Ok(Access {
            endpoints,
            tls: Some(Box::new(tls)),
        })
    }

    /// Plaintext access to `endpoints` (`http://...`), as `--etcd-insecure` gives.
    pub fn insecure(endpoints: Vec<String>) -> Access {
        Access {
            endpoints,
            tls: None,
        }
    }
}

/// The PEM file `path` given to `flag`; it must hold a `what` ("CERTIFICATE",
/// "PRIVATE KEY") block, which tonic would otherwise skip silently.
fn read_pem(flag: &str, path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.ends_with(&format!("{what}-----")))
    {
        bail!("{flag} {}: no PEM {what} in it", path.display());
    }
    Ok(pem)
}

/// The cause under a tonic error, which prints only its kind.
fn source_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = Vec::new();
    let mut at = e.source();
    while let Some(c) = at {
        causes.push(c.to_string());
        at = c.source();
    }
    causes.join(": ")
}

/// The cluster-wide parameters, written once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cidr: String,
    pub underlay_mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    pub service_cidr: String,
    pub node_port_min: u16,
    pub node_port_max: u16,
    /// Prefix length of each node's pod CIDR.
    pub subnet_len: u8,
    /// Pod egress masqueraded; on in a config written before it existed.
    #[serde(default = "masquerade_by_default")]
    pub ip_masq: bool,
    #[serde(default)]
    pub non_masquerade_cidrs: Vec<String>,
    /// Empty in a config written before it existed: the underlay address.
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
}

fn masquerade_by_default() -> bool {
    true
}

impl ClusterConfig {
    pub fn from_cluster(c: &Cluster, subnet_len: u8) -> ClusterConfig {
        ClusterConfig {
            cidr: c.cidr.to_string(),
            underlay_mtu: c.underlay_mtu,
            vni: c.vni,
            vxlan_port: c.vxlan_port,
            service_cidr: c.service_cidr.to_string(),
            node_port_min: c.node_ports.0,
            node_port_max: c.node_ports.1,
            subnet_len,
            ip_masq: c.ip_masq,
            non_masquerade_cidrs: c
                .non_masquerade_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            node_port_addresses: c
                .node_port_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    fn nets(&self) -> anyhow::Result<(Ipv4Net, Ipv4Net)> {
        // A config written before the limit held may carry a jumbo MTU.
        let mut problems = Vec::new();
        if crate::cluster::check_underlay_mtu(self.underlay_mtu.into(), &mut problems).is_none() {
            bail!("etcd cluster config: {}", problems[0]);
        }
        let cidr: Ipv4Net = self.cidr.parse().context("config cidr")?;
        let svc: Ipv4Net = self.service_cidr.parse().context("config service_cidr")?;
        if self.subnet_len < cidr.prefix_len() || self.subnet_len > 30 {
            bail!(
                "config subnet_len /{} does not fit cluster CIDR {cidr}",
                self.subnet_len
            );
        }
        Ok((cidr, svc))
    }

    /// An empty cluster with these parameters.
    fn cluster(&self) -> anyhow::Result<Cluster> {
        let (cidr, service_cidr) = self.nets()?;
        Ok(Cluster {
            cidr,
            underlay_mtu: self.underlay_mtu,
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            nodes: Vec::new(),
            pods: Vec::new(),
            service_cidr,
            node_ports: (self.node_port_min, self.node_port_max),
            services: Vec::new(),
            namespaces: Vec::new(),
            policies: Vec::new(),
            ip_masq: self.ip_masq,
            non_masquerade_cidrs: self
                .non_masquerade_cidrs
                .iter()
                .map(|c| {
                    c.parse()
                        .with_context(|| format!("config non_masquerade_cidrs {c}"))
                })
                .collect::<anyhow::Result<_>>()?,
            node_port_addresses: self
                .node_port_addresses
                .iter()
                .map(|c| {
                    c.parse()
                        .with_context(|| format!("config node_port_addresses {c}"))
                })
                .collect::<anyhow::Result<_>>()?,
            unreachable: Vec::new(),
        })
    }
}

/// A node as it registers itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub underlay_ip: String,
    pub uplink: String,
    pub vtep_mac: String,
    pub pod_cidr: String,
}

/// What this node's control process registers.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
    pub vtep_mac: Option<Mac>,
    /// Liveness.
    pub lease_ttl_s: i64,
    /// The pod CIDR's reservation.
    pub reservation_ttl_s: i64,
}

fn subnet_key(net: Ipv4Net) -> String {
    format!("{SUBNETS}{}-{}", net.network(), net.prefix_len())
}

fn alive_key(node: &str) -> String {
    format!("{ALIVE}{node}")
}

fn pod_key(node: &str, name: &str) -> String {
    format!("{PODS}{node}/{name}")
}

fn service_key(name: &str) -> String {
    format!("{SERVICES}{name}")
}

/// `name` is "namespace/name".
fn policy_key(name: &str) -> String {
    format!("{POLICIES}{name}")
}

fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES}{name}")
}

/// The values under `prefix`, in key order.
fn under<'a>(
    cache: &'a BTreeMap<String, Vec<u8>>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Vec<u8>)> + 'a {
    cache
        .range(prefix.to_string()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// Connects to the etcd cluster (any live member serves).
pub async fn connect(access: &Access) -> anyhow::Result<Client> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    if let Some(tls) = &access.tls {
        opts = opts.with_tls((**tls).clone());
    }
    let at = || format!("cannot connect to etcd at {}", access.endpoints.join(","));
    let mut client = Client::connect(&access.endpoints, Some(opts))
        .await
        .with_context(at)?;
    // The channel connects lazily: one request, so that an unreachable etcd
    // or a refused certificate is reported here, as a connection failure.
    if let Err(e) = client.status().await {
        // TLS 1.3 refuses a client certificate after the handshake: the
        // client sees an alert, or only the connection closing.
        let text = e.to_string();
        let closed = text.contains("closed") || text.contains("fatal alert");
        let hint = match (&access.tls, closed) {
            (Some(_), true) => {
                " (etcd closed the connection, as an etcd with --client-cert-auth does \
                 to a client without a certificate of its CA: check --etcd-cert)"
            }
            (None, true) => {
                " (etcd closed the connection: if it serves TLS, use https:// with --etcd-ca)"
            }
            _ => "",
        };
        return Err(anyhow::Error::new(e).context(format!("{}{hint}", at())));
    }
    Ok(client)
}

/// Writes the cluster config if there is none; returns the one in force
/// and whether it was written now.
pub async fn init_config(
    client: &mut Client,
    config: &ClusterConfig,
) -> anyhow::Result<(ClusterConfig, bool)> {
    let value = serde_json::to_vec(config)?;
    let txn = Txn::new()
        .when([Compare::create_revision(CONFIG_KEY, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(CONFIG_KEY, value, None)]);
    if client.txn(txn).await?.succeeded() {
        return Ok((config.clone(), true));
    }
    Ok((
        read_config(client).await?.context("config vanished")?,
        false,
    ))
}

pub async fn read_config(client: &mut Client) -> anyhow::Result<Option<ClusterConfig>> {
    let resp = client.get(CONFIG_KEY, None).await?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => Ok(Some(
            serde_json::from_slice(kv.value()).context("the cluster config in etcd")?,
        )),
    }
}

/// A node's hold on its pod CIDR: the leases and what hangs on them.
#[derive(Clone, Debug)]
pub struct Held {
    /// Liveness: `alive/<name>`.
    pub lease: i64,
    /// The reservation: the subnet key and the node record.
    pub reservation: i64,
    pub pod_cidr: Ipv4Net,
}

/// Grants a liveness lease and a reservation and takes a pod CIDR on the
/// reservation: the one already naming this node (a restart, or a return
/// after its liveness lapsed), else the first free one. Each take is a
/// transaction that only succeeds if the subnet key is absent (or still
/// names us), so concurrent takers never share a CIDR. A taken-back
/// subnet moves to the new reservation and the old one is revoked.
pub async fn acquire(
    client: &mut Client,
    config: &ClusterConfig,
    me: &Registration,
) -> anyhow::Result<Held> {
    let (cidr, _) = config.nets()?;
    let lease = client.lease_grant(me.lease_ttl_s, None).await?.id();
    let reservation = client.lease_grant(me.reservation_ttl_s, None).await?.id();
    let vtep_mac = me
        .vtep_mac
        .unwrap_or_else(|| conventions::default_vtep_mac(me.underlay_ip));
    let record = |net: Ipv4Net| -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&NodeRecord {
            name: me.name.clone(),
            underlay_ip: me.underlay_ip.to_string(),
            uplink: me.uplink.clone(),
            vtep_mac: vtep_mac.to_string(),
            pod_cidr: net.to_string(),
        })?)
    };
    let reserved = || Some(PutOptions::new().with_lease(reservation));
    let take = |net: Ipv4Net| -> anyhow::Result<[TxnOp; 3]> {
        Ok([
            TxnOp::put(subnet_key(net), me.name.as_bytes(), reserved()),
            TxnOp::put(format!("{NODES}{}", me.name), record(net)?, reserved()),
            TxnOp::put(
                alive_key(&me.name),
                "",
                Some(PutOptions::new().with_lease(lease)),
            ),
        ])
    };
    let held = Held {
        lease,
        reservation,
        pod_cidr: cidr,
    };
    for _attempt in 0..64 {
        let resp = client
            .get(SUBNETS, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut taken = Vec::new();
        let mut mine = None;
        let mut old_reservation = 0;
        for kv in resp.kvs() {
            let key = kv.key_str()?;
            let Some(net) = key
                .strip_prefix(SUBNETS)
                .and_then(|s| s.replace('-', "/").parse::<Ipv4Net>().ok())
            else {
                continue;
            };
            if kv.value() == me.name.as_bytes() {
                mine = Some(net);
                old_reservation = kv.lease();
            }
            taken.push(net);
        }
        if let Some(net) = mine.filter(|n| n.prefix_len() == config.subnet_len && cidr.contains(n))
        {
            let key = subnet_key(net);
            let txn = Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    me.name.as_bytes(),
                )])
                .and_then(take(net)?);
            if client.txn(txn).await?.succeeded() {
                log::info!(
                    "{}: took back pod CIDR {net} (lease {lease:x}, reservation {reservation:x})",
                    me.name
                );
                if old_reservation != 0 && old_reservation != reservation {
                    // Nothing hangs on it any more; a failure only leaves
                    // an empty lease to expire.
                    if let Err(e) = client.lease_revoke(old_reservation).await {
                        log::debug!("revoking the old reservation {old_reservation:x}: {e}");
                    }
                }
                return Ok(Held {
                    pod_cidr: net,
                    ..held
                });
            }
            continue;
        }
        let subnets = cidr.subnets(config.subnet_len).context("subnet length")?;
        let mut raced = false;
        for net in subnets {
            if taken
                .iter()
                .any(|t| t.contains(&net.network()) || net.contains(&t.network()))
            {
                continue;
            }
            let key = subnet_key(net);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then(take(net)?);
            if client.txn(txn).await?.succeeded() {
                log::info!(
                    "{}: took pod CIDR {net} (lease {lease:x}, reservation {reservation:x})",
                    me.name
                );
                return Ok(Held {
                    pod_cidr: net,
                    ..held
                });
            }
            // Someone took it between our read and our write: read again.
            raced = true;
            break;
        }
        if !raced {
            release(client, &held).await;
            bail!("no free /{} left in cluster CIDR {cidr}", config.subnet_len);
        }
    }
    release(client, &held).await;
    bail!("could not take a pod CIDR: too much contention")
}

/// Revokes `held`'s leases, which nothing hangs on (an acquire that failed).
async fn release(client: &mut Client, held: &Held) {
    for id in [held.lease, held.reservation] {
        if let Err(e) = client.lease_revoke(id).await {
            log::debug!("revoking lease {id:x}: {e}");
        }
    }
}

/// Renews lease `id` once: false if it is gone (expired or revoked).
async fn renew(client: &mut Client, id: i64) -> anyhow::Result<bool> {
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(r) => Ok(r.ttl() > 0),
        None => bail!("keep-alive stream ended"),
    }
}

/// Keeps `held`'s leases alive (liveness every third of its TTL, the
/// reservation every third of its own, at most hourly); if either is lost
/// (expired while etcd was out of reach), registers again, which takes the
/// same pod CIDR back while its subnet key still names this node. Runs
/// until aborted.
pub async fn keep_alive(
    mut client: Client,
    config: ClusterConfig,
    me: Registration,
    held: Arc<Mutex<Held>>,
    shared: Arc<Shared>,
) {
    let health = &shared.store_health;
    let period = Duration::from_millis((me.lease_ttl_s as u64 * 1000 / 3).max(100));
    let reservation_period =
        Duration::from_millis((me.reservation_ttl_s as u64 * 1000 / 3).clamp(100, 3_600_000));
    let mut renewed = tokio::time::Instant::now();
    loop {
        let (lease, reservation) = {
            let h = held.lock().await;
            (h.lease, h.reservation)
        };
        let lost = match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if let Err(e) = keeper.keep_alive().await {
                    log::warn!("{}: lease keep-alive: {e}", me.name);
                    break false;
                }
                let answer = stream.message().await;
                let alive = matches!(&answer, Ok(Some(r)) if r.ttl() > 0);
                health.lease_alive.store(alive, Ordering::Relaxed);
                if !alive {
                    health.lease_failures.fetch_add(1, Ordering::Relaxed);
                }
                match answer {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => break true,
                    Ok(None) => break false,
                    Err(e) => {
                        log::warn!("{}: lease keep-alive: {e}", me.name);
                        break false;
                    }
                }
                if renewed.elapsed() >= reservation_period {
                    match renew(&mut client, reservation).await {
                        Ok(true) => renewed = tokio::time::Instant::now(),
                        Ok(false) => break true,
                        Err(e) => {
                            log::warn!("{}: reservation keep-alive: {e}", me.name);
                            break false;
                        }
                    }
                }
                tokio::time::sleep(period).await;
            },
            Err(e) => {
                log::warn!("{}: lease keep-alive: {e}", me.name);
                false
            }
        };
        if lost {
            log::warn!("{}: a lease expired; registering again", me.name);
            match acquire(&mut client, &config, &me).await {
                Ok(h) => {
                    renewed = tokio::time::Instant::now();
                    *held.lock().await = h;
                }
                Err(e) => log::warn!("{}: cannot register again: {e:#}", me.name),
            }
        }
        tokio::time::sleep(period / 2).await;
    }
}

/// Lists `/kxdp/` and watches it from the listed revision, publishing the
/// store's content into `shared` on every change; lists again after a
/// compaction, a cancelled watch or any error. Runs until aborted.
pub async fn follow(client: Client, shared: Arc<Shared>) {
    follow_from(client, shared, None).await
}

/// `/kxdp/`'s content at a revision, as listed.
pub type Listing = (BTreeMap<String, Vec<u8>>, i64);

/// Lists `/kxdp/`.
pub async fn list(client: &mut Client) -> anyhow::Result<Listing> {
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().context("no header")?.revision();
    let cache = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
        .collect();
    Ok((cache, revision))
}

/// [`follow`], starting from `listed` (an earlier [`list`]) instead of
/// listing first: tests use it to start from a compacted revision.
pub async fn follow_from(mut client: Client, shared: Arc<Shared>, mut listed: Option<Listing>) {
    loop {
        match follow_once(&mut client, &shared, listed.take()).await {
            Ok(()) => {}
            Err(e) => log::warn!("etcd watch: {e:#}; listing again"),
        }
        let health = &shared.store_health;
        health.watch_up.store(false, Ordering::Relaxed);
        health.watch_restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn follow_once(
    client: &mut Client,
    shared: &Shared,
    listed: Option<Listing>,
) -> anyhow::Result<()> {
    let (mut cache, revision) = match listed {
        Some(l) => l,
        None => list(client).await?,
    };
    publish(&cache, shared);
    let mut stream = client
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    shared.store_health.watch_up.store(true, Ordering::Relaxed);
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() != 0 {
            bail!("watch compacted at revision {}", resp.compact_revision());
        }
        if resp.canceled() {
            bail!("watch cancelled: {}", resp.cancel_reason());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = kv.key_str()?.to_string();
            match event.event_type() {
                EventType::Put => {
                    cache.insert(key, kv.value().to_vec());
                }
                EventType::Delete => {
                    cache.remove(&key);
                }
            }
        }
        if !resp.events().is_empty() {
            publish(&cache, shared);
        }
    }
    bail!("watch stream ended")
}

/// Turns the store's content into the desired state. Entries that do not
/// parse or validate are left out, logged.
fn publish(cache: &BTreeMap<String, Vec<u8>>, shared: &Shared) {
    match build(cache) {
        Ok(Some((cluster, runtime))) => {
            if shared.current().cluster.unreachable != cluster.unreachable {
                log::warn!(
                    "unreachable nodes (liveness lease lapsed; CIDR and routes kept, \
                     endpoints not ready): {:?}",
                    cluster.unreachable
                );
            }
            shared.replace(cluster, runtime);
        }
        Ok(None) => log::warn!("etcd holds no cluster config ({CONFIG_KEY}) yet"),
        Err(e) => log::error!("etcd: {e:#}"),
    }
}

/// The cluster and run-time set the store's content describes; `None`
/// without a cluster config.
pub fn build(cache: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<Option<(Cluster, Runtime)>> {
    let Some(config) = cache.get(CONFIG_KEY) else {
        return Ok(None);
    };
    let config: ClusterConfig = serde_json::from_slice(config).context("cluster config")?;
    let mut cluster = config.cluster()?;
    for (key, value) in cache.range(NODES.to_string()..) {
        if !key.starts_with(NODES) {
            break;
        }
        match node_of(value) {
            Ok(node) => {
                let clash = cluster.nodes.iter().find(|n| {
                    n.pod_cidr.contains(&node.pod_cidr.network())
                        || node.pod_cidr.contains(&n.pod_cidr.network())
                });
                if let Some(other) = clash {
                    log::warn!(
                        "{key}: pod CIDR {} overlaps node {}'s; ignored",
                        node.pod_cidr,
                        other.name
                    );
                } else {
                    cluster.nodes.push(node);
                }
            }
            Err(e) => log::warn!("{key}: {e:#}; ignored"),
        }
    }
    // A registered node without a live `alive/` key is away: it keeps its
    // CIDR, route and pods; its endpoints are not ready.
    cluster.unreachable = cluster
        .nodes
        .iter()
        .filter(|n| !cache.contains_key(&alive_key(&n.name)))
        .map(|n| n.name.clone())
        .collect();
    let mut runtime = Runtime::default();
    for (key, value) in cache.range(SERVICES.to_string()..) {
        if !key.starts_with(SERVICES) {
            break;
        }
        let checked = pb::Service::decode(value.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|s| {
                runtime::check_service(&cluster, &runtime, &s).map_err(|p| p.to_string())
            });
        match checked {
            Ok(s) => {
                runtime.services.insert(s.name.clone(), s);
            }
            Err(e) => log::warn!("{key}: {e}; left out"),
        }
    }
    for (key, value) in cache.range(PODS.to_string()..) {
        if !key.starts_with(PODS) {
            break;
        }
        let Ok(req) = AddPodRequest::decode(value.as_slice()) else {
            log::warn!("{key}: not a pod; left out");
            continue;
        };
        // Pods of nodes that are not (or no longer) registered wait for them.
        if cluster.node(&req.node).is_none() {
            continue;
        }
        match runtime::check_pod(&cluster, &runtime, &req) {
            Ok(pod) => {
                runtime
                    .pods
                    .insert((pod.node.clone(), pod.name.clone()), pod);
            }
            Err(p) => log::warn!("{key}: {}; left out", p.to_string().replace('\n', "; ")),
        }
    }
    for (key, value) in under(cache, NAMESPACES) {
        let checked = kxdp_proto::control::Namespace::decode(value.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|n| {
                runtime::check_namespace(&cluster, &runtime, &n).map_err(|p| p.to_string())
            });
        match checked {
            Ok(n) => {
                runtime.namespaces.insert(n.name.clone(), n);
            }
            Err(e) => log::warn!("{key}: {e}; left out"),
        }
    }
    for (key, value) in under(cache, POLICIES) {
        let checked = kxdp_proto::control::NetworkPolicy::decode(value.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|p| {
                runtime::check_policies(&cluster, &runtime, &[p]).map_err(|p| p.to_string())
            });
        match checked {
            Ok(p) => {
                runtime
                    .policies
                    .extend(p.into_iter().map(|p| (p.name.clone(), p)));
            }
            Err(e) => log::warn!("{key}: {}; left out", e.replace('\n', "; ")),
        }
    }
    Ok(Some((cluster, runtime)))
}

fn node_of(value: &[u8]) -> anyhow::Result<Node> {
    let r: NodeRecord = serde_json::from_slice(value)?;
    Ok(Node {
        underlay_ip: r.underlay_ip.parse().context("underlay_ip")?,
        pod_cidr: r.pod_cidr.parse().context("pod_cidr")?,
        vtep_mac: r.vtep_mac.parse().context("vtep_mac")?,
        name: r.name,
        uplink: r.uplink,
        dataplane: DataplaneKind::Kxdp,
        socket: None,
    })
}

/// How a control process joins an etcd-backed cluster.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub access: Access,
    pub node: Registration,
    /// Written as the cluster config if etcd has none (`--cluster` given).
    pub bootstrap: Option<ClusterConfig>,
}

/// The desired state in etcd: the Control API's writes are checked against
/// this process's view, written to etcd, and awaited until the view (fed by
/// the watch) holds them.
pub struct Store {
    client: Client,
    shared: Arc<Shared>,
    /// How long to wait for our own write to come back through the watch.
    pub echo_timeout: Duration,
}

/// An etcd call that failed: the store is out of reach.
fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcd: {e}"))
}

impl Store {
    /// Registers this node, keeps its lease and follows the store, to
    /// program this node's dataplane only. The lease is not revoked when the
    /// daemon stops: a restart within the TTL takes the same pod CIDR back,
    /// and a node that stays away is dropped by everyone when it expires.
    pub async fn join(etcd: EtcdConfig, config: &daemon::Config) -> anyhow::Result<Opened> {
        let mut client = connect(&etcd.access).await?;
        let cluster_config = match &etcd.bootstrap {
            Some(bootstrap) => {
                let (cfg, written) = init_config(&mut client, bootstrap).await?;
                if written {
                    log::info!("wrote the cluster config to etcd");
                } else if cfg != *bootstrap {
                    log::warn!("etcd already holds a different cluster config; using etcd's");
                }
                cfg
            }
            None => read_config(&mut client).await?.with_context(|| {
                format!(
                    "etcd has no cluster config ({CONFIG_KEY}): start one control process with --cluster FILE, or run kxdpctl --store ... init FILE"
                )
            })?,
        };
        let held = acquire(&mut client, &cluster_config, &etcd.node).await?;
        log::info!(
            "{}: registered, pod CIDR {} (liveness TTL {} s, reservation TTL {} s)",
            etcd.node.name,
            held.pod_cidr,
            etcd.node.lease_ttl_s,
            etcd.node.reservation_ttl_s
        );
        let held = Arc::new(Mutex::new(held));
        let empty =
            build(&[(CONFIG_KEY.to_string(), serde_json::to_vec(&cluster_config)?)].into())?
                .context("cluster config")?
                .0;
        let shared = Shared::scoped(
            empty,
            config.dataplane_dir.clone(),
            config.resync_interval,
            Some(etcd.node.name.clone()),
        );
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            cluster_config,
            etcd.node.clone(),
            held,
            shared.clone(),
        ));
        let follower = tokio::spawn(follow(client.clone(), shared.clone()));
        let store = Store {
            client,
            shared: shared.clone(),
            echo_timeout: Duration::from_secs(5),
        };
        Ok(Opened {
            shared,
            store: Arc::new(store),
            tasks: vec![keeper, follower],
        })
    }

    /// Waits until our view satisfies `seen`; returns its generation.
    async fn echo(&self, seen: impl Fn(&Cluster, &Runtime) -> bool) -> Result<u64, Status> {
        let mut rx = self.shared.desired.subscribe();
        let waited = tokio::time::timeout(
            self.echo_timeout,
            rx.wait_for(|d| seen(&d.cluster, &d.runtime)),
        )
        .await
        .map(|r| r.map(|d| d.generation));
        match waited {
            Ok(Ok(generation)) => Ok(generation),
            _ => Err(Status::deadline_exceeded(format!(
                "written to etcd, but the watch did not bring it back within {:?}",
                self.echo_timeout
            ))),
        }
    }
}

impl Store {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), Status> {
        self.client
            .clone()
            .put(key, value, None)
            .await
            .map_err(unavailable)
            .map(|_| ())
    }

    /// Deletes `key`; if it was there, waits until our view shows it `gone`.
    async fn delete(
        &self,
        key: String,
        gone: impl Fn(&Runtime) -> bool,
    ) -> Result<(u64, bool), Status> {
        let resp = self
            .client
            .clone()
            .delete(key, None)
            .await
            .map_err(unavailable)?;
        if resp.deleted() == 0 {
            return Ok((self.shared.current().generation, false));
        }
        let generation = self.echo(|_, rt| gone(rt)).await?;
        Ok((generation, true))
    }
}

#[tonic::async_trait]
impl DesiredStore for Store {
    async fn add_pod(&self, req: &AddPodRequest) -> Result<u64, Status> {
        let desired = self.shared.current();
        let pod = match runtime::check_add(&desired.cluster, &desired.runtime, req)? {
            runtime::PodCheck::Same(_) => return Ok(desired.generation),
            runtime::PodCheck::New(pod) => pod,
        };
        let key = pod_key(&pod.node, &pod.name);
        let value = runtime::request_of(&pod).encode_to_vec();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        if !self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(unavailable)?
            .succeeded()
        {
            return Err(Status::aborted(format!(
                "pod {}/{} was registered meanwhile by another writer; retry",
                pod.node, pod.name
            )));
        }
        let k = (pod.node.clone(), pod.name.clone());
        let generation = self.echo(|_, rt| rt.pods.get(&k) == Some(&pod)).await?;
        log::info!(
            "pod {}/{} ({}) added to etcd: generation {generation}",
            req.node,
            req.name,
            req.ip
        );
        Ok(generation)
    }

    async fn delete_pod(&self, node: &str, name: &str) -> Result<(u64, bool), Status> {
        let resp = self
            .client
            .clone()
            .delete(pod_key(node, name), None)
            .await
            .map_err(unavailable)?;
        if resp.deleted() == 0 {
            return Ok((self.shared.current().generation, false));
        }
        let k = (node.to_string(), name.to_string());
        let generation = self.echo(|_, rt| !rt.pods.contains_key(&k)).await?;
        Ok((generation, true))
    }

    async fn upsert_service(&self, proto: &pb::Service) -> Result<u64, Status> {
        let desired = self.shared.current();
        let service = runtime::check_service(&desired.cluster, &desired.runtime, proto)?;
        if desired.runtime.services.get(&service.name) == Some(&service) {
            return Ok(desired.generation);
        }
        self.put(
            service_key(&service.name),
            service.to_proto().encode_to_vec(),
        )
        .await?;
        self.echo(|_, rt| rt.services.get(&service.name) == Some(&service))
            .await
    }

    async fn delete_service(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete(service_key(name), |rt| !rt.services.contains_key(name))
            .await
    }

    async fn upsert_policies(&self, protos: &[NetworkPolicy]) -> Result<u64, Status> {
        let desired = self.shared.current();
        let policies = runtime::check_policies(&desired.cluster, &desired.runtime, protos)?;
        let there = |rt: &Runtime| policies.iter().all(|p| rt.policies.get(&p.name) == Some(p));
        if there(&desired.runtime) {
            return Ok(desired.generation);
        }
        // One transaction: every policy or none, within etcd's default
        // --max-txn-ops.
        if policies.len() > MAX_TXN_OPS {
            return Err(Status::invalid_argument(format!(
                "policies: {} policies in one request; an etcd store takes at most {MAX_TXN_OPS} at once (etcd's --max-txn-ops)",
                policies.len()
            )));
        }
        let puts: Vec<TxnOp> = policies
            .iter()
            .map(|p| TxnOp::put(policy_key(&p.name), p.to_proto().encode_to_vec(), None))
            .collect();
        self.client
            .clone()
            .txn(Txn::new().and_then(puts))
            .await
            .map_err(unavailable)?;
        self.echo(|_, rt| there(rt)).await
    }

    async fn delete_policy(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete(policy_key(name), |rt| !rt.policies.contains_key(name))
            .await
    }

    async fn upsert_namespace(&self, proto: &Namespace) -> Result<u64, Status> {
        let desired = self.shared.current();
        let ns = runtime::check_namespace(&desired.cluster, &desired.runtime, proto)?;
        if desired.runtime.namespaces.get(&ns.name) == Some(&ns) {
            return Ok(desired.generation);
        }
        self.put(namespace_key(&ns.name), ns.to_proto().encode_to_vec())
            .await?;
        self.echo(|_, rt| rt.namespaces.get(&ns.name) == Some(&ns))
            .await
    }

    async fn delete_namespace(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete(namespace_key(name), |rt| !rt.namespaces.contains_key(name))
            .await
    }

    async fn apply_cluster(&self, _yaml: &str) -> Result<Applied, Status> {
        Err(Status::failed_precondition(
            "this control process follows an etcd store: nodes register themselves, and pods, services, network policies and namespaces are written with AddPod/UpsertService/UpsertNetworkPolicy/UpsertNamespace",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_config_with_a_jumbo_mtu_is_refused_with_why() {
        let lab = Cluster::from_yaml(crate::cluster::LAB_CLUSTER_YAML).unwrap();
        let mut config = ClusterConfig::from_cluster(&lab, 24);
        assert!(config.cluster().is_ok());
        config.underlay_mtu = 9000;
        let e = config.cluster().unwrap_err().to_string();
        assert!(
            e.contains("cluster.underlay_mtu: 9000 is out of range 576..=1778")
                && e.contains("jumbo frames are not carried"),
            "{e}"
        );
    }
}
