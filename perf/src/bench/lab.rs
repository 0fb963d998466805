//! Bringing the namespace lab up and down through `scripts/lab.sh`, and
//! what the harness needs to know about it (from the plan files lab.sh
//! writes to its run directory).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;

/// A pod of the lab plan (`pods.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Plan {
    pub node: String,
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub ifname: String,
}

/// A node of the lab plan (`nodes.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub underlay_ip: String,
}

#[derive(Debug)]
pub struct Lab {
    pub root: PathBuf,
    pub prefix: String,
    pub run_dir: PathBuf,
    /// Every node served by the kernel (flannel-style baseline).
    pub kernel: bool,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<Plan>,
    pub log: PathBuf,
}

/// Runs a command; error with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// MAC address of `ifname` in namespace `ns`.
pub fn link_mac(ns: &str, ifname: &str) -> anyhow::Result<String> {
    let out = sh("ip", &["-n", ns, "-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no MAC for {ifname} in {ns}"))
}

impl Lab {
    /// `lab.sh up` with `prefix`; the kernel baseline when `kernel`.
    /// kxdp's dataplanes are pinned with `KXDP_LAB_CORES=cores`.
    pub fn up(
        root: &Path,
        prefix: &str,
        kernel: bool,
        cores: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Lab> {
        let log = log_dir.join(format!("lab-{prefix}.log"));
        let run_dir = PathBuf::from(format!("/run/kxdp/{prefix}"));
        let mut cmd = Command::new(root.join("scripts/lab.sh"));
        cmd.arg("up")
            .env("KXDP_LAB_PREFIX", prefix)
            .env("KXDP_NO_BUILD", "1")
            .env("KXDP_LAB_CORES", cores)
            .env("KXDP_RUN_DIR", &run_dir)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?);
        if kernel {
            cmd.env("KXDP_KERNEL_NODES", "n1 n2");
        } else {
            cmd.env_remove("KXDP_KERNEL_NODES");
        }
        let st = cmd.status().context("running scripts/lab.sh up")?;
        let mut lab = Lab {
            root: root.to_path_buf(),
            prefix: prefix.to_string(),
            run_dir: run_dir.clone(),
            kernel,
            nodes: Vec::new(),
            pods: Vec::new(),
            log: log.clone(),
        };
        if !st.success() {
            lab.down();
            bail!("lab.sh up ({prefix}) failed: see {}", log.display());
        }
        let read = |f: &str| -> anyhow::Result<String> {
            std::fs::read_to_string(run_dir.join(f))
                .with_context(|| format!("reading {}/{f}", run_dir.display()))
        };
        lab.nodes = serde_json::from_str(&read("nodes.json")?).context("nodes.json")?;
        lab.pods = serde_json::from_str(&read("pods.json")?).context("pods.json")?;
        Ok(lab)
    }

    /// `lab.sh down`: stops exactly what `up` started.
    pub fn down(&self) {
        let _ = Command::new(self.root.join("scripts/lab.sh"))
            .arg("down")
            .env("KXDP_LAB_PREFIX", &self.prefix)
            .env("KXDP_RUN_DIR", &self.run_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    pub fn pod(&self, node: &str, name: &str) -> anyhow::Result<&Plan> {
        self.pods
            .iter()
            .find(|p| p.node == node && p.name == name)
            .with_context(|| format!("the lab has no pod {node}/{name}"))
    }

    pub fn pod_ns(&self, p: &Plan) -> String {
        format!("{}-{}-{}", self.prefix, p.node, p.name)
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The MAC a pod's gateway answers with: kxdp proxy-ARPs with the
    /// node end of the pod's veth; a kernel node's gateway is cni0.
    pub fn gateway_mac(&self, p: &Plan) -> anyhow::Result<String> {
        let ns = self.node_ns(&p.node);
        if self.kernel {
            link_mac(&ns, "cni0")
        } else {
            link_mac(&ns, &p.ifname)
        }
    }

    /// Kernel nodes: a permanent neighbour entry for the sink's pod. The
    /// sink's XDP program takes every frame, ARP replies included, so the
    /// node could not resolve the pod otherwise. (kxdp knows pod MACs
    /// from its configuration.)
    pub fn pin_neighbour(&self, p: &Plan) -> anyhow::Result<()> {
        if self.kernel {
            let ns = self.node_ns(&p.node);
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &p.ip,
                    "lladdr",
                    &p.mac,
                    "dev",
                    "cni0",
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(())
    }

    /// Kernel baseline: steers receive processing of every interface of
    /// the lab's node and switch namespaces to `core` with RPS, so the
    /// kernel's forwarding runs there and not on the generator's core.
    /// Returns the interfaces set.
    pub fn steer_rps(&self, core: usize) -> anyhow::Result<Vec<String>> {
        let mask = format!("{:x}", 1u64 << core);
        let mut set = Vec::new();
        let mut namespaces: Vec<String> =
            self.nodes.iter().map(|n| self.node_ns(&n.name)).collect();
        namespaces.push(format!("{}-sw", self.prefix));
        for ns in namespaces {
            let script = format!(
                "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > \"$q\" && echo \"$q\"; done"
            );
            let out = sh("ip", &["netns", "exec", &ns, "sh", "-c", &script])?;
            for line in out.lines() {
                let dev = line.split('/').nth(4).unwrap_or(line);
                set.push(format!("{ns}/{dev}"));
            }
        }
        Ok(set)
    }
}
