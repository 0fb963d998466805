//! Walk 6: ARP for anything in the pod CIDR (the gateway included), answered
//! in place with the port's MAC (proxy ARP: every pod packet is routed).

use super::*;

impl Pipeline {
    /// Answers ARP requests from a pod for addresses in the pod CIDR (the
    /// gateway and, as proxy ARP, other pods: every pod packet is routed).
    pub(super) fn arp(
        &mut self,
        t: &Tables,
        node: &NodeInfo,
        port: &PortInfo,
        p: &mut Packet<'_>,
    ) -> Verdict {
        let a = p.off + ETH;
        let Ok(req) = ArpPacket::new_checked(&p.buf[a..p.off + p.len]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        let (sender_hw, sender_ip, target_ip) =
            (req.sender_hw_addr(), req.sender_ip(), req.target_ip());
        // The host interface reaches every pod and ClusterIP through us; a
        // pod reaches its own pod CIDR (the gateway included).
        let answerable = match port.kind {
            PortKind::Host { .. } => {
                target_ip != node.gateway_ip
                    && (node.cluster_cidr.contains(target_ip)
                        || t.services.cidr.is_some_and(|c| c.contains(target_ip)))
            }
            _ => node.pod_cidr.contains(target_ip),
        };
        if req.operation() != arp::op::REQUEST
            || sender_ip.is_unspecified()
            || sender_ip == target_ip
            || !answerable
        {
            return Verdict::Drop(DropReason::ArpIgnored);
        }
        if p.off + ETH_MIN_FRAME > p.buf.len() {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        ethernet::emit(
            &mut p.buf[p.off..],
            sender_hw,
            port.mac,
            ethernet::ethertype::ARP,
        );
        arp::emit_reply(&mut p.buf[a..], port.mac, target_ip, sender_hw, sender_ip);
        p.buf[a + arp::LEN..p.off + ETH_MIN_FRAME].fill(0);
        p.len = ETH_MIN_FRAME;
        self.counters.arp_replies += 1;
        Verdict::Tx(p.port)
    }
}
