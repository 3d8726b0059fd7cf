// SPDX-License-Identifier: GPL-2.0
/*
 * faultline: guest driver for the faultline GPU-like PCI device.
 *
 * The device is described in docs/device-spec.md; its registers, commands and
 * structures come from faultline_abi.h. The driver owns, per device, a command
 * queue and an auxiliary page (writeback block, fence slots, STATS buffer) in
 * DMA-coherent memory, three MSI-X vectors, and a misc character device
 * /dev/faultlineN whose ioctls (faultline_uapi.h) the guest tests use.
 *
 * Hot paths never read BAR0 (a read is a 40-75 us round trip to the server
 * under TCG): submission writes ring entries and one posted doorbell;
 * completion is read from the writeback block and the fence slots in guest
 * memory. Registers are read only at probe, on (re-)initialisation and when
 * the error interrupt is explained.
 *
 * Completion. Every submission (fl_submit()) is one chunk of at most
 * chunk_max ring slots (half the ring, at most FL_CHUNK_LIMIT) closed by a
 * completion FENCE writing the next value of a per-device counter to fence
 * slot FL_SLOT_DONE. Commands execute in order, so that slot only grows and a
 * request is complete once the slot reaches its fence value. A waiter asking
 * for an interrupt waits until the FL_VEC_QUEUE handler has seen its value
 * (fl->irq_fence); others poll the slot.
 *
 * Queue full. A submitter that finds too little room sleeps until the
 * writeback head advances. A completion fence carries FL_CMD_F_IRQ when asked
 * to, and always when the ring is at least half full after the chunk. A
 * waiter needs at most half the ring, so it waits only while more than half
 * is in use; then the latest chunk was written with the ring more than half
 * full and raises an interrupt when it completes, at which point the ring is
 * empty. So a full queue always ends in an interrupt that wakes the waiter.
 * The waiter also re-checks every millisecond, which covers a lost interrupt.
 *
 * Reset (FL_IOC_RESET, PCI FLR, error recovery): stop submissions, reset the
 * device and make sure the server has processed the reset (a register read
 * follows every earlier posted write), then settle every outstanding request:
 * complete if its fence value had been written, else -EIO. Then program the
 * device again; the ring restarts at index 0, the fence counters carry on.
 *
 * Room for the MMU part: the fault vector has its handler (it only counts
 * now); a fault-ring worker and the HMM mirror (mmu_interval_notifier
 * invalidate -> INVALIDATE + FENCE through fl_submit()/fl_wait_request())
 * plug in beside the queue code and use the same reset path.
 *
 * Locking, outermost first (each lock's rules are also written beside it in
 * struct fl_dev):
 *   device_lock (PCI core: probe, remove, FLR) or io_rwsem (ioctls)
 *     -> excl_rwsem (queue users among the ioctls)
 *       -> reset_mutex | stats_mutex (never nested with each other)
 *         -> sq_lock (spinlock, never taken in hard-IRQ context)
 * The interrupt handlers take no lock: they use atomics, WRITE_ONCE and the
 * wait queue; the error handler's thread takes reset_mutex only.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "faultline_abi.h"
#include "faultline_uapi.h"

#ifndef __LITTLE_ENDIAN
#error "the device's structures are little-endian and used as native here"
#endif

static unsigned int cq_entries = 1024;
module_param(cq_entries, uint, 0444);
MODULE_PARM_DESC(cq_entries, "command-queue entries per device (power of two, 4..65536; default 1024)");

static unsigned int timeout_ms = 5000;
module_param(timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms, "longest wait for the device, in ms (default 5000)");

/* Layout of the auxiliary DMA page. */
#define FL_AUX_SIZE		SZ_4K
#define FL_AUX_WB		0x000	/* writeback block, FL_WB_SIZE bytes */
#define FL_AUX_FENCES		0x040	/* fence slots, u64 each */
#define FL_NR_FENCE_SLOTS	8
#define FL_AUX_STATS		0x800	/* FL_OP_STATS buffer */
#define FL_STATS_BYTES		(FL_STAT_COUNT * sizeof(u64))

#define FL_SLOT_DONE		0	/* completion fences of fl_submit() */
#define FL_SLOT_ORDER		1	/* order fences of FL_IOC_SUBMIT */

#define FL_CQ_MIN_DRIVER	4	/* chunk_max >= 2: one command and its fence */
#define FL_CHUNK_LIMIT		512	/* ring slots per chunk */
#define FL_POLL_NS		(50 * NSEC_PER_USEC)	/* fence polling without interrupt */
#define FL_SPACE_POLL_NS	NSEC_PER_MSEC		/* queue-full re-check */
#define FL_WB_SETTLE_MS		100	/* writeback catching up with a seen fence */
#define FL_SUBMIT_MAX		BIT_ULL(26)
#define FL_OP_INVALID		0xff	/* no FL_OP_* has this value */

/* fl_submit() flags */
#define FLS_IRQ			BIT(0)	/* completion fence interrupts; wait for it */
#define FLS_ORDER		BIT(1)	/* number FENCEs aimed at FL_SLOT_ORDER */
#define FLS_HOLD		BIT(2)	/* no doorbell: the next submission's rings it */

/* fl_dev.flags bits (atomic bitops, set from any context) */
enum {
	FL_FLAG_ERROR,		/* device reported FL_STATUS_ERROR; cleared by reset */
	FL_FLAG_DEAD,		/* being removed; never cleared */
};

/* One chunk in the ring, owned by its submitter (usually on its stack). */
struct fl_request {
	struct list_head node;	/* on fl->inflight while status is -EINPROGRESS */
	u64 fence;		/* value of the completion fence */
	u64 last_order;		/* value of the last order fence in the chunk, or 0 */
	u64 generation;		/* fl->generation at submission */
	u32 first;		/* ring index of the first command */
	u32 end;		/* ring index one past the completion fence */
	bool wait_irq;		/* wait for FL_VEC_QUEUE, not by polling */
	int status;		/* -EINPROGRESS, 0 or -errno; written under sq_lock */
};

struct fl_dev {
	struct pci_dev *pdev;		/* reference held until the last put */
	struct kref ref;		/* probe + one per open file */
	void __iomem *regs;		/* BAR0; valid until remove() returns */
	int index;			/* N of /dev/faultlineN */
	char name[24];
	char irq_name[FL_MSIX_VECTORS][32];
	struct miscdevice misc;

	/* Identity, read once at probe. */
	u32 hw_id, hw_version, hw_features;
	u32 num_contexts, num_engines, num_lanes, tlb_entries;

	/* DMA memory, allocated at probe, freed in remove() after the reset. */
	struct fl_cmd *cq;
	dma_addr_t cq_dma;
	u32 cq_entries;
	u32 chunk_max;
	void *aux;
	dma_addr_t aux_dma;
	struct fl_writeback *wb;	/* device writes, driver reads */
	u64 *fences;			/* device writes, driver reads */
	u64 *stats;			/* device writes; stats_mutex */

