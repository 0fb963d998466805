//! The lab guard: `lab.sh up` with a unique prefix, its plan, kxdpctl, and `lab.sh down` on drop.

use super::*;

/// How to bring a lab up.
#[derive(Clone, Debug, Default)]
pub struct LabOpts {
    /// Nodes served by the Linux kernel, flannel-style (`KXDP_KERNEL_NODES`).
    pub kernel_nodes: Vec<String>,
    /// Cluster file; default config/lab-cluster.yaml.
    pub cluster: Option<PathBuf>,
    /// `KXDP_XDP_MODE`; default: the dataplane's.
    pub xdp_mode: Option<String>,
    /// `KXDP_LAB_QUEUES`: queues per veth and workers per dataplane
    /// (default 1).
    pub queues: Option<u32>,
    /// More of lab.sh's environment, e.g. `KXDP_LOG_FORMAT=json` (the
    /// daemons inherit it) or `KXDP_DATAPLANE_USER`.
    pub env: Vec<(String, String)>,
}

impl LabOpts {
    /// Default topology with these nodes served by the kernel.
    pub fn kernel(nodes: &[&str]) -> LabOpts {
        LabOpts {
            kernel_nodes: nodes.iter().map(|s| s.to_string()).collect(),
            ..LabOpts::default()
        }
    }
}

/// A node of the lab's plan (`kxdpctl plan-nodes`).
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    /// "kxdp" or "kernel".
    pub dataplane: String,
    pub mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
}

/// A pod of the lab's plan (`kxdpctl plan-pods`).
#[derive(Clone, Debug)]
pub struct PodPlan {
    pub node: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub ifname: String,
    pub mtu: u32,
}

/// A running lab; `lab.sh down` when dropped.
pub struct Lab {
    pub prefix: String,
    pub run_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    opts: LabOpts,
}

