//! Packet trace and capture: what the pipeline did with the next few
//! matching frames, recorded off the fast path.
//!
//! The pipeline's batch loop is generic over a [`Tracer`]. Workers run
//! [`NoTrace`], whose hooks are empty and compile away, unless an operator
//! armed a trace or capture: then the worker runs that batch through
//! [`Pipeline::process_traced`](crate::pipeline::Pipeline::process_traced)
//! with a [`Recorder`] (one branch per batch, none per packet; see
//! `dataplane/src/worker.rs`). The recorder keeps, for each frame its
//! [`Filter`] matches, the headers before and after the pipeline, whether
//! the flow cache answered (its hit counter moved), what conntrack held before and after (so: a
//! hit, or a new flow and the backend chosen and why), the rewrites that
//! show in the headers (DNAT, SNAT, TTL, encap, decap) and the verdict,
//! or, for a capture, the frame bytes at the capture point. It allocates;
//! only armed batches pay for it.
//!
//! The filter language (`kxdpctl trace --match`), terms joined by `and`
//! (binds tighter) and `or`:
//! - `src A[/N]`, `dst A[/N]`, `host A[/N]` (either address);
//! - `proto tcp|udp|icmp|arp|NUMBER`;
//! - `port NUMBER` (TCP/UDP source or destination port);
//! - `port NAME` (the frame came in on that interface).
//!
//! A VXLAN frame matches if its outer or its inner headers do.

use core::fmt::Write as _;
use core::net::Ipv4Addr;

use crate::conntrack::{Conntrack, Dir, FlowKey};
use crate::pipeline::{Counters, Packet, Verdict};
use crate::policy::{Decided, Decision, Direction, Policies};
use crate::prefix::Prefix;
use crate::tables::{PortId, Tables};
use crate::wire::{
    ethernet::{self, EthernetFrame},
    ipv4::{self, Ipv4Packet},
    l4, vxlan, EthernetAddress,
};

/// Most packets one trace follows: each record is a few hundred bytes of
/// text, and a trace is for reading.
pub const MAX_TRACE: u32 = 100;
/// Most frames one capture takes: up to 2 KiB each, so a capture's reply
/// stays below 4 MiB (gRPC's default message limit).
pub const MAX_CAPTURE: u32 = 1000;

/// The hooks the pipeline's batch loop calls around each packet, with
/// what they may read: the tables and the worker's [`Seen`]. Both are
/// no-ops by default, so [`NoTrace`] costs nothing.
pub trait Tracer {
    /// Before the pipeline looks at `p`.
    #[inline(always)]
    fn before(&mut self, _t: &Tables, _s: &Seen<'_>, _p: &Packet<'_>) {}
    /// After `p.verdict` is set.
    #[inline(always)]
    fn after(&mut self, _t: &Tables, _s: &Seen<'_>, _p: &Packet<'_>) {}
}

/// What a tracer reads of a worker: conntrack, counters, and its last
/// network-policy decision.
pub struct Seen<'a> {
    pub ct: &'a Conntrack,
    pub counters: &'a Counters,
    pub decided: &'a Decided,
}

/// The tracer of every batch nobody asked to see.
pub struct NoTrace;

impl Tracer for NoTrace {}

/// Where a capture takes its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// As received (frames handed from another worker are not received
    /// again).
    Rx,
    /// As sent, after every rewrite.
    Tx,
    /// Dropped frames as received, with the reason.
    Drop,
    /// Received on this port, or sent out of it.
    Port(PortId),
}

/// What a [`Recorder`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Trace,
    Capture(Point),
}

/// One term of a [`Filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Src(Prefix),
    Dst(Prefix),
    Host(Prefix),
    Proto(u8),
    /// `proto arp`: the Ethernet type, not an IP protocol.
    Arp,
    Port(u16),
    Ingress(PortId),
}

/// A parsed `--match`: alternatives (`or`) of conjunctions (`and`); empty
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    any: Vec<Vec<Term>>,
}

