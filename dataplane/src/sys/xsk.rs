//! AF_XDP sockets and their UMEM, over the kernel ABI (`<linux/if_xdp.h>`).
//!
//! # Why not xsk-rs
//! xsk-rs 0.11 hands out `FrameDesc`s whose address userspace cannot change:
//! a frame is transmitted from exactly where it was received. VXLAN encap must
//! start the frame 50 bytes *earlier* (outer headers written into the
//! headroom) and decap 50 bytes *later*, so with xsk-rs both would need a
//! memmove of the whole frame. Here a TX descriptor may point anywhere inside
//! its chunk, which is what the kernel allows in aligned mode.
//!
//! # UMEM frame ownership (the one place it is written down)
//! Each worker owns one [`Umem`] of [`FRAME_COUNT`] chunks of [`FRAME_SIZE`]
//! bytes, shared by all of that worker's sockets (one per attached interface
//! queue). A chunk is, at any time, in exactly one of these places:
//! - the free list ([`Umem::free`]),
//! - a socket's fill ring (the kernel may write it),
//! - held by the worker between RX and its verdict (userspace may write it),
//! - a socket's TX ring until that socket's completion ring returns it.
//!
//! `owner[chunk]` records which, so that closing a socket reclaims the chunks
//! its rings held (the kernel never returns those). Chunk addresses are chunk
//! indexes times `FRAME_SIZE`; received frames start at `XDP_PACKET_HEADROOM`
//! (256 bytes) into their chunk, which leaves room for encap headers.
//!
//! # What the kernel hands back is checked
//! Descriptors on the RX and completion rings are input, not facts: an RX
//! descriptor is taken only if its frame lies inside one chunk of the UMEM
//! and that chunk is in this socket's fill ring; a completion frees a chunk
//! only if it is in this socket's TX ring. Anything else (out of range,
//! straddling a chunk, a chunk of another ring, a duplicate) is counted in
//! [`DescErrors`] and skipped: no panic, no chunk handed out or freed twice.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM chunk: one frame per chunk, at most a page so the kernel's
/// aligned mode applies and a 1500-byte MTU frame plus encap headers fits.
pub const FRAME_SIZE: usize = 2048;
/// Chunks per worker UMEM (32 MiB). Enough to keep every socket's fill ring
/// stocked with 64 pods attached plus in-flight TX.
pub const FRAME_COUNT: usize = 16384;
/// Descriptors per ring (RX, TX, fill, completion).
pub const RING_SIZE: u32 = 2048;
/// Where the kernel puts a received frame inside its chunk (copy mode, no
/// UMEM headroom): `XDP_PACKET_HEADROOM`.
pub const RX_OFFSET: usize = 256;
// The largest MTU control accepts is what a chunk holds after the headroom.
const _: () = assert!(FRAME_SIZE - RX_OFFSET == 14 + kxdp_proto::MAX_UNDERLAY_MTU as usize);

const OWNER_FREE: u16 = 0;
const OWNER_USER: u16 = 1;
// Socket slot s owns its fill ring chunks as FILL_BASE + s, TX as TX_BASE + s.
const FILL_BASE: u16 = 0x100;
const TX_BASE: u16 = 0x8000;

/// A frame descriptor as the rings carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
}

impl Desc {
    /// The chunk index the descriptor points into.
    #[inline]
    pub fn chunk(&self) -> usize {
        self.addr as usize / FRAME_SIZE
    }
    /// Offset of the frame start inside its chunk.
    #[inline]
    pub fn offset(&self) -> usize {
        self.addr as usize % FRAME_SIZE
    }
}

/// Descriptors the kernel handed back that failed the checks, per UMEM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescErrors {
    /// RX descriptors skipped (the frame is lost).
    pub bad_rx: u64,
    /// Completions ignored (no chunk freed).
    pub bad_completion: u64,
}

/// The UMEM area of one worker and its free list.
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    free: Vec<u64>,
    /// Exactly `FRAME_COUNT` entries: indexing it bounds-checks a chunk.
    owner: Vec<u16>,
    errors: DescErrors,
}

// SAFETY: the area is plain memory owned by this struct; the worker that owns
// the Umem is the only userspace accessor.
unsafe impl Send for Umem {}

