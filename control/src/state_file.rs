//! File mode's durable state (`--state-file`, default
//! [`DEFAULT_STATE_FILE`]): what the Control API changed at run time, so
//! that a restarted `kxdp-control` pushes exactly what was there before.
//!
//! # What it holds
//!
//! One JSON document, versioned ([`VERSION`]):
//! - `pods`: the pods registered at run time (`AddPod`, the CNI plugin), as
//!   their `AddPodRequest`s;
//! - `services`: the services registered at run time (`UpsertService`,
//!   `kxdpctl service apply`), in the cluster file's `services:` shape;
//! - `network_policies` and `namespaces`: the ones registered at run time
//!   (`UpsertNetworkPolicy`, `UpsertNamespace`; `kxdpctl policy apply`,
//!   `kxdpctl namespace set`), in the cluster file's shapes;
//! - `cluster`: after an `ApplyCluster` (`kxdpctl apply`), the file it
//!   applied (`applied`) and the text of the `--cluster` file (or the
//!   built-in lab's) the process had started from (`base`).
//!
//! # When it is written
//!
//! Every change (add, delete, upsert, apply) is written before the desired
//! state changes and before the API replies: a temporary file beside it is
//! written and fsynced, renamed over it, and the directory fsynced. A write
//! that fails leaves the previous file whole and the desired state as it
//! was, and the call fails (`INTERNAL`, naming the file). The write happens
//! under the desired state's lock, so the file's order is the API's order.
//!
//! # At start
//!
//! - No file: a fresh start from the cluster file (the file is then written,
//!   which also proves the directory writable).
//! - An applied cluster whose `base` is the `--cluster` file's text as it is
//!   now: the applied file is the cluster, as before the restart. If the
//!   `--cluster` file changed since, the operator edited it after the apply:
//!   the file wins and the applied one is dropped (logged).
//! - The run-time pods, services, policies and namespaces are checked against that cluster as an
//!   `ApplyCluster` checks them: pods of nodes it no longer has go with their
//!   node (logged, as an apply does); any other misfit is an error.
//! - A file that is not JSON, has no or another `version`, has unknown
//!   fields, or holds objects that do not fit: the process refuses to start
//!   (exit 2) with a message naming the file and what is wrong. A half-loaded
//!   state would delete the rest from every node at the first Sync; an
//!   operator can move the file aside to start empty on purpose.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kxdp_proto::control::AddPodRequest;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::cluster::Cluster;
use crate::policy::{RawNamespace, RawPolicy};
use crate::runtime::{Runtime, Written};
use crate::service::RawService;

/// Where `kxdp-control` keeps it unless told (`--state-file`).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/kxdp/control-state.json";
/// The layout this build writes and reads. Fields added since version 1
/// (pods' namespace, labels and ports; `network_policies`, `namespaces`)
/// are optional, so a version 1 file of an older build loads as it was;
/// an older build refuses a file holding them (unknown field), naming it.
pub const VERSION: u64 = 1;

/// The file's document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u64,
    #[serde(default)]
    cluster: Option<Applied>,
    #[serde(default)]
    pods: Vec<StoredPod>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    network_policies: Vec<RawPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<RawNamespace>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Applied {
    /// The cluster file the process started from, when the apply was made.
    base: String,
    /// The file `ApplyCluster` applied.
    applied: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPod {
    node: String,
    name: String,
    ip: String,
    mac: String,
    ifname: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// (name, protocol number as the API has it, port).
    #[serde(default)]
    ports: Vec<(String, i32, u32)>,
}

impl From<AddPodRequest> for StoredPod {
    fn from(r: AddPodRequest) -> StoredPod {
        StoredPod {
            node: r.node,
            name: r.name,
            ip: r.ip,
            mac: r.mac,
            ifname: r.ifname,
            namespace: r.namespace,
            labels: r.labels.into_iter().collect(),
            ports: r
                .ports
                .into_iter()
                .map(|c| (c.name, c.protocol, c.port))
                .collect(),
        }
    }
}

impl From<StoredPod> for AddPodRequest {
    fn from(p: StoredPod) -> AddPodRequest {
        AddPodRequest {
            node: p.node,
            name: p.name,
            ip: p.ip,
            mac: p.mac,
            ifname: p.ifname,
            namespace: p.namespace,
            labels: p.labels.into_iter().collect(),
            ports: p
                .ports
                .into_iter()
                .map(
                    |(name, protocol, port)| kxdp_proto::control::ContainerPort {
                        name,
                        protocol,
                        port,
                    },
                )
                .collect(),
        }
    }
}

/// The state file of a running file-mode control process.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// The text of the cluster file the process started from.
    base: String,
    /// The last `ApplyCluster`'s file, if any since `base`.
    applied: Mutex<Option<String>>,
}

