//! The generator and sink loops of `kxdp-pktgen`, and their results.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::frame::{parse_probe, probe_headers, FrameSpec, ProbeHeaders, Proto, Template};
use crate::stats::{FlowTotals, Flows, Histogram, Percentiles};
use crate::xsk::{ensure_bpffs, monotonic_ns, XdpMode, Xsk, XskOptions, XskStats};

/// Source port of flow 0 (flow i uses this + i) when none is given.
pub const DEFAULT_SRC_PORT: u16 = 10000;

/// Hard ceiling on any run, whatever was asked.
pub const MAX_DURATION_S: f64 = 300.0;
/// Frames sent per batch.
pub const BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub iface: String,
    pub queue: u32,
    pub spec: FrameSpec,
    /// Packets per second; None: as fast as the socket takes them.
    pub rate: Option<u64>,
    pub count: Option<u64>,
    pub duration_s: f64,
    pub progress: bool,
}

/// What the generator did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenResult {
    pub role: String,
    pub iface: String,
    pub queue: u32,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    pub proto: Proto,
    pub size: usize,
    pub flows: u16,
    pub rate_target: Option<u64>,
    pub count_target: Option<u64>,
    pub duration_target_s: f64,
    /// Frames put on the TX ring.
    pub sent: u64,
    /// Frames the kernel reported done (completion ring).
    pub completed: u64,
    pub elapsed_s: f64,
    pub pps: f64,
    /// L2 bits per second (frame bytes, no FCS/preamble).
    pub bps: f64,
    /// Times the TX ring or the free frames ran out.
    pub tx_stalls: u64,
    pub start_ns: u64,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub iface: String,
    pub queue: u32,
    pub duration_s: f64,
    pub expect_flows: Option<u64>,
    /// Stop this long after the last probe (once at least one came).
    pub idle_exit: Option<Duration>,
    pub vxlan_port: u16,
    pub mode: XdpMode,
    pub progress: bool,
    /// Created (empty) once the socket is bound and ready.
    pub ready_file: Option<std::path::PathBuf>,
}

/// What the sink saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkResult {
    pub role: String,
    pub iface: String,
    pub queue: u32,
    /// Every frame received.
    pub frames: u64,
    /// Frames that carried a probe.
    pub probes: u64,
    /// Frames without a probe (ARP, other traffic).
    pub foreign: u64,
    /// Probes found inside VXLAN.
    pub encapsulated: u64,
    pub bytes: u64,
    /// First to last probe.
    pub elapsed_s: f64,
    pub pps: f64,
    pub bps: f64,
    pub flows: FlowTotals,
    pub expect_flows: Option<u64>,
    pub latency_ns: Percentiles,
    pub xsk: XskStats,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Headers of the first probe: the addresses and ports the datapath
    /// left on it (after NAT) and whether its checksums are still right.
    #[serde(default)]
    pub first_probe: Option<ProbeHeaders>,
}

fn check_duration(d: f64) -> anyhow::Result<f64> {
    if d.is_nan() || d <= 0.0 {
        bail!("--duration must be positive");
    }
    Ok(d.min(MAX_DURATION_S))
}