impl Umem {
    pub fn new() -> io::Result<Umem> {
        let len = FRAME_COUNT * FRAME_SIZE;
        // SAFETY: anonymous private mapping, no aliasing; checked for failure.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let free = (0..FRAME_COUNT as u64)
            .rev()
            .map(|i| i * FRAME_SIZE as u64)
            .collect();
        Ok(Umem {
            area: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
            free,
            owner: vec![OWNER_FREE; FRAME_COUNT],
            errors: DescErrors::default(),
        })
    }

    /// Free chunks.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Bad descriptors seen so far (never reset).
    pub fn desc_errors(&self) -> DescErrors {
        self.errors
    }

    /// Takes a received frame for userspace if it lies inside one chunk that
    /// `slot`'s fill ring holds; anything else is counted and refused. A
    /// duplicate finds its chunk already held and is refused too.
    #[inline]
    fn claim_rx(&mut self, slot: u16, addr: u64, len: u32) -> Option<Desc> {
        let d = Desc { addr, len };
        let (c, off) = (d.chunk(), d.offset());
        if off + len as usize > FRAME_SIZE || self.owner.get(c) != Some(&(FILL_BASE + slot)) {
            self.errors.bad_rx += 1;
            return None;
        }
        self.owner[c] = OWNER_USER;
        Some(d)
    }

    /// Frees a completed chunk if `slot`'s TX ring holds it; anything else
    /// (a chunk never sent here, or completed already) is counted and left.
    #[inline]
    fn claim_completion(&mut self, slot: u16, addr: u64) -> bool {
        let c = Desc { addr, len: 0 }.chunk();
        if self.owner.get(c) != Some(&(TX_BASE + slot)) {
            self.errors.bad_completion += 1;
            return false;
        }
        self.owner[c] = OWNER_FREE;
        self.free.push((c * FRAME_SIZE) as u64);
        true
    }

    /// Takes a free chunk for userspace (e.g. to build a frame).
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        let a = self.free.pop()?;
        self.owner[a as usize / FRAME_SIZE] = OWNER_USER;
        Some(a)
    }

    /// Returns a chunk userspace holds to the free list.
    #[inline]
    pub fn release(&mut self, addr: u64) {
        let c = addr as usize / FRAME_SIZE;
        debug_assert_eq!(self.owner[c], OWNER_USER, "release of a chunk not held");
        self.owner[c] = OWNER_FREE;
        self.free.push((c * FRAME_SIZE) as u64);
    }

    /// Mutable views of several distinct held chunks at once.
    ///
    /// Panics if two descriptors name the same chunk or a chunk is not held
    /// by userspace: both would be ownership bugs of this process, never the
    /// kernel's doing ([`Socket::recv`] returns only chunks it claimed).
    pub fn chunks_mut<'a, const N: usize>(
        &'a mut self,
        descs: &[Desc],
        out: &mut arrayvec::ArrayVec<&'a mut [u8], N>,
    ) {
        let base = self.area.as_ptr();
        for d in descs {
            let c = d.chunk();
            assert!(
                c < FRAME_COUNT && self.owner[c] == OWNER_USER,
                "chunk {c} not held"
            );
            // Mark while handing out so a duplicate in `descs` trips the assert.
            self.owner[c] = OWNER_USER | 0x4000;
            // SAFETY: c < FRAME_COUNT so the chunk is inside the mapping; the
            // owner marks guarantee each chunk is handed out once, and only
            // chunks the kernel does not hold (OWNER_USER) are handed out.
            let s = unsafe { std::slice::from_raw_parts_mut(base.add(c * FRAME_SIZE), FRAME_SIZE) };
            out.push(s);
        }
        for d in descs {
            self.owner[d.chunk()] = OWNER_USER;
        }
    }

    /// One held chunk, mutably.
    pub fn chunk_mut(&mut self, addr: u64) -> &mut [u8] {
        let c = addr as usize / FRAME_SIZE;
        assert!(
            c < FRAME_COUNT && self.owner[c] == OWNER_USER,
            "chunk {c} not held"
        );
        // SAFETY: in bounds, held by userspace, and `&mut self` keeps any other
        // view from existing at the same time.
        unsafe {
            std::slice::from_raw_parts_mut(self.area.as_ptr().add(c * FRAME_SIZE), FRAME_SIZE)
        }
    }

    /// Gives back every chunk a closed socket's rings held.
    fn reclaim(&mut self, slot: u16) {
        for (c, o) in self.owner.iter_mut().enumerate() {
            if *o == FILL_BASE + slot || *o == TX_BASE + slot {
                *o = OWNER_FREE;
                self.free.push((c * FRAME_SIZE) as u64);
            }
        }
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; every socket that
        // registered it borrows the Umem mutably for its calls and is closed
        // before the worker drops the Umem (field order in the worker).
        unsafe {
            libc::munmap(self.area.as_ptr().cast(), self.len);
        }
    }
}

