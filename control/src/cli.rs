//! `kxdp-control`'s command line, in the library so that tests can parse a
//! systemd unit's `ExecStart` with the binary's real definition.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

use crate::api::DEFAULT_APPLY_TIMEOUT;
use crate::conventions::{Mac, DEFAULT_DATAPLANE_DIR};

/// The kxdp control process.
///
/// Holds the cluster's desired state, computes what each kxdp node's
/// dataplane must hold and pushes it over the dataplane gRPC API. Every
/// resync interval it reads each dataplane's state and pushes the full state
/// again after a dataplane restart (new boot_id), on first contact, or when
/// the generation differs. Serves the Control API (kxdpctl, orchestration) on
/// a root-only Unix socket. Stops cleanly on SIGTERM/SIGINT.
///
/// The source of truth is one of (one is required):
///   --cluster FILE   a cluster file (YAML): all nodes, pods and services
///   --store URL      etcd: this node registers itself (--node, --underlay-ip,
///                    --uplink) and programs only its own dataplane
///   --lab            the built-in two-node lab cluster (config/lab-cluster.yaml),
///                    for trying kxdp out; never what a real node wants
///
/// A node's dataplane is reached at <--dataplane-dir>/<node>.sock, where
/// kxdp-dataplane --node <node> listens by default.
///
/// Every flag can also be set from the environment variable in brackets
/// (a systemd EnvironmentFile, a container's env); a flag given on the
/// command line wins.
///
/// Exit status: 0 after a clean stop, 2 for bad flags or an invalid cluster
/// file, 1 on other errors.
#[derive(Parser, Debug)]
#[command(name = "kxdp-control", version, verbatim_doc_comment)]
pub struct Args {
    /// Cluster file (YAML). In etcd mode (with --store), only its cluster
    /// settings are used, and only while etcd has none.
    #[arg(
        long,
        value_name = "FILE",
        env = "KXDP_CLUSTER",
        conflicts_with = "lab"
    )]
    pub cluster: Option<PathBuf>,

    /// Use the built-in two-node lab cluster file (what scripts/lab.sh runs).
    #[arg(long, env = "KXDP_LAB", conflicts_with = "store")]
    pub lab: bool,

    /// Unix socket to serve the Control API on (parent dir created 0700, socket 0600).
    #[arg(long, value_name = "SOCK", env = "KXDP_CONTROL_SOCKET", default_value = kxdp_proto::DEFAULT_CONTROL_SOCKET)]
    pub listen: PathBuf,

    /// Serve Prometheus metrics on http://ADDR/metrics and the process's
    /// health on /healthz (200 while every node's dataplane is in sync or
    /// behind for under 30 s, else 503 with a JSON body saying why), e.g.
    /// 127.0.0.1:9465. Off by default, as nothing should listen on a node's
    /// addresses unasked; give a loopback address unless a scraper
    /// elsewhere needs it.
    #[arg(long, value_name = "ADDR:PORT", env = "KXDP_CONTROL_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Directory of the nodes' dataplane sockets: a node without `socket:` in
    /// the cluster file is reached at DIR/<node name>.sock.
    #[arg(long, value_name = "DIR", env = "KXDP_DATAPLANE_DIR", default_value = DEFAULT_DATAPLANE_DIR)]
    pub dataplane_dir: PathBuf,

    /// How often each node's dataplane is checked (and re-pushed if needed).
    #[arg(long, value_name = "MS", env = "KXDP_RESYNC_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub resync_interval_ms: u64,

    /// How long ApplyCluster waits for the reachable nodes to take a new state.
    #[arg(long, value_name = "MS", env = "KXDP_APPLY_TIMEOUT_MS",
          default_value_t = DEFAULT_APPLY_TIMEOUT.as_millis() as u64)]
    pub apply_timeout_ms: u64,

    /// File mode: where the pods and services registered at run time (and
    /// the last applied cluster file) are kept, so that a restart pushes
    /// what was there before. Written (atomically, fsynced) before each
    /// change is acknowledged; a corrupt or unknown-version file stops the
    /// process at startup (exit 2): move it aside to start empty.
    #[arg(long, value_name = "FILE", env = "KXDP_STATE_FILE",
          default_value = crate::state_file::DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,

    /// Shared store: https://host:2379[,host:port...] (etcd over TLS, with
    /// --etcd-ca, --etcd-cert, --etcd-key), or http://... with
    /// --etcd-insecure. This process then registers --node, takes a pod
    /// CIDR lease and programs only that node's dataplane. With --cluster too, the file's cluster settings
    /// become the cluster config if etcd has none (its nodes and pods are
    /// not used: nodes register themselves).
    #[arg(long, value_name = "URL", env = "KXDP_STORE_URL",
          requires_all = ["node", "underlay_ip", "uplink"])]
    pub store: Option<String>,

    #[command(flatten)]
    pub etcd: EtcdFlags,

    #[command(flatten)]
    pub log: kxdp_proto::logging::LogFlags,

    #[command(flatten)]
    pub doc: kxdp_proto::cli::DocFlags,

    /// Etcd mode: this node's name (a DNS label), the name its dataplane
    /// serves (kxdp-dataplane --node).
    #[arg(long, value_name = "NAME", env = "KXDP_NODE")]
    pub node: Option<String>,

    /// Etcd mode: this node's underlay address (VTEP, NodePorts).
    #[arg(long, value_name = "IP", env = "KXDP_UNDERLAY_IP")]
    pub underlay_ip: Option<Ipv4Addr>,

    /// Etcd mode: the underlay interface (the one carrying --underlay-ip;
    /// no default: on a VM the first interface is often a NAT that is not
    /// the underlay).
    #[arg(long, value_name = "IF", env = "KXDP_UPLINK")]
    pub uplink: Option<String>,

    /// Etcd mode: VTEP MAC; default 0e:58 + the underlay IP bytes.
    #[arg(long, value_name = "MAC", env = "KXDP_VTEP_MAC")]
    pub vtep_mac: Option<Mac>,

    /// Etcd mode: TTL of this node's liveness lease; when it lapses (this
    /// process away), every node takes this node's endpoints as not ready.
    #[arg(long, value_name = "S", env = "KXDP_LEASE_TTL_S",
          default_value_t = crate::etcd::DEFAULT_LEASE_TTL_S,
          value_parser = clap::value_parser!(i64).range(2..))]
    pub lease_ttl_s: i64,

    /// Etcd mode: TTL of this node's pod CIDR reservation (kept alive while
    /// the process runs). A node away for less takes the same CIDR back and
    /// keeps its routes on the other nodes; after it, they drop it.
    #[arg(long, value_name = "S", env = "KXDP_SUBNET_RESERVATION_TTL_S",
          default_value_t = crate::etcd::DEFAULT_RESERVATION_TTL_S,
          value_parser = clap::value_parser!(i64).range(2..))]
    pub subnet_reservation_ttl_s: i64,

    /// Etcd mode, with --cluster: prefix length of each node's pod CIDR.
    #[arg(long, value_name = "LEN", env = "KXDP_SUBNET_LEN",
          default_value_t = crate::etcd::DEFAULT_SUBNET_LEN)]
    pub subnet_len: u8,
}

