//! Connectivity probes for truth tables: TCP and UDP echo servers in pod
//! namespaces, and many short probes (one TCP connect with an echoed line,
//! one UDP round trip, or `ping` for ICMP echo) run concurrently by a
//! bounded pool of threads, each probe from inside its source namespace.
//!
//! A denied probe costs its timeout ([`TCP_PROBE_TIMEOUT`],
//! [`UDP_PROBE_TRIES`] × [`UDP_PROBE_WAIT`], [`PING_TRIES`] echo requests),
//! so probes run [`PROBE_THREADS`] at a time.

use super::netpol::Proto;
use super::*;

/// A TCP probe's connect (and echo) deadline: above Linux's first SYN
/// retransmission (1 s), so one lost SYN does not fail an allowed probe.
pub const TCP_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// UDP probe datagrams sent before the probe counts as denied.
pub const UDP_PROBE_TRIES: u32 = 3;
/// How long a UDP probe waits for each echo.
pub const UDP_PROBE_WAIT: Duration = Duration::from_millis(400);
/// Echo requests an ICMP probe sends (0.3 s apart, each answer awaited
/// 1 s) before it counts as denied.
pub const PING_TRIES: u32 = 2;
/// Probes in flight at once: the probes wait, they hardly compute.
pub const PROBE_THREADS: usize = 64;
/// How long a server thread serves one TCP connection at most (a stream
/// through a policy change lasts seconds).
const SERVE_LIMIT: Duration = Duration::from_secs(120);

/// Echo servers: TCP and UDP on each of `ports`, in each namespace, until
/// dropped.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl EchoServers {
    /// Serves TCP and UDP echo on `ip:port` for every (namespace, ip) in
    /// `pods` and every port in `ports`.
    pub fn start(pods: &[(String, Ipv4Addr)], ports: &[u16]) -> EchoServers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (ns, ip) in pods {
            for &port in ports {
                let listener = tcp_listen(ns, *ip, port);
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                let flag = stop.clone();
                threads.push(thread::spawn(move || tcp_serve(listener, flag)));
                let (ip, udp_port) = (*ip, port);
                let sock = in_netns(ns, move || {
                    UdpSocket::bind((ip, udp_port))
                        .unwrap_or_else(|e| panic!("bind udp {ip}:{udp_port}: {e}"))
                });
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("udp read timeout");
                let flag = stop.clone();
                threads.push(thread::spawn(move || udp_serve(sock, flag)));
            }
        }
        EchoServers { stop, threads }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                let flag = stop.clone();
                thread::spawn(move || echo_connection(s, flag));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Echoes until EOF, an error, `stop`, or [`SERVE_LIMIT`].
fn echo_connection(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let deadline = Instant::now() + SERVE_LIMIT;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

fn udp_serve(sock: UdpSocket, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// One probe: a new connection from inside namespace `ns` to `to`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub ns: String,
    pub to: SocketAddr,
    pub proto: Proto,
}

/// Runs every probe, [`PROBE_THREADS`] at a time; `true` where the
/// connection worked (the echo came back intact).
pub fn run_probes(probes: &[Probe]) -> Vec<bool> {
    let next = Arc::new(std::sync::Mutex::new(0usize));
    let probes: Arc<Vec<Probe>> = Arc::new(probes.to_vec());
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..PROBE_THREADS.min(probes.len()))
        .map(|w| {
            let (next, probes, tx) = (next.clone(), probes.clone(), tx.clone());
            thread::spawn(move || {
                let mut entered: Option<String> = None;
                loop {
                    let i = {
                        let mut n = next.lock().expect("probe queue");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(p) = probes.get(i) else { break };
                    if entered.as_deref() != Some(&p.ns) {
                        enter_netns(&p.ns);
                        entered = Some(p.ns.clone());
                    }
                    let token = format!("kxdp-probe {w} {i} {}\n", p.to);
                    let ok = match p.proto {
                        Proto::Tcp => tcp_probe(p.to, token.as_bytes()),
                        Proto::Udp => udp_probe(p.to, token.as_bytes()),
                        Proto::Icmp => ping_probe(&p.ns, p.to.ip()),
                    };
                    let _ = tx.send((i, ok));
                }
            })
        })
        .collect();
    drop(tx);
    let mut results = vec![false; probes.len()];
    for (i, ok) in rx {
        results[i] = ok;
    }
    for w in workers {
        w.join().expect("probe worker");
    }
    results
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// Connects, sends `token`, and reads it back.
pub fn tcp_probe(to: SocketAddr, token: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to, TCP_PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(TCP_PROBE_TIMEOUT));
    let _ = s.set_write_timeout(Some(TCP_PROBE_TIMEOUT));
    let mut back = vec![0u8; token.len()];
    s.write_all(token).is_ok() && s.read_exact(&mut back).is_ok() && back == token
}

/// `ping` from namespace `ns`: whether one of [`PING_TRIES`] echo
/// requests to `to` was answered.
pub fn ping_probe(ns: &str, to: std::net::IpAddr) -> bool {
    let (count, to) = (PING_TRIES.to_string(), to.to_string());
    let out = ns_exec(
        ns,
        10,
        "ping",
        &["-n", "-q", "-c", &count, "-i", "0.3", "-W", "1", &to],
    );
    // 1: no answer; anything else (no ping, a bad address) is the test's
    // fault, not a verdict.
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "ping {to} from {ns}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Sends `token` up to [`UDP_PROBE_TRIES`] times until it comes back.
pub fn udp_probe(to: SocketAddr, token: &[u8]) -> bool {
    let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    if s.connect(to).is_err() || s.set_read_timeout(Some(UDP_PROBE_WAIT)).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    for _ in 0..UDP_PROBE_TRIES {
        if s.send(token).is_err() {
            thread::sleep(UDP_PROBE_WAIT);
            continue;
        }
        let deadline = Instant::now() + UDP_PROBE_WAIT;
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) if &buf[..n] == token => return true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    false
}
