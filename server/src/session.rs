//! Per-client protocol state and command handlers.
//!
//! A [`Session`] owns everything one client set up: the negotiated version, the DMA regions, the
//! interrupt eventfds, and the device created for this client. Handlers get a message whose
//! framing was already validated by the connection (size, type, flags, fd count against
//! [`Command::max_fds`]) and return the reply payload or a [`RequestError`].
//! Dropping a session shuts the device down, logs its counters, unmaps all DMA regions and
//! closes every eventfd.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;

use faultline_device::{region, GuestMem};
use vm_memory::GuestMemoryMmap;

use crate::backend::{format_stats, DeviceBackend, DeviceFactory};
use crate::dma::{DmaSpace, Retired};
use crate::error::{RequestError, StreamError};
use crate::irq::{IrqAction, Irqs};
use crate::protocol::*;
use crate::remote_dma::{self, DmaChannel};
use crate::version::{self, ClientCaps};

/// Per-client state.
pub struct Session {
    device: Rc<dyn DeviceBackend>,
    dma: DmaSpace,
    irqs: Irqs,
    caps: Option<ClientCaps>,
    /// Set by a handler when the connection must be closed after its reply.
    close: Option<StreamError>,
    /// `max_dma_maps` advertised in the VERSION reply.
    max_dma_maps: usize,
    /// Set by DMA_UNMAP: mappings whose release the reply must wait for.
    retired: Option<Retired>,
    /// Server→client DMA_READ/DMA_WRITE for guest memory without a file descriptor.
    remote: DmaChannel,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("dma_regions", &self.dma.len())
            .field("negotiated", &self.caps.is_some())
            .finish()
    }
}

impl Session {
    /// Creates the session's guest memory, interrupt tables and a fresh device.
    pub fn new(factory: &DeviceFactory) -> Result<Session, String> {
        let mem = GuestMem::new(GuestMemoryMmap::new());
        let irqs = Irqs::new(factory.irq_count);
        let device: Rc<dyn DeviceBackend> =
            Rc::from((factory.create)(mem.clone(), irqs.msix_sink())?);
        let remote = DmaChannel::new(remote_dma::DEFAULT_TIMEOUT)
            .map_err(|e| format!("cannot create the remote DMA channel: {e}"))?;
        device.set_remote_dma(Arc::new(remote.clone()));
        Ok(Session {
            device,
            dma: DmaSpace::with_limit(mem, factory.max_dma_maps).with_remote(remote.clone()),
            remote,
            irqs,
            caps: None,
            close: None,
            retired: None,
            max_dma_maps: factory.max_dma_maps,
        })
    }

    /// The device, for stats logging.
    pub fn device(&self) -> Rc<dyn DeviceBackend> {
        Rc::clone(&self.device)
    }

    /// The server→client DMA channel (the connection writes its requests and hands it replies).
    pub fn remote(&self) -> &DmaChannel {
        &self.remote
    }

    /// Takes the reason to close the connection, if a handler set one.
    pub fn take_close(&mut self) -> Option<StreamError> {
        self.close.take()
    }

    /// Takes the mappings the last DMA_UNMAP removed, if any: its reply must not be sent before
    /// [`Retired::is_released`].
    pub fn take_retired(&mut self) -> Option<Retired> {
        self.retired.take().filter(|r| !r.is_empty())
    }

    /// Whether VERSION was negotiated.
    pub fn negotiated(&self) -> bool {
        self.caps.is_some()
    }