impl Args {
    /// What clap cannot say well: that a source of truth is missing, and
    /// what each choice means.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster.is_none() && self.store.is_none() && !self.lab {
            return Err("no source of truth: give one of\n  \
                 --cluster FILE        a cluster file (nodes, pods, services)\n  \
                 --store https://H:P   etcd, with --node, --underlay-ip and --uplink\n  \
                 --lab                 the built-in two-node lab cluster (scripts/lab.sh's)\n\
                 (or KXDP_CLUSTER, KXDP_STORE_URL, KXDP_LAB=true in the environment; see --help)"
                .into());
        }
        if self.store.is_none() && self.etcd.any() {
            return Err(
                "--etcd-ca, --etcd-cert, --etcd-key and --etcd-insecure need --store".into(),
            );
        }
        Ok(())
    }
}

/// How to reach the etcd store (`--store`), for kxdp-control and kxdpctl.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdFlags {
    /// Etcd over TLS (an https:// store): the CA certificate (PEM) that
    /// signed etcd's server certificate. Required with https://.
    #[arg(long, global = true, value_name = "FILE", env = "KXDP_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,

    /// Etcd over TLS: this client's certificate (PEM), for an etcd that
    /// authenticates clients (--client-cert-auth). Needs --etcd-key.
    #[arg(long, global = true, value_name = "FILE", env = "KXDP_ETCD_CERT")]
    pub etcd_cert: Option<std::path::PathBuf>,

    /// Etcd over TLS: the private key (PEM) of --etcd-cert.
    #[arg(long, global = true, value_name = "FILE", env = "KXDP_ETCD_KEY")]
    pub etcd_key: Option<std::path::PathBuf>,

    /// Accept an http:// store: plaintext and unauthenticated, so whoever
    /// reaches etcd can register nodes and write pods and services. For a
    /// lab on a private network; an http:// store is refused without it.
    #[arg(long, global = true, env = "KXDP_ETCD_INSECURE")]
    pub etcd_insecure: bool,
}

impl EtcdFlags {
    fn any(&self) -> bool {
        self.etcd_insecure
            || self.etcd_ca.is_some()
            || self.etcd_cert.is_some()
            || self.etcd_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        assert_eq!(
            kxdp_proto::cli::undocumented(&Args::command()),
            Vec::<String>::new()
        );
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kxdp-control").chain(args.iter().copied()))
    }

    #[test]
    fn without_a_source_of_truth_it_refuses_and_says_which_flags_give_one() {
        let e = parse(&[]).unwrap().check().unwrap_err();
        for flag in ["--cluster", "--store", "--lab"] {
            assert!(e.contains(flag), "{flag} not named in: {e}");
        }
    }

    #[test]
    fn etcd_mode_needs_the_node_its_address_and_its_uplink() {
        let full = [
            "--store",
            "https://127.0.0.1:2379",
            "--node",
            "n1",
            "--underlay-ip",
            "192.0.2.1",
            "--uplink",
            "eth1",
        ];
        assert!(parse(&full).unwrap().check().is_ok());
        for drop in ["--node", "--underlay-ip", "--uplink"] {
            let i = full.iter().position(|a| *a == drop).unwrap();
            let args: Vec<&str> = full
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| *a)
                .collect();
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(drop), "{drop}: {e}");
        }
    }

    #[test]
    fn lab_conflicts_with_the_real_sources() {
        assert!(parse(&["--lab"]).unwrap().check().is_ok());
        assert!(parse(&["--lab", "--cluster", "x.yaml"]).is_err());
        assert!(parse(&[
            "--lab",
            "--store",
            "https://h:1",
            "--node",
            "n",
            "--underlay-ip",
            "192.0.2.1",
            "--uplink",
            "e"
        ])
        .is_err());
    }
}
