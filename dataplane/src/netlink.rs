//! Blocking rtnetlink (`NETLINK_ROUTE`) client for the control thread.
//!
//! The dataplane resolves underlay next-hop MACs without static
//! configuration: it asks the kernel for the route to a destination
//! ([`Netlink::route_get`]), mirrors the kernel's IPv4 neighbour table
//! ([`Netlink::neighbours`]) and asks the kernel to resolve, and keep
//! resolved, the next hops it needs ([`Netlink::resolve`]). The same binary
//! then works on a flat L2 underlay and on a routed one.
//!
//! Everything here is synchronous and may block for up to the reply timeout
//! (2 s), so it belongs on a control thread, never on the packet path. A
//! [`Netlink`] talks to the network namespace it was created in, whatever
//! namespace the calling thread is in later.
//!
//! Wire format: `netlink-packet-route` builds and parses the rtnetlink
//! messages (`rtmsg`, `ndmsg`, `ifinfomsg` and their attributes, including
//! `NDA_FLAGS_EXT`/`NTF_EXT_MANAGED`); `netlink-packet-core` frames them and
//! decodes `NLMSG_ERROR`/`NLMSG_DONE`. Only the extended-ack error string
//! is read by hand (core 0.8 keeps it as bytes).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one request waits for the kernel's next reply message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a dump is retried when the kernel flags it as interrupted.
const DUMP_ATTEMPTS: usize = 3;

const NLMSG_HDR_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended-ack error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

const NUD_VALID: u16 = libc::NUD_REACHABLE
    | libc::NUD_STALE
    | libc::NUD_DELAY
    | libc::NUD_PROBE
    | libc::NUD_PERMANENT
    | libc::NUD_NOARP;

/// Blocking rtnetlink socket with its own sequence numbers.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    timeout: Duration,
    /// Whether the kernel honours `NTF_EXT_MANAGED`; `None` until the first
    /// [`Netlink::resolve`] that had to ask finds out.
    managed: Option<bool>,
}

/// The kernel's route to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Output interface. For a local destination this is the loopback
    /// device, as `ip route get` shows.
    pub oif: u32,
    /// The next hop, or `None` when the destination is on-link.
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would use.
    pub prefsrc: Option<Ipv4Addr>,
}

/// One unicast IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub oif: u32,
    /// `None`: on-link.
    pub gateway: Option<Ipv4Addr>,
}