    /// Handles one command; returns the reply payload.
    pub fn handle(
        &mut self,
        hdr: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<u8>, RequestError> {
        let cmd = hdr.cmd();
        if cmd != Command::Version && self.caps.is_none() {
            return Err(RequestError::invalid(format!(
                "{cmd} before VERSION negotiation"
            )));
        }
        match cmd {
            Command::Version => self.version(payload),
            Command::DmaMap => self.dma_map(payload, fds),
            Command::DmaUnmap => self.dma_unmap(payload),
            Command::DeviceGetInfo => self.device_info(payload),
            Command::DeviceGetRegionInfo => self.region_info(payload),
            Command::DeviceGetRegionIoFds => self.region_io_fds(payload),
            Command::DeviceGetIrqInfo => self.irq_info(payload),
            Command::DeviceSetIrqs => self.set_irqs(payload, fds),
            Command::RegionRead => self.region_read(payload),
            Command::RegionWrite => self.region_write(payload),
            Command::RegionWriteMulti => self.region_write_multi(payload),
            Command::DeviceReset => self.reset(payload),
            Command::DmaRead | Command::DmaWrite => Err(RequestError::Unsupported(format!(
                "{cmd} (server-to-client only)"
            ))),
            Command::DirtyPages
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite
            | Command::Unknown(_) => Err(RequestError::Unsupported(cmd.to_string())),
        }
    }

    fn version(&mut self, payload: &[u8]) -> Result<Vec<u8>, RequestError> {
        if self.caps.is_some() {
            return Err(RequestError::invalid("VERSION already negotiated"));
        }
        let caps = version::parse_request(payload)?;
        if caps.major != version::MAJOR {
            self.close = Some(StreamError::VersionMajor(caps.major));
            return Err(RequestError::invalid(format!(
                "unsupported protocol major version {}",
                caps.major
            )));
        }
        let reply = version::build_reply(&caps, payload.len(), self.max_dma_maps);
        log::info!(
            "negotiated vfio-user {}.{} (client proposed {}.{}, max_msg_fds {}, max_data_xfer_size {}, write_multiple {})",
            version::MAJOR,
            version::MINOR,
            caps.major,
            caps.minor,
            caps.max_msg_fds,
            caps.max_data_xfer_size,
            caps.write_multiple
        );
        self.remote.set_max_xfer(caps.max_data_xfer_size);
        self.caps = Some(caps);
        Ok(reply)
    }

    fn dma_map(&mut self, p: &[u8], mut fds: Vec<OwnedFd>) -> Result<Vec<u8>, RequestError> {
        exact("DMA_MAP", p, DMA_MAP_SIZE, "32 expected")?;
        let req = DmaMap::parse(p).ok_or_else(|| RequestError::invalid("DMA_MAP: short"))?;
        if (req.argsz as usize) < DMA_MAP_SIZE {
            return Err(RequestError::invalid(format!(
                "DMA_MAP: argsz {} is smaller than 32",
                req.argsz
            )));
        }
        self.dma.map(&req, fds.pop())?;
        Ok(Vec::new())
    }

    fn dma_unmap(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        let req = DmaUnmap::parse(p).ok_or(RequestError::BadSize {
            what: "DMA_UNMAP",
            len: p.len(),
            expected: "24 expected",
        })?;
        if req.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            return Err(RequestError::NotSupported(
                "DMA_UNMAP: dirty page tracking".into(),
            ));
        }
        exact("DMA_UNMAP", p, DMA_UNMAP_SIZE, "24 expected")?;
        if req.flags & !DMA_UNMAP_FLAG_ALL != 0 {
            return Err(RequestError::invalid(format!(
                "DMA_UNMAP: unknown flags {:#x}",
                req.flags & !DMA_UNMAP_FLAG_ALL
            )));
        }
        if (req.argsz as usize) < DMA_UNMAP_SIZE {
            return Err(RequestError::invalid(format!(
                "DMA_UNMAP: argsz {} is smaller than 24",
                req.argsz
            )));
        }
        if req.flags & DMA_UNMAP_FLAG_ALL != 0 {
            if req.iova != 0 || req.size != 0 {
                return Err(RequestError::invalid(
                    "DMA_UNMAP: unmap-all with a non-zero address or size",
                ));
            }
            self.retired = Some(self.dma.unmap_all());
        } else {
            self.retired = Some(self.dma.unmap(req.iova, req.size)?);
        }
        Ok(req.encode())
    }

    fn device_info(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact("DEVICE_GET_INFO", p, DEVICE_INFO_SIZE, "16 expected")?;
        let argsz = Reader::new(p).u32().unwrap_or(0);
        let mut full = Vec::with_capacity(DEVICE_INFO_SIZE);
        full.put_u32(DEVICE_INFO_SIZE as u32);
        full.put_u32(DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET);
        full.put_u32(region::COUNT);
        full.put_u32(irq_index::COUNT);
        fit_argsz("DEVICE_GET_INFO", full, argsz)
    }

    fn region_info(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact("DEVICE_GET_REGION_INFO", p, REGION_INFO_SIZE, "32 expected")?;
        let req = RegionInfoMsg::parse(p)
            .ok_or_else(|| RequestError::invalid("DEVICE_GET_REGION_INFO: short"))?;
        if req.index >= region::COUNT {
            return Err(RequestError::invalid(format!(
                "DEVICE_GET_REGION_INFO: no region {}",
                req.index
            )));
        }
        let info = self.device.region_info(req.index).filter(|i| i.size > 0);
        let mut flags = 0;
        if let Some(i) = info {
            if i.read {
                flags |= REGION_INFO_FLAG_READ;
            }
            if i.write {
                flags |= REGION_INFO_FLAG_WRITE;
            }
        }
        let full = RegionInfoMsg {
            argsz: REGION_INFO_SIZE as u32,
            flags,
            index: req.index,
            cap_offset: 0,
            size: info.map_or(0, |i| i.size),
            offset: 0,
        }
        .encode();
        fit_argsz("DEVICE_GET_REGION_INFO", full, req.argsz)
    }