/// One mmapped ring: producer/consumer indexes shared with the kernel.
struct Ring {
    map: NonNull<u8>,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    // Cached copies of the indexes, as libbpf's xsk.h keeps them.
    cached_prod: u32,
    cached_cons: u32,
}

impl Ring {
    /// # Safety
    /// `fd` at `pgoff` maps a ring of `size` entries of `entry` bytes laid out
    /// as `off` says: an AF_XDP socket's ring (or /dev/zero in tests).
    unsafe fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry: usize,
        pgoff: u64,
        producer_side: bool,
    ) -> io::Result<Ring> {
        let len = off.desc as usize + size as usize * entry;
        // SAFETY: a shared mapping of the kernel ring; fd/pgoff per the caller.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // SAFETY: the offsets lie inside the mapping (caller); the indexes
        // are 4-byte aligned u32s.
        unsafe {
            let producer = base.add(off.producer as usize) as *const AtomicU32;
            let consumer = base.add(off.consumer as usize) as *const AtomicU32;
            let mut r = Ring {
                map: NonNull::new(base).expect("mmap returned null"),
                map_len: len,
                producer,
                consumer,
                flags: base.add(off.flags as usize) as *const AtomicU32,
                desc: base.add(off.desc as usize),
                mask: size - 1,
                size,
                cached_prod: (*producer).load(Ordering::Relaxed),
                cached_cons: (*consumer).load(Ordering::Relaxed),
            };
            if producer_side {
                // A producer sees `size` free slots ahead of the consumer.
                r.cached_cons = r.cached_cons.wrapping_add(size);
            }
            Ok(r)
        }
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping (see `map`).
        unsafe { &*self.producer }
    }
    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }
    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0 }
    }

    /// Producer: free slots, refreshing from the kernel only when short.
    #[inline]
    fn prod_free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Consumer: entries ready, refreshing from the kernel only when short.
    #[inline]
    fn cons_avail(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return avail;
        }
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    #[inline]
    fn entry<T>(&self, idx: u32) -> *mut T {
        // SAFETY: idx & mask < size, and the descriptor area holds size entries.
        unsafe { (self.desc as *mut T).add((idx & self.mask) as usize) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// XDP socket statistics kept by the kernel (`XDP_STATISTICS`), made
/// disjoint so that their sum counts each lost frame once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames dropped for any other reason (larger than a chunk).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Copy mode: frames dropped because the fill ring was empty. Zero-copy:
    /// the driver's failed refills (the NIC counts the frames it then loses).
    pub rx_fill_ring_empty: u64,
    /// TX descriptors the kernel refused.
    pub tx_invalid: u64,
}

impl KernelStats {
    /// In copy mode the kernel counts a frame lost to an empty fill ring
    /// twice: `rx_dropped` (`__xsk_rcv`: `xsk_buff_alloc` failed) and the
    /// fill queue's `rx_fill_ring_empty_descs` (`__xp_alloc`: nothing to
    /// peek). Zero-copy drivers touch only the latter, per refill attempt.
    fn from_kernel(s: &libc::xdp_statistics, zero_copy: bool) -> KernelStats {
        let fill_empty = s.rx_fill_ring_empty_descs;
        KernelStats {
            rx_dropped: if zero_copy {
                s.rx_dropped
            } else {
                // Read at slightly different moments: never below zero.
                s.rx_dropped.saturating_sub(fill_empty)
            },
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: fill_empty,
            tx_invalid: s.tx_invalid_descs,
        }
    }
}

/// One AF_XDP socket bound to an interface queue, with its four rings.
pub struct Socket {
    // Rings first: they are unmapped before the fd closes.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    fd: OwnedFd,
    slot: u16,
    /// Bound in zero-copy mode (the kernel's choice under `BindMode::Auto`).
    zero_copy: bool,
    /// Chunks in this socket's fill ring (to keep it stocked).
    pub in_fill: u32,
}

// SAFETY: the rings' pointers point into mappings owned by this socket; a
// socket is used by one thread at a time (created by, then owned by, its
// worker), so moving it between threads is sound.
unsafe impl Send for Socket {}

/// How to bind: the kernel picks zero-copy where the driver supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Auto,
    Copy,
}

