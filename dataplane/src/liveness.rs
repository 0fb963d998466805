//! Is this dataplane alive and doing its job? Read without asking any
//! thread: each worker stamps a heartbeat when it publishes its counters
//! (every busy pass, and before each idle sleep of at most 100 ms), the
//! engine stamps one every loop (at least once a second) and records each
//! snapshot every worker acknowledged. `/healthz` (`--metrics-address`) and
//! the systemd notifier (READY=1, WATCHDOG=1) read them here, so a stuck
//! worker or engine makes the answer unhealthy rather than hanging it.
//!
//! The answer follows kube-proxy's `/healthz`: 200 when healthy, else 503,
//! with a JSON body saying why (`lastUpdated`, `currentTime`, per-worker
//! state).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxdp_proto::ops::{self, rfc3339, unix_ms, Response};

use crate::worker::SharedStats;

/// A worker whose heartbeat is older than this is stuck (an idle one beats
/// every ~100 ms; a busy one every pass).
pub const WORKER_STALE: Duration = Duration::from_secs(3);
/// An engine whose loop has not turned for this long is stuck. Above the
/// 5 s a write may wait for a worker's acknowledgement.
pub const ENGINE_STALE: Duration = Duration::from_secs(10);

/// What the engine and workers stamp; shared with whoever asks.
pub struct Liveness {
    origin: Instant,
    /// Nanoseconds since `origin` of the engine's last loop.
    engine_ns: AtomicU64,
    /// Unix milliseconds of the last snapshot every worker acknowledged.
    applied_ms: AtomicU64,
    generation: AtomicU64,
    epoch: AtomicU64,
    /// The last snapshot was not acknowledged by every worker.
    unacknowledged: AtomicBool,
    /// A node config was synced and its uplink attached.
    attached: AtomicBool,
    workers: Vec<Arc<SharedStats>>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("table", &self.table())
            .finish()
    }
}

/// One look at the process's health.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    /// Synced, attached and healthy: what systemd's READY=1 waits for.
    pub ready: bool,
    /// Why it is unhealthy; empty when healthy.
    pub reasons: Vec<String>,
    pub body: serde_json::Value,
}

impl Liveness {
    pub fn new(workers: Vec<Arc<SharedStats>>) -> Liveness {
        Liveness {
            origin: Instant::now(),
            engine_ns: AtomicU64::new(0),
            applied_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            unacknowledged: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            workers,
        }
    }

    /// The engine's loop turned.
    pub fn engine_beat(&self) {
        let ns = self.origin.elapsed().as_nanos() as u64;
        self.engine_ns.store(ns, Ordering::Relaxed);
    }

    /// Every worker acknowledged the snapshot `epoch` of `generation`.
    pub fn applied(&self, generation: u64, epoch: u32) {
        self.generation.store(generation, Ordering::Relaxed);
        self.epoch.store(epoch.into(), Ordering::Relaxed);
        self.applied_ms.store(unix_ms(), Ordering::Relaxed);
        self.unacknowledged.store(false, Ordering::Relaxed);
    }

    /// Some worker did not acknowledge the last snapshot.
    pub fn unacknowledged(&self) {
        self.unacknowledged.store(true, Ordering::Relaxed);
        self.generation.store(0, Ordering::Relaxed);
    }

    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    /// The generation and epoch of the last snapshot every worker took.
    pub fn table(&self) -> (u64, u64) {
        (
            self.generation.load(Ordering::Relaxed),
            self.epoch.load(Ordering::Relaxed),
        )
    }

    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// How long ago each worker last beat.
    pub fn worker_ages(&self) -> Vec<Duration> {
        self.workers.iter().map(|w| w.heartbeat_age()).collect()
    }

