//! Walk 6: ICMP errors where a router sends them (time exceeded, host/net
//! unreachable, fragmentation needed), built in place in front of the quoted
//! header, rate-limited per destination and per worker as Linux does
//! (`icmpv4_xrlim_allow`, `icmp_global_allow`), Frag Needed exempt.

use super::*;

/// ICMP errors a worker may send per second to all destinations, and the
/// burst it may save up (routers rate-limit them; RFC 1812 4.3.2.8): the
/// backstop when many destinations err at once.
const ALL: Rate = Rate::per_sec(1000, 100);
/// ICMP errors a worker may send per second to one destination, and its
/// burst: a traceroute's probes and a client retrying a dead UDP service
/// are answered, while one pod flooding TTL=1 or unroutable packets uses
/// at most 1/100 of [`ALL`] (Linux allows a peer 1/s, burst 6).
const DEST: Rate = Rate::per_sec(10, 10);
/// Per-destination buckets per worker (16 KiB): destinations are hashed to
/// them with a key, and two that share one share its budget. A pod cannot
/// pick its own address, and without the key nobody can pick one that
/// shares a given pod's bucket.
const DEST_BUCKETS: usize = 1024;

/// A token bucket's refill rate and size.
#[derive(Clone, Copy)]
struct Rate {
    ns_per_token: u64,
    burst: u64,
}

impl Rate {
    const fn per_sec(n: u64, burst: u64) -> Rate {
        Rate {
            ns_per_token: 1_000_000_000 / n,
            burst,
        }
    }
}

/// A token bucket; it starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    tokens: u64,
    last_ns: u64,
}

impl Bucket {
    const fn full(r: Rate) -> Bucket {
        Bucket {
            tokens: r.burst,
            last_ns: 0,
        }
    }

    /// Adds the tokens earned up to `now`; whether one is left.
    fn refill(&mut self, now: u64, r: Rate) -> bool {
        let earned = now.saturating_sub(self.last_ns) / r.ns_per_token;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(r.burst);
            // Keep the part of a token not yet earned: setting this to `now`
            // would drop it and, polled every 1.5 ms, cut the rate by a third.
            self.last_ns += earned * r.ns_per_token;
        }
        self.tokens > 0
    }
}

/// A worker's ICMP error budgets: one per destination bucket, and one for
/// all. Fixed size, allocated once: nothing is allocated per error.
#[derive(PartialEq, Eq)]
pub(super) struct IcmpBudget {
    /// Keys the destination hash (see [`Pipeline::set_seed`]).
    pub(super) key: u64,
    all: Bucket,
    dests: Box<[Bucket]>,
}

impl IcmpBudget {
    pub(super) fn new() -> IcmpBudget {
        IcmpBudget {
            key: 0,
            all: Bucket::full(ALL),
            dests: vec![Bucket::full(DEST); DEST_BUCKETS].into_boxed_slice(),
        }
    }

    /// Whether the worker has an error left to send at `now`.
    fn any_left(&mut self, now: u64) -> bool {
        self.all.refill(now, ALL)
    }

    /// Takes a token from `dst`'s bucket and the worker's, or none (false)
    /// if `dst`'s is empty. After [`IcmpBudget::any_left`] said yes.
    fn take(&mut self, now: u64, dst: Ipv4Addr) -> bool {
        let i = mix(u32::from(dst) as u64, self.key) as usize % DEST_BUCKETS;
        let d = &mut self.dests[i];
        if !d.refill(now, DEST) {
            return false;
        }
        d.tokens -= 1;
        self.all.tokens = self.all.tokens.saturating_sub(1);
        true
    }
}

impl Pipeline {
    /// Turns the frame into an ICMP error about it, addressed to its source,
    /// and routes that; the original counts as dropped for `reason`.
    pub(super) fn icmp_error(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        kind: IcmpError,
        reason: DropReason,
    ) -> Verdict {
        self.icmp_error_to(cx, p, kind, reason, None)
    }