impl Filter {
    /// Parses the filter language (module docs). `port NAME` asks
    /// `iface` for the port of that interface. The error names the
    /// offending word.
    pub fn parse(s: &str, iface: impl Fn(&str) -> Option<PortId>) -> Result<Filter, String> {
        let mut f = Filter::default();
        let mut all = vec![];
        let mut words = s.split_whitespace().peekable();
        let mut want_term = true;
        while let Some(w) = words.next() {
            if !want_term {
                match w {
                    "and" => {}
                    "or" => f.any.push(core::mem::take(&mut all)),
                    _ => return Err(format!("expected `and` or `or`, found {w:?}")),
                }
                want_term = true;
                continue;
            }
            let arg = words.next().ok_or_else(|| format!("{w:?} needs a value"))?;
            let term = match w {
                "src" => Term::Src(prefix(arg)?),
                "dst" => Term::Dst(prefix(arg)?),
                "host" => Term::Host(prefix(arg)?),
                "proto" => match arg {
                    "tcp" => Term::Proto(ipv4::protocol::TCP),
                    "udp" => Term::Proto(ipv4::protocol::UDP),
                    "icmp" => Term::Proto(ipv4::protocol::ICMP),
                    "arp" => Term::Arp,
                    n => Term::Proto(n.parse().map_err(|_| {
                        format!("proto {n:?}: expected tcp, udp, icmp, arp or 0-255")
                    })?),
                },
                "port" => match arg.parse::<u16>() {
                    Ok(p) => Term::Port(p),
                    Err(_) if arg.bytes().all(|b| b.is_ascii_digit()) => {
                        return Err(format!("port {arg:?}: above 65535"))
                    }
                    Err(_) => Term::Ingress(
                        iface(arg).ok_or_else(|| format!("port {arg:?}: no such interface"))?,
                    ),
                },
                _ => {
                    return Err(format!(
                        "unknown term {w:?}: expected src, dst, host, proto or port"
                    ))
                }
            };
            all.push(term);
            want_term = false;
        }
        if want_term && !(f.any.is_empty() && all.is_empty()) {
            return Err("the filter ends with `and` or `or`".into());
        }
        if !all.is_empty() {
            f.any.push(all);
        }
        Ok(f)
    }

    /// Whether a frame received on `port` matches.
    pub fn matches(&self, port: PortId, h: &Parsed) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|all| {
                all.iter().all(|term| {
                    term_matches(term, port, &h.outer)
                        || h.inner
                            .as_ref()
                            .is_some_and(|(_, _, inner)| term_matches(term, port, inner))
                })
            })
    }
}

fn term_matches(term: &Term, port: PortId, h: &Headers) -> bool {
    let ip = h.ip.as_ref();
    match *term {
        Term::Src(p) => ip.is_some_and(|ip| p.contains(ip.src)),
        Term::Dst(p) => ip.is_some_and(|ip| p.contains(ip.dst)),
        Term::Host(p) => ip.is_some_and(|ip| p.contains(ip.src) || p.contains(ip.dst)),
        Term::Proto(n) => ip.is_some_and(|ip| ip.proto == n),
        Term::Arp => h.ethertype == ethernet::ethertype::ARP,
        Term::Port(n) => ip.is_some_and(|ip| ip.ports.is_some_and(|(s, d)| s == n || d == n)),
        Term::Ingress(id) => port == id,
    }
}

fn prefix(s: &str) -> Result<Prefix, String> {
    let bad = || format!("{s:?}: expected an IPv4 address or CIDR");
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(bad)?,
        ),
        None => (s, 32),
    };
    Ok(Prefix::new(a.parse().map_err(|_| bad())?, len))
}

/// The IPv4 part of [`Headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeaders {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// TCP/UDP source and destination ports (not in later fragments).
    pub ports: Option<(u16, u16)>,
    /// TCP flags.
    pub tcp_flags: Option<u8>,
}

/// One layer of headers, as far as they parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub ethertype: u16,
    pub ip: Option<IpHeaders>,
}