/// What [`StateFile::load`] restored.
#[derive(Debug)]
pub struct Restored {
    pub state: StateFile,
    pub cluster: Cluster,
    pub runtime: Runtime,
}

impl StateFile {
    /// Reads the state file at `path` for a process started from the
    /// cluster file `base` (its text, and parsed: `cluster`), valid for
    /// `dataplane_dir`; writes it back as loaded. The error names the file
    /// and says what is wrong with it.
    pub fn load(
        path: &Path,
        base: &str,
        cluster: Cluster,
        dataplane_dir: &Path,
    ) -> Result<Restored, String> {
        let at = path.display();
        let doc = match fs::read(path) {
            Ok(bytes) => Some(parse(&bytes).map_err(|e| format!("state file {at}: {e}"))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read the state file {at}: {e}")),
        };
        let state = StateFile {
            path: path.to_path_buf(),
            base: base.to_string(),
            applied: Mutex::new(None),
        };
        let Some(doc) = doc else {
            log::info!("state file {at}: none yet, starting from the cluster file");
            state
                .save(None, &Runtime::default())
                .map_err(|e| e.message().to_string())?;
            return Ok(Restored {
                state,
                cluster,
                runtime: Runtime::default(),
            });
        };
        let cluster = match doc.cluster {
            Some(a) if a.base == base => {
                let applied = Cluster::from_yaml(&a.applied)
                    .and_then(|c| c.check_sockets(dataplane_dir).map(|()| c))
                    .map_err(|p| {
                        format!("state file {at}: the applied cluster file is invalid:\n{p}")
                    })?;
                log::info!("state file {at}: the cluster file applied at run time");
                *state.applied.lock().expect("not poisoned") = Some(a.applied);
                applied
            }
            Some(_) => {
                log::warn!(
                    "state file {at}: the cluster file changed since the last ApplyCluster; \
                     using the file, the applied one is dropped"
                );
                cluster
            }
            None => cluster,
        };
        let written = Written {
            pods: doc.pods.into_iter().map(AddPodRequest::from).collect(),
            services: doc.services,
            policies: doc.network_policies,
            namespaces: doc.namespaces,
        };
        let (runtime, dropped) = Runtime::fit(&cluster, written).map_err(|p| {
            format!("state file {at}: run-time objects that do not fit the cluster file:\n{p}")
        })?;
        for (node, name) in dropped {
            log::info!("state file {at}: run-time pod {node}/{name} removed with its node");
        }
        log::info!(
            "state file {at}: {} run-time pods, {} run-time services, {} run-time network policies, {} run-time namespaces",
            runtime.pods.len(),
            runtime.services.len(),
            runtime.policies.len(),
            runtime.namespaces.len()
        );
        let applied = state.applied.lock().expect("not poisoned").clone();
        state
            .save(applied.as_deref(), &runtime)
            .map_err(|e| e.message().to_string())?;
        Ok(Restored {
            state,
            cluster,
            runtime,
        })
    }

    /// Records `runtime` and, if given, a newly applied cluster file,
    /// atomically and durably. On error the file is as it was.
    pub fn save(&self, applied: Option<&str>, runtime: &Runtime) -> Result<(), Status> {
        let mut current = self.applied.lock().expect("not poisoned");
        let cluster = applied.or(current.as_deref()).map(|a| Applied {
            base: self.base.clone(),
            applied: a.to_string(),
        });
        let written = runtime.written()?;
        let doc = Document {
            version: VERSION,
            cluster,
            pods: written.pods.into_iter().map(StoredPod::from).collect(),
            services: written.services,
            network_policies: written.policies,
            namespaces: written.namespaces,
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| {
            Status::internal(format!(
                "cannot encode the state for {}: {e}",
                self.path.display()
            ))
        })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(|e| {
            Status::internal(format!(
                "cannot record the change in the state file {}: {e}; nothing changed",
                self.path.display()
            ))
        })?;
        if let Some(a) = applied {
            *current = Some(a.to_string());
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A state file's document, or what is wrong with it.
fn parse(bytes: &[u8]) -> Result<Document, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    match value.get("version") {
        None => return Err("no \"version\": not a kxdp-control state file".into()),
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "version {v}, but this kxdp-control reads version {VERSION} \
                 (written by another kxdp-control version?)"
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| format!("version {VERSION} document: {e}"))
}

/// Writes `bytes` to `path` so that a crash at any point leaves either the
/// old file or the new one: a temporary file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced (the rename
/// itself durable). Creates the directory (0700) if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LAB_CLUSTER_YAML;
    use crate::runtime::{check_add, check_service, PodCheck};
    use kxdp_proto::dataplane as pb;
    use kxdp_testkit::TempDir;

    fn lab() -> Cluster {
        Cluster::lab()
    }

    fn load(path: &Path) -> Result<Restored, String> {
        StateFile::load(path, LAB_CLUSTER_YAML, lab(), Path::new("/run/kxdp"))
    }

    /// A run-time set with one pod and one service on the lab cluster.
    fn some_runtime() -> Runtime {
        let c = lab();
        let mut rt = Runtime::default();
        let req = AddPodRequest {
            node: "n1".into(),
            name: "cni-abc/eth0".into(),
            ip: "10.244.1.9".into(),
            mac: "0a:58:0a:f4:01:09".into(),
            ifname: "veth1234".into(),
            ..Default::default()
        };
        let PodCheck::New(pod) = check_add(&c, &rt, &req).unwrap() else {
            panic!()
        };
        rt.pods.insert(("n1".into(), pod.name.clone()), pod);
        let raw = RawService::from_yaml(include_str!("../../config/service-example.yaml")).unwrap();
        let mut svc = raw.to_proto().unwrap();
        svc.session_affinity = pb::SessionAffinity::ClientIp as i32;
        svc.endpoints[1].ready = false;
        let s = check_service(&c, &rt, &svc).unwrap();
        rt.services.insert(s.name.clone(), s);
        // A policy with every kind of peer and port, and a namespace.
        let file = Cluster::from_yaml(include_str!("../../config/policy-example.yaml")).unwrap();
        let mut pol = file.policies[0].to_proto();
        pol.name = "db-runtime".into();
        pol.egress
            .push(kxdp_proto::control::NetworkPolicyEgressRule {
                to: vec![kxdp_proto::control::NetworkPolicyPeer {
                    ip_block: Some(kxdp_proto::control::IpBlock {
                        cidr: "10.0.0.0/8".into(),
                        except: vec!["10.1.0.0/16".into()],
                    }),
                    ..Default::default()
                }],
                ports: vec![kxdp_proto::control::NetworkPolicyPort {
                    protocol: "UDP".into(),
                    port: Some(kxdp_proto::control::network_policy_port::Port::Number(53)),
                    end_port: 60,
                }],
            });
        for p in crate::runtime::check_policies(&c, &rt, &[pol]).unwrap() {
            rt.policies.insert(p.name.clone(), p);
        }
        let ns = crate::runtime::check_namespace(
            &c,
            &rt,
            &kxdp_proto::control::Namespace {
                name: "shop".into(),
                labels: [("team".to_string(), "shop".to_string())].into(),
                source: String::new(),
            },
        )
        .unwrap();
        rt.namespaces.insert(ns.name.clone(), ns);
        rt
    }

    #[test]
    fn a_saved_state_loads_back_as_it_was() {
        let dir = TempDir::new("state-rt");
        let path = dir.0.join("sub/state.json");
        // No file yet: a fresh start, and the file is written.
        let fresh = load(&path).unwrap();
        assert_eq!(fresh.runtime, Runtime::default());
        assert!(path.exists());
        let rt = some_runtime();
        fresh.state.save(None, &rt).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.runtime, rt);
        assert_eq!(back.runtime.policies.len(), 1);
        assert_eq!(back.runtime.namespaces.len(), 1);
        assert_eq!(back.cluster, lab());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"network_policies\"") && text.contains("shop/db-runtime"),
            "{text}"
        );
        // Deletes persist too.
        let mut fewer = rt.clone();
        fewer.services.clear();
        fewer.policies.clear();
        back.state.save(None, &fewer).unwrap();
        assert_eq!(load(&path).unwrap().runtime, fewer);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn an_applied_cluster_survives_until_the_file_changes() {
        let dir = TempDir::new("state-apply");
        let path = dir.0.join("state.json");
        let applied = format!("{LAB_CLUSTER_YAML}  - {{ name: p9, node: n1, ip: 10.244.1.99 }}\n");
        let first = load(&path).unwrap();
        first.state.save(Some(&applied), &some_runtime()).unwrap();
        // Same cluster file at start: the applied one is the cluster.
        let back = load(&path).unwrap();
        assert_eq!(back.cluster, Cluster::from_yaml(&applied).unwrap());
        assert_eq!(back.runtime, some_runtime());
        // A later save keeps it.
        back.state.save(None, &Runtime::default()).unwrap();
        assert_eq!(
            load(&path).unwrap().cluster,
            Cluster::from_yaml(&applied).unwrap()
        );
        // The operator edited the cluster file since: the file wins.
        let edited = format!("{LAB_CLUSTER_YAML}  - {{ name: p8, node: n1, ip: 10.244.1.98 }}\n");
        let c = Cluster::from_yaml(&edited).unwrap();
        let r = StateFile::load(&path, &edited, c.clone(), Path::new("/run/kxdp")).unwrap();
        assert_eq!(r.cluster, c);
    }

