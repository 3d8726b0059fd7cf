/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * faultline device interface, as written in docs/device-spec.md.
 *
 * The #define block mirrors device/src/abi.rs (print it with
 * `cargo run -p faultline-device --example abi_defines`); the test
 * device/tests/abi_header.rs fails if the two disagree.
 */
#ifndef FAULTLINE_ABI_H
#define FAULTLINE_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/build_bug.h>
#include <linux/stddef.h>
#define FL_STATIC_ASSERT(e) static_assert(e)
#else
#include <linux/types.h>
#include <stddef.h>
#define FL_STATIC_ASSERT(e) _Static_assert(e, #e)
#endif

#define FL_PCI_VENDOR_ID                 0xfa17U
#define FL_PCI_DEVICE_ID                 0x1U
#define FL_PCI_CLASS                     0x30200U
#define FL_PCI_REVISION                  0x1U
#define FL_BAR0_SIZE                     0x10000U
#define FL_BAR1_SIZE                     0x1000U
#define FL_MSIX_TABLE_OFFSET             0x0U
#define FL_MSIX_PBA_OFFSET               0x800U
#define FL_MSIX_VECTORS                  0x4U
#define FL_VEC_QUEUE                     0x0U
#define FL_VEC_FAULT                     0x1U
#define FL_VEC_ERROR                     0x2U
#define FL_REG_ID                        0x0U
#define FL_REG_VERSION                   0x4U
#define FL_REG_FEATURES                  0x8U
#define FL_REG_NUM_CONTEXTS              0xcU
#define FL_REG_NUM_ENGINES               0x10U
#define FL_REG_NUM_LANES                 0x14U
#define FL_REG_TLB_ENTRIES               0x18U
#define FL_REG_CONTROL                   0x20U
#define FL_REG_STATUS                    0x24U
#define FL_REG_ERROR                     0x28U
#define FL_REG_ERROR_INFO                0x2cU
#define FL_REG_WB_LO                     0x30U
#define FL_REG_WB_HI                     0x34U
#define FL_REG_CQ_BASE_LO                0x40U
#define FL_REG_CQ_BASE_HI                0x44U
#define FL_REG_CQ_SIZE                   0x48U
#define FL_REG_CQ_TAIL                   0x4cU
#define FL_REG_CQ_CONTROL                0x50U
#define FL_REG_CQ_HEAD                   0x54U
#define FL_REG_FR_BASE_LO                0x60U
#define FL_REG_FR_BASE_HI                0x64U
#define FL_REG_FR_SIZE                   0x68U
#define FL_REG_FR_GET                    0x6cU
#define FL_REG_FR_CONTROL                0x70U
#define FL_REG_FR_PUT                    0x74U
#define FL_REG_FR_IRQ_DELAY              0x78U
#define FL_ID_MAGIC                      0x464c5431U
#define FL_VERSION                       0x10000U
#define FL_FEAT_MMU                      0x1U
#define FL_FEAT_FAULT_RING               0x2U
#define FL_FEAT_ENGINES                  0x4U
#define FL_CTRL_ENABLE                   0x1U
#define FL_CTRL_RESET                    0x2U
#define FL_STATUS_ENABLED                0x1U
#define FL_STATUS_QUEUE_RUNNING          0x2U
#define FL_STATUS_ERROR                  0x4U
#define FL_STATUS_FAULT_RING_ENABLED     0x8U
#define FL_CQ_CTRL_ENABLE                0x1U
#define FL_FR_CTRL_ENABLE                0x1U
#define FL_CQ_MIN_ENTRIES                0x2U
#define FL_CQ_MAX_ENTRIES                0x10000U
#define FL_FR_MIN_ENTRIES                0x2U
#define FL_FR_MAX_ENTRIES                0x10000U
#define FL_FR_IRQ_DELAY_MAX              0x2710U
#define FL_WB_SIZE                       0x40U
#define FL_WB_CQ_HEAD                    0x0U
#define FL_WB_FR_PUT                     0x4U
#define FL_WB_FR_OVERFLOWS               0x8U
#define FL_WB_ERROR                      0xcU
#define FL_WB_COMPLETED                  0x10U
#define FL_CMD_SIZE                      0x40U
#define FL_CMD_OFF_OPCODE                0x0U
#define FL_CMD_OFF_FLAGS                 0x1U
#define FL_CMD_OFF_CONTEXT               0x2U
#define FL_CMD_OFF_SEQ                   0x8U
#define FL_CMD_OFF_ARGS                  0x10U
#define FL_CMD_F_IRQ                     0x1U
#define FL_CMD_F_WAIT_JOBS               0x2U
#define FL_CONTEXT_ALL                   0xffffU
#define FL_OP_NOP                        0x0U
#define FL_OP_FENCE                      0x1U
#define FL_OP_STATS                      0x2U
#define FL_OP_BIND                       0x10U
#define FL_OP_UNBIND                     0x11U
#define FL_OP_INVALIDATE                 0x20U
#define FL_OP_INVALIDATE_ALL             0x21U
#define FL_OP_REPLAY                     0x30U
#define FL_OP_CANCEL                     0x31U
#define FL_OP_CANCEL_ALL                 0x32U
#define FL_OP_JOB_FILL                   0x40U
#define FL_OP_JOB_COPY                   0x41U
#define FL_OP_JOB_CHECKSUM               0x42U
#define FL_OP_JOB_ATOMIC_ADD             0x43U
#define FL_PAT_SEQ                       0x0U
#define FL_PAT_STRIDED                   0x1U
#define FL_PAT_RANDOM                    0x2U
#define FL_ENGINE_ANY                    0xffU
#define FL_COMPL_SIZE                    0x20U
#define FL_COMPL_OFF_SEQ                 0x0U
#define FL_COMPL_OFF_BYTES               0x8U
#define FL_COMPL_OFF_RESULT              0x10U
#define FL_COMPL_OFF_FAULTS              0x18U
#define FL_COMPL_OFF_REPLAYS             0x1aU
#define FL_COMPL_OFF_STATUS              0x1cU
#define FL_JOB_OK                        0x1U
#define FL_JOB_CANCELLED                 0x2U
#define FL_JOB_DMA_ERROR                 0x3U
#define FL_JOB_PT_ERROR                  0x4U
#define FL_JOB_INVALID                   0x5U
#define FL_JOB_UNBOUND                   0x6U
#define FL_JOB_ABORTED                   0x7U
#define FL_PTE_VALID                     0x1U
#define FL_PTE_READ                      0x2U
#define FL_PTE_WRITE                     0x4U
#define FL_PTE_ATOMIC                    0x8U
#define FL_PTE_LEAF                      0x80U
#define FL_PTE_ADDR_MASK                 0xffffffffff000ULL
#define FL_PT_LEVELS                     0x4U
#define FL_VA_BITS                       0x30U
#define FL_FAULT_SIZE                    0x20U
#define FL_FAULT_OFF_VA                  0x0U
#define FL_FAULT_OFF_TIMESTAMP           0x8U
#define FL_FAULT_OFF_CONTEXT             0x10U
#define FL_FAULT_OFF_LANE                0x12U
#define FL_FAULT_OFF_ENGINE              0x14U
#define FL_FAULT_OFF_ACCESS              0x15U
#define FL_FAULT_OFF_INFO                0x1cU
#define FL_FAULT_VALID                   0x80000000U
#define FL_FAULT_NOT_PRESENT             0x1U
#define FL_FAULT_PERMISSION              0x2U
#define FL_ACCESS_PREFETCH               0x0U
#define FL_ACCESS_READ                   0x1U
#define FL_ACCESS_WRITE                  0x2U
#define FL_ACCESS_ATOMIC                 0x3U
#define FL_STAT_COMMANDS                 0x0U
#define FL_STAT_JOBS                     0x1U
#define FL_STAT_FAULTS_READ              0x2U
#define FL_STAT_FAULTS_WRITE             0x3U
#define FL_STAT_FAULTS_ATOMIC            0x4U
#define FL_STAT_FAULTS_PREFETCH          0x5U
#define FL_STAT_FAULT_OVERFLOWS          0x6U
#define FL_STAT_REPLAYS                  0x7U
#define FL_STAT_CANCELS                  0x8U
#define FL_STAT_INVALIDATIONS            0x9U
#define FL_STAT_TLB_HITS                 0xaU
#define FL_STAT_TLB_MISSES               0xbU
#define FL_STAT_WALKS                    0xcU
#define FL_STAT_RING_HIGH_WATER          0xdU
#define FL_STAT_DUPLICATES               0xeU
#define FL_STAT_LAT_BASE                 0xfU
#define FL_STAT_LAT_BUCKETS              0x18U
#define FL_STAT_COUNT                    0x27U
#define FL_ERR_NONE                      0x0U
#define FL_ERR_CQ_CONFIG                 0x1U
#define FL_ERR_WB_CONFIG                 0x2U
#define FL_ERR_CQ_DMA                    0x3U
#define FL_ERR_BAD_OPCODE                0x4U
#define FL_ERR_BAD_TAIL                  0x5U
#define FL_ERR_FR_CONFIG                 0x6U
#define FL_ERR_BAD_ARG                   0x7U
#define FL_ERR_FENCE_DMA                 0x8U

