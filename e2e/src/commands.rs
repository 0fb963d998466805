//! Running commands (bounded by `timeout`), inside namespaces too, and child processes killed on drop.

use super::*;

/// Runs `program args` under `timeout` (SIGTERM after `secs`, SIGKILL 2 s later).
pub fn run_timeout(secs: u64, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("-k")
        .arg("2")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `ip netns exec NS timeout -k 2 SECS PROGRAM`: a command in namespace
/// `ns`, killed after `secs` seconds; add its arguments.
pub fn ns_command(ns: &str, secs: u64, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "timeout",
        "-k",
        "2",
        &secs.to_string(),
        program,
    ]);
    c
}

/// Runs `program args` in namespace `ns` under `timeout`.
pub fn ns_exec(ns: &str, secs: u64, program: &str, args: &[&str]) -> Output {
    ns_command(ns, secs, program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {ns}: {e}"))
}

/// Panics with the command's output unless it succeeded; returns stdout.
pub fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread that has entered network namespace `ns` (by name,
/// /var/run/netns/NAME) and returns its result. Sockets `f` creates live in
/// `ns` and may be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// True while process `pid` exists and is not a zombie (an exited process
/// stays in /proc until its new parent reaps it).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A child process stopped (by its PID) and reaped when dropped. Children
/// here run under `timeout`, which passes SIGTERM on to the command it runs,
/// so the guard sends SIGTERM first and SIGKILL only if that did not work.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits up to `limit` for the child to exit on its own; stops it after.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 2 s to exit, then SIGKILL; reaps the child.
    pub fn stop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
        let _ = self.0.wait();
    }
}