/// A frame's headers, and a VXLAN frame's inner ones (with the VNI and the
/// outer UDP destination port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub outer: Headers,
    pub inner: Option<(u32, u16, Headers)>,
}

impl Parsed {
    /// `None` if the frame is shorter than an Ethernet header. VXLAN is
    /// UDP to `vxlan_port` with the I flag.
    pub fn new(frame: &[u8], vxlan_port: u16) -> Option<Parsed> {
        let outer = headers(frame)?;
        let inner = outer
            .ip
            .filter(|ip| {
                ip.proto == ipv4::protocol::UDP && ip.ports.is_some_and(|(_, d)| d == vxlan_port)
            })
            .and_then(|_| {
                let ip = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]).ok()?;
                let udp = ip.payload().get(8..)?;
                let vx = vxlan::VxlanPacket::new_checked(udp).ok()?;
                if vx.flags() & vxlan::FLAG_I == 0 {
                    return None;
                }
                Some((vx.vni(), vxlan_port, headers(vx.payload())?))
            });
        Some(Parsed { outer, inner })
    }

    /// The headers the pipeline routes by: the inner ones of VXLAN.
    pub fn routed(&self) -> &Headers {
        self.inner.as_ref().map_or(&self.outer, |(_, _, h)| h)
    }
}

fn headers(frame: &[u8]) -> Option<Headers> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = (eth.ethertype() == ethernet::ethertype::IPV4)
        .then(|| Ipv4Packet::new_checked(eth.payload()).ok())
        .flatten()
        .map(|ip| {
            let l4 = ip.payload();
            let has_ports = matches!(ip.protocol(), ipv4::protocol::TCP | ipv4::protocol::UDP)
                && ip.frag_offset() == 0
                && l4.len() >= l4::PORTS_LEN;
            let ports = has_ports.then(|| {
                let p = l4::Ports::new(<&[u8; l4::PORTS_LEN]>::try_from(&l4[..4]).ok()?);
                Some((p.src(), p.dst()))
            });
            IpHeaders {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                proto: ip.protocol(),
                ttl: ip.ttl(),
                ports: ports.flatten(),
                tcp_flags: (ip.protocol() == ipv4::protocol::TCP && ip.frag_offset() == 0)
                    .then(|| l4.get(13).copied())
                    .flatten(),
            }
        });
    Some(Headers {
        src_mac: eth.src_addr(),
        dst_mac: eth.dst_addr(),
        ethertype: eth.ethertype(),
        ip,
    })
}

/// One packet's record.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was recorded, in ns since the Unix epoch: set by the
    /// caller (this crate has no clock), 0 until then.
    pub unix_ns: u64,
    pub worker: u16,
    /// Port it came in on.
    pub ingress: PortId,
    /// Handed over by another worker (received there).
    pub handed: bool,
    /// The tables' generation and epoch it was decided under.
    pub generation: u64,
    pub epoch: u32,
    pub verdict: Verdict,
    /// The decisions, one line each (trace).
    pub steps: Vec<String>,
    /// The frame at the capture point (capture).
    pub frame: Vec<u8>,
}

/// What `before` noted about the current packet.
struct Pending {
    before: Option<Parsed>,
    ct: Option<(FlowKey, Option<(u32, Dir)>)>,
    input: Vec<u8>,
    /// `flow_cache_hits` before: a hit is the one thing that counts it.
    hits: u64,
    /// The worker's policy decision count before: a new one is this
    /// packet's.
    decisions: u64,
    fast: bool,
}

/// Records the packets its filter matches, up to a count.
pub struct Recorder {
    mode: Mode,
    filter: Filter,
    worker: u16,
    /// Packets still to record.
    remaining: u32,
    /// The batch being run was handed over by another worker.
    handed: bool,
    cur: Option<Pending>,
    /// Records of the batches run since the last [`Recorder::take`].
    pub out: Vec<Record>,
}

