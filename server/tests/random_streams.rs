//! Randomized checks (proptest) of the server's promise towards a malicious client: bad input gets
//! a clear error reply or closes the connection, and never a panic, a hang, a leaked descriptor,
//! a lost or misordered reply, or a host access outside what the client mapped.
//!
//! Each property runs against one spawned `faultline-server` (reused across its cases; restarted
//! after a failing case so shrinking starts from a clean server). After every case:
//! - the process is alive and logged no panic;
//! - a fresh client completes VERSION, DEVICE_GET_INFO and a config-space read of the vendor id;
//! - the server's open descriptors (`/proc/PID/fd`) are back to their idle baseline.
//!
//! Properties:
//! - `random_message_sequences`: a valid VERSION, then well-formed-header messages with random
//!   commands, flags, sizes (also lying about the payload), payloads and attached descriptors;
//! - `random_byte_streams`: random bytes (with or without a VERSION first) in random chunks with
//!   random descriptors attached;
//! - `split_valid_messages`: valid requests with exactly known replies (including payloads,
//!   DMA and interrupt state) written in random pieces, descriptors on any piece of their message;
//! - `region_access_sweep`: REGION_READ/WRITE/WRITE_MULTI with random region, offset and count
//!   against a model of the access rules (exact errno);
//! - `dma_map_unmap_model`: DMA_MAP/DMA_UNMAP sequences against a model of the region table
//!   (exact errno); the device must reach exactly the read-write file-backed regions (queue
//!   enable as a probe), and its FENCE writes must land at the model's file offsets or stop the
//!   queue with FENCE_DMA; every successful map unmaps exactly once.
//!
//! For the streams, the test predicts the server's framing from the bytes sent (the documented
//! rules: header, then exactly `message_size` bytes; descriptors belong to the message whose byte
//! they were attached to; a bad header or truncated control data closes the connection) and
//! checks that exactly the predicted replies arrive, in order, with the request's id and command
//! (a DEVICE_GET_INFO appended to every stream checks the connection is still in sync).
//!
//! Case counts: the defaults (1344 cases in all) take about 15 s in release on two cores (25 s in
//! a debug build); `PROPTEST_CASES=N` sets every property's count. Failing inputs are saved in
//! `random_streams.proptest-regressions` and replayed first. Every wait is bounded and fails with
//! a message; nothing is timed.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use faultline_device::abi;
use faultline_server::protocol::{FLAGS_KNOWN, MAX_MESSAGE_SIZE};
use faultline_server::sock::RECV_FDS_CAPACITY;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

type CaseResult = Result<(), TestCaseError>;

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(fail(format!($($arg)+)));
        }
    };
}

const CONFIG_SIZE: u64 = 0x1000;
const EINVAL: i32 = libc::EINVAL;

// ---------------------------------------------------------------------------------------------
// Harness: one server per property, checked after every case.
// ---------------------------------------------------------------------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn list_fds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "(unreadable)".into();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{}->{target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v.join(" ")
}

fn log_tail(log: &str) -> &str {
    let start = log.len().saturating_sub(6000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    &log[start..]
}

struct Harness {
    tag: &'static str,
    server: Server,
    pid: u32,
    /// Open descriptors of the idle server.
    baseline: usize,
    /// Bytes of the log already scanned for panics.
    log_seen: u64,
}

impl Harness {
    fn start(tag: &'static str) -> Harness {
        let server = Server::start(tag);
        let pid = server.child.as_ref().expect("server running").id();
        let mut h = Harness {
            tag,
            server,
            pid,
            baseline: 0,
            log_seen: 0,
        };
        // The idle count before any client; every later idle moment must match it.
        h.baseline = open_fds(pid);
        h
    }

    fn restart(&mut self) {
        let fresh = Harness::start(self.tag);
        // Dropping the old server stops it (SIGTERM, then SIGKILL).
        *self = fresh;
    }

    fn dir(&self) -> &Path {
        &self.server.dir.0
    }

    /// The checks every case ends with.
    fn check_healthy(&mut self) -> CaseResult {
        if let Some(st) = self
            .server
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
        {
            return Err(fail(format!(
                "server exited ({st}):\n{}",
                log_tail(&self.server.log_text())
            )));
        }
        let mut c = self.server.connect();
        c.negotiate();
        let info = c
            .call(DEVICE_GET_INFO, &info_req(16))
            .map_err(|e| fail(format!("fresh client: DEVICE_GET_INFO failed with {e}")))?;
        ensure!(
            info == info4(16, 3, 9, 5),
            "fresh client: device info {info:?}"
        );
        let vendor = c
            .region_read(CONFIG, 0, 2)
            .map_err(|e| fail(format!("fresh client: vendor id read failed with {e}")))?;
        ensure!(
            u16::from_le_bytes([vendor[0], vendor[1]]) == abi::PCI_VENDOR_ID,
            "fresh client: vendor id {vendor:02x?}"
        );
        drop(c);
        let (pid, baseline) = (self.pid, self.baseline);
        if !wait_until(TIMEOUT, || open_fds(pid) == baseline) {
            return Err(fail(format!(
                "descriptor leak: {} open with no client, {baseline} at startup: {}",
                open_fds(pid),
                list_fds(pid)
            )));
        }
        let new = self.new_log();
        if let Some(at) = new.windows(8).position(|w| w == b"panicked") {
            let window = &new[at.saturating_sub(2000)..(at + 2000).min(new.len())];
            return Err(fail(format!(
                "server logged a panic:\n{}",
                String::from_utf8_lossy(window)
            )));
        }
        Ok(())
    }

    /// What the server logged since the last call (a few bytes more, so no word is split).
    fn new_log(&mut self) -> Vec<u8> {
        use std::io::{Seek, SeekFrom};
        let from = self.log_seen.saturating_sub(16);
        let mut new = Vec::new();
        if let Ok(mut f) = File::open(&self.server.log) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.read_to_end(&mut new);
            }
        }
        self.log_seen = from + new.len() as u64;
        new
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Runs `body` on `default_cases` inputs from `strategy` (or `PROPTEST_CASES`), each followed by
/// [`Harness::check_healthy`].
fn run_property<S>(
    tag: &'static str,
    default_cases: u32,
    strategy: S,
    body: impl Fn(&mut Harness, S::Value) -> CaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let mut config = Config {
        // Relative to the package directory, where `cargo test` runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/random_streams.proptest-regressions",
        ))),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    let harness = RefCell::new(Harness::start(tag));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        let mut h = harness.borrow_mut();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            body(&mut h, value)?;
            h.check_healthy()
        }));
        let err = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(p) => fail(format!("panicked: {}", panic_text(&*p))),
        };
        // Shrinking continues with a clean server.
        h.restart();
        Err(err)
    });
    if let Err(e) = result {
        panic!("{tag}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors and a client that streams bytes while a thread collects replies.
// ---------------------------------------------------------------------------------------------

/// A descriptor attached to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    /// A memfd of this many bytes.
    Mem(u64),
    /// An eventfd.
    Event,
    /// A regular file of this many bytes, opened read-only.
    ReadOnly(u64),
    /// A directory.
    Dir,
}

fn make_fd(kind: FdKind, dir: &Path) -> File {
    match kind {
        FdKind::Mem(len) => memfd(len),
        FdKind::Event => File::from(eventfd()),
        FdKind::ReadOnly(len) => {
            let p = dir.join("read-only-ram");
            File::create(&p)
                .and_then(|f| f.set_len(len))
                .expect("create read-only file");
            File::open(&p).expect("open read-only file")
        }
        FdKind::Dir => File::open(dir).expect("open directory"),
    }
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        3 => (0u64..=16).prop_map(|p| FdKind::Mem(p * 4096)),
        1 => Just(FdKind::Mem(5000)),
        3 => Just(FdKind::Event),
        1 => Just(FdKind::ReadOnly(0x4000)),
        1 => Just(FdKind::Dir),
    ]
}

/// Mostly none; sometimes a few; rarely more than any command takes, or more than the server's
/// control buffer holds (truncated control data).
fn fd_list() -> impl Strategy<Value = Vec<FdKind>> {
    prop_oneof![
        150 => Just(Vec::new()),
        40 => prop::collection::vec(fd_kind(), 1..=3),
        8 => prop::collection::vec(fd_kind(), 4..=12),
        1 => prop::collection::vec(fd_kind(), RECV_FDS_CAPACITY + 1..=RECV_FDS_CAPACITY + 6),
    ]
}

/// One piece of a stream, written with one `sendmsg`.
#[derive(Debug, Clone)]
struct Chunk {
    bytes: Vec<u8>,
    fds: Vec<FdKind>,
}

#[derive(Debug)]
enum Event {
    Reply(Reply),
    Closed,
    Failed(String),
}

