//! The report: `report.json` (everything) and `report.md` (the tables).

use std::fmt::Write as _;

use super::tcp::TcpMeasurement;
use super::{BenchConfig, Measurement, PointResult, Report};

/// `median [min – max]` Gbit/s of a tcp-svc measurement, or why there is none.
pub fn gbps_cell(m: &TcpMeasurement) -> String {
    match m.gbps {
        Some(s) => {
            let partial = if !m.errors.is_empty() {
                format!(
                    " ({} of {} runs failed)",
                    m.errors.len(),
                    m.errors.len() + s.n
                )
            } else {
                String::new()
            };
            format!(
                "{:.2} Gbit/s [{:.2} – {:.2}]{partial}",
                s.median, s.min, s.max
            )
        }
        None if !m.errors.is_empty() => "failed".into(),
        None => "–".into(),
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map(|x| format!("**{x:.2}x**"))
        .unwrap_or_else(|| "–".into())
}

fn plain_ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "–".into())
}

/// `1.23 M` / `456 k` style packet rates.
pub fn pps(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `median [min – max]` of the delivered rate, or why there is none.
pub fn cell(m: &Measurement) -> String {
    match m.delivered_pps {
        Some(s) => format!("{} [{} – {}]", pps(s.median), pps(s.min), pps(s.max)),
        None if !m.errors.is_empty() => "failed".into(),
        None => "–".into(),
    }
}

fn loss(m: &Measurement) -> String {
    m.lost_pct
        .map(|s| format!("{:.1}%", s.median))
        .unwrap_or_else(|| "–".into())
}

fn half(m: &Measurement) -> String {
    match &m.at_half_rate {
        Some((rate, f)) => format!(
            "{} pps: p50 {:.0} / p99 {:.0} µs, lost {:.2}%",
            pps(*rate as f64),
            f.p50_us,
            f.p99_us,
            f.lost_pct
        ),
        None => "–".into(),
    }
}

/// The headline table: one row per scenario point, kxdp vs kernel.
pub fn headline(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | frame | flows | kxdp delivered pps | kernel delivered pps | kxdp / kernel |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in &r.points {
        let _ = writeln!(
            s,
            "| {} | {} B | {} | {} | {} | {} |",
            p.scenario,
            p.size,
            p.flows,
            cell(&p.kxdp),
            cell(&p.kernel),
            p.ratio
                .map(|x| format!("**{x:.2}x**"))
                .unwrap_or_else(|| "–".into())
        );
    }
    for c in &r.ceiling {
        let _ = writeln!(
            s,
            "| AF_XDP ceiling (testpmd io-fwd) | {} B | {} | {} | | |",
            c.size,
            c.flows,
            cell(&c.testpmd)
        );
    }
    for t in &r.tcp {
        let _ = writeln!(
            s,
            "| tcp-svc, {} | MSS 1398 | 1 TCP | {} | {} | {} |",
            t.mode,
            gbps_cell(&t.kxdp),
            gbps_cell(&t.kernel),
            ratio_cell(t.ratio)
        );
    }
    for p in &r.pending {
        let _ = writeln!(s, "| {} | | | not yet available | | |", p.scenario);
    }
    s
}

fn pps_or_dash(v: Option<f64>) -> String {
    v.map(pps).unwrap_or_else(|| "–".into())
}

/// The generator's median sent rate of a measurement.
fn sent(m: &Measurement) -> String {
    pps_or_dash(m.gen_pps.map(|g| g.median))
}

/// `--offered`: per point, a row per offered rate and one flat out (sent,
/// delivered, loss of both datapaths, the ratio), then each point's best
/// delivered rates and their ratio.
pub fn offered_section(r: &Report) -> String {
    let mut s = String::new();
    let swept: Vec<&PointResult> = r.points.iter().filter(|p| !p.offered.is_empty()).collect();
    if swept.is_empty() {
        return s;
    }
    s.push_str(
        "## Offered load sweep\n\n\
         Flat out, a datapath past its knee can collapse (receive livelock), and a ratio taken \
         there says more about overload than about capacity; so every point also ran with the \
         generator capped at each offered rate, runs alternating kxdp and kernel as flat out. \
         \"Best delivered, kxdp / kernel\" takes each datapath's best median delivered pps over \
         flat out and all offered rates, and the ratio of the two bests: the capacity \
         comparison that does not depend on either datapath's overload behaviour.\n\n\
         | scenario | frame | flows | offered | kxdp sent (median) | kxdp delivered | kxdp loss | kernel sent (median) | kernel delivered | kernel loss | kxdp / kernel |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in swept {
        let rows = p
            .offered
            .iter()
            .map(|o| (pps(o.offered_pps as f64), &o.kxdp, &o.kernel, o.ratio))
            .chain(std::iter::once((
                "flat out".to_string(),
                &p.kxdp,
                &p.kernel,
                p.ratio,
            )));
        for (offered, k, l, ratio) in rows {
            let _ = writeln!(
                s,
                "| {} | {} B | {} | {offered} | {} | {} | {} | {} | {} | {} | {} |",
                p.scenario,
                p.size,
                p.flows,
                sent(k),
                cell(k),
                loss(k),
                sent(l),
                cell(l),
                loss(l),
                plain_ratio(ratio)
            );
        }
    }
    s.push('\n');
    let at = |v: Option<f64>, at: Option<u64>| match (v, at) {
        (None, _) => "–".to_string(),
        (Some(v), None) => format!("{} (flat out)", pps(v)),
        (Some(v), Some(a)) => format!("{} (offered {})", pps(v), pps(a as f64)),
    };
    for b in &r.offered_best {
        let _ = writeln!(
            s,
            "- {} {} B {} flows: best delivered, kxdp {} / kernel {}: {}",
            b.scenario,
            b.size,
            b.flows,
            at(b.kxdp, b.kxdp_at),
            at(b.kernel, b.kernel_at),
            ratio_cell(b.ratio)
        );
    }
    s.push('\n');
    s
}

/// One-hop scenarios (pod-svc-hop, egress) beside the testpmd ceiling of the same
/// run: a table, one line per point (kxdp / ceiling), the frames tcpdump
/// saw on the switch port.
pub fn hop_section(r: &Report) -> String {
    let mut s = String::new();
    if r.hop_vs_ceiling.is_empty() {
        return s;
    }
    s.push_str(
        "\n### One hop against the AF_XDP ceiling\n\n\
         pod-svc-hop: a pod's frames to the ClusterIP, conntrack + DNAT + VXLAN encap on n1, \
         counted by the sink on the switch end of n1's uplink veth (probes inside VXLAN); \
         egress: a pod's frames to the outside world, masquerade (conntrack + SNAT to n1's \
         underlay address) on n1, counted there too (plain UDP to the router's MAC): one \
         forwarding hop with the full work, against testpmd's io forward between two veths \
         (one AF_XDP hop, no header work) at the same frame size and flows, from the same run. \
         Medians of delivered pps (the frame size is the pod's frame; on the underlay it is \
         50 B longer for VXLAN). Target: kxdp / ceiling >= 1.\n\n\
         | scenario | frame | flows | kxdp | kernel | kxdp / kernel | testpmd ceiling | kxdp / ceiling | kernel / ceiling |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for h in &r.hop_vs_ceiling {
        let _ = writeln!(
            s,
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {} |",
            h.scenario,
            h.size,
            h.flows,
            pps_or_dash(h.kxdp),
            pps_or_dash(h.kernel),
            plain_ratio(h.kxdp_over_kernel),
            pps_or_dash(h.ceiling),
            ratio_cell(h.kxdp_over_ceiling),
            plain_ratio(h.kernel_over_ceiling)
        );
    }
    s.push('\n');
    for h in &r.hop_vs_ceiling {
        let _ = writeln!(
            s,
            "- {} {} B {} flows: kxdp one hop {} pps vs AF_XDP ceiling {} pps: {} ({})",
            h.scenario,
            h.size,
            h.flows,
            pps_or_dash(h.kxdp),
            pps_or_dash(h.ceiling),
            plain_ratio(h.kxdp_over_ceiling),
            match h.kxdp_over_ceiling {
                Some(x) if x >= 1.0 => "at or above the ceiling",
                Some(_) => "below the ceiling",
                None => "no ratio",
            }
        );
    }
    if !r.underlay_frames.is_empty() {
        s.push_str(
            "\nOne of n1's frames as tcpdump saw it on the switch port during the next-hop \
             warm-up (sink at the real destination: n2/p1, or the outside world's server for \
             egress, before the hop's sink attached to the switch port): for VXLAN the outer \
             headers, which the sink's first-probe record does not show.\n\n\
             | scenario | datapath | where | frame |\n|---|---|---|---|\n",
        );
        for w in &r.underlay_frames {
            let _ = writeln!(
                s,
                "| {} | {} | {} | `{}` |",
                w.scenario,
                w.datapath,
                w.sent,
                w.received.replace('|', "/").replace('`', "'")
            );
        }
    }
    s
}

/// svc-scale: the table switches and the big/small ratios.
pub fn scale_section(r: &Report) -> String {
    let mut s = String::new();
    if r.scale.is_empty() && r.scale_errors.is_empty() {
        return s;
    }
    s.push_str(
        "\n## svc-scale: 2 services vs 10,000 services / 99,982 endpoints\n\n\
         The pod-svc walk (n1/p1 -> ClusterIP 10.96.0.20:5201/UDP -> n2/p1, conntrack + DNAT + \
         VXLAN), measured first with the bench cluster file's two services on both datapaths, \
         then with 9,998 more services (ClusterIPs 10.97.0.1 up, TCP 80 -> 8080, 10 endpoints \
         each, in n1's and n2's pod CIDRs) loaded into both, then the small table put back. \
         kxdp: the cluster file plus those services through `kxdpctl apply` (kxdp-control \
         pushes the whole state to both dataplanes; the harness waits until both report the \
         new generation applied). Kernel: the same services as kube-proxy's nftables mode \
         writes them (`service-ips` element, service chain with a `numgen` vmap, one endpoint \
         chain with `dnat` per endpoint), `nft -f` on top of `kernel/kube-proxy.nft` in both \
         nodes. Runs alternate kxdp and kernel within each phase; the small and big phases \
         follow each other (not interleaved: the kernel's rule set takes minutes to load), so \
         machine load that changes between them shows up in both datapaths' big/small ratio.\n\n\
         | frame | flows | kxdp big / small | kernel big / small | kxdp / kernel, small | kxdp / kernel, big |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in &r.scale {
        let _ = writeln!(
            s,
            "| {} B | {} | {} | {} | {} | {} |",
            p.size,
            p.flows,
            plain_ratio(p.kxdp_big_over_small),
            plain_ratio(p.kernel_big_over_small),
            plain_ratio(p.kxdp_over_kernel_small),
            plain_ratio(p.kxdp_over_kernel_big)
        );
    }
    s.push_str(
        "\nTable switches:\n\n| datapath | switch | seconds | detail |\n|---|---|---|---|\n",
    );
    for w in &r.scale_switches {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} |",
            w.datapath, w.what, w.seconds, w.detail
        );
    }
    for e in &r.scale_errors {
        let _ = writeln!(s, "\n- error: {e}");
    }
    s
}