impl Recorder {
    pub fn new(mode: Mode, filter: Filter, worker: u16, count: u32) -> Recorder {
        Recorder {
            mode,
            filter,
            worker,
            remaining: count,
            handed: false,
            cur: None,
            out: Vec::new(),
        }
    }

    /// Packets still to record: 0 means done.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Marks the next batch as handed over by another worker.
    pub fn set_handed(&mut self, handed: bool) {
        self.handed = handed;
    }

    fn wants(&self, p: &Packet<'_>, parsed: &Option<Parsed>) -> bool {
        if self.remaining == 0 {
            return false;
        }
        if let Mode::Capture(Point::Rx) = self.mode {
            if self.handed {
                return false;
            }
        }
        match parsed {
            Some(h) => self.filter.matches(p.port, h),
            None => self.filter.any.is_empty(),
        }
    }
}

impl Tracer for Recorder {
    fn before(&mut self, t: &Tables, s: &Seen<'_>, p: &Packet<'_>) {
        let frame = p
            .off
            .checked_add(p.len)
            .and_then(|end| p.buf.get(p.off..end))
            .unwrap_or_default();
        let before = Parsed::new(frame, vxlan_port(t));
        if !self.wants(p, &before) {
            self.cur = None;
            return;
        }
        let key = before.as_ref().and_then(|h| flow_key(h.routed()));
        self.cur = Some(Pending {
            before,
            ct: key.map(|k| (k, s.ct.lookup(&k))),
            input: match self.mode {
                Mode::Capture(Point::Rx | Point::Drop | Point::Port(_)) => frame.to_vec(),
                _ => Vec::new(),
            },
            hits: s.counters.flow_cache_hits,
            decisions: s.decided.seq,
            fast: false,
        });
    }

    fn after(&mut self, t: &Tables, s: &Seen<'_>, p: &Packet<'_>) {
        let Some(mut c) = self.cur.take() else {
            return;
        };
        c.fast = s.counters.flow_cache_hits > c.hits;
        let mut rec = Record {
            unix_ns: 0,
            worker: self.worker,
            ingress: p.port,
            handed: self.handed,
            generation: t.generation,
            epoch: t.epoch,
            verdict: p.verdict,
            steps: Vec::new(),
            frame: Vec::new(),
        };
        match self.mode {
            Mode::Trace => {
                rec.steps = steps(t, s.ct, p, &c);
                if s.decided.seq != c.decisions {
                    policy_steps(&t.policy, s.decided, &mut rec.steps);
                }
            }
            Mode::Capture(point) => {
                let tx = match p.verdict {
                    Verdict::Tx(out) => Some(out),
                    _ => None,
                };
                rec.frame = match point {
                    Point::Rx => c.input,
                    Point::Drop if matches!(p.verdict, Verdict::Drop(_)) => c.input,
                    Point::Tx if tx.is_some() => p.frame().to_vec(),
                    Point::Port(id) if p.port == id && !self.handed => c.input,
                    Point::Port(id) if tx == Some(id) => p.frame().to_vec(),
                    _ => return,
                };
            }
        }
        self.remaining -= 1;
        self.out.push(rec);
    }
}

fn flow_key(h: &Headers) -> Option<FlowKey> {
    let ip = h.ip?;
    let (sport, dport) = ip.ports?;
    Some(FlowKey {
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        sport,
        dport,
    })
}

