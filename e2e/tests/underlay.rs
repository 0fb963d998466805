//! The underlay is not trusted: VXLAN is taken only from the remote nodes'
//! VTEPs, and only with inner sources from the sending node's pod CIDR.
//! An outside host on the underlay sends VXLAN to n1 "from" pods of n1 and
//! of n2; none reaches the pod, each is counted by reason, and real
//! cross-node traffic is untouched.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use kxdp_e2e::{
    check_tcp, fix_ipv4_checksum, in_netns, inject_frames, neighbour_mac, require_root, udp_frame,
    vxlan_payload, wait_until, Lab, LabOpts,
};

const COPIES: u64 = 5;
const PORT: u16 = 7077;

#[test]
fn spoofed_vxlan_from_the_underlay_never_reaches_a_pod() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    let target = lab.pod("n1-p2").clone();
    let (n1_pod, n2_pod) = (lab.pod("n1-p1").ip, lab.pod("n2-p1").ip);

    // Real cross-node traffic first (it also resolves the underlay next
    // hops: the first frames may meet an unresolved neighbour).
    check_tcp(&lab, "n2-p1", "n1-p2", 5100, 1 << 20);

    // The pod's socket, proven to receive what the overlay really carries.
    let sock = in_netns(&lab.ns("n1-p2"), move || {
        UdpSocket::bind((target.ip, PORT)).expect("bind in n1-p2")
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let sender = in_netns(&lab.ns("n2-p1"), move || {
        UdpSocket::bind((n2_pod, 0)).unwrap()
    });
    sender.send_to(b"real", (target.ip, PORT)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("n2-p1 -> n1-p2 over VXLAN");
    assert_eq!((&buf[..n], from.ip()), (&b"real"[..], n2_pod.into()));

    // UDP "from" a pod of n1 and "from" a pod of n2, as n2 would wrap it.
    let inner = |src: Ipv4Addr| {
        udp_frame(
            n2.vtep_mac,
            n1.vtep_mac,
            src,
            target.ip,
            (40000, PORT),
            b"spoofed",
        )
    };
    let before = lab.counters("n1");

    // From the outside host's own address: no node's VTEP.
    let to = (n1.underlay_ip, n1.vxlan_port);
    let strangers = [
        vxlan_payload(n1.vni, &inner(n1_pod)),
        vxlan_payload(n1.vni, &inner(n2_pod)),
    ];
    let ext = lab.ns("ext");
    in_netns(&ext, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..COPIES {
            for p in &strangers {
                s.send_to(p, to).unwrap();
            }
        }
    });
    // Forged as n2's VTEP (address spoofing on the underlay), carrying a
    // pod of n1: the inner source gives it away.
    let mut n1_mac = None;
    wait_until(Duration::from_secs(5), || {
        n1_mac = neighbour_mac(&ext, n1.underlay_ip, "eth0");
        n1_mac.is_some()
    });
    let n1_mac = n1_mac.expect("ext resolved n1's MAC");
    let mut forged = udp_frame(
        [0x02, 0, 0, 0, 0, 0x99],
        n1_mac,
        n2.underlay_ip,
        n1.underlay_ip,
        (51234, n1.vxlan_port),
        &vxlan_payload(n1.vni, &inner(n1_pod)),
    );
    forged[40..42].fill(0); // outer UDP checksum: none, as VTEPs send
    fix_ipv4_checksum(&mut forged);
    let frames = vec![forged; COPIES as usize];
    assert_eq!(inject_frames(&ext, "eth0", &frames), frames.len());

    // Real cross-node TCP meanwhile, both ways.
    check_tcp(&lab, "n2-p2", "n1-p1", 5101, 4 << 20);
    check_tcp(&lab, "n1-p2", "n2-p1", 5102, 4 << 20);

    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if let Ok((n, from)) = sock.recv_from(&mut buf) {
        panic!(
            "spoofed datagram from {from} reached n1-p2: {:?}",
            &buf[..n]
        );
    }
    let grew = lab.counters("n1").drops_since(&before);
    eprintln!("n1 drops during the test: {grew:?}");
    let got = |r: &str| grew.get(r).copied().unwrap_or(0);
    assert!(
        got("vxlan_unknown_vtep") >= 2 * COPIES,
        "vxlan_unknown_vtep: {grew:?}"
    );
    assert!(
        got("vxlan_spoofed_source") >= COPIES,
        "vxlan_spoofed_source: {grew:?}"
    );
    assert!(lab.dataplane_alive("n1"), "n1's dataplane died");
    check_tcp(&lab, "n2-p1", "n1-p2", 5103, 1 << 20);
}
