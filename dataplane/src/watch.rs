//! Packet trace and capture (`kxdpctl trace`, `kxdpctl capture`): the
//! `Watch` RPC's three steps. The API checks the request ([`query`]); the
//! engine resolves interface names, parses the filter and arms every worker
//! with a `Recorder` ([`arm`], `Command::Watch`); the API then collects
//! what the workers send until it has `count` records or the time is up
//! ([`collect`], on tokio's blocking pool), and renders them. A worker
//! disarms itself when its recorder is done, the channel is full or closed
//! (the API stopped reading), or the deadline passed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use kxdp_core::pipeline::Verdict;
use kxdp_core::tables::PortId;
use kxdp_core::trace::{Filter, Mode, Point, Record, Recorder, MAX_CAPTURE, MAX_TRACE};
use kxdp_proto::dataplane as pb;
use tonic::Status;

use crate::state::FieldError;
use crate::worker::{Command, Watch, WorkerHandle};

/// Packets a trace or capture takes when the request says 0.
const DEFAULT_COUNT: u32 = 10;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may wait: a Watch holds one of the API's blocking
/// threads while it waits.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a capture takes frames, as named in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturePoint {
    Rx,
    Tx,
    Drop,
    Port(String),
}

/// A checked `WatchRequest`.
#[derive(Debug, Clone)]
pub struct WatchQuery {
    /// `None`: a trace.
    pub point: Option<CapturePoint>,
    pub filter: String,
    pub count: u32,
    pub timeout: Duration,
}

/// An armed watch: the workers' records arrive on `records`.
pub struct Watching {
    pub records: Receiver<Record>,
    /// Interface names by port, to render the records.
    pub ports: HashMap<PortId, String>,
    pub deadline: Instant,
    pub count: u32,
}

/// Checks a request's limits (INVALID_ARGUMENT naming the field).
pub fn query(req: pb::WatchRequest) -> Result<WatchQuery, Status> {
    let point = match req.point.as_str() {
        "" => None,
        "rx" => Some(CapturePoint::Rx),
        "tx" => Some(CapturePoint::Tx),
        "drop" => Some(CapturePoint::Drop),
        p => match p.strip_prefix("port:") {
            Some(name) if !name.is_empty() => Some(CapturePoint::Port(name.into())),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "point: {p:?}: expected rx, tx, drop or port:IFNAME"
                )))
            }
        },
    };
    let max = if point.is_some() {
        MAX_CAPTURE
    } else {
        MAX_TRACE
    };
    let count = match req.count {
        0 => DEFAULT_COUNT,
        n if n > max => {
            return Err(Status::invalid_argument(format!(
                "count: {n} packets, over the limit of {max}"
            )))
        }
        n => n,
    };
    let timeout = match Duration::from_millis(req.timeout_ms.into()) {
        d if d.is_zero() => DEFAULT_TIMEOUT,
        d if d > MAX_TIMEOUT => {
            return Err(Status::invalid_argument(format!(
                "timeout_ms: {} ms, over the limit of {} ms",
                req.timeout_ms,
                MAX_TIMEOUT.as_millis()
            )))
        }
        d => d,
    };
    Ok(WatchQuery {
        point,
        filter: req.filter,
        count,
        timeout,
    })
}

/// Arms every worker (the engine's side). `ports`: interface names and
/// their port ids.
pub fn arm<'a>(
    workers: &[WorkerHandle],
    ports: impl Iterator<Item = (&'a str, PortId)>,
    q: WatchQuery,
) -> Result<Watching, FieldError> {
    let ports: HashMap<PortId, String> = ports.map(|(n, id)| (id, n.to_string())).collect();
    let id = |name: &str| ports.iter().find(|(_, n)| *n == name).map(|(id, _)| *id);
    let filter = Filter::parse(&q.filter, id).map_err(|msg| FieldError {
        field: "filter".into(),
        msg,
    })?;
    let mode = match &q.point {
        None => Mode::Trace,
        Some(CapturePoint::Rx) => Mode::Capture(Point::Rx),
        Some(CapturePoint::Tx) => Mode::Capture(Point::Tx),
        Some(CapturePoint::Drop) => Mode::Capture(Point::Drop),
        Some(CapturePoint::Port(name)) => {
            Mode::Capture(Point::Port(id(name).ok_or_else(|| FieldError {
                field: "point".into(),
                msg: format!("no interface {name:?} is attached"),
            })?))
        }
    };
    let (tx, records) = bounded(q.count as usize);
    let deadline = Instant::now() + q.timeout;
    for (i, w) in workers.iter().enumerate() {
        w.send(Command::Watch(Box::new(Watch {
            rec: Recorder::new(mode, filter.clone(), i as u16, q.count),
            out: tx.clone(),
            deadline,
        })));
    }
    Ok(Watching {
        records,
        ports,
        deadline,
        count: q.count,
    })
}

/// Waits for the records (blocking: run it on tokio's blocking pool) and
/// renders them. Dropping the receiver at the end disarms the workers
/// still armed at their next traced batch.
pub fn collect(w: Watching) -> pb::WatchReply {
    let mut records = Vec::new();
    let mut timed_out = false;
    while records.len() < w.count as usize {
        let wait = w.deadline.saturating_duration_since(Instant::now());
        match w.records.recv_timeout(wait) {
            Ok(r) => records.push(render(&w.ports, r)),
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // Every worker is gone (shutting down).
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    records.sort_by_key(|r: &pb::WatchRecord| r.time_unix_ns);
    pb::WatchReply { records, timed_out }
}

fn render(ports: &HashMap<PortId, String>, r: Record) -> pb::WatchRecord {
    let name = |p: PortId| {
        ports
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("port {p}"))
    };
    pb::WatchRecord {
        time_unix_ns: r.unix_ns,
        worker: r.worker.into(),
        ingress: name(r.ingress),
        handed: r.handed,
        verdict: match r.verdict {
            Verdict::Tx(p) => format!("tx {}", name(p)),
            Verdict::Drop(reason) => format!("drop {}", reason.name()),
            Verdict::Handoff(w) => format!("handoff worker {w}"),
        },
        generation: r.generation,
        epoch: r.epoch,
        steps: r.steps,
        frame: r.frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(point: &str, count: u32, timeout_ms: u32) -> pb::WatchRequest {
        pb::WatchRequest {
            point: point.into(),
            filter: String::new(),
            count,
            timeout_ms,
        }
    }

    #[test]
    fn requests_are_checked_against_their_limits() {
        let q = query(req("", 0, 0)).unwrap();
        assert_eq!((q.point, q.count, q.timeout), (None, 10, DEFAULT_TIMEOUT));
        let q = query(req("port:veth1", MAX_CAPTURE, 60_000)).unwrap();
        assert_eq!(q.point, Some(CapturePoint::Port("veth1".into())));
        for (r, field) in [
            (req("", MAX_TRACE + 1, 0), "count"),
            (req("drop", MAX_CAPTURE + 1, 0), "count"),
            (req("rx", 1, 60_001), "timeout_ms"),
            (req("sideways", 1, 0), "point"),
            (req("port:", 1, 0), "point"),
        ] {
            let e = query(r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }
}
