//! tcpdump captures on the underlay and their frames.

use super::*;

/// A tcpdump running in a namespace, writing a pcap file.
pub struct Capture {
    child: ChildGuard,
    pub path: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFNAME -c COUNT -w FILE FILTER` in `ns`, bounded by
    /// `secs`, and waits until it listens.
    pub fn start(ns: &str, ifname: &str, filter: &str, count: u32, secs: u64) -> Capture {
        let path = std::env::temp_dir().join(format!("{}.pcap", unique_name("kxcap")));
        let mut child = ns_command(ns, secs, "tcpdump")
            .args(["-i", ifname])
            .args(["-nn", "-U", "-c", &count.to_string(), "-w"])
            .arg(&path)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tcpdump");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let mut child = ChildGuard(child);
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            child.wait_timeout(Duration::ZERO);
            panic!("tcpdump in {ns} on {ifname} did not start listening");
        }
        Capture { child, path }
    }

    /// Waits for tcpdump to finish (its count reached, or its time up) and
    /// returns the frames captured.
    pub fn finish(mut self, limit: Duration) -> Vec<Vec<u8>> {
        self.child.wait_timeout(limit);
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        pcap_frames(&bytes).unwrap_or_else(|e| panic!("pcap {}: {e}", self.path.display()))
    }
}

/// The frames of a pcap file (classic format: 24-byte global header, 16-byte
/// record headers; either byte order, micro- or nanosecond stamps). An empty
/// file is no frames; a record cut short at the end is ignored.
pub fn pcap_frames(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 24 {
        return Err("shorter than the pcap global header".into());
    }
    let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => return Err(format!("not a pcap file (magic {m:#010x})")),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = bytes[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20);
    if linktype != 1 {
        return Err(format!("link type {linktype}, expected 1 (Ethernet)"));
    }
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + incl > bytes.len() {
            break;
        }
        frames.push(bytes[start..start + incl].to_vec());
        off = start + incl;
    }
    Ok(frames)
}

/// A VXLAN frame seen on the underlay.
#[derive(Clone, Debug)]
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The first byte of the VXLAN header (0x08: the I flag).
    pub flags: u8,
    pub vni: u32,
    /// The inner Ethernet frame (possibly cut short by the capture's snap length).
    pub inner: Vec<u8>,
}

/// Parses Ethernet / IPv4 / UDP / VXLAN by hand (a capture may cut the
/// frame short); `None` if `frame` is not that.
pub fn parse_vxlan(frame: &[u8]) -> Option<VxlanFrame> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || ip.len() < ihl + 8 + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    let vx = &udp[8..];
    Some(VxlanFrame {
        outer_src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        outer_dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        flags: vx[0],
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        inner: vx[8..].to_vec(),
    })
}

/// Source and destination IPv4 addresses of an inner Ethernet/IPv4 frame.
pub fn inner_ipv4(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    Some((
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    ))
}
