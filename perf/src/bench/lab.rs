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
    #[serde(default = "default_uplink")]
    pub uplink: String,
}

fn default_uplink() -> String {
    "eth0".into()
}

/// The cluster file both labs are built from: the two-node lab plus the
/// service of the service scenarios (`bench/svc`).
pub const CLUSTER_FILE: &str = "config/bench-services.yaml";

/// The kernel baseline's kube-proxy (nftables mode) rule set for that
/// service, loaded into the kernel nodes for the service scenarios.
pub const KUBE_PROXY_NFT: &str = "perf/kernel/kube-proxy.nft";

/// Host part of the outside client on the underlay /24 (lab.sh `EXT_HOST`).
const EXT_HOST: u8 = 100;
/// Host part of the router to the outside world on the underlay /24
/// (lab.sh `RT_HOST`): every node's default route.
const RT_HOST: u8 = 254;
/// The outside world's server behind the router (lab.sh `WWW_NET.WWW_HOST`).
pub const WWW_IP: &str = "203.0.113.10";

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
    /// Where kxdp-dataplane, kxdp-control and kxdpctl are (`KXDP_BIN_DIR`).
    pub bin_dir: PathBuf,
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
    /// kxdp's dataplanes are pinned with `KXDP_LAB_CORES=cores`; the
    /// binaries come from `bin_dir` (`KXDP_BIN_DIR`).
    /// `env`: more of lab.sh's variables (e.g. `KXDP_LAB_QUEUES`).
    pub fn up(
        root: &Path,
        prefix: &str,
        kernel: bool,
        cores: &str,
        log_dir: &Path,
        bin_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Lab> {
        let log = log_dir.join(format!("lab-{prefix}.log"));
        let run_dir = PathBuf::from(format!("/run/kxdp/{prefix}"));
        let mut cmd = Command::new(root.join("scripts/lab.sh"));
        cmd.arg("up")
            .env("KXDP_LAB_PREFIX", prefix)
            .env("KXDP_NO_BUILD", "1")
            .env("KXDP_BIN_DIR", bin_dir)
            .env("KXDP_LAB_CORES", cores)
            .env("KXDP_RUN_DIR", &run_dir)
            .env("KXDP_CLUSTER", root.join(CLUSTER_FILE))
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .envs(env.iter().copied());
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
            bin_dir: bin_dir.to_path_buf(),
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

    pub fn node(&self, name: &str) -> anyhow::Result<&NodePlan> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the lab has no node {name}"))
    }

    /// The switch namespace (lab.sh: `P-sw`, bridge br0, one port per node
    /// named after it, plus `ext`).
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// `node`'s neighbour entry for underlay address `ip` on its uplink:
    /// (lladdr, states), None if there is no entry.
    pub fn uplink_neighbour(
        &self,
        node: &str,
        ip: &str,
    ) -> anyhow::Result<Option<(Option<String>, Vec<String>)>> {
        let n = self.node(node)?;
        let out = sh(
            "ip",
            &[
                "-n",
                &self.node_ns(node),
                "-j",
                "neigh",
                "show",
                "to",
                ip,
                "dev",
                &n.uplink,
            ],
        )?;
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
                .context("ip -j neigh")?;
        Ok(v.as_array().and_then(|a| a.first()).map(|e| {
            let mac = e["lladdr"].as_str().map(str::to_string);
            let states = e["state"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (mac, states)
        }))
    }

    /// Makes `node`'s kernel resolve underlay address `ip` (one UDP
    /// datagram to the discard port from the node's namespace) and waits up
    /// to 3 s for the neighbour entry to hold a MAC.
    pub fn resolve_uplink_neighbour(&self, node: &str, ip: &str) -> anyhow::Result<()> {
        let ns = self.node_ns(node);
        let send = format!("echo kxdp-bench >/dev/udp/{ip}/9");
        sh("ip", &["netns", "exec", &ns, "bash", "-c", &send])?;
        for _ in 0..30 {
            if let Some((Some(_), _)) = self.uplink_neighbour(node, ip)? {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("{ns}: {ip} not resolved within 3 s")
    }

    /// Makes `node`'s resolved neighbour entry for underlay address `ip`
    /// (its next hop: another node, the router) permanent (same MAC). A
    /// sink on the switch port takes the node's ARP probes too, so a
    /// dynamic entry would go stale and then fail during the runs. Fails
    /// if the entry is not resolved. Returns what it did.
    pub fn pin_uplink_neighbour(&self, node: &str, ip: &str) -> anyhow::Result<String> {
        let n = self.node(node)?;
        let (mac, states) = match self.uplink_neighbour(node, ip)? {
            Some((Some(mac), states)) => (mac, states),
            Some((None, states)) => bail!(
                "{node}: neighbour {ip} on {} not resolved ({})",
                n.uplink,
                states.join(",")
            ),
            None => bail!("{node}: no neighbour entry for {ip} on {}", n.uplink),
        };
        sh(
            "ip",
            &[
                "-n",
                &self.node_ns(node),
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac,
                "dev",
                &n.uplink,
                "nud",
                "permanent",
            ],
        )?;
        Ok(format!(
            "{}: {ip} lladdr {mac} dev {} was {}, now permanent",
            self.node_ns(node),
            n.uplink,
            states.join(",")
        ))
    }

    /// The outside client's namespace (lab.sh: `P-ext`, eth0).
    pub fn ext_ns(&self) -> String {
        format!("{}-ext", self.prefix)
    }

    /// The outside client's address: .100 of the underlay /24.
    pub fn ext_ip(&self) -> anyhow::Result<String> {
        let first = self.nodes.first().context("the lab has no nodes")?;
        let ip: std::net::Ipv4Addr = first
            .underlay_ip
            .parse()
            .with_context(|| format!("underlay IP {}", first.underlay_ip))?;
        let [a, b, c, _] = ip.octets();
        Ok(std::net::Ipv4Addr::new(a, b, c, EXT_HOST).to_string())
    }

    /// The router to the outside world (lab.sh: `P-rt`, eth0 on the
    /// switch, eth1 towards `P-www`).
    pub fn router_ns(&self) -> String {
        format!("{}-rt", self.prefix)
    }

    /// The router's underlay address: .254 of the underlay /24.
    pub fn router_ip(&self) -> anyhow::Result<String> {
        let ext: std::net::Ipv4Addr = self.ext_ip()?.parse()?;
        let [a, b, c, _] = ext.octets();
        Ok(std::net::Ipv4Addr::new(a, b, c, RT_HOST).to_string())
    }

    /// The outside world's namespace (lab.sh: `P-www`, eth0 [`WWW_IP`]).
    pub fn www_ns(&self) -> String {
        format!("{}-www", self.prefix)
    }

    /// A permanent neighbour entry on the router for the outside world's
    /// server: a sink on its eth0 takes every frame, ARP included, so the
    /// router could not resolve it otherwise.
    pub fn pin_world_neighbour(&self) -> anyhow::Result<()> {
        let mac = link_mac(&self.www_ns(), "eth0")?;
        sh(
            "ip",
            &[
                "-n",
                &self.router_ns(),
                "neigh",
                "replace",
                WWW_IP,
                "lladdr",
                &mac,
                "dev",
                "eth1",
                "nud",
                "permanent",
            ],
        )?;
        Ok(())
    }

    /// MAC of a node's uplink (what an outside client sends to).
    pub fn uplink_mac(&self, node: &str) -> anyhow::Result<String> {
        let n = self.node(node)?;
        link_mac(&self.node_ns(node), &n.uplink)
    }

    /// Kernel lab: loads kube-proxy's (nftables mode) rule set,
    /// [`KUBE_PROXY_NFT`], into every node's namespace, with the node's
    /// underlay address as its NodePort address. Returns what it ran.
    pub fn load_kube_proxy(&self) -> anyhow::Result<Vec<String>> {
        let file = self.root.join(KUBE_PROXY_NFT);
        let file = file.to_string_lossy();
        let mut done = Vec::new();
        for n in &self.nodes {
            let ns = self.node_ns(&n.name);
            let define = format!("NODE_IP={}", n.underlay_ip);
            // A table left by an interrupted run would make `nft -f` add to it.
            let _ = sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "nft",
                    "delete",
                    "table",
                    "ip",
                    "kube-proxy",
                ],
            );
            sh(
                "ip",
                &["netns", "exec", &ns, "nft", "-D", &define, "-f", &file],
            )?;
            done.push(format!(
                "ip netns exec {ns} nft -D {define} -f {KUBE_PROXY_NFT}"
            ));
        }
        Ok(done)
    }

    /// Removes what [`Lab::load_kube_proxy`] loaded (and with it the
    /// netfilter hooks, so later scenarios run without conntrack).
    pub fn unload_kube_proxy(&self) {
        for n in &self.nodes {
            let ns = self.node_ns(&n.name);
            let _ = sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "nft",
                    "delete",
                    "table",
                    "ip",
                    "kube-proxy",
                ],
            );
        }
    }

    /// Live conntrack entries on `node` of flows from `src_ip` to
    /// `dst_ip:dst_port` (original direction): kxdp's table through
    /// kxdpctl, the kernel's from the node's `/proc/net/nf_conntrack`.
    pub fn conntrack_entries(
        &self,
        node: &str,
        src_ip: &str,
        dst_ip: &str,
        dst_port: u16,
    ) -> anyhow::Result<u64> {
        if self.kernel {
            let out = sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.node_ns(node),
                    "cat",
                    "/proc/net/nf_conntrack",
                ],
            )?;
            Ok(count_nf_conntrack(&out, src_ip, dst_ip, dst_port))
        } else {
            let out = self.ctl(&["conntrack", "--node", node, "--json", "--limit", "1000000"])?;
            count_kxdp_conntrack(&out, src_ip, dst_ip, dst_port)
        }
    }

    /// `kxdpctl --control <lab's control socket> args...` (kxdp lab).
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let ctl = self.bin_dir.join("kxdpctl");
        let sock = self.run_dir.join("control.sock");
        let mut all = vec!["--control".to_string(), sock.to_string_lossy().into_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        sh(&ctl.to_string_lossy(), &refs)
    }

    /// The cluster file kxdp-control was started with (lab.sh writes its
    /// path to `<run dir>/cluster-file`).
    pub fn cluster_file(&self) -> anyhow::Result<PathBuf> {
        let f = self.run_dir.join("cluster-file");
        let p = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        Ok(PathBuf::from(p.trim()))
    }

    /// Resident memory of a node's kxdp-dataplane (KiB), from its PID file.
    pub fn dataplane_rss_kib(&self, node: &str) -> anyhow::Result<u64> {
        let f = self.run_dir.join(format!("{node}.pid"));
        let pid =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }

    /// `ethtool -K <if> <features...>` inside `ns`, then the offload
    /// features as the kernel now reports them (`ethtool -k`), one line:
    /// `tx-checksumming on, tcp-segmentation-offload off, ...`.
    pub fn set_offloads(
        &self,
        ns: &str,
        ifname: &str,
        features: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec!["netns", "exec", ns, "ethtool", "-K", ifname];
        args.extend_from_slice(features);
        // ethtool exits non-zero when one feature cannot change (TSO
        // without TX checksumming): what counts is the state afterwards.
        let set = sh("ip", &args).err().map(|e| format!("{e:#}"));
        let out = sh("ip", &["netns", "exec", ns, "ethtool", "-k", ifname])?;
        let mut state = offload_state(&out);
        if let Some(e) = set {
            let first = e
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            state.push_str(&format!(" (ethtool -K: {first})"));
        }
        Ok(state)
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

    /// Steers receive processing to `core` with RPS: of every interface of
    /// the lab's node namespaces when `nodes`, and of every interface of its
    /// switch namespace when `switch`. The kernel baseline steers its nodes,
    /// so the kernel's forwarding runs there and not on the generator's
    /// core; the switch (the underlay) is steered only on request
    /// (`--switch-rps fwd`), in both labs alike. Returns the interfaces set,
    /// as `namespace/device`.
    pub fn steer_rps(&self, core: usize, nodes: bool, switch: bool) -> anyhow::Result<Vec<String>> {
        let mask = format!("{:x}", 1u64 << core);
        let mut set = Vec::new();
        let mut namespaces: Vec<String> = if nodes {
            self.nodes.iter().map(|n| self.node_ns(&n.name)).collect()
        } else {
            Vec::new()
        };
        if switch {
            namespaces.push(self.switch_ns());
        }
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

/// The offload features tcp-svc is about, from `ethtool -k` output.
pub fn offload_state(ethtool_k: &str) -> String {
    const KEYS: &[&str] = &[
        "tx-checksumming",
        "scatter-gather",
        "tcp-segmentation-offload",
        "generic-segmentation-offload",
        "generic-receive-offload",
    ];
    KEYS.iter()
        .filter_map(|k| {
            ethtool_k
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{k}:")))
                .map(|l| l.trim().to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kernel conntrack entries (`/proc/net/nf_conntrack`) whose original
/// direction is `src_ip` -> `dst_ip:dst_port`.
pub fn count_nf_conntrack(table: &str, src_ip: &str, dst_ip: &str, dst_port: u16) -> u64 {
    let head = format!("src={src_ip} dst={dst_ip} ");
    let port = format!("dport={dst_port}");
    table
        .lines()
        .filter(|l| {
            // The original tuple is the first src=/dst=/sport=/dport=.
            let Some(at) = l.find("src=") else {
                return false;
            };
            let orig = &l[at..];
            orig.starts_with(&head)
                && orig
                    .split_whitespace()
                    .find(|w| w.starts_with("dport="))
                    .is_some_and(|w| w == port)
        })
        .count() as u64
}

/// kxdp conntrack entries (`kxdpctl conntrack --json`) from client
/// address `src_ip` to service `dst_ip:dst_port`.
pub fn count_kxdp_conntrack(
    json: &str,
    src_ip: &str,
    dst_ip: &str,
    dst_port: u16,
) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json).context("kxdpctl conntrack --json")?;
    let service = format!("{dst_ip}:{dst_port}");
    let client = format!("{src_ip}:");
    let entries = v["entries"]
        .as_array()
        .context("kxdpctl conntrack --json: no entries")?;
    Ok(entries
        .iter()
        .filter(|e| {
            e["service"].as_str() == Some(service.as_str())
                && e["client"].as_str().is_some_and(|c| c.starts_with(&client))
        })
        .count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_state_keeps_the_features_that_matter() {
        let k = "Features for eth0:\nrx-checksumming: on\ntx-checksumming: off\n\ttx-checksum-ip-generic: off\nscatter-gather: on\ntcp-segmentation-offload: off\n\ttx-tcp-segmentation: off [requested on]\ngeneric-segmentation-offload: on\ngeneric-receive-offload: on\n";
        assert_eq!(
            offload_state(k),
            "tx-checksumming: off, scatter-gather: on, tcp-segmentation-offload: off, \
             generic-segmentation-offload: on, generic-receive-offload: on"
        );
    }

    #[test]
    fn counts_kernel_conntrack_entries_by_original_tuple() {
        let t = "\
ipv4     2 udp      17 28 src=10.244.1.2 dst=10.96.0.20 sport=10000 dport=5201 [UNREPLIED] src=10.244.2.2 dst=10.244.1.2 sport=5201 dport=10000 mark=0 zone=0 use=2
ipv4     2 udp      17 28 src=10.244.1.2 dst=10.96.0.20 sport=10001 dport=5201 [UNREPLIED] src=10.244.2.2 dst=10.244.1.2 sport=5201 dport=10001 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=172.30.0.100 dst=172.30.0.11 sport=10000 dport=30520 [UNREPLIED] src=10.244.2.2 dst=10.244.1.0 sport=5201 dport=47113 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=10.244.1.2 dst=10.96.0.20 sport=10002 dport=52010 [UNREPLIED] src=10.244.2.2 dst=10.244.1.2 sport=5201 dport=5201 mark=0 zone=0 use=2
";
        assert_eq!(count_nf_conntrack(t, "10.244.1.2", "10.96.0.20", 5201), 2);
        assert_eq!(
            count_nf_conntrack(t, "172.30.0.100", "172.30.0.11", 30520),
            1
        );
        assert_eq!(count_nf_conntrack(t, "10.244.1.2", "10.96.0.2", 5201), 0);
        assert_eq!(count_nf_conntrack("", "10.244.1.2", "10.96.0.20", 5201), 0);
    }

    #[test]
    fn counts_kxdp_conntrack_entries_by_client_and_service() {
        let j = r#"{"node":"n1","total":3,"entries":[
            {"protocol":"UDP","client":"10.244.1.2:10000","service":"10.96.0.20:5201","backend":"10.244.2.2:5201","snat":""},
            {"protocol":"UDP","client":"10.244.1.2:10001","service":"10.96.0.20:5201","backend":"10.244.2.2:5201","snat":""},
            {"protocol":"UDP","client":"172.30.0.100:10000","service":"172.30.0.11:30520","backend":"10.244.2.2:5201","snat":"10.244.1.1:61000"}]}"#;
        assert_eq!(
            count_kxdp_conntrack(j, "10.244.1.2", "10.96.0.20", 5201).unwrap(),
            2
        );
        assert_eq!(
            count_kxdp_conntrack(j, "172.30.0.100", "172.30.0.11", 30520).unwrap(),
            1
        );
        assert_eq!(
            count_kxdp_conntrack(j, "10.244.1.22", "10.96.0.20", 5201).unwrap(),
            0
        );
        assert!(count_kxdp_conntrack("nope", "a", "b", 1).is_err());
    }
}