	/*
	 * io_rwsem: every ioctl holds it for reading from start to end and
	 * checks FL_FLAG_DEAD first; remove() sets FL_FLAG_DEAD, wakes the
	 * waiters and takes it for writing, so BAR0 and the DMA memory outlive
	 * every ioctl that might touch them.
	 */
	struct rw_semaphore io_rwsem;
	/*
	 * excl_rwsem: the ioctls that use the queue hold it for reading;
	 * FL_IOC_SUBMIT with FL_SUBMIT_F_EXCLUSIVE holds it for writing, so
	 * that nothing else of user space moves the writeback counters while it
	 * checks them. FL_IOC_RESET does not take it.
	 */
	struct rw_semaphore excl_rwsem;
	/*
	 * reset_mutex: serialises (re-)initialisation: probe's, FL_IOC_RESET,
	 * reset_prepare .. reset_done (held across the FLR in between, both run
	 * in the same task under device_lock), shutdown, and the error thread's
	 * register reads. Sleeps (register reads) inside.
	 */
	struct mutex reset_mutex;
	/* stats_mutex: owns the STATS buffer for one FL_IOC_STATS at a time. */
	struct mutex stats_mutex;
	/*
	 * sq_lock: protects the fields below up to the wait queue: the ring
	 * slots from tail on, tail and the doorbell (written in tail order),
	 * the counters, the in-flight list and every listed request's status,
	 * state and generation. Lockless readers use READ_ONCE on tail, state,
	 * generation and request status (written with WRITE_ONCE). Never taken
	 * in hard-IRQ context; nothing sleeps under it.
	 */
	spinlock_t sq_lock;
	u32 tail;			/* free-running index of the next slot */
	u64 cmd_seq;			/* seq of the next command */
	u64 fence_seq;			/* last completion-fence value handed out */
	u64 order_seq;			/* last order-fence value handed out */
	u64 commands;			/* commands written since probe */
	struct list_head inflight;	/* requests, oldest first */
	int state;			/* FL_STATE_RUNNING/RESETTING/FAILED */
	u64 generation;			/* completed quiesces since probe */

	/* Sleepers: request and space waiters; woken by IRQs and resets. */
	wait_queue_head_t wq;
	unsigned long flags;		/* FL_FLAG_* */

	/* Written by the interrupt handlers only (lockless, READ_ONCE). */
	u64 irq_fence;			/* highest FL_SLOT_DONE value a queue IRQ saw */
	u64 irq_fence_ns;		/* ktime_get_ns() when irq_fence last grew */
	u32 hw_error;			/* FL_REG_ERROR explained by the error thread */
	atomic64_t irqs[FL_MSIX_VECTORS];
};

static DEFINE_IDA(fl_ida);

static struct device *fl_device(struct fl_dev *fl)
{
	return &fl->pdev->dev;
}

static dma_addr_t fl_fence_dma(struct fl_dev *fl, unsigned int slot)
{
	return fl->aux_dma + FL_AUX_FENCES + slot * sizeof(u64);
}

static u64 fl_fence_read(struct fl_dev *fl, unsigned int slot)
{
	return READ_ONCE(fl->fences[slot]);
}

static u32 fl_wb_head(struct fl_dev *fl)
{
	return READ_ONCE(fl->wb->cq_head);
}

static const char *fl_err_name(u32 code)
{
	static const char * const names[] = {
		[FL_ERR_NONE] = "none",
		[FL_ERR_CQ_CONFIG] = "queue config",
		[FL_ERR_WB_CONFIG] = "writeback config",
		[FL_ERR_CQ_DMA] = "command read",
		[FL_ERR_BAD_OPCODE] = "bad opcode",
		[FL_ERR_BAD_TAIL] = "bad tail",
		[FL_ERR_FR_CONFIG] = "fault-ring config",
		[FL_ERR_BAD_ARG] = "bad argument",
		[FL_ERR_FENCE_DMA] = "fence address",
	};

	return code < ARRAY_SIZE(names) && names[code] ? names[code] : "unknown";
}

static bool fl_broken(struct fl_dev *fl)
{
	return test_bit(FL_FLAG_ERROR, &fl->flags) ||
	       test_bit(FL_FLAG_DEAD, &fl->flags);
}

