//! Traffic with checked data: TCP and UDP echo inside pod namespaces.

use std::os::fd::AsRawFd;

use super::*;

/// A deterministic pseudo-random byte stream (xorshift64*): the sender and the
/// checker produce the same bytes from the same seed, whatever the chunking.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `ip:port` inside `ns`.
pub fn tcp_listen(ns: &str, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || {
        TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"))
    })
}

/// Connects from inside `ns`, retrying for up to `limit` (the first SYNs may
/// be lost while neighbours resolve).
pub fn tcp_connect(ns: &str, to: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    let name = ns.to_string();
    in_netns(ns, move || {
        let deadline = Instant::now() + limit;
        loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("connect {to} from {name}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}

/// Connects from inside `ns` from the fixed address `local` (bound with
/// SO_REUSEADDR, so several connections may share it towards different
/// destinations), waiting at most `limit` (Linux bounds a blocking connect
/// by the send timeout).
pub fn tcp_connect_from(
    ns: &str,
    local: SocketAddr,
    to: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, String> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let (SocketAddr::V4(l), SocketAddr::V4(t)) = (local, to) else {
        return Err(format!("{local} -> {to}: IPv4 only"));
    };
    in_netns(ns, move || {
        let err = |what: &str, e: nix::Error| format!("{local} -> {to}: {what}: {e}");
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .map_err(|e| err("socket", e))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| err("SO_REUSEADDR", e))?;
        let s = TcpStream::from(fd);
        s.set_write_timeout(Some(limit))
            .map_err(|e| format!("{local} -> {to}: SO_SNDTIMEO: {e}"))?;
        socket::bind(s.as_raw_fd(), &SockaddrIn::from(l)).map_err(|e| err("bind", e))?;
        socket::connect(s.as_raw_fd(), &SockaddrIn::from(t)).map_err(|e| err("connect", e))?;
        Ok(s)
    })
}

/// Accepts one connection, waiting at most `limit`.
pub fn accept_timeout(l: &TcpListener, limit: Duration) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("no connection accepted in time".into());
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// An echo server on `ip:port` in `ns` for one connection: everything read is
/// written back; runs on its own thread.
pub fn tcp_echo_server(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> thread::JoinHandle<Result<u64, String>> {
    let listener = tcp_listen(ns, ip, port);
    thread::spawn(move || {
        let mut s = accept_timeout(&listener, Duration::from_secs(30))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("echo server read after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])
                .map_err(|e| format!("echo server write after {total} bytes: {e}"))?;
            total += n as u64;
        }
        let _ = s.shutdown(Shutdown::Write);
        Ok(total)
    })
}

/// A byte-checked stream through an echo server that runs until told to
/// stop: a writer sends the pattern of `seed` in 16 KiB chunks every 2 ms
/// (for at most `limit`), a reader checks every echoed byte.
pub struct EchoStream {
    stop: Arc<AtomicBool>,
    writer: thread::JoinHandle<Result<u64, String>>,
    reader: thread::JoinHandle<Result<u64, String>>,
}

impl EchoStream {
    pub fn start(s: TcpStream, seed: u64, limit: Duration) -> EchoStream {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = s.try_clone().expect("clone the stream");
        let stop_w = stop.clone();
        let writer = thread::spawn(move || -> Result<u64, String> {
            let mut p = Pattern::new(seed);
            let mut buf = vec![0u8; 16 * 1024];
            let mut sent = 0u64;
            let deadline = Instant::now() + limit;
            while !stop_w.load(Ordering::Relaxed) && Instant::now() < deadline {
                p.fill(&mut buf);
                w.write_all(&buf)
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                sent += buf.len() as u64;
                thread::sleep(Duration::from_millis(2));
            }
            w.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            Ok(sent)
        });
        let reader = thread::spawn(move || -> Result<u64, String> {
            let mut r = s;
            let mut expect = Pattern::new(seed);
            let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
            let mut got = 0u64;
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|e| format!("read after {got} bytes: {e}"))?;
                if n == 0 {
                    return Ok(got);
                }
                expect.fill(&mut want[..n]);
                if buf[..n] != want[..n] {
                    return Err(format!("echo differs near byte {got}"));
                }
                got += n as u64;
            }
        });
        EchoStream {
            stop,
            writer,
            reader,
        }
    }

    /// Stops writing and waits for the rest of the echo; panics on a broken
    /// or corrupted stream, or unless every byte sent came back. Returns the
    /// bytes sent.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.writer.join().expect("writer").expect("writer");
        let got = self.reader.join().expect("reader").expect("reader");
        assert_eq!(got, sent, "echoed bytes");
        sent
    }
}

/// Sends `bytes` pseudo-random bytes over `s` while reading the echo back and
/// checking it byte for byte. Returns the time taken.
pub fn tcp_send_and_check(s: TcpStream, bytes: usize, seed: u64) -> Result<Duration, String> {
    let started = Instant::now();
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 32 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n])
                .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
            left -= n;
        }
        w.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut r = s;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let result = loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read after {got} of {bytes} bytes: {e}")),
        };
        if got + n > bytes {
            break Err(format!(
                "received {} bytes, more than the {bytes} sent",
                got + n
            ));
        }
        expect.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            break Err(format!("data differs at byte {}", got + i));
        }
        got += n;
    };
    let wrote = writer.join().map_err(|_| "writer panicked".to_string())?;
    result?;
    wrote?;
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(started.elapsed())
}