fn read_full(s: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) && got == 0 => return Ok(0),
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn reader(mut s: UnixStream, tx: mpsc::Sender<Event>) {
    loop {
        let mut h = [0u8; 16];
        let ev = match read_full(&mut s, &mut h) {
            Ok(0) => Event::Closed,
            Ok(16) => {
                let size = u32_at(&h, 4);
                if !(16..=MAX_MESSAGE_SIZE + 64).contains(&size) {
                    Event::Failed(format!("reply with size {size}: {h:02x?}"))
                } else {
                    let mut payload = vec![0u8; size as usize - 16];
                    match read_full(&mut s, &mut payload) {
                        Ok(n) if n == payload.len() => Event::Reply(Reply {
                            id: u16::from_ne_bytes([h[0], h[1]]),
                            command: u16::from_ne_bytes([h[2], h[3]]),
                            size,
                            flags: u32_at(&h, 8),
                            error: u32_at(&h, 12),
                            payload,
                        }),
                        Ok(n) => Event::Failed(format!("reply payload cut after {n} bytes")),
                        Err(e) => Event::Failed(format!("reading a reply payload: {e}")),
                    }
                }
            }
            Ok(n) => Event::Failed(format!("reply header cut after {n} bytes")),
            Err(e) => Event::Failed(format!(
                "reading a reply header: {e} (server hung or stopped replying?)"
            )),
        };
        let stop = !matches!(ev, Event::Reply(_));
        if tx.send(ev).is_err() || stop {
            return;
        }
    }
}

/// A client connection whose replies a thread reads as they come.
struct Streamer {
    s: UnixStream,
    rx: mpsc::Receiver<Event>,
}