/* 0 if work may be queued now. */
static int fl_usable(struct fl_dev *fl)
{
	if (test_bit(FL_FLAG_DEAD, &fl->flags))
		return -ENODEV;
	if (test_bit(FL_FLAG_ERROR, &fl->flags) ||
	    READ_ONCE(fl->state) != FL_STATE_RUNNING)
		return -EIO;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Waiting */

/*
 * Sleep on fl->wq until @cond(@fl, @arg) holds, for at most timeout_ms,
 * re-evaluating it at least every @poll_ns (0: only when woken).
 * Returns 0, -EINTR or -ETIMEDOUT.
 */
static int fl_wait_cond(struct fl_dev *fl,
			bool (*cond)(struct fl_dev *fl, const void *arg),
			const void *arg, u64 poll_ns)
{
	ktime_t deadline = ktime_add_ms(ktime_get(), READ_ONCE(timeout_ms));

	for (;;) {
		s64 left = ktime_to_ns(ktime_sub(deadline, ktime_get()));
		long ret;

		if (cond(fl, arg))
			return 0;
		if (left <= 0)
			return -ETIMEDOUT;
		if (poll_ns && left > poll_ns)
			left = poll_ns;
		ret = wait_event_interruptible_hrtimeout(fl->wq, cond(fl, arg),
							 ns_to_ktime(left));
		if (ret == -ERESTARTSYS)
			return -EINTR;
		if (!ret)
			return 0;
	}
}

static bool fl_request_ready(struct fl_dev *fl, const void *arg)
{
	const struct fl_request *req = arg;
	u64 seen = req->wait_irq ? READ_ONCE(fl->irq_fence) :
				   fl_fence_read(fl, FL_SLOT_DONE);

	return READ_ONCE(req->status) != -EINPROGRESS || seen >= req->fence ||
	       fl_broken(fl);
}

static void fl_report_timeout(struct fl_dev *fl, const struct fl_request *req,
			      const char *what)
{
	u64 slot = fl_fence_read(fl, FL_SLOT_DONE);

	dma_rmb();	/* the block after the slot: as fresh as the slot */
	dev_err(fl_device(fl),
		"%s: fence %llu not %s after %u ms: wb head %u completed %llu error %u (%s), tail %u, ring [%u, %u), fence slot %llu, irq fence %llu\n",
		fl->name, req->fence, req->wait_irq ? "signalled" : "written",
		READ_ONCE(timeout_ms), fl_wb_head(fl),
		READ_ONCE(fl->wb->completed), READ_ONCE(fl->wb->error),
		fl_err_name(READ_ONCE(fl->wb->error)), READ_ONCE(fl->tail),
		req->first, req->end, slot, READ_ONCE(fl->irq_fence));
	if (req->wait_irq && slot >= req->fence)
		dev_err(fl_device(fl), "%s: %s: the fence was written but its interrupt never arrived\n",
			fl->name, what);
}

/*
 * Wait for a request queued by fl_submit() and take it off the in-flight
 * list. Returns 0 when its completion fence was seen (signalled, for
 * interrupt waiters), -EIO when a reset or a device error came first,
 * -ENODEV on removal, -ETIMEDOUT or -EINTR. Must be called for every request
 * that fl_submit() accepted before the request's memory goes away.
 */
static int fl_wait_request(struct fl_dev *fl, struct fl_request *req)
{
	int err = fl_wait_cond(fl, fl_request_ready, req,
			       req->wait_irq ? 0 : FL_POLL_NS);
	int status;

	spin_lock(&fl->sq_lock);
	if (req->status == -EINPROGRESS) {
		u64 slot = fl_fence_read(fl, FL_SLOT_DONE);
		u64 seen = req->wait_irq ? READ_ONCE(fl->irq_fence) : slot;

		if (seen >= req->fence)
			status = 0;
		else if (test_bit(FL_FLAG_DEAD, &fl->flags))
			status = -ENODEV;
		else if (test_bit(FL_FLAG_ERROR, &fl->flags))
			status = slot >= req->fence ? 0 : -EIO;
		else
			status = err ?: -EIO;
		list_del_init(&req->node);
		WRITE_ONCE(req->status, status);
	}
	status = req->status;
	spin_unlock(&fl->sq_lock);

	if (status == -ETIMEDOUT)
		fl_report_timeout(fl, req, "request");
	return status;
}

/* ---------------------------------------------------------------------- */
/* Submission */

struct fl_space {
	u32 need;
};

static bool fl_space_ready(struct fl_dev *fl, const void *arg)
{
	const struct fl_space *sp = arg;
	u32 used = READ_ONCE(fl->tail) - fl_wb_head(fl);

	return fl_usable(fl) || used > fl->cq_entries ||
	       fl->cq_entries - used >= sp->need;
}

/*
 * Queue @n commands and a completion FENCE as one chunk, ring the doorbell
 * and put @req on the in-flight list. The caller then must call
 * fl_wait_request(). @n + 1 must not exceed chunk_max. The commands' seq is
 * assigned here; so are the values of FENCEs aimed at FL_SLOT_ORDER when
 * FLS_ORDER is given. Sleeps while the ring is full.
 */
static int fl_submit(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n,
		     unsigned int flags, struct fl_request *req)
{
	const dma_addr_t order_dma = fl_fence_dma(fl, FL_SLOT_ORDER);
	const u32 mask = fl->cq_entries - 1;
	struct fl_space sp = { .need = n + 1 };
	struct fl_cmd *c;
	u32 used, idx, i;
	bool irq;
	int err;

	if (sp.need > fl->chunk_max)
		return -E2BIG;

	spin_lock(&fl->sq_lock);
	for (;;) {
		err = fl_usable(fl);
		if (err)
			goto out_unlock;
		used = fl->tail - fl_wb_head(fl);
		if (used > fl->cq_entries) {
			dev_err_ratelimited(fl_device(fl), "%s: writeback head %u is outside the ring (tail %u)\n",
					    fl->name, fl_wb_head(fl), fl->tail);
			err = -EIO;
			goto out_unlock;
		}
		if (fl->cq_entries - used >= sp.need)
			break;
		spin_unlock(&fl->sq_lock);
		err = fl_wait_cond(fl, fl_space_ready, &sp, FL_SPACE_POLL_NS);
		if (err == -ETIMEDOUT)
			dev_err(fl_device(fl), "%s: queue full for %u ms: wb head %u, tail %u, wb error %u\n",
				fl->name, READ_ONCE(timeout_ms), fl_wb_head(fl),
				READ_ONCE(fl->tail), READ_ONCE(fl->wb->error));
		if (err)
			return err;
		spin_lock(&fl->sq_lock);
	}

	req->last_order = 0;
	idx = fl->tail;
	for (i = 0; i < n; i++, idx++) {
		c = &fl->cq[idx & mask];
		*c = cmds[i];
		c->reserved = 0;
		c->seq = fl->cmd_seq++;
		if ((flags & FLS_ORDER) && c->opcode == FL_OP_FENCE &&
		    c->args[0] == order_dma) {
			c->args[1] = ++fl->order_seq;
			req->last_order = fl->order_seq;
		}
	}
	/* See "Queue full" at the top: this keeps a full ring from stalling. */
	irq = (flags & FLS_IRQ) || used + sp.need >= fl->cq_entries / 2;
	c = &fl->cq[idx & mask];
	*c = (struct fl_cmd) {
		.opcode = FL_OP_FENCE,
		.flags = irq ? FL_CMD_F_IRQ : 0,
		.seq = fl->cmd_seq++,
		.args = { fl_fence_dma(fl, FL_SLOT_DONE), ++fl->fence_seq },
	};
	idx++;

	req->fence = fl->fence_seq;
	req->generation = fl->generation;
	req->first = fl->tail;
	req->end = idx;
	req->wait_irq = flags & FLS_IRQ;
	req->status = -EINPROGRESS;
	list_add_tail(&req->node, &fl->inflight);
	fl->commands += sp.need;

	/*
	 * The entries must be visible to the device before it can see the new
	 * tail. writel() orders earlier memory writes before the MMIO write on
	 * every architecture; the barrier says so explicitly.
	 */
	dma_wmb();
	WRITE_ONCE(fl->tail, idx);
	if (!(flags & FLS_HOLD))
		writel(idx, fl->regs + FL_REG_CQ_TAIL);
out_unlock:
	spin_unlock(&fl->sq_lock);
	return err;
}

/* ---------------------------------------------------------------------- */
/* Device initialisation and reset */

static void fl_write_addr(struct fl_dev *fl, u32 reg_lo, dma_addr_t addr)
{
	writel(lower_32_bits(addr), fl->regs + reg_lo);
	writel(upper_32_bits(addr), fl->regs + reg_lo + 4);
}

/*
 * Reset the device and wait until the server has processed the reset: the
 * read is answered after every earlier (posted) write, so afterwards the
 * device neither consumes commands nor writes fences or the writeback block.
 */
static u32 fl_hw_reset(struct fl_dev *fl)
{
	writel(FL_CTRL_RESET, fl->regs + FL_REG_CONTROL);
	return readl(fl->regs + FL_REG_STATUS);
}

static void fl_set_state(struct fl_dev *fl, int state)
{
	spin_lock(&fl->sq_lock);
	WRITE_ONCE(fl->state, state);
	spin_unlock(&fl->sq_lock);
	wake_up_all(&fl->wq);
}

/*
 * Program a stopped device: reset, writeback block, queue base and size,
 * enable the queue, enable the device, check STATUS once.
 */
static int fl_hw_init(struct fl_dev *fl)
{
	const u32 want = FL_STATUS_ENABLED | FL_STATUS_QUEUE_RUNNING;
	u32 status;

	lockdep_assert_held(&fl->reset_mutex);

	fl_hw_reset(fl);
	memset(fl->cq, 0, (size_t)fl->cq_entries * FL_CMD_SIZE);
	memset(fl->wb, 0, FL_WB_SIZE);
	spin_lock(&fl->sq_lock);
	WRITE_ONCE(fl->tail, 0);
	spin_unlock(&fl->sq_lock);

	fl_write_addr(fl, FL_REG_WB_LO, fl->aux_dma + FL_AUX_WB);
	fl_write_addr(fl, FL_REG_CQ_BASE_LO, fl->cq_dma);
	writel(fl->cq_entries, fl->regs + FL_REG_CQ_SIZE);
	writel(FL_CQ_CTRL_ENABLE, fl->regs + FL_REG_CQ_CONTROL);
	writel(FL_CTRL_ENABLE, fl->regs + FL_REG_CONTROL);

	status = readl(fl->regs + FL_REG_STATUS);
	if ((status & (want | FL_STATUS_ERROR)) != want) {
		u32 code = readl(fl->regs + FL_REG_ERROR);

		dev_err(fl_device(fl), "%s: initialisation failed: status %#x, error %u (%s)\n",
			fl->name, status, code, fl_err_name(code));
		fl_set_state(fl, FL_STATE_FAILED);
		return -EIO;
	}
	fl_set_state(fl, FL_STATE_RUNNING);
	return 0;
}

/*
 * Stop the device and settle every request in flight: complete if its
 * completion fence had been written before the device stopped, else -EIO.
 * Leaves the device reset and the driver in FL_STATE_RESETTING.
 */
static unsigned int fl_quiesce(struct fl_dev *fl, u32 *head_at_reset)
{
	struct fl_request *req, *tmp;
	unsigned int failed = 0;
	u64 done;
	u32 head;

	lockdep_assert_held(&fl->reset_mutex);

	fl_set_state(fl, FL_STATE_RESETTING);	/* no new submissions */
	fl_hw_reset(fl);
	dma_rmb();	/* read what the device wrote before the reset */
	head = fl_wb_head(fl);
	if (head_at_reset)
		*head_at_reset = head;

	spin_lock(&fl->sq_lock);
	done = fl_fence_read(fl, FL_SLOT_DONE);
	list_for_each_entry_safe(req, tmp, &fl->inflight, node) {
		list_del_init(&req->node);
		if (req->fence <= done) {
			WRITE_ONCE(req->status, 0);
		} else {
			WRITE_ONCE(req->status, -EIO);
			failed++;
		}
	}
	WRITE_ONCE(fl->generation, fl->generation + 1);
	clear_bit(FL_FLAG_ERROR, &fl->flags);
	spin_unlock(&fl->sq_lock);
	wake_up_all(&fl->wq);

	if (failed)
		dev_info(fl_device(fl), "%s: device reset: %u submission(s) failed (wb head %u, tail %u)\n",
			 fl->name, failed, head, READ_ONCE(fl->tail));
	return failed;
}

struct fl_reset_report {
	unsigned int failed;
	u32 head;
};

static int fl_reset(struct fl_dev *fl, struct fl_reset_report *rep)
{
	int ret;

	mutex_lock(&fl->reset_mutex);
	if (test_bit(FL_FLAG_DEAD, &fl->flags)) {
		ret = -ENODEV;
	} else {
		rep->failed = fl_quiesce(fl, &rep->head);
		ret = fl_hw_init(fl);
	}
	mutex_unlock(&fl->reset_mutex);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* Interrupts */

static irqreturn_t fl_irq_queue(int irq, void *data)
{
	struct fl_dev *fl = data;
	u64 v = fl_fence_read(fl, FL_SLOT_DONE);

	/* One instance per vector at a time: the only writer of irq_fence. */
	if (v > fl->irq_fence) {
		WRITE_ONCE(fl->irq_fence_ns, ktime_get_ns());
		WRITE_ONCE(fl->irq_fence, v);
	}
	atomic64_inc(&fl->irqs[FL_VEC_QUEUE]);
	wake_up_all(&fl->wq);
	return IRQ_HANDLED;
}

static irqreturn_t fl_irq_fault(int irq, void *data)
{
	struct fl_dev *fl = data;

	/*
	 * The fault ring is not set up yet, so the device should never raise
	 * this. The fault-ring worker (drain, service through HMM, REPLAY,
	 * write FL_REG_FR_GET to re-arm) will be scheduled from here.
	 */
	atomic64_inc(&fl->irqs[FL_VEC_FAULT]);
	dev_dbg_ratelimited(fl_device(fl), "%s: fault interrupt\n", fl->name);
	return IRQ_HANDLED;
}

static irqreturn_t fl_irq_error(int irq, void *data)
{
	struct fl_dev *fl = data;

	atomic64_inc(&fl->irqs[FL_VEC_ERROR]);
	return IRQ_WAKE_THREAD;
}

/*
 * Handle an error interrupt in the thread, under reset_mutex: the writeback
 * block is only cleared under that mutex, so an error raised before a reset
 * is never pinned on the re-initialised device. The device copies
 * FL_REG_ERROR to FL_WB_ERROR before it raises the vector; only when the
 * writeback block itself is unusable (FL_ERR_WB_CONFIG) does that copy stay
 * 0, and then STATUS decides. Failing the device first, logging after (the
 * log's register reads are slow).
 */
static irqreturn_t fl_irq_error_thread(int irq, void *data)
{
	struct fl_dev *fl = data;
	u32 code, status, info;

	mutex_lock(&fl->reset_mutex);
	code = READ_ONCE(fl->wb->error);
	if (code == FL_ERR_NONE) {
		status = readl(fl->regs + FL_REG_STATUS);
		if (status != U32_MAX && !(status & FL_STATUS_ERROR)) {
			dev_warn_ratelimited(fl_device(fl), "%s: error interrupt, but status %#x has no error; ignored\n",
					     fl->name, status);
			goto out;
		}
		code = readl(fl->regs + FL_REG_ERROR);
	}
	WRITE_ONCE(fl->hw_error, code);
	set_bit(FL_FLAG_ERROR, &fl->flags);
	wake_up_all(&fl->wq);	/* every waiter returns -EIO */

	status = readl(fl->regs + FL_REG_STATUS);
	info = readl(fl->regs + FL_REG_ERROR_INFO);
	dev_err(fl_device(fl),
		"%s: device error %u (%s), command index %u, status %#x; wb head %u, tail %u; FL_IOC_RESET recovers\n",
		fl->name, code, fl_err_name(code), info, status, fl_wb_head(fl),
		READ_ONCE(fl->tail));
out:
	mutex_unlock(&fl->reset_mutex);
	return IRQ_HANDLED;
}

static void fl_free_irqs(struct fl_dev *fl, unsigned int nr)
{
	while (nr--)
		free_irq(pci_irq_vector(fl->pdev, nr), fl);
}

static int fl_request_irqs(struct fl_dev *fl)
{
	static const char * const what[] = {
		[FL_VEC_QUEUE] = "queue",
		[FL_VEC_FAULT] = "fault",
		[FL_VEC_ERROR] = "error",
	};
	unsigned int v;
	int ret;

	BUILD_BUG_ON(FL_VEC_QUEUE != 0 || FL_VEC_FAULT != 1 || FL_VEC_ERROR != 2);
	for (v = 0; v < ARRAY_SIZE(what); v++) {
		int irq = pci_irq_vector(fl->pdev, v);

		if (irq < 0) {
			ret = irq;
			goto err;
		}
		snprintf(fl->irq_name[v], sizeof(fl->irq_name[v]), "%s-%s",
			 fl->name, what[v]);
		if (v == FL_VEC_ERROR)
			ret = request_threaded_irq(irq, fl_irq_error,
						   fl_irq_error_thread, 0,
						   fl->irq_name[v], fl);
		else
			ret = request_irq(irq, v == FL_VEC_QUEUE ? fl_irq_queue :
					  fl_irq_fault, 0, fl->irq_name[v], fl);
		if (ret)
			goto err;
	}
	return 0;
err:
	dev_err(fl_device(fl), "%s: cannot set up MSI-X vector %u: %d\n",
		fl->name, v, ret);
	fl_free_irqs(fl, v);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* ioctls */

static bool fl_zero(const __u64 *v, size_t n)
{
	while (n--)
		if (*v++)
			return false;
	return true;
}

static long fl_ioc_info(struct fl_dev *fl, void __user *uarg)
{
	struct pci_dev *pdev = fl->pdev;
	struct fl_ioc_info a;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;

	memset(&a, 0, sizeof(a));
	a.id = fl->hw_id;
	a.version = fl->hw_version;
	a.features = fl->hw_features;
	a.num_contexts = fl->num_contexts;
	a.num_engines = fl->num_engines;
	a.num_lanes = fl->num_lanes;
	a.tlb_entries = fl->tlb_entries;
	a.cq_entries = fl->cq_entries;
	a.chunk_max = fl->chunk_max;
	a.state = test_bit(FL_FLAG_ERROR, &fl->flags) ? FL_STATE_FAILED :
		  READ_ONCE(fl->state);
	a.generation = READ_ONCE(fl->generation);
	a.hw_error = READ_ONCE(fl->hw_error);
	a.irq_queue = atomic64_read(&fl->irqs[FL_VEC_QUEUE]);
	a.irq_fault = atomic64_read(&fl->irqs[FL_VEC_FAULT]);
	a.irq_error = atomic64_read(&fl->irqs[FL_VEC_ERROR]);
	a.fence_done = fl_fence_read(fl, FL_SLOT_DONE);
	a.pci_bdf = ((u64)pci_domain_nr(pdev->bus) << 16) |
		    (pdev->bus->number << 8) | pdev->devfn;
	spin_lock(&fl->sq_lock);
	a.commands = fl->commands;
	spin_unlock(&fl->sq_lock);

	return copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
}

/* Results of the checks FL_IOC_SUBMIT makes (see faultline_uapi.h). */
struct fl_checker {
	u64 failures;
	u64 mask;
	u64 order_seen;		/* highest order-slot value read so far */
	u64 fence_seen;		/* highest completion-slot value read so far */
	bool no_lag_wait;	/* the head lagged once: do not wait again */
};

static void fl_check_failed(struct fl_dev *fl, struct fl_checker *ck, u64 bit,
			    const char *what, u64 got, u64 want)
{
	ck->failures++;
	ck->mask |= bit;
	dev_err_ratelimited(fl_device(fl), "%s: submit check failed: %s: %llu, expected %llu\n",
			    fl->name, what, got, want);
}

/* Called once a chunk's completion fence was seen. */
static void fl_check_chunk(struct fl_dev *fl, const struct fl_request *req,
			   struct fl_checker *ck)
{
	unsigned long until = jiffies + msecs_to_jiffies(FL_WB_SETTLE_MS);
	u64 v;
	u32 head;

	/* The device publishes the head that passed a fence after the fence. */
	for (;;) {
		head = fl_wb_head(fl);
		if ((s32)(head - req->end) >= 0 ||
		    READ_ONCE(fl->generation) != req->generation)
			break;
		if (ck->no_lag_wait || time_after(jiffies, until)) {
			fl_check_failed(fl, ck, FL_CHECK_HEAD_LAG,
					"wb head after a completed chunk",
					head, req->end);
			ck->no_lag_wait = true;
			break;
		}
		usleep_range(20, 50);
	}
	/*
	 * A reset bumps the generation before it rewinds tail and head: read
	 * the generation on both sides so that a concurrent reset is not taken
	 * for a device error.
	 */
	if (READ_ONCE(fl->generation) == req->generation) {
		u32 tail;

		/*
		 * Head first: the tail only grows, so a tail read after the
		 * head is at least the tail the device had when it wrote it.
		 */
		smp_rmb();	/* generation, then head and tail */
		head = fl_wb_head(fl);
		dma_rmb();
		tail = READ_ONCE(fl->tail);
		smp_rmb();	/* then the generation again */
		if ((s32)(tail - head) < 0 &&
		    READ_ONCE(fl->generation) == req->generation)
			fl_check_failed(fl, ck, FL_CHECK_HEAD_RANGE,
					"wb head beyond tail", head, tail);
	}

	v = fl_fence_read(fl, FL_SLOT_ORDER);
	if (v < ck->order_seen || v < req->last_order)
		fl_check_failed(fl, ck, FL_CHECK_ORDER, "order slot",
				v, max(ck->order_seen, req->last_order));
	ck->order_seen = max(ck->order_seen, v);

	v = fl_fence_read(fl, FL_SLOT_DONE);
	if (v < ck->fence_seen || v < req->fence)
		fl_check_failed(fl, ck, FL_CHECK_FENCE_ORDER, "completion slot",
				v, max(ck->fence_seen, req->fence));
	ck->fence_seen = max(ck->fence_seen, v);
}

static bool fl_idle_ready(struct fl_dev *fl, const void *arg)
{
	return fl_wb_head(fl) == READ_ONCE(fl->tail) || fl_usable(fl);
}

/*
 * Wait until the device has consumed everything queued and its writeback
 * block has settled ((u32)completed == head), then snapshot head and
 * completed. Only meaningful while nobody else submits.
 */
static int fl_idle_snapshot(struct fl_dev *fl, struct fl_checker *ck,
			    u32 *head, u64 *completed)
{
	unsigned long until = jiffies + msecs_to_jiffies(FL_WB_SETTLE_MS);
	int err = fl_wait_cond(fl, fl_idle_ready, NULL, FL_POLL_NS);

	if (!err)
		err = fl_usable(fl);
	if (err) {
		if (err == -ETIMEDOUT)
			dev_err(fl_device(fl), "%s: queue not idle after %u ms: wb head %u, tail %u, wb error %u\n",
				fl->name, READ_ONCE(timeout_ms), fl_wb_head(fl),
				READ_ONCE(fl->tail), READ_ONCE(fl->wb->error));
		return err;
	}
	for (;;) {
		*head = fl_wb_head(fl);
		dma_rmb();
		*completed = READ_ONCE(fl->wb->completed);
		if ((u32)*completed == *head)
			return 0;
		if (time_after(jiffies, until))
			break;
		usleep_range(20, 50);
	}
	fl_check_failed(fl, ck, FL_CHECK_COMPLETED_HEAD,
			"wb completed on an idle queue", *completed, *head);
	return 0;
}

static long fl_ioc_submit(struct fl_dev *fl, void __user *uarg)
{
	const u64 known = FL_SUBMIT_F_IRQ | FL_SUBMIT_F_EXCLUSIVE |
			  FL_SUBMIT_F_BAD_OPCODE;
	const u32 cap = fl->chunk_max - 1;	/* the completion fence takes one */
	struct fl_request reqs[2];
	u32 req_nops[2];
	unsigned int oldest = 0, busy = 0;
	struct fl_checker ck = {};
	struct fl_ioc_submit a;
	struct fl_cmd *cmds;
	u64 left, nop_no = 0, batch, irq0, gen0 = 0, c0 = 0, c1;
	bool excl, pending_order = false, pending_bad;
	u32 h0 = 0, h1;
	ktime_t t0;
	int err = 0, ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~known) || a.count > FL_SUBMIT_MAX ||
	    !fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;

	excl = a.flags & FL_SUBMIT_F_EXCLUSIVE;
	batch = a.batch ? min_t(u64, a.batch, cap) : cap;
	left = a.count;
	/* Keep the inputs, clear every output. */
	a = (struct fl_ioc_submit) {
		.count = a.count, .flags = a.flags, .batch = a.batch,
		.fence_every = a.fence_every,
	};

	cmds = kvcalloc(cap, sizeof(*cmds), GFP_KERNEL);
	if (!cmds)
		return -ENOMEM;

	if (excl) {
		down_write(&fl->excl_rwsem);
		gen0 = READ_ONCE(fl->generation);
		err = fl_idle_snapshot(fl, &ck, &h0, &c0);
	} else {
		down_read(&fl->excl_rwsem);
	}
	irq0 = atomic64_read(&fl->irqs[FL_VEC_QUEUE]);
	t0 = ktime_get();

	pending_bad = a.flags & FL_SUBMIT_F_BAD_OPCODE;
	while (!err && (left || pending_order || pending_bad || busy)) {
		struct fl_request *req;
		u32 n = 0, nops = 0;
		unsigned int slot;

		/* Two chunks in flight, each at most half the ring. */
		if (busy == 2 || (!left && !pending_order && !pending_bad)) {
			req = &reqs[oldest];
			ret = fl_wait_request(fl, req);
			busy--;
			oldest ^= 1;
			if (ret) {
				err = ret;
				break;
			}
			a.completed += req_nops[oldest ^ 1];
			fl_check_chunk(fl, req, &ck);
			continue;
		}

		while (n < cap) {
			if (pending_order) {
				cmds[n++] = (struct fl_cmd) {
					.opcode = FL_OP_FENCE,
					.args = { fl_fence_dma(fl, FL_SLOT_ORDER) },
				};
				a.order_fences++;
				pending_order = false;
				continue;
			}
			if (!left && pending_bad) {
				cmds[n++] = (struct fl_cmd) { .opcode = FL_OP_INVALID };
				pending_bad = false;
				break;
			}
			if (!left || nops >= batch)
				break;
			cmds[n++] = (struct fl_cmd) { .opcode = FL_OP_NOP };
			nops++;
			left--;
			nop_no++;
			if (a.fence_every && nop_no % a.fence_every == 0)
				pending_order = true;
		}

		slot = (oldest + busy) & 1;
		req = &reqs[slot];
		err = fl_submit(fl, cmds, n,
				(a.flags & FL_SUBMIT_F_IRQ ? FLS_IRQ : 0) | FLS_ORDER,
				req);
		if (err)
			break;
		req_nops[slot] = nops;
		busy++;
		a.commands += n + 1;
		a.chunks++;
		a.last_fence = req->fence;
		if (req->last_order)
			a.last_order = req->last_order;
	}
	/* Never leave a request of this stack frame on the in-flight list. */
	while (busy) {
		ret = fl_wait_request(fl, &reqs[oldest]);
		if (!ret)
			a.completed += req_nops[oldest];
		busy--;
		oldest ^= 1;
	}
	a.elapsed_ns = ktime_to_ns(ktime_sub(ktime_get(), t0));

	if (!err && excl) {
		err = fl_idle_snapshot(fl, &ck, &h1, &c1);
		if (!err && READ_ONCE(fl->generation) != gen0)
			err = -EIO;
		if (!err) {
			a.head_delta = (u32)(h1 - h0);
			a.completed_delta = c1 - c0;
			if (a.head_delta != a.commands)
				fl_check_failed(fl, &ck, FL_CHECK_HEAD_DELTA,
						"wb head advance", a.head_delta,
						a.commands);
			if (a.completed_delta != a.commands)
				fl_check_failed(fl, &ck, FL_CHECK_COMPLETED_DELTA,
						"wb completed advance",
						a.completed_delta, a.commands);
			if (a.order_fences &&
			    fl_fence_read(fl, FL_SLOT_ORDER) != a.last_order)
				fl_check_failed(fl, &ck, FL_CHECK_ORDER_FINAL,
						"order slot at the end",
						fl_fence_read(fl, FL_SLOT_ORDER),
						a.last_order);
		}
	}
	a.irqs = atomic64_read(&fl->irqs[FL_VEC_QUEUE]) - irq0;
	if (excl)
		up_write(&fl->excl_rwsem);
	else
		up_read(&fl->excl_rwsem);
	kvfree(cmds);

	a.check_failures = ck.failures;
	a.check_mask = ck.mask;
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return err;
}

static long fl_ioc_fence(struct fl_dev *fl, void __user *uarg)
{
	struct fl_request req;
	struct fl_ioc_fence a;
	u64 irq0, t0, t1, irq_ns;
	int err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~FL_FENCE_F_POLL) ||
	    !fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;

	down_read(&fl->excl_rwsem);
	irq0 = atomic64_read(&fl->irqs[FL_VEC_QUEUE]);
	t0 = ktime_get_ns();
	err = fl_submit(fl, NULL, 0,
			a.flags & FL_FENCE_F_POLL ? 0 : FLS_IRQ, &req);
	if (!err)
		err = fl_wait_request(fl, &req);
	t1 = ktime_get_ns();
	up_read(&fl->excl_rwsem);
	if (err)
		return err;

	a.value = req.fence;
	a.seen = fl_fence_read(fl, FL_SLOT_DONE);
	a.rtt_ns = t1 - t0;
	irq_ns = READ_ONCE(fl->irq_fence_ns);
	a.irq_ns = irq_ns > t0 && READ_ONCE(fl->irq_fence) >= req.fence ?
		   irq_ns - t0 : 0;
	a.irq_total = atomic64_read(&fl->irqs[FL_VEC_QUEUE]);
	a.irqs = a.irq_total - irq0;
	return copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
}

static long fl_ioc_reset(struct fl_dev *fl, void __user *uarg)
{
	struct fl_reset_report rep = {};
	struct fl_ioc_reset a;
	struct fl_request req;
	struct fl_cmd *cmds;
	bool inflight;
	u64 t0;
	int err, status;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~(FL_RESET_F_INFLIGHT | FL_RESET_F_HOLD)) ||
	    !fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;
	inflight = a.flags & FL_RESET_F_INFLIGHT;
	if (inflight && (!a.inflight || a.inflight > fl->chunk_max - 1))
		return -EINVAL;
	if ((a.flags & FL_RESET_F_HOLD) && !inflight)
		return -EINVAL;

	if (inflight) {
		cmds = kvcalloc(a.inflight, sizeof(*cmds), GFP_KERNEL);
		if (!cmds)
			return -ENOMEM;
		/* All NOPs: opcode 0. No interrupt, nobody waits before the reset. */
		err = fl_submit(fl, cmds, a.inflight,
				a.flags & FL_RESET_F_HOLD ? FLS_HOLD : 0, &req);
		kvfree(cmds);
		if (err)
			return err;
	}

	t0 = ktime_get_ns();
	err = fl_reset(fl, &rep);
	a.elapsed_ns = ktime_get_ns() - t0;

	a.failed = rep.failed;
	a.head_at_reset = rep.head;
	a.generation = READ_ONCE(fl->generation);
	a.inflight_done = 0;
	a.inflight_errno = 0;
	if (inflight) {
		s32 done = rep.head - req.first;

		status = fl_wait_request(fl, &req);	/* settled by the reset */
		a.inflight_errno = -status;
		a.inflight_done = clamp_t(s32, done, 0, req.end - req.first);
	}
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return err;
}