/// The policy scenarios: with/without per datapath, the not-allowed flow
/// check, the rule counters, the switch times.
pub fn policy_section(r: &Report) -> String {
    let p = &r.policy;
    let mut s = String::new();
    if p.summary.is_empty() && p.checks.is_empty() && p.errors.is_empty() {
        return s;
    }
    s.push_str(
        "\n## Network policy: without vs with\n\n\
         The same walk measured without and with the bench policy set \
         (`src/bench/policy.rs`: namespace bench default-denies ingress and egress, two policies \
         allow exactly the generator's flow, 200 ipBlock policies select every bench pod, 100 \
         more live in other namespaces), runs alternating without/with and kxdp/kernel: off \
         (kxdp, kernel), switch, on (kxdp, kernel), on, switch, off, ... kxdp gets the set \
         through `kxdpctl apply` (the harness waits until both nodes report the generation \
         applied); the kernel gets Calico's iptables rules and ipsets for it \
         (`kernel/calico-policy.iptables`, filled per node). Goal: kxdp with / without ≥ 0.95.\n\n\
         | scenario | frame | flows | kxdp with / without | kernel with / without | kxdp / kernel, without | kxdp / kernel, with |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for x in &p.summary {
        let _ = writeln!(
            s,
            "| {} | {} B | {} | **{}** | {} | {} | **{}** |",
            x.scenario,
            x.size,
            x.flows,
            plain_ratio(x.kxdp_with_over_without),
            plain_ratio(x.kernel_with_over_without),
            plain_ratio(x.kxdp_over_kernel_without),
            plain_ratio(x.kxdp_over_kernel_with)
        );
    }
    s.push_str(
        "\nA flow the policy does not allow (n1/p2, `app: idle`, to the same destination, 1 s at \
         10 kpps) while the policy is on: nothing may reach the sink, and the datapath must \
         count the drops.\n\n\
         | scenario | datapath | flow | sent | delivered | counted | counter | ok |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for c in &p.checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.scenario,
            c.datapath,
            c.flow,
            c.sent,
            c.delivered,
            c.counted,
            c.counter,
            match (&c.error, c.ok) {
                (Some(e), _) => format!("error: {e}"),
                (None, true) => "**yes**".into(),
                (None, false) => "**NO**".into(),
            }
        );
    }
    if !p.kernel_counters.is_empty() {
        s.push_str(
            "\nKernel: the Calico rules' packet counters at the end of each scenario (non-zero; \
             `iptables-save -c`):\n\n| scenario | node | chain: what | packets |\n|---|---|---|---|\n",
        );
        for (sc, node, counters) in &p.kernel_counters {
            for (k, n) in counters {
                let _ = writeln!(s, "| {sc} | {node} | {k} | {n} |");
            }
        }
    }
    if !p.kxdp_counters.is_empty() {
        s.push_str("\nkxdp: policy drops at the end of each scenario (`kxdpctl counters`):\n\n");
        for (sc, line) in &p.kxdp_counters {
            let _ = writeln!(s, "- {sc}: {line}");
        }
    }
    if !p.toggles.is_empty() {
        s.push_str("\nSwitching the policy set on and off (wall time, median [min – max]):\n\n");
        for dp in ["kxdp", "kernel"] {
            for what in ["policy on", "policy off"] {
                let v: Vec<f64> = p
                    .toggles
                    .iter()
                    .filter(|t| t.datapath == dp && t.what == what)
                    .map(|t| t.seconds * 1e3)
                    .collect();
                if let Some(sp) = crate::stats::Spread::of(&v) {
                    let _ = writeln!(
                        s,
                        "- {dp}, {what}: {:.0} ms [{:.0} – {:.0}], {} times",
                        sp.median, sp.min, sp.max, sp.n
                    );
                }
            }
        }
        s.push_str(
            "\n(kxdp: `kxdpctl apply` of the whole cluster file until both nodes report the \
             generation, polled every 50 ms; kernel: `ipset restore` + `iptables-restore` into \
             both nodes, or their removal.)\n",
        );
    }
    for c in &p.kernel_commands {
        let _ = writeln!(s, "\n- kernel: `{c}`");
    }
    if let Some(f) = &p.kxdp_file {
        let _ = writeln!(s, "- kxdp: `kxdpctl apply {f}` (kept in `raw/`)");
    }
    for e in &p.errors {
        let _ = writeln!(s, "\n- error: {e}");
    }
    s
}

