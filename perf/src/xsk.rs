//! The one module with `unsafe` code: an AF_XDP socket over xsk-rs with a
//! safe interface for the generator (write frames, send, reclaim) and the
//! sink (receive, give frames back).
//!
//! Frame ownership, which is what every `unsafe` below relies on: each
//! UMEM frame is in exactly one place at a time —
//! - TX socket: in `free` (ours, may be written), or in the TX ring /
//!   kernel until the completion ring hands it back into `free`;
//! - RX socket: in the fill ring / kernel, or in `scratch` between
//!   `recv` taking it off the RX ring and putting it back on the fill
//!   ring before `recv` returns.
//!
//! Every descriptor used here came from this socket's own `Umem::new`.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// How the XDP program is attached (sink only; the generator loads none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Let the kernel choose (native where the driver has it).
    #[default]
    Auto,
    Native,
    Generic,
}

impl std::str::FromStr for XdpMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<XdpMode> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" | "drv" => Ok(XdpMode::Native),
            "generic" | "skb" => Ok(XdpMode::Generic),
            _ => Err(anyhow!("unknown XDP mode '{s}' (auto|native|generic)")),
        }
    }
}

/// Socket parameters.
#[derive(Debug, Clone)]
pub struct XskOptions {
    pub iface: String,
    pub queue: u32,
    /// UMEM frames (power of two).
    pub frames: u32,
    /// Size of every ring (power of two).
    pub ring: u32,
    /// Load libxdp's default program (redirect every frame of the queue
    /// to this socket): the sink wants it, the generator does not.
    pub load_prog: bool,
    pub mode: XdpMode,
}

/// The kernel's per-socket drop counters (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid: u64,
    pub tx_invalid: u64,
    pub tx_ring_empty: u64,
}

const FRAME_SIZE: u32 = 2048;

/// One AF_XDP socket on one queue, with its own UMEM.
pub struct Xsk {
    // Field order is drop order: queues (which hold the socket) first,
    // then the UMEM.
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    frames: usize,
    /// TX: frames owned by us. RX: unused.
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    frame_len: usize,
}