    /// As [`Pipeline::icmp_error`]; with `outside`, the frame came from
    /// outside the cluster (a NodePort client, or its router, at that MAC):
    /// the error comes from the address it was sent to and goes straight
    /// back out the uplink.
    pub(super) fn icmp_error_to(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        kind: IcmpError,
        reason: DropReason,
        outside: Option<EthernetAddress>,
    ) -> Verdict {
        let Ctx { now, t, node } = *cx;
        // An error is not what the flow's next packet gets.
        self.note_nat(fast::Nat::None);
        let ip_off = p.off + ETH;
        let (src, dst, header_len, total_len, proto, later_fragment) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (
                ip.src_addr(),
                ip.dst_addr(),
                ip.header_len(),
                ip.total_len() as usize,
                ip.protocol(),
                ip.frag_offset() != 0,
            )
        };
        // Never about ICMP errors, later fragments (RFC 1812 4.3.2.7: the
        // first one gets it), martian sources, or from too little headroom.
        // The ICMP type is read inside the datagram only, never from the
        // chunk bytes after it; one too short to have a type counts as an
        // error.
        let msg = p.buf[..ip_off + total_len].get(ip_off + header_len..);
        let icmp_type = icmp::msg_type_of(msg.unwrap_or_default());
        let about_icmp_error = proto == ipv4::protocol::ICMP
            && icmp_type.is_none_or(|ty| {
                !matches!(
                    ty,
                    icmp::msg_type::ECHO_REQUEST | icmp::msg_type::ECHO_REPLY
                )
            });
        if about_icmp_error
            || later_fragment
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || p.off < ICMP_ERR_HDR
        {
            return Verdict::Drop(reason);
        }
        // Frag Needed is never limited, nor takes from the budgets (Linux's
        // `icmpv4_mask_allow`): one is sent per frame too big, in its place
        // and smaller than it, so it amplifies nothing; and one not sent
        // black-holes the flow that needed it.
        let limited = !matches!(kind, IcmpError::FragNeeded(_));
        // Checked before the error is built: a flood past the worker's
        // budget costs no more than its drops.
        if limited && !self.icmp.any_left(now) {
            self.counters.icmp_global_limited += 1;
            return Verdict::Drop(reason);
        }
        let quote = total_len.min(header_len + 8);
        // The quoted datagram stays where it is; the new headers go in front.
        let new_off = p.off - ICMP_ERR_HDR;
        let icmp_off = new_off + ETH + IPV4_MIN;
        let icmp_len = 8 + quote;
        {
            let (ty, code, rest) = match kind {
                IcmpError::TimeExceeded => (
                    icmp::msg_type::TIME_EXCEEDED,
                    icmp::code::TTL_EXCEEDED_IN_TRANSIT,
                    0u32,
                ),
                IcmpError::Unreachable(c) => (icmp::msg_type::DEST_UNREACHABLE, c, 0),
                IcmpError::FragNeeded(mtu) => (
                    icmp::msg_type::DEST_UNREACHABLE,
                    icmp::code::FRAG_NEEDED,
                    mtu as u32,
                ),
            };
            let mut icmp = Icmpv4Packet::new_unchecked(&mut p.buf[icmp_off..icmp_off + icmp_len]);
            icmp.set_msg_type(ty);
            icmp.set_code(code);
            icmp.set_rest_of_header(rest);
            icmp.fill_checksum();
        }
        // Port unreachable is what the addressed host says, so it comes from
        // the address the client sent to (a ClusterIP, the NodeIP): the node's
        // own kernel would drop one from its own gateway address as martian.
        // Router errors (TTL, no route, too big) come from the gateway.
        let host_error = matches!(kind, IcmpError::Unreachable(icmp::code::PORT_UNREACHABLE));
        ipv4::emit_header(
            &mut p.buf[new_off + ETH..],
            if outside.is_some() || host_error {
                dst
            } else {
                node.gateway_ip
            },
            src,
            ipv4::protocol::ICMP,
            icmp_len as u16,
            OUTER_TTL,
            0,
            false,
        );
        EthernetFrame::new_unchecked(&mut p.buf[new_off..new_off + ETH])
            .set_ethertype(ethernet::ethertype::IPV4);
        p.off = new_off;
        p.len = ETH + IPV4_MIN + icmp_len;
        // About a translated packet (DNATed, SNATed): quote it as the
        // client sent it, or the client cannot match the error to its flow.
        let external = outside.or_else(|| self.icmp_error_nat(p));
        // The destination's budget is its addressee's as translated: the
        // client, not the SNAT address or a frontend all clients share.
        let to = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..]).dst_addr();
        if limited && !self.icmp.take(now, to) {
            self.counters.icmp_rate_limited += 1;
            return Verdict::Drop(reason);
        }
        let sent = match external {
            Some(mac) => self.reply_external(t, p, mac),
            // An error about our own error is never sent: just a drop.
            None => self
                .route_to(cx, p, false)
                .unwrap_or_else(|(_, r)| Verdict::Drop(r)),
        };
        match sent {
            // The error is sent and the original counts as dropped here: the
            // verdict is the error's.
            v @ Verdict::Tx(_) => {
                self.counters.icmp_errors_sent += 1;
                self.counters.drops[reason as usize] += 1;
                v
            }
            // The error itself could not be delivered: only the original's
            // drop counts, once, through the verdict. (Routing never hands
            // off.)
            Verdict::Drop(_) | Verdict::Handoff(_) => Verdict::Drop(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_rate_is_kept_under_steady_demand() {
        // Two errors asked for every 1.5 ms for 1.5 s after the burst is
        // spent: 1000/s allows ~1500, whatever the polling cadence.
        let mut b = Bucket::full(ALL);
        b.tokens = 0;
        b.last_ns = 1_000_000_000;
        let mut sent = 0;
        for i in 1..=1000u64 {
            for _ in 0..2 {
                if b.refill(1_000_000_000 + i * 1_500_000, ALL) {
                    b.tokens -= 1;
                    sent += 1;
                }
            }
        }
        assert!((1490..=1501).contains(&sent), "{sent} errors in 1.5 s");
    }
}
