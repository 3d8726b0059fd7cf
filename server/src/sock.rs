//! Thin, checked wrappers around `recvmsg`/`send` for a non-blocking AF_UNIX stream socket,
//! receiving file descriptors passed as `SCM_RIGHTS`.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Room for this many file descriptors in one `recvmsg`. Larger than any count the server
/// accepts, so a client that sends "a few too many" gets an EINVAL reply; a client that sends
/// more than this makes the kernel truncate the control data, which closes the connection.
pub const RECV_FDS_CAPACITY: usize = 32;

/// Result of one `recvmsg`.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0: end of stream).
    pub len: usize,
    /// File descriptors that arrived with these bytes (owned: closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The kernel truncated the control data (`MSG_CTRUNC`): some descriptors were lost.
    pub ctrunc: bool,
}

/// Bytes of control buffer: one `cmsghdr` plus [`RECV_FDS_CAPACITY`] descriptors
/// (`CMSG_SPACE(RECV_FDS_CAPACITY * 4)` on 64-bit Linux).
const CMSG_BUF_LEN: usize =
    mem::size_of::<libc::cmsghdr>() + RECV_FDS_CAPACITY * mem::size_of::<RawFd>();

/// Control buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// One `recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)` into `buf`.
///
/// Returns `Err` with `ErrorKind::WouldBlock` when nothing is available.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut cbuf = CmsgBuf([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;

    let n = loop {
        // SAFETY: `msg` points at `iov` (which describes `buf`, valid for writes of its length)
        // and at `cbuf` (valid for writes of `msg_controllen` bytes); both outlive the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };

    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR only reads
    // msg_control/msg_controllen, which describe `cbuf`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a pointer to a complete
        // cmsghdr inside `cbuf` (they check it against msg_controllen); `cbuf` is aligned.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
            let data_len = (hdr.cmsg_len as usize).saturating_sub(header_len);
            // Never read beyond the control buffer, whatever cmsg_len claims.
            // SAFETY: CMSG_DATA points inside `cbuf` right after the header.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let offset = data as usize - cbuf.0.as_ptr() as usize;
            let avail = cbuf.0.len().saturating_sub(offset);
            let count = data_len.min(avail) / mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `i * 4 + 4 <= data_len.min(avail)`, so the read stays inside `cbuf`;
                // read_unaligned because CMSG_DATA gives no alignment promise to Rust.
                let raw = unsafe {
                    data.add(i * mem::size_of::<RawFd>())
                        .cast::<RawFd>()
                        .read_unaligned()
                };
                if raw >= 0 {
                    // SAFETY: the kernel just installed `raw` in our fd table for us (SCM_RIGHTS);
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; `cmsg` is a header inside `cbuf`.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }

    Ok(Received {
        len: n as usize,
        fds,
        ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// One non-blocking `send(MSG_NOSIGNAL)`; returns the bytes written.
pub fn send(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is valid for reads of its length for the duration of the call.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    #[test]
    fn receives_data_and_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let e1 = EventFd::new(0).unwrap();
        let e2 = EventFd::new(0).unwrap();
        a.send_with_fds(&[&b"hello"[..]], &[e1.as_raw_fd(), e2.as_raw_fd()])
            .unwrap();
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.fds.len(), 2);
        assert!(!r.ctrunc);
        let e = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn too_many_fds_is_ctrunc() {
        let (a, b) = UnixStream::pair().unwrap();
        let efs: Vec<EventFd> = (0..RECV_FDS_CAPACITY + 20)
            .map(|_| EventFd::new(0).unwrap())
            .collect();
        let raw: Vec<RawFd> = efs.iter().map(|e| e.as_raw_fd()).collect();
        a.send_with_fds(&[&b"x"[..]], &raw).unwrap();
        let mut buf = [0u8; 4];
        let r = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(r.len, 1);
        assert!(r.ctrunc);
    }
}
