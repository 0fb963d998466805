//! The lab's outside world (lab.sh: the router `P-rt` on the underlay, and
//! `P-www` behind it with an HTTP and a DNS server), and the egress checks
//! run from pods against it.

use super::*;

/// lab.sh `WWW_NET.WWW_HOST`: the outside HTTP and DNS server.
pub const WWW_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// lab.sh `WWW_NET/WWW_PREFIX_LEN`: the outside world's network.
pub const WWW_NET: &str = "203.0.113.0/24";
/// A name the outside DNS server answers with [`WWW_IP`] (lab.sh `WWW_NAMES`).
pub const WWW_NAME: &str = "www.example.test";
/// lab.sh `WWW_HTTP_PORT`.
pub const WWW_HTTP_PORT: u16 = 80;
/// Host part of the router on the underlay /24 (lab.sh `RT_HOST`).
const RT_HOST: u8 = 254;
/// Host part of the outside client on the underlay /24 (lab.sh `EXT_HOST`).
pub const EXT_HOST: u8 = 100;
/// The ports kxdp masquerades pod egress to (above Linux's ephemeral range).
pub const MASQ_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

impl Lab {
    /// The router's underlay address: every node's default route.
    pub fn router_ip(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.nodes[0].underlay_ip.octets();
        Ipv4Addr::new(a, b, c, RT_HOST)
    }

    /// The directory the outside HTTP server serves.
    pub fn www_dir(&self) -> PathBuf {
        self.run_dir.join("www")
    }

    /// A log of the outside world's servers: "www-http" or "www-dns".
    pub fn www_log(&self, which: &str) -> String {
        std::fs::read_to_string(self.run_dir.join(format!("{which}.log"))).unwrap_or_default()
    }

    /// Routes on the router back to every node's pod CIDR through the
    /// node's underlay address: what an underlay that knows the pod
    /// network has, for destinations that are not masqueraded.
    pub fn route_pods_on_router(&self) {
        self.route_pods_from("rt");
    }

    /// The same routes in the underlay namespace `what` ("rt", "ext").
    pub fn route_pods_from(&self, what: &str) {
        let ns = self.ns(what);
        for n in &self.nodes {
            check(
                &format!("route to {} in {ns}", n.pod_cidr),
                ns_exec(
                    &ns,
                    5,
                    "ip",
                    &[
                        "route",
                        "add",
                        &n.pod_cidr,
                        "via",
                        &n.underlay_ip.to_string(),
                    ],
                ),
            );
        }
    }
}

/// A cluster file in a temporary directory, removed on drop.
pub struct ClusterFile(kxdp_testkit::TempDir);

impl ClusterFile {
    /// The lab's cluster file with `keys` (YAML lines, indented two
    /// spaces) added to its `cluster:` section.
    pub fn lab_with(keys: &str) -> ClusterFile {
        let text = std::fs::read_to_string(repo_root().join("config/lab-cluster.yaml"))
            .expect("config/lab-cluster.yaml");
        let changed = text.replacen("cluster:\n", &format!("cluster:\n{keys}\n"), 1);
        assert_ne!(
            changed, text,
            "config/lab-cluster.yaml has no cluster: section"
        );
        let dir = kxdp_testkit::TempDir::new("cluster");
        std::fs::write(dir.path().join("cluster.yaml"), changed).expect("write the cluster file");
        ClusterFile(dir)
    }

    pub fn path(&self) -> PathBuf {
        self.0.path().join("cluster.yaml")
    }
}

/// `curl http://WWW/whoami` from `pod`: the address and port the outside
/// server saw the request come from.
pub fn whoami(lab: &Lab, pod: &str) -> SocketAddr {
    let url = format!("http://{WWW_IP}:{WWW_HTTP_PORT}/whoami");
    let out = check(
        &format!("curl {url} from {pod}"),
        ns_exec(
            &lab.ns(pod),
            30,
            "curl",
            &["-sS", "-f", "--retry", "3", "--max-time", "10", &url],
        ),
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("/whoami from {pod}: {out:?} is not ADDRESS:PORT ({e})"))
}