impl Lab {
    /// Brings up a lab with a fresh prefix; panics (after tearing down) if
    /// `lab.sh up` fails.
    pub fn up(opts: LabOpts) -> Lab {
        let prefix = unique_name("kt");
        let mut lab = Lab {
            run_dir: PathBuf::from(format!("/run/kxdp/{prefix}")),
            prefix,
            bin_dir: bin_dir(),
            nodes: Vec::new(),
            pods: Vec::new(),
            opts,
        };
        let started = Instant::now();
        let out = lab.lab_sh(&["up"], 180);
        if !out.status.success() {
            panic!(
                "lab.sh up failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab.nodes = read_json(&lab.run_dir.join("nodes.json"))
            .as_array()
            .expect("nodes.json is an array")
            .iter()
            .map(node_plan)
            .collect();
        lab.pods = read_json(&lab.run_dir.join("pods.json"))
            .as_array()
            .expect("pods.json is an array")
            .iter()
            .map(pod_plan)
            .collect();
        eprintln!(
            "lab {} up in {:.1}s ({} nodes, {} pods{})",
            lab.prefix,
            started.elapsed().as_secs_f64(),
            lab.nodes.len(),
            lab.pods.len(),
            if lab.opts.kernel_nodes.is_empty() {
                String::new()
            } else {
                format!(", kernel nodes {:?}", lab.opts.kernel_nodes)
            }
        );
        lab
    }

    /// `lab.sh restart-control --kill`: SIGKILL kxdp-control, start it
    /// again (with its state file), wait until every node is synced.
    pub fn kill_and_restart_control(&self) {
        let out = self.lab_sh(&["restart-control", "--kill"], 120);
        assert!(
            out.status.success(),
            "lab.sh restart-control: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `scripts/lab.sh ARGS` for this lab, bounded by `secs`.
    pub fn lab_sh(&self, args: &[&str], secs: u64) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("-k")
            .arg("5")
            .arg(secs.to_string())
            .arg(repo_root().join("scripts/lab.sh"))
            .args(args)
            .env("KXDP_LAB_PREFIX", &self.prefix)
            .env("KXDP_RUN_DIR", &self.run_dir)
            .env("KXDP_BIN_DIR", &self.bin_dir)
            .env("KXDP_NO_BUILD", "1")
            .env("KXDP_KERNEL_NODES", self.opts.kernel_nodes.join(" "))
            .stdin(Stdio::null());
        if let Some(c) = &self.opts.cluster {
            cmd.env("KXDP_CLUSTER", c);
        }
        if let Some(m) = &self.opts.xdp_mode {
            cmd.env("KXDP_XDP_MODE", m);
        }
        if let Some(q) = self.opts.queues {
            cmd.env("KXDP_LAB_QUEUES", q.to_string());
        }
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("cannot run scripts/lab.sh")
    }

    /// The namespace of `what` ("n1", "n1-p1", "sw", "ext"): `<prefix>-<what>`.
    pub fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    pub fn node(&self, name: &str) -> &NodePlan {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// A pod by "node-pod", e.g. "n1-p1".
    pub fn pod(&self, id: &str) -> &PodPlan {
        self.pods
            .iter()
            .find(|p| format!("{}-{}", p.node, p.name) == id)
            .unwrap_or_else(|| panic!("no pod {id} in the lab"))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    /// Runs `kxdpctl --control SOCK ARGS` (bounded), returning its output.
    pub fn kxdpctl_raw(&self, args: &[&str]) -> Output {
        let sock = self.control_socket();
        let mut full = vec!["--control", sock.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        run_timeout(20, self.bin_dir.join("kxdpctl").to_str().unwrap(), &full)
    }

    /// Runs `kxdpctl --control SOCK ARGS` (pass `--json`) and parses its output.
    pub fn kxdpctl(&self, args: &[&str]) -> Value {
        let out = check(
            &format!("kxdpctl {}", args.join(" ")),
            self.kxdpctl_raw(args),
        );
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kxdpctl {}: not JSON ({e}):\n{out}", args.join(" ")))
    }

    /// `kxdpctl counters --node NODE --json`.
    pub fn counters(&self, node: &str) -> Counters {
        Counters(self.kxdpctl(&["counters", "--node", node, "--json"]))
    }

    /// `kxdpctl nodes --json`, as a list.
    pub fn node_infos(&self) -> Vec<Value> {
        list(self.kxdpctl(&["nodes", "--json"]), "nodes")
    }

    /// `kxdpctl pods --json`, as a list.
    pub fn pod_infos(&self) -> Vec<Value> {
        list(self.kxdpctl(&["pods", "--json"]), "pods")
    }

    /// NODE's entry in `kxdpctl nodes --json`.
    pub fn node_info(&self, node: &str) -> Value {
        self.node_infos()
            .into_iter()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("kxdpctl nodes: no node {node}"))
    }

    /// The PID of NODE's dataplane, from RUN_DIR/NODE.pid.
    pub fn dataplane_pid(&self, node: &str) -> u32 {
        let path = self.run_dir.join(format!("{node}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid file holds a number")
    }

    /// True while NODE's dataplane process runs.
    pub fn dataplane_alive(&self, node: &str) -> bool {
        pid_alive(self.dataplane_pid(node))
    }

    /// The cluster file the lab runs from (the generated copy when some nodes
    /// are kernel nodes).
    pub fn cluster_file(&self) -> PathBuf {
        let f = std::fs::read_to_string(self.run_dir.join("cluster-file")).expect("cluster-file");
        PathBuf::from(f.trim())
    }

    /// The tail of every log in the run directory.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(dir) = std::fs::read_dir(&self.run_dir) else {
            return out;
        };
        let mut logs: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- {} (last {} lines)\n", log.display(), tail.len());
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Creates a pod's namespace and veth the way lab.sh does (for a pod about
    /// to be added with `kxdpctl apply`); the namespace goes with the guard.
    pub fn add_pod_netns(&self, node: &str, name: &str, ip: Ipv4Addr) -> NetNs {
        let n = self.node(node);
        let prefix_len: u8 = n.pod_cidr.rsplit_once('/').unwrap().1.parse().unwrap();
        let ns = NetNs::new(&self.ns(&format!("{node}-{name}")));
        let (mac, ifname) = pod_mac_ifname(ip);
        let node_ns = self.ns(node);
        let mtu = n.mtu.to_string();
        kxdp_testkit::ip(&kxdp_testkit::veth_add_args(
            &node_ns,
            &ifname,
            ns.name(),
            "eth0",
        ));
        kxdp_testkit::ip(&["-n", &node_ns, "link", "set", &ifname, "mtu", &mtu, "up"]);
        check(
            "ethtool",
            ns_exec(&node_ns, 10, "ethtool", &["-K", &ifname, "tx", "off"]),
        );
        ns.ip(&["link", "set", "eth0", "address", &mac, "mtu", &mtu, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/{prefix_len}"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &n.gateway.to_string(),
            "dev",
            "eth0",
        ]);
        check(
            "ethtool",
            ns.exec(
                "ethtool",
                &["-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
            ),
        );
        ns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("lab {} logs:\n{}", self.prefix, self.log_tails(40));
            if std::env::var_os("KXDP_E2E_KEEP").is_some_and(|v| v == "1") {
                eprintln!(
                    "KXDP_E2E_KEEP=1: lab {} left up; remove it with: KXDP_LAB_PREFIX={} scripts/lab.sh down",
                    self.prefix, self.prefix
                );
                return;
            }
        }
        let out = self.lab_sh(&["down"], 60);
        if !out.status.success() {
            eprintln!(
                "lab.sh down for {}: {}\n{}",
                self.prefix,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A list reply, whether printed as an array or as `{"<key>": [...]}`.
pub(crate) fn list(v: Value, key: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove(key) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("plan: no string {key} in {v}"))
}

fn num_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("plan: no number {key} in {v}"))
}

/// Parses "0a:58:0a:f4:01:02".
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC: {s}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC: {s}"));
    }
    mac
}

fn node_plan(v: &Value) -> NodePlan {
    NodePlan {
        name: str_field(v, "name").to_string(),
        underlay_ip: str_field(v, "underlay_ip").parse().expect("underlay_ip"),
        uplink: v["uplink"].as_str().unwrap_or("eth0").to_string(),
        pod_cidr: str_field(v, "pod_cidr").to_string(),
        gateway: str_field(v, "gateway").parse().expect("gateway"),
        vtep_mac: parse_mac(str_field(v, "vtep_mac")),
        dataplane: v["dataplane"].as_str().unwrap_or("kxdp").to_string(),
        mtu: num_field(v, "mtu") as u32,
        vni: num_field(v, "vni") as u32,
        vxlan_port: num_field(v, "vxlan_port") as u16,
    }
}

fn pod_plan(v: &Value) -> PodPlan {
    let name = str_field(v, "name");
    PodPlan {
        node: str_field(v, "node").to_string(),
        name: name.rsplit('/').next().unwrap_or(name).to_string(),
        ip: str_field(v, "ip").parse().expect("ip"),
        prefix_len: num_field(v, "prefix_len") as u8,
        gateway: str_field(v, "gateway").parse().expect("gateway"),
        mac: parse_mac(str_field(v, "mac")),
        ifname: str_field(v, "ifname").to_string(),
        mtu: num_field(v, "mtu") as u32,
    }
}

/// A pod's MAC and node-side veth name by kxdp's conventions (`0a:58:<ip
/// bytes>`, `kx<hex ip>`), as lab.sh and the CNI plugin name them.
pub fn pod_mac_ifname(ip: Ipv4Addr) -> (String, String) {
    let [a, b, c, d] = ip.octets();
    (
        format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
        format!("kx{:08x}", u32::from(ip)),
    )
}