impl Streamer {
    fn connect(server: &Server) -> Streamer {
        let s = UnixStream::connect(&server.socket).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let r = s.try_clone().expect("clone socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || reader(r, tx));
        Streamer { s, rx }
    }

    /// Writes one chunk with its descriptors (created here, closed after sending).
    fn send(&self, chunk: &Chunk, dir: &Path) -> std::io::Result<()> {
        let files: Vec<File> = chunk.fds.iter().map(|&k| make_fd(k, dir)).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        self.send_raw(&chunk.bytes, &raw)
    }

    fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut sent = 0;
        if !fds.is_empty() {
            sent = self
                .s
                .send_with_fds(&[bytes], fds)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        (&self.s).write_all(&bytes[sent..])
    }

    fn next(&self) -> Event {
        self.rx
            .recv_timeout(TIMEOUT + Duration::from_secs(10))
            .unwrap_or_else(|_| Event::Failed("reply reader stuck".into()))
    }

    fn half_close(&self) {
        let _ = self.s.shutdown(std::net::Shutdown::Write);
    }

    /// Expects the server to close the connection with no further reply.
    fn expect_closed(&self, what: &str) -> CaseResult {
        match self.next() {
            Event::Closed => Ok(()),
            other => Err(fail(format!(
                "{what}: expected the server to close, got {other:?}"
            ))),
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        // Wakes the reader thread (it holds a clone of the socket) on every path.
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

fn check_reply_shape(r: &Reply) -> CaseResult {
    match r.flags {
        REPLY => ensure!(r.error == 0, "success reply with error field {}", r.error),
        f if f == REPLY | ERROR => {
            ensure!(r.error != 0, "error reply with errno 0: {r:?}");
            ensure!(r.size == 16, "error reply with a payload: {r:?}");
        }
        f => return Err(fail(format!("reply flags {f:#x}: {r:?}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Framing model: which replies a byte stream must produce.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// A success reply (any payload).
    Ok,
    /// A success reply whose payload starts with these bytes and has this length.
    Payload { len: usize, prefix: Vec<u8> },
    /// An error reply with this errno.
    Errno(i32),
    /// Either (the payload decides).
    Any,
}

#[derive(Debug, Clone)]
struct Expected {
    id: u16,
    cmd: u16,
    want: Want,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closes the connection after the expected replies.
    Closed,
    /// The connection stays open (possibly with a message half received).
    Open,
}

#[derive(Debug)]
struct Prediction {
    replies: Vec<Expected>,
    end: End,
    /// False when a message's outcome could not be predicted (a VERSION with unknown JSON):
    /// `replies` is then only the prefix up to it, and the rest is checked for shape only.
    exact: bool,
}

/// Offsets where descriptors were attached, and how many.
type FdMarks = Vec<(usize, usize)>;

fn concat(chunks: &[Chunk]) -> (Vec<u8>, FdMarks) {
    let mut bytes = Vec::new();
    let mut marks = Vec::new();
    for c in chunks {
        if !c.fds.is_empty() {
            marks.push((bytes.len(), c.fds.len()));
        }
        bytes.extend_from_slice(&c.bytes);
    }
    (bytes, marks)
}

/// The server's framing, from its documentation: see the module comment.
fn predict(stream: &[u8], marks: &FdMarks) -> Prediction {
    let len = stream.len();
    let ctrunc = marks
        .iter()
        .filter(|m| m.1 > RECV_FDS_CAPACITY)
        .map(|m| m.0)
        .min();
    let hits = |a: usize, b: usize| ctrunc.is_some_and(|x| (a..b).contains(&x));
    let fds_in = |a: usize, b: usize| -> usize {
        marks
            .iter()
            .filter(|m| (a..b).contains(&m.0))
            .map(|m| m.1)
            .sum()
    };
    let mut replies = Vec::new();
    let mut negotiated = false;
    let mut pos = 0;
    let done = |replies, closed: bool| Prediction {
        replies,
        end: if closed { End::Closed } else { End::Open },
        exact: true,
    };
    loop {
        if pos + 16 > len {
            return done(replies, hits(pos, len));
        }
        if hits(pos, pos + 16) {
            return done(replies, true);
        }
        let h = &stream[pos..pos + 16];
        let (id, cmd, size, flags) = (
            u16::from_ne_bytes([h[0], h[1]]),
            u16::from_ne_bytes([h[2], h[3]]),
            u32_at(h, 4),
            u32_at(h, 8),
        );
        let ty = flags & 0xf;
        let bad = !(16..=MAX_MESSAGE_SIZE).contains(&size)
            || flags & !FLAGS_KNOWN != 0
            || ty > 1
            || (ty == 0 && flags & ERROR != 0);
        if bad {
            return done(replies, true);
        }
        let end = pos + size as usize;
        if end > len {
            return done(replies, hits(pos + 16, len));
        }
        if hits(pos + 16, end) {
            return done(replies, true);
        }
        if ty == 1 {
            // A reply from the client: skipped.
            pos = end;
            continue;
        }
        let (want, close, known) = command_outcome(
            &mut negotiated,
            cmd,
            &stream[pos + 16..end],
            fds_in(pos, end),
        );
        if flags & NO_REPLY == 0 {
            replies.push(Expected { id, cmd, want });
        }
        if close {
            return done(replies, true);
        }
        if !known {
            return Prediction {
                replies,
                end: End::Open,
                exact: false,
            };
        }
        pos = end;
    }
}

/// What the server answers to one command: (reply, closes the connection, predictable).
fn command_outcome(
    negotiated: &mut bool,
    cmd: u16,
    payload: &[u8],
    fds: usize,
) -> (Want, bool, bool) {
    let max_fds = match cmd {
        DMA_MAP => 1,
        DEVICE_SET_IRQS => 8,
        _ => 0,
    };
    if fds > max_fds {
        return (Want::Errno(EINVAL), false, true);
    }
    if cmd != VERSION && !*negotiated {
        return (Want::Errno(EINVAL), false, true);
    }
    match cmd {
        VERSION => {
            if *negotiated || payload.len() < 4 {
                return (Want::Errno(EINVAL), false, true);
            }
            let major = u16::from_ne_bytes([payload[0], payload[1]]);
            let json = &payload[4..];
            let valid = if json.is_empty() || json == format!("{QEMU_CAPS}\0").as_bytes() {
                true
            } else {
                let text = json.strip_suffix(&[0]).filter(|t| !t.contains(&0));
                if text.is_some_and(|t| serde_json::from_slice::<serde_json::Value>(t).is_ok()) {
                    // Valid JSON whose capabilities the model does not check.
                    return (Want::Any, false, false);
                }
                false
            };
            if !valid {
                (Want::Errno(EINVAL), false, true)
            } else if major != 0 {
                (Want::Errno(EINVAL), true, true)
            } else {
                *negotiated = true;
                (Want::Ok, false, true)
            }
        }
        DEVICE_GET_INFO => {
            // argsz below the 16-byte structure is EINVAL; otherwise the structure.
            let full = info4(16, 3, 9, 5);
            let want = match payload.len() {
                16 => match u32_at(payload, 0) as usize {
                    0..16 => Want::Errno(EINVAL),
                    _ => Want::Payload {
                        len: 16,
                        prefix: full,
                    },
                },
                _ => Want::Errno(EINVAL),
            };
            (want, false, true)
        }
        DMA_MAP
        | DMA_UNMAP
        | DEVICE_GET_REGION_INFO
        | DEVICE_GET_REGION_IO_FDS
        | DEVICE_GET_IRQ_INFO
        | DEVICE_SET_IRQS
        | REGION_READ
        | REGION_WRITE
        | DEVICE_RESET
        | REGION_WRITE_MULTI => (Want::Any, false, true),
        _ => (Want::Errno(libc::ENOSYS), false, true),
    }
}

fn check_reply(r: &Reply, e: &Expected) -> CaseResult {
    check_reply_shape(r)?;
    ensure!(
        (r.id, r.command) == (e.id, e.cmd),
        "reply id {} command {}, expected id {} command {} ({:?})",
        r.id,
        r.command,
        e.id,
        e.cmd,
        e.want
    );
    let is_err = r.flags & ERROR != 0;
    match &e.want {
        Want::Any => {}
        Want::Ok => ensure!(!is_err, "id {}: errno {}, expected success", e.id, r.error),
        Want::Errno(n) => ensure!(
            is_err && r.error == *n as u32,
            "id {} command {}: expected errno {n}, got {}",
            e.id,
            e.cmd,
            if is_err {
                format!("errno {}", r.error)
            } else {
                format!("success {:02x?}", r.payload)
            }
        ),
        Want::Payload { len, prefix } => {
            ensure!(
                !is_err,
                "id {} command {}: errno {}, expected success",
                e.id,
                e.cmd,
                r.error
            );
            ensure!(
                r.payload.len() == *len && r.payload.starts_with(prefix),
                "id {} command {}: payload {:02x?}, expected {len} bytes starting {prefix:02x?}",
                e.id,
                e.cmd,
                &r.payload[..r.payload.len().min(64)]
            );
        }
    }
    Ok(())
}

/// Sends `chunks` on a fresh connection and checks the replies against [`predict`].
///
/// A DEVICE_GET_INFO is appended: if the framing survived, the connection must still answer.
fn run_stream(h: &mut Harness, chunks: &[Chunk]) -> CaseResult {
    let mut chunks = chunks.to_vec();
    chunks.push(Chunk {
        bytes: message(0xfeed, DEVICE_GET_INFO, 0, &info_req(16)),
        fds: Vec::new(),
    });
    let chunks = &chunks[..];
    let (bytes, marks) = concat(chunks);
    let p = predict(&bytes, &marks);
    if std::env::var_os("FL_STATS").is_some() {
        eprintln!(
            "STAT {} replies={} end={:?} exact={} errs={}",
            h.tag,
            p.replies.len(),
            p.end,
            p.exact,
            p.replies
                .iter()
                .filter(|e| matches!(e.want, Want::Errno(_)))
                .count()
        );
    }
    let st = Streamer::connect(&h.server);
    let mut write_failed = None;
    for c in chunks {
        if let Err(e) = st.send(c, h.dir()) {
            write_failed = Some(e);
            break;
        }
    }
    for (i, e) in p.replies.iter().enumerate() {
        match st.next() {
            Event::Reply(r) => check_reply(&r, e)
                .map_err(|err| fail(format!("reply {i} of {}: {err}", p.replies.len())))?,
            other => {
                return Err(fail(format!(
                "expected reply {i} of {} ({e:?}), got {other:?} (write error: {write_failed:?})",
                p.replies.len()
            )))
            }
        }
    }
    if !p.exact {
        st.half_close();
        loop {
            match st.next() {
                Event::Reply(r) => check_reply_shape(&r)?,
                Event::Closed => return Ok(()),
                Event::Failed(e) => return Err(fail(e)),
            }
        }
    }
    match p.end {
        End::Closed => st.expect_closed("after an untrustworthy message"),
        End::Open => {
            ensure!(
                write_failed.is_none(),
                "writing failed ({write_failed:?}) though the connection should be open"
            );
            // Hang up; the server must notice (also in the middle of a message) and close.
            st.half_close();
            st.expect_closed("after the client's hang-up")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Random message sequences after a valid VERSION.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum SizeMode {
    Honest,
    Delta(i32),
    Absolute(u32),
}

#[derive(Debug, Clone)]
struct Msg {
    id: u16,
    cmd: u16,
    flags: u32,
    size: SizeMode,
    payload: Vec<u8>,
    fds: Vec<FdKind>,
}

impl Msg {
    fn chunk(&self) -> Chunk {
        let honest = 16 + self.payload.len() as i64;
        let size = match self.size {
            SizeMode::Honest => honest as u32,
            SizeMode::Delta(d) => (honest + i64::from(d)).max(0) as u32,
            SizeMode::Absolute(v) => v,
        };
        let mut bytes = message(self.id, self.cmd, self.flags, &self.payload);
        bytes[4..8].copy_from_slice(&size.to_ne_bytes());
        Chunk {
            bytes,
            fds: self.fds.clone(),
        }
    }
}

fn page_ish() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..64).prop_map(|p| 0x10_0000 + p * 4096),
        1 => any::<u64>(),
        1 => 0u64..0x2000,
        1 => (u64::MAX - 0x3000)..=u64::MAX,
    ]
}

fn region_index() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => prop::sample::select(vec![BAR0, BAR1, CONFIG]),
        2 => 0u32..9,
        1 => 9u32..16,
        1 => any::<u32>(),
    ]
}

fn region_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..0x80,
        2 => prop::sample::select(vec![0xffc_u64, 0xfff, 0x1000, 0xfffc, 0xffff, 0x10000]),
        1 => 0u64..0x11000,
        1 => any::<u64>(),
        1 => (u64::MAX - 16)..=u64::MAX,
    ]
}

fn access_count() -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(0u32),
        8 => 1u32..=8,
        2 => 9u32..=4096,
        1 => prop::sample::select(vec![0xfff0u32, 0x10000, 0x10004, 1 << 20, (1 << 20) + 1]),
        1 => any::<u32>(),
    ]
}

/// A payload shaped like what `cmd` takes, with random fields.
fn structured_payload(cmd: u16) -> BoxedStrategy<Vec<u8>> {
    match cmd {
        VERSION => prop_oneof![
            Just(version_payload(0, 0, QEMU_CAPS)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| version_payload(a, b, "{}")),
        ]
        .boxed(),
        DMA_MAP => (
            prop_oneof![4 => Just(32u32), 1 => any::<u32>()],
            0u32..8,
            page_ish(),
            page_ish(),
            page_ish(),
        )
            .prop_map(|(argsz, flags, off, iova, size)| {
                let mut p = dma_map_payload(flags, off, iova, size);
                p[0..4].copy_from_slice(&argsz.to_ne_bytes());
                p
            })
            .boxed(),
        DMA_UNMAP => (0u32..8, page_ish(), page_ish())
            .prop_map(|(flags, iova, size)| dma_unmap_payload(flags, iova, size))
            .boxed(),
        DEVICE_GET_INFO | DEVICE_GET_REGION_IO_FDS | DEVICE_GET_IRQ_INFO => {
            (0u32..40, 0u32..3, 0u32..10, 0u32..4)
                .prop_map(|(a, b, c, d)| info4(a, b, c, d))
                .boxed()
        }
        DEVICE_GET_REGION_INFO => (0u32..64, 0u32..10)
            .prop_map(|(a, i)| region_info_req(a, i))
            .boxed(),
        DEVICE_SET_IRQS => (
            prop_oneof![Just(1u32 | 32), Just(2 | 32), Just(4 | 32), 0u32..64],
            0u32..6,
            0u32..6,
            0u32..6,
            prop::collection::vec(any::<u8>(), 0..6),
        )
            .prop_map(|(flags, index, start, count, data)| {
                let mut p = irq_set(flags, index, start, count);
                p[0..4].copy_from_slice(&(20 + data.len() as u32).to_ne_bytes());
                p.extend_from_slice(&data);
                p
            })
            .boxed(),
        REGION_READ => (region_offset(), region_index(), access_count())
            .prop_map(|(o, r, c)| access(o, r, c, &[]))
            .boxed(),
        REGION_WRITE => (
            region_offset(),
            region_index(),
            0u32..=16,
            any::<u64>(),
            -2i32..=2,
        )
            .prop_map(|(o, r, c, v, delta)| {
                let len = (c as i32 + delta).clamp(0, 16) as usize;
                let data: Vec<u8> = v.to_le_bytes().iter().cycle().take(len).copied().collect();
                access(o, r, c, &data)
            })
            .boxed(),
        REGION_WRITE_MULTI => (
            prop::collection::vec(
                (region_offset(), region_index(), 0u32..=9, any::<u64>()),
                0..4,
            ),
            -1i64..=1,
        )
            .prop_map(|(entries, delta)| {
                let mut p = ((entries.len() as i64 + delta).max(0) as u64)
                    .to_ne_bytes()
                    .to_vec();
                for (o, r, c, v) in entries {
                    p.extend(access(o, r, c, &v.to_le_bytes()));
                }
                p
            })
            .boxed(),
        DEVICE_RESET => Just(Vec::new()).boxed(),
        _ => prop::collection::vec(any::<u8>(), 0..32).boxed(),
    }
}

fn payload_for(cmd: u16) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => structured_payload(cmd),
        // One byte changed, or a few cut off / added.
        2 => (structured_payload(cmd), any::<Index>(), any::<u8>(), -3i32..=3).prop_map(
            |(mut p, at, b, delta)| {
                if !p.is_empty() {
                    let i = at.index(p.len());
                    p[i] = b;
                }
                let len = (p.len() as i32 + delta).max(0) as usize;
                p.resize(len, 0xa5);
                p
            }
        ),
        3 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(any::<u8>(), 64..4096),
        1 => prop_oneof![9 => Just(0usize), 1 => 0usize..=200_000].prop_map(|n| vec![0x5a; n]),
    ]
}

fn command() -> impl Strategy<Value = u16> {
    prop_oneof![
        12 => 1u16..=18,
        1 => Just(0u16),
        1 => any::<u16>(),
    ]
}

fn header_flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        150 => Just(0u32),
        40 => Just(NO_REPLY),
        3 => Just(REPLY),
        2 => Just(REPLY | ERROR),
        1 => Just(REPLY | NO_REPLY),
        1 => Just(ERROR),
        1 => 0u32..0x40,
        1 => any::<u32>(),
    ]
}