/// Sends probes as `cfg` says; returns when the count is sent, the
/// duration is over or `MAX_DURATION_S` has passed.
pub fn run_gen(cfg: &GenConfig) -> anyhow::Result<GenResult> {
    cfg.spec.validate()?;
    let duration_s = check_duration(cfg.duration_s)?;
    if cfg.rate == Some(0) {
        bail!("--rate must be positive (leave it out for flat out)");
    }
    let templates = (0..cfg.spec.flows)
        .map(|f| Template::build(&cfg.spec, f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut xsk = Xsk::open(&XskOptions {
        iface: cfg.iface.clone(),
        queue: cfg.queue,
        frames: 4096,
        ring: 2048,
        load_prog: false,
        mode: XdpMode::Auto,
    })?;
    xsk.init_tx_frames(&templates[0].bytes)?;

    let mut seqs = vec![0u64; templates.len()];
    let mut flow = 0usize;
    let count = cfg.count.unwrap_or(u64::MAX);
    let start = monotonic_ns();
    let deadline = start + (duration_s * 1e9) as u64;
    let mut sent = 0u64;
    let mut completed = 0u64;
    let mut stalls = 0u64;
    let mut next_progress = start + 1_000_000_000;
    let mut last_progress = (start, 0u64);
    let progress = cfg.progress && duration_s > 2.0;
    let mut now = start;
    while sent < count && now < deadline {
        completed += xsk.reclaim() as u64;
        let mut budget = BATCH.min((count - sent).min(BATCH as u64) as usize);
        if let Some(rate) = cfg.rate {
            let allowed = ((now - start) as u128 * rate as u128 / 1_000_000_000) as u64;
            let allowed = allowed.saturating_sub(sent).min(BATCH as u64) as usize;
            if allowed == 0 {
                let wait_ns = 1_000_000_000 / rate;
                if wait_ns > 100_000 {
                    std::thread::sleep(Duration::from_nanos(wait_ns / 2));
                } else {
                    std::hint::spin_loop();
                }
                now = monotonic_ns();
                continue;
            }
            budget = budget.min(allowed);
        }
        let ts = now;
        let n = xsk.send(budget, |buf| {
            let t = &templates[flow];
            t.write_into(buf, seqs[flow], ts);
            seqs[flow] += 1;
            flow += 1;
            if flow == templates.len() {
                flow = 0;
            }
        })?;
        if n < budget {
            stalls += 1;
        }
        sent += n as u64;
        now = monotonic_ns();
        if progress && now >= next_progress {
            let (t0, s0) = last_progress;
            let pps = (sent - s0) as f64 * 1e9 / (now - t0) as f64;
            eprintln!(
                "gen: {:>5.1}s sent {:>12} ({:>10.0} pps)",
                (now - start) as f64 / 1e9,
                sent,
                pps
            );
            last_progress = (now, sent);
            next_progress += 1_000_000_000;
        }
    }
    let end = now;
    // Let what is queued go out: kick until every frame is completed, for
    // at most 200 ms.
    let drain_until = monotonic_ns() + 200_000_000;
    while xsk.tx_in_flight() > 0 && monotonic_ns() < drain_until {
        xsk.kick()?;
        let n = xsk.reclaim();
        completed += n as u64;
        if n == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let elapsed_s = (end - start) as f64 / 1e9;
    let pps = if elapsed_s > 0.0 {
        sent as f64 / elapsed_s
    } else {
        0.0
    };
    Ok(GenResult {
        role: "gen".into(),
        iface: cfg.iface.clone(),
        queue: cfg.queue,
        src_ip: cfg.spec.src_ip,
        dst_ip: cfg.spec.dst_ip,
        dst_port: cfg.spec.dst_port,
        proto: cfg.spec.proto,
        size: cfg.spec.size,
        flows: cfg.spec.flows,
        rate_target: cfg.rate,
        count_target: cfg.count,
        duration_target_s: duration_s,
        sent,
        completed,
        elapsed_s,
        pps,
        bps: pps * cfg.spec.size as f64 * 8.0,
        tx_stalls: stalls,
        start_ns: start,
    })
}

/// Accumulates what the sink receives (no I/O: unit-testable).
#[derive(Debug, Default)]
pub struct SinkTally {
    pub frames: u64,
    pub probes: u64,
    pub foreign: u64,
    pub encapsulated: u64,
    pub bytes: u64,
    pub flows: Flows,
    pub latency: Histogram,
    pub first_ns: u64,
    pub last_ns: u64,
    pub first_probe: Option<ProbeHeaders>,
}

impl SinkTally {
    /// One received frame at time `now_ns`.
    pub fn record(&mut self, frame: &[u8], now_ns: u64, vxlan_port: u16) {
        self.frames += 1;
        match parse_probe(frame, vxlan_port) {
            Some(p) => {
                self.probes += 1;
                self.bytes += frame.len() as u64;
                if p.encapsulated {
                    self.encapsulated += 1;
                }
                self.flows.record(p.flow, p.seq);
                self.latency.record(now_ns.saturating_sub(p.ts_ns));
                if self.first_ns == 0 {
                    self.first_ns = now_ns;
                    self.first_probe = probe_headers(frame, vxlan_port);
                }
                self.last_ns = now_ns;
            }
            None => self.foreign += 1,
        }
    }

    pub fn result(&self, cfg: &SinkConfig, xsk: XskStats) -> SinkResult {
        let elapsed_s = self.last_ns.saturating_sub(self.first_ns) as f64 / 1e9;
        let (pps, bps) = if elapsed_s > 0.0 {
            (
                self.probes as f64 / elapsed_s,
                self.bytes as f64 * 8.0 / elapsed_s,
            )
        } else {
            (0.0, 0.0)
        };
        SinkResult {
            role: "sink".into(),
            iface: cfg.iface.clone(),
            queue: cfg.queue,
            frames: self.frames,
            probes: self.probes,
            foreign: self.foreign,
            encapsulated: self.encapsulated,
            bytes: self.bytes,
            elapsed_s,
            pps,
            bps,
            flows: self.flows.totals(),
            expect_flows: cfg.expect_flows,
            latency_ns: self.latency.percentiles(),
            xsk,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            first_probe: self.first_probe.clone(),
        }
    }
}

/// Receives until the duration is over (or idle after traffic, if asked).
pub fn run_sink(cfg: &SinkConfig) -> anyhow::Result<SinkResult> {
    let duration_s = check_duration(cfg.duration_s)?;
    ensure_bpffs();
    let mut xsk = Xsk::open(&XskOptions {
        iface: cfg.iface.clone(),
        queue: cfg.queue,
        frames: 4096,
        ring: 4096,
        load_prog: true,
        mode: cfg.mode,
    })?;
    xsk.fill_all()?;
    if let Some(path) = &cfg.ready_file {
        std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let mut tally = SinkTally::default();
    let start = monotonic_ns();
    let deadline = start + (duration_s * 1e9) as u64;
    let progress = cfg.progress && duration_s > 2.0;
    let mut next_progress = start + 1_000_000_000;
    let mut last_progress = (start, 0u64);
    let idle_ns = cfg.idle_exit.map(|d| d.as_nanos() as u64);
    loop {
        let now = monotonic_ns();
        let n = xsk.recv(|frame| tally.record(frame, now, cfg.vxlan_port))?;
        let now = if n == 0 { now } else { monotonic_ns() };
        if now >= deadline {
            break;
        }
        if let Some(idle) = idle_ns {
            if tally.probes > 0 && now.saturating_sub(tally.last_ns) > idle {
                break;
            }
        }
        if progress && now >= next_progress {
            let (t0, p0) = last_progress;
            let pps = (tally.probes - p0) as f64 * 1e9 / (now - t0) as f64;
            eprintln!(
                "sink: {:>5.1}s probes {:>12} ({:>10.0} pps) flows {} lost {}",
                (now - start) as f64 / 1e9,
                tally.probes,
                pps,
                tally.flows.totals().flows_seen,
                tally.flows.totals().lost
            );
            last_progress = (now, tally.probes);
            next_progress += 1_000_000_000;
        }
        if n == 0 {
            // Idle: sleep in poll(2) so a generator on this core can run.
            xsk.wait_rx(Duration::from_millis(10))?;
        }
    }
    let stats = xsk.stats().unwrap_or_default();
    Ok(tally.result(cfg, stats))
}

/// A one-paragraph human summary of a generator run.
pub fn gen_summary(r: &GenResult) -> String {
    format!(
        "gen {} -> {}:{} {} {}B x{} flows: sent {} in {:.3}s = {:.0} pps, {:.1} Mbit/s (completed {}, tx stalls {})",
        r.iface,
        r.dst_ip,
        r.dst_port,
        r.proto,
        r.size,
        r.flows,
        r.sent,
        r.elapsed_s,
        r.pps,
        r.bps / 1e6,
        r.completed,
        r.tx_stalls
    )
}

/// A one-paragraph human summary of a sink run.
pub fn sink_summary(r: &SinkResult) -> String {
    let l = &r.latency_ns;
    format!(
        "sink {}: {} probes ({} foreign) in {:.3}s = {:.0} pps, {:.1} Mbit/s; flows {}{}; lost {} reordered {}; \
         latency p50 {:.1}us p99 {:.1}us p999 {:.1}us max {:.1}us; xsk rx_dropped {} ring_full {} fill_empty {}{}",
        r.iface,
        r.probes,
        r.foreign,
        r.elapsed_s,
        r.pps,
        r.bps / 1e6,
        r.flows.flows_seen,
        r.expect_flows.map(|e| format!("/{e}")).unwrap_or_default(),
        r.flows.lost,
        r.flows.reordered,
        l.p50 as f64 / 1e3,
        l.p99 as f64 / 1e3,
        l.p999 as f64 / 1e3,
        l.max as f64 / 1e3,
        r.xsk.rx_dropped,
        r.xsk.rx_ring_full,
        r.xsk.rx_fill_ring_empty,
        r.first_probe
            .as_ref()
            .map(|h| format!("; first probe: {h}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::VXLAN_PORT;

    fn spec() -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::new(10, 0, 0, 2),
            dst_port: 9,
            src_port_base: 10000,
            size: 64,
            flows: 3,
            proto: Proto::Udp,
        }
    }

    #[test]
    fn tally_counts_probes_flows_loss_and_latency() {
        let s = spec();
        let ts: Vec<Template> = (0..3).map(|f| Template::build(&s, f).unwrap()).collect();
        let mut frame = ts[0].bytes.clone();
        let mut tally = SinkTally::default();
        // Flow 0: seq 0..10 in order; flow 1: 0..10 without 4; flow 2: 1, 0.
        for seq in 0..10u64 {
            ts[0].write_into(&mut frame, seq, 1_000);
            tally.record(&frame, 1_000 + 10_000, VXLAN_PORT);
            if seq != 4 {
                ts[1].write_into(&mut frame, seq, 2_000);
                tally.record(&frame, 2_000 + 20_000, VXLAN_PORT);
            }
        }
        for seq in [1, 0] {
            ts[2].write_into(&mut frame, seq, 0);
            tally.record(&frame, 30_000, VXLAN_PORT);
        }
        tally.record(&[0u8; 60], 40_000, VXLAN_PORT);
        let cfg = SinkConfig {
            iface: "x".into(),
            queue: 0,
            duration_s: 1.0,
            expect_flows: Some(3),
            idle_exit: None,
            vxlan_port: VXLAN_PORT,
            mode: XdpMode::Auto,
            progress: false,
            ready_file: None,
        };
        let r = tally.result(&cfg, XskStats::default());
        assert_eq!(r.frames, 22);
        assert_eq!(r.probes, 21);
        assert_eq!(r.foreign, 1);
        assert_eq!(r.bytes, 21 * 64);
        assert_eq!(r.flows.flows_seen, 3);
        assert_eq!(r.flows.lost, 1);
        assert_eq!(r.flows.reordered, 1);
        assert_eq!(r.flows.expected, 22);
        assert_eq!(r.latency_ns.samples, 21);
        assert_eq!(r.latency_ns.min, 10_000);
        assert_eq!(r.latency_ns.max, 30_000);
        // 10 at 10 us, 9 at 20 us, 2 at 30 us: p50 is 20 us.
        assert!((r.latency_ns.p50 as i64 - 20_000).abs() < 200);
        assert_eq!(r.first_ns, 11_000);
        assert_eq!(r.last_ns, 30_000);
        let first = r.first_probe.as_ref().expect("first probe's headers");
        assert_eq!(first.src.to_string(), "10.0.0.1:10000");
        assert_eq!(first.dst.to_string(), "10.0.0.2:9");
        assert!(first.ipv4_checksum_ok && first.l4_checksum_ok == Some(true));
        let json = serde_json::to_string(&r).unwrap();
        let back: SinkResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(sink_summary(&r).contains("lost 1 reordered 1"));
    }

    #[test]
    fn durations_are_bounded() {
        assert!(check_duration(0.0).is_err());
        assert!(check_duration(f64::NAN).is_err());
        assert_eq!(check_duration(1e9).unwrap(), MAX_DURATION_S);
        assert_eq!(check_duration(2.5).unwrap(), 2.5);
    }
}