impl Socket {
    /// Creates a socket on `ifindex`/`queue` using `umem`. `share_with` is any
    /// live socket of the same UMEM (the kernel's XDP_SHARED_UMEM needs one);
    /// `None` registers the UMEM afresh. `slot` is the caller's unique id for
    /// the socket (< 0x3f00), used for frame ownership.
    pub fn new(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        share_with: Option<&Socket>,
        slot: u16,
        mode: BindMode,
    ) -> io::Result<Socket> {
        assert!(slot < 0x3f00);
        // SAFETY: plain socket(2); checked below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if share_with.is_none() {
            let reg = libc::xdp_umem_reg {
                addr: umem.area.as_ptr() as u64,
                len: umem.len as u64,
                chunk_size: FRAME_SIZE as u32,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        }
        // Every (interface, queue) needs its own fill and completion rings.
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_RX_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_TX_RING, &RING_SIZE)?;
        // SAFETY: the struct the kernel writes for XDP_MMAP_OFFSETS.
        let off: libc::xdp_mmap_offsets = unsafe { getsockopt(raw, libc::XDP_MMAP_OFFSETS)? };
        let dsz = std::mem::size_of::<libc::xdp_desc>();
        // SAFETY: each ring was sized above and `off` describes it.
        let (rx, tx, fill, comp) = unsafe {
            (
                Ring::map(
                    raw,
                    &off.rx,
                    RING_SIZE,
                    dsz,
                    libc::XDP_PGOFF_RX_RING as u64,
                    false,
                )?,
                Ring::map(
                    raw,
                    &off.tx,
                    RING_SIZE,
                    dsz,
                    libc::XDP_PGOFF_TX_RING as u64,
                    true,
                )?,
                Ring::map(
                    raw,
                    &off.fr,
                    RING_SIZE,
                    8,
                    libc::XDP_UMEM_PGOFF_FILL_RING,
                    true,
                )?,
                Ring::map(
                    raw,
                    &off.cr,
                    RING_SIZE,
                    8,
                    libc::XDP_UMEM_PGOFF_COMPLETION_RING,
                    false,
                )?,
            )
        };
        // SAFETY: zeroed POD sockaddr, then filled.
        let mut sa: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        match share_with {
            // Shared sockets inherit the owner's flags; the kernel refuses others.
            Some(s) => {
                sa.sxdp_flags = libc::XDP_SHARED_UMEM;
                sa.sxdp_shared_umem_fd = s.fd.as_raw_fd() as u32;
            }
            None => {
                sa.sxdp_flags = libc::XDP_USE_NEED_WAKEUP
                    | if mode == BindMode::Copy {
                        libc::XDP_COPY
                    } else {
                        0
                    };
            }
        }
        // SAFETY: sa is a valid sockaddr_xdp of the given size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the struct the kernel writes for XDP_OPTIONS.
        let opts: libc::xdp_options = unsafe { getsockopt(raw, libc::XDP_OPTIONS)? };
        Ok(Socket {
            rx,
            tx,
            fill,
            comp,
            fd,
            slot,
            zero_copy: opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0,
            in_fill: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Moves up to `n` free chunks into the fill ring. Returns how many.
    pub fn refill(&mut self, umem: &mut Umem, n: u32) -> u32 {
        let n = n.min(self.fill.prod_free(n)).min(umem.free.len() as u32);
        if n == 0 {
            return 0;
        }
        let base = self.fill.cached_prod;
        for i in 0..n {
            let a = umem.free.pop().expect("counted above");
            umem.owner[a as usize / FRAME_SIZE] = FILL_BASE + self.slot;
            // SAFETY: slot base+i was counted free; the kernel reads it only
            // after the release store below.
            unsafe { *self.fill.entry::<u64>(base.wrapping_add(i)) = a };
        }
        self.fill.cached_prod = base.wrapping_add(n);
        self.fill
            .producer()
            .store(self.fill.cached_prod, Ordering::Release);
        self.in_fill += n;
        n
    }

    /// Takes up to `out.len()` received frames; they become held by userspace.
    /// Descriptors that fail [`Umem::claim_rx`] are consumed, counted and
    /// left out, so `out[..n]` holds only frames this socket's fill ring gave.
    #[inline]
    pub fn recv(&mut self, umem: &mut Umem, out: &mut [Desc]) -> usize {
        let n = self.rx.cons_avail(out.len() as u32).min(out.len() as u32);
        if n == 0 {
            return 0;
        }
        let base = self.rx.cached_cons;
        let mut got = 0;
        for i in 0..n {
            // SAFETY: entries base..base+n were published by the kernel
            // (acquire load in cons_avail).
            let d = unsafe { *self.rx.entry::<libc::xdp_desc>(base.wrapping_add(i)) };
            if let Some(d) = umem.claim_rx(self.slot, d.addr, d.len) {
                out[got] = d;
                got += 1;
            }
        }
        self.rx.cached_cons = base.wrapping_add(n);
        self.rx
            .consumer()
            .store(self.rx.cached_cons, Ordering::Release);
        // Each descriptor used up one fill entry, even a bad one.
        self.in_fill = self.in_fill.saturating_sub(n);
        got
    }

    /// Queues frames for transmission; returns how many fit. Frames that did
    /// not fit stay held by the caller.
    #[inline]
    pub fn send(&mut self, umem: &mut Umem, descs: &[Desc]) -> usize {
        let n = (descs.len() as u32).min(self.tx.prod_free(descs.len() as u32));
        let base = self.tx.cached_prod;
        for (i, d) in descs.iter().enumerate().take(n as usize) {
            umem.owner[d.chunk()] = TX_BASE + self.slot;
            // SAFETY: counted free; published by the release store below.
            unsafe {
                *self.tx.entry::<libc::xdp_desc>(base.wrapping_add(i as u32)) = libc::xdp_desc {
                    addr: d.addr,
                    len: d.len,
                    options: 0,
                };
            }
        }
        if n > 0 {
            self.tx.cached_prod = base.wrapping_add(n);
            self.tx
                .producer()
                .store(self.tx.cached_prod, Ordering::Release);
        }
        n as usize
    }

    /// Kicks the kernel to transmit, if it asked to be woken (copy mode
    /// always does). One syscall per batch, never per packet.
    #[inline]
    pub fn kick_tx(&self) {
        if self.tx.needs_wakeup() {
            // SAFETY: zero-length sendto on our socket; errors (EAGAIN,
            // EBUSY, ENOBUFS) only mean "try again next loop".
            unsafe {
                libc::sendto(
                    self.fd(),
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                );
            }
        }
    }

    /// Frames queued on the TX ring that the kernel has not taken yet. In
    /// copy mode one wakeup transmits at most 32 frames (the kernel's
    /// `TX_BATCH_SIZE`), so the worker kicks again while this is true.
    #[inline]
    pub fn tx_pending(&self) -> bool {
        self.tx.consumer().load(Ordering::Acquire) != self.tx.cached_prod
    }

    /// Wakes the kernel's RX side if the fill ring asked for it.
    #[inline]
    pub fn kick_fill(&self) {
        if self.fill.needs_wakeup() {
            // SAFETY: zero-length non-blocking recvfrom on our socket.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                    ptr::null_mut(),
                );
            }
        }
    }

