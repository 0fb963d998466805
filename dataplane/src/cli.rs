//! `kxdp-dataplane`'s command line, in the library so that tests can parse a
//! systemd unit's `ExecStart` with the binary's real definition.

use std::path::PathBuf;

use clap::Parser;

use crate::fault::Fault;
use crate::xdp::XdpMode;

/// kxdp's per-node fast path: VXLAN overlay, pod routing and service load
/// balancing over AF_XDP.
///
/// Run it inside the node's network namespace. It serves its gRPC API at
/// once with an empty state and attaches to interfaces only when the control
/// process syncs it (the node config names the uplink, pods name their veth).
///
/// It serves node --node (default: this host's name, as the kubelet names a
/// node) on /run/kxdp/<node>.sock, where kxdp-control looks for a node's
/// dataplane by default. With --node given, a Sync for another node is
/// refused: a control process talking to the wrong socket is an error, not
/// a new identity.
///
/// Every flag can also be set from the environment variable in brackets
/// (a systemd EnvironmentFile, a container's env); a flag given on the
/// command line wins.
#[derive(Parser, Debug)]
#[command(name = "kxdp-dataplane", version, verbatim_doc_comment)]
pub struct Args {
    /// This node's name, as kxdp-control knows it. Default: the host name.
    #[arg(long, value_name = "NAME", env = "KXDP_NODE")]
    pub node: Option<String>,
    /// Unix socket for the gRPC API (root-only). Default:
    /// /run/kxdp/<node>.sock.
    #[arg(long, value_name = "SOCK", env = "KXDP_DATAPLANE_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Worker threads; worker i binds queue i of every interface, so use at
    /// most as many as the interfaces have queues (the lab's veths have 1).
    #[arg(long, value_name = "N", env = "KXDP_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Cores to pin workers to, comma-separated (worker i -> i-th core).
    #[arg(
        long,
        value_name = "CPU,...",
        env = "KXDP_CORES",
        value_delimiter = ','
    )]
    pub cores: Vec<usize>,
    /// XDP attach mode.
    #[arg(long, value_enum, env = "KXDP_XDP_MODE", default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Force AF_XDP copy mode (veth is always copy mode anyway).
    #[arg(long, env = "KXDP_COPY")]
    pub copy: bool,
    /// Turn off the per-worker flow cache: every packet takes the full walk
    /// (same output, more work; for comparisons and debugging).
    #[arg(long, env = "KXDP_NO_FLOW_CACHE")]
    pub no_flow_cache: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics and the process's
    /// health on /healthz (200, or 503 with a JSON body saying why) at this
    /// address, e.g. 127.0.0.1:9464. Off by default: the dataplane runs in
    /// the node's network namespace, whose addresses are the node's (a
    /// listener there is reachable from the underlay), and several
    /// dataplanes in one namespace (tests) would fight over a fixed port.
    /// Give a loopback address unless a scraper elsewhere needs it; it is
    /// separate from the health check node ports, which listen on node
    /// addresses.
    #[arg(long, value_name = "ADDR:PORT", env = "KXDP_DATAPLANE_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub log: kxdp_proto::logging::LogFlags,
    #[command(flatten)]
    pub doc: kxdp_proto::cli::DocFlags,
    /// For tests only (`fault.rs`): hidden, and deliberately without an
    /// environment variable, so that nothing but an explicit argument arms it.
    #[arg(long, hide = true, value_name = "FAULT")]
    pub test_fault: Option<Fault>,
}

impl Args {
    /// The node this process serves and the socket it listens on: explicit
    /// flags, else the host name and the socket kxdp-control dials for it.
    pub fn identity(&self) -> anyhow::Result<(String, PathBuf)> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => host_name()?,
        };
        if node.is_empty() || node.contains('/') {
            anyhow::bail!("--node {node:?}: a node name is not empty and has no '/' (it names the socket file)");
        }
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| kxdp_proto::dataplane_socket(kxdp_proto::DEFAULT_RUN_DIR, &node));
        Ok((node, socket))
    }
}

/// The host's name (the UTS namespace's), as the kubelet takes it.
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| anyhow::anyhow!("no --node given and the host name is unreadable: {e}"))?;
    Ok(name.trim().to_string())
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

    #[test]
    fn the_default_socket_is_where_control_looks_for_the_node() {
        let a = Args::try_parse_from(["kxdp-dataplane", "--node", "n1"]).unwrap();
        let (node, socket) = a.identity().unwrap();
        assert_eq!(node, "n1");
        assert_eq!(socket, PathBuf::from("/run/kxdp/n1.sock"));
    }

    #[test]
    fn an_explicit_socket_wins() {
        let a = Args::try_parse_from(["kxdp-dataplane", "--node", "n1", "--socket", "/tmp/x.sock"])
            .unwrap();
        assert_eq!(a.identity().unwrap().1, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn the_test_fault_flag_is_hidden_and_has_no_variable() {
        use clap::CommandFactory;
        let cmd = Args::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "test_fault")
            .unwrap();
        assert!(arg.is_hide_set() && arg.get_env().is_none());
        let a = Args::try_parse_from(["kxdp-dataplane", "--test-fault", "panic:0"]).unwrap();
        assert_eq!(a.test_fault, Some(Fault::Panic { worker: 0 }));
    }

    #[test]
    fn workers_out_of_range_are_refused_by_the_parser() {
        for w in ["0", "65"] {
            let e = Args::try_parse_from(["kxdp-dataplane", "--workers", w]).unwrap_err();
            assert!(e.to_string().contains("--workers"), "{e}");
        }
    }
}
