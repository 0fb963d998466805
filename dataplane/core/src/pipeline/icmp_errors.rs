//! Walk 6: ICMP errors where a router sends them (time exceeded, host/net
//! unreachable, fragmentation needed), built in place in front of the quoted
//! header, rate-limited per worker.

use super::*;

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
        let (src, dst, header_len, total_len, proto) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (
                ip.src_addr(),
                ip.dst_addr(),
                ip.header_len(),
                ip.total_len() as usize,
                ip.protocol(),
            )
        };
        // Never about ICMP errors, martian sources, or from too little headroom.
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
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || p.off < ICMP_ERR_HDR
        {
            return Verdict::Drop(reason);
        }
        if !self.icmp_allowed(now) {
            self.counters.icmp_rate_limited += 1;
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
        let sent = match outside.or_else(|| self.icmp_error_nat(p)) {
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

    pub(super) fn icmp_allowed(&mut self, now: u64) -> bool {
        const NS_PER_TOKEN: u64 = 1_000_000_000 / ICMP_RATE_PER_SEC;
        let elapsed = now.saturating_sub(self.icmp_last_ns);
        let refill = elapsed / NS_PER_TOKEN;
        if refill > 0 {
            self.icmp_tokens = (self.icmp_tokens + refill).min(ICMP_BURST);
            // Keep the part of a token not yet earned: setting this to `now`
            // would drop it and, polled every 1.5 ms, cut the rate by a third.
            self.icmp_last_ns += refill * NS_PER_TOKEN;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }
}