static long fl_ioc_stats(struct fl_dev *fl, void __user *uarg)
{
	struct fl_ioc_stats *a;
	struct fl_request req;
	struct fl_cmd cmd;
	unsigned int i;
	long err;

	BUILD_BUG_ON(FL_STAT_COUNT > FL_IOC_STATS_MAX);
	BUILD_BUG_ON(FL_AUX_STATS + FL_STATS_BYTES > FL_AUX_SIZE);

	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	err = -EFAULT;
	if (copy_from_user(&a->reserved, uarg + offsetof(struct fl_ioc_stats, reserved),
			   sizeof(a->reserved)))
		goto out;
	err = -EINVAL;
	if (a->reserved)
		goto out;

	cmd = (struct fl_cmd) {
		.opcode = FL_OP_STATS,
		.args = { fl->aux_dma + FL_AUX_STATS, FL_STATS_BYTES },
	};
	down_read(&fl->excl_rwsem);
	mutex_lock(&fl->stats_mutex);
	/*
	 * A STATS whose waiter gave up earlier may still be queued, but it
	 * precedes this one in the ring, so its write cannot land after ours.
	 */
	memset(fl->stats, 0, FL_STATS_BYTES);
	err = fl_submit(fl, &cmd, 1, FLS_IRQ, &req);
	if (!err)
		err = fl_wait_request(fl, &req);
	if (!err) {
		dma_rmb();	/* counters written before the fence */
		for (i = 0; i < FL_STAT_COUNT; i++)
			a->values[i] = READ_ONCE(fl->stats[i]);
		a->count = FL_STAT_COUNT;
	}
	mutex_unlock(&fl->stats_mutex);
	up_read(&fl->excl_rwsem);

	if (!err && copy_to_user(uarg, a, sizeof(*a)))
		err = -EFAULT;
out:
	kfree(a);
	return err;
}

