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

#endif /* FAULTLINE_UAPI_H */