/// (a) `pod` reaches the outside HTTP server, which sees `expect` as the
/// client (the node's underlay address when masqueraded, the pod's own
/// otherwise), with a source port in `ports` when given; its log names the
/// same client.
pub fn check_whoami(
    lab: &Lab,
    pod: &str,
    expect: Ipv4Addr,
    ports: Option<std::ops::RangeInclusive<u16>>,
) {
    let seen = whoami(lab, pod);
    assert_eq!(
        seen.ip(),
        expect,
        "{pod}: the outside server saw {seen}, expected {expect}"
    );
    if let Some(ports) = ports {
        assert!(
            ports.contains(&seen.port()),
            "{pod}: source port {} is outside {ports:?}",
            seen.port()
        );
    }
    let line = format!("client {seen} \"GET /whoami");
    assert!(
        wait_until(Duration::from_secs(3), || lab
            .www_log("www-http")
            .contains(&line)),
        "the HTTP server's log lacks {line:?}:\n{}",
        lab.www_log("www-http")
    );
}

/// (b) `bytes` of pseudo-random data served by the outside HTTP server and
/// downloaded from `pod`: the SHA-256 of what arrived is that of the file.
pub fn check_download(lab: &Lab, pod: &str, bytes: usize, seed: u64) {
    let name = format!("{}.bin", unique_name("dl"));
    let file = lab.www_dir().join(&name);
    {
        let mut f = File::create(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).expect("write the served file");
            left -= n;
        }
    }
    let path = file.to_str().expect("utf-8 path");
    let served = check("sha256sum", run_timeout(60, "sha256sum", &[path]));
    let served = served.split_whitespace().next().unwrap_or("").to_string();
    let url = format!("http://{WWW_IP}:{WWW_HTTP_PORT}/{name}");
    let script = format!("curl -sS -f --max-time 150 {url} | tee >(wc -c >&2) | sha256sum");
    let started = Instant::now();
    let out = ns_exec(
        &lab.ns(pod),
        180,
        "bash",
        &["-o", "pipefail", "-c", &script],
    );
    let _ = std::fs::remove_file(&file);
    let received = check(&format!("download {url} from {pod}"), out.clone());
    let received = received.split_whitespace().next().unwrap_or("");
    let count = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        received, served,
        "{pod}: {url}: the SHA-256 of the {count} bytes received differs from the {bytes} served"
    );
    eprintln!(
        "{pod}: {bytes} bytes from {url} in {:.1}s, SHA-256 {served}",
        started.elapsed().as_secs_f64()
    );
}

/// (c) `dig` from `pod` asks the outside DNS server for [`WWW_NAME`] over
/// UDP and gets [`WWW_IP`]; the server's log shows the query from `client`.
pub fn check_dns(lab: &Lab, pod: &str, client: Ipv4Addr) {
    let server = format!("@{WWW_IP}");
    let out = check(
        &format!("dig {WWW_NAME} from {pod}"),
        ns_exec(
            &lab.ns(pod),
            30,
            "dig",
            &[
                &server, WWW_NAME, "A", "+notcp", "+short", "+time=2", "+tries=3",
            ],
        ),
    );
    assert_eq!(
        out.trim(),
        WWW_IP.to_string(),
        "{pod}: dig {WWW_NAME} answered {out:?}"
    );
    let line = format!("query[A] {WWW_NAME} from {client}");
    assert!(
        wait_until(Duration::from_secs(3), || lab
            .www_log("www-dns")
            .contains(&line)),
        "the DNS server's log lacks {line:?}:\n{}",
        lab.www_log("www-dns")
    );
}

/// The egress checks (a), (b) and (c) from one pod on each node, all
/// masqueraded to the pod's node's underlay address (source ports in
/// `ports` when given).
pub fn check_egress_masqueraded(
    lab: &Lab,
    pods: &[&str],
    ports: Option<std::ops::RangeInclusive<u16>>,
    download: usize,
) {
    for (i, pod) in pods.iter().enumerate() {
        let node = lab.node(pod.split('-').next().expect("pod id NODE-POD"));
        check_whoami(lab, pod, node.underlay_ip, ports.clone());
        if download > 0 {
            check_download(lab, pod, download, 0xe9e5 + i as u64);
        }
        check_dns(lab, pod, node.underlay_ip);
    }
}
