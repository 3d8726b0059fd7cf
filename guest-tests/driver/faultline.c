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
 * Shared virtual memory (section "Shared virtual memory" below): each open
 * file can bind a device context to its process's mm; an HMM mirror
 * (mmu_interval_notifier) keeps the context's device page table a subset of
 * the CPU's, and a fault worker services the device's fault ring with
 * hmm_range_fault(). Jobs (FL_IOC_JOB) run on the process's virtual
 * addresses.
 *
 * Locking, outermost first (each lock's rules are also written beside it in
 * struct fl_dev / struct fl_ctx):
 *   device_lock (PCI core: probe, remove, FLR) or io_rwsem (ioctls)
 *     -> excl_rwsem (queue users among the ioctls)
 *       -> reset_mutex | stats_mutex (never nested with each other)
 *         -> fault_mutex (fault worker; fl_fr_program() under reset_mutex)
 *           -> [mmap_lock (read) -> notifier callbacks] | ctx->lock
 *             -> sq_lock (spinlock, never taken in hard-IRQ context)
 * ctx->lock is also taken inside mmap_lock (write) by the invalidate
 * callback, so nothing holding ctx->lock takes mmap_lock or allocates memory
 * with reclaim. The callback takes io_rwsem only with a trylock. ctx_lock,
 * orphan_lock and cancel_lock are leaf spinlocks. The interrupt handlers take
 * no lock: they use atomics, WRITE_ONCE, the wait queue and queue_work(); the
 * error handler's thread takes reset_mutex only.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/dmapool.h>
#include <linux/hmm.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/kref.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/sched/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

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

static unsigned int fr_entries = 1024;
module_param(fr_entries, uint, 0644);
MODULE_PARM_DESC(fr_entries, "fault-ring entries (power of two, 2..; at most the probe-time value or 1024; applied at each reset)");

static unsigned int fr_irq_delay_us;
module_param(fr_irq_delay_us, uint, 0644);
MODULE_PARM_DESC(fr_irq_delay_us, "fault-interrupt moderation in us (0..10000; applied at each reset; default 0)");

static unsigned int fault_batch = 256;
module_param(fault_batch, uint, 0644);
MODULE_PARM_DESC(fault_batch, "most fault-ring entries serviced per batch (1..1024; default 256)");

static bool fault_prefetch = true;
module_param_named(prefetch, fault_prefetch, bool, 0644);
MODULE_PARM_DESC(prefetch, "fault windows reach the end of their 2 MiB block: hmm_range_fault() then populates every page after the first fault (default Y); N: only up to the window's last fault");

static unsigned int job_timeout_ms = 60000;
module_param(job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms, "longest wait for one FL_IOC_JOB before cancelling, in ms (default 60000)");

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
#define FLS_NOINTR		BIT(3)	/* waits (space, completion) ignore signals */

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
	bool intr;		/* signals end the wait (-EINTR) */
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

	/*
	 * Fault ring (DMA, fr_alloc entries allocated at probe). fault_mutex
	 * is held by the fault worker for a whole batch and by fl_fr_program();
	 * it protects fr_size, fr_get, fr_overflows, fbatch, fcmds and
	 * hmm_pfns. Taken after reset_mutex, before any ctx->lock; the worker
	 * sleeps under it (hmm_range_fault(), mmap_lock, command waits) but
	 * never takes reset_mutex, so a reset never waits for it for long: the
	 * reset settles the worker's requests first.
	 */
	struct mutex fault_mutex;
	struct fl_fault *fr;
	dma_addr_t fr_dma;
	u32 fr_alloc;
	u32 fr_size;			/* entries programmed; 0 = no ring */
	u32 fr_get;			/* free-running GET */
	u32 fr_overflows;		/* last FL_WB_FR_OVERFLOWS seen */
	struct fl_fault_rec *fbatch;	/* FL_BATCH_LIMIT */
	struct fl_cmd *fcmds;		/* 3 * FL_BATCH_LIMIT + 1 */
	unsigned long *hmm_pfns;	/* one window: FL_HUGE_PAGES */
	struct workqueue_struct *fault_wq;
	struct work_struct fault_work;

	/*
	 * ctx_lock (spinlock, leaf): ctx_table (context id -> bound context)
	 * and nr_ctx; the worker takes a context reference under it. Context
	 * ids come from ctx_ida.
	 */
	spinlock_t ctx_lock;
	struct fl_ctx **ctx_table;
	u32 nr_ctx;
	struct ida ctx_ida;
	/* Job completion records; orphan_lock (leaf) guards orphans. */
	struct dma_pool *compl_pool;
	spinlock_t orphan_lock;
	struct list_head orphans;
	bool hw_stopped;		/* remove() has reset the device for good */

	/* Fault-servicing counters (FL_IOC_FAULT_STATS). */
	struct {
		atomic64_t faults, batches, duplicates, windows, retries;
		atomic64_t retry_timeouts, cancels, invalidations, replays;
		atomic64_t overflows, pages_mapped, huge_mapped, upgrades;
		atomic64_t notifier_calls, notifier_clears, notifier_busy;
		atomic64_t worker_runs, stale;
	} fst;

	/* Written by the interrupt handlers only (lockless, READ_ONCE). */
	u64 irq_fence;			/* highest FL_SLOT_DONE value a queue IRQ saw */
	u64 irq_fence_ns;		/* ktime_get_ns() when irq_fence last grew */
	u32 hw_error;			/* FL_REG_ERROR explained by the error thread */
	atomic64_t irqs[FL_MSIX_VECTORS];
};

static DEFINE_IDA(fl_ida);

static void fl_fr_program(struct fl_dev *fl);
static void fl_orphans_free(struct fl_dev *fl, bool all);
static void fl_release_dev(struct kref *ref);
static void fl_free_dma(struct fl_dev *fl);

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
 * re-evaluating it at least every @poll_ns (0: only when woken); with !@intr
 * signals do not end the wait (the MMU-notifier path must wait for the
 * device even in a task that is being killed).
 * Returns 0, -EINTR or -ETIMEDOUT.
 */
static int fl_wait_cond(struct fl_dev *fl,
			bool (*cond)(struct fl_dev *fl, const void *arg),
			const void *arg, u64 poll_ns, bool intr)
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
		if (intr)
			ret = wait_event_interruptible_hrtimeout(fl->wq,
								 cond(fl, arg),
								 ns_to_ktime(left));
		else
			ret = wait_event_hrtimeout(fl->wq, cond(fl, arg),
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
			       req->wait_irq ? 0 : FL_POLL_NS, req->intr);
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
		err = fl_wait_cond(fl, fl_space_ready, &sp, FL_SPACE_POLL_NS,
				   !(flags & FLS_NOINTR));
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
	req->intr = !(flags & FLS_NOINTR);
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
	u32 want = FL_STATUS_ENABLED | FL_STATUS_QUEUE_RUNNING;
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
	if (fl->hw_features & FL_FEAT_FAULT_RING) {
		fl_fr_program(fl);
		want |= FL_STATUS_FAULT_RING_ENABLED;
	}
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

	fl_orphans_free(fl, true);	/* the reset stopped every lane */
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

	/* The device disarmed it; the worker re-arms it by writing GET. */
	atomic64_inc(&fl->irqs[FL_VEC_FAULT]);
	queue_work(fl->fault_wq, &fl->fault_work);
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

static bool fl_zero(const __u64 *v, size_t n)
{
	while (n--)
		if (*v++)
			return false;
	return true;
}

/* ---------------------------------------------------------------------- */
/* Shared virtual memory: device page tables, the HMM mirror, faults */

/*
 * Device page tables (spec section 5): four levels of 512 u64 entries, each
 * table one DMA-coherent 4 KiB page. struct fl_pt shadows a table with the
 * CPU pointers of its children (levels 3..1), since the entries hold DMA
 * addresses. Tables are allocated on demand and freed only with the context:
 * an invalidation clears entries, never tables, so a device walk never reads
 * a freed table.
 *
 * Leaves carry the page's physical address: the guest has no IOMMU in front
 * of the device (checked at bind), so DMA address == physical address, as
 * for nouveau's and test_hmm's mirrors. No page reference is held: the
 * mmu_interval_notifier clears an entry before the CPU may free or move its
 * page (see fl_mirror_invalidate()).
 *
 * Atomics: FL_PTE_ATOMIC is granted with FL_PTE_WRITE. The device performs
 * its atomics on the very memory the CPU uses (guest RAM shared with the
 * server), with real atomic instructions, so device and CPU atomics on the
 * same word are coherent; no exclusive access (make_device_exclusive_range,
 * not exported anyway) is needed.
 */
#define FL_PT_ENTRIES		512
#define FL_PT_SPARE		3	/* tables one window can need (L2, L1, L0) */
#define FL_HUGE_SIZE		SZ_2M
#define FL_HUGE_PAGES		(FL_HUGE_SIZE >> PAGE_SHIFT)
#define FL_VA_LIMIT		BIT_ULL(FL_VA_BITS)

