//! Guest memory without a file descriptor, served through the client: vfio-user's server→client
//! `DMA_READ` / `DMA_WRITE` messages.
//!
//! # Ownership
//!
//! The socket belongs to the connection (the socket thread). Device threads never touch it: an
//! access builds a request message, registers a [`Pending`] completion under a fresh message id,
//! queues the message in the channel's outbox and signals [`DmaChannel::wake_fd`]; the event loop
//! moves the outbox into its output buffer ([`DmaChannel::take_outbox`]) and hands every reply it
//! reads to [`DmaChannel::complete`], which matches it by id, checks it and wakes the waiter.
//!
//! # Bounds
//!
//! - A waiting device thread gives up after [`DmaChannel::timeout`] (the access fails: the job gets
//!   `FL_JOB_DMA_ERROR`); a reply that comes later is dropped as unknown.
//! - [`DmaChannel::close`] (disconnect, session end) and [`RemoteDma::suspend`] (device reset) fail
//!   every waiting access at once and refuse new ones, so a reset or teardown never waits for the
//!   client.
//! - The socket thread itself never waits for a reply (it would wait for itself): its reads fail,
//!   and its writes (e.g. completion records of jobs a reset aborts) are queued without waiting,
//!   ahead of the reply the socket thread sends next, so the client applies them first.
//! - Accesses are split at the client's `max_data_xfer_size` (QEMU refuses larger ones with E2BIG).
//!
//! # Wire format
//!
//! The spec's `struct vfio_user_dma_region_access`: `u64 address; u64 count; u8 data[]` after the
//! header, data at byte 32 of the message (requests of DMA_WRITE and replies of DMA_READ carry
//! it). QEMU 11.1.3 speaks this layout (observed: an early QEMU patch series declared `count` as
//! a `u32` with data at byte 28; QEMU 11.1.3 refuses such writes with E2BIG).
//!
//! # Unmap
//!
//! Each access holds an `Arc` of its region; DMA_UNMAP returns it in the set of mappings whose
//! release the reply waits for (see `dma.rs`), and fails the accesses pending on the region so
//! that wait stays short.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use faultline_device::{RemoteDma, RemoteDmaError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::protocol::{Header, FLAG_ERROR, HEADER_SIZE, MAX_DATA_XFER_SIZE, TYPE_COMMAND};

/// Command number of DMA_READ.
pub const CMD_DMA_READ: u16 = 11;
/// Command number of DMA_WRITE.
pub const CMD_DMA_WRITE: u16 = 12;
/// Bytes of the request/reply before the data: header, `u64 address`, `u64 count`.
pub const DMA_RW_DATA_OFFSET: usize = HEADER_SIZE + 16;
/// The message size without data.
pub const DMA_RW_SIZE: usize = HEADER_SIZE + 16;
/// How long a device thread waits for one reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A region mapped without a file descriptor.
#[derive(Debug)]
pub struct FdlessRegion {
    /// Start IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Whether the client allowed writes.
    pub writable: bool,
}

/// Counters of the remote accesses of one session.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// DMA_READ messages answered.
    pub reads: AtomicU64,
    /// DMA_WRITE messages answered (or queued by the socket thread).
    pub writes: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Accesses that failed (error reply, malformed reply, timeout, cancelled).
    pub errors: AtomicU64,
}

