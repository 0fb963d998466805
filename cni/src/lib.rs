//! kxdp-cni: a CNI plugin (spec 1.0.0) that attaches a pod to kxdp.
//!
//! ADD leases an address from the IPAM plugin named in the configuration
//! (host-local with the node's pod CIDR), creates the pod's veth pair (node
//! end `kx<hex ip>`, container end CNI_IFNAME with MAC `0a:58:<ip>`, the pod
//! MTU, one queue each, offloads off), sets the address and the default
//! route via the gateway, and registers the pod with the node's
//! kxdp-control (`AddPod`), whose dataplane then attaches to the veth. Any
//! failure undoes what was done. DEL undoes it all and is idempotent; CHECK
//! verifies it. See `cni/README.md`.
#![forbid(unsafe_code)]

pub mod control;
pub mod env;
pub mod error;
pub mod ipam;
pub mod link;
pub mod plugin;
pub mod types;

use env::{CniEnv, Command};
use error::{CniError, IO_FAILURE};
use types::NetConf;

/// What a run prints on stdout, and whether it succeeded.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub ok: bool,
}

/// One plugin run: `command` is CNI_COMMAND, `stdin` the network
/// configuration, `var` reads the environment.
pub fn run(
    command: &str,
    stdin: std::io::Result<Vec<u8>>,
    var: impl Fn(&str) -> Option<String>,
) -> Outcome {
    let fail = |version: &str, e: CniError| {
        eprintln!("kxdp-cni: {command}: {e}");
        Outcome {
            stdout: e.to_json(version),
            ok: false,
        }
    };
    let cmd = match Command::parse(command) {
        Ok(c) => c,
        Err(e) => return fail(types::DEFAULT_VERSION, e),
    };
    if cmd == Command::Version {
        return Outcome {
            stdout: types::version_json(),
            ok: true,
        };
    }
    let raw = match stdin {
        Ok(raw) => raw,
        Err(e) => {
            return fail(
                types::DEFAULT_VERSION,
                CniError::new(
                    IO_FAILURE,
                    format!("cannot read the network configuration from stdin: {e}"),
                ),
            )
        }
    };
    let (version, conf) = NetConf::parse(&raw);
    let conf = match conf {
        Ok(c) => c,
        Err(e) => return fail(&version, e),
    };
    let env = match CniEnv::from_vars(cmd, var) {
        Ok(env) => env,
        Err(e) => return fail(&version, e),
    };
    let result = match cmd {
        Command::Add => plugin::add(&env, &conf, &raw)
            .map(|r| serde_json::to_string(&r).expect("a CNI result always serializes")),
        Command::Del => plugin::del(&env, &conf, &raw).map(|()| String::new()),
        Command::Check => plugin::check(&env, &conf, &raw).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    };
    match result {
        Ok(stdout) => Outcome { stdout, ok: true },
        Err(e) => fail(
            &version,
            CniError {
                msg: format!("{} {}: {}", cmd.as_str(), plugin::pod_name(&env), e.msg),
                ..e
            },
        ),
    }
}