fn size_mode() -> impl Strategy<Value = SizeMode> {
    prop_oneof![
        200 => Just(SizeMode::Honest),
        2 => (-24i32..=24).prop_map(SizeMode::Delta),
        1 => (0u32..16).prop_map(SizeMode::Absolute),
        1 => (16u32..=MAX_MESSAGE_SIZE + 16).prop_map(SizeMode::Absolute),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    command().prop_flat_map(|cmd| {
        (
            any::<u16>(),
            header_flags(),
            size_mode(),
            payload_for(cmd),
            fd_list(),
        )
            .prop_map(move |(id, flags, size, payload, fds)| Msg {
                id,
                cmd,
                flags,
                size,
                payload,
                fds,
            })
    })
}

#[test]
fn random_message_sequences() {
    run_property(
        "rnd-msgs",
        384,
        prop::collection::vec(msg(), 1..32),
        |h, msgs| {
            let mut chunks = vec![Chunk {
                bytes: message(1, VERSION, 0, &version_payload(0, 0, QEMU_CAPS)),
                fds: Vec::new(),
            }];
            chunks.extend(msgs.iter().map(Msg::chunk));
            run_stream(h, &chunks)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Fully random byte streams.
// ---------------------------------------------------------------------------------------------

#[test]
fn random_byte_streams() {
    let strategy = (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 1..4096),
        prop::collection::vec((1usize..700, fd_list()), 1..8),
    );
    run_property(
        "rnd-bytes",
        192,
        strategy,
        |h, (version_first, bytes, pieces)| {
            let mut chunks = Vec::new();
            if version_first {
                chunks.push(Chunk {
                    bytes: message(1, VERSION, 0, &version_payload(0, 0, QEMU_CAPS)),
                    fds: Vec::new(),
                });
            }
            let mut rest = &bytes[..];
            for (len, fds) in pieces {
                if rest.is_empty() {
                    break;
                }
                let n = len.min(rest.len());
                chunks.push(Chunk {
                    bytes: rest[..n].to_vec(),
                    fds,
                });
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                chunks.push(Chunk {
                    bytes: rest.to_vec(),
                    fds: Vec::new(),
                });
            }
            run_stream(h, &chunks)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Valid messages split at random boundaries, with exactly known replies.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ValidOp {
    GetInfo,
    ReadConfig(u32),
    ReadId,
    WriteWb { hi: bool, val: u32, posted: bool },
    ReadWb { hi: bool },
    MultiWb { lo: u32, hi: u32, posted: bool },
    RegionInfo(u32),
    IrqInfo(u32),
    Map { slot: u64, pages: u64 },
    Unmap { slot: u64 },
    AssignIrqs { start: u32, count: u32 },
    DeassignIrqs { start: u32, count: u32 },
    Trigger { vector: u32 },
    Reset,
    Unknown(u16),
}

fn valid_op() -> impl Strategy<Value = ValidOp> {
    prop_oneof![
        1 => Just(ValidOp::GetInfo),
        1 => (2u32..=256).prop_map(ValidOp::ReadConfig),
        1 => Just(ValidOp::ReadId),
        1 => (any::<bool>(), any::<u32>(), any::<bool>())
            .prop_map(|(hi, val, posted)| ValidOp::WriteWb { hi, val, posted }),
        1 => any::<bool>().prop_map(|hi| ValidOp::ReadWb { hi }),
        1 => (any::<u32>(), any::<u32>(), any::<bool>())
            .prop_map(|(lo, hi, posted)| ValidOp::MultiWb { lo, hi, posted }),
        1 => (0u32..9).prop_map(ValidOp::RegionInfo),
        1 => (0u32..5).prop_map(ValidOp::IrqInfo),
        2 => (0u64..6, 1u64..=4).prop_map(|(slot, pages)| ValidOp::Map { slot, pages }),
        1 => (0u64..6).prop_map(|slot| ValidOp::Unmap { slot }),
        1 => (0u32..4)
            .prop_flat_map(|s| (Just(s), 1..=4 - s))
            .prop_map(|(start, count)| ValidOp::AssignIrqs { start, count }),
        1 => (0u32..4)
            .prop_flat_map(|s| (Just(s), 1..=4 - s))
            .prop_map(|(start, count)| ValidOp::DeassignIrqs { start, count }),
        1 => (0u32..4).prop_map(|vector| ValidOp::Trigger { vector }),
        1 => Just(ValidOp::Reset),
        1 => prop::sample::select(vec![0u16, 11, 12, 14, 16, 17, 18, 99, 0xffff]).prop_map(ValidOp::Unknown),
    ]
}

/// State the valid-op model tracks.
#[derive(Default)]
struct ValidModel {
    wb: u64,
    mapped: BTreeMap<u64, u64>,
    /// MSI-X vectors: current eventfd (index into the test's eventfds) and pending bit.
    vec_fd: [Option<usize>; 4],
    pending: [bool; 4],
    /// Interrupts each eventfd must have received.
    signals: Vec<u64>,
}

const SLOT_BASE: u64 = 0x4000_0000;
const SLOT_SIZE: u64 = 0x10_0000;

/// One encoded request: flags, command, payload, descriptors, and the reply it must get.
struct Encoded {
    flags: u32,
    cmd: u16,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    want: Option<Want>,
}

fn encode_valid(op: &ValidOp, m: &mut ValidModel, eventfds: &mut Vec<OwnedFd>) -> Encoded {
    let e = |cmd, payload, want| Encoded {
        flags: 0,
        cmd,
        payload,
        fds: Vec::new(),
        want: Some(want),
    };
    let ok_payload = |p: Vec<u8>| Want::Payload {
        len: p.len(),
        prefix: p,
    };
    let reg = |hi: bool| if hi { abi::REG_WB_HI } else { abi::REG_WB_LO };
    match *op {
        ValidOp::GetInfo => e(
            DEVICE_GET_INFO,
            info_req(16),
            ok_payload(info4(16, 3, 9, 5)),
        ),
        ValidOp::ReadConfig(n) => {
            let mut prefix = access(0, CONFIG, n, &[]);
            prefix.extend_from_slice(&abi::PCI_VENDOR_ID.to_le_bytes());
            e(
                REGION_READ,
                access(0, CONFIG, n, &[]),
                Want::Payload {
                    len: 16 + n as usize,
                    prefix,
                },
            )
        }
        ValidOp::ReadId => e(
            REGION_READ,
            access(abi::REG_ID, BAR0, 4, &[]),
            ok_payload(access(abi::REG_ID, BAR0, 4, &abi::ID_MAGIC.to_le_bytes())),
        ),
        ValidOp::WriteWb { hi, val, posted } => {
            if hi {
                m.wb = (m.wb & 0xffff_ffff) | (u64::from(val) << 32);
            } else {
                m.wb = (m.wb & !0xffff_ffff) | u64::from(val);
            }
            let p = access(reg(hi), BAR0, 4, &val.to_le_bytes());
            let mut r = e(REGION_WRITE, p.clone(), ok_payload(p[..16].to_vec()));
            if posted {
                r.flags = NO_REPLY;
                r.want = None;
            }
            r
        }
        ValidOp::ReadWb { hi } => {
            let v = if hi { (m.wb >> 32) as u32 } else { m.wb as u32 };
            e(
                REGION_READ,
                access(reg(hi), BAR0, 4, &[]),
                ok_payload(access(reg(hi), BAR0, 4, &v.to_le_bytes())),
            )
        }
        ValidOp::MultiWb { lo, hi, posted } => {
            m.wb = (u64::from(hi) << 32) | u64::from(lo);
            let mut p = 2u64.to_ne_bytes().to_vec();
            for (r, v) in [(abi::REG_WB_LO, lo), (abi::REG_WB_HI, hi)] {
                p.extend(access(r, BAR0, 4, &u64::from(v).to_le_bytes()));
            }
            let mut r = e(
                REGION_WRITE_MULTI,
                p,
                ok_payload(2u64.to_ne_bytes().to_vec()),
            );
            if posted {
                r.flags = NO_REPLY;
                r.want = None;
            }
            r
        }
        ValidOp::RegionInfo(i) => {
            let (flags, size) = match i {
                BAR0 => (3, abi::BAR0_SIZE),
                BAR1 => (3, abi::BAR1_SIZE),
                CONFIG => (3, CONFIG_SIZE),
                _ => (0, 0),
            };
            let mut want = info4(32, flags, i, 0);
            want.extend_from_slice(&size.to_ne_bytes());
            want.extend_from_slice(&0u64.to_ne_bytes());
            e(
                DEVICE_GET_REGION_INFO,
                region_info_req(32, i),
                ok_payload(want),
            )
        }
        ValidOp::IrqInfo(i) => {
            let count = match i {
                MSIX => u32::from(abi::MSIX_VECTORS),
                3 => 1,
                _ => 0,
            };
            e(
                DEVICE_GET_IRQ_INFO,
                info4(16, 0, i, 0),
                ok_payload(info4(16, 1, i, count)),
            )
        }
        ValidOp::Map { slot, pages } => {
            let iova = SLOT_BASE + slot * SLOT_SIZE;
            let size = pages * 4096;
            let want = match m.mapped.entry(iova) {
                std::collections::btree_map::Entry::Occupied(_) => Want::Errno(libc::EEXIST),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(size);
                    ok_payload(Vec::new())
                }
            };
            let mut r = e(DMA_MAP, dma_map_payload(3, 0, iova, size), want);
            r.fds.push(OwnedFd::from(memfd(size)));
            r
        }
        ValidOp::Unmap { slot } => {
            let iova = SLOT_BASE + slot * SLOT_SIZE;
            let size = m.mapped.get(&iova).copied().unwrap_or(4096);
            let p = dma_unmap_payload(0, iova, size);
            let want = match m.mapped.remove(&iova) {
                Some(_) => ok_payload(p.clone()),
                None => Want::Errno(libc::ENOENT),
            };
            e(DMA_UNMAP, p, want)
        }
        ValidOp::AssignIrqs { start, count } => {
            let mut r = e(
                DEVICE_SET_IRQS,
                irq_set(4 | 32, MSIX, start, count),
                ok_payload(Vec::new()),
            );
            for v in start..start + count {
                let fd = eventfd();
                r.fds.push(fd.try_clone().expect("dup eventfd"));
                eventfds.push(fd);
                m.signals.push(0);
                let idx = eventfds.len() - 1;
                m.vec_fd[v as usize] = Some(idx);
                if std::mem::take(&mut m.pending[v as usize]) {
                    m.signals[idx] += 1;
                }
            }
            r
        }
        ValidOp::DeassignIrqs { start, count } => {
            for v in start..start + count {
                m.vec_fd[v as usize] = None;
            }
            e(
                DEVICE_SET_IRQS,
                irq_set(4 | 32, MSIX, start, count),
                ok_payload(Vec::new()),
            )
        }
        ValidOp::Trigger { vector } => {
            match m.vec_fd[vector as usize] {
                Some(idx) => m.signals[idx] += 1,
                None => m.pending[vector as usize] = true,
            }
            e(
                DEVICE_SET_IRQS,
                irq_set(1 | 32, MSIX, vector, 1),
                ok_payload(Vec::new()),
            )
        }
        ValidOp::Reset => {
            m.wb = 0;
            m.pending = [false; 4];
            e(DEVICE_RESET, Vec::new(), ok_payload(Vec::new()))
        }
        ValidOp::Unknown(cmd) => e(cmd, vec![1, 2, 3], Want::Errno(libc::ENOSYS)),
    }
}

fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a u64 from a non-blocking eventfd we own.
    let r = unsafe { libc::read(fd.as_raw_fd(), std::ptr::from_mut(&mut v).cast(), 8) };
    if r == 8 {
        v
    } else {
        0
    }
}

#[test]
fn split_valid_messages() {
    let strategy = (
        prop::collection::vec(
            (valid_op(), any::<Index>(), any::<Index>(), any::<bool>()),
            1..30,
        ),
        prop::collection::vec(any::<Index>(), 0..24),
    );
    run_property("split", 256, strategy, |h, (ops, cuts)| {
        let mut model = ValidModel::default();
        let mut eventfds = Vec::new();
        let mut bytes = message(1, VERSION, 0, &version_payload(0, 0, QEMU_CAPS));
        let mut expected = vec![Expected {
            id: 1,
            cmd: VERSION,
            want: Want::Ok,
        }];
        // Descriptors by stream offset, and the offsets where a new write starts.
        let mut marks: BTreeMap<usize, Vec<OwnedFd>> = BTreeMap::new();
        let mut starts = BTreeSet::from([0usize]);
        for (i, (op, at1, at2, split_fds)) in ops.iter().enumerate() {
            let mut enc = encode_valid(op, &mut model, &mut eventfds);
            let id = 2 + i as u16;
            let m = message(id, enc.cmd, enc.flags, &enc.payload);
            let start = bytes.len();
            if !enc.fds.is_empty() {
                // On any byte of the message; split over two writes if asked (order kept).
                let mut a = start + at1.index(m.len());
                let mut b = start + at2.index(m.len());
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                let second = if *split_fds && enc.fds.len() > 1 && a != b {
                    enc.fds.split_off(enc.fds.len() / 2)
                } else {
                    Vec::new()
                };
                marks.entry(a).or_default().append(&mut enc.fds);
                starts.insert(a);
                if !second.is_empty() {
                    marks.insert(b, second);
                    starts.insert(b);
                }
            }
            bytes.extend_from_slice(&m);
            if let Some(want) = enc.want {
                expected.push(Expected {
                    id,
                    cmd: enc.cmd,
                    want,
                });
            }
        }
        for c in &cuts {
            starts.insert(c.index(bytes.len()));
        }
        let starts: Vec<usize> = starts.into_iter().collect();
        let st = Streamer::connect(&h.server);
        for (i, &s) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
            let fds: Vec<RawFd> = marks
                .get(&s)
                .map(|v| v.iter().map(|f| f.as_raw_fd()).collect())
                .unwrap_or_default();
            st.send_raw(&bytes[s..end], &fds)
                .map_err(|e| fail(format!("write: {e}")))?;
        }
        drop(marks);
        for (i, e) in expected.iter().enumerate() {
            match st.next() {
                Event::Reply(r) => {
                    check_reply(&r, e).map_err(|err| fail(format!("reply {i}: {err}")))?
                }
                other => return Err(fail(format!("expected reply {i} ({e:?}), got {other:?}"))),
            }
        }
        // Interrupt triggers are delivered before their reply.
        for (i, fd) in eventfds.iter().enumerate() {
            let got = eventfd_count(fd);
            ensure!(
                got == model.signals[i],
                "eventfd {i}: {got} interrupts, expected {}",
                model.signals[i]
            );
        }
        st.half_close();
        st.expect_closed("after the client's hang-up")
    });
}

// ---------------------------------------------------------------------------------------------
// Region access sweeps.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum RegionOp {
    Read {
        region: u32,
        offset: u64,
        count: u32,
    },
    Write {
        region: u32,
        offset: u64,
        count: u32,
        len_delta: i32,
        posted: bool,
    },
    Multi {
        entries: Vec<(u32, u64, u32)>,
        posted: bool,
    },
    /// WB_LO := `before`; then a WRITE_MULTI of WB_LO := `after` among `others`: whatever the
    /// other entries are, the valid WB_LO entry is written (each entry is its own write).
    EntriesIndependent {
        before: u32,
        after: u32,
        at: Index,
        others: Vec<(u32, u64, u32)>,
    },
}

fn multi_entry() -> impl Strategy<Value = (u32, u64, u32)> {
    prop_oneof![
        3 => (region_index(), region_offset(), 0u32..=9),
        // Aimed at BAR0 registers, sometimes with a bad width or alignment.
        2 => (Just(BAR0), (0u64..0x80), prop::sample::select(vec![1u32, 2, 4, 4, 4, 8])),
    ]
}

fn region_op() -> impl Strategy<Value = RegionOp> {
    prop_oneof![
        6 => (region_index(), region_offset(), access_count())
            .prop_map(|(region, offset, count)| RegionOp::Read { region, offset, count }),
        6 => (region_index(), region_offset(), access_count(), prop_oneof![6 => Just(0i32), 1 => -3i32..=3], any::<bool>())
            .prop_map(|(region, offset, count, len_delta, posted)| RegionOp::Write {
                region,
                offset,
                count,
                len_delta,
                posted,
            }),
        2 => (prop::collection::vec(multi_entry(), 0..6), any::<bool>())
            .prop_map(|(entries, posted)| RegionOp::Multi { entries, posted }),
        2 => (any::<u32>(), any::<u32>(), any::<Index>(), prop::collection::vec(multi_entry(), 0..4))
            .prop_map(|(before, after, at, others)| RegionOp::EntriesIndependent { before, after, at, others }),
    ]
}

/// The documented access rules: `Err(errno)` or `Ok(())`.
fn access_outcome(sizes: &[u64; 9], region: u32, offset: u64, count: u32) -> Result<(), i32> {
    if count == 0 {
        return Err(EINVAL);
    }
    if count > 1 << 20 {
        return Err(libc::E2BIG);
    }
    let size = *sizes.get(region as usize).ok_or(EINVAL)?;
    if size == 0 {
        return Err(EINVAL);
    }
    match offset.checked_add(u64::from(count)) {
        Some(end) if end <= size => {}
        _ => return Err(EINVAL),
    }
    // BAR0 takes aligned 32-bit accesses only.
    if region == BAR0 && (count != 4 || offset % 4 != 0) {
        return Err(libc::EFAULT);
    }
    Ok(())
}

/// The errnos a WRITE_MULTI of `entries` may fail with (empty: it must succeed).
fn multi_outcome(sizes: &[u64; 9], entries: &[(u32, u64, u32)]) -> Vec<i32> {
    if entries.is_empty() {
        return vec![EINVAL];
    }
    entries
        .iter()
        .filter_map(|&(r, o, c)| {
            if c > 8 {
                Some(EINVAL)
            } else {
                access_outcome(sizes, r, o, c).err()
            }
        })
        .collect()
}

fn multi_payload(entries: &[(u32, u64, u32)], value: impl Fn(usize) -> u64) -> Vec<u8> {
    let mut p = (entries.len() as u64).to_ne_bytes().to_vec();
    for (i, &(r, o, c)) in entries.iter().enumerate() {
        p.extend(access(o, r, c, &value(i).to_le_bytes()));
    }
    p
}

fn region_sizes(c: &mut Raw) -> [u64; 9] {
    let mut sizes = [0u64; 9];
    for (i, s) in sizes.iter_mut().enumerate() {
        let r = c
            .call(DEVICE_GET_REGION_INFO, &region_info_req(32, i as u32))
            .expect("region info");
        *s = u64_at(&r, 16);
    }
    sizes
}

fn read_id(c: &mut Raw) -> CaseResult {
    let id = c.read32(BAR0, abi::REG_ID);
    ensure!(id == abi::ID_MAGIC, "BAR0 ID reads {id:#x}");
    let v = c.region_read(CONFIG, 0, 2).expect("vendor id");
    ensure!(
        u16::from_le_bytes([v[0], v[1]]) == abi::PCI_VENDOR_ID,
        "vendor id {v:02x?}"
    );
    Ok(())
}

fn expect_outcome(
    what: &str,
    got: Result<Vec<u8>, u32>,
    allowed: &[i32],
) -> Result<Vec<u8>, TestCaseError> {
    match got {
        Ok(p) if allowed.is_empty() => Ok(p),
        Ok(p) => Err(fail(format!(
            "{what}: succeeded ({} bytes), expected errno in {allowed:?}",
            p.len()
        ))),
        Err(e) if allowed.contains(&(e as i32)) => Ok(Vec::new()),
        Err(e) if allowed.is_empty() => Err(fail(format!("{what}: errno {e}, expected success"))),
        Err(e) => Err(fail(format!(
            "{what}: errno {e}, expected one of {allowed:?}"
        ))),
    }
}

fn run_region_op(c: &mut Raw, sizes: &[u64; 9], op: &RegionOp) -> CaseResult {
    match op {
        &RegionOp::Read {
            region,
            offset,
            count,
        } => {
            let want: Vec<i32> = access_outcome(sizes, region, offset, count)
                .err()
                .into_iter()
                .collect();
            let what = format!("read {offset:#x}+{count:#x} of region {region}");
            let r = expect_outcome(
                &what,
                c.call(REGION_READ, &access(offset, region, count, &[])),
                &want,
            )?;
            if want.is_empty() {
                ensure!(
                    r.len() == 16 + count as usize && r[..16] == access(offset, region, count, &[]),
                    "{what}: reply of {} bytes",
                    r.len()
                );
                if region == BAR0 && offset == abi::REG_ID {
                    ensure!(
                        u32_at(&r, 16) == abi::ID_MAGIC,
                        "{what}: ID {:#x}",
                        u32_at(&r, 16)
                    );
                }
                if region == CONFIG && offset == 0 && count >= 2 {
                    ensure!(
                        u16::from_le_bytes([r[16], r[17]]) == abi::PCI_VENDOR_ID,
                        "{what}: vendor id"
                    );
                }
            }
        }
        &RegionOp::Write {
            region,
            offset,
            count,
            len_delta,
            posted,
        } => {
            // Never send more than a message may carry; a mismatched length is EINVAL.
            let len = if count as usize <= (1 << 20) + 64 {
                (count as i64 + i64::from(len_delta)).max(0) as usize
            } else {
                8
            };
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7)).collect();
            let p = access(offset, region, count, &data);
            if posted {
                c.send(REGION_WRITE, NO_REPLY, &p, &[]);
                return Ok(());
            }
            let want: Vec<i32> = if len != count as usize {
                vec![EINVAL]
            } else {
                access_outcome(sizes, region, offset, count)
                    .err()
                    .into_iter()
                    .collect()
            };
            let what = format!("write {offset:#x}+{count:#x} ({len} bytes) to region {region}");
            let r = expect_outcome(&what, c.call(REGION_WRITE, &p), &want)?;
            if want.is_empty() {
                ensure!(r == p[..16], "{what}: reply {r:02x?}");
            }
        }
        RegionOp::Multi { entries, posted } => {
            let p = multi_payload(entries, |i| 0x0101_0101_0101_0101 * i as u64);
            if *posted {
                c.send(REGION_WRITE_MULTI, NO_REPLY, &p, &[]);
                return Ok(());
            }
            let want = multi_outcome(sizes, entries);
            let what = format!("write-multi {entries:x?}");
            let r = expect_outcome(&what, c.call(REGION_WRITE_MULTI, &p), &want)?;
            if want.is_empty() {
                ensure!(
                    r == (entries.len() as u64).to_ne_bytes(),
                    "{what}: reply {r:02x?}"
                );
            }
        }
        RegionOp::EntriesIndependent {
            before,
            after,
            at,
            others,
        } => {
            // Only entries that cannot reset the device or touch WB_LO themselves.
            let mut entries: Vec<(u32, u64, u32)> = others
                .iter()
                .copied()
                .filter(|&(r, o, _)| r != CONFIG && !(r == BAR0 && o <= abi::REG_WB_HI))
                .collect();
            let pos = at.index(entries.len() + 1);
            entries.insert(pos, (BAR0, abi::REG_WB_LO, 4));
            c.write32(abi::REG_WB_LO, *before);
            let p = multi_payload(&entries, |i| if i == pos { u64::from(*after) } else { 0 });
            let want = multi_outcome(sizes, &entries);
            let what = format!("write-multi {entries:x?}");
            expect_outcome(&what, c.call(REGION_WRITE_MULTI, &p), &want)?;
            let wb = c.read32(BAR0, abi::REG_WB_LO);
            ensure!(
                wb == *after,
                "{what}: WB_LO is {wb:#x} after the {}, expected {after:#x} (before {before:#x})",
                if want.is_empty() {
                    "success"
                } else {
                    "error reply"
                }
            );
        }
    }
    Ok(())
}

