//! The device's guest-visible interface, as written in `docs/device-spec.md`.
//!
//! Every constant here is also listed in [`ABI_CONSTANTS`] under its C name; the test
//! `tests/abi_header.rs` checks that table against `guest-tests/include/faultline_abi.h`.

use faultline_mmu::{fault, pte};

macro_rules! abi {
    ($( $(#[$m:meta])* $name:ident : $ty:ty = $val:expr => $cname:literal; )*) => {
        $( $(#[$m])* pub const $name: $ty = $val; )*
        /// Every ABI constant as `(C name, value)`.
        pub const ABI_CONSTANTS: &[(&str, u64)] = &[ $( ($cname, $name as u64), )* ];
    };
}

abi! {
    /// PCI vendor id.
    PCI_VENDOR_ID: u16 = 0xfa17 => "FL_PCI_VENDOR_ID";
    /// PCI device id.
    PCI_DEVICE_ID: u16 = 0x0001 => "FL_PCI_DEVICE_ID";
    /// PCI class code (display controller, 3D).
    PCI_CLASS: u32 = 0x03_0200 => "FL_PCI_CLASS";
    /// PCI revision.
    PCI_REVISION: u8 = 0x01 => "FL_PCI_REVISION";
    /// BAR0 (registers) size.
    BAR0_SIZE: u64 = 0x1_0000 => "FL_BAR0_SIZE";
    /// BAR1 (MSI-X table and PBA) size.
    BAR1_SIZE: u64 = 0x1000 => "FL_BAR1_SIZE";
    /// MSI-X table offset in BAR1.
    MSIX_TABLE_OFFSET: u32 = 0x000 => "FL_MSIX_TABLE_OFFSET";
    /// MSI-X PBA offset in BAR1.
    MSIX_PBA_OFFSET: u32 = 0x800 => "FL_MSIX_PBA_OFFSET";
    /// Number of MSI-X vectors.
    MSIX_VECTORS: u16 = 4 => "FL_MSIX_VECTORS";
    /// Vector raised for command completions.
    VEC_QUEUE: u16 = 0 => "FL_VEC_QUEUE";
    /// Vector raised for pending faults.
    VEC_FAULT: u16 = 1 => "FL_VEC_FAULT";
    /// Vector raised when the device enters an error state.
    VEC_ERROR: u16 = 2 => "FL_VEC_ERROR";

    /// Identification register.
    REG_ID: u64 = 0x000 => "FL_REG_ID";
    /// Interface version.
    REG_VERSION: u64 = 0x004 => "FL_REG_VERSION";
    /// Feature bits.
    REG_FEATURES: u64 = 0x008 => "FL_REG_FEATURES";
    /// Number of contexts.
    REG_NUM_CONTEXTS: u64 = 0x00c => "FL_REG_NUM_CONTEXTS";
    /// Number of engines.
    REG_NUM_ENGINES: u64 = 0x010 => "FL_REG_NUM_ENGINES";
    /// Lanes per engine.
    REG_NUM_LANES: u64 = 0x014 => "FL_REG_NUM_LANES";
    /// TLB entries.
    REG_TLB_ENTRIES: u64 = 0x018 => "FL_REG_TLB_ENTRIES";
    /// Device control.
    REG_CONTROL: u64 = 0x020 => "FL_REG_CONTROL";
    /// Device status.
    REG_STATUS: u64 = 0x024 => "FL_REG_STATUS";
    /// Last error code.
    REG_ERROR: u64 = 0x028 => "FL_REG_ERROR";
    /// Error detail (command index).
    REG_ERROR_INFO: u64 = 0x02c => "FL_REG_ERROR_INFO";
    /// Writeback block GPA, low half.
    REG_WB_LO: u64 = 0x030 => "FL_REG_WB_LO";
    /// Writeback block GPA, high half.
    REG_WB_HI: u64 = 0x034 => "FL_REG_WB_HI";
    /// Command queue GPA, low half.
    REG_CQ_BASE_LO: u64 = 0x040 => "FL_REG_CQ_BASE_LO";
    /// Command queue GPA, high half.
    REG_CQ_BASE_HI: u64 = 0x044 => "FL_REG_CQ_BASE_HI";
    /// Command queue entries.
    REG_CQ_SIZE: u64 = 0x048 => "FL_REG_CQ_SIZE";
    /// Command queue tail doorbell.
    REG_CQ_TAIL: u64 = 0x04c => "FL_REG_CQ_TAIL";
    /// Command queue control.
    REG_CQ_CONTROL: u64 = 0x050 => "FL_REG_CQ_CONTROL";
    /// Command queue head (slow path).
    REG_CQ_HEAD: u64 = 0x054 => "FL_REG_CQ_HEAD";
    /// Fault ring GPA, low half.
    REG_FR_BASE_LO: u64 = 0x060 => "FL_REG_FR_BASE_LO";
    /// Fault ring GPA, high half.
    REG_FR_BASE_HI: u64 = 0x064 => "FL_REG_FR_BASE_HI";
    /// Fault ring entries.
    REG_FR_SIZE: u64 = 0x068 => "FL_REG_FR_SIZE";
    /// Fault ring GET doorbell.
    REG_FR_GET: u64 = 0x06c => "FL_REG_FR_GET";
    /// Fault ring control.
    REG_FR_CONTROL: u64 = 0x070 => "FL_REG_FR_CONTROL";
    /// Fault ring PUT (slow path).
    REG_FR_PUT: u64 = 0x074 => "FL_REG_FR_PUT";
    /// Fault interrupt moderation (µs).
    REG_FR_IRQ_DELAY: u64 = 0x078 => "FL_REG_FR_IRQ_DELAY";

    /// `REG_ID` value ("FLT1").
    ID_MAGIC: u32 = 0x464c_5431 => "FL_ID_MAGIC";
    /// `REG_VERSION` value.
    VERSION: u32 = 0x0001_0000 => "FL_VERSION";
    /// Feature: device MMU.
    FEAT_MMU: u32 = 1 << 0 => "FL_FEAT_MMU";
    /// Feature: fault ring.
    FEAT_FAULT_RING: u32 = 1 << 1 => "FL_FEAT_FAULT_RING";
    /// Feature: compute engines.
    FEAT_ENGINES: u32 = 1 << 2 => "FL_FEAT_ENGINES";
    /// Control: enable.
    CTRL_ENABLE: u32 = 1 << 0 => "FL_CTRL_ENABLE";
    /// Control: reset (self-clearing).
    CTRL_RESET: u32 = 1 << 1 => "FL_CTRL_RESET";
    /// Status: enabled.
    STATUS_ENABLED: u32 = 1 << 0 => "FL_STATUS_ENABLED";
    /// Status: command queue running.
    STATUS_QUEUE_RUNNING: u32 = 1 << 1 => "FL_STATUS_QUEUE_RUNNING";
    /// Status: error state.
    STATUS_ERROR: u32 = 1 << 2 => "FL_STATUS_ERROR";
    /// Status: fault ring enabled.
    STATUS_FAULT_RING_ENABLED: u32 = 1 << 3 => "FL_STATUS_FAULT_RING_ENABLED";
    /// Queue control: enable.
    CQ_CTRL_ENABLE: u32 = 1 << 0 => "FL_CQ_CTRL_ENABLE";
    /// Fault ring control: enable.
    FR_CTRL_ENABLE: u32 = 1 << 0 => "FL_FR_CTRL_ENABLE";
    /// Smallest command queue.
    CQ_MIN_ENTRIES: u32 = 2 => "FL_CQ_MIN_ENTRIES";
    /// Largest command queue.
    CQ_MAX_ENTRIES: u32 = 65536 => "FL_CQ_MAX_ENTRIES";
    /// Smallest fault ring.
    FR_MIN_ENTRIES: u32 = 2 => "FL_FR_MIN_ENTRIES";
    /// Largest fault ring.
    FR_MAX_ENTRIES: u32 = 65536 => "FL_FR_MAX_ENTRIES";
    /// Largest fault-interrupt moderation delay (µs).
    FR_IRQ_DELAY_MAX: u32 = 10_000 => "FL_FR_IRQ_DELAY_MAX";

    /// Writeback block size.
    WB_SIZE: u64 = 64 => "FL_WB_SIZE";
    /// Writeback: command queue head (u32).
    WB_CQ_HEAD: u64 = 0x00 => "FL_WB_CQ_HEAD";
    /// Writeback: fault ring PUT (u32).
    WB_FR_PUT: u64 = 0x04 => "FL_WB_FR_PUT";
    /// Writeback: fault ring overflows (u32).
    WB_FR_OVERFLOWS: u64 = 0x08 => "FL_WB_FR_OVERFLOWS";
    /// Writeback: error code (u32).
    WB_ERROR: u64 = 0x0c => "FL_WB_ERROR";
    /// Writeback: completed commands (u64).
    WB_COMPLETED: u64 = 0x10 => "FL_WB_COMPLETED";

    /// Command entry size.
    CMD_SIZE: u64 = 64 => "FL_CMD_SIZE";
    /// Command: opcode (u8).
    CMD_OFF_OPCODE: u64 = 0x00 => "FL_CMD_OFF_OPCODE";
    /// Command: flags (u8).
    CMD_OFF_FLAGS: u64 = 0x01 => "FL_CMD_OFF_FLAGS";
    /// Command: context (u16).
    CMD_OFF_CONTEXT: u64 = 0x02 => "FL_CMD_OFF_CONTEXT";
    /// Command: driver tag (u64).
    CMD_OFF_SEQ: u64 = 0x08 => "FL_CMD_OFF_SEQ";
    /// Command: first of six u64 arguments.
    CMD_OFF_ARGS: u64 = 0x10 => "FL_CMD_OFF_ARGS";
    /// Command flag: raise vector 0 on completion.
    CMD_F_IRQ: u8 = 1 << 0 => "FL_CMD_F_IRQ";
    /// Command flag (FENCE): wait for earlier jobs.
    CMD_F_WAIT_JOBS: u8 = 1 << 1 => "FL_CMD_F_WAIT_JOBS";
    /// Context value meaning "all contexts".
    CONTEXT_ALL: u16 = 0xffff => "FL_CONTEXT_ALL";

    /// No operation.
    OP_NOP: u8 = 0x00 => "FL_OP_NOP";
    /// Fence: write a value to guest memory.
    OP_FENCE: u8 = 0x01 => "FL_OP_FENCE";
    /// Write the counter block.
    OP_STATS: u8 = 0x02 => "FL_OP_STATS";
    /// Bind a context to a page table.
    OP_BIND: u8 = 0x10 => "FL_OP_BIND";
    /// Unbind a context.
    OP_UNBIND: u8 = 0x11 => "FL_OP_UNBIND";
    /// Invalidate a VA range.
    OP_INVALIDATE: u8 = 0x20 => "FL_OP_INVALIDATE";
    /// Invalidate a whole context (or all).
    OP_INVALIDATE_ALL: u8 = 0x21 => "FL_OP_INVALIDATE_ALL";
    /// Replay stalled lanes.
    OP_REPLAY: u8 = 0x30 => "FL_OP_REPLAY";
    /// Cancel stalled accesses to one page.
    OP_CANCEL: u8 = 0x31 => "FL_OP_CANCEL";
    /// Cancel every stalled access.
    OP_CANCEL_ALL: u8 = 0x32 => "FL_OP_CANCEL_ALL";
    /// Job: fill.
    OP_JOB_FILL: u8 = 0x40 => "FL_OP_JOB_FILL";
    /// Job: copy.
    OP_JOB_COPY: u8 = 0x41 => "FL_OP_JOB_COPY";
    /// Job: checksum (FNV-1a 64).
    OP_JOB_CHECKSUM: u8 = 0x42 => "FL_OP_JOB_CHECKSUM";
    /// Job: atomic add.
    OP_JOB_ATOMIC_ADD: u8 = 0x43 => "FL_OP_JOB_ATOMIC_ADD";

    /// Pattern: sequential.
    PAT_SEQ: u8 = 0 => "FL_PAT_SEQ";
    /// Pattern: strided.
    PAT_STRIDED: u8 = 1 => "FL_PAT_STRIDED";
    /// Pattern: random.
    PAT_RANDOM: u8 = 2 => "FL_PAT_RANDOM";
    /// Engine value meaning "any".
    ENGINE_ANY: u8 = 0xff => "FL_ENGINE_ANY";

    /// Completion record size.
    COMPL_SIZE: u64 = 32 => "FL_COMPL_SIZE";
    /// Completion: seq (u64).
    COMPL_OFF_SEQ: u64 = 0x00 => "FL_COMPL_OFF_SEQ";
    /// Completion: bytes (u64).
    COMPL_OFF_BYTES: u64 = 0x08 => "FL_COMPL_OFF_BYTES";
    /// Completion: result (u64).
    COMPL_OFF_RESULT: u64 = 0x10 => "FL_COMPL_OFF_RESULT";
    /// Completion: faults (u16).
    COMPL_OFF_FAULTS: u64 = 0x18 => "FL_COMPL_OFF_FAULTS";
    /// Completion: replays (u16).
    COMPL_OFF_REPLAYS: u64 = 0x1a => "FL_COMPL_OFF_REPLAYS";
    /// Completion: status (u32), written last.
    COMPL_OFF_STATUS: u64 = 0x1c => "FL_COMPL_OFF_STATUS";
    /// Job status: success.
    JOB_OK: u32 = 1 => "FL_JOB_OK";
    /// Job status: cancelled.
    JOB_CANCELLED: u32 = 2 => "FL_JOB_CANCELLED";
    /// Job status: guest-memory access outside the DMA-mapped memory.
    JOB_DMA_ERROR: u32 = 3 => "FL_JOB_DMA_ERROR";
    /// Job status: malformed page table.
    JOB_PT_ERROR: u32 = 4 => "FL_JOB_PT_ERROR";
    /// Job status: invalid arguments.
    JOB_INVALID: u32 = 5 => "FL_JOB_INVALID";
    /// Job status: context not bound.
    JOB_UNBOUND: u32 = 6 => "FL_JOB_UNBOUND";
    /// Job status: aborted by reset or disconnect.
    JOB_ABORTED: u32 = 7 => "FL_JOB_ABORTED";

    /// PTE: valid.
    PTE_VALID: u64 = pte::PTE_VALID => "FL_PTE_VALID";
    /// PTE: readable.
    PTE_READ: u64 = pte::PTE_READ => "FL_PTE_READ";
    /// PTE: writable.
    PTE_WRITE: u64 = pte::PTE_WRITE => "FL_PTE_WRITE";
    /// PTE: atomics allowed.
    PTE_ATOMIC: u64 = pte::PTE_ATOMIC => "FL_PTE_ATOMIC";
    /// PTE: large leaf.
    PTE_LEAF: u64 = pte::PTE_LEAF => "FL_PTE_LEAF";
    /// PTE: address bits.
    PTE_ADDR_MASK: u64 = pte::PTE_ADDR_MASK => "FL_PTE_ADDR_MASK";
    /// Page-table levels.
    PT_LEVELS: u32 = pte::PT_LEVELS => "FL_PT_LEVELS";
    /// Device VA width.
    VA_BITS: u32 = pte::VA_BITS => "FL_VA_BITS";

    /// Fault entry size.
    FAULT_SIZE: u64 = fault::FAULT_SIZE => "FL_FAULT_SIZE";
    /// Fault: VA (u64).
    FAULT_OFF_VA: u64 = fault::FAULT_OFF_VA => "FL_FAULT_OFF_VA";
    /// Fault: timestamp (u64).
    FAULT_OFF_TIMESTAMP: u64 = fault::FAULT_OFF_TIMESTAMP => "FL_FAULT_OFF_TIMESTAMP";
    /// Fault: context (u16).
    FAULT_OFF_CONTEXT: u64 = fault::FAULT_OFF_CONTEXT => "FL_FAULT_OFF_CONTEXT";
    /// Fault: lane (u16).
    FAULT_OFF_LANE: u64 = fault::FAULT_OFF_LANE => "FL_FAULT_OFF_LANE";
    /// Fault: engine (u8).
    FAULT_OFF_ENGINE: u64 = fault::FAULT_OFF_ENGINE => "FL_FAULT_OFF_ENGINE";
    /// Fault: access (u8).
    FAULT_OFF_ACCESS: u64 = fault::FAULT_OFF_ACCESS => "FL_FAULT_OFF_ACCESS";
    /// Fault: info (u32).
    FAULT_OFF_INFO: u64 = fault::FAULT_OFF_INFO => "FL_FAULT_OFF_INFO";
    /// Fault info: valid.
    FAULT_VALID: u32 = fault::FAULT_VALID => "FL_FAULT_VALID";
    /// Fault reason: not present.
    FAULT_NOT_PRESENT: u32 = fault::FAULT_NOT_PRESENT => "FL_FAULT_NOT_PRESENT";
    /// Fault reason: permission.
    FAULT_PERMISSION: u32 = fault::FAULT_PERMISSION => "FL_FAULT_PERMISSION";
    /// Access: prefetch.
    ACCESS_PREFETCH: u8 = fault::ACCESS_PREFETCH => "FL_ACCESS_PREFETCH";
    /// Access: read.
    ACCESS_READ: u8 = fault::ACCESS_READ => "FL_ACCESS_READ";
    /// Access: write.
    ACCESS_WRITE: u8 = fault::ACCESS_WRITE => "FL_ACCESS_WRITE";
    /// Access: atomic.
    ACCESS_ATOMIC: u8 = fault::ACCESS_ATOMIC => "FL_ACCESS_ATOMIC";

    /// Stats: commands executed.
    STAT_COMMANDS: u32 = 0 => "FL_STAT_COMMANDS";
    /// Stats: jobs.
    STAT_JOBS: u32 = 1 => "FL_STAT_JOBS";
    /// Stats: read faults.
    STAT_FAULTS_READ: u32 = 2 => "FL_STAT_FAULTS_READ";
    /// Stats: write faults.
    STAT_FAULTS_WRITE: u32 = 3 => "FL_STAT_FAULTS_WRITE";
    /// Stats: atomic faults.
    STAT_FAULTS_ATOMIC: u32 = 4 => "FL_STAT_FAULTS_ATOMIC";
    /// Stats: prefetch faults.
    STAT_FAULTS_PREFETCH: u32 = 5 => "FL_STAT_FAULTS_PREFETCH";
    /// Stats: ring overflows.
    STAT_FAULT_OVERFLOWS: u32 = 6 => "FL_STAT_FAULT_OVERFLOWS";
    /// Stats: replays.
    STAT_REPLAYS: u32 = 7 => "FL_STAT_REPLAYS";
    /// Stats: cancels.
    STAT_CANCELS: u32 = 8 => "FL_STAT_CANCELS";
    /// Stats: invalidations.
    STAT_INVALIDATIONS: u32 = 9 => "FL_STAT_INVALIDATIONS";
    /// Stats: TLB hits.
    STAT_TLB_HITS: u32 = 10 => "FL_STAT_TLB_HITS";
    /// Stats: TLB misses.
    STAT_TLB_MISSES: u32 = 11 => "FL_STAT_TLB_MISSES";
    /// Stats: page-table walks.
    STAT_WALKS: u32 = 12 => "FL_STAT_WALKS";
    /// Stats: fault ring high-water mark.
    STAT_RING_HIGH_WATER: u32 = 13 => "FL_STAT_RING_HIGH_WATER";
    /// Stats: duplicate faults.
    STAT_DUPLICATES: u32 = 14 => "FL_STAT_DUPLICATES";
    /// Stats: first latency histogram bucket.
    STAT_LAT_BASE: u32 = 15 => "FL_STAT_LAT_BASE";
    /// Stats: latency histogram buckets.
    STAT_LAT_BUCKETS: u32 = 24 => "FL_STAT_LAT_BUCKETS";
    /// Stats: number of u64 counters.
    STAT_COUNT: u32 = 39 => "FL_STAT_COUNT";

    /// Error: none.
    ERR_NONE: u32 = 0 => "FL_ERR_NONE";
    /// Error: command queue configuration.
    ERR_CQ_CONFIG: u32 = 1 => "FL_ERR_CQ_CONFIG";
    /// Error: writeback configuration.
    ERR_WB_CONFIG: u32 = 2 => "FL_ERR_WB_CONFIG";
    /// Error: command could not be read.
    ERR_CQ_DMA: u32 = 3 => "FL_ERR_CQ_DMA";
    /// Error: bad opcode or reserved field.
    ERR_BAD_OPCODE: u32 = 4 => "FL_ERR_BAD_OPCODE";
    /// Error: tail beyond head + size.
    ERR_BAD_TAIL: u32 = 5 => "FL_ERR_BAD_TAIL";
    /// Error: fault ring configuration.
    ERR_FR_CONFIG: u32 = 6 => "FL_ERR_FR_CONFIG";
    /// Error: bad command argument.
    ERR_BAD_ARG: u32 = 7 => "FL_ERR_BAD_ARG";
    /// Error: fence/stats address outside guest memory.
    ERR_FENCE_DMA: u32 = 8 => "FL_ERR_FENCE_DMA";
}

const _: () = assert!(STAT_COUNT == STAT_LAT_BASE + STAT_LAT_BUCKETS);
