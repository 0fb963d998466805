//! Walks 1, 2 and 5: a validated IPv4 datagram routed to a local pod or the
//! host port (MACs rewritten, TTL decremented), or towards another node's
//! VTEP; services first where the destination is one (walk 3).

use super::*;

impl Pipeline {
    /// Service translation (walks 3-4 and their replies), as every ingress
    /// does it before routing: `Err(verdict)` when it decided the frame's
    /// fate (a reply sent straight out, a reset, a hand-off, a drop);
    /// `Ok(true)` to route a frame it translated, `Ok(false)` to route one
    /// that is no service's. A later fragment gets what its first fragment
    /// got here (`frag.rs`), whatever translated it.
    pub(super) fn translate(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        ing: nat::Ingress,
    ) -> Result<bool, Verdict> {
        let first = match frag::fragment_of(p) {
            Ok(frag::Frag::Whole) => None,
            Ok(frag::Frag::First(k)) => Some(k),
            Ok(frag::Frag::Later(k, last)) => return self.replay_fragment(cx, p, k, last),
            Err(r) => return Err(Verdict::Drop(r)),
        };
        match self.services(cx, p, ing) {
            nat::Nat::Pass => {
                // A fragmented ICMP error is left alone: its checksum
                // covers every fragment.
                if first.is_none() {
                    if let Some(mac) = self.icmp_error_nat(p) {
                        return Err(self.reply_external(cx.t, p, mac));
                    }
                }
                self.note_nat(fast::Nat::Plain);
                Ok(false)
            }
            nat::Nat::Route { external_reply } => {
                if let Some(k) = first {
                    self.record_fragment(cx.now, p, k, external_reply);
                }
                match external_reply {
                    None => Ok(true),
                    Some(mac) => Err(self.reply_external(cx.t, p, mac)),
                }
            }
            nat::Nat::Done(v) => {
                if let (Some(k), Verdict::Handoff(w)) = (first, v) {
                    self.record(cx.now, k, frag::Replay::Handoff(w));
                }
                Err(v)
            }
        }
    }

