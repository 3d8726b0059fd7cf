/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * faultline guest driver: character-device interface (/dev/faultlineN).
 *
 * This is the driver's own interface to user space (the guest test and
 * benchmark programs); the device's interface is faultline_abi.h.
 *
 * Every structure is made of __u64 fields only, so its layout is the same for
 * 32-bit and 64-bit callers. Fields marked "in" are read by the driver,
 * "out" are written by it. Reserved fields must be zero on input; the driver
 * returns -EINVAL otherwise, so that they can be given a meaning later.
 *
 * Errors common to every ioctl: -ENODEV (device removed), -EIO (device reset
 * or in an error state; FL_IOC_RESET recovers), -ETIMEDOUT (the device did
 * not complete work within the driver's timeout_ms module parameter; the
 * kernel log says where the queue stood), -EINTR (a signal arrived while
 * waiting; work already queued still runs).
 */
#ifndef FAULTLINE_UAPI_H
#define FAULTLINE_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Not registered in ioctl-number.rst: a private device of a test project. */
#define FL_IOC_MAGIC 0xFA

/* fl_ioc_info.state */
#define FL_STATE_RUNNING	0	/* queue enabled, accepting work */
#define FL_STATE_RESETTING	1	/* re-initialisation (reset, FLR) in progress */
#define FL_STATE_FAILED		2	/* init failed or device error: FL_IOC_RESET */
#define FL_STATE_DEAD		3	/* removed */

/* FL_IOC_INFO: identity (read once at probe) and driver state. */
struct fl_ioc_info {
	__u64 id;		/* out: FL_REG_ID, FL_ID_MAGIC */
	__u64 version;		/* out: FL_REG_VERSION */
	__u64 features;		/* out: FL_REG_FEATURES */
	__u64 num_contexts;	/* out: FL_REG_NUM_CONTEXTS */
	__u64 num_engines;	/* out: FL_REG_NUM_ENGINES */
	__u64 num_lanes;	/* out: FL_REG_NUM_LANES */
	__u64 tlb_entries;	/* out: FL_REG_TLB_ENTRIES */
	__u64 cq_entries;	/* out: command-queue entries programmed */
	__u64 chunk_max;	/* out: most ring slots per completion fence */
	__u64 state;		/* out: FL_STATE_* */
	__u64 generation;	/* out: re-initialisations since probe */
	__u64 hw_error;		/* out: last FL_REG_ERROR the error handler saw */
	__u64 irq_queue;	/* out: FL_VEC_QUEUE interrupts since probe */
	__u64 irq_fault;	/* out: FL_VEC_FAULT interrupts since probe */
	__u64 irq_error;	/* out: FL_VEC_ERROR interrupts since probe */
	__u64 fence_done;	/* out: completion-fence slot value */
	__u64 pci_bdf;		/* out: domain << 16 | bus << 8 | devfn */
	__u64 commands;		/* out: commands written to the ring since probe */
	__u64 reserved[6];	/* in: zero */
};

/* fl_ioc_submit.flags */
#define FL_SUBMIT_F_IRQ		(1ULL << 0) /* completion fences raise FL_VEC_QUEUE; wait for it */
#define FL_SUBMIT_F_EXCLUSIVE	(1ULL << 1) /* other ioctls off the queue; exact delta checks */
/*
 * Fault injection: end the last chunk with one command of an opcode the
 * device does not know, before its completion fence. The device stops with
 * FL_ERR_BAD_OPCODE and raises FL_VEC_ERROR; the call fails with EIO and
 * every ioctl fails with EIO until FL_IOC_RESET.
 */
#define FL_SUBMIT_F_BAD_OPCODE	(1ULL << 2)

/* fl_ioc_submit.check_mask: checks the driver made, one bit per failed check. */
#define FL_CHECK_HEAD_LAG	 (1ULL << 0) /* wb head never reached a completed chunk's end */
#define FL_CHECK_HEAD_RANGE	 (1ULL << 1) /* wb head beyond the driver's tail */
#define FL_CHECK_ORDER		 (1ULL << 2) /* order slot went back, or below a done chunk's last */
#define FL_CHECK_FENCE_ORDER	 (1ULL << 3) /* completion-fence slot went backwards */
#define FL_CHECK_ORDER_FINAL	 (1ULL << 4) /* exclusive: order slot != last order fence at the end */
#define FL_CHECK_HEAD_DELTA	 (1ULL << 5) /* exclusive: wb head advanced by != commands */
#define FL_CHECK_COMPLETED_DELTA (1ULL << 6) /* exclusive: wb completed advanced by != commands */
#define FL_CHECK_COMPLETED_HEAD	 (1ULL << 7) /* exclusive: idle queue with (u32)completed != head */

