//! Error types, split by consequence:
//! - [`StreamError`]: the byte stream can no longer be trusted (or is gone); the connection is
//!   closed.
//! - [`RequestError`]: one message was refused; the client gets an error reply with a non-zero
//!   errno (unless it asked for no reply) and the stream stays in sync.

use std::io;

use faultline_device::AccessError;

/// Why a connection is being closed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The client closed its end between messages.
    #[error("client closed the connection")]
    Eof,
    /// The client closed its end in the middle of a message.
    #[error("client closed the connection in the middle of a message ({have} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete message received.
        have: usize,
    },
    /// `message_size` is smaller than the header.
    #[error("untrustworthy stream: message size {0} is smaller than the 16-byte header")]
    SizeTooSmall(u32),
    /// `message_size` is larger than anything the server accepts.
    #[error("untrustworthy stream: message size {size} exceeds the limit of {max} bytes")]
    SizeTooLarge {
        /// Claimed size.
        size: u32,
        /// Limit.
        max: u32,
    },
    /// The header's type bits name neither a command nor a reply.
    #[error("untrustworthy stream: unknown message type {0:#x}")]
    BadType(u32),
    /// Undefined header flag bits are set.
    #[error("untrustworthy stream: undefined header flag bits {0:#x} set")]
    ReservedFlags(u32),
    /// A command carries the error flag, which only replies may carry.
    #[error("untrustworthy stream: error flag set on a command")]
    ErrorFlagOnCommand,
    /// The kernel truncated the ancillary data: file descriptors were lost.
    #[error("untrustworthy stream: ancillary data truncated (MSG_CTRUNC), file descriptors lost")]
    ControlTruncated,
    /// The client proposed a protocol major version the server does not speak.
    #[error("client proposed protocol major version {0}, only 0 is supported")]
    VersionMajor(u16),
    /// A socket call failed.
    #[error("socket error: {0}")]
    Io(#[source] io::Error),
}

/// Why one request was refused. [`RequestError::errno`] is the errno sent back.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The payload size does not fit the command.
    #[error("{what}: payload of {len} bytes, {expected}")]
    BadSize {
        /// Command name.
        what: &'static str,
        /// Actual payload size.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// More file descriptors than the command allows.
    #[error("{what}: {got} file descriptors, at most {max} allowed")]
    TooManyFds {
        /// Command name.
        what: String,
        /// Received.
        got: usize,
        /// Allowed.
        max: usize,
    },
    /// The command is not implemented.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// A field has an invalid value.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A flag or feature the server does not implement.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The DMA region overlaps a mapped one.
    #[error(
        "DMA region {iova:#x}+{size:#x} overlaps the mapped region {other_iova:#x}+{other_size:#x}"
    )]
    Overlap {
        /// New region address.
        iova: u64,
        /// New region size.
        size: u64,
        /// Existing region address.
        other_iova: u64,
        /// Existing region size.
        other_size: u64,
    },
    /// A table is full or a size limit is exceeded.
    #[error("no space: {0}")]
    NoSpace(String),
    /// No DMA region matches.
    #[error("no DMA region at {iova:#x}+{size:#x}")]
    NotFound {
        /// Address.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// A transfer is larger than `max_data_xfer_size`.
    #[error("transfer of {0} bytes exceeds max_data_xfer_size")]
    TooBig(u64),
    /// The device refused a region access.
    #[error("device refused the access: {0}")]
    Access(#[source] AccessError),
    /// Some REGION_WRITE_MULTI entries were refused (the others were written, in order).
    #[error("{refused} of {total} REGION_WRITE_MULTI entries refused, the rest written; first, entry {first}: {source}")]
    PartialMulti {
        /// Entries refused.
        refused: usize,
        /// Entries in the message.
        total: u64,
        /// Index of the first refused entry.
        first: usize,
        /// The first refused entry's errno.
        errno: i32,
        /// Why the first entry was refused.
        #[source]
        source: Box<RequestError>,
    },
    /// A DMA file that is not memory (tmpfs, hugetlbfs, memfd) nor sealed against shrinking.
    #[error("{0}")]
    NotMemory(String),
    /// A SET_IRQS descriptor that is not an eventfd.
    #[error("{0}")]
    NotEventfd(String),
    /// A system call failed while serving the request.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    /// The errno sent back to the client; never 0 (QEMU takes 0 as success).
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::BadSize { .. } => libc::EINVAL,
            RequestError::TooManyFds { .. } => libc::EINVAL,
            RequestError::Unsupported(_) => libc::ENOSYS,
            RequestError::Invalid(_) => libc::EINVAL,
            RequestError::NotSupported(_) => libc::ENOTSUP,
            RequestError::Overlap { .. } => libc::EEXIST,
            RequestError::NoSpace(_) => libc::ENOSPC,
            RequestError::NotFound { .. } => libc::ENOENT,
            RequestError::TooBig(_) => libc::E2BIG,
            RequestError::Access(AccessError::BadAccess { .. }) => libc::EFAULT,
            RequestError::Access(_) => libc::EINVAL,
            RequestError::PartialMulti { errno, .. } => *errno,
            RequestError::NotMemory(_) => libc::EBADF,
            RequestError::NotEventfd(_) => libc::EINVAL,
            RequestError::Os { source, .. } => match source.raw_os_error() {
                Some(e) if e != 0 => e,
                _ => libc::EIO,
            },
        }
    }

    /// Shorthand for [`RequestError::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        RequestError::Invalid(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_never_zero() {
        let errs = [
            RequestError::invalid("x"),
            RequestError::Unsupported("x".into()),
            RequestError::NotSupported("x".into()),
            RequestError::NoSpace("x".into()),
            RequestError::TooBig(1),
            RequestError::NotFound { iova: 0, size: 0 },
            RequestError::Access(AccessError::NoRegion(3)),
            RequestError::Access(AccessError::BadAccess {
                region: 0,
                offset: 1,
                len: 3,
            }),
            RequestError::Os {
                what: "x",
                source: io::Error::other("no errno"),
            },
            RequestError::Os {
                what: "x",
                source: io::Error::from_raw_os_error(libc::EACCES),
            },
        ];
        for e in &errs {
            assert_ne!(e.errno(), 0, "{e}");
        }
        assert_eq!(errs[9].errno(), libc::EACCES);
    }
}