/// TCP from `client_ns` to an echo server at `server_ip:port` in `server_ns`:
/// `bytes` pseudo-random bytes each way, checked. Returns the time taken.
pub fn tcp_echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    bytes: usize,
) -> Result<Duration, String> {
    let server = tcp_echo_server(server_ns, server_ip, port);
    let stream = tcp_connect(
        client_ns,
        SocketAddr::from((server_ip, port)),
        Duration::from_secs(10),
    );
    let result = stream.and_then(|s| tcp_send_and_check(s, bytes, u64::from(port)));
    let served = server
        .join()
        .map_err(|_| "echo server panicked".to_string())?;
    let took = result?;
    let echoed = served?;
    if echoed != bytes as u64 {
        return Err(format!("server echoed {echoed} of {bytes} bytes"));
    }
    Ok(took)
}

/// UDP echo results.
#[derive(Clone, Debug, Default)]
pub struct UdpReport {
    pub sent: u32,
    /// Echoes that came back intact.
    pub intact: u32,
    /// Echoes whose content differed from what was sent.
    pub corrupt: u32,
}

/// Largest UDP payload that fits a pod MTU without fragmenting.
pub fn max_udp_payload(mtu: u32) -> usize {
    mtu as usize - 20 - 8
}

/// A UDP echo server on `ip:port` in `ns` until the returned flag is set.
pub fn udp_echo_server(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let sock = in_netns(ns, move || {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind udp {ip}:{port}: {e}"))
    });
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Bounded even if nobody sets the flag.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (stop, handle)
}

/// Sends `count` numbered datagrams (sizes up to `max_payload`) from
/// `client_ns` to an echo server at `server_ip:port` in `server_ns`, after a
/// warm-up exchange (until one round trip succeeds, at most 10 s), and counts
/// the echoes that come back intact.
pub fn udp_echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    count: u32,
    max_payload: usize,
) -> Result<UdpReport, String> {
    assert!(max_payload >= 64);
    let (stop, server) = udp_echo_server(server_ns, server_ip, port);
    let result = udp_client(client_ns, server_ip, port, count, max_payload);
    stop.store(true, Ordering::Relaxed);
    server
        .join()
        .map_err(|_| "udp echo server panicked".to_string())?;
    result
}

fn udp_datagram(seq: u32, max_payload: usize) -> Vec<u8> {
    let len = 16 + (seq as usize * 97) % (max_payload - 15);
    let mut d = vec![0u8; len];
    d[..4].copy_from_slice(b"kxdp");
    d[4..8].copy_from_slice(&seq.to_be_bytes());
    d[8..12].copy_from_slice(&(len as u32).to_be_bytes());
    Pattern::new(u64::from(seq) + 1).fill(&mut d[12..]);
    d
}

fn udp_client(
    ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    count: u32,
    max_payload: usize,
) -> Result<UdpReport, String> {
    let to = SocketAddr::from((server_ip, port));
    let sock = in_netns(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind udp client");
        s.connect(to).expect("connect udp");
        s
    });
    // Warm-up: until one round trip succeeds.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    loop {
        let _ = sock.send(b"warm-up");
        if let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == b"warm-up" {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "UDP {ns} -> {to}: no echo to the warm-up within 10 s"
            ));
        }
    }
    // Drain late warm-up echoes.
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while sock.recv(&mut buf).is_ok() {}

    let rx = sock.try_clone().map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let receiver = thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut report = UdpReport::default();
        let mut buf = vec![0u8; 65536];
        let mut finish_by: Option<Instant> = None;
        let hard_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if finish_by.is_none() && done_rx.try_recv().is_ok() {
                // Everything is sent: stragglers get 2 s.
                finish_by = Some(Instant::now() + Duration::from_secs(2));
            }
            let now = Instant::now();
            if finish_by.is_some_and(|t| now >= t) || now >= hard_deadline {
                break;
            }
            let Ok(n) = rx.recv(&mut buf) else { continue };
            let d = &buf[..n];
            if n < 12 || &d[..4] != b"kxdp" {
                continue;
            }
            let seq = u32::from_be_bytes(d[4..8].try_into().unwrap());
            if seq >= count {
                report.corrupt += 1;
                continue;
            }
            if d != udp_datagram(seq, max_payload).as_slice() {
                report.corrupt += 1;
            } else if !seen[seq as usize] {
                seen[seq as usize] = true;
                report.intact += 1;
                if report.intact == count {
                    break;
                }
            }
        }
        report
    });
    let mut sent = 0;
    for seq in 0..count {
        if sock.send(&udp_datagram(seq, max_payload)).is_ok() {
            sent += 1;
        }
        // Paced: bursts of 16, so socket buffers along the way never overflow.
        if seq % 16 == 15 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let _ = done_tx.send(());
    let mut report = receiver
        .join()
        .map_err(|_| "udp receiver panicked".to_string())?;
    report.sent = sent;
    Ok(report)
}
