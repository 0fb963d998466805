//! Walk 2's two ends on the uplink: VXLAN frames from other nodes checked
//! and decapsulated (and outside clients' NodePort frames, walk 4), and the
//! encapsulation in front of frames for other nodes (RFC 7348).

use super::*;
use crate::wire::l4::{Ports, PORTS_LEN};

impl Pipeline {
    pub(super) fn on_uplink(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>) -> Verdict {
        let Ctx { t, node, .. } = *cx;
        let eth = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        if eth.ethertype() != ethernet::ethertype::IPV4 {
            return Verdict::Drop(DropReason::NotOurs);
        }
        let ip_off = p.off + ETH;
        if let Err(r) = check_ipv4(p, ip_off) {
            return Verdict::Drop(r);
        }
        let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
        let proto = ip.protocol();
        if ip.dst_addr() != node.underlay_ip {
            // Walk 4 on the node's other NodePort addresses, external and
            // LoadBalancer IPs (the underlay routes them here).
            if nat::l4(p).is_some_and(|l| {
                t.services
                    .frontend(l.dst, l.proto, l.dport)
                    .is_some_and(|f| f.node_port)
            }) {
                return self.on_outside(cx, p);
            }
            // Walk 7's way back from a non-masquerade destination: the one
            // outside source that may reach a pod by its own address.
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            if !node.pod_cidr.contains(dst) || !t.unmasqueraded_source(node, src) {
                return Verdict::Drop(DropReason::NotOurs);
            }
            return self.on_outside(cx, p);
        }
        if ip.frag_offset() != 0 {
            return self.ours_or_the_kernels(cx, p, true);
        }
        if proto == ipv4::protocol::ICMP {
            // Walk 7: an echo reply to a pod's ping, or an error about a
            // masqueraded flow (the uplink redirects only those: to SNAT
            // identifiers and quoting SNAT ports). The kernel's own flows
            // never use the ports, but its pings' identifiers are anything.
            if nat::echo(p, true).is_some() {
                return self.ours_or_the_kernels(cx, p, false);
            }
            return self.on_outside(cx, p);
        }
        let ip_payload_off = ip_off + ip.header_len();
        let ip_end = ip_off + ip.total_len() as usize;
        // The destination port decides; a datagram too short for a whole
        // UDP header still goes the VXLAN way, to be dropped as malformed.
        let l4 = &p.buf[ip_payload_off..ip_end];
        let vxlan_port = proto == ipv4::protocol::UDP
            && l4
                .first_chunk::<PORTS_LEN>()
                .is_some_and(|b| Ports::new(b).dst() == node.vxlan_port);
        if !vxlan_port {
            if proto != ipv4::protocol::TCP && proto != ipv4::protocol::UDP {
                return Verdict::Drop(DropReason::NotOurs);
            }
            // Walk 4: an outside client to NodeIP:NodePort; walk 7: a
            // reply to a masqueraded flow.
            return self.on_outside(cx, p);
        }
        // We send VXLAN with DF: it comes whole, or not at all.
        if ip.more_frags() {
            return Verdict::Drop(DropReason::Ipv4Fragment);
        }
        // Only a remote node's VTEP may send us VXLAN, and only from its
        // pods (its gateway included): checked on the inner source below.
        let Some(&sender_cidr) = t.vteps.get(&ip.src_addr()) else {
            return Verdict::Drop(DropReason::VxlanUnknownVtep);
        };
        let Ok(u) = udp::UdpPacket::new_checked(&p.buf[ip_payload_off..ip_end]) else {
            return Verdict::Drop(DropReason::UdpMalformed);
        };
        let vx_off = ip_payload_off + udp::HEADER_LEN;
        let vx_end = ip_payload_off + u.len() as usize;
        let Ok(vx) = vxlan::VxlanPacket::new_checked(&p.buf[vx_off..vx_end]) else {
            return Verdict::Drop(DropReason::VxlanMalformed);
        };
        if vx.vni() != node.vni {
            return Verdict::Drop(DropReason::VxlanBadVni);
        }
        // Decap: the inner frame becomes the packet, in place.
        p.off = vx_off + vxlan::HEADER_LEN;
        p.len = vx_end - p.off;
        if p.len < ETH {
            return Verdict::Drop(DropReason::EthTruncated);
        }
        let inner = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        if inner.ethertype() != ethernet::ethertype::IPV4 {
            return Verdict::Drop(DropReason::UnsupportedEthertype);
        }
        if let Err(r) = check_ipv4(p, p.off + ETH) {
            return Verdict::Drop(r);
        }
        // Whatever a node legitimately sends has a source of its own: its
        // pods, its gateway (host traffic, ICMP errors, SNAT), its backends'
        // replies. Service replies are translated back on the client's
        // node, never before the overlay.
        let inner_src = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]).src_addr();
        if !sender_cidr.contains(inner_src) {
            return Verdict::Drop(DropReason::VxlanSpoofedSource);
        }
        // Replies from remote backends come back to this node's gateway
        // address (SNAT) or to a local client: translate before routing.
        let src_mac = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + ETH]).src_addr();
        let ing = nat::Ingress {
            external: false,
            in_port: p.port,
            src_mac,
        };
        let v = match self.translate(cx, p, ing) {
            // The owner decapsulates (and counts) it again.
            Err(v @ Verdict::Handoff(_)) => return v,
            Err(v) => v,
            Ok(true) => self.route(cx, p),
            Ok(false) => {
                // An ICMP error may have been translated: read the destination again.
                let dst = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]).dst_addr();
                // Only local pods and this node (its gateway address, the host
                // interface) are reached through the overlay; no transit, and
                // such a frame does not count as decapsulated.
                if !t.local.contains_key(&dst) && dst != node.gateway_ip {
                    return self.icmp_error(
                        cx,
                        p,
                        IcmpError::Unreachable(icmp::code::HOST_UNREACHABLE),
                        DropReason::NoRoute,
                    );
                }
                self.route(cx, p)
            }
        };
        self.counters.decapsulated += 1;
        v
    }
}

