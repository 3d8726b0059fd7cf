//! Helpers shared by the integration tests: a server process on a temporary socket, a raw
//! vfio-user client that builds messages by hand, memfds and eventfds.
//!
//! Every wait is bounded (generous timeouts that fail with a clear message); nothing is timed.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub mod queue_guest;

/// Generous bound for anything the server should do "at once".
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub const VERSION: u16 = 1;
pub const DMA_MAP: u16 = 2;
pub const DMA_UNMAP: u16 = 3;
pub const DEVICE_GET_INFO: u16 = 4;
pub const DEVICE_GET_REGION_INFO: u16 = 5;
pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
pub const DEVICE_SET_IRQS: u16 = 8;
pub const REGION_READ: u16 = 9;
pub const REGION_WRITE: u16 = 10;
pub const DEVICE_RESET: u16 = 13;
pub const REGION_WRITE_MULTI: u16 = 15;
pub const DEVICE_FEATURE: u16 = 16;

pub const NO_REPLY: u32 = 0x10;
pub const REPLY: u32 = 0x1;
pub const ERROR: u32 = 0x20;

pub const BAR0: u32 = 0;
pub const BAR1: u32 = 1;
pub const CONFIG: u32 = 7;
pub const MSIX: u32 = 2;

pub const QEMU_CAPS: &str = "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,\"max_dma_maps\":65535,\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":268435456},\"write_multiple\":true}}";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "faultline-server-test-{}-{}-{}",
            std::process::id(),
            tag,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `faultline-server` process on a socket in its own temporary directory.
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Server {
    /// Starts the server and waits for its socket.
    pub fn start(tag: &str) -> Server {
        Self::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, extra: &[&str]) -> Server {
        let dir = TempDir::new(tag);
        let socket = dir.0.join("gpu.sock");
        Self::start_at(dir, socket, extra)
    }

    pub fn start_at(dir: TempDir, socket: PathBuf, extra: &[&str]) -> Server {
        Self::start_configured(dir, socket, extra, |_| {})
    }

    /// Starts the server with its command adjusted by `configure` (environment, limits).
    pub fn start_configured(
        dir: TempDir,
        socket: PathBuf,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let log = dir.0.join("server.log");
        let child = spawn_with(&socket, &log, extra, configure);
        let mut s = Server {
            child: Some(child),
            socket,
            log,
            dir,
        };
        s.wait_for_socket();
        s
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        // The socket file may be a stale one the server is about to replace: also wait for the
        // server to say it listens.
        while !self.socket.exists() || !self.log_text().contains("listening on") {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "server exited ({st}) before creating its socket:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server did not create {} within {TIMEOUT:?}:\n{}",
                self.socket.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) unless the server process is still running.
    pub fn assert_alive(&mut self) {
        let st = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"));
        if let Some(st) = st {
            panic!("server exited ({st}):\n{}", self.log_text());
        }
    }

    /// Connects a raw client.
    pub fn connect(&self) -> Raw {
        Raw::connect(&self.socket)
    }

    /// The server is alive and serves a new client (VERSION and DEVICE_GET_INFO work).
    pub fn assert_serves_new_client(&mut self) {
        self.assert_alive();
        let mut c = self.connect();
        c.negotiate();
        let info = c
            .call(DEVICE_GET_INFO, &info_req(16))
            .expect("DEVICE_GET_INFO");
        assert_eq!(u32_at(&info, 8), 9, "num_regions");
        drop(c);
        self.assert_alive();
    }

    /// The server process's resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Sends `sig` and waits for the process to exit; returns its exit status.
    pub fn stop(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        // SAFETY: kill() with a pid we own (our child).
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        wait_child(&mut child, TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("server ignored signal {sig}:\n{}", self.log_text())
        })
    }

    pub fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("server stopped");
        // SAFETY: kill() with a pid we own (our child).
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() with a pid we own (our child).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_child(&mut child, TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log_text());
        }
    }
}

pub fn spawn(socket: &Path, log: &Path, extra: &[&str]) -> Child {
    spawn_with(socket, log, extra, |_| {})
}

