//! The Vagrant lab's systemd units against the binaries' real flag
//! definitions: every unit's ExecStart, after the substitutions a VM makes
//! (/etc/default/kxdp from vagrant/provision/kxdp-env.sh with the
//! Vagrantfile's values for each node), must parse with `kxdp-dataplane`'s
//! and `kxdp-control`'s clap definitions, with that file's variables in the
//! environment as systemd passes them. And the two daemons must meet: the
//! socket control dials for its node is the one the dataplane listens on.
//!
//! One test function: it sets process environment variables (clap reads
//! flags from them), so nothing may run beside it in this binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A `NAME = "..."` string constant of the Vagrantfile, with `#{NAME}`
/// interpolations of earlier constants resolved.
fn ruby_const(vagrantfile: &str, name: &str) -> String {
    let line = vagrantfile
        .lines()
        .find(|l| l.starts_with(&format!("{name} = \"")))
        .unwrap_or_else(|| panic!("Vagrantfile has no {name} = \"...\""));
    interpolate(vagrantfile, line.split('"').nth(1).unwrap())
}

fn interpolate(vagrantfile: &str, text: &str) -> String {
    let mut out = text.to_string();
    while let Some(start) = out.find("#{") {
        let end = start + out[start..].find('}').unwrap();
        let value = ruby_const(vagrantfile, &out[start + 2..end]);
        out.replace_range(start..=end, &value);
    }
    out
}

/// The Vagrantfile's NODES: the `"n1" => "#{UNDERLAY_PREFIX}.11",` lines of
/// its `NODES = {` block.
fn vagrant_nodes(vagrantfile: &str) -> Vec<(String, String)> {
    let nodes: Vec<(String, String)> = vagrantfile
        .lines()
        .skip_while(|l| !l.starts_with("NODES = {"))
        .take_while(|l| !l.starts_with('}'))
        .map(str::trim)
        .filter(|l| l.starts_with('"') && l.contains("=>"))
        .map(|l| {
            let parts: Vec<&str> = l.split('"').collect();
            (parts[1].to_string(), interpolate(vagrantfile, parts[3]))
        })
        .collect();
    assert!(!nodes.is_empty(), "no nodes found in the Vagrantfile");
    nodes
}