    fn region_io_fds(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact(
            "DEVICE_GET_REGION_IO_FDS",
            p,
            REGION_IO_FDS_SIZE,
            "16 expected",
        )?;
        let mut r = Reader::new(p);
        let (argsz, flags, index) = (
            r.u32().unwrap_or(0),
            r.u32().unwrap_or(0),
            r.u32().unwrap_or(0),
        );
        if flags != 0 {
            return Err(RequestError::invalid(format!(
                "DEVICE_GET_REGION_IO_FDS: flags {flags:#x} must be 0"
            )));
        }
        if index >= region::COUNT {
            return Err(RequestError::invalid(format!(
                "DEVICE_GET_REGION_IO_FDS: no region {index}"
            )));
        }
        // No region has ioeventfds: an empty sub-region list, no descriptors.
        let mut full = Vec::with_capacity(REGION_IO_FDS_SIZE);
        full.put_u32(REGION_IO_FDS_SIZE as u32);
        full.put_u32(0);
        full.put_u32(index);
        full.put_u32(0);
        fit_argsz("DEVICE_GET_REGION_IO_FDS", full, argsz)
    }

    fn irq_info(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact("DEVICE_GET_IRQ_INFO", p, IRQ_INFO_SIZE, "16 expected")?;
        let mut r = Reader::new(p);
        let argsz = r.u32().unwrap_or(0);
        let _flags = r.u32();
        let index = r.u32().unwrap_or(u32::MAX);
        let line = self.irqs.line(index).ok_or_else(|| {
            RequestError::invalid(format!("DEVICE_GET_IRQ_INFO: no irq index {index}"))
        })?;
        let mut full = Vec::with_capacity(IRQ_INFO_SIZE);
        full.put_u32(IRQ_INFO_SIZE as u32);
        full.put_u32(IRQ_INFO_EVENTFD);
        full.put_u32(index);
        full.put_u32(line.count());
        fit_argsz("DEVICE_GET_IRQ_INFO", full, argsz)
    }

    fn set_irqs(&mut self, p: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<u8>, RequestError> {
        let req = IrqSet::parse(p).ok_or(RequestError::BadSize {
            what: "DEVICE_SET_IRQS",
            len: p.len(),
            expected: "at least 20",
        })?;
        let data = &p[IRQ_SET_SIZE..];
        if (req.argsz as usize) < IRQ_SET_SIZE {
            return Err(RequestError::invalid(format!(
                "SET_IRQS: argsz {} is smaller than 20",
                req.argsz
            )));
        }
        let data_flag = req.flags & IRQ_SET_DATA_MASK;
        let action_flag = req.flags & IRQ_SET_ACTION_MASK_ALL;
        if req.flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0
            || data_flag.count_ones() != 1
            || action_flag.count_ones() != 1
        {
            return Err(RequestError::invalid(format!(
                "SET_IRQS: flags {:#x} must name one data type and one action",
                req.flags
            )));
        }
        let Some(line) = self.irqs.line(req.index) else {
            return Err(RequestError::invalid(format!(
                "SET_IRQS: no irq index {}",
                req.index
            )));
        };
        if fds.len() > req.count as usize {
            return Err(RequestError::TooManyFds {
                what: "DEVICE_SET_IRQS".into(),
                got: fds.len(),
                max: req.count as usize,
            });
        }
        if data_flag != IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(RequestError::TooManyFds {
                what: "DEVICE_SET_IRQS without DATA_EVENTFD".into(),
                got: fds.len(),
                max: 0,
            });
        }
        // count 0 with DATA_NONE: disable the whole index (the spec's special case).
        if req.count == 0 {
            if data_flag != IRQ_SET_DATA_NONE || req.start != 0 || !data.is_empty() {
                return Err(RequestError::invalid(
                    "SET_IRQS: count 0 is only valid with DATA_NONE and start 0",
                ));
            }
            if action_flag == IRQ_SET_ACTION_TRIGGER {
                self.irqs.disable(req.index);
                log::debug!("SET_IRQS: index {} disabled", req.index);
            }
            return Ok(Vec::new());
        }
        match req.start.checked_add(req.count) {
            Some(end) if end <= line.count() => {}
            _ => {
                return Err(RequestError::invalid(format!(
                    "SET_IRQS: vectors {}+{} outside the {} of index {}",
                    req.start,
                    req.count,
                    line.count(),
                    req.index
                )))
            }
        }
        let select = match data_flag {
            IRQ_SET_DATA_BOOL => {
                if data.len() != req.count as usize {
                    return Err(RequestError::invalid(format!(
                        "SET_IRQS: {} bool bytes for {} vectors",
                        data.len(),
                        req.count
                    )));
                }
                Some(data)
            }
            _ => {
                if !data.is_empty() {
                    return Err(RequestError::invalid(format!(
                        "SET_IRQS: {} unexpected data bytes",
                        data.len()
                    )));
                }
                None
            }
        };
        let action = match (data_flag, action_flag) {
            (IRQ_SET_DATA_EVENTFD, IRQ_SET_ACTION_TRIGGER) => {
                if fds.is_empty() {
                    IrqAction::Deassign
                } else if fds.len() == req.count as usize {
                    IrqAction::Assign(fds)
                } else {
                    return Err(RequestError::invalid(format!(
                        "SET_IRQS: {} eventfds for {} vectors (0 or {} expected)",
                        fds.len(),
                        req.count,
                        req.count
                    )));
                }
            }
            (IRQ_SET_DATA_EVENTFD, _) => {
                return Err(RequestError::NotSupported(
                    "SET_IRQS: eventfds for mask/unmask events".into(),
                ))
            }
            (_, IRQ_SET_ACTION_TRIGGER) => IrqAction::Trigger,
            (_, IRQ_SET_ACTION_MASK) => IrqAction::Mask,
            _ => IrqAction::Unmask,
        };
        log::debug!(
            "SET_IRQS index {} vectors {}+{}: {:?}",
            req.index,
            req.start,
            req.count,
            action
        );
        self.irqs
            .apply(req.index, req.start, req.count, select, action)?;
        Ok(Vec::new())
    }