impl Pipeline {
    /// A validated IPv4 frame from outside the cluster on the uplink: a
    /// NodePort client (walk 4), or walk 7's replies and errors. A sender
    /// on a veth of this host may offload its checksums, as a pod does.
    fn on_outside(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>) -> Verdict {
        let src_mac = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + ETH]).src_addr();
        complete_partial_checksum(p, p.off + ETH);
        let ing = nat::Ingress {
            external: true,
            in_port: p.port,
            src_mac,
        };
        self.service_then_route(cx, p, ing)
    }

    /// A frame to this node's address that the XDP program sends here
    /// whoever it belongs to: a later fragment (no ports), or ICMP. One of
    /// a NodePort client's or an egress flow's is translated (a later
    /// fragment with its first fragment's translation); any other is the
    /// node kernel's own, delivered to it through the host port (a
    /// fragment is reassembled there with the rest, counted
    /// `fragments_to_host`).
    fn ours_or_the_kernels(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>, fragment: bool) -> Verdict {
        let src_mac = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + ETH]).src_addr();
        let ing = nat::Ingress {
            external: true,
            in_port: p.port,
            src_mac,
        };
        match self.translate(cx, p, ing) {
            Err(v) => v,
            Ok(true) => self.route(cx, p),
            Ok(false) => {
                let total = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len])
                    .total_len() as usize;
                p.len = ETH + total;
                if fragment {
                    self.counters.fragments_to_host += 1;
                }
                // The kernel's own datagram, passing through: not a hop.
                self.deliver_to_host(cx.t, p, false)
                    .unwrap_or_else(|(_, r)| Verdict::Drop(r))
            }
        }
    }
}

/// Writes the outer Ethernet/IPv4/UDP/VXLAN headers in front of the frame
/// and moves `p.off` back over them (RFC 7348 section 5).
pub(super) fn encap(
    p: &mut Packet<'_>,
    node: &NodeInfo,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    vtep: Ipv4Addr,
    hash: u32,
) {
    let inner_len = p.len;
    let o = p.off - ENCAP_LEN;
    let b = p.buf[o..].first_chunk_mut::<ENCAP_LEN>().expect("headroom");
    let mut outer = vxlan::OuterHeaders::new(b);
    let (eth, ip, udp, vx) = outer.split_mut();
    ethernet::emit(eth, dst_mac, src_mac, ethernet::ethertype::IPV4);
    let udp_len = (udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len) as u16;
    ipv4::emit_header(
        ip,
        node.underlay_ip,
        vtep,
        ipv4::protocol::UDP,
        udp_len,
        OUTER_TTL,
        0,
        true,
    );
    // Source port from the inner flow's hash, in the dynamic range, so
    // underlay ECMP/RSS spreads flows; checksum zero (allowed over IPv4).
    let sport = 0xC000 | (hash as u16 & 0x3FFF);
    udp::emit_header(
        udp,
        sport,
        node.vxlan_port,
        udp_len - udp::HEADER_LEN as u16,
        0,
    );
    vxlan::emit_header(vx, node.vni);
    p.off = o;
    p.len = inner_len + ENCAP_LEN;
}