struct fl_pt {
	u64 *e;			/* FL_PT_ENTRIES entries; the device reads them */
	dma_addr_t dma;
	struct fl_pt **child;	/* levels 3..1: CPU view of the next tables */
};

#define FL_CANCEL_LOG		32

/* One device context: the mirror of one process's address space. */
struct fl_ctx {
	struct fl_dev *fl;		/* reference held (fl->ref) */
	struct kref ref;		/* the file + the fault worker while it uses it */
	struct mm_struct *mm;		/* mmgrab()ed at bind, mmdrop()ed at free */
	struct mmu_interval_notifier notifier;	/* whole user address space */
	u16 id;				/* device context; ida-owned until free */
	bool leak;			/* UNBIND failed: never free the tables */
	/*
	 * lock: the mirror's "update lock". Held by the invalidate callback
	 * from mmu_interval_set_seq() until the device has acknowledged the
	 * INVALIDATE (FENCE seen), and by the fault worker from
	 * mmu_interval_read_retry() until the new PTEs are written, so a PTE
	 * is never written from a stale hmm_range_fault() result. Also
	 * serialises BIND/UNBIND of the context and every access to the
	 * tables and spares below. Nothing that allocates memory with
	 * reclaim (the spares are filled before taking it) nor mmap_lock is
	 * taken under it: reclaim and munmap call the callback, which takes it.
	 */
	struct mutex lock;
	struct fl_pt *root;		/* level 3 */
	struct fl_pt *spare[FL_PT_SPARE];
	unsigned int nspare;
	u64 bound_gen;			/* fl->generation of the last BIND, or U64_MAX */

	/*
	 * cancel_lock: the cancel log, a ring of the last cancels the worker
	 * decided, so that FL_IOC_JOB can tell -EPERM from -EFAULT. Leaf lock.
	 */
	spinlock_t cancel_lock;
	u64 cancel_seq;
	struct {
		u64 seq;
		u64 va;
		int err;
	} cancel_log[FL_CANCEL_LOG];
};

/* Per open file. */
struct fl_file {
	struct fl_dev *fl;
	struct mutex bind_mutex;	/* creating @ctx */
	struct fl_ctx *ctx;		/* NULL until bound; then constant */
};

/* A job record the device may still write: freed after a reset. */
struct fl_orphan {
	struct list_head node;
	struct fl_completion *rec;
	dma_addr_t dma;
};

/* One fault of a batch, after dedupe. */
struct fl_fault_rec {
	u64 va;
	u16 ctx;
	u8 access;		/* most intrusive access of the page */
	u8 mask;		/* every access seen, bit per FL_ACCESS_* */
	u8 cancel;		/* accesses to cancel */
	u8 done;		/* serviced or decided */
	s16 err;		/* errno of the cancel */
};

#define FL_ACC_BIT(a)		(1U << (a))
#define FL_ACC_WRITES		(FL_ACC_BIT(FL_ACCESS_WRITE) | FL_ACC_BIT(FL_ACCESS_ATOMIC))
#define FL_ACC_ALL		0xf

static struct fl_pt *fl_pt_alloc(struct fl_dev *fl, unsigned int level)
{
	struct fl_pt *pt = kzalloc(sizeof(*pt), GFP_KERNEL);

