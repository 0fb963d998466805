//! The AF_XDP I/O ceiling: DPDK testpmd in io-forward mode between two
//! veths (net_af_xdp vdevs), driven by the same generator and sink.
//!
//! ```text
//!  P-tg: g0 ──veth── t0 :P-tp: t1 ──veth── s0 :P-ts
//!  kxdp-pktgen gen      testpmd io fwd       kxdp-pktgen sink
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::lab::{link_mac, sh};
use super::run::wait_bounded;
use super::scenarios::Attach;

pub struct Testpmd {
    prefix: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub core: usize,
    pub command: String,
}

fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> anyhow::Result<()> {
    sh("ip", &kxdp_testkit::veth_add_args(ns_a, a, ns_b, b))?;
    sh("ip", &["-n", ns_a, "link", "set", a, "up"])?;
    sh("ip", &["-n", ns_b, "link", "set", b, "up"])?;
    Ok(())
}

impl Testpmd {
    /// Makes the three namespaces and starts testpmd pinned to `core`.
    pub fn start(prefix: &str, core: usize, log_dir: &Path) -> anyhow::Result<Testpmd> {
        if Command::new("dpdk-testpmd")
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("dpdk-testpmd not found (perf/setup.sh installs dpdk and librte-net-af-xdp23)");
        }
        let mut t = Testpmd {
            prefix: prefix.to_string(),
            child: None,
            log: log_dir.join(format!("testpmd-{prefix}.log")),
            core,
            command: String::new(),
        };
        t.cleanup();
        for n in ["tg", "tp", "ts"] {
            let ns = format!("{prefix}-{n}");
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (tg, tp, ts) = t.names();
        veth(&tg, "g0", &tp, "t0")?;
        veth(&ts, "s0", &tp, "t1")?;
        let pmd = format!(
            "dpdk-testpmd --lcores '0@{core},1@{core}' --no-huge -m 512 --no-pci \
             --vdev net_af_xdp0,iface=t0 --vdev net_af_xdp1,iface=t1 --file-prefix {prefix}tp \
             -- --forward-mode=io --auto-start --stats-period 1 --nb-cores 1 --total-num-mbufs 16384"
        );
        t.command = pmd.clone();
        let script = format!(
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; exec taskset -c {core} {pmd}"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &tp, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&t.log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting dpdk-testpmd")?;
        t.child = Some(child);
        // Ready once both ports are up and forwarding has started.
        let t0 = Instant::now();
        loop {
            let text =
                String::from_utf8_lossy(&std::fs::read(&t.log).unwrap_or_default()).into_owned();
            if text.contains("start packet forwarding") || text.contains("Press enter") {
                break;
            }
            if let Some(c) = t.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("testpmd exited ({st}); log {}", t.log.display());
                }
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("testpmd not forwarding after 20 s; log {}", t.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(t)
    }

    fn names(&self) -> (String, String, String) {
        (
            format!("{}-tg", self.prefix),
            format!("{}-tp", self.prefix),
            format!("{}-ts", self.prefix),
        )
    }

    pub fn attach(&self) -> anyhow::Result<Attach> {
        let (tg, tp, ts) = self.names();
        Ok(Attach {
            gen_ns: tg.clone(),
            gen_iface: "g0".into(),
            src_mac: link_mac(&tg, "g0")?,
            dst_mac: link_mac(&tp, "t0")?,
            src_ip: "10.253.0.1".into(),
            dst_ip: "10.253.0.2".into(),
            dst_port: 5201,
            sink_ns: ts,
            sink_iface: "s0".into(),
            note: "testpmd io forward t0 -> t1, no header work".into(),
        })
    }

    /// Stops testpmd (SIGINT, by PID) and deletes the namespaces.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGINT);
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
        self.cleanup();
    }

    fn cleanup(&self) {
        let (tg, tp, ts) = self.names();
        for ns in [tg, tp, ts] {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}tp", self.prefix));
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGINT);
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
            self.cleanup();
        }
    }
}