#[test]
fn region_access_sweep() {
    run_property(
        "regions",
        256,
        prop::collection::vec(region_op(), 1..40),
        |h, ops| {
            let mut c = h.server.connect();
            c.negotiate();
            let sizes = region_sizes(&mut c);
            ensure!(
                sizes[BAR0 as usize] == abi::BAR0_SIZE && sizes[BAR1 as usize] == abi::BAR1_SIZE,
                "region sizes {sizes:x?}"
            );
            for op in &ops {
                run_region_op(&mut c, &sizes, op)?;
            }
            read_id(&mut c)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// DMA_MAP / DMA_UNMAP against a model of the region table.
// ---------------------------------------------------------------------------------------------

const WINDOW: u64 = 0x8000_0000;
const WINDOW_PAGES: u64 = 48;
const PAGE: u64 = 4096;
const MAX_REGION: u64 = 1 << 40;

#[derive(Debug, Clone)]
enum DmaOp {
    Map {
        argsz: u32,
        flags: u32,
        offset: u64,
        iova: u64,
        size: u64,
        fds: Vec<FdKind>,
    },
    Unmap {
        argsz: u32,
        flags: u32,
        iova: u64,
        size: u64,
        len: usize,
    },
    /// Unmap a mapped region exactly, or with a wrong size.
    UnmapMapped { pick: Index, wrong_size: bool },
    /// Can the device reach this page, and where do its writes land?
    Probe {
        pick: Index,
        page: u64,
        of_mapped: bool,
    },
    /// FENCE commands (8-byte device writes) to random addresses, from a command queue in a
    /// device-visible region: they must land exactly where the model says, and the first one
    /// outside device-visible memory must stop the queue with FENCE_DMA.
    Fences { ring: Index, targets: Vec<Fence> },
}

#[derive(Debug, Clone)]
struct Fence {
    kind: u8,
    pick: Index,
    page: u64,
    offset: u64,
    value: u64,
}

fn fence() -> impl Strategy<Value = Fence> {
    (
        0u8..5,
        any::<Index>(),
        0..WINDOW_PAGES,
        0..PAGE,
        any::<u64>(),
    )
        .prop_map(|(kind, pick, page, offset, value)| Fence {
            kind,
            pick,
            page,
            offset,
            value,
        })
}

impl Fence {
    /// The target address: inside a mapped region, at or just past its end, anywhere in the
    /// window, or misaligned.
    fn addr(&self, m: &DmaModel) -> u64 {
        let region = (!m.regions.is_empty()).then(|| {
            m.regions
                .iter()
                .nth(self.pick.index(m.regions.len()))
                .unwrap()
        });
        let aligned = self.offset & !7;
        match (self.kind, region) {
            (0 | 1, Some((&iova, r))) => iova + (self.page % (r.size / PAGE)) * PAGE + aligned,
            (2, Some((&iova, r))) => iova + r.size - 8 + (self.offset & 8),
            (3, Some((&iova, _))) => iova + aligned + 1 + self.offset % 7,
            _ => WINDOW + self.page * PAGE + aligned,
        }
    }
}

fn dma_iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (0..WINDOW_PAGES).prop_map(|p| WINDOW + p * PAGE),
        1 => (0..WINDOW_PAGES, 1u64..PAGE).prop_map(|(p, o)| WINDOW + p * PAGE + o),
        1 => any::<u64>().prop_map(|v| v & !(PAGE - 1)),
        1 => Just(!(PAGE - 1)),
        1 => Just(2 * MAX_REGION),
    ]
}

fn dma_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (1u64..=12).prop_map(|p| p * PAGE),
        1 => Just(0u64),
        1 => 1u64..PAGE,
        1 => Just(MAX_REGION),
        1 => Just(MAX_REGION + PAGE),
        1 => any::<u64>(),
    ]
}