static long fl_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct fl_dev *fl = file->private_data;
	void __user *uarg = (void __user *)arg;
	long ret;

	down_read(&fl->io_rwsem);
	if (test_bit(FL_FLAG_DEAD, &fl->flags)) {
		ret = -ENODEV;
		goto out;
	}
	switch (cmd) {
	case FL_IOC_INFO:
		ret = fl_ioc_info(fl, uarg);
		break;
	case FL_IOC_SUBMIT:
		ret = fl_ioc_submit(fl, uarg);
		break;
	case FL_IOC_FENCE:
		ret = fl_ioc_fence(fl, uarg);
		break;
	case FL_IOC_RESET:
		ret = fl_ioc_reset(fl, uarg);
		break;
	case FL_IOC_STATS:
		ret = fl_ioc_stats(fl, uarg);
		break;
	default:
		ret = -ENOTTY;
		break;
	}
out:
	up_read(&fl->io_rwsem);
	return ret;
}

static void fl_release_dev(struct kref *ref)
{
	struct fl_dev *fl = container_of(ref, struct fl_dev, ref);

	pci_dev_put(fl->pdev);
	kfree(fl);
}

static int fl_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data, under misc_mtx, so we are registered. */
	struct fl_dev *fl = container_of(file->private_data, struct fl_dev, misc);

	kref_get(&fl->ref);
	file->private_data = fl;
	return 0;
}