    /// Checks a region access against the region's size and rights and the transfer limit.
    fn check_access(&self, a: &RegionAccess, write: bool) -> Result<(), RequestError> {
        if a.count == 0 {
            return Err(RequestError::invalid("region access of 0 bytes"));
        }
        if a.count > MAX_DATA_XFER_SIZE {
            return Err(RequestError::TooBig(u64::from(a.count)));
        }
        if a.region >= region::COUNT {
            return Err(RequestError::invalid(format!("no region {}", a.region)));
        }
        let info = self
            .device
            .region_info(a.region)
            .filter(|i| i.size > 0)
            .ok_or_else(|| RequestError::invalid(format!("region {} is absent", a.region)))?;
        if (write && !info.write) || (!write && !info.read) {
            return Err(RequestError::invalid(format!(
                "region {} is not {}",
                a.region,
                if write { "writable" } else { "readable" }
            )));
        }
        match a.offset.checked_add(u64::from(a.count)) {
            Some(end) if end <= info.size => Ok(()),
            _ => Err(RequestError::invalid(format!(
                "access {:#x}+{} is outside region {} (size {:#x})",
                a.offset, a.count, a.region, info.size
            ))),
        }
    }

    fn region_read(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact("REGION_READ", p, REGION_ACCESS_SIZE, "16 expected")?;
        let a =
            RegionAccess::parse(p).ok_or_else(|| RequestError::invalid("REGION_READ: short"))?;
        self.check_access(&a, false)?;
        let mut out = Vec::with_capacity(REGION_ACCESS_SIZE + a.count as usize);
        a.write_to(&mut out);
        out.resize(REGION_ACCESS_SIZE + a.count as usize, 0);
        self.device
            .region_read(a.region, a.offset, &mut out[REGION_ACCESS_SIZE..])
            .map_err(RequestError::Access)?;
        Ok(out)
    }

    fn region_write(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        let a = RegionAccess::parse(p).ok_or(RequestError::BadSize {
            what: "REGION_WRITE",
            len: p.len(),
            expected: "at least 16",
        })?;
        let data = &p[REGION_ACCESS_SIZE..];
        if data.len() != a.count as usize {
            return Err(RequestError::BadSize {
                what: "REGION_WRITE",
                len: p.len(),
                expected: "16 + count",
            });
        }
        self.check_access(&a, true)?;
        self.device
            .region_write(a.region, a.offset, data)
            .map_err(RequestError::Access)?;
        let mut out = Vec::with_capacity(REGION_ACCESS_SIZE);
        a.write_to(&mut out);
        Ok(out)
    }

