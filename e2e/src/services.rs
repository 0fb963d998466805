//! Helpers for the service tests.

use super::*;

impl Lab {
    /// The outside client's address: [`EXT_HOST`] of the underlay /24.
    pub fn ext_ip(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.nodes[0].underlay_ip.octets();
        Ipv4Addr::new(a, b, c, EXT_HOST)
    }

    /// Writes `svc` (one service in the cluster file's `services:` entry
    /// shape, given as JSON) to a temporary YAML file and runs
    /// `kxdpctl service apply FILE`.
    pub fn service_apply_raw(&self, svc: &Value) -> Output {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("kxsvc")));
        std::fs::write(
            &path,
            serde_yaml_ng::to_string(svc).expect("service as YAML"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = self.kxdpctl_raw(&["service", "apply", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
        out
    }

    /// `kxdpctl service apply` of `svc`; panics unless it succeeds. Returns
    /// how long the command took (it returns once the nodes hold the service).
    pub fn service_apply(&self, svc: &Value) -> Duration {
        let started = Instant::now();
        let out = self.service_apply_raw(svc);
        check(&format!("kxdpctl service apply {svc}"), out);
        started.elapsed()
    }

    /// `kxdpctl service del NAME`; panics unless it succeeds.
    pub fn service_del(&self, name: &str) {
        check(
            &format!("kxdpctl service del {name}"),
            self.kxdpctl_raw(&["service", "del", name]),
        );
    }

    /// `kxdpctl services --json`, as a list.
    pub fn services(&self) -> Vec<Value> {
        list(self.kxdpctl(&["services", "--json"]), "services")
    }

    /// `kxdpctl conntrack --node NODE --service SERVICE --json`: the entries.
    pub fn conntrack(&self, node: &str, service: &str) -> Vec<Value> {
        list(
            self.kxdpctl(&[
                "conntrack",
                "--node",
                node,
                "--service",
                service,
                "--limit",
                "10000",
                "--json",
            ]),
            "entries",
        )
    }
}

impl Counters {
    /// The per-service counters of `name` (`services[]`), `Null` if absent.
    pub fn service(&self, name: &str) -> Value {
        self.0["services"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A number of service `name`'s counters (`new_flows`, `no_endpoint`,
    /// `packets`, ...); 0 when absent.
    pub fn service_get(&self, name: &str, key: &str) -> u64 {
        self.service(name)[key].as_u64().unwrap_or(0)
    }

    /// New flows service `name` sent to backend `ip:port`; 0 when absent.
    pub fn backend_new_flows(&self, name: &str, ip: Ipv4Addr, port: u16) -> u64 {
        self.backend_get(name, ip, port, "new_flows")
    }

    /// A number of service `name`'s counters of backend `ip:port`
    /// (`new_flows`, `packets`, `bytes`); 0 when absent.
    pub fn backend_get(&self, name: &str, ip: Ipv4Addr, port: u16, key: &str) -> u64 {
        self.service(name)["backends"]
            .as_array()
            .and_then(|l| {
                l.iter().find(|b| {
                    b["ip"].as_str() == Some(&ip.to_string())
                        && b["port"].as_u64() == Some(port.into())
                })
            })
            .and_then(|b| b[key].as_u64())
            .unwrap_or(0)
    }
}

/// How long an identity server (TCP or UDP) runs at most, whoever forgets to
/// stop it.
const ID_SERVER_LIMIT: Duration = Duration::from_secs(300);
/// At most this many connections per identity server.
const ID_SERVER_MAX_CONNS: usize = 5000;

/// What an [`IdServer`] saw of one connection, recorded when it ends.
#[derive(Clone, Debug)]
pub struct Served {
    /// The client address as the backend saw it (after any SNAT).
    pub peer: SocketAddr,
    /// The client's hello line, without the newline.
    pub hello: String,
    /// Bytes echoed after the hello line.
    pub echoed: u64,
    /// Why the connection ended other than by the client's EOF.
    pub error: Option<String>,
}

/// A TCP server that tells who it is: for each connection it reads one line
/// (the hello), answers `"<id> <peer ip:port> <hello>\n"` and then echoes
/// everything else until EOF. Bounded: it stops when dropped or after 5
/// minutes, its connections notice within 200 ms.
pub struct IdServer {
    pub id: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::Mutex<Vec<Served>>>,
    handle: Option<thread::JoinHandle<()>>,
}

/// Starts an [`IdServer`] named `id` on `ip:port` inside `ns`.
pub fn id_server(ns: &str, ip: Ipv4Addr, port: u16, id: &str) -> IdServer {
    let listener = tcp_listen(ns, ip, port);
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (flag, log, name) = (stop.clone(), served.clone(), id.to_string());
    let handle = thread::spawn(move || {
        let deadline = Instant::now() + ID_SERVER_LIMIT;
        let mut conns = Vec::new();
        while !flag.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && conns.len() < ID_SERVER_MAX_CONNS
        {
            match listener.accept() {
                Ok((s, peer)) => {
                    let (flag, log, name) = (flag.clone(), log.clone(), name.clone());
                    conns.push(thread::spawn(move || {
                        let served = serve_id(s, peer, &name, &flag, deadline);
                        log.lock().unwrap().push(served);
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
            // Reap finished connection threads as we go.
            conns.retain(|h| !h.is_finished());
        }
        for h in conns {
            let _ = h.join();
        }
    });
    IdServer {
        id: id.to_string(),
        addr: SocketAddr::from((ip, port)),
        stop,
        served,
        handle: Some(handle),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn serve_id(
    mut s: TcpStream,
    peer: SocketAddr,
    id: &str,
    stop: &AtomicBool,
    deadline: Instant,
) -> Served {
    let mut served = Served {
        peer,
        hello: String::new(),
        echoed: 0,
        error: None,
    };
    let setup = s
        .set_nonblocking(false)
        .and_then(|_| s.set_nodelay(true))
        .and_then(|_| s.set_read_timeout(Some(Duration::from_millis(200))))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = setup {
        served.error = Some(format!("socket setup: {e}"));
        return served;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    let mut hello_done = false;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            served.error = Some("server stopped".into());
            return served;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => {
                if !hello_done {
                    served.error = Some("EOF before the hello line".into());
                }
                let _ = s.shutdown(Shutdown::Write);
                return served;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                served.error = Some(format!("read: {e}"));
                return served;
            }
        };
        let mut data = &buf[..n];
        if !hello_done {
            line.extend_from_slice(data);
            let Some(pos) = line.iter().position(|&b| b == b'\n') else {
                if line.len() > 1024 {
                    served.error = Some("hello line longer than 1024 bytes".into());
                    return served;
                }
                continue;
            };
            served.hello = String::from_utf8_lossy(&line[..pos]).into_owned();
            let answer = format!("{id} {peer} {}\n", served.hello);
            if let Err(e) = s.write_all(answer.as_bytes()) {
                served.error = Some(format!("write the answer: {e}"));
                return served;
            }
            hello_done = true;
            let rest = line.split_off(pos + 1);
            if let Err(e) = s.write_all(&rest) {
                served.error = Some(format!("echo: {e}"));
                return served;
            }
            served.echoed += rest.len() as u64;
            data = &[];
        }
        if !data.is_empty() {
            if let Err(e) = s.write_all(data) {
                served.error = Some(format!("echo after {} bytes: {e}", served.echoed));
                return served;
            }
            served.echoed += data.len() as u64;
        }
    }
}

impl IdServer {
    /// The connections that have ended so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// Stops accepting, ends open connections, waits for the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for IdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An identity server's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The id of the server that answered.
    pub backend: String,
    /// The client address as that server saw it.
    pub seen_as: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

fn parse_answer(answer: &str, hello: &str, local: SocketAddr) -> Result<Hello, String> {
    let line = answer
        .strip_suffix('\n')
        .ok_or_else(|| format!("answer {answer:?} does not end with a newline"))?;
    let mut words = line.splitn(3, ' ');
    let (Some(id), Some(peer), Some(echo)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("answer {answer:?}: not '<id> <peer> <hello>'"));
    };
    if echo != hello {
        return Err(format!(
            "answer {answer:?} echoes another hello than {hello:?}"
        ));
    }
    Ok(Hello {
        backend: id.to_string(),
        seen_as: peer
            .parse()
            .map_err(|e| format!("answer {answer:?}: peer {peer:?}: {e}"))?,
        local,
    })
}

/// One short connection to `to`, from the calling thread's namespace: one
/// connect attempt (3 s), the hello `HELLO <tag>`, half-close, the answer
/// read to EOF (5 s). Call it inside [`in_netns`].
pub fn hello_once(to: SocketAddr, tag: &str) -> Result<Hello, String> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .map_err(|e| format!("connect {to}: {e}"))?;
    hello_on(s, tag)
}

/// The hello exchange of [`hello_once`] on a connected stream.
pub fn hello_on(mut s: TcpStream, tag: &str) -> Result<Hello, String> {
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let to = s.peer_addr().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = format!("HELLO {tag}");
    s.write_all(format!("{hello}\n").as_bytes())
        .map_err(|e| format!("{local} -> {to}: write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("{local} -> {to}: shutdown: {e}"))?;
    let mut answer = Vec::new();
    (&s).take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{local} -> {to}: read the answer: {e}"))?;
    parse_answer(&String::from_utf8_lossy(&answer), &hello, local)
        .map_err(|e| format!("{local} -> {to}: {e}"))
}

/// `count` [`hello_once`] connections one after the other from `ns` to `to`,
/// tags `<tag>-<i>`; stops early (fewer results) after `limit`.
pub fn hellos(
    ns: &str,
    to: SocketAddr,
    count: usize,
    tag: &str,
    limit: Duration,
) -> Vec<Result<Hello, String>> {
    let tag = tag.to_string();
    in_netns(ns, move || {
        let deadline = Instant::now() + limit;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            if Instant::now() >= deadline {
                break;
            }
            out.push(hello_once(to, &format!("{tag}-{i}")));
        }
        out
    })
}

/// A long-lived connection to an [`IdServer`], past its hello.
pub struct Flow {
    pub stream: TcpStream,
    pub hello: Hello,
    seq: u64,
}

/// Opens a [`Flow`] from `ns` to `to` (one connect attempt): sends the hello
/// and reads the answer line, nothing more.
pub fn open_flow(ns: &str, to: SocketAddr, tag: &str) -> Result<Flow, String> {
    let tag = tag.to_string();
    let mut s = in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))
    })?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = format!("HELLO {tag}");
    s.write_all(format!("{hello}\n").as_bytes())
        .map_err(|e| format!("{local} -> {to}: write: {e}"))?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.last() != Some(&b'\n') {
        if answer.len() > 1024 {
            return Err(format!("{local} -> {to}: answer line too long"));
        }
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("{local} -> {to}: EOF before the answer")),
            Ok(_) => answer.push(byte[0]),
            Err(e) => return Err(format!("{local} -> {to}: read the answer: {e}")),
        }
    }
    let hello = parse_answer(&String::from_utf8_lossy(&answer), &hello, local)
        .map_err(|e| format!("{local} -> {to}: {e}"))?;
    Ok(Flow {
        stream: s,
        hello,
        seq: 0,
    })
}

impl Flow {
    /// One round trip of 16 numbered bytes through the echo, within
    /// `limit`. An end of stream is `UnexpectedEof`, other data `InvalidData`.
    pub fn ping(&mut self, limit: Duration) -> std::io::Result<()> {
        self.seq += 1;
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(b"kxdpping");
        msg[8..].copy_from_slice(&self.seq.to_be_bytes());
        self.stream.set_read_timeout(Some(limit))?;
        self.stream.write_all(&msg)?;
        let mut back = [0u8; 16];
        self.stream.read_exact(&mut back)?;
        if back != msg {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("ping {} came back as {back:02x?}", self.seq),
            ));
        }
        Ok(())
    }
}

/// What a [`Pinger`] saw.
#[derive(Clone, Debug, Default)]
pub struct PingReport {
    pub ok: u64,
    pub last_ok: Option<Instant>,
    /// The first failed ping (the pinger stops there).
    pub error: Option<PingError>,
}

/// A failed ping.
#[derive(Clone, Debug)]
pub struct PingError {
    /// When the ping was sent.
    pub sent: Instant,
    /// When it failed.
    pub seen: Instant,
    pub kind: std::io::ErrorKind,
    pub message: String,
}

/// Pings a [`Flow`] every `interval` on its own thread until stopped, until
/// `limit`, or until the first failure.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<PingReport>>,
}

impl Pinger {
    pub fn start(mut flow: Flow, interval: Duration, limit: Duration) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut report = PingReport::default();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let at = Instant::now();
                // Generous: the lab may share its cores with other work; a
                // black hole still shows as a timeout, a reset as a reset.
                match flow.ping(Duration::from_secs(3)) {
                    Ok(()) => {
                        report.ok += 1;
                        report.last_ok = Some(Instant::now());
                    }
                    Err(e) => {
                        report.error = Some(PingError {
                            sent: at,
                            seen: Instant::now(),
                            kind: e.kind(),
                            message: e.to_string(),
                        });
                        break;
                    }
                }
                thread::sleep(interval);
            }
            report
        });
        Pinger {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the pinger and returns its report.
    pub fn finish(mut self) -> PingReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// True for the ways a reset or closed TCP connection shows on a client:
/// ECONNRESET, ECONNABORTED, EPIPE, or EOF.
pub fn is_connection_end(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Streams pseudo-random data over `s` (an echo, e.g. a [`Flow`]'s stream)
/// for `duration` at about `bytes_per_sec`, checking the echo byte for byte
/// as it comes back. Returns the bytes sent (all of which came back intact).
pub fn stream_for(
    s: TcpStream,
    duration: Duration,
    bytes_per_sec: u64,
    seed: u64,
) -> Result<u64, String> {
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> Result<u64, String> {
        const CHUNK: u64 = 16 * 1024;
        let started = Instant::now();
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK as usize];
        let mut sent = 0u64;
        while started.elapsed() < duration {
            let allowed = (bytes_per_sec as f64 * started.elapsed().as_secs_f64()) as u64 + CHUNK;
            if sent + CHUNK > allowed {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            p.fill(&mut buf);
            w.write_all(&buf)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += CHUNK;
        }
        w.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown after {sent} bytes: {e}"))?;
        Ok(sent)
    });
    let mut r = s;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let result = loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read after {got} bytes: {e}")),
        };
        expect.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            break Err(format!("data differs at byte {}", got + i as u64));
        }
        got += n as u64;
    };
    let sent = writer.join().map_err(|_| "writer panicked".to_string())?;
    result?;
    let sent = sent?;
    if got != sent {
        return Err(format!("received {got} of {sent} bytes"));
    }
    Ok(sent)
}