/// tcp-svc: per offload mode, both datapaths' runs, offload state, errors.
pub fn tcp_section(r: &Report) -> String {
    let mut s = String::new();
    if r.tcp.is_empty() {
        return s;
    }
    s.push_str(
        "\n## tcp-svc: iperf3 through a TCP ClusterIP\n\n\
         `iperf3 -c 10.96.0.21 -p 5201 -t <duration> -J` in n1/p1 to `iperf3 -s -1` in n2/p1, \
         the only endpoint of `bench/tcp` (10.96.0.21:5201/TCP): DNAT + VXLAN on n1, decap on \
         n2; one TCP connection, receiver's goodput (`end.sum_received`), retransmits from the \
         sender. Runs alternate kxdp and kernel. Pod eth0 MTU 1450 (MSS 1398).\n\n\
         | offloads | datapath | Gbit/s median [min – max] | retransmits (median) | runs |\n\
         |---|---|---|---|---|\n",
    );
    for t in &r.tcp {
        for (dp, m) in [("kxdp", &t.kxdp), ("kernel", &t.kernel)] {
            let runs: Vec<String> = m.runs.iter().map(|x| format!("{:.2}", x.gbps)).collect();
            let _ = writeln!(
                s,
                "| {} | {dp} | {} | {} | {} |",
                t.mode,
                gbps_cell(m),
                m.retransmits
                    .map(|x| format!("{:.0}", x.median))
                    .unwrap_or_else(|| "–".into()),
                runs.join(", ")
            );
        }
    }
    s.push_str("\nOffload modes and the state `ethtool -k` reported after setting them:\n\n");
    for t in &r.tcp {
        let _ = writeln!(s, "- **{}**: {}", t.mode, t.what);
        for (dp, m) in [("kxdp", &t.kxdp), ("kernel", &t.kernel)] {
            for o in &m.offloads {
                let _ = writeln!(s, "  - {dp}: {o}");
            }
            for e in &m.errors {
                let _ = writeln!(s, "  - {dp} error: {e}");
            }
        }
    }
    s
}