/// One IPv4 neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    /// The link-layer address, when the kernel reported a 6-byte one (it
    /// reports one only for states that hold an address; devices without
    /// link-layer addresses give `None` even when usable).
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` bits; see [`state_usable`].
    pub state: u16,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// All zero when the device has no 6-byte hardware address.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Administratively up and operationally running (`IFF_UP` and
    /// `IFF_RUNNING`: carrier present), i.e. it can pass traffic now.
    pub up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused: `code` is the positive errno (e.g.
    /// `libc::ENETUNREACH`), `what` names the request and carries the
    /// kernel's extended-ack message when it sent one.
    #[error("netlink error {code} for {what}")]
    Kernel { code: i32, what: String },
    #[error("netlink: unexpected reply: {0}")]
    Protocol(String),
}

/// Whether a neighbour state holds a usable MAC (REACHABLE, STALE, DELAY,
/// PROBE, PERMANENT, NOARP): the kernel's `NUD_VALID`.
pub fn state_usable(state: u16) -> bool {
    state & NUD_VALID != 0
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network
    /// namespace.
    pub fn new() -> Result<Self, Error> {
        Self::with_timeout(REPLY_TIMEOUT)
    }

    fn with_timeout(timeout: Duration) -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Connected to the kernel: other processes cannot unicast to us.
        socket.connect(&SocketAddr::new(0, 0))?;
        // Best effort (older kernels lack them): kernel error strings, and
        // errors that echo only the request's header.
        if let Err(e) = socket.set_ext_ack(true) {
            log::debug!("netlink: NETLINK_EXT_ACK unavailable: {e}");
        }
        if let Err(e) = socket.set_cap_ack(true) {
            log::debug!("netlink: NETLINK_CAP_ACK unavailable: {e}");
        }
        set_recv_timeout(&socket, timeout)?;
        Ok(Netlink {
            socket,
            seq: 0,
            timeout,
            managed: None,
        })
    }

    /// The kernel's route to `dst` (RTM_GETROUTE, like `ip route get`):
    /// output interface, gateway if not on-link.
    ///
    /// No route gives `Error::Kernel` with `ENETUNREACH`; unreachable,
    /// prohibit and blackhole routes give their errno too. A route whose
    /// next hop is IPv6 (`RTA_VIA`) is an `Error::Protocol`.
    pub fn route_get(&mut self, dst: Ipv4Addr) -> Result<RouteInfo, Error> {
        let what = format!("RTM_GETROUTE {dst}");
        let reply = self.transact(route_request(dst), 0, &what)?;
        let msg = reply
            .messages
            .first()
            .ok_or_else(|| Error::Protocol(format!("{what}: no route in reply")))?;
        parse_route(msg, &what)
    }

    /// The main table's unicast IPv4 routes with an output interface (an
    /// `RTM_GETROUTE` dump, like `ip route show`). Multipath routes are
    /// skipped: their next hops are nested, and a node's egress has one.
    pub fn routes(&mut self) -> Result<Vec<Route>, Error> {
        let what = "RTM_GETROUTE dump";
        let mut rtm = RouteMessage::default();
        rtm.header.address_family = AddressFamily::Inet;
        let reply = self.transact(RouteNetlinkMessage::GetRoute(rtm), NLM_F_DUMP, what)?;
        let mut out = Vec::new();
        for msg in &reply.messages {
            let RouteNetlinkMessage::NewRoute(m) = msg else {
                continue;
            };
            let h = &m.header;
            let mut table = u32::from(h.table);
            let (mut dst, mut oif, mut gateway) = (Ipv4Addr::UNSPECIFIED, None, None);
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    _ => {}
                }
            }
            if h.address_family != AddressFamily::Inet
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || h.kind != RouteType::Unicast
            {
                continue;
            }
            if let Some(oif) = oif {
                out.push(Route {
                    dst,
                    prefix_len: h.destination_prefix_length,
                    oif,
                    gateway,
                });
            }
        }
        Ok(out)
    }

    /// Every IPv4 address of the namespace's interfaces (an `RTM_GETADDR`
    /// dump, like `ip -4 addr show`): (ifindex, address).
    pub fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr)>, Error> {
        let what = "RTM_GETADDR dump";
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let reply = self.transact(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, what)?;
        let mut out = Vec::new();
        for msg in &reply.messages {
            let RouteNetlinkMessage::NewAddress(m) = msg else {
                continue;
            };
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on point-to-point links); without it, IFA_ADDRESS.
            let (mut local, mut address) = (None, None);
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push((m.header.index, ip));
            }
        }
        Ok(out)
    }

    /// All IPv4 neighbours (RTM_GETNEIGH dump).
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, Error> {
        Ok(self
            .neighbour_dump()?
            .into_iter()
            .map(|e| e.neighbour)
            .collect())
    }

    /// Asks the kernel to resolve `ip` on `ifindex` and keep it resolved.
    ///
    /// Sends the `RTM_NEWNEIGH` of `ip neigh add IP dev D managed use`:
    /// state `NUD_NONE`, `NDA_FLAGS_EXT` = `NTF_EXT_MANAGED` (kernel >=
    /// 5.16: the kernel re-probes the entry periodically, so it stays valid
    /// even though AF_XDP traffic never confirms it) and `NTF_USE` (start
    /// resolving now; it also makes the request work on kernels that ignore
    /// `NDA_FLAGS_EXT` without an error). The request has `NLM_F_CREATE`
    /// but not iproute2's `NLM_F_EXCL`, nor `NLM_F_REPLACE`: an existing
    /// entry is reused, and with `NTF_USE`/managed the kernel keeps its state
    /// and MAC (it only adds the managed flag), while a FAILED or INCOMPLETE
    /// one is probed again, which `NLM_F_EXCL` (`EEXIST`) would prevent.
    ///
    /// Left alone: PERMANENT entries (the kernel would clear
    /// `NUD_PERMANENT`), NOARP entries (nothing to resolve) and entries that
    /// are already managed and usable.
    ///
    /// If the kernel refuses the managed flag (`EINVAL`/`EOPNOTSUPP`), or
    /// ignores it, this falls back to plain `NTF_USE`, a one-shot resolution:
    /// the caller must then call `resolve` again when the entry goes stale.
    /// Returns once the kernel accepted the request; resolution itself is
    /// asynchronous (watch [`Netlink::neighbours`]).
    pub fn resolve(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<(), Error> {
        if let Some(entry) = self.neighbour(ifindex, ip)? {
            let state = entry.neighbour.state;
            if state & (libc::NUD_PERMANENT | libc::NUD_NOARP) != 0 {
                return Ok(());
            }
            if entry.is_managed() && state_usable(state) {
                return Ok(());
            }
        }
        if self.managed != Some(false) {
            match self.neigh_use(ifindex, ip, true) {
                Ok(()) => {
                    if self.managed.is_none() {
                        self.check_managed(ifindex, ip)?;
                    }
                    return Ok(());
                }
                Err(Error::Kernel { code, what })
                    if code == libc::EINVAL || code == libc::EOPNOTSUPP =>
                {
                    // Only conclude the kernel lacks managed neighbours if
                    // the plain request is accepted.
                    self.neigh_use(ifindex, ip, false)?;
                    log::warn!(
                        "netlink: kernel refused a managed neighbour ({what}: errno {code}); \
                         falling back to one-shot NTF_USE resolution"
                    );
                    self.managed = Some(false);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.neigh_use(ifindex, ip, false)
    }

    /// A link by name (RTM_GETLINK): index, MAC, MTU, up. `Ok(None)` when
    /// there is no such interface.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
            return Ok(None);
        }
        let what = format!("RTM_GETLINK {name}");
        let mut ifi = LinkMessage::default();
        ifi.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]),
        ];
        let reply = match self.transact(RouteNetlinkMessage::GetLink(ifi), 0, &what) {
            Ok(reply) => reply,
            Err(Error::Kernel { code, .. }) if code == libc::ENODEV => return Ok(None),
            Err(e) => return Err(e),
        };
        let msg = reply
            .messages
            .first()
            .ok_or_else(|| Error::Protocol(format!("{what}: no link in reply")))?;
        parse_link(msg, &what).map(Some)
    }

    /// Sends `RTM_NEWNEIGH` with `NTF_USE`, and `NTF_EXT_MANAGED` if
    /// `managed`; waits for the kernel's ACK.
    fn neigh_use(&mut self, ifindex: u32, ip: Ipv4Addr, managed: bool) -> Result<(), Error> {
        let what = format!(
            "RTM_NEWNEIGH {ip} ifindex {ifindex} ({})",
            if managed { "managed" } else { "use" }
        );
        // State NUD_NONE (the default), like `ip neigh add ... use`.
        let mut ndm = ndmsg(ifindex, Some(ip));
        ndm.header.flags = NeighbourFlags::Use;
        if managed {
            let ext = NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed);
            ndm.attributes.push(ext);
        }
        let request = RouteNetlinkMessage::NewNeighbour(ndm);
        self.transact(request, NLM_F_CREATE | NLM_F_ACK, &what)?;
        Ok(())
    }

    /// After the first accepted managed request: did the kernel keep the
    /// flag? Kernels before 5.16 ignore `NDA_FLAGS_EXT` without an error.
    fn check_managed(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<(), Error> {
        match self.neighbour(ifindex, ip)? {
            Some(entry) if entry.is_managed() => self.managed = Some(true),
            Some(_) => {
                log::warn!(
                    "netlink: kernel ignored NTF_EXT_MANAGED (before 5.16?); neighbours are \
                     resolved once (NTF_USE) and must be re-resolved when they go stale"
                );
                self.managed = Some(false);
            }
            // Gone already (flushed, device down): nothing learnt.
            None => {}
        }
        Ok(())
    }

    /// One neighbour entry: `RTM_GETNEIGH` for a single entry (kernel >=
    /// 5.0), or a filtered dump if the kernel cannot answer that.
    fn neighbour(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<Option<NeighEntry>, Error> {
        let what = format!("RTM_GETNEIGH {ip} ifindex {ifindex}");
        let request = RouteNetlinkMessage::GetNeighbour(ndmsg(ifindex, Some(ip)));
        match self.transact(request, 0, &what) {
            Ok(reply) => {
                for msg in &reply.messages {
                    if let Some(entry) = parse_neigh(msg, &what)? {
                        if entry.neighbour.ifindex == ifindex && entry.neighbour.ip == ip {
                            return Ok(Some(entry));
                        }
                    }
                }
                Ok(None)
            }
            Err(Error::Kernel { code, .. }) if code == libc::ENOENT => Ok(None),
            Err(Error::Kernel { code, .. }) if code == libc::ENODEV => Ok(None),
            Err(Error::Kernel { code, what }) => {
                log::debug!("netlink: {what} failed (errno {code}); dumping instead");
                Ok(self
                    .neighbour_dump()?
                    .into_iter()
                    .find(|e| e.neighbour.ifindex == ifindex && e.neighbour.ip == ip))
            }
            Err(e) => Err(e),
        }
    }

    fn neighbour_dump(&mut self) -> Result<Vec<NeighEntry>, Error> {
        let what = "RTM_GETNEIGH dump";
        let mut attempt = 1;
        loop {
            let request = RouteNetlinkMessage::GetNeighbour(ndmsg(0, None));
            let reply = self.transact(request, NLM_F_DUMP, what)?;
            if reply.interrupted && attempt < DUMP_ATTEMPTS {
                attempt += 1;
                continue;
            }
            if reply.interrupted {
                log::warn!("netlink: neighbour dump still inconsistent after {attempt} attempts");
            }
            let mut entries = Vec::with_capacity(reply.messages.len());
            for msg in &reply.messages {
                if let Some(entry) = parse_neigh(msg, what)? {
                    entries.push(entry);
                }
            }
            return Ok(entries);
        }
    }

    fn next_seq(&mut self) -> u32 {
        // Never 0: kernel notifications carry sequence number 0.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends one request and collects its reply messages: until
    /// `NLMSG_DONE` for a dump, until the ACK if `NLM_F_ACK` was asked for,
    /// otherwise until the first (non-multipart) message. Messages with
    /// another sequence number (replies to an earlier request that timed out
    /// or failed half-way) are skipped.
    fn transact(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Reply, Error> {
        let seq = self.next_seq();
        let packet = encode(request, flags, seq);
        let sent = self.socket.send(&packet, 0)?;
        if sent != packet.len() {
            return Err(Error::Protocol(format!(
                "{what}: sent {sent} of {} bytes",
                packet.len()
            )));
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let want_ack = flags & NLM_F_ACK != 0;
        let mut reply = Reply::default();
        let mut deadline = Instant::now() + self.timeout;
        loop {
            let datagram = self.recv_datagram(what)?;
            let mut rest = &datagram[..];
            while rest.len() >= NLMSG_HDR_LEN {
                let header = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| Error::Protocol(format!("{what}: {e}")))?;
                let (len, kind, msg_seq) = (
                    header.length() as usize,
                    header.message_type(),
                    header.sequence_number(),
                );
                let (raw, tail) = rest.split_at(len);
                rest = tail.get(align4(len) - len..).unwrap_or(&[]);
                // Checked before parsing: a stale reply is skipped even if
                // it would not parse.
                if msg_seq != seq {
                    log::debug!(
                        "netlink: skipping message type {kind} seq {msg_seq} (waiting for {seq})"
                    );
                    continue;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                    .map_err(|e| Error::Protocol(format!("{what}: {e}")))?;
                deadline = Instant::now() + self.timeout;
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    reply.interrupted = true;
                }
                match msg.payload {
                    NetlinkPayload::Error(err) => match err.code {
                        // An ACK: the request is complete.
                        None => return Ok(reply),
                        Some(code) => {
                            let what = match extack_message(msg.header.flags, &err.header) {
                                Some(text) => format!("{what}: {text}"),
                                None => what.to_string(),
                            };
                            return Err(Error::Kernel {
                                code: code.get().saturating_abs(),
                                what,
                            });
                        }
                    },
                    NetlinkPayload::Done(done) => {
                        if done.code != 0 {
                            return Err(Error::Kernel {
                                code: done.code.saturating_abs(),
                                what: what.to_string(),
                            });
                        }
                        return Ok(reply);
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        let multi = msg.header.flags & NLM_F_MULTIPART != 0;
                        reply.messages.push(inner);
                        if !dump && !want_ack && !multi {
                            return Ok(reply);
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(Error::Protocol(format!("{what}: NLMSG_OVERRUN")))
                    }
                    _ => {} // NLMSG_NOOP
                }
            }
            if Instant::now() > deadline {
                return Err(timed_out(what, self.timeout));
            }
        }
    }

    /// One datagram from the kernel; a receive timeout becomes an
    /// `io::ErrorKind::TimedOut` error.
    fn recv_datagram(&self, what: &str) -> Result<Vec<u8>, Error> {
        loop {
            match self.socket.recv_from_full() {
                Ok((buf, from)) if from.port_number() == 0 => return Ok(buf),
                Ok((_, from)) => {
                    log::debug!("netlink: ignoring message from port {}", from.port_number());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(timed_out(what, self.timeout));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("seq", &self.seq)
            .field("timeout", &self.timeout)
            .field("managed", &self.managed)
            .finish_non_exhaustive()
    }
}

/// Sets `SO_RCVTIMEO` without unsafe code: netlink-sys has no setter, but a
/// duplicate of the descriptor shares the socket, and std sets the option on
/// any socket through `UdpSocket` (the duplicate is closed right after).
fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let dup = socket.as_fd().try_clone_to_owned()?;
    std::net::UdpSocket::from(dup).set_read_timeout(Some(timeout))
}

fn timed_out(what: &str, timeout: Duration) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no reply to {what} within {timeout:?}"),
    ))
}

#[derive(Debug, Default)]
struct Reply {
    messages: Vec<RouteNetlinkMessage>,
    /// The kernel flagged the dump as inconsistent (`NLM_F_DUMP_INTR`).
    interrupted: bool,
}

/// A neighbour with the flags [`Netlink::resolve`] needs.
#[derive(Debug, Clone, Copy)]
struct NeighEntry {
    neighbour: Neighbour,
    /// `NDA_FLAGS_EXT`.
    flags_ext: NeighbourExtFlags,
}

impl NeighEntry {
    fn is_managed(&self) -> bool {
        self.flags_ext.contains(NeighbourExtFlags::Managed)
    }
}

fn encode(request: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    msg.finalize();
    let mut packet = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut packet);
    packet
}

/// `RTM_GETROUTE` for the host route to `dst`.
fn route_request(dst: Ipv4Addr) -> RouteNetlinkMessage {
    let mut rtm = RouteMessage::default();
    rtm.header.address_family = AddressFamily::Inet;
    rtm.header.destination_prefix_length = 32;
    rtm.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet(dst))];
    RouteNetlinkMessage::GetRoute(rtm)
}

/// An IPv4 `ndmsg` on `ifindex` (0: any), for `ip` if given; state and
/// flags zero.
fn ndmsg(ifindex: u32, ip: Option<Ipv4Addr>) -> NeighbourMessage {
    let mut ndm = NeighbourMessage::default();
    ndm.header.family = AddressFamily::Inet;
    ndm.header.ifindex = ifindex;
    if let Some(ip) = ip {
        let dst = NeighbourAttribute::Destination(NeighbourAddress::Inet(ip));
        ndm.attributes.push(dst);
    }
    ndm
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The extended-ack error string of an `NLMSG_ERROR` whose payload after
/// the error code is `payload`, if the kernel attached one.
fn extack_message(nlmsg_flags: u16, payload: &[u8]) -> Option<String> {
    if nlmsg_flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The echoed request: only its header if capped, else all of it.
    let echoed = if nlmsg_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR_LEN
    } else {
        align4(NetlinkBuffer::new_checked(payload).ok()?.length() as usize)
    };
    for nla in NlasIterator::new(payload.get(echoed..)?) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let text = nla.value().split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

fn parse_route(msg: &RouteNetlinkMessage, what: &str) -> Result<RouteInfo, Error> {
    let RouteNetlinkMessage::NewRoute(rtm) = msg else {
        return Err(unexpected(msg, "RTM_NEWROUTE", what));
    };
    if rtm.header.address_family != AddressFamily::Inet {
        let family = u8::from(rtm.header.address_family);
        return Err(Error::Protocol(format!("{what}: family {family}")));
    }
    let (mut oif, mut gateway, mut prefsrc, mut via) = (None, None, None, false);
    for attr in &rtm.attributes {
        match attr {
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => prefsrc = Some(*ip),
            RouteAttribute::Via(_) => via = true,
            _ => {}
        }
    }
    if via && gateway.is_none() {
        return Err(Error::Protocol(format!(
            "{what}: the next hop is not IPv4 (RTA_VIA)"
        )));
    }
    let oif = oif.ok_or_else(|| Error::Protocol(format!("{what}: no RTA_OIF")))?;
    Ok(RouteInfo {
        oif,
        gateway,
        prefsrc,
    })
}

/// `None` for entries that are not IPv4 neighbours.
fn parse_neigh(msg: &RouteNetlinkMessage, what: &str) -> Result<Option<NeighEntry>, Error> {
    let RouteNetlinkMessage::NewNeighbour(ndm) = msg else {
        return Err(unexpected(msg, "RTM_NEWNEIGH", what));
    };
    let h = &ndm.header;
    if h.family != AddressFamily::Inet || h.flags.contains(NeighbourFlags::Proxy) {
        return Ok(None);
    }
    let (mut ip, mut mac, mut flags_ext) = (None, None, NeighbourExtFlags::empty());
    for attr in &ndm.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)) => ip = Some(*dst),
            NeighbourAttribute::LinkLayerAddress(lladdr) => {
                mac = <[u8; 6]>::try_from(lladdr.as_slice()).ok()
            }
            NeighbourAttribute::ExtFlags(ext) => flags_ext = *ext,
            _ => {}
        }
    }
    Ok(ip.map(|ip| NeighEntry {
        neighbour: Neighbour {
            ifindex: h.ifindex,
            ip,
            mac,
            state: h.state.into(),
        },
        flags_ext,
    }))
}

fn parse_link(msg: &RouteNetlinkMessage, what: &str) -> Result<Link, Error> {
    let RouteNetlinkMessage::NewLink(ifi) = msg else {
        return Err(unexpected(msg, "RTM_NEWLINK", what));
    };
    let (mut name, mut mac, mut mtu) = (String::new(), [0u8; 6], 0);
    for attr in &ifi.attributes {
        match attr {
            LinkAttribute::IfName(ifname) => name.clone_from(ifname),
            LinkAttribute::Address(lladdr) => {
                mac = <[u8; 6]>::try_from(lladdr.as_slice()).unwrap_or([0; 6])
            }
            LinkAttribute::Mtu(value) => mtu = *value,
            _ => {}
        }
    }
    Ok(Link {
        ifindex: ifi.header.index,
        name,
        mac,
        mtu,
        up: ifi
            .header
            .flags
            .contains(LinkFlags::Up | LinkFlags::Running),
    })
}

fn unexpected(msg: &RouteNetlinkMessage, expected: &str, what: &str) -> Error {
    Error::Protocol(format!(
        "{what}: message type {} instead of {expected}",
        msg.message_type()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_testkit::{require_root, unique_name, veth, NetNs};

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// Two namespaces joined by veth `x` (192.0.2.1/24, in `a`) <-> `y`
    /// (192.0.2.2/24, in `b`); fails the test unless root.
    fn pair() -> Option<(NetNs, NetNs)> {
        require_root();
        let a = NetNs::new(&unique_name("nl"));
        let b = NetNs::new(&unique_name("nl"));
        veth(&a, "x", &b, "y");
        a.ip(&["addr", "add", "192.0.2.1/24", "dev", "x"]);
        b.ip(&["addr", "add", "192.0.2.2/24", "dev", "y"]);
        Some((a, b))
    }

    /// `(ifindex, mac)` of `dev` in `ns`, from `ip -j link`.
    fn ip_link(ns: &NetNs, dev: &str) -> (u32, [u8; 6]) {
        let out = ns.ip(&["-j", "link", "show", "dev", dev]);
        let json = String::from_utf8(out.stdout).unwrap();
        let field = |key: &str| {
            let start = json.find(key).unwrap_or_else(|| panic!("{key} in {json}")) + key.len();
            json[start..].to_string()
        };
        let ifindex = field("\"ifindex\":");
        let ifindex: String = ifindex.chars().take_while(char::is_ascii_digit).collect();
        let address = field("\"address\":\"");
        let address = &address[..17];
        (ifindex.parse().unwrap(), parse_mac(address))
    }

    fn parse_mac(text: &str) -> [u8; 6] {
        let bytes: Vec<u8> = text
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    /// Polls the neighbour table for `ip` on `ifindex` until `done` holds or
    /// `limit` passes; returns every state seen and the last entry.
    fn watch(
        nl: &mut Netlink,
        ifindex: u32,
        ip: Ipv4Addr,
        limit: Duration,
        done: impl Fn(&Neighbour) -> bool,
    ) -> (Vec<u16>, Option<Neighbour>) {
        let start = Instant::now();
        let (mut seen, mut last) = (Vec::new(), None);
        while start.elapsed() < limit {
            last = nl
                .neighbours()
                .unwrap()
                .into_iter()
                .find(|n| n.ifindex == ifindex && n.ip == ip);
            if let Some(n) = last {
                seen.push(n.state);
                if done(&n) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (seen, last)
    }

    #[test]
    fn usable_states() {
        for s in [
            libc::NUD_REACHABLE,
            libc::NUD_STALE,
            libc::NUD_DELAY,
            libc::NUD_PROBE,
            libc::NUD_PERMANENT,
            libc::NUD_NOARP,
        ] {
            assert!(state_usable(s), "{s:#x}");
        }
        for s in [libc::NUD_NONE, libc::NUD_INCOMPLETE, libc::NUD_FAILED] {
            assert!(!state_usable(s), "{s:#x}");
        }
    }

    #[test]
    fn extack_string_is_extracted() {
        // Capped error: echoed nlmsghdr, then NLMSGERR_ATTR_MSG "bad\0".
        let mut payload = vec![0u8; NLMSG_HDR_LEN];
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"bad\0");
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        assert_eq!(extack_message(flags, &payload).as_deref(), Some("bad"));
        assert_eq!(extack_message(NLM_F_CAPPED, &payload), None);
    }

    #[test]
    fn receive_times_out() {
        // Nothing outstanding: a receive must give up, not hang.
        let nl = Netlink::with_timeout(Duration::from_millis(200)).unwrap();
        let start = Instant::now();
        match nl.recv_datagram("nothing") {
            Err(Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn stale_replies_are_skipped() {
        // Read-only queries about loopback, in whatever namespace this runs.
        let mut nl = Netlink::new().unwrap();
        // Two requests whose replies are never read, as if they had timed
        // out: an error (no such link) and a route.
        let seq = nl.next_seq();
        let mut ifi = LinkMessage::default();
        ifi.attributes = vec![LinkAttribute::IfName("nope".into())];
        let packet = encode(RouteNetlinkMessage::GetLink(ifi), 0, seq);
        nl.socket.send(&packet, 0).unwrap();
        let seq = nl.next_seq();
        let packet = encode(route_request(Ipv4Addr::LOCALHOST), 0, seq);
        nl.socket.send(&packet, 0).unwrap();

        let lo = nl.link("lo").unwrap().expect("lo exists");
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.name, "lo");
        let route = nl.route_get(Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(route.oif, 1);
    }

    #[test]
    fn link_by_name() {
        let Some((a, b)) = pair() else { return };
        let (ifindex, mac) = ip_link(&a, "x");
        let link = a.run(|| {
            let mut nl = Netlink::new().unwrap();
            (
                nl.link("x").unwrap(),
                nl.link("nope").unwrap(),
                nl.link("a-name-that-is-too-long").unwrap(),
                nl.link("lo").unwrap(),
            )
        });
        let (x, nope, long, lo) = link;
        let x = x.expect("x exists");
        assert_eq!(x.ifindex, ifindex);
        assert_eq!(x.mac, mac);
        assert_eq!(x.name, "x");
        assert_eq!(x.mtu, 1500);
        assert!(x.up);
        assert_eq!(nope, None);
        assert_eq!(long, None);
        let lo = lo.expect("lo exists");
        assert_eq!((lo.ifindex, lo.mac, lo.up), (1, [0; 6], true));

        // Peer down: x is admin up but has no carrier.
        b.ip(&["link", "set", "y", "down"]);
        let x = a.run(|| Netlink::new().unwrap().link("x").unwrap().unwrap());
        assert!(!x.up);
    }

    /// The main table's unicast routes, as `ip route` has them: on-link
    /// and via a gateway, with their interface; nothing of other tables.
    #[test]
    fn route_dump() {
        let Some((a, _b)) = pair() else { return };
        let (x, _) = ip_link(&a, "x");
        a.ip(&["route", "add", "default", "via", "192.0.2.2"]);
        a.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
        a.ip(&["route", "add", "blackhole", "203.0.113.0/24"]);
        a.ip(&[
            "route",
            "add",
            "10.9.0.0/16",
            "via",
            "192.0.2.2",
            "table",
            "7",
        ]);
        let mut routes = a.run(|| Netlink::new().unwrap().routes().unwrap());
        routes.sort_by_key(|r| (u32::from(r.dst), r.prefix_len));
        let r = |dst: [u8; 4], len, gateway| Route {
            dst: Ipv4Addr::from(dst),
            prefix_len: len,
            oif: x,
            gateway,
        };
        assert_eq!(
            routes,
            vec![
                r([0, 0, 0, 0], 0, Some(B)),
                r([192, 0, 2, 0], 24, None),
                r([198, 51, 100, 0], 24, Some(B)),
            ]
        );
    }

    #[test]
    fn route_lookup() {
        let Some((a, _b)) = pair() else { return };
        let (x, _) = ip_link(&a, "x");
        a.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
        // An IPv4 route with an IPv6 next hop (RFC 5549).
        a.ip(&[
            "route",
            "add",
            "198.18.0.0/24",
            "via",
            "inet6",
            "fe80::1",
            "dev",
            "x",
        ]);
        let (direct, routed, none, v6) = a.run(|| {
            let mut nl = Netlink::new().unwrap();
            (
                nl.route_get(B).unwrap(),
                nl.route_get(Ipv4Addr::new(198, 51, 100, 7)).unwrap(),
                nl.route_get(Ipv4Addr::new(203, 0, 113, 9)),
                nl.route_get(Ipv4Addr::new(198, 18, 0, 1)),
            )
        });
        assert_eq!(
            direct,
            RouteInfo {
                oif: x,
                gateway: None,
                prefsrc: Some(A)
            }
        );
        assert_eq!(routed.oif, x);
        assert_eq!(routed.gateway, Some(B));
        match none {
            Err(Error::Kernel { code, what }) => {
                assert_eq!(code, libc::ENETUNREACH, "{what}");
                assert!(what.contains("203.0.113.9"), "{what}");
            }
            other => panic!("expected ENETUNREACH, got {other:?}"),
        }
        assert!(matches!(v6, Err(Error::Protocol(_))), "{v6:?}");
    }

    #[test]
    fn large_dump_spans_datagrams() {
        let Some((a, _b)) = pair() else { return };
        // ~2000 entries: several dump datagrams (the kernel sends <= 32 KiB).
        let batch: String = (0..2000)
            .map(|i| {
                format!(
                    "neigh add 10.{}.{}.1 lladdr 02:00:00:00:{:02x}:{:02x} dev x nud permanent\n",
                    i / 256,
                    i % 256,
                    i / 256,
                    i % 256
                )
            })
            .collect();
        let file = std::env::temp_dir().join(format!("{}.batch", a.name()));
        std::fs::write(&file, batch).unwrap();
        a.ip(&["addr", "add", "10.0.0.2/8", "dev", "x"]);
        let added = a.ip(&["-batch", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        assert!(added.status.success());
        let found = a.run(|| Netlink::new().unwrap().neighbours().unwrap());
        let ours = found
            .iter()
            .filter(|n| n.ip.octets()[0] == 10 && n.state == libc::NUD_PERMANENT)
            .count();
        assert_eq!(ours, 2000);
        let last = found
            .iter()
            .find(|n| n.ip == Ipv4Addr::new(10, 7, 207, 1))
            .expect("10.7.207.1");
        assert_eq!(last.mac, Some([2, 0, 0, 0, 7, 207]));
    }

    #[test]
    fn netlink_is_send() {
        fn send<T: Send>() {}
        send::<Netlink>();
    }

    #[test]
    fn resolve_neighbours() {
        let Some((a, b)) = pair() else { return };
        let (x, _) = ip_link(&a, "x");
        let (_, y_mac) = ip_link(&b, "y");
        // A static entry resolve() must not disturb.
        let add = "neigh add 192.0.2.50 lladdr 02:00:00:00:00:50 dev x nud permanent";
        a.ip(&add.split(' ').collect::<Vec<_>>());
        a.run(move || {
            let mut nl = Netlink::new().unwrap();

            nl.resolve(x, B).unwrap();
            let (_, entry) = watch(&mut nl, x, B, Duration::from_secs(3), |n| {
                state_usable(n.state)
            });
            let entry = entry.expect("an entry for 192.0.2.2");
            assert!(state_usable(entry.state), "state {:#x}", entry.state);
            assert_eq!(entry.mac, Some(y_mac));
            let raw = nl.neighbour(x, B).unwrap().unwrap();
            assert!(raw.is_managed(), "flags_ext {:#x}", raw.flags_ext);
            assert_eq!(nl.managed, Some(true));

            // Again: fine, and the entry keeps its MAC.
            nl.resolve(x, B).unwrap();
            let again = nl.neighbour(x, B).unwrap().unwrap().neighbour;
            assert!(state_usable(again.state));
            assert_eq!(again.mac, Some(y_mac));

            // Nobody has 192.0.2.99: resolve returns at once, and the entry
            // never becomes usable.
            let nobody = Ipv4Addr::new(192, 0, 2, 99);
            let start = Instant::now();
            nl.resolve(x, nobody).unwrap();
            assert!(start.elapsed() < Duration::from_secs(1));
            let (seen, _) = watch(&mut nl, x, nobody, Duration::from_secs(3), |_| false);
            assert!(!seen.is_empty(), "no entry for 192.0.2.99");
            for state in seen {
                assert!(
                    state == libc::NUD_INCOMPLETE || state == libc::NUD_FAILED,
                    "state {state:#x}"
                );
            }
            nl.resolve(x, nobody).unwrap();

            // The permanent entry is left alone.
            let fixed = Ipv4Addr::new(192, 0, 2, 50);
            nl.resolve(x, fixed).unwrap();
            let entry = nl.neighbour(x, fixed).unwrap().unwrap().neighbour;
            assert_eq!(entry.state, libc::NUD_PERMANENT);
            assert_eq!(entry.mac, Some([2, 0, 0, 0, 0, 0x50]));
        });
    }
}