/// A UDP server that tells who it is: each datagram is answered with
/// `"<id> <peer ip:port> "` followed by the datagram. Stops when dropped or
/// after 5 minutes.
pub struct UdpIdServer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

/// Starts a [`UdpIdServer`] named `id` on `ip:port` inside `ns`.
pub fn udp_id_server(ns: &str, ip: Ipv4Addr, port: u16, id: &str) -> UdpIdServer {
    let sock = in_netns(ns, move || {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind udp {ip}:{port}: {e}"))
    });
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, id) = (stop.clone(), id.to_string());
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + ID_SERVER_LIMIT;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut answer = format!("{id} {from} ").into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&answer, from);
            }
        }
    });
    UdpIdServer {
        stop,
        handle: Some(handle),
    }
}

impl Drop for UdpIdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Parses a [`UdpIdServer`] answer: (id, peer as seen, the datagram sent).
pub fn parse_udp_answer(answer: &[u8]) -> Option<(String, SocketAddr, Vec<u8>)> {
    let sp1 = answer.iter().position(|&b| b == b' ')?;
    let sp2 = sp1 + 1 + answer[sp1 + 1..].iter().position(|&b| b == b' ')?;
    let id = std::str::from_utf8(&answer[..sp1]).ok()?.to_string();
    let peer = std::str::from_utf8(&answer[sp1 + 1..sp2])
        .ok()?
        .parse()
        .ok()?;
    Some((id, peer, answer[sp2 + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_chunking_independent() {
        let mut a = Pattern::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut parts = vec![0u8; 1000];
        let (x, y) = parts.split_at_mut(333);
        b.fill(x);
        b.fill(y);
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn identity_answers_parse() {
        let local: SocketAddr = "10.244.2.3:40000".parse().unwrap();
        let h = parse_answer("n1-p1 10.244.1.1:61000 HELLO x-1\n", "HELLO x-1", local).unwrap();
        assert_eq!(h.backend, "n1-p1");
        assert_eq!(h.seen_as, "10.244.1.1:61000".parse().unwrap());
        assert_eq!(h.local, local);
        assert!(parse_answer("n1-p1 10.244.1.1:61000 HELLO x-2\n", "HELLO x-1", local).is_err());
        assert!(parse_answer("n1-p1 10.244.1.1:61000 HELLO x-1", "HELLO x-1", local).is_err());
        assert!(parse_answer("", "HELLO x-1", local).is_err());
        let (id, peer, payload) = parse_udp_answer(b"n2-p1 10.244.2.3:5000 seq 7").unwrap();
        assert_eq!((id.as_str(), payload.as_slice()), ("n2-p1", &b"seq 7"[..]));
        assert_eq!(peer, "10.244.2.3:5000".parse().unwrap());
        assert!(parse_udp_answer(b"garbage").is_none());
    }

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 style example: a valid header sums to zero.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = inet_checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&h), 0);
    }

    #[test]
    fn pcap_roundtrip_and_vxlan_parse() {
        let inner = udp_frame(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 2),
            (1000, 2000),
            b"hello",
        );
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&inner);
        let outer = udp_frame(
            [6; 6],
            [8; 6],
            Ipv4Addr::new(172, 30, 0, 11),
            Ipv4Addr::new(172, 30, 0, 12),
            (50000, 4789),
            &vx,
        );
        // Global header: magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&2u16.to_le_bytes());
        file.extend_from_slice(&4u16.to_le_bytes());
        for w in [0u32, 0, 65535, 1] {
            file.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(file.len(), 24);
        for w in [1u32, 2, outer.len() as u32, outer.len() as u32] {
            file.extend_from_slice(&w.to_le_bytes());
        }
        file.extend_from_slice(&outer);
        let frames = pcap_frames(&file).unwrap();
        assert_eq!(frames.len(), 1);
        let v = parse_vxlan(&frames[0]).unwrap();
        assert_eq!((v.flags, v.vni, v.dst_port), (0x08, 1, 4789));
        assert_eq!(v.outer_src, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(
            inner_ipv4(&v.inner),
            Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2)))
        );
    }
}