impl RemoteStats {
    /// `name=value` pairs for the session's stats log line.
    pub fn format(&self) -> String {
        format!(
            "dma_read={} dma_read_bytes={} dma_write={} dma_write_bytes={} dma_remote_errors={}",
            self.reads.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.write_bytes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// One request waiting for its reply.
#[derive(Debug)]
struct Pending {
    command: u16,
    offset: u64,
    count: u32,
    /// IOVA of the region the access is in (for unmap).
    region: u64,
    /// Set once: the reply's data (reads) or nothing (writes), or why it failed.
    done: Mutex<Option<Result<Vec<u8>, RemoteDmaError>>>,
    cv: Condvar,
    /// Queued by the socket thread: nobody waits, the reply is only checked.
    posted: bool,
}

impl Pending {
    fn finish(&self, r: Result<Vec<u8>, RemoteDmaError>) {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(r);
        }
        self.cv.notify_all();
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u16,
    outbox: VecDeque<Vec<u8>>,
    pending: HashMap<u16, Arc<Pending>>,
    closed: bool,
    suspended: u32,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    wake: EventFd,
    socket_thread: ThreadId,
    timeout: Duration,
    max_xfer: AtomicU64,
    regions: RwLock<BTreeMap<u64, Arc<FdlessRegion>>>,
    stats: RemoteStats,
}

/// The session's server→client DMA channel; cheap to clone.
#[derive(Debug, Clone)]
pub struct DmaChannel {
    inner: Arc<Inner>,
}

impl DmaChannel {
    /// A channel owned by the calling thread (the socket thread), with `timeout` per reply.
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        Ok(DmaChannel {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wake: EventFd::new(EFD_NONBLOCK)?,
                socket_thread: std::thread::current().id(),
                timeout,
                max_xfer: AtomicU64::new(u64::from(MAX_DATA_XFER_SIZE)),
                regions: RwLock::new(BTreeMap::new()),
                stats: RemoteStats::default(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd the event loop watches: signalled when the outbox has messages.
    pub fn wake_fd(&self) -> RawFd {
        self.inner.wake.as_raw_fd()
    }

    /// Clears the wakeup (event loop).
    pub fn ack_wake(&self) {
        let _ = self.inner.wake.read();
    }

    /// How long a device thread waits for a reply.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The counters.
    pub fn stats(&self) -> &RemoteStats {
        &self.inner.stats
    }

    /// Sets the largest transfer per message (the client's `max_data_xfer_size`).
    pub fn set_max_xfer(&self, bytes: u64) {
        let v = bytes.clamp(8, u64::from(MAX_DATA_XFER_SIZE));
        self.inner.max_xfer.store(v, Ordering::Relaxed);
    }

    /// Records a region mapped without a file descriptor.
    pub fn add_region(&self, region: Arc<FdlessRegion>) {
        let mut r = self
            .inner
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        r.insert(region.iova, region);
    }

    /// Forgets a region; accesses pending on it fail now. Returns it (its strong count shows the
    /// accesses still holding it).
    pub fn remove_region(&self, iova: u64) -> Option<Arc<FdlessRegion>> {
        let removed = self
            .inner
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&iova);
        if removed.is_some() {
            let st = self.state();
            for p in st.pending.values().filter(|p| p.region == iova) {
                p.finish(Err(RemoteDmaError::Cancelled("region unmapped")));
            }
        }
        removed
    }

    /// Forgets every region (unmap-all); see [`DmaChannel::remove_region`].
    pub fn remove_all_regions(&self) -> Vec<Arc<FdlessRegion>> {
        let all = std::mem::take(
            &mut *self
                .inner
                .regions
                .write()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !all.is_empty() {
            let st = self.state();
            for p in st.pending.values() {
                p.finish(Err(RemoteDmaError::Cancelled("region unmapped")));
            }
        }
        all.into_values().collect()
    }

    /// The region holding all of `[gpa, gpa + len)`.
    fn region(&self, gpa: u64, len: u64) -> Option<Arc<FdlessRegion>> {
        let end = gpa.checked_add(len)?;
        let r = self.inner.regions.read().unwrap_or_else(|e| e.into_inner());
        let (_, reg) = r.range(..=gpa).next_back()?;
        (end <= reg.iova.saturating_add(reg.size)).then(|| Arc::clone(reg))
    }

    /// Moves the queued requests out (event loop), in order.
    pub fn take_outbox(&self) -> Vec<Vec<u8>> {
        self.state().outbox.drain(..).collect()
    }

    /// Fails every pending access and refuses new ones for good (disconnect, session end).
    pub fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.outbox.clear();
        for (_, p) in st.pending.drain() {
            p.finish(Err(RemoteDmaError::Cancelled("client disconnected")));
        }
    }

    /// Number of requests waiting for a reply.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Handles a reply message from the client (event loop). Never fails the connection: a reply
    /// nobody waits for is logged and dropped; a malformed or error reply fails its access.
    pub fn complete(&self, hdr: &Header, payload: &[u8]) {
        let p = self.state().pending.remove(&hdr.id);
        let Some(p) = p else {
            log::warn!(
                "ignoring reply id {} (command {}, {} bytes): no request of ours waits for it",
                hdr.id,
                hdr.command,
                hdr.message_size
            );
            return;
        };
        let result = check_reply(&p, hdr, payload);
        match &result {
            Ok(data) => {
                let s = &self.inner.stats;
                if p.command == CMD_DMA_READ {
                    s.reads.fetch_add(1, Ordering::Relaxed);
                    s.read_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                } else {
                    s.writes.fetch_add(1, Ordering::Relaxed);
                    s.write_bytes
                        .fetch_add(u64::from(p.count), Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "DMA_{} {:#x}+{:#x} (id {}): {e}",
                    if p.command == CMD_DMA_READ {
                        "READ"
                    } else {
                        "WRITE"
                    },
                    p.offset,
                    p.count,
                    hdr.id
                );
            }
        }
        if !p.posted {
            p.finish(result);
        }
    }

    /// Queues one request of at most `max_xfer` bytes and waits for it (unless posted).
    fn request(
        &self,
        region: &FdlessRegion,
        command: u16,
        offset: u64,
        count: u32,
        data: Option<&[u8]>,
    ) -> Result<Vec<u8>, RemoteDmaError> {
        let posted = std::thread::current().id() == self.inner.socket_thread;
        if posted && command == CMD_DMA_READ {
            // The socket thread would wait for a reply only it can read.
            self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(RemoteDmaError::Cancelled(
                "the socket thread cannot wait for a DMA_READ",
            ));
        }
        let p = Arc::new(Pending {
            command,
            offset,
            count,
            region: region.iova,
            done: Mutex::new(None),
            cv: Condvar::new(),
            posted,
        });
        let id = {
            let mut st = self.state();
            if st.closed {
                return Err(RemoteDmaError::Cancelled("client disconnected"));
            }
            // During a reset only the socket thread's writes (records of aborted jobs) go out:
            // they wait for nothing.
            if st.suspended > 0 && !posted {
                return Err(RemoteDmaError::Cancelled("device reset"));
            }
            if st.pending.len() >= usize::from(u16::MAX) {
                return Err(RemoteDmaError::Cancelled("too many requests outstanding"));
            }
            let mut id = st.next_id;
            while st.pending.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            st.next_id = id.wrapping_add(1);
            st.pending.insert(id, Arc::clone(&p));
            st.outbox
                .push_back(encode_request(id, command, offset, count, data));
            id
        };
        if let Err(e) = self.inner.wake.write(1) {
            log::warn!("remote DMA: cannot wake the event loop: {e}");
        }
        if posted {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.inner.timeout;
        let mut done = p.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = done.take() {
                drop(done);
                // Cancelled (reset, unmap) rather than answered: forget the id, so a late reply
                // is dropped as unknown.
                let mut st = self.state();
                if st.pending.get(&id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                    st.pending.remove(&id);
                }
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(done);
                self.state().pending.remove(&id);
                self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                let ms = self.inner.timeout.as_millis() as u64;
                log::warn!(
                    "DMA_{} {offset:#x}+{count:#x} (id {id}): no reply within {ms} ms",
                    if command == CMD_DMA_READ {
                        "READ"
                    } else {
                        "WRITE"
                    }
                );
                return Err(RemoteDmaError::Timeout(ms));
            }
            done =
                p.cv.wait_timeout(done, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
        }
    }

    fn max_xfer(&self) -> usize {
        usize::try_from(self.inner.max_xfer.load(Ordering::Relaxed)).unwrap_or(1 << 20)
    }
}

/// Encodes a DMA_READ (no data) or DMA_WRITE request.
fn encode_request(id: u16, command: u16, offset: u64, count: u32, data: Option<&[u8]>) -> Vec<u8> {
    let data_len = data.map_or(0, <[u8]>::len);
    let size = DMA_RW_SIZE + data_len;
    let mut out = Vec::with_capacity(size);
    Header {
        id,
        command,
        message_size: u32::try_from(size).unwrap_or(u32::MAX),
        flags: TYPE_COMMAND,
        error: 0,
    }
    .write_to(&mut out);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&u64::from(count).to_le_bytes());
    if let Some(d) = data {
        out.extend_from_slice(d);
    }
    out
}

/// Checks a reply against its request; returns the data of a read.
fn check_reply(p: &Pending, hdr: &Header, payload: &[u8]) -> Result<Vec<u8>, RemoteDmaError> {
    if hdr.command != p.command {
        return Err(RemoteDmaError::BadReply(format!(
            "reply for command {} to a request for command {}",
            hdr.command, p.command
        )));
    }
    if hdr.flags & FLAG_ERROR != 0 {
        return Err(RemoteDmaError::BadReply(format!(
            "client refused it with errno {}",
            hdr.error
        )));
    }
    if p.command == CMD_DMA_WRITE {
        // QEMU acknowledges a write with the header alone; a copy of the fields is fine too.
        return Ok(Vec::new());
    }
    let count = p.count as usize;
    let want = DMA_RW_SIZE - HEADER_SIZE + count;
    if payload.len() != want {
        return Err(RemoteDmaError::BadReply(format!(
            "DMA_READ reply of {} payload bytes, {want} expected",
            payload.len()
        )));
    }
    let off = DMA_RW_DATA_OFFSET - HEADER_SIZE;
    let mut f = [0u8; 8];
    f.copy_from_slice(&payload[..8]);
    let offset = u64::from_le_bytes(f);
    f.copy_from_slice(&payload[8..16]);
    let rcount = u64::from_le_bytes(f);
    if offset != p.offset || rcount != u64::from(p.count) {
        return Err(RemoteDmaError::BadReply(format!(
            "DMA_READ reply for {offset:#x}+{rcount:#x}, asked {:#x}+{:#x}",
            p.offset, p.count
        )));
    }
    Ok(payload[off..off + count].to_vec())
}

impl RemoteDma for DmaChannel {
    fn covers(&self, gpa: u64, len: u64) -> bool {
        self.region(gpa, len).is_some()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError> {
        let len = buf.len() as u64;
        let region = self
            .region(gpa, len)
            .ok_or(RemoteDmaError::NotCovered { gpa, len })?;
        let max = self.max_xfer();
        let mut at = 0usize;
        for chunk in buf.chunks_mut(max) {
            let n = chunk.len();
            let data = self.request(
                &region,
                CMD_DMA_READ,
                gpa + at as u64,
                u32::try_from(n).unwrap_or(u32::MAX),
                None,
            )?;
            chunk.copy_from_slice(&data);
            at += n;
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RemoteDmaError> {
        let len = data.len() as u64;
        let region = self
            .region(gpa, len)
            .ok_or(RemoteDmaError::NotCovered { gpa, len })?;
        if !region.writable {
            return Err(RemoteDmaError::NotCovered { gpa, len });
        }
        let max = self.max_xfer();
        let mut at = 0usize;
        for chunk in data.chunks(max) {
            self.request(
                &region,
                CMD_DMA_WRITE,
                gpa + at as u64,
                u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                Some(chunk),
            )?;
            at += chunk.len();
        }
        Ok(())
    }

    fn suspend(&self) {
        let mut st = self.state();
        st.suspended += 1;
        for p in st.pending.values().filter(|p| !p.posted) {
            p.finish(Err(RemoteDmaError::Cancelled("device reset")));
        }
    }

    fn resume(&self) {
        let mut st = self.state();
        st.suspended = st.suspended.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan_with_region() -> DmaChannel {
        let c = DmaChannel::new(Duration::from_millis(300)).unwrap();
        c.add_region(Arc::new(FdlessRegion {
            iova: 0x10000,
            size: 0x10000,
            writable: true,
        }));
        c
    }

    /// Answers every queued request like QEMU would, from `mem` (base 0x10000).
    fn serve(c: &DmaChannel, mem: &mut [u8]) -> usize {
        let mut n = 0;
        for m in c.take_outbox() {
            let hdr = Header::parse(&m).unwrap();
            let off = u64::from_le_bytes(m[16..24].try_into().unwrap()) as usize - 0x10000;
            let count = u64::from_le_bytes(m[24..32].try_into().unwrap()) as usize;
            let reply_hdr = Header {
                flags: crate::protocol::TYPE_REPLY,
                ..hdr
            };
            if hdr.command == CMD_DMA_READ {
                let mut p = m[16..32].to_vec();
                p.extend_from_slice(&mem[off..off + count]);
                c.complete(&reply_hdr, &p);
            } else {
                mem[off..off + count].copy_from_slice(&m[32..32 + count]);
                c.complete(&reply_hdr, &[]);
            }
            n += 1;
        }
        n
    }

    #[test]
    fn reads_and_writes_are_split_and_matched() {
        let c = chan_with_region();
        c.set_max_xfer(4096);
        let client = c.clone();
        let t = std::thread::spawn(move || {
            let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
            client.write(0x10010, &data).unwrap();
            let mut back = vec![0u8; 10000];
            client.read(0x10010, &mut back).unwrap();
            assert_eq!(back, data);
        });
        let mut mem = vec![0u8; 0x10000];
        let mut served = 0;
        while !t.is_finished() {
            served += serve(&c, &mut mem);
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().unwrap();
        assert_eq!(served, 6, "3 writes and 3 reads of at most 4 KiB");
        assert_eq!(c.stats().reads.load(Ordering::Relaxed), 3);
        assert_eq!(c.stats().write_bytes.load(Ordering::Relaxed), 10000);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn uncovered_ranges_and_readonly_regions_are_refused() {
        let c = chan_with_region();
        let mut b = [0u8; 8];
        assert!(c.read(0xfff8, &mut b).is_err());
        assert!(c.read(0x1fffc, &mut b).is_err());
        assert!(!c.covers(0x20000, 1));
        c.add_region(Arc::new(FdlessRegion {
            iova: 0x40000,
            size: 0x1000,
            writable: false,
        }));
        assert!(matches!(
            c.write(0x40000, &b),
            Err(RemoteDmaError::NotCovered { .. })
        ));
        assert!(c.take_outbox().is_empty());
    }

    #[test]
    fn a_silent_client_times_out_and_the_late_reply_is_dropped() {
        let c = chan_with_region();
        let client = c.clone();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 8];
            client.read(0x10000, &mut b)
        });
        let r = t.join().unwrap();
        assert_eq!(r, Err(RemoteDmaError::Timeout(300)));
        assert_eq!(c.pending(), 0);
        // The late reply matches nothing.
        let mut mem = vec![0u8; 0x10000];
        assert_eq!(serve(&c, &mut mem), 1);
        assert_eq!(c.stats().reads.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_socket_thread_never_waits() {
        let c = chan_with_region();
        let mut b = [0u8; 8];
        assert!(matches!(
            c.read(0x10000, &mut b),
            Err(RemoteDmaError::Cancelled(_))
        ));
        // A write is queued, not waited for.
        c.write(0x10000, &[1, 2, 3, 4]).unwrap();
        let mut mem = vec![0u8; 0x10000];
        assert_eq!(serve(&c, &mut mem), 1);
        assert_eq!(&mem[..4], &[1, 2, 3, 4]);
    }
}
