//! Faults a test can inject into a running dataplane, to prove that a stuck
//! or dead thread is reported, not hidden. Armed only by the hidden flag
//! `--test-fault` (not in `--help`, and with no `KXDP_...` variable, so no
//! inherited environment or `EnvironmentFile` can arm it); the process logs a
//! warning at start when one is armed. Each fault fires at most once.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What goes wrong, and in which worker, when it next receives new tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `stall:WORKER:SECONDS`: the worker sleeps before swapping them in.
    Stall { worker: usize, secs: u64 },
    /// `panic:WORKER`: the worker panics.
    Panic { worker: usize },
}

static ARMED: OnceLock<Fault> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

/// Arms `fault` for the rest of the process (once; later calls are ignored).
pub fn arm(fault: Fault) {
    let _ = ARMED.set(fault);
}

/// Called by worker `index` when new tables arrive (between batches, never
/// per packet): fires the armed fault if it names this worker.
pub fn on_tables(index: usize) {
    let Some(&fault) = ARMED.get() else { return };
    let worker = match fault {
        Fault::Stall { worker, .. } | Fault::Panic { worker } => worker,
    };
    if worker != index || FIRED.swap(true, Ordering::Relaxed) {
        return;
    }
    log::warn!("test fault: {fault}");
    match fault {
        Fault::Stall { secs, .. } => std::thread::sleep(Duration::from_secs(secs)),
        Fault::Panic { worker } => panic!("test fault: worker {worker} panics on new tables"),
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Stall { worker, secs } => write!(f, "stall:{worker}:{secs}"),
            Fault::Panic { worker } => write!(f, "panic:{worker}"),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let num = |x: &str| x.parse().map_err(|_| format!("{x:?} is not a number"));
        match s.split(':').collect::<Vec<_>>()[..] {
            ["stall", w, secs] => Ok(Fault::Stall {
                worker: num(w)?,
                secs: num(secs)? as u64,
            }),
            ["panic", w] => Ok(Fault::Panic { worker: num(w)? }),
            _ => Err("expected stall:WORKER:SECONDS or panic:WORKER".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_alike() {
        for s in ["stall:0:8", "panic:1"] {
            assert_eq!(s.parse::<Fault>().unwrap().to_string(), s);
        }
        for bad in ["", "stall:0", "panic:x", "explode:0"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