fn dma_fds() -> impl Strategy<Value = Vec<FdKind>> {
    let mem = prop_oneof![
        8 => (0u64..=16).prop_map(|p| FdKind::Mem(p * PAGE)),
        1 => (1u64..70_000).prop_map(FdKind::Mem),
        1 => Just(FdKind::Mem(MAX_REGION)),
    ];
    prop_oneof![
        3 => Just(Vec::new()),
        10 => mem.prop_map(|m| vec![m]),
        1 => Just(vec![FdKind::Event]),
        1 => Just(vec![FdKind::ReadOnly(16 * PAGE)]),
        1 => Just(vec![FdKind::Dir]),
        1 => Just(vec![FdKind::Mem(PAGE), FdKind::Mem(PAGE)]),
    ]
}

fn dma_op() -> impl Strategy<Value = DmaOp> {
    let map = (
        prop_oneof![12 => Just(32u32), 1 => 0u32..32, 1 => 33u32..100],
        prop_oneof![8 => Just(3u32), 2 => Just(1), 1 => Just(0), 1 => Just(2), 1 => 0u32..16, 1 => any::<u32>()],
        prop_oneof![6 => Just(0u64), 3 => (0u64..8).prop_map(|p| p * PAGE), 1 => 1u64..PAGE, 1 => any::<u64>()],
        dma_iova(),
        dma_size(),
        dma_fds(),
    )
        .prop_map(|(argsz, flags, offset, iova, size, fds)| DmaOp::Map {
            argsz,
            flags,
            offset,
            iova,
            size,
            fds,
        });
    let unmap = (
        prop_oneof![12 => Just(24u32), 1 => 0u32..24, 1 => 25u32..100],
        prop_oneof![10 => Just(0u32), 1 => Just(1), 2 => Just(2), 1 => any::<u32>()],
        prop_oneof![1 => Just(0u64), 3 => dma_iova()],
        prop_oneof![1 => Just(0u64), 3 => dma_size()],
        prop_oneof![12 => Just(24usize), 1 => 0usize..24, 1 => 25usize..40],
    )
        .prop_map(|(argsz, flags, iova, size, len)| DmaOp::Unmap {
            argsz,
            flags,
            iova,
            size,
            len,
        });
    prop_oneof![
        8 => map,
        2 => unmap,
        3 => (any::<Index>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, wrong_size)| DmaOp::UnmapMapped { pick, wrong_size }),
        2 => (any::<Index>(), prop::collection::vec(fence(), 1..7))
            .prop_map(|(ring, targets)| DmaOp::Fences { ring, targets }),
        2 => (any::<Index>(), 0..WINDOW_PAGES, any::<bool>())
            .prop_map(|(pick, page, of_mapped)| DmaOp::Probe { pick, page, of_mapped }),
    ]
}