    fn refused(path: &Path, text: &str) -> String {
        fs::write(path, text).unwrap();
        let e = load(path).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        // Refusing changes nothing on disk.
        assert_eq!(fs::read_to_string(path).unwrap(), text);
        e
    }

    #[test]
    fn a_corrupt_or_unknown_state_file_is_refused_naming_it_and_why() {
        let dir = TempDir::new("state-bad");
        let path = dir.0.join("state.json");
        assert!(refused(&path, "{\"version\": 1, \"pods\": [").contains("not JSON"));
        assert!(refused(&path, "").contains("not JSON"));
        assert!(refused(&path, "{\"pods\": []}").contains("no \"version\""));
        let e = refused(&path, "{\"version\": 2, \"pods\": []}");
        assert!(
            e.contains("version 2") && e.contains("reads version 1"),
            "{e}"
        );
        let e = refused(&path, "{\"version\": 1, \"podz\": []}");
        assert!(e.contains("unknown field `podz`"), "{e}");
        let e = refused(
            &path,
            "{\"version\": 1, \"pods\": [{\"node\": \"n1\", \"name\": \"x\", \"ip\": \"10.244.1.9\"}]}",
        );
        assert!(e.contains("missing field `mac`"), "{e}");
        // Well-formed, but a pod outside its node's CIDR: refused whole,
        // not loaded without it.
        let e = refused(
            &path,
            "{\"version\": 1, \"pods\": [\
             {\"node\": \"n1\", \"name\": \"ok\", \"ip\": \"10.244.1.9\", \"mac\": \"0a:58:0a:f4:01:09\", \"ifname\": \"v1\"},\
             {\"node\": \"n1\", \"name\": \"x\", \"ip\": \"10.244.2.9\", \"mac\": \"0a:58:0a:f4:01:0a\", \"ifname\": \"v2\"}]}",
        );
        assert!(
            e.contains("runtime_pods[n1/x].ip") && e.contains("outside node n1's pod_cidr"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = TempDir::new("state-fail");
        let path = dir.0.join("state.json");
        let r = load(&path).unwrap();
        r.state.save(None, &some_runtime()).unwrap();
        let before = fs::read(&path).unwrap();
        // The temporary file cannot be made: a directory is in its way.
        fs::create_dir(dir.0.join(".state.json.tmp")).unwrap();
        let applied = format!("{LAB_CLUSTER_YAML}  - {{ name: p9, node: n1, ip: 10.244.1.99 }}\n");
        let e = r
            .state
            .save(Some(&applied), &Runtime::default())
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("state.json"), "{}", e.message());
        assert_eq!(fs::read(&path).unwrap(), before);
        // Nor did a failed save change the applied cluster it remembers.
        fs::remove_dir(dir.0.join(".state.json.tmp")).unwrap();
        assert_eq!(load(&path).unwrap().runtime, some_runtime());
        r.state.save(None, &some_runtime()).unwrap();
        assert_eq!(load(&path).unwrap().cluster, lab());
    }
}