/*
 * FL_IOC_SUBMIT: submit @count NOPs in chunks of at most @batch, each chunk
 * closed by a completion FENCE, keep up to two chunks in flight and wait for
 * all of them. With @fence_every, an "order" FENCE writing increasing values
 * to a second slot follows every @fence_every-th NOP. After each chunk the
 * driver checks, from guest memory only, that the writeback head passed the
 * chunk and stayed within the tail and that both fence slots only grew; with
 * FL_SUBMIT_F_EXCLUSIVE it also waits for an idle queue before and after and
 * checks that the writeback head and completed counters advanced exactly by
 * @commands. Failed checks are reported, not returned as errors.
 */
struct fl_ioc_submit {
	__u64 count;		/* in: NOPs to submit (at most 1 << 26) */
	__u64 flags;		/* in: FL_SUBMIT_F_* */
	__u64 batch;		/* in: most NOPs per chunk; 0 = as many as fit */
	__u64 fence_every;	/* in: an order FENCE after every N NOPs; 0 = none */
	__u64 completed;	/* out: NOPs in chunks whose completion fence was seen */
	__u64 commands;		/* out: commands written to the ring (NOPs and fences) */
	__u64 chunks;		/* out: completion fences written */
	__u64 order_fences;	/* out: order fences written */
	__u64 last_fence;	/* out: value of the last completion fence */
	__u64 last_order;	/* out: value of the last order fence */
	__u64 head_delta;	/* out: exclusive: wb head advance over the call */
	__u64 completed_delta;	/* out: exclusive: wb completed advance over the call */
	__u64 check_failures;	/* out: failed checks; 0 = in order, nothing lost */
	__u64 check_mask;	/* out: FL_CHECK_* of the failed checks */
	__u64 irqs;		/* out: FL_VEC_QUEUE interrupts during the call */
	__u64 elapsed_ns;	/* out: from the first submission to the last completion */
	__u64 reserved[4];	/* in: zero */
};

/* fl_ioc_fence.flags */
#define FL_FENCE_F_POLL		(1ULL << 0) /* no interrupt: poll the fence slot */

/*
 * FL_IOC_FENCE: one FENCE with FL_CMD_F_IRQ; returns once the FL_VEC_QUEUE
 * handler has seen its value (or, with FL_FENCE_F_POLL, once the waiter saw
 * the value written).
 */
struct fl_ioc_fence {
	__u64 flags;		/* in: FL_FENCE_F_* */
	__u64 value;		/* out: the value the FENCE carried */
	__u64 seen;		/* out: completion-fence slot read back afterwards */
	__u64 rtt_ns;		/* out: ktime_get_ns() before the doorbell to the waiter's wake-up */
	__u64 irq_ns;		/* out: same start to the FL_VEC_QUEUE handler; 0 if none */
	__u64 irqs;		/* out: FL_VEC_QUEUE interrupts taken during the call */
	__u64 irq_total;	/* out: FL_VEC_QUEUE interrupts since probe */
	__u64 reserved[4];	/* in: zero */
};

/* fl_ioc_reset.flags */
#define FL_RESET_F_INFLIGHT	(1ULL << 0) /* queue @inflight NOPs + a fence, reset without waiting */
/*
 * With FL_RESET_F_INFLIGHT: write the batch into the ring but do not ring the
 * doorbell, so that the device cannot consume any of it before the reset (a
 * fast device otherwise often finishes the batch first). The batch then
 * always fails with EIO, unless another user rings the doorbell meanwhile.
 */
#define FL_RESET_F_HOLD		(1ULL << 1)

/*
 * FL_IOC_RESET: reset the device (FL_CTRL_RESET) whatever is in flight, fail
 * every outstanding submission of every user with -EIO, re-initialise. Also
 * the way out of FL_STATE_FAILED.
 */
struct fl_ioc_reset {
	__u64 flags;		/* in: FL_RESET_F_* */
	__u64 inflight;		/* in: NOPs for FL_RESET_F_INFLIGHT, 1 .. chunk_max - 1 */
	__u64 failed;		/* out: submissions (of all users) failed by this reset */
	__u64 head_at_reset;	/* out: wb head once the device had stopped */
	__u64 inflight_done;	/* out: of the FL_RESET_F_INFLIGHT commands, how many were consumed */
	__u64 inflight_errno;	/* out: 0 if that batch completed before the reset, else EIO */
	__u64 generation;	/* out: generation after re-initialisation */
	__u64 elapsed_ns;	/* out: time the reset and re-initialisation took */
	__u64 reserved[4];	/* in: zero */
};

