//! Walk entry for frames from pods: the IPv4 checks a router makes, partial
//! checksums finished, the anti-spoofing check, then services or routing.

use super::*;
use crate::wire::ipv4::Ipv4Header;
use crate::wire::l4;

impl Pipeline {
    pub(super) fn on_pod(
        &mut self,
        cx: &Ctx<'_>,
        port: &PortInfo,
        pod_ip: Ipv4Addr,
        p: &mut Packet<'_>,
    ) -> Verdict {
        let Ctx { t, node, .. } = *cx;
        let eth = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        match eth.ethertype() {
            ethernet::ethertype::IPV4 => {}
            ethernet::ethertype::ARP => return self.arp(t, node, port, p),
            _ => return Verdict::Drop(DropReason::UnsupportedEthertype),
        }
        if let Err(r) = check_ipv4(p, p.off + ETH) {
            return Verdict::Drop(r);
        }
        let ip = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]);
        // The host also sends from its own addresses: answers of an endpoint
        // on the node's address (the API server, hostNetwork pods), and its
        // own connections to its NodePorts (DNATed by `nft.rs`).
        let host = matches!(port.kind, PortKind::Host { .. });
        if ip.src_addr() != pod_ip && !(host && t.is_node_addr(node, ip.src_addr())) {
            return Verdict::Drop(DropReason::SourceMismatch);
        }
        let ing = nat::Ingress {
            external: false,
            in_port: p.port,
            src_mac: eth.src_addr(),
        };
        complete_partial_checksum(p, p.off + ETH);
        self.service_then_route(cx, p, ing)
    }
}

/// Validates the IPv4 header at `ip_off` of a frame: the checks a router
/// makes before forwarding. Options are not forwarded; fragments are, and
/// `translate` looks at them (`frag.rs`).
pub(super) fn check_ipv4(p: &Packet<'_>, ip_off: usize) -> Result<(), DropReason> {
    let end = p.off + p.len;
    let b = &p.buf[ip_off.min(end)..end];
    let Some(h) = b.first_chunk::<IPV4_MIN>() else {
        return Err(DropReason::Ipv4Truncated);
    };
    let h = Ipv4Header::new(h);
    if h.version() != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    if h.ihl() < 5 {
        return Err(DropReason::Ipv4BadIhl);
    }
    let ip = match Ipv4Packet::new_checked(b) {
        Ok(ip) => ip,
        Err(crate::wire::Error::Truncated) => return Err(DropReason::Ipv4Truncated),
        Err(crate::wire::Error::Malformed) => return Err(DropReason::Ipv4BadLength),
    };
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    if ip.has_options() {
        return Err(DropReason::Ipv4Options);
    }
    Ok(())
}

/// Finishes a TCP/UDP checksum the sender left to "hardware": a pod or the
/// host with TX checksum offload on its veth sends the folded pseudo-header
/// sum in the checksum field, for the NIC to finish over the segment. An
/// AF_XDP frame carries no CHECKSUM_PARTIAL mark and nothing downstream
/// would finish it, so kxdp does, as the NIC would. (A complete checksum
/// that happens to equal that value is recomputed to itself.) Costs a
/// pseudo-header sum per packet, and a pass over the segment only for such
/// frames. Needs a validated IPv4 header without options at `ip_off`.
pub(super) fn complete_partial_checksum(p: &mut Packet<'_>, ip_off: usize) {
    let h = Ipv4Header::new(
        p.buf[ip_off..]
            .first_chunk::<IPV4_MIN>()
            .expect("validated by check_ipv4"),
    );
    // A fragment's checksum is whole: the sender finishes it before it
    // fragments (Linux's `ip_do_fragment`), over the whole datagram.
    if h.is_fragment() {
        return;
    }
    let proto = h.protocol();
    let total = h.total_len() as usize;
    let (src, dst) = (h.src_addr(), h.dst_addr());
    let seg = &mut p.buf[ip_off + IPV4_MIN..ip_off + total];
    // TCP or UDP, long enough to hold its checksum.
    let Some(field) = l4::checksum(seg, proto) else {
        return;
    };
    let pseudo = checksum::fold(checksum::pseudo_header(src, dst, proto, seg.len() as u16));
    // One's complement has two zeros; the sender's fold may pick either.
    let partial =
        field == pseudo || (field == 0 && pseudo == 0xFFFF && proto == ipv4::protocol::TCP);
    if !partial {
        return;
    }
    // The field holds the pseudo-header sum: summing the segment with it
    // in place gives the whole sum.
    let mut sum = checksum::finish(checksum::sum(seg));
    if proto == ipv4::protocol::UDP && sum == 0 {
        sum = 0xFFFF;
    }
    l4::set_checksum(seg, proto, sum);
}
