//! The daemons' logs: `tracing` events, written to stderr as text or as one
//! JSON object per line (`--log-format`), filtered by `--log` / `KXDP_LOG`
//! (`RUST_LOG` when neither is set; "info" when nothing is).
//!
//! A state change is one event whose `event` field names it (`attach`,
//! `detach`, `sync`, `update`, `neighbour_resolved`, ...; README "Logs"
//! lists them); its other fields are the facts, so `jq 'select(.event ==
//! "sync")'` finds every sync without parsing sentences. Nothing is logged
//! per packet: drops are counted. Records of the `log` crate (dependencies,
//! and messages that are not state changes) reach the same writer.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The level filter used when neither `--log`/`KXDP_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info";

/// How each event is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, its fields as `key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `threadName`, `message` and the event's fields at the top level.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The logging flags both daemons take (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogFlags {
    /// Log format: one line of text per event, or one JSON object per line
    /// (for a log shipper; every state change has an `event` field).
    #[arg(long, value_enum, value_name = "FORMAT", env = "KXDP_LOG_FORMAT",
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which events to log: a level (error, warn, info, debug, trace) or
    /// RUST_LOG-style directives, e.g. "info,kxdp_dataplane::engine=debug".
    /// Default: RUST_LOG if set, else "info".
    #[arg(long = "log", value_name = "FILTER", env = "KXDP_LOG")]
    pub log_filter: Option<String>,
}

impl LogFlags {
    /// Installs the logger these flags describe ([`init`]).
    pub fn init(&self) -> Result<(), String> {
        init(self.log_format, filter(self.log_filter.as_deref())?)
    }
}

/// The filter to use: `flag` (`--log`, or `KXDP_LOG` through clap), else
/// `RUST_LOG`, else [`DEFAULT_FILTER`]. An invalid directive is an error
/// naming it, not a silently ignored one.
pub fn filter(flag: Option<&str>) -> Result<EnvFilter, String> {
    let spec = match flag {
        Some(f) => f.to_string(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string()),
    };
    EnvFilter::builder()
        .parse(&spec)
        .map_err(|e| format!("log filter {spec:?}: {e}"))
}

/// Installs the process's subscriber (and the bridge from `log`). Call once,
/// from `main`, before anything logs.
pub fn init(format: LogFormat, filter: EnvFilter) -> Result<(), String> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_thread_names(true)
            .try_init(),
    };
    installed.map_err(|e| format!("installing the logger: {e}"))
}

/// For tests: text to the test harness's captured output, `RUST_LOG` or
/// "info"; a second call does nothing.
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(None).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)))
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_naming_it() {
        let e = filter(Some("kxdp=loud")).unwrap_err();
        assert!(e.contains("kxdp=loud"), "{e}");
        assert!(filter(Some("info,kxdp_dataplane::engine=debug")).is_ok());
    }
}
