//! Network policy in kxdp-bench (issue 17, "Perf harness"): a scenario's
//! walk with and without a realistic policy set, both datapaths, in the
//! same run.
//!
//! The set ([`policies`]): namespace `bench` default-denies ingress and
//! egress; `allow-gen-egress` lets the generator's pod (n1/p1, `app: gen`)
//! open UDP 5201 to the sink's pod (n2/p1, `app: sink`) and
//! `allow-sink-ingress` lets the sink's pod take it from there; 200 more
//! policies select every bench pod (`role: bench`) with an ipBlock (with an
//! except) each, ingress and egress, on TCP ports no probe uses, so each
//! pod's tables hold a few hundred prefixes; 100 more live in namespaces
//! `other-*` that have no pods here. kxdp gets it as the bench cluster file
//! plus `namespaces` and `network_policies` (`kxdpctl apply`, waiting until
//! both nodes report the generation applied); the kernel gets what Calico's
//! iptables mode writes for the same policies on each node
//! ([`calico_rules`], from the template [`CALICO_TEMPLATE`], plus the
//! ipsets of [`calico_ipsets`]).
//!
//! Each point alternates: runs without policy (kxdp, kernel), the policy
//! switched on in both labs, runs with it (kxdp, kernel), switched off, and
//! so on (off/on, on/off, ... so that every run but the first and last
//! switch is next to one of the other kind).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use super::lab::{sh, Lab, Plan};
use super::run::{Point, Tools};
use super::scenarios::{Attach, Scenario};
use super::{measure, over, progress, warm_up, BenchConfig, Measurement, PointResult, Report};

/// The namespace of the bench lab's pods (config/bench-services.yaml).
pub const NAMESPACE: &str = "bench";

/// The bench lab's pods and their `app` label (config/bench-services.yaml;
/// every one also has `role: bench`).
pub const POD_APPS: &[(&str, &str, &str)] = &[
    ("n1", "p1", "gen"),
    ("n1", "p2", "idle"),
    ("n2", "p1", "sink"),
    ("n2", "p2", "idle"),
];

/// The allowed flow's protocol and port (the sink's, after DNAT for pod-svc).
pub const ALLOWED_PORT: u16 = 5201;
/// ipBlock policies per direction that select every bench pod.
pub const CIDR_POLICIES: usize = 100;
/// Policies in the `other-*` namespaces (no pods there).
pub const OTHER_POLICIES: usize = 100;
const OTHER_NAMESPACES: usize = 20;

/// kube-proxy.nft's companion: the static part of Calico's filter-table
/// rules, with the harness's generated parts marked `@...@`.
pub const CALICO_TEMPLATE: &str = "perf/kernel/calico-policy.iptables";
const PLACEHOLDERS: &[&str] = &[
    "@CHAIN_DECLS@",
    "@FROM_WL_DISPATCH@",
    "@TO_WL_DISPATCH@",
    "@WORKLOAD_CHAINS@",
    "@POLICY_CHAINS@",
    "@PROFILE@",
];

