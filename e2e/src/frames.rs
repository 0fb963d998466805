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
/// socket (Debian's /usr/bin/python3, standard library only). Returns how
/// many were sent.
pub fn inject_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> usize {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = 0
for line in sys.stdin:
    line = line.strip()
    if line:
        s.send(bytes.fromhex(line))
        n += 1
print(n)
"#;
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", "20", python, "-c", SCRIPT, ifname,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start python3");
    let mut text = String::new();
    for f in frames {
        for b in f {
            text += &format!("{b:02x}");
        }
        text.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write frames");
    let out = child.wait_with_output().expect("python3");
    let stdout = check(&format!("inject frames in {ns}"), out);
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