impl Xsk {
    /// Creates the UMEM and binds a socket to `opts.iface` queue `opts.queue`.
    pub fn open(opts: &XskOptions) -> anyhow::Result<Xsk> {
        let ring = QueueSize::new(opts.ring).map_err(|e| anyhow!("ring size: {e}"))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| anyhow!("frame size: {e}"))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| anyhow!("UMEM config: {e}"))?;
        let count = NonZeroU32::new(opts.frames).context("--frames must be > 0")?;
        let (umem, descs) =
            Umem::new(umem_cfg, count, false).map_err(|e| anyhow!("creating UMEM: {e}"))?;
        let mut libxdp = LibxdpFlags::empty();
        if !opts.load_prog {
            libxdp |= LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD;
        }
        let xdp = match opts.mode {
            XdpMode::Auto => XdpFlags::empty(),
            XdpMode::Native => XdpFlags::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XdpFlags::XDP_FLAGS_SKB_MODE,
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(libxdp)
            .xdp_flags(xdp)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let iface: Interface = opts
            .iface
            .parse()
            .map_err(|e| anyhow!("interface name '{}': {e}", opts.iface))?;
        // SAFETY: the UMEM was created just above and is not shared with
        // any other socket, so the libxdp double-free caveat of shared
        // UMEMs (which needs INHIBIT_PROG_LOAD) does not apply.
        let (tx, rx, fq_cq) = unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &iface, opts.queue) }
            .map_err(|e| {
                anyhow!(
                    "binding an AF_XDP socket to {} queue {}: {e} (root? does the interface exist in this namespace? is another XDP program attached?)",
                    opts.iface,
                    opts.queue
                )
            })?;
        let (fq, cq) = fq_cq.context("no fill/completion queue for a fresh UMEM")?;
        let frames = descs.len();
        Ok(Xsk {
            tx,
            rx,
            fq,
            cq,
            umem,
            frames,
            free: descs,
            scratch: vec![FrameDesc::default(); 64],
            frame_len: 0,
        })
    }

    /// Largest frame a UMEM frame holds.
    pub fn max_frame_len(&self) -> usize {
        FRAME_SIZE as usize - 256
    }

    // ------------------------------------------------------------ TX

    /// Writes `template` into every free frame and makes it the length of
    /// every frame sent from now on. Call before the first `send`.
    pub fn init_tx_frames(&mut self, template: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            template.len() <= self.max_frame_len(),
            "frame of {} bytes does not fit a UMEM frame",
            template.len()
        );
        for desc in self.free.iter_mut() {
            // SAFETY: `desc` is one of this UMEM's frames and is in `free`,
            // so neither the kernel nor another reference accesses it.
            let mut data = unsafe { self.umem.data_mut(desc) };
            let mut cur = data.cursor();
            cur.set_pos(0);
            cur.write_all(template)?;
        }
        self.frame_len = template.len();
        Ok(())
    }

    /// Frames free to be written right now.
    pub fn tx_free(&self) -> usize {
        self.free.len()
    }

    /// Frames handed to the kernel and not yet completed.
    pub fn tx_in_flight(&self) -> usize {
        self.frames - self.free.len()
    }

    /// Takes up to `max` free frames (as many as also fit the TX ring),
    /// lets `fill` patch each one (the bytes of `init_tx_frames`' template
    /// or of an earlier `fill` are still there) and puts them on the TX
    /// ring. Returns how many were queued; kicks the kernel if it asks.
    pub fn send(&mut self, max: usize, mut fill: impl FnMut(&mut [u8])) -> io::Result<usize> {
        let want = max.min(self.free.len()).min(self.scratch.len());
        if want == 0 {
            return Ok(0);
        }
        let n = (self.tx.nb_free(want as u32) as usize).min(want);
        if n == 0 {
            self.kick()?;
            return Ok(0);
        }
        let start = self.free.len() - n;
        for (slot, mut desc) in self.scratch.iter_mut().zip(self.free.drain(start..)) {
            // SAFETY: the frame was in `free`: nothing else reads or writes
            // it until it is on the TX ring below.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            data.cursor().set_pos(self.frame_len);
            fill(data.contents_mut());
            *slot = desc;
        }
        // SAFETY: these frames belong to this UMEM and were just taken out
        // of `free`; they come back only through the completion ring. The
        // ring has room for all `n` (nb_free above), so none is left out.
        let queued = unsafe { self.tx.produce(&self.scratch[..n]) };
        if queued != n {
            // Not expected after nb_free; keep the frames rather than leak them.
            self.free.extend_from_slice(&self.scratch[..n]);
            return Ok(0);
        }
        self.kick()?;
        Ok(n)
    }

    /// Wakes the kernel to transmit when it asked for it (always, in copy mode).
    pub fn kick(&self) -> io::Result<()> {
        if self.tx.needs_wakeup() {
            self.tx.wakeup()?;
        }
        Ok(())
    }

    /// Moves completed frames back to `free`; returns how many.
    pub fn reclaim(&mut self) -> usize {
        let mut total = 0;
        loop {
            // SAFETY: the completion ring only returns frames of this UMEM
            // that we put on the TX ring; once consumed they are ours.
            let n = unsafe { self.cq.consume(&mut self.scratch[..]) };
            self.free.extend_from_slice(&self.scratch[..n]);
            total += n;
            if n < self.scratch.len() {
                return total;
            }
        }
    }

    // ------------------------------------------------------------ RX

    /// Puts every frame on the fill ring (the sink's start).
    pub fn fill_all(&mut self) -> anyhow::Result<()> {
        // SAFETY: all frames are ours (fresh UMEM, nothing sent) and go to
        // the fill ring only; from now on they come back through RX.
        let n = unsafe { self.fq.produce(&self.free) };
        anyhow::ensure!(
            n == self.free.len(),
            "fill ring took {n} of {} frames",
            self.free.len()
        );
        self.free.clear();
        Ok(())
    }

    /// Receives up to 64 frames, hands each to `f` and returns them to the
    /// fill ring. Returns how many were received.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        // SAFETY: the RX ring hands us frames of this UMEM that the kernel
        // is done with; they stay untouched by it until we refill them.
        let n = unsafe { self.rx.consume(&mut self.scratch[..]) };
        if n == 0 {
            if self.fq.needs_wakeup() {
                self.fq.wakeup(self.rx.fd_mut(), 0)?;
            }
            return Ok(0);
        }
        for desc in &self.scratch[..n] {
            // SAFETY: as above: the frame is ours until it is on the fill
            // ring, and only read here.
            let data = unsafe { self.umem.data(desc) };
            f(data.contents());
        }
        // SAFETY: the frames go back to the fill ring they came from; the
        // ring holds every frame of the UMEM, so there is always room.
        let back = unsafe { self.fq.produce(&self.scratch[..n]) };
        debug_assert_eq!(back, n);
        if self.fq.needs_wakeup() {
            self.fq.wakeup(self.rx.fd_mut(), 0)?;
        }
        Ok(n)
    }

    /// Sleeps in poll(2) until frames arrive or `timeout` passes.
    pub fn wait_rx(&mut self, timeout: Duration) -> io::Result<bool> {
        self.rx
            .poll(timeout.as_millis().min(i32::MAX as u128) as i32)
    }

    /// The kernel's drop counters for this socket.
    pub fn stats(&self) -> io::Result<XskStats> {
        let s = self.rx.fd().xdp_statistics()?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs(),
            rx_invalid: s.rx_invalid_descs(),
            tx_invalid: s.tx_invalid_descs(),
            tx_ring_empty: s.tx_ring_empty_descs(),
        })
    }
}

/// CLOCK_MONOTONIC in ns: the same clock in every namespace of the host,
/// so the sink can subtract the generator's timestamps.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Mounts bpffs on /sys/fs/bpf when nothing is there: `ip netns exec`
/// gives the command a fresh /sys without it, and libxdp pins its
/// dispatcher there. The mount lives in `ip netns exec`'s private mount
/// namespace and goes away with it.
pub fn ensure_bpffs() {
    use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
    let path = std::path::Path::new("/sys/fs/bpf");
    match statfs(path) {
        Ok(s) if s.filesystem_type() == BPF_FS_MAGIC => {}
        Ok(_) => {
            let _ = nix::mount::mount(
                Some("bpf"),
                path,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        Err(_) => {}
    }
}