    fn region_write_multi(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        let mut r = Reader::new(p);
        let wr_cnt = r.u64().ok_or(RequestError::BadSize {
            what: "REGION_WRITE_MULTI",
            len: p.len(),
            expected: "at least 8",
        })?;
        if wr_cnt == 0 || wr_cnt > WRITE_MULTI_MAX {
            return Err(RequestError::invalid(format!(
                "REGION_WRITE_MULTI: {wr_cnt} writes (1..={WRITE_MULTI_MAX} allowed)"
            )));
        }
        let entries = r.rest();
        if entries.len() as u64 != wr_cnt * WRITE_MULTI_ENTRY_SIZE as u64 {
            return Err(RequestError::BadSize {
                what: "REGION_WRITE_MULTI",
                len: p.len(),
                expected: "8 + 24 * wr_cnt",
            });
        }
        // Each entry is its own posted write, applied in order: a bad entry is refused and
        // logged, the valid ones beside it still happen (QEMU coalesces independent posted
        // writes into one message only when its queue is congested).
        let mut first_error: Option<(usize, RequestError)> = None;
        let mut refused = 0usize;
        for (i, e) in entries.chunks_exact(WRITE_MULTI_ENTRY_SIZE).enumerate() {
            match self.write_multi_entry(e) {
                Ok(()) => {}
                Err(err) => {
                    refused += 1;
                    log::debug!("REGION_WRITE_MULTI entry {i} refused: {err}");
                    if first_error.is_none() {
                        first_error = Some((i, err));
                    }
                }
            }
        }
        if let Some((i, err)) = first_error {
            let errno = err.errno();
            return Err(RequestError::PartialMulti {
                refused,
                total: wr_cnt,
                first: i,
                errno,
                source: Box::new(err),
            });
        }
        let mut out = Vec::with_capacity(8);
        out.put_u64(wr_cnt);
        Ok(out)
    }

    /// One REGION_WRITE_MULTI entry: checked, then written.
    fn write_multi_entry(&self, e: &[u8]) -> Result<(), RequestError> {
        let a = RegionAccess::parse(e)
            .ok_or_else(|| RequestError::invalid("REGION_WRITE_MULTI: short entry"))?;
        if a.count as usize > WRITE_MULTI_DATA {
            return Err(RequestError::invalid(format!(
                "REGION_WRITE_MULTI: entry count {} exceeds 8",
                a.count
            )));
        }
        self.check_access(&a, true)?;
        let data = &e[REGION_ACCESS_SIZE..REGION_ACCESS_SIZE + a.count as usize];
        self.device
            .region_write(a.region, a.offset, data)
            .map_err(RequestError::Access)
    }

    fn reset(&mut self, p: &[u8]) -> Result<Vec<u8>, RequestError> {
        exact("DEVICE_RESET", p, 0, "no payload expected")?;
        log::info!("device reset requested by the client");
        self.device.reset();
        self.irqs.clear_pending();
        Ok(Vec::new())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Wake every device thread waiting for a reply before stopping them.
        self.remote.close();
        self.device.shutdown();
        log::info!(
            "client session ended; device stats: {} {}",
            format_stats(&self.device.stats()),
            self.remote.stats().format()
        );
        if faultline_device::trace::enabled() {
            match faultline_device::trace::flush() {
                Ok(()) => log::info!("fault timeline written"),
                Err(e) => log::warn!("cannot write the fault timeline: {e}"),
            }
        }
        // The device is stopped: nothing references the mappings any more.
        drop(self.dma.unmap_all());
        for i in 0..irq_index::COUNT {
            self.irqs.disable(i);
        }
    }
}

fn exact(
    what: &'static str,
    p: &[u8],
    size: usize,
    expected: &'static str,
) -> Result<(), RequestError> {
    if p.len() != size {
        return Err(RequestError::BadSize {
            what,
            len: p.len(),
            expected,
        });
    }
    Ok(())
}

/// Returns `full` if the client's `argsz` can hold it; a smaller `argsz` is EINVAL, as in kernel
/// VFIO and libvfio-user. (Truncating to `argsz` with the needed size in the reply's `argsz` is
/// for capability chains only, and no reply of this server has one: `full` is always the base
/// structure.)
fn fit_argsz(what: &str, full: Vec<u8>, argsz: u32) -> Result<Vec<u8>, RequestError> {
    if (argsz as usize) < full.len() {
        return Err(RequestError::invalid(format!(
            "{what}: argsz {argsz} is below the {}-byte structure",
            full.len()
        )));
    }
    Ok(full)
}