static int fl_release(struct inode *inode, struct file *file)
{
	struct fl_dev *fl = file->private_data;

	kref_put(&fl->ref, fl_release_dev);
	return 0;
}

static const struct file_operations fl_fops = {
	.owner = THIS_MODULE,
	.open = fl_open,
	.release = fl_release,
	.unlocked_ioctl = fl_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

/* ---------------------------------------------------------------------- */
/* PCI */

static int fl_read_identity(struct fl_dev *fl)
{
	fl->hw_id = readl(fl->regs + FL_REG_ID);
	if (fl->hw_id != FL_ID_MAGIC) {
		dev_err(fl_device(fl), "not a faultline device: id %#x, expected %#x\n",
			fl->hw_id, FL_ID_MAGIC);
		return -ENODEV;
	}
	fl->hw_version = readl(fl->regs + FL_REG_VERSION);
	if (fl->hw_version >> 16 != FL_VERSION >> 16) {
		dev_err(fl_device(fl), "unsupported device version %u.%u (driver: %u.x)\n",
			fl->hw_version >> 16, fl->hw_version & 0xffff,
			FL_VERSION >> 16);
		return -ENODEV;
	}
	fl->hw_features = readl(fl->regs + FL_REG_FEATURES);
	fl->num_contexts = readl(fl->regs + FL_REG_NUM_CONTEXTS);
	fl->num_engines = readl(fl->regs + FL_REG_NUM_ENGINES);
	fl->num_lanes = readl(fl->regs + FL_REG_NUM_LANES);
	fl->tlb_entries = readl(fl->regs + FL_REG_TLB_ENTRIES);
	return 0;
}

static int fl_alloc_dma(struct fl_dev *fl)
{
	struct device *dev = fl_device(fl);

	BUILD_BUG_ON(FL_AUX_WB + FL_WB_SIZE > FL_AUX_FENCES);
	BUILD_BUG_ON(FL_AUX_FENCES + FL_NR_FENCE_SLOTS * sizeof(u64) > FL_AUX_STATS);
	BUILD_BUG_ON(FL_AUX_WB % 64 || FL_AUX_FENCES % 8);

	/* dma_alloc_coherent() aligns to the allocation's page order: 4 KiB. */
	fl->cq = dma_alloc_coherent(dev, (size_t)fl->cq_entries * FL_CMD_SIZE,
				    &fl->cq_dma, GFP_KERNEL);
	if (!fl->cq)
		return -ENOMEM;
	fl->aux = dma_alloc_coherent(dev, FL_AUX_SIZE, &fl->aux_dma, GFP_KERNEL);
	if (!fl->aux) {
		dma_free_coherent(dev, (size_t)fl->cq_entries * FL_CMD_SIZE,
				  fl->cq, fl->cq_dma);
		return -ENOMEM;
	}
	fl->wb = fl->aux + FL_AUX_WB;
	fl->fences = fl->aux + FL_AUX_FENCES;
	fl->stats = fl->aux + FL_AUX_STATS;
	return 0;
}

static void fl_free_dma(struct fl_dev *fl)
{
	struct device *dev = fl_device(fl);

	dma_free_coherent(dev, FL_AUX_SIZE, fl->aux, fl->aux_dma);
	dma_free_coherent(dev, (size_t)fl->cq_entries * FL_CMD_SIZE, fl->cq,
			  fl->cq_dma);
}

static int fl_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct fl_dev *fl;
	int ret;

	if (!is_power_of_2(cq_entries) || cq_entries < FL_CQ_MIN_DRIVER ||
	    cq_entries < FL_CQ_MIN_ENTRIES || cq_entries > FL_CQ_MAX_ENTRIES) {
		dev_err(&pdev->dev, "cq_entries=%u: need a power of two in [%u, %u]\n",
			cq_entries, max(FL_CQ_MIN_DRIVER, FL_CQ_MIN_ENTRIES),
			FL_CQ_MAX_ENTRIES);
		return -EINVAL;
	}

	fl = kzalloc(sizeof(*fl), GFP_KERNEL);
	if (!fl)
		return -ENOMEM;
	kref_init(&fl->ref);
	fl->pdev = pci_dev_get(pdev);
	init_rwsem(&fl->io_rwsem);
	init_rwsem(&fl->excl_rwsem);
	mutex_init(&fl->reset_mutex);
	mutex_init(&fl->stats_mutex);
	spin_lock_init(&fl->sq_lock);
	INIT_LIST_HEAD(&fl->inflight);
	init_waitqueue_head(&fl->wq);
	fl->state = FL_STATE_RESETTING;
	fl->cq_entries = cq_entries;
	fl->chunk_max = min(cq_entries / 2, FL_CHUNK_LIMIT);
	pci_set_drvdata(pdev, fl);

	ret = ida_alloc(&fl_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_put;
	fl->index = ret;
	snprintf(fl->name, sizeof(fl->name), "faultline%d", fl->index);

	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_ida;
	fl->regs = pcim_iomap_region(pdev, 0, KBUILD_MODNAME);
	if (IS_ERR(fl->regs)) {
		ret = PTR_ERR(fl->regs);
		dev_err(&pdev->dev, "cannot map BAR0: %d\n", ret);
		goto err_ida;
	}
	/* BAR1 holds the MSI-X table and PBA, which the PCI core maps. */
	ret = pcim_request_region(pdev, 1, KBUILD_MODNAME);
	if (ret) {
		dev_err(&pdev->dev, "cannot claim BAR1: %d\n", ret);
		goto err_ida;
	}
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		dev_err(&pdev->dev, "no 64-bit DMA: %d\n", ret);
		goto err_ida;
	}
	pci_set_master(pdev);

	ret = fl_read_identity(fl);
	if (ret)
		goto err_ida;
	ret = fl_alloc_dma(fl);
	if (ret)
		goto err_ida;

	ret = pci_alloc_irq_vectors(pdev, FL_MSIX_VECTORS, FL_MSIX_VECTORS,
				    PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(&pdev->dev, "cannot enable %u MSI-X vectors: %d\n",
			FL_MSIX_VECTORS, ret);
		goto err_dma;
	}
	ret = fl_request_irqs(fl);
	if (ret)
		goto err_vectors;

	mutex_lock(&fl->reset_mutex);
	ret = fl_hw_init(fl);
	mutex_unlock(&fl->reset_mutex);
	if (ret)
		goto err_hw;

	fl->misc.minor = MISC_DYNAMIC_MINOR;
	fl->misc.name = fl->name;
	fl->misc.fops = &fl_fops;
	fl->misc.parent = &pdev->dev;
	fl->misc.mode = 0600;
	ret = misc_register(&fl->misc);
	if (ret) {
		dev_err(&pdev->dev, "cannot register /dev/%s: %d\n", fl->name, ret);
		goto err_hw;
	}

	dev_info(&pdev->dev,
		 "%s: version %u.%u, features %#x, %u contexts, %u engines x %u lanes, %u TLB entries; queue %u entries, MSI-X %u vectors\n",
		 fl->name, fl->hw_version >> 16, fl->hw_version & 0xffff,
		 fl->hw_features, fl->num_contexts, fl->num_engines,
		 fl->num_lanes, fl->tlb_entries, fl->cq_entries, FL_MSIX_VECTORS);
	return 0;

err_hw:
	set_bit(FL_FLAG_DEAD, &fl->flags);
	fl_hw_reset(fl);
	fl_free_irqs(fl, FL_VEC_ERROR + 1);
err_vectors:
	pci_free_irq_vectors(pdev);
err_dma:
	fl_hw_reset(fl);
	fl_free_dma(fl);
err_ida:
	ida_free(&fl_ida, fl->index);
err_put:
	pci_set_drvdata(pdev, NULL);
	kref_put(&fl->ref, fl_release_dev);
	return ret;
}

