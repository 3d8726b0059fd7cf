//! Process limits that bound what a client may ask for.
//!
//! Every device-visible DMA region keeps its file descriptor open (the mapping's `FileOffset`), so
//! the number of regions a client may map is bounded by the descriptors the process may still
//! open. The server raises `RLIMIT_NOFILE` to its hard limit at start and derives `max_dma_maps`
//! from what is left, keeping a reserve for sockets, eventfds and the descriptors a message may
//! carry: a client that maps too much then gets `ENOSPC`, instead of a `recvmsg` that cannot
//! install its descriptors (`MSG_CTRUNC`, which closes the connection).

use std::io;

use crate::protocol::{MAX_DMA_MAPS, MAX_MSG_FDS};

/// Descriptors kept free besides DMA regions: the listening and client sockets, a waiting
/// client, epoll, signalfd, the drain eventfd, SET_IRQS eventfds, one message's descriptors,
/// logging, and slack.
pub const FD_RESERVE: u64 = 64 + MAX_MSG_FDS as u64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let e = io::Error::last_os_error();
            log::warn!(
                "cannot raise RLIMIT_NOFILE from {} to {}: {e}",
                lim.rlim_cur,
                lim.rlim_max
            );
            return Ok(lim.rlim_cur);
        }
        log::debug!(
            "RLIMIT_NOFILE raised from {} to {}",
            lim.rlim_cur,
            lim.rlim_max
        );
        return Ok(lim.rlim_max);
    }
    Ok(lim.rlim_cur)
}

/// Descriptors open in this process now.
pub fn open_fds() -> io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// `max_dma_maps` for a process allowed `nofile` descriptors with `open` already open: what is
/// left after [`FD_RESERVE`], at most [`MAX_DMA_MAPS`], at least 1.
pub fn max_dma_maps(nofile: u64, open: u64) -> usize {
    let left = nofile.saturating_sub(open).saturating_sub(FD_RESERVE);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_DMA_MAPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_map_limit() {
        assert_eq!(max_dma_maps(1 << 20, 10), MAX_DMA_MAPS);
        assert_eq!(max_dma_maps(1024, 10), 1024 - 10 - FD_RESERVE as usize);
        assert_eq!(max_dma_maps(256, 10), 256 - 10 - FD_RESERVE as usize);
        assert_eq!(max_dma_maps(32, 10), 1);
        assert_eq!(max_dma_maps(0, 10), 1);
    }
}
