//! kxdp-bench's progress: points done of the run's total and an ETA
//! (`indicatif`). On a terminal, a bar stays at the bottom of stderr and
//! every log line ([`say!`](crate::say)) prints above it; elsewhere (a log
//! file, CI) the bar is hidden and each finished point adds one plain line,
//! "==> progress: 3/24 points, 2m elapsed, about 6m left", to the usual log.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a log line to stderr, above the bar if one is shown.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::bench::progress::say(&format!($($arg)*)) };
}

pub fn say(line: &str) {
    match BAR.lock().ok().and_then(|b| b.clone()) {
        Some(bar) if !bar.is_hidden() => bar.println(line),
        _ => eprintln!("{line}"),
    }
}

/// Starts counting `total` points (drawn on stderr if it is a terminal).
pub fn start(total: u64) {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} points, {elapsed} elapsed, ETA {eta} {wide_msg}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_secs(1));
    if let Ok(mut b) = BAR.lock() {
        *b = Some(bar);
    }
}

/// One point done: `what` ("pod-svc 64B 1000 flows").
pub fn point_done(what: &str) {
    let Some(bar) = BAR.lock().ok().and_then(|b| b.clone()) else {
        return;
    };
    bar.inc(1);
    bar.set_message(what.to_string());
    if bar.is_hidden() {
        eprintln!(
            "{}",
            line(
                bar.position(),
                bar.length().unwrap_or(0),
                bar.elapsed(),
                bar.eta()
            )
        );
    }
}

/// Ends the bar (cleared from the terminal).
pub fn finish() {
    if let Some(bar) = BAR.lock().ok().and_then(|mut b| b.take()) {
        bar.finish_and_clear();
    }
}

/// The plain progress line for a log.
fn line(done: u64, total: u64, elapsed: Duration, eta: Duration) -> String {
    let left = if done >= total {
        "done".to_string()
    } else {
        format!("about {} left", HumanDuration(eta))
    };
    format!(
        "==> progress: {done}/{total} points, {} elapsed, {left}",
        HumanDuration(elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_counts_points_and_time() {
        assert_eq!(
            line(3, 24, Duration::from_secs(120), Duration::from_secs(840)),
            "==> progress: 3/24 points, 2 minutes elapsed, about 14 minutes left"
        );
        assert_eq!(
            line(24, 24, Duration::from_secs(600), Duration::ZERO),
            "==> progress: 24/24 points, 10 minutes elapsed, done"
        );
    }
}
