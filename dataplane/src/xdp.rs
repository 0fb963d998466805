//! Loading and attaching the XDP program (bpf/kxdp.bpf.c) with libbpf-rs.
//!
//! One program instance (object) per attached interface, each with its own
//! `cfg` and `xsks` maps. Attaching first installs the program in pass-all
//! mode; the socket for each queue goes into `xsks`; only then does `cfg`
//! switch the interface to redirecting, so no frame is redirected to a queue
//! without a socket (and bpf_redirect_map falls back to XDP_PASS anyway).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, RawFd};

use kxdp_core::prefix::Prefix;
use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, Xdp, XdpFlags};

static BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kxdp.bpf.o"));

const MODE_OFF: u32 = 0;
const MODE_POD: u32 = 1;
const MODE_UPLINK: u32 = 2;

/// Indexes of the program's `stats` map.
const STAT_REDIRECTED: u32 = 0;
const STAT_PASSED: u32 = 1;
const STAT_UNKNOWN_VTEP: u32 = 2;

/// Which XDP hook to attach at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Driver (native) mode, falling back to generic if the driver lacks it.
    Auto,
    /// Driver mode only (veth, most NICs).
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

/// What the program on an interface redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything (a pod's veth).
    Pod,
    /// Only VXLAN to this node's VTEP address and port from a known VTEP
    /// (`set_vteps`), and outside frontends (`set_node_ports`).
    /// Also egress's way back: the SNAT ports, ICMP errors quoting them,
    /// and anything to `pod_cidr`.
    Uplink {
        vtep_ip: Ipv4Addr,
        vxlan_port: u16,
        pod_cidr: Prefix,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP program: {0}")]
    Load(libbpf_rs::Error),
    #[error("attaching XDP to ifindex {ifindex}: {err}")]
    Attach { ifindex: u32, err: libbpf_rs::Error },
    #[error("XDP map {map}: {err}")]
    Map {
        map: &'static str,
        err: libbpf_rs::Error,
    },
}

/// The program attached to one interface; detached on drop.
pub struct Attachment {
    obj: Object,
    ifindex: u32,
    flags: XdpFlags,
}

impl Attachment {
    /// Loads a fresh program instance and attaches it in pass-all mode,
    /// replacing any program a previous (crashed) run left there.
    pub fn attach(ifindex: u32, mode: XdpMode) -> Result<Attachment, XdpError> {
        let obj = ObjectBuilder::default()
            .open_memory(BPF_OBJECT)
            .and_then(|o| o.load())
            .map_err(XdpError::Load)?;
        let tries: &[XdpFlags] = match mode {
            XdpMode::Auto => &[XdpFlags::DRV_MODE, XdpFlags::SKB_MODE],
            XdpMode::Native => &[XdpFlags::DRV_MODE],
            XdpMode::Generic => &[XdpFlags::SKB_MODE],
        };
        let mut last = None;
        for flags in tries {
            let res = {
                let prog = obj
                    .progs()
                    .find(|p| p.name() == "kxdp_xdp")
                    .expect("kxdp_xdp is in the object");
                Xdp::new(prog.as_fd())
                    .attach(ifindex as i32, XdpFlags::from_bits_retain(flags.bits()))
            };
            match res {
                Ok(()) => {
                    return Ok(Attachment {
                        obj,
                        ifindex,
                        flags: XdpFlags::from_bits_retain(flags.bits()),
                    })
                }
                Err(err) => last = Some(err),
            }
        }
        Err(XdpError::Attach {
            ifindex,
            err: last.expect("at least one mode tried"),
        })
    }

