//! The device as the server sees it.
//!
//! [`DeviceBackend`] is the slice of `faultline_device::Device`'s API the server drives; keeping
//! it behind a trait lets the protocol layer be unit-tested with a small fake device.

use std::sync::Arc;

use faultline_device::{
    AccessError, Device, DeviceConfig, GuestMem, InterruptSink, RegionInfo, RemoteDma,
};

/// Operations the server performs on the device. Implementations never block on device work.
pub trait DeviceBackend {
    /// Size and rights of region `index` (0..9); `None` or size 0 when absent.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError>;
    /// Writes `data` at `offset` of region `index`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), AccessError>;
    /// Resets the device.
    fn reset(&self);
    /// Device counters (`FL_STAT_*` order) summed over the session, across guest resets.
    fn stats(&self) -> Vec<u64>;
    /// Stops all device work; the device is not used afterwards.
    fn shutdown(&self);
    /// Gives the device the client-served guest memory (regions without a file descriptor).
    fn set_remote_dma(&self, _remote: Arc<dyn RemoteDma>) {}
}

/// Constructor of a device, given the guest memory and interrupt sink of a client's session.
pub type CreateDevice =
    dyn Fn(GuestMem, Arc<dyn InterruptSink>) -> Result<Box<dyn DeviceBackend>, String>;

/// Creates a fresh device for each client.
pub struct DeviceFactory {
    /// Number of interrupts of VFIO irq `index` (0..5), known before a device exists.
    pub irq_count: fn(u32) -> u32,
    /// Builds a device.
    pub create: Box<CreateDevice>,
    /// Most DMA regions a client may map (advertised as `max_dma_maps`).
    pub max_dma_maps: usize,
}

impl std::fmt::Debug for DeviceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFactory").finish_non_exhaustive()
    }
}

impl DeviceBackend for Device {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        Device::region_info(self, index)
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        Device::region_read(self, index, offset, data)
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        Device::region_write(self, index, offset, data)
    }
    fn reset(&self) {
        Device::reset(self)
    }
    fn stats(&self) -> Vec<u64> {
        Device::session_stats(self)
    }
    fn shutdown(&self) {
        Device::shutdown(self)
    }
    fn set_remote_dma(&self, remote: Arc<dyn RemoteDma>) {
        Device::set_remote_dma(self, remote)
    }
}

impl DeviceFactory {
    /// A factory of real faultline devices with `config`.
    pub fn faultline(config: DeviceConfig) -> DeviceFactory {
        DeviceFactory {
            irq_count: Device::irq_count,
            create: Box::new(move |mem, irq| {
                Device::new(config.clone(), mem, irq)
                    .map(|d| Box::new(d) as Box<dyn DeviceBackend>)
                    .map_err(|e| e.to_string())
            }),
            max_dma_maps: crate::protocol::MAX_DMA_MAPS,
        }
    }
}

/// Names of the leading counters of the device's stats block (device spec, section 7).
const STAT_NAMES: [&str; 15] = [
    "commands",
    "jobs",
    "faults_read",
    "faults_write",
    "faults_atomic",
    "faults_prefetch",
    "fault_overflows",
    "replays",
    "cancels",
    "invalidations",
    "tlb_hits",
    "tlb_misses",
    "walks",
    "ring_high_water",
    "duplicates",
];

/// Formats the device counters as `name=value` pairs for a log line; the latency histogram that
/// follows the named counters is printed as its non-empty buckets, `lat[2^i us]=n`.
pub fn format_stats(stats: &[u64]) -> String {
    let mut parts: Vec<String> = stats
        .iter()
        .zip(STAT_NAMES.iter())
        .map(|(v, n)| format!("{n}={v}"))
        .collect();
    for (i, v) in stats.iter().enumerate().skip(STAT_NAMES.len()) {
        if *v != 0 {
            parts.push(format!("lat[2^{}us]={v}", i - STAT_NAMES.len()));
        }
    }
    if parts.is_empty() {
        "(no counters)".to_string()
    } else {
        parts.join(" ")
    }
}

/// The device parameters the command line may override.
pub fn device_config(
    contexts: Option<u16>,
    engines: Option<u8>,
    lanes: Option<u16>,
    tlb_sets: Option<u32>,
    tlb_ways: Option<u32>,
) -> DeviceConfig {
    let d = DeviceConfig::default();
    DeviceConfig {
        contexts: contexts.unwrap_or(d.contexts),
        engines: engines.unwrap_or(d.engines),
        lanes: lanes.unwrap_or(d.lanes),
        tlb_sets: tlb_sets.unwrap_or(d.tlb_sets),
        tlb_ways: tlb_ways.unwrap_or(d.tlb_ways),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_format() {
        let mut s = vec![0u64; 39];
        s[0] = 5;
        s[15 + 3] = 2;
        let f = format_stats(&s);
        assert!(f.starts_with("commands=5 jobs=0"));
        assert!(f.ends_with("lat[2^3us]=2"));
        assert_eq!(format_stats(&[]), "(no counters)");
    }
}