	if (!pt)
		return NULL;
	pt->e = dma_alloc_coherent(fl_device(fl), PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (!pt->e)
		goto err;
	if (level) {
		pt->child = kcalloc(FL_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
		if (!pt->child)
			goto err_dma;
	}
	return pt;
err_dma:
	dma_free_coherent(fl_device(fl), PAGE_SIZE, pt->e, pt->dma);
err:
	kfree(pt);
	return NULL;
}

static void fl_pt_free(struct fl_dev *fl, struct fl_pt *pt, unsigned int level)
{
	unsigned int i;

	if (!pt)
		return;
	if (pt->child) {
		for (i = 0; i < FL_PT_ENTRIES; i++)
			fl_pt_free(fl, pt->child[i], level - 1);
		kfree(pt->child);
	}
	dma_free_coherent(fl_device(fl), PAGE_SIZE, pt->e, pt->dma);
	kfree(pt);
}

/*
 * Fill the spares (outside ctx->lock: GFP_KERNEL may reclaim, and reclaim
 * may call our invalidate callback, which takes ctx->lock). Spares are
 * allocated with child arrays so that they fit any level; level-0 use just
 * ignores the array.
 */
static int fl_pt_prealloc(struct fl_ctx *ctx)
{
	struct fl_pt *pt;
	unsigned int n;

	mutex_lock(&ctx->lock);
	n = ctx->nspare;
	mutex_unlock(&ctx->lock);
	while (n < FL_PT_SPARE) {
		pt = fl_pt_alloc(ctx->fl, 1);
		if (!pt)
			return -ENOMEM;
		mutex_lock(&ctx->lock);
		if (ctx->nspare < FL_PT_SPARE) {
			ctx->spare[ctx->nspare++] = pt;
			pt = NULL;
		}
		n = ctx->nspare;
		mutex_unlock(&ctx->lock);
		fl_pt_free(ctx->fl, pt, 1);
	}
	return 0;
}

static unsigned int fl_pt_index(u64 va, unsigned int level)
{
	return (va >> (PAGE_SHIFT + 9 * level)) & (FL_PT_ENTRIES - 1);
}

/* Child table of @pt at @i, taken from the spares if missing. ctx->lock. */
static struct fl_pt *fl_pt_next(struct fl_ctx *ctx, struct fl_pt *pt,
				unsigned int i)
{
	struct fl_pt *c = pt->child[i];

	lockdep_assert_held(&ctx->lock);
	if (!c) {
		if (WARN_ON_ONCE(!ctx->nspare))
			return NULL;
		c = ctx->spare[--ctx->nspare];
		memset(c->e, 0, PAGE_SIZE);
		pt->child[i] = c;
	}
	return c;
}

/* A span of VA to invalidate on the device. */
struct fl_span {
	u64 start, end;		/* empty when start >= end */
};

static void fl_span_add(struct fl_span *sp, u64 start, u64 end)
{
	if (sp->start >= sp->end) {
		sp->start = start;
		sp->end = end;
		return;
	}
	sp->start = min(sp->start, start);
	sp->end = max(sp->end, end);
}

/* Clear every valid entry of @c (a level-0 table); true if one was valid. */
static bool fl_pt_zap_table(struct fl_pt *c)
{
	bool any = false;
	unsigned int i;

	for (i = 0; i < FL_PT_ENTRIES; i++) {
		if (c->e[i] & FL_PTE_VALID) {
			WRITE_ONCE(c->e[i], 0);
			any = true;
		}
	}
	return any;
}

/*
 * Write a 4 KiB leaf (@huge false) or a 2 MiB leaf at level 1 for @va.
 * A valid translation that changes (permissions, a 2 MiB leaf replaced by a
 * table or the other way round) is added to @changed: the device may hold it
 * in its TLB, so it must be invalidated before the faulting lane replays.
 * ctx->lock held; the spares must hold FL_PT_SPARE tables. Returns 1 if the
 * entry was written, 0 if it already held @leaf, -ENOMEM without spares.
 */
static int fl_pt_set(struct fl_ctx *ctx, u64 va, u64 leaf, bool huge,
		     struct fl_span *changed)
{
	const u64 hstart = ALIGN_DOWN(va, FL_HUGE_SIZE);
	struct fl_pt *pt = ctx->root, *c;
	unsigned int level, i;
	u64 old, tbl;

	lockdep_assert_held(&ctx->lock);
	for (level = 3; level >= 1; level--) {
		i = fl_pt_index(va, level);
		old = pt->e[i];
		if (level == 1 && huge) {
			if (old == leaf)
				return 0;
			if ((old & FL_PTE_VALID) &&
			    ((old & FL_PTE_LEAF) ||
			     (pt->child[i] && fl_pt_zap_table(pt->child[i]))))
				fl_span_add(changed, hstart, hstart + FL_HUGE_SIZE);
			WRITE_ONCE(pt->e[i], leaf);
			return 1;
		}
		c = fl_pt_next(ctx, pt, i);
		if (!c)
			return -ENOMEM;
		tbl = (c->dma & FL_PTE_ADDR_MASK) | FL_PTE_VALID;
		if (old != tbl) {
			if ((old & FL_PTE_VALID) && (old & FL_PTE_LEAF))
				fl_span_add(changed, hstart, hstart + FL_HUGE_SIZE);
			/* Only valid entries were zapped when the leaf went in. */
			memset(c->e, 0, PAGE_SIZE);
			dma_wmb();	/* an empty table before the link to it */
			WRITE_ONCE(pt->e[i], tbl);
		}
		pt = c;
	}
	i = fl_pt_index(va, 0);
	old = pt->e[i];
	if (old == leaf)
		return 0;
	if (old & FL_PTE_VALID)
		fl_span_add(changed, va, va + PAGE_SIZE);
	WRITE_ONCE(pt->e[i], leaf);
	return 1;
}

/* The leaf mapping @va (0 if none); *@huge says it is a 2 MiB one. ctx->lock. */
static u64 fl_pt_lookup(struct fl_ctx *ctx, u64 va, bool *huge)
{
	struct fl_pt *pt = ctx->root;
	unsigned int level;
	u64 e;

	*huge = false;
	for (level = 3; level >= 1; level--) {
		unsigned int i = fl_pt_index(va, level);

		e = pt->e[i];
		if (!(e & FL_PTE_VALID))
			return 0;
		if (e & FL_PTE_LEAF) {
			*huge = true;
			return e;
		}
		pt = pt->child[i];
		if (!pt)
			return 0;
	}
	return pt->e[fl_pt_index(va, 0)];
}

/*
 * Clear every leaf of @pt (at @level, covering VA from @base) that overlaps
 * [start, end). A 2 MiB leaf that overlaps the range only in part is cleared
 * whole, and all of it goes into @cleared, so that the device invalidates
 * every TLB entry it may have made from it.
 */
static void fl_pt_clear(struct fl_pt *pt, unsigned int level, u64 base,
			u64 start, u64 end, struct fl_span *cleared)
{
	const unsigned int shift = PAGE_SHIFT + 9 * level;
	const u64 size = BIT_ULL(shift);
	unsigned int i, first, last;

	first = start > base ? (start - base) >> shift : 0;
	last = min_t(u64, (end - 1 - base) >> shift, FL_PT_ENTRIES - 1);
	for (i = first; i <= last; i++) {
		u64 va = base + (u64)i * size;
		u64 e = pt->e[i];

		if (!(e & FL_PTE_VALID))
			continue;
		if (level == 0 || (e & FL_PTE_LEAF)) {
			WRITE_ONCE(pt->e[i], 0);
			fl_span_add(cleared, va, va + size);
		} else if (pt->child[i]) {
			fl_pt_clear(pt->child[i], level - 1, va, max(start, va),
				    min(end, va + size), cleared);
		}
	}
}

/* True if a leaf of @pt overlapping [start, end) is valid. */
static bool fl_pt_any(struct fl_pt *pt, unsigned int level, u64 base,
		      u64 start, u64 end)
{
	const unsigned int shift = PAGE_SHIFT + 9 * level;
	const u64 size = BIT_ULL(shift);
	unsigned int i, first, last;

	first = start > base ? (start - base) >> shift : 0;
	last = min_t(u64, (end - 1 - base) >> shift, FL_PT_ENTRIES - 1);
	for (i = first; i <= last; i++) {
		u64 va = base + (u64)i * size;
		u64 e = pt->e[i];

		if (!(e & FL_PTE_VALID))
			continue;
		if (level == 0 || (e & FL_PTE_LEAF))
			return true;
		if (pt->child[i] &&
		    fl_pt_any(pt->child[i], level - 1, va, max(start, va),
			      min(end, va + size)))
			return true;
	}
	return false;
}

/* ---------------------------------------------------------------------- */
/* Executing driver commands */

/*
 * Queue @n commands (split into chunks when needed) and wait until all have
 * executed, polling the completion fence. FLS_NOINTR for waits that must
 * not end on a signal.
 */
static int fl_exec(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n,
		   unsigned int flags)
{
	const u32 cap = fl->chunk_max - 1;
	struct fl_request req;
	int err;

	do {
		u32 k = min(n, cap);

		err = fl_submit(fl, cmds, k, flags, &req);
		if (!err)
			err = fl_wait_request(fl, &req);
		if (err)
			return err;
		cmds += k;
		n -= k;
	} while (n);
	return 0;
}

static bool fl_gen_moved(struct fl_dev *fl, const void *arg)
{
	const u64 *gen = arg;

	return READ_ONCE(fl->generation) != *gen ||
	       test_bit(FL_FLAG_DEAD, &fl->flags);
}

/*
 * The device did not acknowledge an invalidation of a context bound in
 * generation @gen (@err from fl_exec()). The translation must be unusable
 * before the invalidate callback returns, so stop the device's translations
 * the only other way there is, a reset:
 * - a reset in progress (FL_STATE_RESETTING): wait until fl_quiesce() has
 *   reset the device (it bumps the generation after the hardware reset);
 * - a device error, removal, or no answer within timeout_ms: reset the device
 *   here and mark it failed (FL_IOC_RESET re-initialises it). This cannot
 *   take reset_mutex (its holder may wait for the fault worker, which may be
 *   in hmm_range_fault() calling us), so the raw reset is written under
 *   sq_lock, which orders it before any re-initialisation that clears the
 *   error. Caller holds io_rwsem for reading, so BAR0 is mapped.
 */
static void fl_stop_translations(struct fl_dev *fl, u64 gen, int err)
{
	if (READ_ONCE(fl->hw_stopped))
		return;
	if (fl_gen_moved(fl, &gen) && !test_bit(FL_FLAG_DEAD, &fl->flags))
		return;
	if (err == -EIO && !fl_broken(fl) &&
	    !fl_wait_cond(fl, fl_gen_moved, &gen, FL_POLL_NS, false) &&
	    !test_bit(FL_FLAG_DEAD, &fl->flags))
		return;
	spin_lock(&fl->sq_lock);
	if (READ_ONCE(fl->generation) == gen) {
		writel(FL_CTRL_RESET, fl->regs + FL_REG_CONTROL);
		set_bit(FL_FLAG_ERROR, &fl->flags);
	}
	spin_unlock(&fl->sq_lock);
	readl(fl->regs + FL_REG_STATUS);	/* the server has reset it */
	wake_up_all(&fl->wq);
	dev_err_ratelimited(fl_device(fl), "%s: invalidation not acknowledged (%d): device stopped; FL_IOC_RESET recovers\n",
			    fl->name, err);
}

/* ---------------------------------------------------------------------- */
/* The mirror: mmu_interval_notifier */

/*
 * Invalidate callback (the mmu_interval_notifier contract): once it returns
 * true, the device never again uses a translation of [start, end) that it
 * had before. Sequence: take ctx->lock (trylock when the caller cannot
 * sleep), mmu_interval_set_seq() so that any fault servicing that read the
 * CPU page table before now retries, clear the device PTEs, and when one was
 * valid, INVALIDATE(ctx, range) + FENCE and wait for the fence (spec section
 * 6: after it the device neither has nor can re-create the old translation).
 * Nothing mapped in the range: nothing on the device to invalidate (the TLB
 * caches only valid PTEs, each cleared under an INVALIDATE of its own).
 * No event is skipped: the driver never migrates pages itself, so there is
 * no MMU_NOTIFY_MIGRATE of its own to ignore.
 */
static bool fl_mirror_invalidate(struct mmu_interval_notifier *mni,
				 const struct mmu_notifier_range *range,
				 unsigned long cur_seq)
{
	struct fl_ctx *ctx = container_of(mni, struct fl_ctx, notifier);
	struct fl_dev *fl = ctx->fl;
	u64 start = range->start, end = min_t(u64, range->end, FL_VA_LIMIT);
	struct fl_span cleared = {};
	struct fl_cmd cmd;
	u64 gen;
	int err;

	atomic64_inc(&fl->fst.notifier_calls);
	if (mmu_notifier_range_blockable(range)) {
		mutex_lock(&ctx->lock);
	} else if (!mutex_trylock(&ctx->lock)) {
		atomic64_inc(&fl->fst.notifier_busy);
		return false;
	}
	/* A caller that cannot sleep cannot wait for the device either. */
	if (!mmu_notifier_range_blockable(range) && start < end &&
	    ctx->root && fl_pt_any(ctx->root, 3, 0, start, end)) {
		mutex_unlock(&ctx->lock);
		atomic64_inc(&fl->fst.notifier_busy);
		return false;
	}
	mmu_interval_set_seq(mni, cur_seq);
	if (start < end && ctx->root)
		fl_pt_clear(ctx->root, 3, 0, start, end, &cleared);
	if (cleared.start >= cleared.end)
		goto out;

	atomic64_inc(&fl->fst.notifier_clears);
	gen = ctx->bound_gen;
	if (gen != READ_ONCE(fl->generation))
		goto out;	/* reset since BIND: the device has nothing cached */
	if (!down_read_trylock(&fl->io_rwsem))
		goto out;	/* remove() holds it: it resets the device */
	if (READ_ONCE(fl->hw_stopped)) {
		up_read(&fl->io_rwsem);
		goto out;	/* removed: reset for good, BAR0 gone */
	}
	cmd = (struct fl_cmd) {
		.opcode = FL_OP_INVALIDATE,
		.context = ctx->id,
		.args = { cleared.start, cleared.end - cleared.start },
	};
	atomic64_inc(&fl->fst.invalidations);
	err = fl_exec(fl, &cmd, 1, FLS_NOINTR);
	if (err)
		fl_stop_translations(fl, gen, err);
	up_read(&fl->io_rwsem);
out:
	mutex_unlock(&ctx->lock);
	return true;
}

static const struct mmu_interval_notifier_ops fl_mirror_ops = {
	.invalidate = fl_mirror_invalidate,
};

/* ---------------------------------------------------------------------- */
/* Contexts */

/* Take a reference on the context with device id @id, if it is bound. */
static struct fl_ctx *fl_ctx_get(struct fl_dev *fl, u16 id)
{
	struct fl_ctx *ctx = NULL;

	if (id >= fl->num_contexts)
		return NULL;
	spin_lock(&fl->ctx_lock);
	ctx = fl->ctx_table[id];
	if (ctx)
		kref_get(&ctx->ref);
	spin_unlock(&fl->ctx_lock);
	return ctx;
}

static void fl_ctx_free(struct kref *ref)
{
	struct fl_ctx *ctx = container_of(ref, struct fl_ctx, ref);
	struct fl_dev *fl = ctx->fl;
	unsigned int i;

	if (ctx->leak) {
		dev_warn(fl_device(fl), "%s: context %u was not unbound: its page tables stay allocated\n",
			 fl->name, ctx->id);
	} else {
		fl_pt_free(fl, ctx->root, 3);
		ida_free(&fl->ctx_ida, ctx->id);
	}
	for (i = 0; i < ctx->nspare; i++)
		fl_pt_free(fl, ctx->spare[i], 1);
	mmdrop(ctx->mm);
	kfree(ctx);
	kref_put(&fl->ref, fl_release_dev);
}

static void fl_ctx_put(struct fl_ctx *ctx)
{
	kref_put(&ctx->ref, fl_ctx_free);
}

/*
 * BIND the context to its root table in the current device generation.
 * ctx->lock held. After a reset the device has forgotten every binding; the
 * job path calls this again when bound_gen is stale.
 */
static int fl_ctx_bind_hw(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;
	u64 gen = READ_ONCE(fl->generation);
	struct fl_cmd cmd = {
		.opcode = FL_OP_BIND,
		.context = ctx->id,
		.args = { ctx->root->dma },
	};
	int err;

	lockdep_assert_held(&ctx->lock);
	err = fl_exec(fl, &cmd, 1, FLS_NOINTR);
	if (!err && READ_ONCE(fl->generation) != gen)
		err = -EIO;
	if (!err)
		ctx->bound_gen = gen;
	return err;
}

static struct fl_ctx *fl_ctx_create(struct fl_dev *fl)
{
	struct iommu_domain *dom = iommu_get_domain_for_dev(fl_device(fl));
	struct mm_struct *mm = current->mm;
	struct fl_ctx *ctx;
	int ret;

	if (!mm)
		return ERR_PTR(-EINVAL);
	if (!(fl->hw_features & FL_FEAT_MMU) ||
	    !(fl->hw_features & FL_FEAT_FAULT_RING))
		return ERR_PTR(-EOPNOTSUPP);
	/* PTEs hold physical addresses: only without a translating IOMMU. */
	if (dom && dom->type != IOMMU_DOMAIN_IDENTITY)
		return ERR_PTR(-EOPNOTSUPP);

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return ERR_PTR(-ENOMEM);
	kref_init(&ctx->ref);
	mutex_init(&ctx->lock);
	spin_lock_init(&ctx->cancel_lock);
	ctx->bound_gen = U64_MAX;
	ctx->fl = fl;
	kref_get(&fl->ref);
	mmgrab(mm);
	ctx->mm = mm;

	ret = ida_alloc_max(&fl->ctx_ida, fl->num_contexts - 1, GFP_KERNEL);
	if (ret < 0) {
		ret = ret == -ENOSPC ? -EBUSY : ret;
		goto err_free;
	}
	ctx->id = ret;
	ret = -ENOMEM;
	ctx->root = fl_pt_alloc(fl, 3);
	if (!ctx->root)
		goto err_ida;
	ret = mmu_interval_notifier_insert(&ctx->notifier, mm, 0,
					   ULONG_MAX & PAGE_MASK, &fl_mirror_ops);
	if (ret)
		goto err_pt;

	mutex_lock(&ctx->lock);
	ret = fl_ctx_bind_hw(ctx);
	mutex_unlock(&ctx->lock);
	if (ret)
		goto err_notifier;

	spin_lock(&fl->ctx_lock);
	fl->ctx_table[ctx->id] = ctx;
	fl->nr_ctx++;
	spin_unlock(&fl->ctx_lock);
	return ctx;

err_notifier:
	mmu_interval_notifier_remove(&ctx->notifier);
	/* A BIND that timed out may still run: keep the tables. */
	if (ret == -ETIMEDOUT) {
		ctx->leak = true;
		fl_ctx_put(ctx);
		return ERR_PTR(ret);
	}
err_pt:
	fl_pt_free(fl, ctx->root, 3);
	ctx->root = NULL;
err_ida:
	ida_free(&fl->ctx_ida, ctx->id);
err_free:
	mmdrop(mm);
	kfree(ctx);
	kref_put(&fl->ref, fl_release_dev);
	return ERR_PTR(ret);
}

/*
 * Release: forget the id (faults for it are ignored from now), UNBIND (the
 * device fails the context's stalled jobs), remove the notifier (waits for a
 * callback in progress), then drop the file's reference; the tables go with
 * the last one. Tables are freed only when the device is known not to walk
 * them any more: UNBIND completed, or a reset came after the BIND.
 */
static void fl_ctx_destroy(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_cmd cmd = { .opcode = FL_OP_UNBIND, .context = ctx->id };
	int err = 0;

	spin_lock(&fl->ctx_lock);
	fl->ctx_table[ctx->id] = NULL;
	fl->nr_ctx--;
	spin_unlock(&fl->ctx_lock);

	down_read(&fl->io_rwsem);
	mutex_lock(&ctx->lock);
	if (ctx->bound_gen == READ_ONCE(fl->generation)) {
		err = test_bit(FL_FLAG_DEAD, &fl->flags) ? -ENODEV :
		      fl_exec(fl, &cmd, 1, FLS_NOINTR);
		if (err && READ_ONCE(fl->generation) != ctx->bound_gen &&
		    !test_bit(FL_FLAG_DEAD, &fl->flags))
			err = 0;	/* a reset unbound it */
	}
	ctx->bound_gen = U64_MAX;
	if (err && !READ_ONCE(fl->hw_stopped))
		ctx->leak = true;
	mutex_unlock(&ctx->lock);
	up_read(&fl->io_rwsem);

	mmu_interval_notifier_remove(&ctx->notifier);
	fl_ctx_put(ctx);
}

static struct fl_ctx *fl_file_ctx(struct fl_file *ff, bool create)
{
	struct fl_ctx *ctx;

	mutex_lock(&ff->bind_mutex);
	ctx = ff->ctx;
	if (!ctx && create) {
		ctx = fl_ctx_create(ff->fl);
		if (!IS_ERR(ctx))
			ff->ctx = ctx;
	}
	mutex_unlock(&ff->bind_mutex);
	if (!ctx)
		return ERR_PTR(-ENXIO);
	if (!IS_ERR(ctx) && ctx->mm != current->mm)
		return ERR_PTR(-EINVAL);
	return ctx;
}

static void fl_ctx_log_cancel(struct fl_ctx *ctx, u64 va, int err)
{
	unsigned int slot;

	spin_lock(&ctx->cancel_lock);
	slot = ctx->cancel_seq % FL_CANCEL_LOG;
	ctx->cancel_log[slot].seq = ++ctx->cancel_seq;
	ctx->cancel_log[slot].va = va;
	ctx->cancel_log[slot].err = err;
	spin_unlock(&ctx->cancel_lock);
}

static u64 fl_ctx_cancel_seq(struct fl_ctx *ctx)
{
	u64 seq;

	spin_lock(&ctx->cancel_lock);
	seq = ctx->cancel_seq;
	spin_unlock(&ctx->cancel_lock);
	return seq;
}

static bool fl_in(u64 va, u64 start, u64 len)
{
	return len && va + PAGE_SIZE > start && va < start + len;
}

/* Why a job was cancelled: -EPERM if a cancel after @seq0 in its ranges says so. */
static int fl_ctx_cancel_errno(struct fl_ctx *ctx, u64 seq0, u64 src,
			       u64 slen, u64 dst, u64 dlen)
{
	int err = -EFAULT;
	unsigned int i;

	spin_lock(&ctx->cancel_lock);
	for (i = 0; i < FL_CANCEL_LOG; i++) {
		if (ctx->cancel_log[i].seq <= seq0)
			continue;
		if (!fl_in(ctx->cancel_log[i].va, src, slen) &&
		    !fl_in(ctx->cancel_log[i].va, dst, dlen))
			continue;
		if (ctx->cancel_log[i].err == -EPERM)
			err = -EPERM;
	}
	spin_unlock(&ctx->cancel_lock);
	return err;
}

/* ---------------------------------------------------------------------- */
/* Fault servicing */

/*
 * The fault worker (fl->fault_work on fl->fault_wq, queued by the FL_VEC_FAULT
 * handler) services the fault ring in batches, under fault_mutex:
 *  1. fetch up to fault_batch entries from GET to the written-back PUT,
 *     clearing FL_FAULT_VALID of each;
 *  2. sort by (context, page, access descending) and merge entries of the
 *     same page (the most intrusive access first, the mask of all of them);
 *  3. per context: skip pages whose device PTE already allows every access
 *     (a fault the previous batch serviced, re-posted by its replay); take
 *     the mm (mmget_not_zero; gone: cancel everything), then per window:
 *  4. a window is the 2 MiB-aligned block of its first fault clipped to the
 *     fault's VMA (at most 512 pages) and takes every later fault of the
 *     batch inside it. The canonical sequence: mmu_interval_read_begin() ->
 *     mmap_read_lock -> vma_lookup + permission checks -> hmm_range_fault()
 *     (HMM_PFN_REQ_FAULT on the faulting pages, HMM_PFN_REQ_WRITE on those
 *     with a write or atomic fault, nothing on the others, whose current CPU
 *     state is mapped as well when present) -> unlock -> -EBUSY: retry ->
 *     ctx->lock -> mmu_interval_read_retry(): collided, retry -> write the
 *     PTEs (2 MiB leaves where the CPU maps the whole block with a PMD) ->
 *     unlock. Retries are bounded by HMM_RANGE_DEFAULT_TIMEOUT per window;
 *     then the window is left alone and its faults come back on the replay,
 *     which is idempotent, so there is no livelock and no spurious failure.
 *     No VMA, PROT_NONE, VM_IO/VM_PFNMAP or a failing hmm_range_fault() of a
 *     single page: CANCEL every access of the page (-EFAULT). A write or
 *     atomic fault in a VMA without VM_WRITE: CANCEL write|atomic only
 *     (-EPERM) and service the page's read faults;
 *  5. queue, in this order: INVALIDATE of the span of PTEs that changed
 *     while valid (permission upgrades: the TLB may hold the old ones), the
 *     CANCELs, one REPLAY per context of the batch (REPLAY of all contexts
 *     when the ring overflowed: stalled lanes without an entry), and wait;
 *  6. write FL_REG_FR_GET: frees the slots and re-arms the interrupt, which
 *     the device raises again if PUT moved meanwhile.
 * At most FL_MAX_BATCHES batches per run, then the work re-queues itself.
 */
#define FL_BATCH_LIMIT		1024
#define FL_MAX_BATCHES		16

static int fl_fault_cmp(const void *a, const void *b)
{
	const struct fl_fault_rec *x = a, *y = b;

	if (x->ctx != y->ctx)
		return x->ctx < y->ctx ? -1 : 1;
	if (x->va != y->va)
		return x->va < y->va ? -1 : 1;
	return (int)y->access - (int)x->access;
}

static u32 fl_fault_fetch(struct fl_dev *fl, struct fl_fault_rec *f, u32 cap,
			  bool *full)
{
	const u32 mask = fl->fr_size - 1;
	u32 put = READ_ONCE(fl->wb->fr_put), n = 0;

	dma_rmb();	/* the entries before PUT were written before it */
	*full = put - fl->fr_get == fl->fr_size;
	if (put - fl->fr_get > fl->fr_size) {
		dev_err_ratelimited(fl_device(fl), "%s: fault-ring PUT %u is more than the ring ahead of GET %u\n",
				    fl->name, put, fl->fr_get);
		return 0;
	}
	while (fl->fr_get != put && n < cap) {
		struct fl_fault *e = &fl->fr[fl->fr_get & mask];
		u8 access;

		if (!(READ_ONCE(e->info) & FL_FAULT_VALID))
			break;
		dma_rmb();	/* the body after the valid bit */
		access = min_t(u8, READ_ONCE(e->access), FL_ACCESS_ATOMIC);
		f[n++] = (struct fl_fault_rec) {
			.va = READ_ONCE(e->va) & PAGE_MASK,
			.ctx = READ_ONCE(e->context),
			.access = access,
			.mask = FL_ACC_BIT(access),
		};
		WRITE_ONCE(e->info, 0);
		fl->fr_get++;
	}
	return n;
}

static void fl_fault_cancel(struct fl_fault_rec *f, u8 mask, int err)
{
	f->cancel = f->mask & mask;
	f->err = err;
	f->done = 1;
}

/* The device PTE already allows every access of @f. ctx->lock. */
static bool fl_pt_satisfies(struct fl_ctx *ctx, const struct fl_fault_rec *f)
{
	bool huge;
	u64 e = fl_pt_lookup(ctx, f->va, &huge);

	if (!(e & FL_PTE_VALID) || !(e & FL_PTE_READ))
		return false;
	if ((f->mask & FL_ACC_BIT(FL_ACCESS_WRITE)) && !(e & FL_PTE_WRITE))
		return false;
	if ((f->mask & FL_ACC_BIT(FL_ACCESS_ATOMIC)) && !(e & FL_PTE_ATOMIC))
		return false;
	return true;
}

static u64 fl_leaf(unsigned long hpfn)
{
	u64 e = PFN_PHYS(hpfn & ~HMM_PFN_FLAGS) | FL_PTE_VALID | FL_PTE_READ;

	if (hpfn & HMM_PFN_WRITE)
		e |= FL_PTE_WRITE | FL_PTE_ATOMIC;
	return e;
}

/*
 * The CPU maps the page of @p with a PMD (hmm_pfn_to_map_order()): the
 * whole naturally aligned 2 MiB block around @va is one physically
 * contiguous, aligned page with the same permissions. Returns the block's
 * first PFN, or 0 if it cannot be mapped by one device PTE (the block must
 * lie inside the VMA [@vs, @ve)).
 */
static unsigned long fl_hmm_huge_pfn(unsigned long p, u64 va, u64 vs, u64 ve)
{
	u64 block = ALIGN_DOWN(va, FL_HUGE_SIZE);
	unsigned long pfn = p & ~HMM_PFN_FLAGS;

	if (!(p & HMM_PFN_VALID) || (p & HMM_PFN_ERROR) ||
	    hmm_pfn_to_map_order(p) < ilog2(FL_HUGE_PAGES) ||
	    block < vs || block + FL_HUGE_SIZE > ve)
		return 0;
	pfn -= (va - block) >> PAGE_SHIFT;
	return IS_ALIGNED(pfn, FL_HUGE_PAGES) ? pfn : 0;
}

/*
 * Write the PTEs of a window [ws, we) of the VMA [vs, ve) from
 * hmm_range_fault()'s results: a 2 MiB leaf where the CPU maps the whole
 * block with a PMD, else a 4 KiB leaf for each valid page. ctx->lock.
 */
static void fl_window_map(struct fl_dev *fl, struct fl_ctx *ctx, u64 ws,
			  u64 we, u64 vs, u64 ve, const unsigned long *pfns,
			  struct fl_span *changed)
{
	u64 va = ws;

	while (va < we) {
		unsigned long p = pfns[(va - ws) >> PAGE_SHIFT];
		unsigned long hpfn = fl_hmm_huge_pfn(p, va, vs, ve);
		struct fl_span sp = {};

		if (hpfn) {
			p = hpfn | (p & HMM_PFN_WRITE);
			va = ALIGN_DOWN(va, FL_HUGE_SIZE);
			if (fl_pt_set(ctx, va, fl_leaf(p) | FL_PTE_LEAF, true, &sp) > 0)
				atomic64_inc(&fl->fst.huge_mapped);
			va += FL_HUGE_SIZE;
		} else {
			if ((p & HMM_PFN_VALID) && !(p & HMM_PFN_ERROR) &&
			    fl_pt_set(ctx, va, fl_leaf(p), false, &sp) > 0)
				atomic64_inc(&fl->fst.pages_mapped);
			va += PAGE_SIZE;
		}
		if (sp.start < sp.end) {
			atomic64_inc(&fl->fst.upgrades);
			fl_span_add(changed, sp.start, sp.end);
		}
	}
}

/*
 * Service the window that starts with the fault @f[0] (see the worker's
 * comment, step 4). Returns how many records of @f it consumed (>= 1).
 */
static u32 fl_service_window(struct fl_dev *fl, struct fl_ctx *ctx,
			     struct fl_fault_rec *f, u32 n,
			     struct fl_span *changed)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	unsigned long *pfns = fl->hmm_pfns;
	struct hmm_range range = {
		.notifier = &ctx->notifier,
		.hmm_pfns = pfns,
		.pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE,
	};
	struct mm_struct *mm = ctx->mm;
	struct vm_area_struct *vma;
	bool single = false;
	u64 hstart, ws, we, vs, ve, last = 0;
	u32 k, i;
	int ret;

	atomic64_inc(&fl->fst.windows);
again:
	if (fl_pt_prealloc(ctx))
		return 1;	/* no memory now: the replay brings it back */
	range.notifier_seq = mmu_interval_read_begin(&ctx->notifier);
	mmap_read_lock(mm);
	vma = vma_lookup(mm, f[0].va);
	if (!vma || (vma->vm_flags & (VM_IO | VM_PFNMAP)) ||
	    !(vma->vm_flags & VM_READ)) {
		mmap_read_unlock(mm);
		fl_fault_cancel(&f[0], FL_ACC_ALL, -EFAULT);
		return 1;
	}
	vs = vma->vm_start;
	ve = vma->vm_end;
	hstart = ALIGN_DOWN(f[0].va, FL_HUGE_SIZE);
	ws = max_t(u64, vs, hstart);
	we = min_t(u64, ve, hstart + FL_HUGE_SIZE);
	if (single) {
		ws = f[0].va;
		we = ws + PAGE_SIZE;
	}
	memset(pfns, 0, ((we - ws) >> PAGE_SHIFT) * sizeof(*pfns));
	range.start = ws;
	for (k = 0; k < n && f[k].va < we; k++) {
		unsigned long req = HMM_PFN_REQ_FAULT;

		if (f[k].done)
			continue;
		f[k].cancel = 0;
		if (f[k].mask & FL_ACC_WRITES) {
			if (vma->vm_flags & VM_WRITE) {
				req |= HMM_PFN_REQ_WRITE;
			} else {
				f[k].cancel = f[k].mask & FL_ACC_WRITES;
				f[k].err = -EPERM;
				if (!(f[k].mask & ~FL_ACC_WRITES))
					continue;	/* nothing left to service */
			}
		}
		pfns[(f[k].va - ws) >> PAGE_SHIFT] = req;
		last = f[k].va + PAGE_SIZE;
	}
	/*
	 * hmm_range_fault() faults every page from the first one it must
	 * fault (from the start of an empty page table) to the end of the
	 * range: a window from the block's start to its end prefetches the
	 * block (module parameter prefetch, default); one from the first to
	 * the last fault keeps it from populating memory the device never
	 * touches, but the gaps between faults.
	 */
	if (!READ_ONCE(fault_prefetch) && last > ws) {
		ws = f[0].va;
		we = last;
		memmove(pfns, pfns + ((f[0].va - range.start) >> PAGE_SHIFT),
			((we - ws) >> PAGE_SHIFT) * sizeof(*pfns));
	}
	range.start = ws;
	range.end = we;
	ret = hmm_range_fault(&range);
	mmap_read_unlock(mm);
	if (ret == -EBUSY)
		goto retry;
	if (ret) {
		if (!single && k > 1) {
			single = true;	/* find the page that fails */
			goto again;
		}
		fl_fault_cancel(&f[0], FL_ACC_ALL, ret == -EPERM ? -EPERM : -EFAULT);
		return 1;
	}

	mutex_lock(&ctx->lock);
	if (mmu_interval_read_retry(&ctx->notifier, range.notifier_seq)) {
		mutex_unlock(&ctx->lock);
		goto retry;
	}
	fl_window_map(fl, ctx, ws, we, vs, ve, pfns, changed);
	mutex_unlock(&ctx->lock);
	for (i = 0; i < k; i++)
		f[i].done = 1;
	return k;

retry:
	atomic64_inc(&fl->fst.retries);
	if (time_after(jiffies, timeout)) {
		/* Leave it: the faults come back after the REPLAY. */
		atomic64_inc(&fl->fst.retry_timeouts);
		for (i = 0; i < k; i++)
			f[i].cancel = 0;
		return max(k, 1U);
	}
	goto again;
}

static void fl_service_ctx(struct fl_dev *fl, struct fl_ctx *ctx,
			   struct fl_fault_rec *f, u32 n, struct fl_span *changed)
{
	u32 i, dups = 0;