    /// Returns completed TX chunks to the free list; returns how many.
    /// Completions that fail [`Umem::claim_completion`] are counted and skipped.
    #[inline]
    pub fn complete(&mut self, umem: &mut Umem) -> u32 {
        let n = self.comp.cons_avail(RING_SIZE);
        if n == 0 {
            return 0;
        }
        let base = self.comp.cached_cons;
        let mut freed = 0;
        for i in 0..n {
            // SAFETY: published by the kernel (acquire in cons_avail).
            let a = unsafe { *self.comp.entry::<u64>(base.wrapping_add(i)) };
            freed += umem.claim_completion(self.slot, a) as u32;
        }
        self.comp.cached_cons = base.wrapping_add(n);
        self.comp
            .consumer()
            .store(self.comp.cached_cons, Ordering::Release);
        freed
    }

    /// The kernel's drop counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<KernelStats> {
        // SAFETY: the struct the kernel writes for XDP_STATISTICS.
        let s: libc::xdp_statistics = unsafe { getsockopt(self.fd(), libc::XDP_STATISTICS)? };
        Ok(KernelStats::from_kernel(&s, self.zero_copy))
    }

    /// Closes the socket and gives its rings' chunks back to `umem`.
    pub fn close(self, umem: &mut Umem) {
        let slot = self.slot;
        drop(self);
        umem.reclaim(slot);
    }
}