pub fn spawn_with(
    socket: &Path,
    log: &Path,
    extra: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Child {
    let logf = File::create(log).expect("create log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline-server"));
    configure(&mut cmd);
    cmd.arg("--socket")
        .arg(socket)
        .arg("-v")
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup log"))
        .stderr(logf)
        .spawn()
        .expect("spawn faultline-server")
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A reply as received.
#[derive(Debug)]
pub struct Reply {
    pub id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
    pub payload: Vec<u8>,
}

/// A hand-rolled vfio-user client over a blocking socket with read timeouts.
pub struct Raw {
    pub s: UnixStream,
    next_id: u16,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        Raw { s, next_id: 0x100 }
    }

    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Sends raw bytes, with descriptors attached to them.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) {
        if fds.is_empty() {
            self.s.write_all(bytes).expect("write");
        } else {
            let n = self.s.send_with_fds(&[bytes], fds).expect("sendmsg");
            self.s.write_all(&bytes[n..]).expect("write rest");
        }
    }

    /// Sends a command; returns its id.
    pub fn send(&mut self, cmd: u16, flags: u32, payload: &[u8], fds: &[RawFd]) -> u16 {
        let id = self.next_id();
        let msg = message(id, cmd, flags, payload);
        self.send_bytes(&msg, fds);
        id
    }

    /// Receives one reply (panics on timeout or EOF).
    pub fn recv(&mut self) -> Reply {
        let mut h = [0u8; 16];
        self.s
            .read_exact(&mut h)
            .unwrap_or_else(|e| panic!("no reply header: {e}"));
        let size = u32::from_ne_bytes(h[4..8].try_into().unwrap());
        assert!(size >= 16, "reply size {size}");
        let mut payload = vec![0u8; size as usize - 16];
        self.s.read_exact(&mut payload).expect("reply payload");
        Reply {
            id: u16::from_ne_bytes(h[0..2].try_into().unwrap()),
            command: u16::from_ne_bytes(h[2..4].try_into().unwrap()),
            size,
            flags: u32::from_ne_bytes(h[8..12].try_into().unwrap()),
            error: u32::from_ne_bytes(h[12..16].try_into().unwrap()),
            payload,
        }
    }

    /// Sends a command with fds and returns its reply payload or errno; checks id and command.
    pub fn call_fds(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd]) -> Result<Vec<u8>, u32> {
        let id = self.send(cmd, 0, payload, fds);
        let r = self.recv();
        assert_eq!(r.id, id, "reply id");
        assert_eq!(r.command, cmd, "reply command");
        assert_eq!(r.flags & 0xf, REPLY, "reply type");
        if r.flags & ERROR != 0 {
            assert_ne!(r.error, 0, "error reply with errno 0");
            assert_eq!(r.size, 16, "error reply carries only the header");
            Err(r.error)
        } else {
            Ok(r.payload)
        }
    }

    pub fn call(&mut self, cmd: u16, payload: &[u8]) -> Result<Vec<u8>, u32> {
        self.call_fds(cmd, payload, &[])
    }

    /// Expects an error reply with `errno`.
    pub fn expect_errno(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd], errno: i32) {
        match self.call_fds(cmd, payload, fds) {
            Ok(p) => panic!(
                "command {cmd} succeeded ({} bytes), expected errno {errno}",
                p.len()
            ),
            Err(e) => assert_eq!(
                e, errno as u32,
                "command {cmd}: errno {e}, expected {errno}"
            ),
        }
    }

    /// QEMU-like VERSION negotiation; returns the reply's JSON.
    pub fn negotiate(&mut self) -> serde_json::Value {
        let p = version_payload(0, 0, QEMU_CAPS);
        let reply = self.call(VERSION, &p).expect("VERSION");
        assert!(
            reply.len() <= p.len(),
            "VERSION reply larger than the request"
        );
        assert_eq!(&reply[..4], &[0, 0, 0, 0], "major/minor 0.0");
        assert_eq!(*reply.last().unwrap(), 0, "JSON is NUL-terminated");
        serde_json::from_slice(&reply[4..reply.len() - 1]).expect("reply JSON")
    }

    /// Expects the server to close the connection (EOF or reset) within the timeout.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue, // a final reply before closing is fine
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return,
                Err(e) => panic!("connection not closed: {e}"),
            }
        }
    }

    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Result<Vec<u8>, u32> {
        let r = self.call(REGION_READ, &access(offset, region, count, &[]))?;
        assert_eq!(r.len(), 16 + count as usize);
        Ok(r[16..].to_vec())
    }

    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), u32> {
        let p = access(offset, region, data.len() as u32, data);
        let r = self.call(REGION_WRITE, &p)?;
        assert_eq!(r, p[..16].to_vec());
        Ok(())
    }

    /// A posted (NO_REPLY) region write.
    pub fn region_write_posted(&mut self, region: u32, offset: u64, data: &[u8]) {
        let p = access(offset, region, data.len() as u32, data);
        self.send(REGION_WRITE, NO_REPLY, &p, &[]);
    }

    pub fn write32(&mut self, offset: u64, v: u32) {
        self.region_write(BAR0, offset, &v.to_le_bytes())
            .expect("BAR0 write");
    }

    pub fn read32(&mut self, region: u32, offset: u64) -> u32 {
        let d = self.region_read(region, offset, 4).expect("region read");
        u32::from_le_bytes(d.try_into().unwrap())
    }

    pub fn dma_map(&mut self, iova: u64, size: u64, fd: Option<RawFd>) -> Result<(), u32> {
        let p = dma_map_payload(3, 0, iova, size);
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.call_fds(DMA_MAP, &p, &fds)
            .map(|r| assert!(r.is_empty()))
    }

    pub fn set_irqs_eventfd(&mut self, index: u32, start: u32, fds: &[RawFd]) -> Result<(), u32> {
        let p = irq_set(4 | 32, index, start, fds.len() as u32);
        self.call_fds(DEVICE_SET_IRQS, &p, fds).map(|_| ())
    }
}