/// Which pods a policy selects (always in [`NAMESPACE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    All,
    App(&'static str),
    Role(&'static str),
}

impl Select {
    fn matches(self, app: &str) -> bool {
        match self {
            Select::All => true,
            Select::App(a) => a == app,
            Select::Role(r) => r == "bench",
        }
    }

    fn yaml(self) -> String {
        match self {
            Select::All => "{}".into(),
            Select::App(a) => format!("{{ match_labels: {{ app: {a} }} }}"),
            Select::Role(r) => format!("{{ match_labels: {{ role: {r} }} }}"),
        }
    }
}

/// A rule's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods of [`NAMESPACE`] with this `app` label.
    App(&'static str),
    /// An ipBlock with one except.
    Block { cidr: String, except: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub peer: Peer,
    /// "UDP" or "TCP".
    pub protocol: &'static str,
    pub port: u16,
}

/// A policy of [`NAMESPACE`]; `None`: not of that type, `Some([])`: deny all.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub select: Select,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// The bench namespace's policies, sorted by name (the order Calico
/// evaluates policies of equal `order` in, as Kubernetes policies are).
pub fn policies() -> Vec<Policy> {
    let mut v = vec![
        Policy {
            name: "allow-gen-egress".into(),
            select: Select::App("gen"),
            ingress: None,
            egress: Some(vec![Rule {
                peer: Peer::App("sink"),
                protocol: "UDP",
                port: ALLOWED_PORT,
            }]),
        },
        Policy {
            name: "allow-sink-ingress".into(),
            select: Select::App("sink"),
            ingress: Some(vec![Rule {
                peer: Peer::App("gen"),
                protocol: "UDP",
                port: ALLOWED_PORT,
            }]),
            egress: None,
        },
        Policy {
            name: "default-deny".into(),
            select: Select::All,
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        },
    ];
    for i in 0..CIDR_POLICIES {
        // 100.64.0.0/10 (shared address space): no lab address is in it.
        let block = |base: usize| {
            let (a, b) = (64 + (base + i) / 256, (base + i) % 256);
            Peer::Block {
                cidr: format!("100.{a}.{b}.0/24"),
                except: format!("100.{a}.{b}.0/28"),
            }
        };
        let rule = |peer, port| {
            Some(vec![Rule {
                peer,
                protocol: "TCP",
                port,
            }])
        };
        v.push(Policy {
            name: format!("cidr-in-{i:03}"),
            select: Select::Role("bench"),
            ingress: rule(block(0), 8000 + i as u16),
            egress: None,
        });
        v.push(Policy {
            name: format!("cidr-out-{i:03}"),
            select: Select::Role("bench"),
            ingress: None,
            egress: rule(block(CIDR_POLICIES), 9000 + i as u16),
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn rules_yaml(key: &str, rules: &[Rule]) -> String {
    let items: Vec<String> = rules
        .iter()
        .map(|r| {
            let peer = match &r.peer {
                Peer::App(a) => format!("pod_selector: {{ match_labels: {{ app: {a} }} }}"),
                Peer::Block { cidr, except } => {
                    format!("ip_block: {{ cidr: {cidr}, except: [ {except} ] }}")
                }
            };
            format!(
                "{{ {key}: [ {{ {peer} }} ], ports: [ {{ protocol: {}, port: {} }} ] }}",
                r.protocol, r.port
            )
        })
        .collect();
    format!("[ {} ]", items.join(", "))
}

/// The bench cluster file `base` plus the namespaces and every policy.
pub fn cluster_yaml(base: &str) -> anyhow::Result<String> {
    if base.contains("\nnetwork_policies:") || base.contains("\nnamespaces:") {
        bail!("the bench cluster file already has namespaces or network_policies");
    }
    let mut y = base.trim_end().to_string();
    y.push_str(
        "\n# kxdp-bench: the policy scenarios' set (perf/src/bench/policy.rs)\nnamespaces:\n",
    );
    let _ = writeln!(
        y,
        "  - {{ name: {NAMESPACE}, labels: {{ purpose: bench }} }}"
    );
    for k in 0..OTHER_NAMESPACES {
        let _ = writeln!(
            y,
            "  - {{ name: other-{k}, labels: {{ team: t{} }} }}",
            k % 4
        );
    }
    y.push_str("network_policies:\n");
    for p in policies() {
        let mut types = Vec::new();
        let mut rules = String::new();
        if let Some(r) = &p.ingress {
            types.push("Ingress");
            if !r.is_empty() {
                let _ = write!(rules, ", ingress: {}", rules_yaml("from", r));
            }
        }
        if let Some(r) = &p.egress {
            types.push("Egress");
            if !r.is_empty() {
                let _ = write!(rules, ", egress: {}", rules_yaml("to", r));
            }
        }
        let _ = writeln!(
            y,
            "  - {{ name: {NAMESPACE}/{}, pod_selector: {}, policy_types: [{}]{rules} }}",
            p.name,
            p.select.yaml(),
            types.join(", ")
        );
    }
    for i in 0..OTHER_POLICIES {
        let k = i % OTHER_NAMESPACES;
        let _ = writeln!(
            y,
            "  - {{ name: other-{k}/pol-{i:03}, pod_selector: {{ match_labels: {{ app: a{} }} }}, \
             ingress: [ {{ from: [ {{ namespace_selector: {{ match_labels: {{ team: t{} }} }}, \
             pod_selector: {{ match_labels: {{ app: a{} }} }} }} ], ports: [ {{ protocol: TCP, port: {} }} ] }} ] }}",
            i % 10,
            i % 4,
            (i + 1) % 10,
            80 + i
        );
    }
    Ok(y)
}

/// The `app` label of a bench pod.
fn app_of(node: &str, pod: &str) -> Option<&'static str> {
    POD_APPS
        .iter()
        .find(|(n, p, _)| *n == node && *p == pod)
        .map(|(_, _, a)| *a)
}

/// The ipset Calico would make for a selector peer (`app: x` in bench).
fn app_set(app: &str) -> String {
    format!("cali40s:app-{app}")
}

fn except_set(policy: &str) -> String {
    format!("cali40e:{policy}")
}

/// The ipsets of one node, as `ipset restore` input: every selector set
/// with the addresses of all the cluster's matching pods (Calico's sets are
/// cluster-wide), and every except as a hash:net set.
pub fn calico_ipsets(lab: &Lab) -> String {
    let mut s = String::new();
    let mut apps: Vec<&str> = POD_APPS.iter().map(|(_, _, a)| *a).collect();
    apps.sort();
    apps.dedup();
    for app in apps {
        let set = app_set(app);
        let _ = writeln!(s, "create {set} hash:ip family inet");
        for p in &lab.pods {
            if app_of(&p.node, &p.name) == Some(app) {
                let _ = writeln!(s, "add {set} {}", p.ip);
            }
        }
    }
    for p in policies() {
        for r in p.ingress.iter().chain(p.egress.iter()).flatten() {
            if let Peer::Block { except, .. } = &r.peer {
                let set = except_set(&p.name);
                let _ = writeln!(s, "create {set} hash:net family inet");
                let _ = writeln!(s, "add {set} {except}");
            }
        }
    }
    s
}

/// One policy direction's chain (`cali-pi-_<name>` / `cali-po-_<name>`):
/// each rule matches and sets the accept mark, then returns if it is set.
fn policy_chain(chain: &str, rules: &[Rule], ingress: bool) -> String {
    let dir = if ingress { "src" } else { "dst" };
    let mut s = String::new();
    for r in rules {
        let proto = r.protocol.to_ascii_lowercase();
        let peer = match &r.peer {
            Peer::App(a) => format!("-m set --match-set {} {dir}", app_set(a)),
            Peer::Block { cidr, .. } => {
                let flag = if ingress { "-s" } else { "-d" };
                let name = chain
                    .trim_start_matches("cali-pi-_")
                    .trim_start_matches("cali-po-_");
                format!(
                    "{flag} {cidr} -m set ! --match-set {} {dir}",
                    except_set(name)
                )
            }
        };
        let _ = writeln!(
            s,
            "-A {chain} -p {proto} {peer} -m multiport --dports {} -j MARK --set-xmark 0x10000/0x10000",
            r.port
        );
        let _ = writeln!(
            s,
            "-A {chain} -m mark --mark 0x10000/0x10000 -m comment --comment \"Return if policy accepted\" -j RETURN"
        );
    }
    s
}

/// A workload's chain (`cali-tw-<if>` / `cali-fw-<if>`): conntrack, then a
/// jump to each policy selecting it for the direction, then the tier's drop
/// (or, selected by none, the namespace profile).
fn workload_chain(chain: &str, policies: &[&Policy], ingress: bool, profile: &str) -> String {
    let pfx = if ingress { "cali-pi-_" } else { "cali-po-_" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A {chain} -m conntrack --ctstate INVALID -j DROP\n\
         -A {chain} -j MARK --set-xmark 0x0/0x10000"
    );
    if !policies.is_empty() {
        let _ = writeln!(
            s,
            "-A {chain} -m comment --comment \"Start of tier default\" -j MARK --set-xmark 0x0/0x20000"
        );
        for p in policies {
            let _ = writeln!(
                s,
                "-A {chain} -m mark --mark 0x0/0x20000 -j {pfx}{}\n\
                 -A {chain} -m mark --mark 0x10000/0x10000 -m comment --comment \"Return if policy accepted\" -j RETURN",
                p.name
            );
        }
        let _ = writeln!(
            s,
            "-A {chain} -m mark --mark 0x0/0x20000 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -j DROP"
        );
    }
    let _ = writeln!(
        s,
        "-A {chain} -j {profile}\n\
         -A {chain} -m mark --mark 0x10000/0x10000 -m comment --comment \"Return if profile accepted\" -j RETURN\n\
         -A {chain} -m comment --comment \"Drop if no profiles matched\" -j DROP"
    );
    s
}

/// The chain of a local pod: Calico names it after the interface.
fn workload_name(dir: &str, p: &Plan) -> String {
    format!("cali-{dir}-{}", p.ifname)
}

/// `iptables-restore --noflush` input for `node`'s namespace: `template`
/// ([`CALICO_TEMPLATE`]) with its generated parts filled in for the node's
/// pods and the policies selecting them.
pub fn calico_rules(template: &str, lab: &Lab, node: &str) -> anyhow::Result<String> {
    let all = policies();
    let profile = format!("cali-pri-kns.{NAMESPACE}");
    let local: Vec<(&Plan, &'static str)> = lab
        .pods
        .iter()
        .filter(|p| p.node == node)
        .map(|p| {
            app_of(&p.node, &p.name)
                .map(|a| (p, a))
                .with_context(|| format!("pod {}/{} has no app label here", p.node, p.name))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut decls = String::new();
    let mut from = String::new();
    let mut to = String::new();
    let mut workloads = String::new();
    let mut used: Vec<(String, String)> = Vec::new();
    for (p, app) in &local {
        let (fw, tw) = (workload_name("fw", p), workload_name("tw", p));
        let _ = writeln!(decls, ":{fw} - [0:0]\n:{tw} - [0:0]");
        // Calico dispatches on the workload's interface (-i/-o cali...);
        // behind flannel's bridge FORWARD sees cni0, so on its address.
        let _ = writeln!(from, "-A cali-from-wl-dispatch -s {}/32 -g {fw}", p.ip);
        let _ = writeln!(to, "-A cali-to-wl-dispatch -d {}/32 -g {tw}", p.ip);
        let sel_in: Vec<&Policy> = all
            .iter()
            .filter(|q| q.ingress.is_some() && q.select.matches(app))
            .collect();
        let sel_out: Vec<&Policy> = all
            .iter()
            .filter(|q| q.egress.is_some() && q.select.matches(app))
            .collect();
        workloads.push_str(&workload_chain(&tw, &sel_in, true, &profile));
        workloads.push_str(&workload_chain(&fw, &sel_out, false, &profile));
        for q in &sel_in {
            used.push((format!("cali-pi-_{}", q.name), q.name.clone()));
        }
        for q in &sel_out {
            used.push((format!("cali-po-_{}", q.name), q.name.clone()));
        }
    }
    used.sort();
    used.dedup();
    let mut chains = String::new();
    for (chain, name) in &used {
        let _ = writeln!(decls, ":{chain} - [0:0]");
        let q = all
            .iter()
            .find(|q| &q.name == name)
            .expect("a listed policy");
        let ingress = chain.starts_with("cali-pi-");
        let rules = if ingress { &q.ingress } else { &q.egress };
        chains.push_str(&policy_chain(
            chain,
            rules.as_deref().unwrap_or(&[]),
            ingress,
        ));
    }
    let out = template
        .replace("@CHAIN_DECLS@\n", &decls)
        .replace("@FROM_WL_DISPATCH@\n", &from)
        .replace("@TO_WL_DISPATCH@\n", &to)
        .replace("@WORKLOAD_CHAINS@\n", &workloads)
        .replace("@POLICY_CHAINS@\n", &chains)
        .replace("@PROFILE@", &profile);
    for p in PLACEHOLDERS {
        if !template.contains(p) {
            bail!("{CALICO_TEMPLATE}: no {p} line");
        }
        if out.contains(p) {
            bail!("{CALICO_TEMPLATE}: {p} was left unfilled");
        }
    }
    Ok(out)
}

/// Runs `program args` inside `ns` with `input` on stdin.
fn ns_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {ns}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Kernel lab: Calico's rules and ipsets into every node. Returns the
/// commands, for the report.
pub fn kernel_load(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let template = std::fs::read_to_string(lab.root.join(CALICO_TEMPLATE))
        .with_context(|| format!("reading {CALICO_TEMPLATE}"))?;
    let sets = calico_ipsets(lab);
    let mut done = Vec::new();
    for n in &lab.nodes {
        let ns = lab.node_ns(&n.name);
        kernel_unload_node(&ns);
        let rules = calico_rules(&template, lab, &n.name)?;
        ns_with_input(&ns, "ipset", &["restore"], &sets)?;
        ns_with_input(&ns, "iptables-restore", &["--noflush"], &rules)?;
        done.push(format!(
            "ip netns exec {ns} ipset restore; ip netns exec {ns} iptables-restore --noflush \
             ({CALICO_TEMPLATE} filled: {} rules)",
            rules.lines().filter(|l| l.starts_with("-A ")).count()
        ));
    }
    Ok(done)
}

fn kernel_unload_node(ns: &str) {
    // iptables-nft keeps its rules in the nftables table `ip filter`; the
    // lab's own tables (flannel-ipv4, kube-proxy) are others. Deleting it
    // takes the FORWARD hook away too.
    let _ = sh(
        "ip",
        &[
            "netns", "exec", ns, "nft", "delete", "table", "ip", "filter",
        ],
    );
    let _ = sh("ip", &["netns", "exec", ns, "ipset", "destroy"]);
}

/// Removes what [`kernel_load`] loaded.
pub fn kernel_unload(lab: &Lab) {
    for n in &lab.nodes {
        kernel_unload_node(&lab.node_ns(&n.name));
    }
}

/// `iptables-save -c` of a kernel node: per workload chain, the packets of
/// its end-of-tier drop, and per policy chain those it accepted (the MARK
/// rules), non-zero ones only.
pub fn kernel_counters(lab: &Lab, node: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.node_ns(node),
            "iptables-save",
            "-c",
            "-t",
            "filter",
        ],
    )?;
    Ok(parse_counters(&out))
}

/// The non-zero drop and accept counters of `iptables-save -c` output, as
/// (`chain: what`, packets), summed per chain and kind.
pub fn parse_counters(save: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = Vec::new();
    for line in save.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] ") else {
            continue;
        };
        let packets: u64 = counts
            .split(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut words = rule.split_whitespace();
        let (Some("-A"), Some(chain)) = (words.next(), words.next()) else {
            continue;
        };
        let what = if rule.contains("Drop if no policies passed packet") {
            "dropped: no policy allowed"
        } else if rule.contains("Unknown interface") || rule.contains("Drop if no profiles") {
            "dropped: other"
        } else if (chain.starts_with("cali-pi-") || chain.starts_with("cali-po-"))
            && rule.contains("-j MARK")
        {
            "accepted by the policy"
        } else if rule.contains("RELATED,ESTABLISHED") {
            "established (accepted)"
        } else {
            continue;
        };
        if packets == 0 {
            continue;
        }
        let key = format!("{chain}: {what}");
        match v.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += packets,
            None => v.push((key, packets)),
        }
    }
    v
}

/// kxdp: one drop reason's packets on `node` (`kxdpctl counters --json`).
pub fn kxdp_drops(lab: &Lab, node: &str, reason: &str) -> anyhow::Result<u64> {
    let out = lab.ctl(&["counters", "--node", node, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("kxdpctl counters --json")?;
    v["drops"]
        .as_array()
        .and_then(|d| d.iter().find(|x| x["reason"].as_str() == Some(reason)))
        .and_then(|x| x["packets"].as_u64())
        .with_context(|| format!("kxdpctl counters: no drop reason {reason}"))
}

/// The check that each datapath filters what is measured: a flow the
/// policy does not allow (the idle pod n1/p2 to the same destination) sends
/// for a second; the sink must get nothing, and the drop counters must
/// have counted it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DenyCheck {
    pub scenario: String,
    pub datapath: String,
    pub flow: String,
    pub sent: u64,
    pub delivered: u64,
    /// What counted the drops (kxdp: policy_denied_egress on n1; kernel:
    /// the end-of-tier drop of n1/p2's cali-fw chain), before → after.
    pub counter: String,
    pub counted: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// The toggles' wall times (`kxdpctl apply` until both nodes report the
/// generation; kernel: ipset restore + iptables-restore, or their removal).
#[derive(Debug, Clone, Serialize)]
pub struct Toggle {
    pub datapath: String,
    pub what: String,
    pub seconds: f64,
}

/// One point of a policy scenario: with / without, both datapaths.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub scenario: String,
    pub size: usize,
    pub flows: u16,
    pub kxdp_with_over_without: Option<f64>,
    pub kernel_with_over_without: Option<f64>,
    pub kxdp_over_kernel_without: Option<f64>,
    pub kxdp_over_kernel_with: Option<f64>,
}

/// (scenario, kernel node, [`parse_counters`] of its rules).
pub type NodeCounters = (String, String, Vec<(String, u64)>);

/// Everything the policy scenarios add to the report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PolicyReport {
    pub summary: Vec<PolicySummary>,
    pub checks: Vec<DenyCheck>,
    pub toggles: Vec<Toggle>,
    /// Per kernel node, the Calico counters after each scenario.
    pub kernel_counters: Vec<NodeCounters>,
    /// kxdp's policy drops and allowed flows after each scenario.
    pub kxdp_counters: Vec<(String, String)>,
    pub errors: Vec<String>,
    pub kernel_commands: Vec<String>,
    pub kxdp_file: Option<String>,
}

/// Both labs with or without the policy set.
struct Switcher<'a> {
    kx: &'a Lab,
    kl: &'a Lab,
    on_file: PathBuf,
    off_file: PathBuf,
    on: bool,
}

impl Switcher<'_> {
    fn set(&mut self, on: bool, pr: &mut PolicyReport) -> anyhow::Result<()> {
        if self.on == on {
            return Ok(());
        }
        let what = if on { "policy on" } else { "policy off" };
        let file = if on { &self.on_file } else { &self.off_file };
        let sw = super::scale::kxdp_apply(self.kx, file, what)?;
        pr.toggles.push(Toggle {
            datapath: "kxdp".into(),
            what: what.into(),
            seconds: sw.seconds,
        });
        let t0 = Instant::now();
        if on {
            let cmds = kernel_load(self.kl)?;
            if pr.kernel_commands.is_empty() {
                pr.kernel_commands = cmds;
            }
        } else {
            kernel_unload(self.kl);
        }
        pr.toggles.push(Toggle {
            datapath: "kernel".into(),
            what: what.into(),
            seconds: t0.elapsed().as_secs_f64(),
        });
        self.on = on;
        Ok(())
    }
}

/// The idle pod n1/p2 sending what `a` sends (same destination).
fn denied_attach(lab: &Lab, a: &Attach) -> anyhow::Result<Attach> {
    let p = lab.pod("n1", "p2")?;
    Ok(Attach {
        gen_ns: lab.pod_ns(p),
        src_mac: p.mac.clone(),
        dst_mac: lab.gateway_mac(p)?,
        src_ip: p.ip.clone(),
        note: "not allowed: n1/p2 (app: idle) is default-denied egress".into(),
        ..a.clone()
    })
}

fn deny_check(tools: &Tools, s: &Scenario, lab: &Lab, a: &Attach) -> DenyCheck {
    let dp = if lab.kernel { "kernel" } else { "kxdp" };
    let mut c = DenyCheck {
        scenario: s.name.into(),
        datapath: dp.into(),
        ..Default::default()
    };
    let r = (|| -> anyhow::Result<()> {
        let d = denied_attach(lab, a)?;
        c.flow = format!("{} {} -> {}:{}", d.gen_ns, d.src_ip, d.dst_ip, d.dst_port);
        let p2 = lab.pod("n1", "p2")?;
        let chain = workload_name("fw", p2);
        let key = format!("{chain}: dropped: no policy allowed");
        let count = || -> anyhow::Result<u64> {
            if lab.kernel {
                Ok(kernel_counters(lab, "n1")?
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(0, |(_, n)| *n))
            } else {
                kxdp_drops(lab, "n1", "policy_denied_egress")
            }
        };
        let before = count()?;
        let point = Point {
            size: 64,
            flows: 1,
            rate: Some(10_000),
            duration_s: 1.0,
        };
        let (g, sink) =
            super::run::run_point(tools, &d, point, &format!("{}-{dp}-denied", s.name))?;
        let after = count()?;
        c.sent = g.sent;
        c.delivered = sink.probes;
        c.counted = after.saturating_sub(before);
        c.counter = format!(
            "{}: {before} -> {after}",
            if lab.kernel {
                format!("n1 {key}")
            } else {
                "n1 policy_denied_egress".into()
            }
        );
        c.ok = c.delivered == 0 && c.sent > 0 && c.counted >= c.sent;
        Ok(())
    })();
    if let Err(e) = r {
        c.error = Some(format!("{e:#}"));
    }
    crate::say!(
        "    {dp}: not-allowed flow {}: sent {}, delivered {}, counted {} ({}){}",
        c.flow,
        c.sent,
        c.delivered,
        c.counted,
        c.counter,
        c.error
            .as_ref()
            .map(|e| format!(" error: {e}"))
            .unwrap_or_default()
    );
    c
}

/// One scenario with the policy axis: the deny check, then every point
/// alternating without and with policy (kxdp, kernel each time). Appends
/// two [`PointResult`]s per point ("<walk>, no policy" / "<walk>, policy").
#[allow(clippy::too_many_arguments)]
pub fn run_policy(
    cfg: &BenchConfig,
    tools: &Tools,
    (kx, ak): (&Lab, &Attach),
    (kl, al): (&Lab, &Attach),
    s: &Scenario,
    base: &str,
    report: &mut Report,
) {
    let mut pr = std::mem::take(&mut report.policy);
    let r = (|| -> anyhow::Result<()> {
        let pr = &mut pr;
        let off_file = kx.cluster_file()?;
        let on_file = tools.work.join("policy-cluster.yaml");
        let text = std::fs::read_to_string(&off_file)
            .with_context(|| format!("reading {}", off_file.display()))?;
        std::fs::write(&on_file, cluster_yaml(&text)?)?;
        pr.kxdp_file = Some(on_file.display().to_string());
        let mut sw = Switcher {
            kx,
            kl,
            on_file,
            off_file,
            on: false,
        };
        crate::say!(
            "==> {}: policy on (kxdp: kxdpctl apply; kernel: Calico's iptables rules)",
            s.name
        );
        let r = (|| -> anyhow::Result<()> {
            switch(&mut sw, true, s, pr)?;
            warm_up(tools, &format!("{} (policy on)", s.name), ak, al, report);
            for (lab, a) in [(kx, ak), (kl, al)] {
                pr.checks.push(deny_check(tools, s, lab, a));
            }
            for &size in &cfg.sizes {
                for &flows in &cfg.flows {
                    crate::say!("==> {base} {size}B {flows} flows, without and with policy");
                    let p = Point {
                        size,
                        flows,
                        rate: None,
                        duration_s: cfg.duration_s,
                    };
                    let tag = format!("{}-{size}-{flows}", s.name);
                    let mut m: [[Measurement; 2]; 2] = Default::default();
                    for r in 0..cfg.runs {
                        // Start with the state the labs are in: on, off | off,
                        // on | on, off ...: one switch per run.
                        let order = if sw.on { [true, false] } else { [false, true] };
                        for on in order {
                            switch(&mut sw, on, s, pr)?;
                            let state = if on { "policy" } else { "nopolicy" };
                            let [mk, ml] = &mut m[usize::from(on)];
                            measure(tools, ak, p, &format!("{tag}-r{r}-{state}-kxdp"), mk);
                            measure(tools, al, p, &format!("{tag}-r{r}-{state}-kernel"), ml);
                        }
                    }
                    let [[mut k0, mut l0], [mut k1, mut l1]] = m;
                    for x in [&mut k0, &mut l0, &mut k1, &mut l1] {
                        x.finish();
                    }
                    pr.summary.push(PolicySummary {
                        scenario: base.into(),
                        size,
                        flows,
                        kxdp_with_over_without: over(k1.median(), k0.median()),
                        kernel_with_over_without: over(l1.median(), l0.median()),
                        kxdp_over_kernel_without: over(k0.median(), l0.median()),
                        kxdp_over_kernel_with: over(k1.median(), l1.median()),
                    });
                    for (label, k, l) in [("no policy", k0, l0), ("policy", k1, l1)] {
                        report.points.push(PointResult {
                            scenario: format!("{base}, {label}"),
                            size,
                            flows,
                            ratio: over(k.median(), l.median()),
                            kxdp: k,
                            kernel: l,
                            conntrack: None,
                            offered: Vec::new(),
                        });
                    }
                    progress::point_done(&format!("{} {size}B {flows} flows", s.name));
                }
            }
            Ok(())
        })();
        // Off whatever happened.
        let off = switch(&mut sw, false, s, pr);
        r?;
        off
    })();
    if let Err(e) = r {
        crate::say!("==> {}: {e:#}", s.name);
        pr.errors.push(format!("{}: {e:#}", s.name));
    }
    report.policy = pr;
}

/// [`Switcher::set`], recording the counters of the policy period that a
/// switch off ends (the kernel's go with its rules; the last period's stay).
fn switch(sw: &mut Switcher, on: bool, s: &Scenario, pr: &mut PolicyReport) -> anyhow::Result<()> {
    if sw.on && !on {
        pr.kernel_counters.retain(|(sc, _, _)| sc != s.name);
        pr.kxdp_counters.retain(|(sc, _)| sc != s.name);
        record_counters(s, sw.kx, sw.kl, pr);
    }
    sw.set(on, pr)
}

fn record_counters(s: &Scenario, kx: &Lab, kl: &Lab, pr: &mut PolicyReport) {
    for n in &kl.nodes {
        match kernel_counters(kl, &n.name) {
            Ok(c) => pr.kernel_counters.push((s.name.into(), n.name.clone(), c)),
            Err(e) => pr
                .errors
                .push(format!("kernel counters of {}: {e:#}", n.name)),
        }
    }
    for n in &kx.nodes {
        let mut parts = Vec::new();
        for reason in ["policy_denied_egress", "policy_denied_ingress"] {
            match kxdp_drops(kx, &n.name, reason) {
                Ok(v) => parts.push(format!("{reason} {v}")),
                Err(e) => parts.push(format!("{reason}: {e:#}")),
            }
        }
        pr.kxdp_counters
            .push((s.name.into(), format!("{}: {}", n.name, parts.join(", "))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn lab() -> Lab {
        let pod = |node: &str, name: &str, ip: &str, ifname: &str| Plan {
            node: node.into(),
            name: name.into(),
            ip: ip.into(),
            mac: "0a:58:00:00:00:01".into(),
            ifname: ifname.into(),
        };
        Lab {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
            prefix: "t".into(),
            run_dir: PathBuf::from("/nonexistent"),
            kernel: true,
            nodes: Vec::new(),
            pods: vec![
                pod("n1", "p1", "10.244.1.2", "kx0af40102"),
                pod("n1", "p2", "10.244.1.3", "kx0af40103"),
                pod("n2", "p1", "10.244.2.2", "kx0af40202"),
                pod("n2", "p2", "10.244.2.3", "kx0af40203"),
            ],
            log: PathBuf::new(),
            bin_dir: PathBuf::new(),
        }
    }

    /// The labels the set selects on are the cluster file's.
    #[test]
    fn the_cluster_file_labels_the_pods_the_set_selects() {
        let yaml = repo_file(super::super::lab::CLUSTER_FILE);
        for (node, pod, app) in POD_APPS {
            let ip = lab()
                .pods
                .iter()
                .find(|p| p.node == *node && p.name == *pod)
                .unwrap()
                .ip
                .clone();
            assert!(
                yaml.contains(&format!(
                    "- {{ name: {pod}, node: {node}, ip: {ip}, namespace: {NAMESPACE}, \
                     labels: {{ app: {app}, role: bench }} }}"
                )),
                "{node}/{pod}"
            );
        }
        let y = cluster_yaml(&yaml).unwrap();
        assert_eq!(
            y.matches("\n  - { name: bench/").count(),
            3 + 2 * CIDR_POLICIES
        );
        assert_eq!(
            y.matches("\n  - { name: other-").count(),
            OTHER_NAMESPACES + OTHER_POLICIES
        );
        assert!(y.contains(
            "name: bench/allow-sink-ingress, pod_selector: { match_labels: { app: sink } }, \
             policy_types: [Ingress], ingress: [ { from: [ { pod_selector: { match_labels: \
             { app: gen } } } ], ports: [ { protocol: UDP, port: 5201 } ] } ]"
        ));
        assert!(y.contains(
            "name: bench/default-deny, pod_selector: {}, policy_types: [Ingress, Egress] }"
        ));
        assert!(cluster_yaml(&y).is_err(), "a second set on top is refused");
    }

    #[test]
    fn calico_rules_select_each_nodes_pods_in_policy_order() {
        let template = repo_file(CALICO_TEMPLATE);
        let lab = lab();
        let n1 = calico_rules(&template, &lab, "n1").unwrap();
        let n2 = calico_rules(&template, &lab, "n2").unwrap();
        // Dispatch: one rule per local pod, by address.
        assert!(n1.contains("-A cali-from-wl-dispatch -s 10.244.1.2/32 -g cali-fw-kx0af40102\n"));
        assert!(n1.contains("-A cali-to-wl-dispatch -d 10.244.1.3/32 -g cali-tw-kx0af40103\n"));
        assert!(!n1.contains("10.244.2.2/32 -g"));
        // The generator's egress: allow-gen-egress first, then the ipBlock
        // policies and the default deny, then the tier's drop.
        let fw: Vec<&str> = n1
            .lines()
            .filter(|l| l.starts_with("-A cali-fw-kx0af40102 ") && l.contains(" -j cali-po-_"))
            .collect();
        assert_eq!(fw.len(), 2 + CIDR_POLICIES);
        assert!(fw[0].ends_with("-j cali-po-_allow-gen-egress"));
        assert!(fw[1].ends_with("-j cali-po-_cidr-out-000"));
        assert!(fw.last().unwrap().ends_with("-j cali-po-_default-deny"));
        assert!(n1.contains(
            "-A cali-po-_allow-gen-egress -p udp -m set --match-set cali40s:app-sink dst \
             -m multiport --dports 5201 -j MARK --set-xmark 0x10000/0x10000\n"
        ));
        // The idle pod has no allow policy; the sink's ingress has one.
        assert!(!n1.contains("-A cali-fw-kx0af40103 -m mark --mark 0x0/0x20000 -j cali-po-_allow"));
        assert!(n2.contains(
            "-A cali-pi-_allow-sink-ingress -p udp -m set --match-set cali40s:app-gen src"
        ));
        assert!(n2.contains(
            "-A cali-pi-_cidr-in-007 -p tcp -s 100.64.7.0/24 -m set ! --match-set \
             cali40e:cidr-in-007 src -m multiport --dports 8007"
        ));
        for rules in [&n1, &n2] {
            assert!(rules.contains(
                "-A FORWARD -m comment --comment \"cali:wUHhoiAYhphO9Mso\" -j cali-FORWARD"
            ));
            let first = rules
                .lines()
                .find(|l| l.starts_with("-A cali-tw-"))
                .unwrap();
            assert!(
                first.ends_with("--ctstate RELATED,ESTABLISHED -j ACCEPT"),
                "{first}"
            );
            assert!(rules.trim_end().ends_with("COMMIT"));
        }
        let sets = calico_ipsets(&lab);
        assert!(sets.contains(
            "create cali40s:app-gen hash:ip family inet\nadd cali40s:app-gen 10.244.1.2\n"
        ));
        assert!(sets.contains("add cali40e:cidr-out-099 100.64.199.0/28\n"));
        assert!(calico_rules("*filter\nCOMMIT\n", &lab, "n1").is_err());
    }

    #[test]
    fn counters_keep_drops_and_accepts() {
        let save = "\
[12:3456] -A cali-fw-kx0af40103 -m mark --mark 0x0/0x20000 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -j DROP
[0:0] -A cali-fw-kx0af40102 -m mark --mark 0x0/0x20000 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -j DROP
[7:700] -A cali-po-_allow-gen-egress -p udp -m set --match-set cali40s:app-sink dst -m multiport --dports 5201 -j MARK --set-xmark 0x10000/0x10000
[7:700] -A cali-po-_allow-gen-egress -m mark --mark 0x10000/0x10000 -j RETURN
[3:300] -A cali-from-wl-dispatch -m comment --comment \"Unknown interface\" -j DROP
:cali-FORWARD - [0:0]
";
        assert_eq!(
            parse_counters(save),
            [
                (
                    "cali-fw-kx0af40103: dropped: no policy allowed".to_string(),
                    12
                ),
                (
                    "cali-po-_allow-gen-egress: accepted by the policy".to_string(),
                    7
                ),
                ("cali-from-wl-dispatch: dropped: other".to_string(), 3),
            ]
        );
    }
}