#[derive(Debug)]
struct DmaRegion {
    size: u64,
    /// Our copy of the file passed with it, and the region's offset in that file.
    file: Option<(File, u64)>,
    /// Device-visible (mapped read-write from a file).
    visible: bool,
    /// Writable without a file: the device reaches it through DMA_READ/DMA_WRITE requests to
    /// the client (`tests/fdless.rs`), which this client does not serve, so probes and fences
    /// leave such regions out.
    remote: bool,
}

#[derive(Default)]
struct DmaModel {
    regions: BTreeMap<u64, DmaRegion>,
}

impl DmaModel {
    fn overlaps(&self, iova: u64, end: u64) -> bool {
        self.regions
            .range(..end)
            .next_back()
            .is_some_and(|(&a, r)| a.saturating_add(r.size) > iova)
    }

    fn region_at(&self, addr: u64) -> Option<(u64, &DmaRegion)> {
        self.regions
            .range(..=addr)
            .next_back()
            .filter(|(&a, r)| addr - a < r.size)
            .map(|(&a, r)| (a, r))
    }

    /// The file and offset behind `addr`, if a region with a file holds it.
    fn file_at(&self, addr: u64) -> Option<(&File, u64, bool)> {
        let (iova, r) = self.region_at(addr)?;
        let (f, off) = r.file.as_ref()?;
        Some((f, off + (addr - iova), r.visible))
    }

    /// Whether `addr` is in a region served through the client.
    fn remote_at(&self, addr: u64) -> bool {
        self.region_at(addr).is_some_and(|(_, r)| r.remote)
    }

    /// The file and offset behind `addr`, if the device may access it.
    fn visible_at(&self, addr: u64) -> Option<(&File, u64)> {
        self.file_at(addr)
            .filter(|t| t.2)
            .map(|(f, off, _)| (f, off))
    }

    /// The documented DMA_MAP rules, in their order. `Ok(visible)` on success.
    fn map_outcome(
        &self,
        argsz: u32,
        flags: u32,
        offset: u64,
        iova: u64,
        size: u64,
        fds: &[FdKind],
    ) -> Result<bool, i32> {
        if fds.len() > 1 || argsz < 32 || flags & !3 != 0 || flags & 1 == 0 || size == 0 {
            return Err(EINVAL);
        }
        if iova % PAGE != 0 || size % PAGE != 0 {
            return Err(EINVAL);
        }
        let end = iova.checked_add(size).ok_or(EINVAL)?;
        if size > MAX_REGION {
            return Err(libc::ENOSPC);
        }
        if self.regions.len() >= 1024 {
            return Err(libc::ENOSPC);
        }
        if self.overlaps(iova, end) {
            return Err(libc::EEXIST);
        }
        let Some(&fd) = fds.first() else {
            return Ok(false);
        };
        if flags & 2 == 0 {
            return Ok(false);
        }
        let len = match fd {
            FdKind::Mem(len) | FdKind::ReadOnly(len) => len,
            FdKind::Event | FdKind::Dir => return Err(EINVAL),
        };
        match offset.checked_add(size) {
            Some(e) if e <= len => {}
            _ => return Err(EINVAL),
        }
        if offset % PAGE != 0 {
            return Err(EINVAL);
        }
        if let FdKind::ReadOnly(_) = fd {
            // A regular file: refused unless memory-backed; then a shared writable mapping of a
            // read-only descriptor.
            if !temp_dir_is_memory() {
                return Err(libc::EBADF);
            }
            return Err(libc::EACCES);
        }
        Ok(true)
    }
}

/// Whether the temporary directory (where `FdKind::ReadOnly` files live) is on tmpfs or
/// hugetlbfs: the server maps only memory-backed (or shrink-sealed) DMA files.
fn temp_dir_is_memory() -> bool {
    let path = std::ffi::CString::new(std::env::temp_dir().as_os_str().as_encoded_bytes())
        .expect("temp dir path");
    // SAFETY: `statfs` is plain old data, fully written by a successful statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to write into.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statfs {}", std::env::temp_dir().display());
    let fs = st.f_type as u32;
    fs == libc::TMPFS_MAGIC as u32 || fs == libc::HUGETLBFS_MAGIC as u32
}

fn dma_map_raw(
    c: &mut Raw,
    argsz: u32,
    flags: u32,
    offset: u64,
    iova: u64,
    size: u64,
    fds: &[RawFd],
) -> Result<Vec<u8>, u32> {
    let mut p = dma_map_payload(flags, offset, iova, size);
    p[0..4].copy_from_slice(&argsz.to_ne_bytes());
    c.call_fds(DMA_MAP, &p, fds)
}

/// Whether the device can use the page at `addr` as its command queue (and writeback block):
/// enabling the queue there succeeds only inside device-visible guest memory, and writes the
/// writeback block (`addr + 0x800`).
fn device_reaches(c: &mut Raw, addr: u64) -> bool {
    c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    let wb = addr + 0x800;
    for (reg, v) in [
        (abi::REG_WB_LO, wb as u32),
        (abi::REG_WB_HI, (wb >> 32) as u32),
        (abi::REG_CQ_BASE_LO, addr as u32),
        (abi::REG_CQ_BASE_HI, (addr >> 32) as u32),
        (abi::REG_CQ_SIZE, 2),
        (abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE),
    ] {
        c.write32(reg, v);
    }
    let running = c.read32(BAR0, abi::REG_STATUS) & abi::STATUS_QUEUE_RUNNING != 0;
    c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    running
}