	mutex_lock(&ctx->lock);
	for (i = 0; i < n; i++) {
		if (fl_pt_satisfies(ctx, &f[i])) {
			f[i].done = 1;
			dups++;
		}
	}
	mutex_unlock(&ctx->lock);
	atomic64_add(dups, &fl->fst.duplicates);

	if (!mmget_not_zero(ctx->mm)) {
		for (i = 0; i < n; i++)
			if (!f[i].done)
				fl_fault_cancel(&f[i], FL_ACC_ALL, -EFAULT);
		return;
	}
	for (i = 0; i < n; ) {
		if (f[i].done)
			i++;
		else
			i += fl_service_window(fl, ctx, f + i, n - i, changed);
	}
	mmput(ctx->mm);
}

/* One batch; true if more entries are pending. fault_mutex held. */
static bool fl_fault_batch(struct fl_dev *fl)
{
	struct fl_fault_rec *f = fl->fbatch;
	struct fl_cmd *cmds = fl->fcmds;
	u32 n, m, i, j, k, nc = 0, ov;
	bool overflow, full;
	int err;

	lockdep_assert_held(&fl->fault_mutex);
	ov = READ_ONCE(fl->wb->fr_overflows);
	overflow = ov != fl->fr_overflows;
	if (overflow) {
		atomic64_add(ov - fl->fr_overflows, &fl->fst.overflows);
		fl->fr_overflows = ov;
	}
	n = fl_fault_fetch(fl, f, clamp_t(u32, READ_ONCE(fault_batch), 1,
					  FL_BATCH_LIMIT), &full);
	if (!n && !overflow)
		goto rearm;
	atomic64_add(n, &fl->fst.faults);
	atomic64_inc(&fl->fst.batches);

	sort(f, n, sizeof(*f), fl_fault_cmp, NULL);
	for (i = 0, m = 0; i < n; i++) {
		if (m && f[m - 1].ctx == f[i].ctx && f[m - 1].va == f[i].va) {
			f[m - 1].mask |= f[i].mask;
			atomic64_inc(&fl->fst.duplicates);
			continue;
		}
		f[m++] = f[i];
	}

	for (i = 0; i < m; i = j) {
		struct fl_span changed = {};
		struct fl_ctx *ctx;

		for (j = i + 1; j < m && f[j].ctx == f[i].ctx; j++)
			;
		ctx = fl_ctx_get(fl, f[i].ctx);
		if (!ctx) {
			/* Unbound since: UNBIND failed its stalled jobs. */
			atomic64_add(j - i, &fl->fst.stale);
			continue;
		}
		fl_service_ctx(fl, ctx, f + i, j - i, &changed);
		if (changed.start < changed.end) {
			cmds[nc++] = (struct fl_cmd) {
				.opcode = FL_OP_INVALIDATE,
				.context = ctx->id,
				.args = { changed.start, changed.end - changed.start },
			};
			atomic64_inc(&fl->fst.invalidations);
		}
		for (k = i; k < j; k++) {
			if (!f[k].cancel)
				continue;
			cmds[nc++] = (struct fl_cmd) {
				.opcode = FL_OP_CANCEL,
				.context = ctx->id,
				.args = { f[k].va, f[k].cancel },
			};
			fl_ctx_log_cancel(ctx, f[k].va, f[k].err);
			atomic64_inc(&fl->fst.cancels);
		}
		if (!overflow) {
			cmds[nc++] = (struct fl_cmd) {
				.opcode = FL_OP_REPLAY,
				.context = ctx->id,
			};
			atomic64_inc(&fl->fst.replays);
		}
		fl_ctx_put(ctx);
	}
	/* Rule 3: every batch ends with a REPLAY, even one of stale entries. */
	if (overflow || !nc) {
		cmds[nc++] = (struct fl_cmd) {
			.opcode = FL_OP_REPLAY,
			.context = FL_CONTEXT_ALL,
		};
		atomic64_inc(&fl->fst.replays);
	}
	if (nc) {
		err = fl_exec(fl, cmds, nc, FLS_NOINTR);
		if (err)
			dev_dbg_ratelimited(fl_device(fl), "%s: fault batch commands: %d\n",
					    fl->name, err);
	}
	writel(fl->fr_get, fl->regs + FL_REG_FR_GET);
	/*
	 * A full ring may overflow until the device has seen the new GET, and
	 * if this batch took every entry up to that full PUT, the device would
	 * not re-raise the interrupt (PUT == GET) for the dropped faults: read
	 * a register (answered after the posted GET write) and look at the
	 * overflow count again.
	 */
	if (full)
		readl(fl->regs + FL_REG_FR_PUT);
	return READ_ONCE(fl->wb->fr_put) != fl->fr_get ||
	       READ_ONCE(fl->wb->fr_overflows) != fl->fr_overflows;
rearm:
	writel(fl->fr_get, fl->regs + FL_REG_FR_GET);
	return false;
}

static void fl_fault_work(struct work_struct *work)
{
	struct fl_dev *fl = container_of(work, struct fl_dev, fault_work);
	unsigned int batches = 0;

	atomic64_inc(&fl->fst.worker_runs);
	mutex_lock(&fl->fault_mutex);
	while (fl->fr_size && !fl_usable(fl) && fl_fault_batch(fl)) {
		if (++batches >= FL_MAX_BATCHES) {
			queue_work(fl->fault_wq, &fl->fault_work);
			break;
		}
	}
	mutex_unlock(&fl->fault_mutex);
}

/*
 * Program the fault ring (from fl_hw_init(), reset_mutex held): GET = PUT =
 * 0, the ring's memory cleared, the interrupt armed by the enable. Its size
 * is the fr_entries parameter at this moment, so a test can shrink it and
 * reset to provoke overflows. fault_mutex keeps the worker out meanwhile.
 */
static void fl_fr_program(struct fl_dev *fl)
{
	u32 size = clamp_t(u32, READ_ONCE(fr_entries), FL_FR_MIN_ENTRIES,
			   fl->fr_alloc);

	lockdep_assert_held(&fl->reset_mutex);
	size = rounddown_pow_of_two(size);
	mutex_lock(&fl->fault_mutex);
	memset(fl->fr, 0, (size_t)fl->fr_alloc * FL_FAULT_SIZE);
	fl->fr_size = size;
	fl->fr_get = 0;
	fl->fr_overflows = 0;
	fl_write_addr(fl, FL_REG_FR_BASE_LO, fl->fr_dma);
	writel(size, fl->regs + FL_REG_FR_SIZE);
	writel(min_t(u32, READ_ONCE(fr_irq_delay_us), FL_FR_IRQ_DELAY_MAX),
	       fl->regs + FL_REG_FR_IRQ_DELAY);
	writel(FL_FR_CTRL_ENABLE, fl->regs + FL_REG_FR_CONTROL);
	mutex_unlock(&fl->fault_mutex);
}

/* ---------------------------------------------------------------------- */
/* Job records */

/* Free the orphaned records; all of them once the device has been reset. */
static void fl_orphans_free(struct fl_dev *fl, bool all)
{
	struct fl_orphan *o, *tmp;
	LIST_HEAD(done);

	spin_lock(&fl->orphan_lock);
	list_for_each_entry_safe(o, tmp, &fl->orphans, node) {
		if (all || READ_ONCE(o->rec->status))
			list_move(&o->node, &done);
	}
	spin_unlock(&fl->orphan_lock);
	list_for_each_entry_safe(o, tmp, &done, node) {
		dma_pool_free(fl->compl_pool, o->rec, o->dma);
		kfree(o);
	}
}

/* The device may still write @rec: keep it until it has, or a reset. */
static void fl_orphan(struct fl_dev *fl, struct fl_completion *rec,
		      dma_addr_t dma)
{
	struct fl_orphan *o = kmalloc(sizeof(*o), GFP_KERNEL | __GFP_NOFAIL);

	o->rec = rec;
	o->dma = dma;
	spin_lock(&fl->orphan_lock);
	list_add_tail(&o->node, &fl->orphans);
	spin_unlock(&fl->orphan_lock);
}

struct fl_job_wait {
	const struct fl_completion *rec;
	u64 gen;
};

static bool fl_job_ready(struct fl_dev *fl, const void *arg)
{
	const struct fl_job_wait *w = arg;

	return READ_ONCE(w->rec->status) || fl_gen_moved(fl, &w->gen);
}

/* Wait for a job record, interruptibly, for at most @ms. */
static int fl_job_wait(struct fl_dev *fl, struct fl_job_wait *w, unsigned int ms)
{
	long ret = wait_event_interruptible_timeout(fl->wq, fl_job_ready(fl, w),
						    msecs_to_jiffies(ms));

	if (ret < 0)
		return -EINTR;
	return fl_job_ready(fl, w) ? 0 : -ETIMEDOUT;
}

static const u8 fl_job_opcode[] = {
	[FL_JOBOP_FILL] = FL_OP_JOB_FILL,
	[FL_JOBOP_COPY] = FL_OP_JOB_COPY,
	[FL_JOBOP_CHECKSUM] = FL_OP_JOB_CHECKSUM,
	[FL_JOBOP_ATOMIC_ADD] = FL_OP_JOB_ATOMIC_ADD,
};

static bool fl_user_range_ok(u64 va, u64 len)
{
	return va + len >= va && va + len <= min_t(u64, TASK_SIZE, FL_VA_LIMIT);
}

static long fl_ioc_job(struct fl_file *ff, void __user *uarg)
{
	struct fl_dev *fl = ff->fl;
	struct fl_completion *rec;
	struct fl_request req;
	struct fl_job_wait w;
	struct fl_ioc_job a;
	struct fl_ctx *ctx;
	dma_addr_t rec_dma;
	struct fl_cmd cmd;
	u64 slen = 0, dlen = 0, cseq, t0;
	int err, ret, status;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!a.op || a.op >= ARRAY_SIZE(fl_job_opcode) || a.flags ||
	    a.pattern > FL_JOBPAT_RANDOM || a.engine > 0xff || a.lanes > 0xff ||
	    a.chunk > U32_MAX || !a.len ||
	    !fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;
	if (a.op == FL_JOBOP_COPY || a.op == FL_JOBOP_CHECKSUM)
		slen = a.len;
	if (a.op != FL_JOBOP_CHECKSUM)
		dlen = a.len;
	if ((slen && !fl_user_range_ok(a.src, slen)) ||
	    (dlen && !fl_user_range_ok(a.dst, dlen)))
		return -EFAULT;

	ctx = fl_file_ctx(ff, true);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	fl_orphans_free(fl, false);

	mutex_lock(&ctx->lock);
	err = 0;
	if (ctx->bound_gen != READ_ONCE(fl->generation))
		err = fl_ctx_bind_hw(ctx);	/* the device was reset */
	mutex_unlock(&ctx->lock);
	if (err)
		return err;

	rec = dma_pool_zalloc(fl->compl_pool, GFP_KERNEL, &rec_dma);
	if (!rec)
		return -ENOMEM;
	cmd = (struct fl_cmd) {
		.opcode = fl_job_opcode[a.op],
		.flags = FL_CMD_F_IRQ,
		.context = ctx->id,
		.args = { a.src, a.dst, a.len, a.value, rec_dma,
			  a.pattern | a.engine << 8 | a.lanes << 16 | a.chunk << 32 },
	};
	cseq = fl_ctx_cancel_seq(ctx);
	w = (struct fl_job_wait) { .rec = rec, .gen = READ_ONCE(fl->generation) };
	t0 = ktime_get_ns();

	/*
	 * The job's record comes after its completion fence (which only says
	 * the job started), so wait for the record first, then reap the fence.
	 */
	down_read(&fl->excl_rwsem);
	err = fl_submit(fl, &cmd, 1, 0, &req);
	if (!err) {
		err = fl_job_wait(fl, &w, READ_ONCE(job_timeout_ms));
		ret = fl_wait_request(fl, &req);
		if (!err && ret && !READ_ONCE(rec->status))
			err = ret;
	}
	up_read(&fl->excl_rwsem);
	if (err == -ETIMEDOUT) {
		/* Stuck: fail this context's stalled jobs, then wait a bit. */
		struct fl_cmd c = { .opcode = FL_OP_CANCEL_ALL, .context = ctx->id };

		dev_warn_ratelimited(fl_device(fl), "%s: job on context %u not done after %u ms: cancelling the context's stalled jobs\n",
				     fl->name, ctx->id, READ_ONCE(job_timeout_ms));
		if (!fl_exec(fl, &c, 1, FLS_NOINTR))
			fl_job_wait(fl, &w, 1000);
	}
	a.elapsed_ns = ktime_get_ns() - t0;

	status = READ_ONCE(rec->status);
	if (!status) {
		if (fl_gen_moved(fl, &w.gen) && !test_bit(FL_FLAG_DEAD, &fl->flags)) {
			/* Reset before the job ran or wrote its record. */
			dma_pool_free(fl->compl_pool, rec, rec_dma);
			return err == -EINTR ? -EINTR : -EIO;
		}
		fl_orphan(fl, rec, rec_dma);
		return err ?: -EIO;
	}
	dma_rmb();	/* status is written last */
	a.status = status;
	a.bytes = rec->bytes;
	a.result = rec->result;
	a.faults = rec->faults;
	a.replays = rec->replays;
	a.context = ctx->id;
	dma_pool_free(fl->compl_pool, rec, rec_dma);

	switch (status) {
	case FL_JOB_OK:
		err = 0;
		break;
	case FL_JOB_CANCELLED:
		err = err == -ETIMEDOUT ? err :
		      fl_ctx_cancel_errno(ctx, cseq, a.src, slen, a.dst, dlen);
		break;
	case FL_JOB_INVALID:
		err = -EINVAL;
		break;
	case FL_JOB_DMA_ERROR:
	case FL_JOB_PT_ERROR:
		dev_err_ratelimited(fl_device(fl), "%s: job on context %u failed with device status %d\n",
				    fl->name, ctx->id, status);
		err = -EIO;
		break;
	default:
		err = -EIO;
		break;
	}
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return err;
}

static long fl_ioc_bind(struct fl_file *ff, void __user *uarg)
{
	struct fl_ioc_bind a;
	struct fl_ctx *ctx;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!fl_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;
	ctx = fl_file_ctx(ff, true);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	a.context = ctx->id;
	a.generation = ctx->bound_gen;
	return copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
}

#define FL_SNAP_CHUNK		512
#define FL_SNAP_MAX		(1ULL << 20)

static long fl_ioc_snapshot(struct fl_file *ff, void __user *uarg)
{
	struct fl_ioc_snapshot a;
	struct fl_ctx *ctx;
	u8 *buf;
	u64 done = 0;
	long err = 0;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!fl_zero(a.reserved, ARRAY_SIZE(a.reserved)) ||
	    !PAGE_ALIGNED(a.addr) || a.npages > FL_SNAP_MAX ||
	    !fl_user_range_ok(a.addr, a.npages << PAGE_SHIFT))
		return -EINVAL;
	ctx = fl_file_ctx(ff, false);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	buf = kmalloc(FL_SNAP_CHUNK, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	a.valid = 0;
	a.huge = 0;
	while (done < a.npages) {
		u32 k, n = min_t(u64, a.npages - done, FL_SNAP_CHUNK);

		mutex_lock(&ctx->lock);
		for (k = 0; k < n; k++) {
			bool huge;
			u64 e = fl_pt_lookup(ctx, a.addr + ((done + k) << PAGE_SHIFT),
					     &huge);
			u8 b = 0;

			if (e & FL_PTE_VALID) {
				b = FL_SNAP_VALID;
				b |= e & FL_PTE_READ ? FL_SNAP_READ : 0;
				b |= e & FL_PTE_WRITE ? FL_SNAP_WRITE : 0;
				b |= e & FL_PTE_ATOMIC ? FL_SNAP_ATOMIC : 0;
				b |= huge ? FL_SNAP_HUGE : 0;
				a.valid++;
				a.huge += huge;
			}
			buf[k] = b;
		}
		mutex_unlock(&ctx->lock);
		if (copy_to_user(u64_to_user_ptr(a.ptr + done), buf, n)) {
			err = -EFAULT;
			break;
		}
		done += n;
	}
	kfree(buf);
	if (!err && copy_to_user(uarg, &a, sizeof(a)))
		err = -EFAULT;
	return err;
}

static long fl_ioc_fault_stats(struct fl_dev *fl, void __user *uarg)
{
	struct fl_ioc_fault_stats a = {};

	a.faults = atomic64_read(&fl->fst.faults);
	a.batches = atomic64_read(&fl->fst.batches);
	a.duplicates = atomic64_read(&fl->fst.duplicates);
	a.windows = atomic64_read(&fl->fst.windows);
	a.retries = atomic64_read(&fl->fst.retries);
	a.retry_timeouts = atomic64_read(&fl->fst.retry_timeouts);
	a.cancels = atomic64_read(&fl->fst.cancels);
	a.invalidations = atomic64_read(&fl->fst.invalidations);
	a.replays = atomic64_read(&fl->fst.replays);
	a.overflows = atomic64_read(&fl->fst.overflows);
	a.pages_mapped = atomic64_read(&fl->fst.pages_mapped);
	a.huge_mapped = atomic64_read(&fl->fst.huge_mapped);
	a.upgrades = atomic64_read(&fl->fst.upgrades);
	a.notifier_calls = atomic64_read(&fl->fst.notifier_calls);
	a.notifier_clears = atomic64_read(&fl->fst.notifier_clears);
	a.notifier_busy = atomic64_read(&fl->fst.notifier_busy);
	a.worker_runs = atomic64_read(&fl->fst.worker_runs);
	a.irqs = atomic64_read(&fl->irqs[FL_VEC_FAULT]);
	a.stale = atomic64_read(&fl->fst.stale);
	spin_lock(&fl->ctx_lock);
	a.contexts = fl->nr_ctx;
	spin_unlock(&fl->ctx_lock);
	return copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
}

/* ---------------------------------------------------------------------- */
/* ioctls */

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
	int err = fl_wait_cond(fl, fl_idle_ready, NULL, FL_POLL_NS, true);

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
	struct fl_file *ff = file->private_data;
	struct fl_dev *fl = ff->fl;
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
	case FL_IOC_BIND:
		ret = fl_ioc_bind(ff, uarg);
		break;
	case FL_IOC_JOB:
		ret = fl_ioc_job(ff, uarg);
		break;
	case FL_IOC_FAULT_STATS:
		ret = fl_ioc_fault_stats(fl, uarg);
		break;
	case FL_IOC_SNAPSHOT:
		ret = fl_ioc_snapshot(ff, uarg);
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
	struct fl_file *ff = kzalloc(sizeof(*ff), GFP_KERNEL);

