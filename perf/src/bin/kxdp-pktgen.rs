//! kxdp-pktgen: an AF_XDP traffic generator and sink. Run it inside a
//! network namespace (`ip netns exec NS kxdp-pktgen ...`), as root.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kxdp_perf::frame::{parse_mac, FrameSpec, Proto, VXLAN_PORT};
use kxdp_perf::pktgen::{gen_summary, run_gen, run_sink, sink_summary, GenConfig, SinkConfig};
use kxdp_perf::xsk::XdpMode;

#[derive(Parser)]
#[command(name = "kxdp-pktgen", about = "AF_XDP packet generator and sink")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send UDP (or TCP SYN) probes with a sequence number and a timestamp.
    Gen {
        /// The interface to send on (in this network namespace).
        #[arg(long)]
        iface: String,
        /// The interface's queue to bind the AF_XDP socket to.
        #[arg(long, default_value_t = 0)]
        queue: u32,
        /// Destination MAC of every frame (the next hop's), aa:bb:cc:dd:ee:ff.
        #[arg(long)]
        dst_mac: String,
        /// Source MAC of every frame (the sending interface's).
        #[arg(long)]
        src_mac: String,
        /// Source IPv4 address.
        #[arg(long)]
        src_ip: Ipv4Addr,
        /// Destination IPv4 address.
        #[arg(long)]
        dst_ip: Ipv4Addr,
        /// Destination UDP (or TCP) port.
        #[arg(long)]
        dst_port: u16,
        /// First source port; flow i uses src-port + i.
        #[arg(long, default_value_t = kxdp_perf::pktgen::DEFAULT_SRC_PORT)]
        src_port: u16,
        /// Ethernet frame length in bytes, without FCS.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Flows (distinct source ports), sent round-robin.
        #[arg(long, default_value_t = 1)]
        flows: u16,
        /// Packets per second (default: flat out).
        #[arg(long)]
        rate: Option<u64>,
        /// Stop after this many packets.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (always bounded: at most 300).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Probe protocol: UDP datagrams or TCP SYNs.
        #[arg(long, default_value = "udp")]
        proto: Proto,
        /// Write the JSON result here instead of stdout.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Receive probes: per-flow loss and reorder, latency, throughput.
    Sink {
        /// The interface to receive on (in this network namespace).
        #[arg(long)]
        iface: String,
        /// The interface's queue to bind the AF_XDP socket to.
        #[arg(long, default_value_t = 0)]
        queue: u32,
        /// Receive for this many seconds (at most 300).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Flows the generator sends, for per-flow loss (default: those seen).
        #[arg(long)]
        expect_flows: Option<u64>,
        /// Stop this many ms after the last probe (once one came).
        #[arg(long)]
        idle_exit_ms: Option<u64>,
        /// UDP port whose payload is VXLAN (probes are looked for inside).
        #[arg(long, default_value_t = VXLAN_PORT)]
        vxlan_port: u16,
        /// XDP attach mode of the redirect program: auto|native|generic.
        #[arg(long, default_value = "auto")]
        xdp_mode: XdpMode,
        /// Create this file once the socket is ready.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Write the JSON result here instead of stdout.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn emit(json: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match json {
        Some(p) => {
            std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))
        }
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen {
            iface,
            queue,
            dst_mac,
            src_mac,
            src_ip,
            dst_ip,
            dst_port,
            src_port,
            size,
            flows,
            rate,
            count,
            duration,
            proto,
            json,
        } => {
            let cfg = GenConfig {
                iface,
                queue,
                spec: FrameSpec {
                    src_mac: parse_mac(&src_mac)?,
                    dst_mac: parse_mac(&dst_mac)?,
                    src_ip,
                    dst_ip,
                    dst_port,
                    src_port_base: src_port,
                    size,
                    flows,
                    proto,
                },
                rate,
                count,
                duration_s: duration,
                progress: true,
            };
            let r = run_gen(&cfg)?;
            eprintln!("{}", gen_summary(&r));
            emit(&json, &r)
        }
        Cmd::Sink {
            iface,
            queue,
            duration,
            expect_flows,
            idle_exit_ms,
            vxlan_port,
            xdp_mode,
            ready_file,
            json,
        } => {
            let cfg = SinkConfig {
                iface,
                queue,
                duration_s: duration,
                expect_flows,
                idle_exit: idle_exit_ms.map(Duration::from_millis),
                vxlan_port,
                mode: xdp_mode,
                progress: true,
                ready_file,
            };
            let r = run_sink(&cfg)?;
            eprintln!("{}", sink_summary(&r));
            emit(&json, &r)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        assert_eq!(
            kxdp_proto::cli::undocumented(&super::Cli::command()),
            Vec::<String>::new()
        );
    }
}
