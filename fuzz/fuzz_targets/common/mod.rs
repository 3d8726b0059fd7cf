//! What the session targets share: a small fake device behind `DeviceBackend`, and one message
//! run the way the connection runs it.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use faultline_device::{region, AccessError, RegionInfo};
use faultline_server::backend::{DeviceBackend, DeviceFactory};
use faultline_server::conn::check_framing;
use faultline_server::protocol::{Command, Header, MAX_MSG_FDS};
use faultline_server::session::Session;

/// BAR0 (aligned 32-bit registers), BAR1 and configuration space as plain memory.
#[derive(Default)]
pub struct Fake {
    bar0: Mutex<Vec<u8>>,
    other: Mutex<Vec<u8>>,
}

impl DeviceBackend for Fake {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = |size| RegionInfo {
            size,
            read: true,
            write: true,
        };
        match index {
            region::BAR0 | region::BAR1 => Some(rw(4096)),
            region::CONFIG => Some(rw(4096)),
            i if i < region::COUNT => Some(RegionInfo {
                size: 0,
                read: false,
                write: false,
            }),
            _ => None,
        }
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let (mem, off) = self.at(index, offset, data.len())?;
        data.copy_from_slice(&mem.lock().unwrap()[off..off + data.len()]);
        Ok(())
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let (mem, off) = self.at(index, offset, data.len())?;
        mem.lock().unwrap()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn reset(&self) {
        self.bar0.lock().unwrap().fill(0);
    }
    fn stats(&self) -> Vec<u64> {
        vec![0; 15]
    }
    fn shutdown(&self) {}
}

impl Fake {
    pub fn new() -> Self {
        Fake {
            bar0: Mutex::new(vec![0; 4096]),
            other: Mutex::new(vec![0; 4096]),
        }
    }

    fn at(
        &self,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<(&Mutex<Vec<u8>>, usize), AccessError> {
        let size = self.region_info(index).map_or(0, |r| r.size);
        if size == 0 {
            return Err(AccessError::NoRegion(index));
        }
        let off = usize::try_from(offset).map_err(|_| AccessError::NoRegion(index))?;
        // The session checks the range before calling: a miss here is a server bug.
        assert!(
            off + len <= size as usize,
            "access {offset:#x}+{len} outside region {index}"
        );
        if index == region::BAR0 {
            if len != 4 || off % 4 != 0 {
                return Err(AccessError::BadAccess {
                    region: index,
                    offset,
                    len,
                });
            }
            return Ok((&self.bar0, off));
        }
        Ok((&self.other, off))
    }
}

/// A factory of fake devices.
pub fn factory() -> DeviceFactory {
    DeviceFactory {
        irq_count: faultline_device::irq_count,
        create: Box::new(|_, _| Ok(Box::new(Fake::new()) as Box<dyn DeviceBackend>)),
        max_dma_maps: 16,
    }
}

/// Runs one message as the connection would; false when the connection would close.
pub fn run_message(session: &mut Session, hdr: &Header, payload: &[u8], fds: Vec<OwnedFd>) -> bool {
    if check_framing(hdr).is_err() {
        return false;
    }
    if hdr.msg_type() != 0 {
        return true; // a reply from the client: skipped
    }
    if fds.len() > hdr.cmd().max_fds().min(MAX_MSG_FDS) {
        return true; // refused with EINVAL before the handler
    }
    let result = session.handle(hdr, payload, fds);
    if let Some(retired) = session.take_retired() {
        assert!(retired.is_released(), "the fake device holds no snapshot");
    }
    match result {
        Ok(reply) => match hdr.cmd() {
            Command::RegionRead => assert!(reply.len() >= 16),
            Command::RegionWrite => assert_eq!(reply.len(), 16),
            Command::DmaUnmap => assert_eq!(reply.len(), 24),
            Command::DeviceGetInfo | Command::DeviceGetIrqInfo => assert_eq!(reply.len(), 16),
            Command::DeviceGetRegionInfo => assert_eq!(reply.len(), 32),
            Command::RegionWriteMulti => assert_eq!(reply.len(), 8),
            Command::DmaMap | Command::DeviceReset | Command::DeviceSetIrqs => {
                assert!(reply.is_empty())
            }
            _ => {}
        },
        Err(e) => assert_ne!(e.errno(), 0, "errno 0 for {e}"),
    }
    session.take_close().is_none()
}
