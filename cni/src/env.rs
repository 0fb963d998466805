//! The `CNI_*` environment variables, validated per command as the spec
//! requires them (code 4, "invalid necessary environment variables").

use std::path::PathBuf;

use crate::error::{CniError, Result, INVALID_ENV};

/// The longest container ID taken: the pod's name in kxdp-control is
/// `<container id>/<ifname>` (at most 253 characters there) and the host veth's
/// alias `kxdp-cni:<container id>/<ifname>` (at most 255 bytes in Linux).
pub const MAX_CONTAINER_ID: usize = 200;

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            "" => Err(CniError::new(INVALID_ENV, "CNI_COMMAND is not set")),
            other => Err(CniError::new(
                INVALID_ENV,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The validated environment of an ADD, DEL or CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Required for ADD and CHECK; DEL may come without one (the container's
    /// namespace is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` key/value pairs; kxdp-cni uses `K8S_POD_NAMESPACE` (the
    /// pod's namespace, for network policy) and checks the form of all.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where the delegated IPAM plugin is looked up.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads and validates the variables `command` needs. `get` returns a
    /// variable's value (empty or `None` when unset).
    pub fn from_vars(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<CniEnv> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| CniError::new(INVALID_ENV, format!("{name} is not set")))
        };

        let container_id = required("CNI_CONTAINERID")?;
        if container_id.len() > MAX_CONTAINER_ID
            || !container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {container_id:?}: 1-{MAX_CONTAINER_ID} letters, digits, '_', '.' or '-'"
                ),
            ));
        }

        let netns = match command {
            Command::Del => var("CNI_NETNS").map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };

        let ifname = required("CNI_IFNAME")?;
        check_ifname(&ifname)?;

        let args = parse_args(&var("CNI_ARGS").unwrap_or_default())?;

        let path: Vec<PathBuf> = required("CNI_PATH")?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();

        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The container's namespace; only ADD and CHECK, where it is required.
    pub fn netns(&self) -> Result<&PathBuf> {
        self.netns
            .as_ref()
            .ok_or_else(|| CniError::new(INVALID_ENV, "CNI_NETNS is not set"))
    }
}

/// A Linux interface name ([`kxdp_proto::is_ifname`]).
pub fn check_ifname(name: &str) -> Result<()> {
    if kxdp_proto::is_ifname(name) {
        Ok(())
    } else {
        Err(CniError::new(
            INVALID_ENV,
            format!(
                "CNI_IFNAME {name:?} is not an interface name (1-15 printable characters, no '/' or ':')"
            ),
        ))
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by ';'.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>> {
    text.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                INVALID_ENV,
                format!("CNI_ARGS: {kv:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc-123_x.y"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAME=a;IgnoreUnknown=1"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn full_environment_parses() {
        let e = CniEnv::from_vars(Command::Add, env(FULL)).unwrap();
        assert_eq!(e.container_id, "abc-123_x.y");
        assert_eq!(e.netns.as_deref(), Some("/var/run/netns/x".as_ref()));
        assert_eq!(e.args.len(), 2);
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn netns_is_required_except_for_del() {
        let without: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        for cmd in [Command::Add, Command::Check] {
            let err = CniEnv::from_vars(cmd, env(&without)).unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert!(err.msg.contains("CNI_NETNS"), "{err}");
        }
        let del = CniEnv::from_vars(Command::Del, env(&without)).unwrap();
        assert_eq!(del.netns, None);
    }

    #[test]
    fn bad_values_are_code_4() {
        for (key, value) in [
            ("CNI_CONTAINERID", "a b"),
            ("CNI_CONTAINERID", ""),
            ("CNI_CONTAINERID", &"a".repeat(MAX_CONTAINER_ID + 1)),
            ("CNI_IFNAME", "eth0/1"),
            ("CNI_IFNAME", "averyveryverylongname"),
            ("CNI_ARGS", "novalue"),
            ("CNI_PATH", ""),
        ] {
            let vars: Vec<_> = FULL
                .iter()
                .map(|&(k, v)| if k == key { (k, value) } else { (k, v) })
                .collect();
            let err = CniEnv::from_vars(Command::Add, env(&vars)).unwrap_err();
            assert_eq!(err.code, INVALID_ENV, "{key}={value}: {err}");
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(Command::parse("ADD").unwrap(), Command::Add);
        assert_eq!(Command::parse("").unwrap_err().code, INVALID_ENV);
        assert_eq!(Command::parse("GC").unwrap_err().code, INVALID_ENV);
    }
}