/// The decisions of one packet, from what it looked like before and after
/// and what conntrack held.
fn steps(t: &Tables, ct: &Conntrack, p: &Packet<'_>, c: &Pending) -> Vec<String> {
    let mut s = Vec::new();
    let Some(before) = c.before.as_ref() else {
        s.push(format!("{} bytes: no Ethernet header", p.len));
        return s;
    };
    s.push(format!("in: {}", describe(before)));
    s.push(if c.fast {
        "flow cache: hit (what the walk decided for the flow, replayed)".into()
    } else {
        "flow cache: miss, full walk".into()
    });
    if let Some((key, was)) = c.ct {
        match (was, ct.lookup(&key)) {
            (Some((id, dir)), _) => {
                let e = ct.get(id);
                let side = match dir {
                    Dir::Original => "original direction",
                    Dir::Reply => "reply direction",
                };
                s.push(format!(
                    "conntrack: hit, {side} of {}:{} -> {}:{} (state {:?})",
                    e.original.src, e.original.sport, e.original.dst, e.original.dport, e.tcp
                ));
                backend(t, &mut s, e, "existing flow keeps its backend");
            }
            (None, Some((id, _))) => {
                let e = ct.get(id);
                s.push(format!(
                    "conntrack: new flow {}:{} -> {}:{}",
                    e.original.src, e.original.sport, e.original.dst, e.original.dport
                ));
                let fe = t
                    .services
                    .frontend(e.original.dst, e.original.proto, e.original.dport);
                let why = match fe {
                    Some(fe) if fe.affinity_ns.is_some() => "ClientIP affinity".to_string(),
                    Some(fe) => format!(
                        "Maglev on the 5-tuple hash over {} ready backends",
                        fe.backends.iter().filter(|b| b.ready).count()
                    ),
                    None => "egress masquerade".into(),
                };
                backend(t, &mut s, e, &why);
            }
            (None, None) => s.push("conntrack: no entry".into()),
        }
    }
    if let Some(after) = Parsed::new(p.frame(), vxlan_port(t)) {
        let (b, a) = (before.routed(), after.routed());
        match (before.inner, after.inner) {
            (Some((vni, _, _)), None) => s.push(format!(
                "VXLAN decap: VNI {vni} from VTEP {}",
                before.outer.ip.map_or(Ipv4Addr::UNSPECIFIED, |ip| ip.src)
            )),
            (None, Some((vni, port, _))) => s.push(format!(
                "VXLAN encap: VNI {vni} to VTEP {}:{port} (outer source port {})",
                after.outer.ip.map_or(Ipv4Addr::UNSPECIFIED, |ip| ip.dst),
                after.outer.ip.and_then(|ip| ip.ports).map_or(0, |(s, _)| s)
            )),
            _ => {}
        }
        if let (Some(bi), Some(ai)) = (b.ip, a.ip) {
            if bi.proto == ai.proto {
                let (bs, bd) = bi.ports.unwrap_or_default();
                let (as_, ad) = ai.ports.unwrap_or_default();
                if (bi.dst, bd) != (ai.dst, ad) {
                    s.push(format!("DNAT: {}:{bd} -> {}:{ad}", bi.dst, ai.dst));
                }
                if (bi.src, bs) != (ai.src, as_) {
                    s.push(format!("SNAT: {}:{bs} -> {}:{as_}", bi.src, ai.src));
                }
                if bi.ttl != ai.ttl {
                    s.push(format!("TTL {} -> {}", bi.ttl, ai.ttl));
                }
            } else {
                s.push(format!("answered with: {}", describe(&after)));
            }
        } else if a.ethertype == ethernet::ethertype::ARP && matches!(p.verdict, Verdict::Tx(_)) {
            s.push("ARP: answered in place (proxy ARP)".into());
        }
        if let Verdict::Tx(_) = p.verdict {
            s.push(format!("out: {}", describe(&after)));
        }
    }
    s
}