pub fn message(id: u16, cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    m.extend_from_slice(&id.to_ne_bytes());
    m.extend_from_slice(&cmd.to_ne_bytes());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

pub fn version_payload(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&major.to_ne_bytes());
    p.extend_from_slice(&minor.to_ne_bytes());
    p.extend_from_slice(json.as_bytes());
    p.push(0);
    p
}

pub fn dma_map_payload(flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&32u32.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

pub fn dma_unmap_payload(flags: u32, iova: u64, size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&24u32.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(&iova.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

/// `argsz, flags, index, count`-style 16-byte info request (GET_INFO / GET_IRQ_INFO / IO_FDS).
pub fn info_req(argsz: u32) -> Vec<u8> {
    info4(argsz, 0, 0, 0)
}

pub fn info4(a: u32, b: u32, c: u32, d: u32) -> Vec<u8> {
    [a, b, c, d].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

pub fn region_info_req(argsz: u32, index: u32) -> Vec<u8> {
    let mut p = info4(argsz, 0, index, 0);
    p.extend_from_slice(&[0u8; 16]);
    p
}

pub fn irq_set(flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    [20u32, flags, index, start, count]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

pub fn access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&region.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// A memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    let name = CString::new("faultline-test-ram").unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("ftruncate memfd");
    f
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd() returns a fresh descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Waits until `fd` is readable, up to `timeout`; reads the eventfd counter.
pub fn wait_eventfd(fd: &OwnedFd, timeout: Duration) -> Option<u64> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    if n <= 0 {
        return None;
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a u64.
    let r = unsafe { libc::read(fd.as_raw_fd(), std::ptr::from_mut(&mut v).cast(), 8) };
    (r == 8).then_some(v)
}

/// Reads `N` bytes of a file at `off`.
pub fn pread<const N: usize>(f: &File, off: u64) -> [u8; N] {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; N];
    f.read_exact_at(&mut b, off).expect("pread");
    b
}

pub fn pwrite(f: &File, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    f.write_all_at(data, off).expect("pwrite");
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
