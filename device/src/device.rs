//! [`Device`]: the faultline PCI function as the vfio-user server sees it — regions, resets, counters.
//!
//! The device is the one owner of its components: it builds each with the handles it needs (guest
//! memory, interrupts, the clock, the fault ring, the control state), starts their threads, routes region
//! accesses to them, and is the one place that resets them, in one order ([`Device::reset`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, info, warn};

use crate::clock::Clock;
use crate::control::{Control, Effects};
use crate::counters::CounterBlock;
use crate::dma::{Dma, RemoteDma};
use crate::engine::{self, lane_thread, Engine};
use crate::fault_ring::FaultRingHw;
use crate::pci::{ConfigSpace, Interrupts, CONFIG_SPACE_SIZE};
use crate::queue::decode::Limits;
use crate::queue::ops::{DeviceExtension, FEATURES};
use crate::queue::Worker;
use crate::regs::{Identity, RegWrite};
use crate::stats::Stats;
use crate::sync::lock;
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
    id: Identity,
    dma: Dma,
    irq: Interrupts,
    /// Configuration space (`config` in the lock order of `sync.rs`).
    config: Mutex<ConfigSpace>,
    control: Arc<Control>,
    ring: Arc<FaultRingHw>,
    engine: Arc<Engine>,
    clock: Arc<Clock>,
    stats: Arc<Stats>,
    counters: CounterBlock,
    /// Region accesses refused for their width or alignment.
    bad_accesses: AtomicU64,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Lane threads and the moderation timer.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.id)
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
        features: FEATURES,
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
        let dma = Dma::new(mem);
        let irq = Interrupts::new(irq);
        let clock = Arc::new(Clock::new());
        let stats = Arc::new(Stats::new());
        let control = Arc::new(Control::new(dma.clone(), irq.clone()));
        let ring = Arc::new(FaultRingHw::new(
            dma.clone(),
            irq.clone(),
            Arc::clone(&clock),
        ));
        let handles = engine::Handles {
            dma: dma.clone(),
            irq: irq.clone(),
            ring: Arc::clone(&ring),
            control: Arc::clone(&control),
            stats: Arc::clone(&stats),
            clock: Arc::clone(&clock),
        };
        let (engine, lanes) = Engine::new(&config, handles).map_err(|e| {
            warn!("engine configuration refused: {e}");
            DeviceError::InvalidConfig {
                field: "engine",
                reason: "refused by the MMU",
            }
        })?;
        let engine = Arc::new(engine);
        let counters =
            CounterBlock::new(Arc::clone(&stats), Arc::clone(&engine), Arc::clone(&ring));
        let dev = Device {
            id,
            dma: dma.clone(),
            irq,
            config: Mutex::new(ConfigSpace::new()),
            control: Arc::clone(&control),
            ring: Arc::clone(&ring),
            engine: Arc::clone(&engine),
            clock: Arc::clone(&clock),
            stats: Arc::clone(&stats),
            counters: counters.clone(),
            bad_accesses: AtomicU64::new(0),
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
            let eng = Arc::clone(&engine);
            let h = spawn(
                format!("faultline-e{e}l{l}"),
                Box::new(move || lane_thread(eng, e, l, lane)),
            )?;
            lock(&dev.threads).push(h);
        }
        let timer = Arc::clone(&ring);
        let h = spawn(
            "faultline-frirq".into(),
            Box::new(move || timer.timer_thread()),
        )?;
        lock(&dev.threads).push(h);
        let limits = Limits {
            contexts: id.contexts,
            engines: id.engines,
            lanes: id.lanes,
        };
        let ext = DeviceExtension::new(engine, clock, limits);
        let worker = Worker::new(control, dma, stats, counters, Box::new(ext));
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
        let n = self.bad_accesses.fetch_add(1, Ordering::Relaxed) + 1;
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
                let val = self.read_register(offset);
                data.copy_from_slice(&val.to_le_bytes());
            }
            region::BAR1 => self.irq.with(|m| m.read(offset, data)),
            // `check` bounded offset by the 4 KiB region.
            region::CONFIG => lock(&self.config).read(offset as usize, data),
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
                self.write_register(offset, u32::from_le_bytes(val));
            }
            region::BAR1 => self.irq.with(|m| m.write(offset, data)),
            region::CONFIG => self.write_config(offset as usize, data),
            _ => return Err(AccessError::NoRegion(index)),
        }
        Ok(())
    }

    fn write_config(&self, offset: usize, data: &[u8]) {
        let effects = {
            let mut config = lock(&self.config);
            let effects = config.write(offset, data);
            if let Some((enabled, masked)) = effects.msix_control {
                // Under the config lock, so MSI-X sees control changes in configuration-space order.
                debug!("MSI-X control: enable {enabled}, function mask {masked}");
                self.irq.with(|m| m.set_control(enabled, masked));
            }
            effects
        };
        if effects.flr {
            info!("PCIe function-level reset");
            self.reset_function();
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
        self.reset_function();
    }

    /// Reads a BAR0 register.
    fn read_register(&self, offset: u64) -> u32 {
        let ring = self.ring.view();
        self.control.read_register(offset, &self.id, ring)
    }

    /// Carries out a BAR0 register write (socket thread; never waits for the worker's batch).
    fn write_register(&self, offset: u64, val: u32) {
        match self.control.write_register(offset, val) {
            None => {}
            Some(RegWrite::Control(v)) if v & abi::CTRL_RESET != 0 => {
                info!("FL_CTRL_RESET: device registers reset");
                self.reset_registers();
            }
            Some(RegWrite::Control(v)) => self.control.write_control(v),
            Some(RegWrite::CqTail(tail)) => self.control.doorbell(tail),
            Some(RegWrite::CqControl(v)) => self.control.write_cq_control(v),
            Some(RegWrite::FrGet(get)) => self.ring.doorbell(get),
            Some(RegWrite::FrIrqDelay(us)) => self.ring.set_delay(us),
            Some(RegWrite::FrControl(v)) => self.control.write_fr_control(v, &self.ring),
        }
    }

    /// Everything a reset of any kind does besides configuration space and MSI-X, in this order: new
    /// queue generation and registers to defaults (the worker abandons its batch), fault ring disabled
    /// (waiting for a post still writing it), clock restarted, counters cleared (kept for [`Device::session_stats`]), jobs aborted and contexts
    /// unbound (waiting for pinned lanes).
    fn reset_device(&self, fx: &Effects<'_>) {
        let before = self.counters.counters();
        self.control.reset(fx);
        self.ring.reset();
        self.ring.wait_writes();
        self.clock.restart();
        self.stats.clear();
        self.engine.abort_all();
        self.counters.retire(&before);
    }

    /// `FL_CTRL_RESET`: queues disabled, registers and counters to defaults, jobs aborted, worker idle.
    /// Configuration space and MSI-X are untouched.
    fn reset_registers(&self) {
        self.dma.without_remote(|| {
            let fx = self.control.effects_any();
            self.reset_device(&fx);
        });
    }

    /// Function reset (vfio-user DEVICE_RESET, PCIe FLR): registers, configuration space and MSI-X.
    fn reset_function(&self) {
        self.dma.without_remote(|| {
            let fx = self.control.effects_any();
            self.reset_device(&fx);
            lock(&self.config).reset();
            self.irq.with(|m| m.reset());
        });
    }

    /// Serves guest memory the client mapped without a file descriptor through `remote` (vfio-user
    /// DMA_READ/DMA_WRITE): every device access that misses the mapped regions falls back to it.
    pub fn set_remote_dma(&self, remote: Arc<dyn RemoteDma>) {
        self.dma.set_remote(remote);
    }

    /// The `FL_STAT_COUNT` counters of spec section 7 (index = `FL_STAT_*`), since the last reset.
    pub fn stats(&self) -> Vec<u64> {
        self.counters.counters().to_vec()
    }

    /// The same counters summed over the device's whole life (resets clear [`Device::stats`], not these):
    /// what the server logs when its client leaves. The ring high-water mark is the maximum.
    pub fn session_stats(&self) -> Vec<u64> {
        self.counters.session_counters().to_vec()
    }

    /// Number of region accesses refused for their width or alignment.
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses.load(Ordering::Relaxed)
    }

    /// Stops and joins every device thread: running and stalled jobs complete with `FL_JOB_ABORTED` (when
    /// their record is reachable), later jobs too. Idempotent; also done on drop. Region accesses keep
    /// working afterwards, but the queue no longer executes commands.
    pub fn shutdown(&self) {
        // No resume: the device stops for good.
        self.dma.stop_remote();
        self.control.shutdown();
        self.engine.shutdown();
        self.ring.shutdown();
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
