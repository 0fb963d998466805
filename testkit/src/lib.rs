//! Test helpers for kxdp's real-namespace tests.
//!
//! Every namespace a test makes has a name unique to the test run
//! ([`unique_name`]) and is deleted when its guard drops, so a failing or
//! crashed test leaves nothing behind that breaks the next run. Tests only
//! send traffic to addresses inside namespaces they created. [`TempDir`]
//! does the same for files; [`lab`] holds the lab's node n1 as the
//! dataplane API carries it.
#![forbid(unsafe_code)]

pub mod lab;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A short name unique to this process and call: `<tag><6 hex>`.
///
/// Short enough (tag <= 8 chars) that `<name>-xx` still fits the kernel's
/// 15-byte interface name limit.
pub fn unique_name(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = (std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ seq.wrapping_mul(40_503))
        & 0xff_ffff;
    format!("{tag}{mix:06x}")
}

/// True when the tests run as root (namespace tests need it).
/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick),
/// for a test server to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the calling test unless it runs as root: a namespace test that
/// cannot run fails, it does not pass by skipping itself.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, XDP): run it with sudo scripts/test.sh"
    );
}

/// Runs a command, returning its output; panics with stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip <args>`, panicking on failure.
pub fn ip(args: &[&str]) -> Output {
    run("ip", args)
}

/// A network namespace deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with loopback up.
    pub fn new(name: &str) -> NetNs {
        ip(&["netns", "add", name]);
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let kv = format!("{key}={value}");
        let out = self.exec("sysctl", &["-qw", &kv]);
        assert!(out.status.success(), "sysctl {kv} in {}", self.name);
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it
    /// opens live there); returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also removes every interface inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A unique, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `<temp>/kxdp-<tag>-<pid>-<n>`: unique within and across test runs.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kxdp-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A crashed run with the same pid may have left it.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `ip` arguments that create a veth pair `a` (in namespace `ns_a`) <->
/// `b` (in `ns_b`) with one queue each: an AF_XDP socket bound to queue 0
/// then sees all traffic. Every test and lab tool makes its veths so.
pub fn veth_add_args<'a>(ns_a: &'a str, a: &'a str, ns_b: &'a str, b: &'a str) -> [&'a str; 20] {
    [
        "-n",
        ns_a,
        "link",
        "add",
        a,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b,
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
    ]
}

/// Creates a veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`) as
/// [`veth_add_args`] says, and sets both up.
pub fn veth(ns_a: &NetNs, a: &str, ns_b: &NetNs, b: &str) {
    ip(&veth_add_args(ns_a.name(), a, ns_b.name(), b));
    ns_a.ip(&["link", "set", a, "up"]);
    ns_b.ip(&["link", "set", b, "up"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_name("kt");
        let b = unique_name("kt");
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
    }

    #[test]
    fn temp_dirs_are_distinct_and_removed_on_drop() {
        let a = TempDir::new("kt");
        let b = TempDir::new("kt");
        assert_ne!(a.path(), b.path());
        let path = a.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").unwrap();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn namespace_is_removed_on_drop() {
        require_root();
        let name = unique_name("kt");
        {
            let ns = NetNs::new(&name);
            let inside = ns.run(|| std::fs::read_to_string("/proc/self/net/dev").unwrap());
            assert!(inside.contains("lo:"));
        }
        let list = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
        assert!(!list.contains(&name), "{name} still listed");
    }
}