/// /etc/default/kxdp as vagrant/provision/kxdp-env.sh writes it for a node,
/// parsed as systemd parses an EnvironmentFile (KEY=VALUE, # comments).
fn env_file(node: &str, ip: &str, uplink: &str, etcd: &str) -> BTreeMap<String, String> {
    let out = Command::new("bash")
        .arg(repo().join("vagrant/provision/kxdp-env.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KXDP_NODE", node)
        .env("KXDP_UNDERLAY_IP", ip)
        .env("KXDP_UPLINK", uplink)
        .env("KXDP_ETCD", etcd)
        .output()
        .expect("run kxdp-env.sh");
    assert!(
        out.status.success(),
        "kxdp-env.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// The Exec* command lines of a unit's [Service] section, with drop-ins
/// applied in order (an empty `ExecStart=` clears the list, as in systemd).
fn exec_lines(unit: &str, drop_ins: &[&str], key: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for text in std::iter::once(unit).chain(drop_ins.iter().copied()) {
        let mut in_service = false;
        for l in text.lines().map(str::trim) {
            if l.starts_with('[') {
                in_service = l == "[Service]";
            } else if let Some(v) = l.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                assert!(in_service, "{key} outside [Service]");
                if v.is_empty() {
                    lines.clear();
                } else {
                    lines.push(v.to_string());
                }
            }
        }
    }
    lines
}

/// systemd's expansion of `${NAME}` (one word) in a command line, then
/// word splitting; a variable the environment file lacks is an error here
/// (systemd would silently pass an empty word).
fn expand(line: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("unclosed ${");
        let name = &rest[start + 2..end];
        let value = env
            .get(name)
            .unwrap_or_else(|| panic!("{line}: ${{{name}}} is not set by /etc/default/kxdp"));
        assert!(
            !value.is_empty() && !value.contains(char::is_whitespace),
            "{name}={value:?}"
        );
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    assert!(!out.contains('$'), "{line}: unexpanded $ left: {out}");
    out.split_whitespace().map(String::from).collect()
}

/// Sets exactly the environment file's variables among the KXDP_* ones, as
/// systemd would for the unit (nothing leaks in from the test's caller).
fn set_env(env: &BTreeMap<String, String>) {
    for (k, _) in std::env::vars() {
        if k.starts_with("KXDP_") {
            std::env::remove_var(k);
        }
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
}

/// Parses `argv` twice: with no KXDP_* environment (a unit names every
/// flag the binary requires on its command line, readable in `systemctl
/// cat`), then with `env` as systemd passes it, which is what is returned.
fn parse<A: Parser>(argv: &[String], env: &BTreeMap<String, String>, unit: &str) -> A {
    set_env(&BTreeMap::new());
    if let Err(e) = A::try_parse_from(argv) {
        panic!("{unit} ExecStart {argv:?} needs its environment to parse:\n{e}");
    }
    set_env(env);
    A::try_parse_from(argv).unwrap_or_else(|e| panic!("{unit} ExecStart {argv:?}:\n{e}"))
}

#[test]
fn every_unit_parses_with_the_real_flags_and_the_daemons_meet() {
    let vagrantfile = read("vagrant/Vagrantfile");
    let uplink = ruby_const(&vagrantfile, "UPLINK");
    let etcd = ruby_const(&vagrantfile, "ETCD");
    let dataplane_unit = read("vagrant/systemd/kxdp-dataplane.service");
    let control_unit = read("vagrant/systemd/kxdp-control.service");
    let file_store = read("vagrant/systemd/kxdp-control.service.d/file-store.conf");
    let cluster = kxdp_control::cluster::Cluster::from_yaml(&read("vagrant/cluster.yaml")).unwrap();

    let tmp = kxdp_testkit::TempDir::new("units-pki");
    let pki = tmp.0.join("pki");
    let made = Command::new("bash")
        .arg(repo().join("scripts/provision/etcd-pki.sh"))
        .arg(&pki)
        .status()
        .unwrap();
    assert!(made.success());

    let mut last_env = BTreeMap::new();
    for (node, ip) in vagrant_nodes(&vagrantfile) {
        let env = env_file(&node, &ip, &uplink, &etcd);

        // The dataplane: the uplink script gets the underlay NIC, and the
        // process serves this node.
        let pre = exec_lines(&dataplane_unit, &[], "ExecStartPre");
        assert_eq!(pre.len(), 1, "{pre:?}");
        let pre = expand(&pre[0], &env);
        // "+": runs with full privileges (the service itself is not root).
        assert_eq!(pre, ["+/usr/local/lib/kxdp/uplink.sh", uplink.as_str()]);
        assert!(repo().join("scripts/provision/uplink.sh").exists());
        let start = exec_lines(&dataplane_unit, &[], "ExecStart");
        assert_eq!(start.len(), 1, "{start:?}");
        let argv = expand(&start[0], &env);
        assert_eq!(argv[0], "/usr/local/bin/kxdp-dataplane");
        let dp: kxdp_dataplane::cli::Args = parse(&argv, &env, "kxdp-dataplane.service");
        let (dp_node, dp_socket) = dp.identity().unwrap();
        assert_eq!(dp_node, node);
        // Metrics on loopback, apart from control's.
        let dp_metrics = dp.metrics_address.expect("the dataplane's metrics address");
        assert!(dp_metrics.ip().is_loopback(), "{dp_metrics}");

        // Control, etcd store (the default): registers this node with its
        // real underlay address and uplink, and dials its dataplane.
        let start = exec_lines(&control_unit, &[], "ExecStart");
        assert_eq!(start.len(), 1, "{start:?}");
        let argv = expand(&start[0], &env);
        assert_eq!(argv[0], "/usr/local/bin/kxdp-control");
        let c: kxdp_control::cli::Args = parse(&argv, &env, "kxdp-control.service");
        c.check().unwrap();
        assert_eq!(c.store.as_deref(), Some(format!("https://{etcd}").as_str()));
        etcd_tls_files_are_the_installed_ones(&c, &pki);
        assert_eq!(c.node.as_deref(), Some(node.as_str()));
        assert_eq!(c.underlay_ip.map(|a| a.to_string()), Some(ip.clone()));
        assert_eq!(c.uplink.as_deref(), Some(uplink.as_str()));
        assert!(c.cluster.is_none() && !c.lab);
        let c_metrics = c.metrics_address.expect("control's metrics address");
        assert!(c_metrics.ip().is_loopback() && c_metrics != dp_metrics);
        assert_eq!(
            kxdp_proto::dataplane_socket(&c.dataplane_dir, &node),
            dp_socket
        );

        // Control, file store (the drop-in): the file names this node, and
        // the socket it dials for it is the dataplane's.
        let start = exec_lines(&control_unit, &[&file_store], "ExecStart");
        assert_eq!(
            start.len(),
            1,
            "the drop-in must replace ExecStart: {start:?}"
        );
        let argv = expand(&start[0], &env);
        assert_eq!(argv[0], "/usr/local/bin/kxdp-control");
        let c: kxdp_control::cli::Args = parse(&argv, &env, "file-store.conf");
        c.check().unwrap();
        assert!(
            c.store.is_none() && !c.lab,
            "file store runs in etcd/lab mode: {c:?}"
        );
        assert_eq!(
            c.cluster.as_deref(),
            Some(Path::new("/etc/kxdp/cluster.yaml"))
        );
        let n = cluster
            .nodes
            .iter()
            .find(|n| n.name == node)
            .unwrap_or_else(|| panic!("vagrant/cluster.yaml lacks node {node}"));
        assert_eq!(n.underlay_ip.to_string(), ip);
        assert_eq!(n.uplink, uplink);
        assert_eq!(n.socket_path(&c.dataplane_dir), dp_socket);
        last_env = env;
    }
    a_unit_without_a_required_flag_does_not_parse(&last_env);
    both_units_notify_systemd_and_have_a_watchdog(&dataplane_unit, &control_unit);
}

/// Type=notify and WatchdogSec= in both units (the daemons send READY=1 and
/// WATCHDOG=1: `dataplane/src/liveness.rs`, `control/src/daemon.rs`), and
/// control is not ordered after the dataplane, whose READY=1 waits for
/// control's first sync.
fn both_units_notify_systemd_and_have_a_watchdog(dataplane: &str, control: &str) {
    for (name, unit) in [("dataplane", dataplane), ("control", control)] {
        let keys: Vec<&str> = unit.lines().map(str::trim).collect();
        assert!(keys.contains(&"Type=notify"), "{name}: {unit}");
        assert!(
            keys.iter().any(|l| l.starts_with("WatchdogSec=")),
            "{name}: {unit}"
        );
    }
    let after = control
        .lines()
        .find(|l| l.starts_with("After="))
        .unwrap_or_default();
    assert!(!after.contains("kxdp-dataplane"), "{after}");
    assert!(dataplane.contains("TimeoutStartSec=infinity"));
}

/// Control's --etcd-* files are in /etc/kxdp/etcd, where
/// vagrant/provision/kxdp.sh installs them from etcd-pki.sh's output; the
/// store flags accept them (the same names in `pki`, one etcd-pki.sh made).
fn etcd_tls_files_are_the_installed_ones(c: &kxdp_control::cli::Args, pki: &Path) {
    let provision = read("vagrant/provision/kxdp.sh");
    let [ca, cert, key] = [&c.etcd.etcd_ca, &c.etcd.etcd_cert, &c.etcd.etcd_key].map(|f| {
        let f = f.as_deref().expect("an --etcd-* flag is missing");
        assert_eq!(f.parent(), Some(Path::new("/etc/kxdp/etcd")), "{f:?}");
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            provision.contains(&format!("\"$pki/{name}\"")),
            "kxdp.sh does not install {name}"
        );
        Some(pki.join(&*name))
    });
    let flags = kxdp_control::cli::EtcdFlags {
        etcd_ca: ca,
        etcd_cert: cert,
        etcd_key: key,
        etcd_insecure: c.etcd.etcd_insecure,
    };
    kxdp_control::etcd::Access::new(c.store.as_deref().unwrap(), &flags).unwrap();
}

/// The check above can fail: a unit that loses a flag the binary requires
/// does not parse. Called from the one test, after it, with the environment
/// cleared: what a unit without an EnvironmentFile line would run.
fn a_unit_without_a_required_flag_does_not_parse(env: &BTreeMap<String, String>) {
    set_env(&BTreeMap::new());
    let unit = read("vagrant/systemd/kxdp-control.service");
    let line = &exec_lines(&unit, &[], "ExecStart")[0];
    for flag in [
        "--underlay-ip ${KXDP_UNDERLAY_IP}",
        "--uplink ${KXDP_UPLINK}",
        "--node ${KXDP_NODE}",
    ] {
        assert!(line.contains(flag), "{flag} not in {line}");
        let argv = expand(&line.replace(flag, ""), env);
        let flag_name = flag.split_whitespace().next().unwrap();
        let err = kxdp_control::cli::Args::try_parse_from(&argv)
            .expect_err("parsed without a required flag")
            .to_string();
        assert!(err.contains(flag_name), "{flag_name}: {err}");
    }
}