	if (!ff)
		return -ENOMEM;
	kref_get(&fl->ref);
	ff->fl = fl;
	mutex_init(&ff->bind_mutex);
	file->private_data = ff;
	return 0;
}

static int fl_release(struct inode *inode, struct file *file)
{
	struct fl_file *ff = file->private_data;
	struct fl_dev *fl = ff->fl;

	if (ff->ctx)
		fl_ctx_destroy(ff->ctx);
	mutex_destroy(&ff->bind_mutex);
	kfree(ff);
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

	fl->fr_alloc = max_t(u32, 1024, rounddown_pow_of_two(clamp_t(u32, fr_entries,
				FL_FR_MIN_ENTRIES, FL_FR_MAX_ENTRIES)));
	fl->fr = dma_alloc_coherent(dev, (size_t)fl->fr_alloc * FL_FAULT_SIZE,
				    &fl->fr_dma, GFP_KERNEL);
	fl->fbatch = kvcalloc(FL_BATCH_LIMIT, sizeof(*fl->fbatch), GFP_KERNEL);
	fl->fcmds = kvcalloc(3 * FL_BATCH_LIMIT + 1, sizeof(*fl->fcmds), GFP_KERNEL);
	fl->hmm_pfns = kvcalloc(FL_HUGE_PAGES, sizeof(*fl->hmm_pfns), GFP_KERNEL);
	fl->ctx_table = kcalloc(max(fl->num_contexts, 1U), sizeof(*fl->ctx_table),
				GFP_KERNEL);
	fl->compl_pool = dma_pool_create("faultline-job", dev, FL_COMPL_SIZE,
					 FL_COMPL_SIZE, 0);
	if (!fl->fr || !fl->fbatch || !fl->fcmds || !fl->hmm_pfns ||
	    !fl->ctx_table || !fl->compl_pool) {
		fl_free_dma(fl);
		return -ENOMEM;
	}
	return 0;
}