/// # Safety
/// `T` is the plain C struct the kernel writes for `opt` (all zeroes valid).
unsafe fn getsockopt<T>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    // SAFETY: all-zero is a valid T (caller).
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v/len are valid for the kernel to write.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is a valid T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An eventfd a worker sleeps on beside its sockets, so a control command
/// wakes an idle worker at once.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2), checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; non-blocking.
        unsafe {
            libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }
}

/// Sleeps until one of `sockets` has RX frames, `wake` is notified, or
/// `timeout_ms` passes. The idle half of the adaptive poll mode.
pub fn wait(sockets: &[&Socket], wake: &EventFd, timeout_ms: i32) {
    let mut fds: arrayvec::ArrayVec<libc::pollfd, 257> = arrayvec::ArrayVec::new();
    fds.push(libc::pollfd {
        fd: wake.0.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    for s in sockets.iter().take(256) {
        fds.push(libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // SAFETY: fds is a valid array of fds.len() pollfds.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
    }
    wake.drain();
}

#[cfg(test)]
mod tests {
    //! The rings over anonymous memory, with the test playing the kernel:
    //! it takes fill and TX entries and writes RX descriptors and
    //! completions, good and bad.
    use super::*;

    const SLOT: u16 = 3;
    /// Where a fake ring keeps its indexes and entries.
    const FAKE_OFF: libc::xdp_ring_offset = libc::xdp_ring_offset {
        producer: 0,
        consumer: 64,
        flags: 128,
        desc: 192,
    };

    /// A ring in zeroed shared memory (a mapping of /dev/zero).
    fn fake_ring(entry: usize, producer_side: bool) -> Ring {
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        // SAFETY: /dev/zero maps zeroed memory of any length, laid out as
        // FAKE_OFF says once the ring uses it so.
        unsafe {
            Ring::map(
                zero.as_raw_fd(),
                &FAKE_OFF,
                RING_SIZE,
                entry,
                0,
                producer_side,
            )
            .unwrap()
        }
    }

    fn fake_socket(slot: u16) -> Socket {
        let dsz = std::mem::size_of::<libc::xdp_desc>();
        Socket {
            rx: fake_ring(dsz, false),
            tx: fake_ring(dsz, true),
            fill: fake_ring(8, true),
            comp: fake_ring(8, false),
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            slot,
            zero_copy: false,
            in_fill: 0,
        }
    }

    /// The kernel producing on `r` (RX, completion).
    fn produce<T: Copy>(r: &Ring, items: &[T]) {
        let prod = r.producer().load(Ordering::Relaxed);
        for (i, it) in items.iter().enumerate() {
            // SAFETY: inside the ring; the test never has more than a ring
            // of entries outstanding.
            unsafe { *r.entry::<T>(prod.wrapping_add(i as u32)) = *it };
        }
        r.producer()
            .store(prod.wrapping_add(items.len() as u32), Ordering::Release);
    }

    /// The kernel consuming up to `max` entries of `r` (fill, TX).
    fn consume<T: Copy>(r: &Ring, max: u32) -> Vec<T> {
        let cons = r.consumer().load(Ordering::Relaxed);
        let n = r
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(cons)
            .min(max);
        // SAFETY: entries cons..cons+n were published by userspace.
        let v = (0..n)
            .map(|i| unsafe { *r.entry::<T>(cons.wrapping_add(i)) })
            .collect();
        r.consumer().store(cons.wrapping_add(n), Ordering::Release);
        v
    }

    fn rx(addr: u64, len: u32) -> libc::xdp_desc {
        libc::xdp_desc {
            addr,
            len,
            options: 0,
        }
    }

    /// A UMEM and a socket whose fill ring the kernel took `n` chunks from.
    fn setup(n: u32) -> (Umem, Socket, Vec<u64>) {
        let mut umem = Umem::new().unwrap();
        let mut s = fake_socket(SLOT);
        assert_eq!(s.refill(&mut umem, n), n);
        let filled = consume(&s.fill, n);
        (umem, s, filled)
    }

    /// What `recv` takes of `descs`; the RX ring is drained either way.
    fn recv_all(umem: &mut Umem, s: &mut Socket, descs: &[libc::xdp_desc]) -> Vec<Desc> {
        produce(&s.rx, descs);
        let mut out = [Desc::default(); 64];
        let n = s.recv(umem, &mut out);
        assert_eq!(s.recv(umem, &mut out[n..]), 0, "RX ring left undrained");
        out[..n].to_vec()
    }

    /// Sends `descs` and lets the kernel take them off the TX ring.
    fn transmit(umem: &mut Umem, s: &mut Socket, descs: &[Desc]) -> Vec<u64> {
        assert_eq!(s.send(umem, descs), descs.len());
        let sent: Vec<libc::xdp_desc> = consume(&s.tx, RING_SIZE);
        sent.iter().map(|d| d.addr).collect()
    }

    #[test]
    fn good_frames_go_round_the_rings() {
        let (mut umem, mut s, filled) = setup(4);
        let free = umem.free_frames();
        let max = (FRAME_SIZE - RX_OFFSET) as u32;
        let got = recv_all(
            &mut umem,
            &mut s,
            &[rx(filled[0] + 256, 60), rx(filled[1] + 256, max)],
        );
        let want = [
            Desc {
                addr: filled[0] + 256,
                len: 60,
            },
            Desc {
                addr: filled[1] + 256,
                len: max,
            },
        ];
        assert_eq!(got, want);
        assert_eq!(s.in_fill, 2);
        let mut views: arrayvec::ArrayVec<&mut [u8], 2> = arrayvec::ArrayVec::new();
        umem.chunks_mut(&got, &mut views);
        drop(views);
        let sent = transmit(&mut umem, &mut s, &got);
        produce(&s.comp, &sent);
        assert_eq!(s.complete(&mut umem), 2);
        assert_eq!(umem.free_frames(), free + 2);
        assert_eq!(umem.desc_errors(), DescErrors::default());
    }

    #[test]
    fn rx_outside_the_umem_is_skipped() {
        let (mut umem, mut s, filled) = setup(1);
        let end = (FRAME_COUNT * FRAME_SIZE) as u64;
        let got = recv_all(
            &mut umem,
            &mut s,
            &[rx(end + 256, 60), rx(u64::MAX, 60), rx(filled[0] + 256, 60)],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].addr, filled[0] + 256);
        assert_eq!(umem.desc_errors().bad_rx, 2);
        // Every descriptor used up a fill entry, the bad ones too.
        assert_eq!(s.in_fill, 0);
    }

    #[test]
    fn rx_straddling_its_chunk_is_skipped() {
        let (mut umem, mut s, filled) = setup(1);
        let a = filled[0];
        let got = recv_all(
            &mut umem,
            &mut s,
            &[
                // Runs past the end of the chunk into the next one.
                rx(a + 2000, 100),
                rx(a + FRAME_SIZE as u64 - 1, 2),
                // An unaligned-mode address (offset in bits 48..).
                rx((256 << 48) | a, 60),
            ],
        );
        assert!(got.is_empty());
        assert_eq!(umem.desc_errors().bad_rx, 3);
        assert_eq!(umem.owner[a as usize / FRAME_SIZE], FILL_BASE + SLOT);
    }

    #[test]
    fn rx_longer_than_its_chunk_is_skipped() {
        let (mut umem, mut s, filled) = setup(1);
        let a = filled[0] + RX_OFFSET as u64;
        let max = (FRAME_SIZE - RX_OFFSET) as u32;
        let got = recv_all(
            &mut umem,
            &mut s,
            &[rx(a, max + 1), rx(a, u32::MAX), rx(a, max)],
        );
        assert_eq!(got, [Desc { addr: a, len: max }]);
        assert_eq!(umem.desc_errors().bad_rx, 2);
    }

    #[test]
    fn rx_of_a_chunk_this_fill_ring_does_not_hold_is_skipped() {
        let (mut umem, mut s, filled) = setup(1);
        let mut other = fake_socket(SLOT + 1);
        other.refill(&mut umem, 1);
        let theirs = consume::<u64>(&other.fill, 1)[0];
        let held = umem.alloc().unwrap();
        let free = *umem.free.last().unwrap();
        let got = recv_all(
            &mut umem,
            &mut s,
            &[
                rx(theirs + 256, 60),
                rx(free + 256, 60),
                rx(held + 256, 60),
                rx(filled[0] + 256, 60),
                // The same chunk again: it is held now.
                rx(filled[0] + 256, 60),
            ],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].addr, filled[0] + 256);
        assert_eq!(umem.desc_errors().bad_rx, 4);
        assert_eq!(
            umem.owner[theirs as usize / FRAME_SIZE],
            FILL_BASE + SLOT + 1
        );
        assert_eq!(umem.owner[free as usize / FRAME_SIZE], OWNER_FREE);
    }

    #[test]
    fn a_duplicated_completion_frees_once() {
        let (mut umem, mut s, filled) = setup(1);
        let got = recv_all(&mut umem, &mut s, &[rx(filled[0] + 256, 60)]);
        let sent = transmit(&mut umem, &mut s, &got);
        let free = umem.free_frames();
        produce(&s.comp, &[sent[0], sent[0]]);
        assert_eq!(s.complete(&mut umem), 1);
        assert_eq!(umem.free_frames(), free + 1);
        assert_eq!(umem.desc_errors().bad_completion, 1);
        assert_eq!(umem.free.iter().filter(|&&a| a == filled[0]).count(), 1);
    }

    #[test]
    fn a_completion_of_a_chunk_not_sent_here_is_skipped() {
        let (mut umem, mut s, filled) = setup(2);
        let mut other = fake_socket(SLOT + 1);
        let theirs = umem.alloc().unwrap();
        transmit(
            &mut umem,
            &mut other,
            &[Desc {
                addr: theirs,
                len: 60,
            }],
        );
        let free = umem.free_frames();
        produce(
            &s.comp,
            &[
                filled[1],
                theirs,
                *umem.free.last().unwrap(),
                (FRAME_COUNT * FRAME_SIZE) as u64,
                u64::MAX,
            ],
        );
        assert_eq!(s.complete(&mut umem), 0);
        assert_eq!(umem.free_frames(), free);
        assert_eq!(umem.desc_errors().bad_completion, 5);
        assert_eq!(umem.owner[theirs as usize / FRAME_SIZE], TX_BASE + SLOT + 1);
        assert_eq!(
            umem.owner[filled[1] as usize / FRAME_SIZE],
            FILL_BASE + SLOT
        );
    }

    #[test]
    fn a_frame_lost_to_an_empty_fill_ring_counts_once() {
        // SAFETY: zeroed POD.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        // Copy mode: 5 frames lost to an empty fill ring, 2 too large.
        s.rx_dropped = 7;
        s.rx_fill_ring_empty_descs = 5;
        s.rx_ring_full = 3;
        let k = KernelStats::from_kernel(&s, false);
        assert_eq!(
            (k.rx_dropped, k.rx_fill_ring_empty, k.rx_ring_full),
            (2, 5, 3)
        );
        // Zero-copy: the driver's failed refills are not in rx_dropped.
        let k = KernelStats::from_kernel(&s, true);
        assert_eq!((k.rx_dropped, k.rx_fill_ring_empty), (7, 5));
        // Read a moment apart: never below zero.
        s.rx_dropped = 4;
        assert_eq!(KernelStats::from_kernel(&s, false).rx_dropped, 0);
    }
}
