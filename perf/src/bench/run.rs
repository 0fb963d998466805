//! Running one measurement point: a sink and a generator, each a child
//! process started by PID inside its namespace, pinned with taskset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::scenarios::Attach;
use crate::pktgen::{GenResult, SinkResult};

/// How to start the tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pktgen: PathBuf,
    /// Core for the generator and the sink.
    pub gen_core: usize,
    pub work: PathBuf,
}

/// One point: size, flows, and an optional rate (None: flat out).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub size: usize,
    pub flows: u16,
    pub rate: Option<u64>,
    pub duration_s: f64,
}

/// Waits for a child for at most `limit`, then SIGTERM, then SIGKILL: only
/// this child, by its PID.
pub fn wait_bounded(
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if t0.elapsed() > limit {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            if child.try_wait()?.is_none() {
                let _ = child.kill();
            }
            let st = child.wait()?;
            bail!(
                "pid {} ran past {:?} and was stopped ({st})",
                child.id(),
                limit
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn netns_cmd(ns: &str, core: usize, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "taskset", "-c", &core.to_string()])
        .arg(program);
    c
}

/// Runs the sink then the generator for `p` on `a`; returns both results.
pub fn run_point(
    tools: &Tools,
    a: &Attach,
    p: Point,
    tag: &str,
) -> anyhow::Result<(GenResult, SinkResult)> {
    let ready = tools.work.join(format!("{tag}.ready"));
    let sink_json = tools.work.join(format!("{tag}.sink.json"));
    let gen_json = tools.work.join(format!("{tag}.gen.json"));
    let sink_log = tools.work.join(format!("{tag}.sink.log"));
    let gen_log = tools.work.join(format!("{tag}.gen.log"));
    for f in [&ready, &sink_json, &gen_json] {
        let _ = std::fs::remove_file(f);
    }
    let sink_dur = p.duration_s + 6.0;
    // The previous run's socket on the same interface may not be gone yet
    // (the kernel releases it asynchronously; back-to-back runs on one
    // veth, as the ceiling does, sometimes get EBUSY): a sink that exits
    // before it is ready gets one more try after a second.
    let mut attempt = 0;
    let mut sink = loop {
        attempt += 1;
        let mut sink = netns_cmd(&a.sink_ns, tools.gen_core, &tools.pktgen)
            .args(["sink", "--iface", &a.sink_iface])
            .args([
                "--duration",
                &format!("{sink_dur}"),
                "--idle-exit-ms",
                "1000",
            ])
            .args(["--expect-flows", &p.flows.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--json")
            .arg(&sink_json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&sink_log)?)
            .spawn()
            .context("starting the sink")?;
        let t0 = Instant::now();
        let mut exited = None;
        while !ready.exists() {
            if let Some(st) = sink.try_wait()? {
                exited = Some(st);
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = wait_bounded(&mut sink, Duration::ZERO);
                bail!("sink not ready after 10 s; log {}", sink_log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match exited {
            None => break sink,
            Some(st) if attempt >= 2 => bail!(
                "sink exited before it was ready ({st}), twice; log {}",
                sink_log.display()
            ),
            Some(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    let mut gen = netns_cmd(&a.gen_ns, tools.gen_core, &tools.pktgen);
    gen.args(["gen", "--iface", &a.gen_iface])
        .args(["--src-mac", &a.src_mac, "--dst-mac", &a.dst_mac])
        .args(["--src-ip", &a.src_ip, "--dst-ip", &a.dst_ip])
        .args(["--dst-port", &a.dst_port.to_string()])
        .args([
            "--size",
            &p.size.to_string(),
            "--flows",
            &p.flows.to_string(),
        ])
        .args(["--duration", &format!("{}", p.duration_s)]);
    if let Some(r) = p.rate {
        gen.args(["--rate", &r.to_string()]);
    }
    let mut gen = gen
        .arg("--json")
        .arg(&gen_json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&gen_log)?)
        .spawn()
        .context("starting the generator")?;
    let gen_st = wait_bounded(&mut gen, Duration::from_secs_f64(p.duration_s + 15.0));
    let sink_st = wait_bounded(&mut sink, Duration::from_secs_f64(sink_dur + 10.0));
    let gen_st = gen_st?;
    if !gen_st.success() {
        bail!("generator failed ({gen_st}); log {}", gen_log.display());
    }
    let sink_st = sink_st?;
    if !sink_st.success() {
        bail!("sink failed ({sink_st}); log {}", sink_log.display());
    }
    let g: GenResult = serde_json::from_slice(&std::fs::read(&gen_json)?).context("gen JSON")?;
    let s: SinkResult = serde_json::from_slice(&std::fs::read(&sink_json)?).context("sink JSON")?;
    // Keep the JSON results; the logs only matter when something failed.
    for f in [&ready, &sink_log, &gen_log] {
        let _ = std::fs::remove_file(f);
    }
    Ok((g, s))
}

/// One frame captured with tcpdump (`-c 1`, bounded by `timeout`), started
/// by PID inside a namespace: how the outer headers look on the underlay.
pub struct Capture {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Capture {
    /// `tcpdump -i iface -c 1 -nn -e -v FILTER` in `ns`, for at most
    /// `limit_s` seconds; returns once tcpdump listens (or after 3 s).
    pub fn start(
        ns: &str,
        iface: &str,
        filter: &str,
        limit_s: u64,
        work: &Path,
        tag: &str,
    ) -> anyhow::Result<Capture> {
        let out = work.join(format!("{tag}.tcpdump.txt"));
        let err = work.join(format!("{tag}.tcpdump.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", &limit_s.to_string()])
            .args(["tcpdump", "-i", iface, "-c", "1", "-nn", "-e", "-v", "-l"])
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting tcpdump")?;
        let mut c = Capture { child, out, err };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let log = std::fs::read_to_string(&c.err).unwrap_or_default();
            if log.contains("listening on") || c.child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    /// Waits for tcpdump (bounded) and returns the frame it printed, one
    /// line, or why there is none. Removes its files.
    pub fn finish(mut self, limit: Duration) -> String {
        let st = wait_bounded(&mut self.child, limit);
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let log = std::fs::read_to_string(&self.err).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
        let frame = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if frame.is_empty() {
            format!(
                "nothing captured ({}): {}",
                match st {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("{e:#}"),
                },
                log.lines().last().unwrap_or("")
            )
        } else {
            frame
        }
    }
}