/// Every error of the runs, flat out, offered and ceiling, one line each.
pub fn errors(r: &Report) -> Vec<String> {
    r.points
        .iter()
        .flat_map(|p| {
            let swept = p.offered.iter().flat_map(|o| {
                let at = format!(" at {} pps offered", o.offered_pps);
                [(at.clone(), "kxdp", &o.kxdp), (at, "kernel", &o.kernel)]
            });
            [
                (String::new(), "kxdp", &p.kxdp),
                (String::new(), "kernel", &p.kernel),
            ]
            .into_iter()
            .chain(swept)
            .flat_map(move |(at, dp, m)| {
                m.errors.iter().map(move |e| {
                    format!("{} {}B {} flows{at} {dp}: {e}", p.scenario, p.size, p.flows)
                })
            })
        })
        .chain(r.ceiling.iter().flat_map(|c| {
            c.testpmd
                .errors
                .iter()
                .map(move |e| format!("ceiling {}B {} flows: {e}", c.size, c.flows))
        }))
        .collect()
}

pub fn markdown(cfg: &BenchConfig, r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# kxdp benchmark report — {}\n", r.date);
    let _ = writeln!(s, "- host: {}", r.host);
    let _ = writeln!(s, "- code: {}", r.git);
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(
        s,
        "- each figure: median [min – max] of {} runs of {} s, frames/s counted at the sink \
         (probes received / generator run time); runs alternate kxdp, kernel, kxdp, kernel, …",
        r.runs, r.duration_s
    );
    let _ = writeln!(
        s,
        "- load average before / after: {} / {}",
        r.load_before, r.load_after
    );
    if !r.uptime_before.is_empty() {
        let _ = writeln!(
            s,
            "- `uptime` before / after: `{}` / `{}`",
            r.uptime_before, r.uptime_after
        );
    }
    s.push('\n');
    s.push_str("## Headline\n\n");
    s.push_str(&headline(r));
    s.push_str(&hop_section(r));
    s.push('\n');
    if cfg.out.join("delivered.png").exists() {
        s.push_str("![delivered packets per second](delivered.png)\n\n");
    }

    s.push_str("## Loss and latency\n\n");
    s.push_str(
        "Flat-out loss is generator sent minus sink received (what the datapath dropped or \
         never forwarded). The latency run offers half the median flat-out rate of the same \
         datapath; its p50/p99 are one-way (generator timestamp to sink receive, CLOCK_MONOTONIC \
         on the same host).\n\n",
    );
    s.push_str(
        "| scenario | frame | flows | datapath | generator offered (median) | loss flat out | at 50% of max |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for p in &r.points {
        for (dp, m) in [("kxdp", &p.kxdp), ("kernel", &p.kernel)] {
            let _ = writeln!(
                s,
                "| {} | {} B | {} | {dp} | {} | {} | {} |",
                p.scenario,
                p.size,
                p.flows,
                sent(m),
                loss(m),
                half(m)
            );
        }
    }
    for c in &r.ceiling {
        let m = &c.testpmd;
        let _ = writeln!(
            s,
            "| ceiling | {} B | {} | testpmd | {} | {} | {} |",
            c.size,
            c.flows,
            sent(m),
            loss(m),
            half(m)
        );
    }
    s.push('\n');
    s.push_str(&offered_section(r));

    s.push_str("## Cores\n\n| process | core(s) | how |\n|---|---|---|\n");
    for p in &r.pinning {
        let _ = writeln!(s, "| {} | {} | {} |", p.process, p.cores, p.how);
    }
    s.push_str("\nWhat could not be pinned:\n\n");
    for n in &r.not_pinned {
        let _ = writeln!(s, "- {n}");
    }
    s.push('\n');

    s.push_str("## Scenarios\n\n");
    for (name, walk) in &r.walks {
        let _ = writeln!(s, "- **{name}**: {walk}");
    }
    s.push_str("\nWhere the generator and the sink attached:\n\n| scenario | datapath | generator | frames | sink | note |\n|---|---|---|---|---|---|\n");
    for (name, dp, a) in &r.attach {
        let _ = writeln!(
            s,
            "| {name} | {dp} | {} {} | {} {} → {} {}:{} | {} {} | {} |",
            a.gen_ns,
            a.gen_iface,
            a.src_mac,
            a.src_ip,
            a.dst_mac,
            a.dst_ip,
            a.dst_port,
            a.sink_ns,
            a.sink_iface,
            a.note
        );
    }
    if let Some(c) = &r.ceiling_command {
        let _ = writeln!(s, "\ntestpmd: `{c}`");
    }
    s.push_str(&services_section(r));
    s.push_str(&scale_section(r));
    s.push_str(&policy_section(r));
    s.push_str(&tcp_section(r));
    if !r.pending.is_empty() {
        s.push_str("\n### Not yet available\n\n");
        for p in &r.pending {
            let _ = writeln!(
                s,
                "- **{}** ({}): waits for {}",
                p.scenario, p.walk, p.waits_for
            );
        }
    }

    let errors = errors(r);
    if !errors.is_empty() {
        s.push_str("\n## Errors\n\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s.push_str("\n## Noise and honesty\n\n");
    s.push_str(
        "- This is a 2-core VM shared with colleagues who compile while it runs: every figure \
         moves by tens of percent from run to run; compare medians side by side from the same \
         report, not across reports.\n\
         - Everything is veth + AF_XDP copy mode (no zero-copy on veth): absolute rates say little \
         about a real NIC; the ratios and the ceiling are what this measures.\n\
         - The sink takes frames with an XDP program on the destination pod's eth0, before the \
         pod's kernel; on kernel nodes the harness adds a permanent neighbour entry for that pod \
         (its ARP replies would be eaten by the sink).\n",
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// The service scenarios: how the kernel got its services, what the sink
/// saw after NAT, and the conntrack entries on the entry node.
pub fn services_section(r: &Report) -> String {
    let mut s = String::new();
    if !r.kernel_services.is_empty() {
        s.push_str(
            "\n### Services\n\n\
             Both labs are built from `config/bench-services.yaml`: service `bench/svc`, \
             ClusterIP 10.96.0.20:5201/UDP, NodePort 30520/UDP, externalTrafficPolicy Cluster, one \
             endpoint n2/p1 (10.244.2.2:5201), where the sink is. kxdp serves it from that file \
             (conntrack, Maglev, DNAT, for the NodePort SNAT to n1's gateway 10.244.1.1). The \
             kernel lab gets what kube-proxy's nftables mode would write for it (table \
             `ip kube-proxy`: `services` verdict maps, `numgen random mod 1` to the endpoint \
             chain's `dnat`, mark 0x4000 and `masquerade fully-random` for the NodePort, \
             conntrack implicit), on both nodes, for the service scenarios only \
             (the pod-pod kernel figures run without it, so without conntrack):\n\n",
        );
        for c in &r.kernel_services {
            let _ = writeln!(s, "    {c}");
        }
    }
    if !r.sink_saw.is_empty() {
        s.push_str(
            "\nThe first probe of each scenario's warm-up, as the generator sent it and as the \
             sink received it (inner headers when in VXLAN), with its checksums checked \
             from scratch:\n\n| scenario | datapath | sent | sink received |\n|---|---|---|---|\n",
        );
        for w in &r.sink_saw {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                w.scenario, w.datapath, w.sent, w.received
            );
        }
    }
    let ct: Vec<_> = r
        .points
        .iter()
        .filter_map(|p| p.conntrack.as_ref().map(|c| (p, c)))
        .collect();
    if !ct.is_empty() {
        s.push_str(
            "\nConntrack entries of the scenario's flows (original direction: generator's \
             address -> service address and port) on the entry node after each point's \
             flat-out runs: kxdp from `kxdpctl conntrack`, the kernel from the node's \
             `/proc/net/nf_conntrack`. Same 5-tuples at every frame size, so a point may \
             still hold entries of the previous one.\n\n\
             | scenario | frame | flows | node | kxdp entries | kernel entries |\n|---|---|---|---|---|---|\n",
        );
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        for (p, c) in ct {
            let _ = writeln!(
                s,
                "| {} | {} B | {} | {} | {} | {} |",
                p.scenario,
                p.size,
                p.flows,
                c.node,
                n(c.kxdp),
                n(c.kernel)
            );
            for e in &c.errors {
                let _ = writeln!(s, "| | | | | error: {e} | |");
            }
        }
    }
    s
}

pub fn write(cfg: &BenchConfig, r: &Report) -> anyhow::Result<()> {
    std::fs::write(
        cfg.out.join("report.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    if let Err(e) = super::plot::delivered(r, &cfg.out.join("delivered.png")) {
        crate::say!("==> no plot: {e:#}");
    }
    std::fs::write(cfg.out.join("report.md"), markdown(cfg, r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_well() {
        assert_eq!(pps(1_234_567.0), "1.23 M");
        assert_eq!(pps(456_789.0), "457 k");
        assert_eq!(pps(12.0), "12");
    }

    #[test]
    fn cells_say_median_min_max_or_why_not() {
        let mut m = Measurement::default();
        assert_eq!(cell(&m), "–");
        m.errors.push("boom".into());
        assert_eq!(cell(&m), "failed");
        m.delivered_pps = crate::stats::Spread::of(&[100_000.0, 300_000.0, 200_000.0]);
        assert_eq!(cell(&m), "200 k [100 k – 300 k]");
    }
}