fn run_dma_op(c: &mut Raw, m: &mut DmaModel, dir: &Path, op: &DmaOp) -> CaseResult {
    match op {
        DmaOp::Map {
            argsz,
            flags,
            offset,
            iova,
            size,
            fds,
        } => {
            let want = m.map_outcome(*argsz, *flags, *offset, *iova, *size, fds);
            let files: Vec<File> = fds.iter().map(|&k| make_fd(k, dir)).collect();
            let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
            let got = dma_map_raw(c, *argsz, *flags, *offset, *iova, *size, &raw);
            let what = format!(
                "DMA_MAP argsz {argsz} flags {flags:#x} offset {offset:#x} iova {iova:#x} size {size:#x} fds {fds:?}"
            );
            match (want, got) {
                (Ok(visible), Ok(p)) => {
                    ensure!(p.is_empty(), "{what}: reply payload {p:02x?}");
                    m.regions.insert(
                        *iova,
                        DmaRegion {
                            size: *size,
                            remote: files.is_empty() && flags & 2 != 0,
                            file: files.into_iter().next().map(|f| (f, *offset)),
                            visible,
                        },
                    );
                }
                (Err(e), Err(g)) if g == e as u32 => {}
                (want, got) => {
                    return Err(fail(format!(
                        "{what}: got {:?}, expected {want:?}",
                        got.map(|_| "success")
                    )))
                }
            }
        }
        &DmaOp::Unmap {
            argsz,
            flags,
            iova,
            size,
            len,
        } => {
            let mut p = dma_unmap_payload(flags, iova, size);
            p[0..4].copy_from_slice(&argsz.to_ne_bytes());
            p.resize(len, 0);
            let want = if len < 24 {
                Err(EINVAL)
            } else if flags & 1 != 0 {
                Err(libc::ENOTSUP)
            } else if len != 24 || flags & !2 != 0 || argsz < 24 {
                Err(EINVAL)
            } else if flags & 2 != 0 {
                if iova != 0 || size != 0 {
                    Err(EINVAL)
                } else {
                    m.regions.clear();
                    Ok(())
                }
            } else if m.regions.get(&iova).is_some_and(|r| r.size == size) {
                m.regions.remove(&iova);
                Ok(())
            } else {
                Err(libc::ENOENT)
            };
            let what = format!("DMA_UNMAP {p:02x?}");
            let got = c.call(DMA_UNMAP, &p);
            match (want, got) {
                (Ok(()), Ok(r)) => ensure!(r == p, "{what}: reply {r:02x?} is not the request"),
                (Err(e), Err(g)) if g == e as u32 => {}
                (want, got) => {
                    return Err(fail(format!(
                        "{what}: got {:?}, expected {want:?}",
                        got.map(|_| "success")
                    )))
                }
            }
        }
        &DmaOp::UnmapMapped { pick, wrong_size } => {
            if m.regions.is_empty() {
                return Ok(());
            }
            let (&iova, r) = m.regions.iter().nth(pick.index(m.regions.len())).unwrap();
            let size = if wrong_size { r.size + PAGE } else { r.size };
            let p = dma_unmap_payload(0, iova, size);
            let got = c.call(DMA_UNMAP, &p);
            if wrong_size {
                ensure!(
                    got == Err(libc::ENOENT as u32),
                    "unmap {iova:#x}+{size:#x} (wrong size): {got:?}"
                );
            } else {
                ensure!(got == Ok(p), "unmap {iova:#x}+{size:#x}: {got:?}");
                m.regions.remove(&iova);
            }
        }
        &DmaOp::Probe {
            pick,
            page,
            of_mapped,
        } => {
            let addr = if of_mapped && !m.regions.is_empty() {
                let (&iova, r) = m.regions.iter().nth(pick.index(m.regions.len())).unwrap();
                iova + (page % (r.size / PAGE)) * PAGE
            } else {
                WINDOW + page * PAGE
            };
            if m.remote_at(addr) || m.remote_at(addr + 0x800) {
                return Ok(());
            }
            let target = m.visible_at(addr + 0x800);
            if let Some((f, at)) = target {
                pwrite(f, at, &[0xa5; 64]);
            }
            let reached = device_reaches(c, addr);
            ensure!(
                reached == target.is_some(),
                "device {} page {addr:#x}; model regions {:x?}",
                if reached {
                    "reached"
                } else {
                    "could not reach"
                },
                m.regions
                    .iter()
                    .map(|(a, r)| (*a, r.size, r.visible))
                    .collect::<Vec<_>>()
            );
            if let Some((f, at)) = target {
                // Queue enable zeroes the writeback block's head, error and completion fields.
                let wb: [u8; 64] = pread(f, at);
                let mut expect = [0xa5u8; 64];
                expect[0..4].fill(0);
                expect[0x0c..0x18].fill(0);
                ensure!(
                    wb == expect,
                    "device writes for {addr:#x} landed elsewhere: file at {at:#x} holds {wb:02x?}"
                );
            }
        }
        DmaOp::Fences { ring, targets } => run_fences(c, m, *ring, targets)?,
    }
    Ok(())
}

fn read_u8(f: &File, at: u64) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).ok().map(|()| b[0])
}

fn run_fences(c: &mut Raw, m: &DmaModel, ring: Index, targets: &[Fence]) -> CaseResult {
    let visible: Vec<u64> = m
        .regions
        .iter()
        .filter(|(_, r)| r.visible)
        .map(|(&a, _)| a)
        .collect();
    if visible.is_empty() {
        return Ok(());
    }
    // The queue (8 entries) and the writeback block (+0x800) live in the first page of a
    // visible region; fences aimed at that page are left out.
    let base = visible[ring.index(visible.len())];
    let fences: Vec<(u64, u64)> = targets
        .iter()
        .map(|t| (t.addr(m), t.value))
        .filter(|&(a, _)| a & !(PAGE - 1) != base && !m.remote_at(a) && !m.remote_at(a + 7))
        .collect();
    if fences.is_empty() {
        return Ok(());
    }
    let (ring_file, ring_off) = m.visible_at(base).expect("visible ring page");
    for (i, &(gpa, value)) in fences.iter().enumerate() {
        let mut cmd = [0u8; 64];
        cmd[0] = abi::OP_FENCE;
        cmd[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        cmd[16..24].copy_from_slice(&gpa.to_le_bytes());
        cmd[24..32].copy_from_slice(&value.to_le_bytes());
        pwrite(ring_file, ring_off + 64 * i as u64, &cmd);
    }
    // The model: fences run in order until the first misaligned (BAD_ARG) or unreachable
    // (FENCE_DMA) target. What each byte of each target that has a file behind it must hold
    // afterwards, by (file, offset) (misaligned targets overlap aligned ones).
    let mut files: Vec<&File> = Vec::new();
    let mut expect: BTreeMap<(usize, u64), Option<u8>> = BTreeMap::new();
    let mut stop = None;
    for (i, &(gpa, value)) in fences.iter().enumerate() {
        let target = m.file_at(gpa);
        if let Some((f, at, _)) = target {
            let k = match files.iter().position(|g| std::ptr::eq(*g, f)) {
                Some(k) => k,
                None => {
                    files.push(f);
                    files.len() - 1
                }
            };
            for (j, byte) in value.to_le_bytes().into_iter().enumerate() {
                let at = at + j as u64;
                expect.entry((k, at)).or_insert_with(|| read_u8(f, at));
                if stop.is_none() && gpa & 7 == 0 && target.is_some_and(|t| t.2) {
                    expect.insert((k, at), Some(byte));
                }
            }
        }
        if stop.is_some() {
            continue;
        }
        if gpa & 7 != 0 {
            stop = Some((i, abi::ERR_BAD_ARG));
        } else if !target.is_some_and(|t| t.2) {
            stop = Some((i, abi::ERR_FENCE_DMA));
        }
    }
    c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    let wb = base + 0x800;
    for (reg, v) in [
        (abi::REG_WB_LO, wb as u32),
        (abi::REG_WB_HI, (wb >> 32) as u32),
        (abi::REG_CQ_BASE_LO, base as u32),
        (abi::REG_CQ_BASE_HI, (base >> 32) as u32),
        (abi::REG_CQ_SIZE, 8),
        (abi::REG_CQ_CONTROL, abi::CQ_CTRL_ENABLE),
        (abi::REG_CQ_TAIL, fences.len() as u32),
    ] {
        c.write32(reg, v);
    }
    let what = format!("fences {fences:x?} from a queue at {base:#x}");
    // The worker runs asynchronously: wait for it to finish or fail.
    let n = fences.len() as u32;
    let finished = wait_until(TIMEOUT, || {
        c.read32(BAR0, abi::REG_ERROR) != abi::ERR_NONE || c.read32(BAR0, abi::REG_CQ_HEAD) == n
    });
    ensure!(finished, "{what}: the queue neither completed nor failed");
    let (error, info) = (
        c.read32(BAR0, abi::REG_ERROR),
        c.read32(BAR0, abi::REG_ERROR_INFO),
    );
    match stop {
        None => ensure!(
            error == abi::ERR_NONE,
            "{what}: error {error} at command {info}"
        ),
        Some((i, code)) => ensure!(
            (error, info) == (code, i as u32),
            "{what}: error {error} at command {info}, expected {code} at {i}"
        ),
    }
    c.call(DEVICE_RESET, &[]).expect("DEVICE_RESET");
    for ((k, at), want) in expect {
        let got = read_u8(files[k], at);
        ensure!(
            got == want,
            "{what}: file offset {at:#x} holds {got:x?}, expected {want:x?} (error {error} at {info})"
        );
    }
    Ok(())
}

#[test]
fn dma_map_unmap_model() {
    run_property(
        "dma",
        256,
        prop::collection::vec(dma_op(), 1..40),
        |h, ops| {
            let mut c = h.server.connect();
            c.negotiate();
            let pid = h.pid;
            let connected = open_fds(pid);
            let dir = h.dir().to_path_buf();
            let mut m = DmaModel::default();
            for op in &ops {
                run_dma_op(&mut c, &mut m, &dir, op)?;
            }
            // Every mapped region unmaps exactly once.
            let mapped: Vec<(u64, u64)> = m.regions.iter().map(|(a, r)| (*a, r.size)).collect();
            for &(iova, size) in &mapped {
                let p = dma_unmap_payload(0, iova, size);
                let got = c.call(DMA_UNMAP, &p);
                ensure!(
                    got == Ok(p.clone()),
                    "final unmap {iova:#x}+{size:#x}: {got:?}"
                );
                let again = c.call(DMA_UNMAP, &p);
                ensure!(
                    again == Err(libc::ENOENT as u32),
                    "second unmap {iova:#x}+{size:#x}: {again:?}"
                );
            }
            // Nothing is left: the whole window maps, the device reaches none of it, and the
            // server holds no descriptor of ours any more.
            ensure!(
                c.dma_map(WINDOW, WINDOW_PAGES * PAGE, None) == Ok(()),
                "table not empty after unmapping {mapped:x?}"
            );
            c.call(DMA_UNMAP, &dma_unmap_payload(2, 0, 0))
                .map_err(|e| fail(format!("unmap all: {e}")))?;
            ensure!(
                !device_reaches(&mut c, WINDOW),
                "device reaches an unmapped page"
            );
            if !wait_until(TIMEOUT, || open_fds(pid) == connected) {
                return Err(fail(format!(
                    "{} descriptors open after unmapping everything, {connected} before mapping: {}",
                    open_fds(pid),
                    list_fds(pid)
                )));
            }
            read_id(&mut c)
        },
    );
}