    /// "native" or "generic".
    pub fn mode_name(&self) -> &'static str {
        if self.flags.contains(XdpFlags::SKB_MODE) {
            "generic"
        } else {
            "native"
        }
    }

    fn map(&self, name: &'static str) -> libbpf_rs::Map<'_> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("map {name} is in the object"))
    }

    /// Puts the AF_XDP socket for `queue` into the program's XSKMAP.
    pub fn set_socket(&self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        self.map("xsks")
            .update(
                &queue.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|err| XdpError::Map { map: "xsks", err })
    }

    /// Removes the socket for `queue` (frames for it go to the kernel).
    pub fn clear_socket(&self, queue: u32) {
        let _ = self.map("xsks").delete(&queue.to_ne_bytes());
    }

    /// Switches the program to redirect per `role` (or back to pass-all).
    pub fn set_role(&self, role: Option<Role>) -> Result<(), XdpError> {
        let none = Prefix::new(Ipv4Addr::UNSPECIFIED, 0);
        let (mode, ip, port, pods) = match role {
            None => (MODE_OFF, [0; 4], 0u16, none),
            Some(Role::Pod) => (MODE_POD, [0; 4], 0, none),
            Some(Role::Uplink {
                vtep_ip,
                vxlan_port,
                pod_cidr,
            }) => (MODE_UPLINK, vtep_ip.octets(), vxlan_port, pod_cidr),
        };
        // struct kxdp_cfg { u32 mode; be32 vtep_ip; be16 vxlan_port; u16 pad;
        //                   be32 pod_net; be32 pod_mask; }
        let mask = u32::MAX.checked_shl(32 - u32::from(pods.len)).unwrap_or(0);
        let mut v = [0u8; 20];
        v[0..4].copy_from_slice(&mode.to_ne_bytes());
        v[4..8].copy_from_slice(&ip);
        v[8..10].copy_from_slice(&port.to_be_bytes());
        v[12..16].copy_from_slice(&pods.addr.octets());
        v[16..20].copy_from_slice(&mask.to_be_bytes());
        self.map("cfg")
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(|err| XdpError::Map { map: "cfg", err })
    }

    /// Makes exactly `frontends` ((address, protocol, port)) the outside
    /// frontends the uplink program redirects: NodePorts on each NodePort
    /// address, external and LoadBalancer IPs.
    pub fn set_node_ports(&self, frontends: &[(Ipv4Addr, u8, u16)]) -> Result<(), XdpError> {
        // struct frontend_key { be32 addr; u32 proto_port; }
        let keys = frontends.iter().map(|&(addr, proto, port)| {
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&addr.octets());
            k[4..].copy_from_slice(&((proto as u32) << 16 | port as u32).to_ne_bytes());
            k
        });
        self.set_keys("nodeports", keys.collect())
    }

    /// Makes exactly `vteps` the senders whose VXLAN the uplink program
    /// redirects; VXLAN from any other address is dropped there.
    pub fn set_vteps(&self, vteps: &[Ipv4Addr]) -> Result<(), XdpError> {
        self.set_keys("vteps", vteps.iter().map(Ipv4Addr::octets).collect())
    }

    /// Makes exactly `want` the keys of the set `map` (values unused).
    fn set_keys<const N: usize>(
        &self,
        map: &'static str,
        want: BTreeSet<[u8; N]>,
    ) -> Result<(), XdpError> {
        let m = self.map(map);
        let have: Vec<Vec<u8>> = m.keys().collect();
        for k in have {
            if !<[u8; N]>::try_from(k.as_slice()).is_ok_and(|k| want.contains(&k)) {
                let _ = m.delete(&k);
            }
        }
        for k in want {
            m.update(&k, &[1], MapFlags::ANY)
                .map_err(|err| XdpError::Map { map, err })?;
        }
        Ok(())
    }

    /// Frames (redirected to AF_XDP, passed to the kernel), summed over CPUs.
    pub fn stats(&self) -> (u64, u64) {
        (self.stat(STAT_REDIRECTED), self.stat(STAT_PASSED))
    }

    /// VXLAN frames from addresses that are no remote node's VTEP, dropped
    /// by the program, summed over CPUs.
    pub fn unknown_vtep_drops(&self) -> u64 {
        self.stat(STAT_UNKNOWN_VTEP)
    }

    fn stat(&self, k: u32) -> u64 {
        self.map("stats")
            .lookup_percpu(&k.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|cpus| {
                cpus.iter()
                    .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])))
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let prog = self.obj.progs().find(|p| p.name() == "kxdp_xdp");
        if let Some(prog) = prog {
            // The interface may already be gone (pod deleted): nothing to do.
            let _ = Xdp::new(prog.as_fd()).detach(
                self.ifindex as i32,
                XdpFlags::from_bits_retain(self.flags.bits()),
            );
        }
    }
}
