//! [`Device`]: the faultline PCI function as the vfio-user server sees it — regions, resets, counters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, info, warn};

use crate::bar0::Identity;
use crate::commands::DeviceExtension;
use crate::engines::{lane_thread, Engine};
use crate::faults::FaultRingHw;
use crate::msix::Msix;
use crate::pci::CONFIG_SPACE_SIZE;
use crate::queue::{Extension, Worker};
use crate::shared::{lock, Shared};
use crate::{abi, region, AccessError, DeviceConfig, GuestMem, InterruptSink, RegionInfo};

/// Why a [`Device`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A [`DeviceConfig`] field is out of range.
    #[error("invalid device configuration: {field} {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The command-queue worker thread could not be started.
    #[error("cannot spawn the command-queue worker thread")]
    SpawnWorker(#[source] std::io::Error),
    /// An engine lane or timer thread could not be started.
    #[error("cannot spawn a device thread")]
    SpawnThread(#[source] std::io::Error),
}

/// The faultline PCI function: configuration space, BAR0 registers, BAR1 MSI-X, the command queue running
/// on the device's own worker thread, the MMU, the fault ring, and `engines × lanes` lane threads (plus one
/// fault-interrupt moderation timer thread).
///
/// Region accesses are meant for the server's socket thread: they take short locks and never wait for
/// device work (a doorbell only wakes the worker). Interrupts are delivered to the [`InterruptSink`] only
/// while MSI-X is enabled in configuration space (QEMU forwards those writes); while the MSI-X function
/// mask is set they are held in the PBA.
///
/// The sink is called with device locks held (that is what orders an interrupt after the writeback it
/// announces and before any later reset): [`InterruptSink::signal`] must not call back into the `Device`.
pub struct Device {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Lane threads and the moderation timer.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl DeviceConfig {
    /// Checks every field against the device's limits without building a device (no thread, no
    /// allocation): what [`Device::new`] refuses, this refuses.
    pub fn validate(&self) -> Result<(), DeviceError> {
        validate(self).map(drop)
    }
}

fn validate(config: &DeviceConfig) -> Result<Identity, DeviceError> {
    let invalid = |field, reason| Err(DeviceError::InvalidConfig { field, reason });
    if config.contexts == 0 || config.contexts == abi::CONTEXT_ALL {
        return invalid("contexts", "must be 1..=65534");
    }
    if config.engines == 0 || config.engines == abi::ENGINE_ANY {
        return invalid("engines", "must be 1..=254");
    }
    if config.lanes == 0 {
        return invalid("lanes", "must be at least 1");
    }
    let Some(tlb_entries) = config
        .tlb_sets
        .checked_mul(config.tlb_ways)
        .filter(|&n| n != 0)
    else {
        return invalid("tlb_sets * tlb_ways", "must be 1..=u32::MAX");
    };
    if !config.tlb_sets.is_power_of_two() || config.tlb_sets > 65536 {
        return invalid("tlb_sets", "must be a power of two, at most 65536");
    }
    if config.tlb_ways > 64 {
        return invalid("tlb_ways", "must be 1..=64");
    }
    if usize::from(config.engines) * usize::from(config.lanes) > 4096 {
        return invalid("engines * lanes", "must be at most 4096");
    }
    Ok(Identity {
        features: DeviceExtension.features(),
        contexts: u32::from(config.contexts),
        engines: u32::from(config.engines),
        lanes: u32::from(config.lanes),
        tlb_entries,
    })
}

impl Device {
    /// Creates the device in its reset state and starts its worker thread.
    pub fn new(
        config: DeviceConfig,
        mem: GuestMem,
        irq: Arc<dyn InterruptSink>,
    ) -> Result<Device, DeviceError> {
        let id = validate(&config)?;
        let (engine, lanes) = Engine::new(&config).map_err(|e| {
            warn!("engine configuration refused: {e}");
            DeviceError::InvalidConfig {
                field: "engine",
                reason: "refused by the MMU",
            }
        })?;
        let shared = Arc::new(Shared::new(id, mem, Msix::new(irq), engine));
        let dev = Device {
            shared: Arc::clone(&shared),
            worker: Mutex::new(None),
            threads: Mutex::new(Vec::with_capacity(lanes.len() + 1)),
        };
        // On an error below, dropping `dev` shuts down and joins whatever was started.
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(DeviceError::SpawnThread)
        };
        for (e, l, lane) in lanes {
            let sh = Arc::clone(&shared);
            let h = spawn(
                format!("faultline-e{e}l{l}"),
                Box::new(move || lane_thread(sh, e, l, lane)),
            )?;
            lock(&dev.threads).push(h);
        }
        let sh = Arc::clone(&shared);
        let h = spawn(
            "faultline-frirq".into(),
            Box::new(move || FaultRingHw::timer_thread(&sh)),
        )?;
        lock(&dev.threads).push(h);
        let worker = Worker::new(Arc::clone(&shared), Box::new(DeviceExtension));
        let handle = std::thread::Builder::new()
            .name("faultline-cq".into())
            .spawn(move || worker.run())
            .map_err(DeviceError::SpawnWorker)?;
        *lock(&dev.worker) = Some(handle);
        info!("faultline device created: {config:?}");
        Ok(dev)
    }

    /// Number of interrupts at VFIO interrupt `index`; see [`crate::irq_count`].
    pub fn irq_count(index: u32) -> u32 {
        crate::irq_count(index)
    }

    /// Size and access of region `index` (see [`region`]): every index below [`region::COUNT`] has an
    /// answer, absent regions have size 0; `None` for other indexes.
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let present = |size| RegionInfo {
            size,
            read: true,
            write: true,
        };
        match index {
            region::BAR0 => Some(present(abi::BAR0_SIZE)),
            region::BAR1 => Some(present(abi::BAR1_SIZE)),
            region::CONFIG => Some(present(CONFIG_SPACE_SIZE)),
            i if i < region::COUNT => Some(RegionInfo {
                size: 0,
                read: false,
                write: false,
            }),
            _ => None,
        }
    }

    /// Checks that `[offset, offset + len)` lies in region `index` and returns its size.
    fn check(&self, index: u32, offset: u64, len: usize) -> Result<u64, AccessError> {
        let size = self
            .region_info(index)
            .map(|r| r.size)
            .filter(|&s| s != 0)
            .ok_or(AccessError::NoRegion(index))?;
        let in_range = u64::try_from(len)
            .ok()
            .and_then(|l| offset.checked_add(l))
            .is_some_and(|end| end <= size);
        if !in_range {
            return Err(AccessError::OutOfRange {
                region: index,
                offset,
                len,
                size,
            });
        }
        Ok(size)
    }

    /// BAR0 accepts aligned 32-bit accesses only.
    fn check_bar0_width(&self, offset: u64, len: usize) -> Result<(), AccessError> {
        if len == 4 && offset & 3 == 0 {
            return Ok(());
        }
        let n = self.shared.bad_accesses.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!("BAR0: refused {len}-byte access at {offset:#x} ({n} bad accesses so far)");
        }
        Err(AccessError::BadAccess {
            region: region::BAR0,
            offset,
            len,
        })
    }

    /// Reads `data.len()` bytes at `offset` of region `index`.
    ///
    /// BAR0 takes aligned 4-byte accesses only (others fill `data` with 0xff and return
    /// [`AccessError::BadAccess`]); BAR1 and configuration space take any length inside the region.
    pub fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        self.check(index, offset, data.len())?;
        match index {
            region::BAR0 => {
                if let Err(e) = self.check_bar0_width(offset, data.len()) {
                    data.fill(0xff);
                    return Err(e);
                }
                let val = self.shared.read_register(offset);
                data.copy_from_slice(&val.to_le_bytes());
            }
            region::BAR1 => lock(&self.shared.msix).read(offset, data),
            // `check` bounded offset by the 4 KiB region.
            region::CONFIG => lock(&self.shared.config).read(offset as usize, data),
            _ => return Err(AccessError::NoRegion(index)),
        }
        Ok(())
    }

    /// Writes `data` at `offset` of region `index`; same access rules as [`Device::region_read`].
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        self.check(index, offset, data.len())?;
        match index {
            region::BAR0 => {
                self.check_bar0_width(offset, data.len())?;
                let mut val = [0u8; 4];
                val.copy_from_slice(data);
                self.shared.write_register(offset, u32::from_le_bytes(val));
            }
            region::BAR1 => lock(&self.shared.msix).write(offset, data),
            region::CONFIG => self.write_config(offset as usize, data),
            _ => return Err(AccessError::NoRegion(index)),
        }
        Ok(())
    }

    fn write_config(&self, offset: usize, data: &[u8]) {
        let effects = {
            let mut config = lock(&self.shared.config);
            let effects = config.write(offset, data);
            if let Some((enabled, masked)) = effects.msix_control {
                // Under the config lock, so MSI-X sees control changes in configuration-space order.
                debug!("MSI-X control: enable {enabled}, function mask {masked}");
                lock(&self.shared.msix).set_control(enabled, masked);
            }
            effects
        };
        if effects.flr {
            info!("PCIe function-level reset");
            self.shared.reset_function();
        }
    }

    /// Resets the function (vfio-user DEVICE_RESET, a client disconnect; the same as a PCIe FLR): queues
    /// disabled, registers, counters, configuration space and MSI-X to their defaults, contexts unbound, TLB
    /// flushed, every running or stalled job completed with `FL_JOB_ABORTED` (when its record is reachable),
    /// worker idle. Returns quickly: it waits at most for one in-flight step of the worker and for lanes
    /// that hold a translation (each moves at most 64 KiB under it), never for a batch or a stalled job;
    /// once it returns the device performs no further guest write or interrupt for the old queue or jobs.
    pub fn reset(&self) {
        info!("device reset");
        self.shared.reset_function();
    }

    /// Serves guest memory the client mapped without a file descriptor through `remote` (vfio-user
    /// DMA_READ/DMA_WRITE): every device access that misses the mapped regions falls back to it.
    pub fn set_remote_dma(&self, remote: Arc<dyn crate::RemoteDma>) {
        self.shared.remote.set(remote);
    }

    /// The `FL_STAT_COUNT` counters of spec section 7 (index = `FL_STAT_*`), since the last reset.
    pub fn stats(&self) -> Vec<u64> {
        self.shared.counters().to_vec()
    }

    /// The same counters summed over the device's whole life (resets clear [`Device::stats`], not these):
    /// what the server logs when its client leaves. The ring high-water mark is the maximum.
    pub fn session_stats(&self) -> Vec<u64> {
        self.shared.session_counters().to_vec()
    }

    /// Number of region accesses refused for their width or alignment.
    pub fn bad_accesses(&self) -> u64 {
        self.shared.bad_accesses.load(Ordering::Relaxed)
    }

    /// Stops and joins every device thread: running and stalled jobs complete with `FL_JOB_ABORTED` (when
    /// their record is reachable), later jobs too. Idempotent; also done on drop. Region accesses keep
    /// working afterwards, but the queue no longer executes commands.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
        self.shared.engine.shutdown(&self.shared);
        self.shared.faults.shutdown();
        let handle = lock(&self.worker).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                warn!("command queue worker panicked");
            }
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            if t.join().is_err() {
                warn!("a device thread panicked");
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn device_is_send_sync() {
        assert_send_sync::<Device>();
    }

    #[test]
    fn config_validation() {
        let ok = DeviceConfig::default();
        assert_eq!(validate(&ok).unwrap().tlb_entries, 512);
        assert!(ok.validate().is_ok());
        for bad in [
            DeviceConfig {
                contexts: 0,
                ..ok.clone()
            },
            DeviceConfig {
                engines: 0,
                ..ok.clone()
            },
            DeviceConfig {
                lanes: 0,
                ..ok.clone()
            },
            DeviceConfig {
                tlb_sets: 1 << 20,
                tlb_ways: 1 << 20,
                ..ok.clone()
            },
        ] {
            assert!(matches!(
                validate(&bad),
                Err(DeviceError::InvalidConfig { .. })
            ));
            assert!(bad.validate().is_err());
        }
    }
}