/* Command queue entry (spec section 4). */
struct fl_cmd {
	__u8 opcode;
	__u8 flags;
	__u16 context;
	__u32 reserved;
	__u64 seq;
	__u64 args[6];
};

/* Job completion record (spec section 4). status is written last. */
struct fl_completion {
	__u64 seq;
	__u64 bytes;
	__u64 result;
	__u16 faults;
	__u16 replays;
	__u32 status;
};

/* Fault-ring entry (spec section 5). info is written last. */
struct fl_fault {
	__u64 va;
	__u64 timestamp;
	__u16 context;
	__u16 lane;
	__u8 engine;
	__u8 access;
	__u16 reserved0;
	__u32 reserved1;
	__u32 info;
};

/* Writeback block (spec section 3). */
struct fl_writeback {
	__u32 cq_head;
	__u32 fr_put;
	__u32 fr_overflows;
	__u32 error;
	__u64 completed;
	__u64 reserved[5];
};

FL_STATIC_ASSERT(sizeof(struct fl_cmd) == FL_CMD_SIZE);
FL_STATIC_ASSERT(offsetof(struct fl_cmd, opcode) == FL_CMD_OFF_OPCODE);
FL_STATIC_ASSERT(offsetof(struct fl_cmd, flags) == FL_CMD_OFF_FLAGS);
FL_STATIC_ASSERT(offsetof(struct fl_cmd, context) == FL_CMD_OFF_CONTEXT);
FL_STATIC_ASSERT(offsetof(struct fl_cmd, seq) == FL_CMD_OFF_SEQ);
FL_STATIC_ASSERT(offsetof(struct fl_cmd, args) == FL_CMD_OFF_ARGS);
FL_STATIC_ASSERT(sizeof(struct fl_completion) == FL_COMPL_SIZE);
FL_STATIC_ASSERT(offsetof(struct fl_completion, seq) == FL_COMPL_OFF_SEQ);
FL_STATIC_ASSERT(offsetof(struct fl_completion, bytes) == FL_COMPL_OFF_BYTES);
FL_STATIC_ASSERT(offsetof(struct fl_completion, result) == FL_COMPL_OFF_RESULT);
FL_STATIC_ASSERT(offsetof(struct fl_completion, faults) == FL_COMPL_OFF_FAULTS);
FL_STATIC_ASSERT(offsetof(struct fl_completion, replays) == FL_COMPL_OFF_REPLAYS);
FL_STATIC_ASSERT(offsetof(struct fl_completion, status) == FL_COMPL_OFF_STATUS);
FL_STATIC_ASSERT(sizeof(struct fl_fault) == FL_FAULT_SIZE);
FL_STATIC_ASSERT(offsetof(struct fl_fault, va) == FL_FAULT_OFF_VA);
FL_STATIC_ASSERT(offsetof(struct fl_fault, timestamp) == FL_FAULT_OFF_TIMESTAMP);
FL_STATIC_ASSERT(offsetof(struct fl_fault, context) == FL_FAULT_OFF_CONTEXT);
FL_STATIC_ASSERT(offsetof(struct fl_fault, lane) == FL_FAULT_OFF_LANE);
FL_STATIC_ASSERT(offsetof(struct fl_fault, engine) == FL_FAULT_OFF_ENGINE);
FL_STATIC_ASSERT(offsetof(struct fl_fault, access) == FL_FAULT_OFF_ACCESS);
FL_STATIC_ASSERT(offsetof(struct fl_fault, info) == FL_FAULT_OFF_INFO);
FL_STATIC_ASSERT(sizeof(struct fl_writeback) == FL_WB_SIZE);
FL_STATIC_ASSERT(offsetof(struct fl_writeback, cq_head) == FL_WB_CQ_HEAD);
FL_STATIC_ASSERT(offsetof(struct fl_writeback, fr_put) == FL_WB_FR_PUT);
FL_STATIC_ASSERT(offsetof(struct fl_writeback, fr_overflows) == FL_WB_FR_OVERFLOWS);
FL_STATIC_ASSERT(offsetof(struct fl_writeback, error) == FL_WB_ERROR);
FL_STATIC_ASSERT(offsetof(struct fl_writeback, completed) == FL_WB_COMPLETED);

#endif /* FAULTLINE_ABI_H */