static void fl_free_dma(struct fl_dev *fl)
{
	struct device *dev = fl_device(fl);

	fl_orphans_free(fl, true);
	dma_pool_destroy(fl->compl_pool);
	kfree(fl->ctx_table);
	kvfree(fl->hmm_pfns);
	kvfree(fl->fcmds);
	kvfree(fl->fbatch);
	if (fl->fr)
		dma_free_coherent(dev, (size_t)fl->fr_alloc * FL_FAULT_SIZE,
				  fl->fr, fl->fr_dma);

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
	mutex_init(&fl->fault_mutex);
	spin_lock_init(&fl->sq_lock);
	spin_lock_init(&fl->ctx_lock);
	spin_lock_init(&fl->orphan_lock);
	INIT_LIST_HEAD(&fl->orphans);
	ida_init(&fl->ctx_ida);
	INIT_WORK(&fl->fault_work, fl_fault_work);
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
	fl->fault_wq = alloc_workqueue("%s-fault", WQ_UNBOUND | WQ_HIGHPRI, 1,
				       fl->name);
	if (!fl->fault_wq) {
		ret = -ENOMEM;
		goto err_dma;
	}

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
	if (fl->fault_wq)
		destroy_workqueue(fl->fault_wq);
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
	cancel_work_sync(&fl->fault_work);	/* its waits end with -ENODEV */
	down_write(&fl->io_rwsem);

	/* Disable, then reset: no more DMA or interrupts from the device. */
	writel(0, fl->regs + FL_REG_CONTROL);
	fl_hw_reset(fl);
	WRITE_ONCE(fl->hw_stopped, true);

	fl_free_irqs(fl, FL_VEC_ERROR + 1);
	pci_free_irq_vectors(pdev);
	destroy_workqueue(fl->fault_wq);	/* a late run sees FL_FLAG_DEAD */
	WARN_ON(!list_empty(&fl->inflight));
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