    /// Service translation (walks 3-4 and their replies), then routing.
    pub(super) fn service_then_route(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        ing: nat::Ingress,
    ) -> Verdict {
        let Ctx { t, .. } = *cx;
        let translated = match self.translate(cx, p, ing) {
            Ok(translated) => translated,
            Err(v) => return v,
        };
        if ing.external && !translated {
            // An outside sender reaches only service frontends and the
            // clients of its tracked flows (the node kernel among them),
            // untranslated only pods (from non-masquerade sources).
            let dst = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]).dst_addr();
            if !t.local.contains_key(&dst) && t.routes.lookup(dst).is_none() {
                return Verdict::Drop(DropReason::NotOurs);
            }
        }
        self.route(cx, p)
    }

    /// Sends a translated reply straight back out the uplink to the outside
    /// client's (or its router's) MAC, as a router one hop away would.
    pub(super) fn reply_external(
        &mut self,
        t: &Tables,
        p: &mut Packet<'_>,
        mac: EthernetAddress,
    ) -> Verdict {
        let Some((uplink, info)) = t.uplink.and_then(|u| t.port(u).map(|i| (u, *i))) else {
            return Verdict::Drop(DropReason::NoUplink);
        };
        let ip_off = p.off + ETH;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]);
            if ip.ttl() <= 1 {
                return Verdict::Drop(DropReason::TtlExceeded);
            }
            ip.decrement_ttl();
        }
        let total = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]).total_len() as usize;
        p.len = ETH + total;
        let mut eth = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
        eth.set_dst_addr(mac);
        eth.set_src_addr(info.mac);
        self.note_l2(fast::L2::External);
        Verdict::Tx(uplink)
    }

    /// Routes a forwarded datagram (a router hop: TTL decremented); where
    /// a router would answer with an ICMP error, it does.
    pub(super) fn route(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>) -> Verdict {
        match self.route_to(cx, p, true) {
            Ok(v) => v,
            Err((kind, reason)) => self.icmp_error(cx, p, kind, reason),
        }
    }

    /// Walk 5's last step: out the host port to the node's kernel.
    pub(super) fn deliver_to_host(
        &mut self,
        t: &Tables,
        p: &mut Packet<'_>,
        forwarded: bool,
    ) -> Result<Verdict, (IcmpError, DropReason)> {
        let Some(host) = host_port(t) else {
            return Ok(Verdict::Drop(DropReason::ToGateway));
        };
        self.deliver(p, forwarded, host)
    }

    /// Routes the IPv4 datagram of a validated frame at `p.off` to a local pod
    /// or a remote node. `forwarded`: decrement TTL (false for errors we
    /// made). `Err` where a router would send an ICMP error: the caller
    /// decides (an error about our own error is never sent).
    pub(super) fn route_to(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        forwarded: bool,
    ) -> Result<Verdict, (IcmpError, DropReason)> {
        let Ctx { t, node, .. } = *cx;
        let ip_off = p.off + ETH;
        let (dst, ttl, total_len, df) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (
                ip.dst_addr(),
                ip.ttl(),
                ip.total_len() as usize,
                ip.dont_frag(),
            )
        };
        // Ethernet padding is not part of the datagram; don't carry it on.
        p.len = ETH + total_len;
        if dst == node.gateway_ip || dst == node.underlay_ip {
            // Walk 5: to the node itself, through the host interface (its
            // underlay address too: the kernel owns it, not the uplink).
            return self.deliver_to_host(t, p, forwarded);
        }
        if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
            return Ok(Verdict::Drop(DropReason::Ipv4Martian));
        }
        // Local pods are in this node's pod CIDR (the state checks it): skip
        // the map lookup for anything else.
        let local = node.pod_cidr.contains(dst).then(|| t.local.get(&dst));
        if let Some(lp) = local.flatten() {
            let Some(out) = t.port(lp.port) else {
                return Err((
                    IcmpError::Unreachable(icmp::code::HOST_UNREACHABLE),
                    DropReason::NoRoute,
                ));
            };
            return self.deliver(p, forwarded, (lp.port, lp.mac, out.mac));
        }
        let Some(r) = t.routes.lookup(dst) else {
            if t.node_port_addrs.contains(&dst) {
                // Another of the node's addresses: the kernel's too.
                return self.deliver_to_host(t, p, forwarded);
            }
            if t.is_egress(node, dst) {
                return self.egress(cx, p, forwarded, dst);
            }
            let code = if node.cluster_cidr.contains(dst) {
                icmp::code::HOST_UNREACHABLE
            } else {
                icmp::code::NET_UNREACHABLE
            };
            return Err((IcmpError::Unreachable(code), DropReason::NoRoute));
        };
        if forwarded && ttl <= 1 {
            return Err((IcmpError::TimeExceeded, DropReason::TtlExceeded));
        }
        if total_len > node.pod_mtu as usize {
            if df {
                return Err((IcmpError::FragNeeded(node.pod_mtu), DropReason::TooBig));
            }
            return Ok(Verdict::Drop(DropReason::TooBig));
        }
        let uplink = t.uplink.and_then(|u| t.port(u).map(|i| (u, i)));
        let (Some(uplink), Some(nh)) = (uplink, r.next_hop_mac) else {
            // An uplink id whose port info is gone (detached) is no uplink.
            return Ok(Verdict::Drop(if uplink.is_none() {
                DropReason::NoUplink
            } else {
                DropReason::NeighbourUnresolved
            }));
        };
        if p.off < ENCAP_LEN {
            return Ok(Verdict::Drop(DropReason::NoHeadroom));
        }
        if forwarded {
            Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]).decrement_ttl();
        }
        let hash = flow_hash(&p.buf[ip_off..p.off + p.len]);
        {
            let mut inner = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
            inner.set_dst_addr(r.vtep_mac);
            inner.set_src_addr(node.vtep_mac);
        }
        encap(p, node, uplink.1.mac, nh, r.vtep_ip, hash);
        self.counters.encapsulated += 1;
        if forwarded {
            self.note_l2(fast::L2::Encap);
        }
        Ok(Verdict::Tx(uplink.0))
    }

    /// Walk 7: a datagram for outside the cluster, out the uplink to the
    /// kernel's next hop for `dst` (a gateway, or `dst` itself on-link). A
    /// pod's own address leaves only to non-masquerade destinations: a
    /// masqueraded destination gets only what `new_masq_flow` translated.
    fn egress(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        forwarded: bool,
        dst: Ipv4Addr,
    ) -> Result<Verdict, (IcmpError, DropReason)> {
        let Ctx { t, node, .. } = *cx;
        let ip_off = p.off + ETH;
        let (src, ttl, total_len) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (ip.src_addr(), ip.ttl(), ip.total_len() as usize)
        };
        if node.cluster_cidr.contains(src) && t.masquerades(node, dst) {
            return Ok(Verdict::Drop(DropReason::EgressUntranslatable));
        }
        if forwarded && ttl <= 1 {
            return Err((IcmpError::TimeExceeded, DropReason::TtlExceeded));
        }
        // Not encapsulated: the underlay MTU is what the uplink carries.
        if total_len > node.pod_mtu as usize + ENCAP_LEN - ETH {
            return Ok(Verdict::Drop(DropReason::TooBig));
        }
        let Some((uplink, info)) = t.uplink.and_then(|u| t.port(u).map(|i| (u, *i))) else {
            return Ok(Verdict::Drop(DropReason::NoUplink));
        };
        let mac = match t.egress.lookup(dst) {
            Some(EgressHop::Gateway(mac)) => *mac,
            Some(EgressHop::OnLink) => {
                let mac = t.neighbours.get(&dst).copied();
                if mac.is_none() {
                    self.unresolved = Some(dst);
                }
                mac
            }
            None => None,
        };
        let Some(mac) = mac else {
            return Ok(Verdict::Drop(DropReason::NeighbourUnresolved));
        };
        if forwarded {
            Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]).decrement_ttl();
        }
        let mut eth = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
        eth.set_dst_addr(mac);
        eth.set_src_addr(info.mac);
        self.counters.egress_routed += 1;
        if forwarded {
            self.note_l2(fast::L2::Egress);
        }
        Ok(Verdict::Tx(uplink))
    }

    /// Delivers the datagram at `p.off` on a port of this node (a pod, the
    /// host): `(port, destination MAC, our port MAC)`. A router hop: TTL
    /// decremented (time exceeded at 1) unless we made the packet ourselves.
    pub(super) fn deliver(
        &mut self,
        p: &mut Packet<'_>,
        forwarded: bool,
        (port, dst_mac, src_mac): (PortId, EthernetAddress, EthernetAddress),
    ) -> Result<Verdict, (IcmpError, DropReason)> {
        let ip_off = p.off + ETH;
        if forwarded {
            let mut ip = Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]);
            if ip.ttl() <= 1 {
                return Err((IcmpError::TimeExceeded, DropReason::TtlExceeded));
            }
            ip.decrement_ttl();
        }
        let mut eth = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
        eth.set_dst_addr(dst_mac);
        eth.set_src_addr(src_mac);
        self.counters.routed_local += 1;
        if forwarded {
            self.note_l2(fast::L2::Local);
        }
        Ok(Verdict::Tx(port))
    }
}

/// The host port: (port, the node kernel's MAC, our MAC), if attached.
pub(super) fn host_port(t: &Tables) -> Option<(PortId, EthernetAddress, EthernetAddress)> {
    let h = t.host?;
    match t.port(h)? {
        PortInfo {
            kind: PortKind::Host { peer_mac },
            mac,
        } => Some((h, *peer_mac, *mac)),
        _ => None,
    }
}