static void fl_remove(struct pci_dev *pdev)
{
	struct fl_dev *fl = pci_get_drvdata(pdev);

	misc_deregister(&fl->misc);	/* no new opens */

	/* Waiters see FL_FLAG_DEAD and return -ENODEV; ioctls drain. */
	set_bit(FL_FLAG_DEAD, &fl->flags);
	wake_up_all(&fl->wq);
	down_write(&fl->io_rwsem);

	/* Disable, then reset: no more DMA or interrupts from the device. */
	writel(0, fl->regs + FL_REG_CONTROL);
	fl_hw_reset(fl);
	WARN_ON(!list_empty(&fl->inflight));

	fl_free_irqs(fl, FL_VEC_ERROR + 1);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	fl_free_dma(fl);
	up_write(&fl->io_rwsem);

	ida_free(&fl_ida, fl->index);
	pci_set_drvdata(pdev, NULL);
	dev_info(&pdev->dev, "%s: removed\n", fl->name);
	kref_put(&fl->ref, fl_release_dev);	/* open files keep the rest */
}

static void fl_shutdown(struct pci_dev *pdev)
{
	struct fl_dev *fl = pci_get_drvdata(pdev);

	if (!fl)
		return;
	mutex_lock(&fl->reset_mutex);
	fl_quiesce(fl, NULL);
	fl_set_state(fl, FL_STATE_FAILED);
	mutex_unlock(&fl->reset_mutex);
}