/// A network-policy decision, one line per direction that had a say: the
/// isolating policies, the peer prefix matched and the rule allowing it.
fn policy_steps(pol: &Policies, d: &Decided, s: &mut Vec<String>) {
    let what = match d.port {
        Some(port) => format!("{}:{port}/{}", d.dst, proto_name(d.proto)),
        None => format!("{} ({})", d.dst, proto_name(d.proto)),
    };
    let verdict = match d.decision {
        Decision::Unrestricted => "not isolated either way, untracked",
        Decision::Allowed(_) => "allowed",
        Decision::Denied(_) => "denied",
    };
    s.push(format!(
        "policy: {} -> {what} (as the destination sees it: from {}): {verdict}",
        d.egress_src, d.src
    ));
    let names = |ids: &[u32]| {
        ids.iter()
            .map(|&i| pol.names.get(i as usize).map_or("?", String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (dir, pod, peer) in [
        (Direction::Egress, d.egress_src, d.dst),
        (Direction::Ingress, d.dst, d.src),
    ] {
        let word = match dir {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        };
        let Some(table) = pol.table(dir, d.egress_src, d.dst) else {
            continue;
        };
        let isolating = names(&table.selected_by);
        let m = table.matching(peer, d.proto, d.port);
        let line = match (m.allowed, m.peer) {
            (Some(r), Some(prefix)) => format!(
                "allowed by {} (peer {prefix}, {})",
                names(&[r.policy]),
                span(&r)
            ),
            (None, _) if dir == Direction::Ingress && d.from_node => {
                "allowed: from the node itself, which always reaches its pods".to_string()
            }
            (None, Some(prefix)) => format!(
                "denied: the entry of peer {prefix} allows no such port (an except allows nothing)"
            ),
            (_, None) => format!("denied: no rule allows peer {peer}"),
        };
        s.push(format!(
            "policy {word} of {pod} (isolated by {isolating}): {line}"
        ));
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        n => format!("protocol {n}"),
    }
}

/// A rule's ports as the policy wrote them.
fn span(r: &crate::policy::PortRange) -> String {
    match (r.proto, r.first, r.last) {
        (crate::policy::ANY_PROTO, ..) => "every protocol and port".into(),
        (p, 0, u16::MAX) => format!("every {} port", proto_name(p)),
        (p, a, z) if a == z => format!("{} {a}", proto_name(p)),
        (p, a, z) => format!("{} {a}-{z}", proto_name(p)),
    }
}

fn vxlan_port(t: &Tables) -> u16 {
    t.node.as_ref().map_or(vxlan::UDP_PORT, |n| n.vxlan_port)
}

fn backend(t: &Tables, s: &mut Vec<String>, e: &crate::conntrack::Entry, why: &str) {
    let (ip, port) = (e.reply.src, e.reply.sport);
    let name = t
        .services
        .names
        .get(e.service as usize)
        .map_or("(no service)", String::as_str);
    if e.original.dst != ip || e.original.dport != port {
        s.push(format!("backend: {ip}:{port} of {name} ({why})"));
    }
}

/// A one-line summary of a frame's headers.
pub fn describe(h: &Parsed) -> String {
    let mut s = layer(&h.outer);
    if let Some((vni, _, inner)) = &h.inner {
        let _ = write!(s, " | VXLAN VNI {vni} | {}", layer(inner));
    }
    s
}

fn layer(h: &Headers) -> String {
    let mut s = format!("{} -> {}", h.src_mac, h.dst_mac);
    match (h.ip, h.ethertype) {
        (Some(ip), _) => {
            let proto = match ip.proto {
                ipv4::protocol::TCP => "TCP".to_string(),
                ipv4::protocol::UDP => "UDP".to_string(),
                ipv4::protocol::ICMP => "ICMP".to_string(),
                n => format!("proto {n}"),
            };
            match ip.ports {
                Some((sp, dp)) => {
                    let _ = write!(s, " IPv4 {}:{sp} -> {}:{dp} {proto}", ip.src, ip.dst);
                }
                None => {
                    let _ = write!(s, " IPv4 {} -> {} {proto}", ip.src, ip.dst);
                }
            }
            if let Some(f) = ip.tcp_flags {
                let _ = write!(s, " flags {}", tcp_flags(f));
            }
            let _ = write!(s, " ttl {}", ip.ttl);
        }
        (None, ethernet::ethertype::ARP) => s.push_str(" ARP"),
        (None, t) => {
            let _ = write!(s, " ethertype {t:#06x}");
        }
    }
    s
}

fn tcp_flags(f: u8) -> String {
    let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];
    let v: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| f & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}