    pub fn check(&self) -> Health {
        let mut reasons = Vec::new();
        let workers: Vec<serde_json::Value> = self
            .worker_ages()
            .into_iter()
            .enumerate()
            .map(|(i, age)| {
                let stuck = age > WORKER_STALE;
                if stuck {
                    reasons.push(format!(
                        "worker {i} has not polled for {:.1}s",
                        age.as_secs_f64()
                    ));
                }
                serde_json::json!({
                    "worker": i,
                    "state": if stuck { "stuck" } else { "polling" },
                    "lastPollSecondsAgo": age.as_secs_f64(),
                })
            })
            .collect();
        let engine_age = self
            .origin
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.engine_ns.load(Ordering::Relaxed)));
        if engine_age > ENGINE_STALE {
            reasons.push(format!(
                "the engine has not ticked for {:.1}s",
                engine_age.as_secs_f64()
            ));
        }
        let unacknowledged = self.unacknowledged.load(Ordering::Relaxed);
        if unacknowledged {
            reasons.push("the last tables were not acknowledged by every worker".into());
        }
        let (generation, epoch) = self.table();
        let applied_ms = self.applied_ms.load(Ordering::Relaxed);
        let healthy = reasons.is_empty();
        let attached = self.attached();
        let body = serde_json::json!({
            "healthy": healthy,
            "reasons": reasons,
            "lastUpdated": (applied_ms > 0).then(|| rfc3339(applied_ms)),
            "currentTime": rfc3339(unix_ms()),
            "generation": generation,
            "epoch": epoch,
            "attached": attached,
            "engine": { "lastTickSecondsAgo": engine_age.as_secs_f64() },
            "workers": workers,
        });
        Health {
            healthy,
            ready: healthy && attached && generation > 0,
            reasons,
            body,
        }
    }
}

impl Health {
    /// kube-proxy's semantics: 200 healthy, 503 not, the JSON says why.
    pub fn response(&self) -> Response {
        Response::json(if self.healthy { 200 } else { 503 }, &self.body)
    }
}

/// Tells systemd READY=1 once the dataplane is synced and attached, and
/// WATCHDOG=1 every `ping_every` while it is healthy (never while a worker
/// or the engine is stuck, so `WatchdogSec=` restarts a hung process).
/// Without `$NOTIFY_SOCKET` (not started as `Type=notify`) it starts nothing.
pub fn spawn_notifier(live: Arc<Liveness>) -> std::io::Result<()> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(());
    }
    let watchdog = ops::watchdog_interval();
    let every = ops::ping_every(watchdog);
    std::thread::Builder::new()
        .name("kxdp-notify".into())
        .spawn(move || {
            let mut ready = false;
            let mut was_healthy = true;
            loop {
                let h = live.check();
                if h.ready && !ready {
                    let (generation, _) = live.table();
                    let msg = format!("READY=1\nSTATUS=synced generation {generation}, attached");
                    ready = notify(&msg);
                }
                if h.healthy != was_healthy {
                    let status = if h.healthy {
                        "STATUS=healthy".to_string()
                    } else {
                        format!("STATUS=unhealthy: {}", h.reasons.join("; "))
                    };
                    notify(&status);
                    was_healthy = h.healthy;
                }
                if watchdog.is_some() && h.healthy {
                    notify("WATCHDOG=1");
                }
                std::thread::sleep(every);
            }
        })?;
    Ok(())
}

fn notify(state: &str) -> bool {
    match ops::sd_notify(state) {
        Ok(sent) => sent,
        Err(e) => {
            log::warn!("sd_notify {state:?}: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_worker_or_unacknowledged_tables_are_unhealthy() {
        let long_ago = Instant::now() - 2 * WORKER_STALE;
        let w = Arc::new(SharedStats::started_at(long_ago));
        let live = Liveness::new(vec![w.clone()]);
        live.engine_beat();
        // Never beat since a start long ago: stuck.
        let h = live.check();
        assert!(!h.healthy);
        assert_eq!(h.response().status, 503);
        assert_eq!(h.body["workers"][0]["state"], "stuck");
        assert!(
            h.reasons[0].starts_with("worker 0 has not polled"),
            "{:?}",
            h.reasons
        );
        w.beat();
        let h = live.check();
        assert!(h.healthy && !h.ready, "{:?}", h.body);
        assert_eq!(h.response().status, 200);
        live.applied(7, 3);
        live.set_attached(true);
        let h = live.check();
        assert!(h.ready, "{:?}", h.body);
        assert_eq!(h.body["generation"], 7);
        assert_eq!(h.body["workers"][0]["state"], "polling");
        live.unacknowledged();
        let h = live.check();
        assert!(!h.healthy && !h.ready);
        assert!(h.reasons[0].contains("not acknowledged"), "{:?}", h.reasons);
        assert_eq!(h.body["generation"], 0);
    }
}