#define FL_IOC_STATS_MAX 64

/* FL_IOC_STATS: the device's FL_OP_STATS counter block (index FL_STAT_*). */
struct fl_ioc_stats {
	__u64 count;		/* out: valid entries in values[] (FL_STAT_COUNT) */
	__u64 reserved;		/* in: zero */
	__u64 values[FL_IOC_STATS_MAX]; /* out */
};

#define FL_IOC_INFO	_IOWR(FL_IOC_MAGIC, 0x00, struct fl_ioc_info)
#define FL_IOC_SUBMIT	_IOWR(FL_IOC_MAGIC, 0x01, struct fl_ioc_submit)
#define FL_IOC_FENCE	_IOWR(FL_IOC_MAGIC, 0x02, struct fl_ioc_fence)
#define FL_IOC_RESET	_IOWR(FL_IOC_MAGIC, 0x03, struct fl_ioc_reset)
#define FL_IOC_STATS	_IOWR(FL_IOC_MAGIC, 0x04, struct fl_ioc_stats)

/*
 * ---------------------------------------------------------------------------
 * Shared virtual memory: the device mirrors the calling process's address
 * space (HMM). One device context per open file, bound to the mm of the
 * process that called FL_IOC_BIND (or the first FL_IOC_JOB). Jobs use that
 * process's virtual addresses; the device faults and the driver services the
 * faults with hmm_range_fault(). Calls from another mm get -EINVAL.
 */

/* FL_IOC_BIND: bind this file to the caller's address space (idempotent). */
struct fl_ioc_bind {
	__u64 context;		/* out: device context id */
	__u64 generation;	/* out: device generation the binding was made in */
	__u64 reserved[4];	/* in: zero */
};

/* fl_ioc_job.op */
#define FL_JOBOP_FILL		1	/* dst[0..len) = low byte of value */
#define FL_JOBOP_COPY		2	/* dst[0..len) = src[0..len) */
#define FL_JOBOP_CHECKSUM	3	/* result = FNV-1a 64 of src[0..len) */
#define FL_JOBOP_ATOMIC_ADD	4	/* each u64 of dst += value; result = words */

/* fl_ioc_job.pattern: chunk order among lanes (FL_PAT_* of the device) */
#define FL_JOBPAT_SEQ		0
#define FL_JOBPAT_STRIDED	1
#define FL_JOBPAT_RANDOM	2

#define FL_JOB_ENGINE_ANY	0xff

/* fl_ioc_job.status (device FL_JOB_* values) */
#define FL_JOBST_OK		1
#define FL_JOBST_CANCELLED	2	/* a fault could not be serviced (errno EFAULT/EPERM) */
#define FL_JOBST_DMA_ERROR	3
#define FL_JOBST_PT_ERROR	4
#define FL_JOBST_INVALID	5
#define FL_JOBST_UNBOUND	6	/* context unbound (device reset): EIO */
#define FL_JOBST_ABORTED	7	/* device reset: EIO */

/*
 * FL_IOC_JOB: run one device job on the caller's virtual addresses and wait
 * for it (interruptible; bounded by the job_timeout_ms module parameter, after
 * which the context's stalled jobs are cancelled and -ETIMEDOUT returned).
 * Returns 0 for FL_JOBST_OK; -EFAULT if a fault was cancelled because the
 * address is not mapped or not accessible (PROT_NONE); -EPERM if a write or
 * atomic fault hit a mapping without write permission; -EIO if the job was
 * aborted by a reset; -EINVAL for bad arguments. The out fields are written in
 * every case where the job ran.
 */
struct fl_ioc_job {
	__u64 op;		/* in: FL_JOBOP_* */
	__u64 src;		/* in: source VA (COPY, CHECKSUM) */
	__u64 dst;		/* in: destination VA (FILL, COPY, ATOMIC_ADD) */
	__u64 len;		/* in: bytes (ATOMIC_ADD: multiple of 8, dst 8-aligned) */
	__u64 value;		/* in: FILL byte / ATOMIC_ADD addend */
	__u64 pattern;		/* in: FL_JOBPAT_* */
	__u64 engine;		/* in: engine index, or FL_JOB_ENGINE_ANY */
	__u64 lanes;		/* in: lanes to use, 0 = all of the engine's */
	__u64 chunk;		/* in: chunk bytes, 0 = 4096 */
	__u64 flags;		/* in: zero (reserved for FL_JOB_F_*) */
	__u64 status;		/* out: FL_JOBST_* */
	__u64 bytes;		/* out: bytes processed */
	__u64 result;		/* out: checksum / words */
	__u64 faults;		/* out: faults the job took (device count, saturating 16 bit) */
	__u64 replays;		/* out: replays the job waited for (saturating 16 bit) */
	__u64 elapsed_ns;	/* out: doorbell to completion seen by the waiter */
	__u64 context;		/* out: device context */
	__u64 reserved[5];	/* in: zero */
};

