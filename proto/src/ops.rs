//! What both daemons need to be operated: a minimal HTTP/1.1 server for
//! `/metrics` and `/healthz` (and the dataplane's kube-proxy health checks),
//! the Prometheus text rendering of an OpenMetrics exposition, and systemd's
//! notify protocol (`sd_notify`: READY=1, WATCHDOG=1, STATUS=...).
//!
//! The server reads one request head (at most [`MAX_REQUEST`] bytes, within
//! [`REQUEST_TIMEOUT`]), hands the path and `Accept` header to the caller's
//! handler, writes its answer and closes the connection: scrapes and probes
//! need nothing more, and nothing a client sends can make it allocate more
//! than one request buffer.

use std::future::Future;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read before answering.
pub const MAX_REQUEST: usize = 4096;

/// What a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The request target without its query, e.g. "/metrics"; "" when the
    /// request line was unreadable.
    pub path: String,
    /// The `Accept` header, "" if none.
    pub accept: String,
}

impl Request {
    /// Parses a request head (as much of it as arrived).
    pub fn parse(head: &[u8]) -> Request {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Request { path, accept }
    }

    /// True when the client takes OpenMetrics (Prometheus asks for it first).
    pub fn wants_openmetrics(&self) -> bool {
        self.accept.contains("application/openmetrics-text")
    }
}

/// An answer: status, content type, extra headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Prometheus' classic text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// OpenMetrics, what `prometheus-client` encodes.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::new(status, "application/json", body.to_string())
    }

    pub fn not_found() -> Response {
        Response::new(404, "text/plain", "not found\n".into())
    }

    /// A metrics exposition (`prometheus-client`'s OpenMetrics text) in the
    /// format the client asked for: OpenMetrics for Prometheus, the classic
    /// text format for anyone else (curl, `promtool check metrics`).
    pub fn metrics(req: &Request, openmetrics: String) -> Response {
        if req.wants_openmetrics() {
            Response::new(200, OPENMETRICS_FORMAT, openmetrics)
        } else {
            Response::new(200, TEXT_FORMAT, openmetrics_to_text(&openmetrics))
        }
    }

    /// The whole HTTP/1.1 response, `Connection: close`.
    pub fn to_http(&self) -> String {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\n",
            self.status, self.content_type
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.body.len(),
            self.body
        ));
        out
    }
}

/// Serves `listener` until the task is aborted: each connection's request
/// head goes to `handler`, whose answer is written back.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; MAX_REQUEST];
            let mut got = 0;
            // Read the request head (or give up on a slow client), then answer.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while got < buf.len() {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            let response = handler(Request::parse(&buf[..got])).await;
            let _ = conn.write_all(response.to_http().as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// How long [`bind`] waits for an address in use to be released.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds `addr` for [`serve`] (synchronously, so a bad address is an error
/// at startup); call inside the runtime. An address in use is tried again
/// for [`BIND_PATIENCE`]: a predecessor killed just now may still be
/// closing its listener (its other threads outlive its main one).
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    let l = loop {
        match std::net::TcpListener::bind(addr) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => break r?,
        }
    };
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// The classic Prometheus text format of an OpenMetrics exposition as
/// `prometheus-client` writes it: a counter family `x` is `# TYPE x counter`
/// with samples `x_total` in OpenMetrics, but must be named `x_total` in its
/// HELP and TYPE lines in the text format; `# UNIT` and `# EOF` lines go.
/// Everything else (gauges, histograms, labels, values) is the same in both.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// systemd's notify protocol: a datagram to `$NOTIFY_SOCKET` (a path, or
/// `@name` for the abstract namespace). Ok(false) when not started by a
/// service manager that asked for it.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let path = path.to_string_lossy();
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &*path)?;
    }
    Ok(true)
}

/// The watchdog interval systemd asked for (`WatchdogSec=`, passed as
/// `$WATCHDOG_USEC`, for this process if `$WATCHDOG_PID` names one).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How often to ping a watchdog of `interval`: half of it (systemd's
/// advice), at most once a second so that health is looked at often.
pub fn ping_every(interval: Option<Duration>) -> Duration {
    interval.map_or(Duration::from_secs(1), |w| {
        (w / 2).min(Duration::from_secs(1))
    })
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-12-07T13:51:31.123Z` for unix milliseconds (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_651_491_123), "2026-12-07T13:51:31.123Z");
    }

    #[test]
    fn requests_parse_path_and_accept() {
        let r = Request::parse(
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text;version=1.0.0\r\n\r\n",
        );
        assert_eq!(r.path, "/metrics");
        assert!(r.wants_openmetrics());
        let r = Request::parse(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/healthz");
        assert!(!r.wants_openmetrics());
        assert_eq!(Request::parse(b"garbage").path, "");
    }

    #[test]
    fn counters_are_renamed_for_the_text_format_only() {
        let om = "# HELP kxdp_drops Frames dropped.\n# TYPE kxdp_drops counter\nkxdp_drops_total{reason=\"a\"} 3\n# HELP kxdp_workers Workers.\n# TYPE kxdp_workers gauge\nkxdp_workers 2\n# HELP x_seconds Hist.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\nx_seconds_count 1\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP kxdp_drops_total Frames dropped.\n# TYPE kxdp_drops_total counter\nkxdp_drops_total{reason=\"a\"} 3\n# HELP kxdp_workers Workers.\n# TYPE kxdp_workers gauge\nkxdp_workers 2\n# HELP x_seconds Hist.\n# TYPE x_seconds histogram\nx_seconds_count 1\n"
        );
    }

    #[test]
    fn responses_carry_length_and_status() {
        let r = Response::json(503, &serde_json::json!({"a": 1})).to_http();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("Content-Length: 7\r\n") && r.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn notify_reaches_a_bound_datagram_socket() {
        let dir = std::env::temp_dir().join(format!("kxdp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        // The only test of this binary that touches NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(sd_notify("READY=1").unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!sd_notify("READY=1").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