/*
 * PCI FLR (sysfs "reset" and friends): the core calls reset_prepare, resets
 * the function and restores config space (MSI-X included), then calls
 * reset_done, both in one task under device_lock. reset_mutex is held from
 * one to the other so that nothing else re-initialises meanwhile.
 */
static void fl_reset_prepare(struct pci_dev *pdev)
{
	struct fl_dev *fl = pci_get_drvdata(pdev);

	mutex_lock(&fl->reset_mutex);
	fl_quiesce(fl, NULL);
	dev_info(&pdev->dev, "%s: function reset\n", fl->name);
}

static void fl_reset_done(struct pci_dev *pdev)
{
	struct fl_dev *fl = pci_get_drvdata(pdev);

	lockdep_assert_held(&fl->reset_mutex);
	if (fl_hw_init(fl))
		dev_err(&pdev->dev, "%s: not running after the function reset; FL_IOC_RESET retries\n",
			fl->name);
	mutex_unlock(&fl->reset_mutex);
}

static const struct pci_error_handlers fl_err_handlers = {
	.reset_prepare = fl_reset_prepare,
	.reset_done = fl_reset_done,
};

static const struct pci_device_id fl_pci_ids[] = {
	{ PCI_DEVICE(FL_PCI_VENDOR_ID, FL_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, fl_pci_ids);

static struct pci_driver fl_pci_driver = {
	.name = KBUILD_MODNAME,
	.id_table = fl_pci_ids,
	.probe = fl_probe,
	.remove = fl_remove,
	.shutdown = fl_shutdown,
	.err_handler = &fl_err_handlers,
};
module_pci_driver(fl_pci_driver);

MODULE_DESCRIPTION("faultline GPU-like test device");
MODULE_AUTHOR("faultline project");
MODULE_LICENSE("GPL");