/*
 * FL_IOC_FAULT_STATS: the driver's fault-servicing counters for this device
 * (since probe; all processes). Snapshot before and after to get deltas.
 */
struct fl_ioc_fault_stats {
	__u64 faults;		/* fault-ring entries consumed */
	__u64 batches;		/* batches serviced (each ends with REPLAY) */
	__u64 duplicates;	/* entries merged into another of the batch, or already mapped */
	__u64 windows;		/* hmm_range_fault windows */
	__u64 retries;		/* window retries (-EBUSY or an invalidation collided) */
	__u64 retry_timeouts;	/* always 0: windows are never given up (escalations instead) */
	__u64 cancels;		/* CANCEL commands issued */
	__u64 invalidations;	/* INVALIDATE(_ALL) commands issued (notifier + upgrades) */
	__u64 replays;		/* REPLAY commands issued */
	__u64 overflows;	/* fault-ring overflows seen in the writeback block */
	__u64 pages_mapped;	/* 4 KiB device PTEs written */
	__u64 huge_mapped;	/* 2 MiB device PTEs written */
	__u64 upgrades;		/* valid PTEs changed (permission upgrades) */
	__u64 notifier_calls;	/* mmu_interval_notifier invalidate callbacks */
	__u64 notifier_clears;	/* of those, callbacks that cleared device PTEs */
	__u64 notifier_busy;	/* non-blockable callbacks refused */
	__u64 worker_runs;	/* fault work-item runs */
	__u64 irqs;		/* FL_VEC_FAULT interrupts */
	__u64 stale;		/* entries for contexts no longer bound (ignored) */
	__u64 contexts;		/* contexts bound now */
	__u64 escalations;	/* windows serviced under mmap_write_lock after collisions */
	__u64 deferrals;	/* records deferred: their page is in backoff */
	__u64 transient_cancels;	/* faults cancelled after repeated transient failures */
	__u64 cancels_dropped;	/* cancels that no longer held when re-checked */
	__u64 prefetch_blocks;	/* windows populated after the replay */
	__u64 prefetch_pages;	/* pages those populations faulted in */
	__u64 blocks;		/* 2 MiB block notifiers inserted */
	__u64 job_timeouts;	/* job_timeout_ms reports (jobs are never cancelled for time) */
	__u64 begin_wait_ns;	/* time in mmu_interval_read_begin() */
	__u64 ctx_passes;	/* per-context servicing passes */
	__u64 reserved[2];
};

/* fl_ioc_snapshot bytes, one per 4 KiB page: the device PTE now */
#define FL_SNAP_VALID	(1 << 0)
#define FL_SNAP_READ	(1 << 1)
#define FL_SNAP_WRITE	(1 << 2)
#define FL_SNAP_ATOMIC	(1 << 3)
#define FL_SNAP_HUGE	(1 << 4)	/* mapped by a 2 MiB device PTE */

/* FL_IOC_SNAPSHOT: this file's device page table for [addr, addr + npages * 4096). */
struct fl_ioc_snapshot {
	__u64 addr;		/* in: page-aligned VA */
	__u64 npages;		/* in: pages (at most 1 << 20) */
	__u64 ptr;		/* in: user buffer of npages bytes (FL_SNAP_*) */
	__u64 valid;		/* out: pages with a valid device PTE */
	__u64 huge;		/* out: of those, mapped by 2 MiB PTEs */
	__u64 reserved[3];	/* in: zero */
};

#define FL_IOC_BIND		_IOWR(FL_IOC_MAGIC, 0x05, struct fl_ioc_bind)
#define FL_IOC_JOB		_IOWR(FL_IOC_MAGIC, 0x06, struct fl_ioc_job)
#define FL_IOC_FAULT_STATS	_IOWR(FL_IOC_MAGIC, 0x07, struct fl_ioc_fault_stats)
#define FL_IOC_SNAPSHOT		_IOWR(FL_IOC_MAGIC, 0x08, struct fl_ioc_snapshot)

#endif /* FAULTLINE_UAPI_H */
