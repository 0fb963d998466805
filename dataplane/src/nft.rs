//! The node kernel's way to its own NodePorts and external IPs. The kernel
//! delivers traffic to its own addresses locally, never through kxdp, so
//! (as kube-proxy does in OUTPUT) the dataplane keeps an nftables table
//! `ip kxdp` in its network namespace whose `nat output` chain DNATs
//! locally sent (address, protocol, port) of every outside frontend to the
//! service's ClusterIP and port. The kernel then routes that over the host
//! veth to kxdp (walk 5), which SNATs it to the gateway address
//! (`nat.rs`: the source is still the node's address), so replies come back
//! the same way and the kernel's conntrack undoes the DNAT.
//!
//! The table is written whole in one `nft -f -` transaction (add, delete,
//! define: idempotent whatever was there, a crashed run's table included),
//! only when it changes, and deleted when the engine stops.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One DNAT: (address, protocol, port) -> (ClusterIP, port).
pub type Dnat = ((Ipv4Addr, u8, u16), (Ipv4Addr, u16));

/// The table as last written.
#[derive(Debug, Default)]
pub struct NatOutput {
    applied: Option<String>,
}

impl NatOutput {
    /// Makes the table hold exactly `rules` (none: no table).
    pub fn sync(&mut self, rules: &[Dnat]) {
        let script = ruleset(rules);
        if self.applied.as_deref() == Some(script.as_str()) {
            return;
        }
        match nft(&script) {
            Ok(()) => {
                log::info!("nftables: {} local NodePort/external IP DNATs", rules.len());
                self.applied = Some(script);
            }
            Err(e) => log::error!("nftables table ip kxdp: {e}"),
        }
    }

    /// Deletes the table, if this process wrote it.
    pub fn clear(&mut self) {
        if self.applied.take().is_some() {
            if let Err(e) = nft(&ruleset(&[])) {
                log::warn!("removing nftables table ip kxdp: {e}");
            }
        }
    }
}

impl Drop for NatOutput {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The `nft -f` script that leaves exactly `rules` in table `ip kxdp`.
pub fn ruleset(rules: &[Dnat]) -> String {
    let mut s = String::from("table ip kxdp {}\ndelete table ip kxdp\n");
    if rules.is_empty() {
        return s;
    }
    let elements: Vec<String> = rules
        .iter()
        .map(|((addr, proto, port), (to, to_port))| {
            let proto = if *proto == 17 { "udp" } else { "tcp" };
            format!("{addr} . {proto} . {port} : {to} . {to_port}")
        })
        .collect();
    s.push_str(&format!(
        "table ip kxdp {{\n  map frontends {{\n    type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n    elements = {{ {} }}\n  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    dnat ip to ip daddr . meta l4proto . th dport map @frontends\n  }}\n}}\n",
        elements.join(", ")
    ));
    s
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_the_table_whole_or_removes_it() {
        let empty = ruleset(&[]);
        assert_eq!(empty, "table ip kxdp {}\ndelete table ip kxdp\n");
        let s = ruleset(&[
            (
                (Ipv4Addr::new(172, 30, 0, 11), 6, 30080),
                (Ipv4Addr::new(10, 96, 0, 10), 80),
            ),
            (
                (Ipv4Addr::new(192, 0, 2, 80), 17, 53),
                (Ipv4Addr::new(10, 96, 0, 10), 53),
            ),
        ]);
        assert!(s.starts_with(&empty), "{s}");
        assert!(s.contains(
            "elements = { 172.30.0.11 . tcp . 30080 : 10.96.0.10 . 80, 192.0.2.80 . udp . 53 : 10.96.0.10 . 53 }"
        ));
        assert!(s.contains("type nat hook output priority -100;"));
    }
}
