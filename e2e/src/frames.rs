//! Raw frames: VXLAN parsing, checksums, frames sent from a namespace.

use super::*;

/// The Internet checksum of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let end = (14 + ihl.max(20)).min(frame.len());
    let c = inet_checksum(&frame[14..end]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A valid Ethernet / IPv4 / UDP frame.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(ports.0, ports.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build frame");
    out
}

/// Sends raw Ethernet frames out of `ifname` in `ns` through an AF_PACKET
/// socket (Debian's /usr/bin/python3, standard library only), each once.
/// Returns how many were sent.
pub fn inject_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> usize {
    flood(ns, ifname, frames, 1, 20)
}

/// `inner` in VXLAN (the I flag, `vni`): a VTEP's UDP payload.
pub fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    v
}

/// Frames a pod (`src`, behind `gw_mac`) must not get through, by the drop
/// reason each must be counted under; `remote` and `local` are pods of
/// another node and of its own.
pub fn malformed_pod_frames(
    src_mac: [u8; 6],
    gw_mac: [u8; 6],
    src: Ipv4Addr,
    remote: Ipv4Addr,
    local: Ipv4Addr,
) -> Vec<(&'static str, Vec<u8>)> {
    let good = |dst: Ipv4Addr| udp_frame(src_mac, gw_mac, src, dst, (40000, 9), &[0x5a; 32]);
    let mut cases = Vec::new();

    // IPv4 header cut after 10 bytes.
    cases.push(("ipv4_truncated", good(remote)[..14 + 10].to_vec()));

    // IHL 4 (16 bytes): shorter than the fixed header.
    let mut f = good(remote);
    f[14] = 0x44;
    fix_ipv4_checksum(&mut f);
    cases.push(("ipv4_bad_ihl", f));

    // IHL 6: four bytes of options (NOP NOP NOP EOL).
    let mut f = good(remote);
    f.splice(34..34, [1, 1, 1, 0]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    cases.push(("ipv4_options", f));

    // Fragments are forwarded, but not a TCP first fragment without the
    // whole TCP header (RFC 1858), nor one reaching past 65,535 bytes.
    let mut f = good(remote);
    f[20] = 0x20;
    f[21] = 0;
    f[23] = 6;
    f[16..18].copy_from_slice(&(20u16 + 12).to_be_bytes());
    f.truncate(14 + 32);
    fix_ipv4_checksum(&mut f);
    cases.push(("fragment_malformed", f));
    let mut f = good(remote);
    f[20..22].copy_from_slice(&0x1ffeu16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    cases.push(("fragment_malformed", f));

    // Wrong header checksum.
    let mut f = good(remote);
    f[24] ^= 0xff;
    cases.push(("ipv4_bad_checksum", f));

    // A destination in the cluster CIDR but in no node's pod CIDR (outside
    // the cluster is egress now: the lab's nodes have a default route).
    cases.push(("no_route", good(Ipv4Addr::new(10, 244, 99, 1))));

    // TTL 1 to a pod on the same node: it would reach 0 on the way.
    let mut f = good(local);
    f[22] = 1;
    fix_ipv4_checksum(&mut f);
    cases.push(("ttl_exceeded", f));

    // Not IPv4, not ARP (IEEE local experimental ethertype).
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&gw_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    cases.push(("unsupported_ethertype", f));
    cases
}

/// A TCP SYN in a valid Ethernet / IPv4 frame.
pub fn tcp_syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 0x1000_0000 ^ u32::from(sport), 64240)
        .syn();
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).expect("build frame");
    out
}

/// Sends `frames`, `copies` times over, as fast as an AF_PACKET socket in
/// `ns` on `ifname` takes them (Debian's /usr/bin/python3), for at most
/// `secs` seconds. Returns how many were sent. A load loop bounded in
/// frames and time.
pub fn flood(ns: &str, ifname: &str, frames: &[Vec<u8>], copies: usize, secs: u64) -> usize {
    const SCRIPT: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
copies, limit = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
frames = [bytes.fromhex(l.strip()) for l in sys.stdin if l.strip()]
n = 0
for _ in range(copies):
    if time.monotonic() > limit:
        break
    for f in frames:
        try:
            s.send(f)
            n += 1
        except BlockingIOError:
            time.sleep(0.001)
print(n)
"#;
    let mut text = String::new();
    for f in frames {
        for b in f {
            text += &format!("{b:02x}");
        }
        text.push('\n');
    }
    let mut child = ns_command(ns, secs + 10, "/usr/bin/python3")
        .args(["-c", SCRIPT, ifname, &copies.to_string(), &secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start /usr/bin/python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write frames");
    let out = child.wait_with_output().expect("python3");
    let stdout = check(&format!("flood from {ns}"), out);
    stdout.trim().parse().unwrap_or(0)
}

/// The MAC that `ns` has resolved for `ip` on `dev` (its neighbour table).
pub fn neighbour_mac(ns: &str, ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    let out = ns_exec(
        ns,
        10,
        "ip",
        &["neigh", "show", &ip.to_string(), "dev", dev],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().map(parse_mac);
        }
    }
    None
}

/// Waits until `cond` holds, polling every 200 ms, at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}
