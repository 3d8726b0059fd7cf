/* SPDX-License-Identifier: GPL-2.0 */
#ifndef FAULTLINE_DRV_H
#define FAULTLINE_DRV_H
/*
 * faultline: guest driver for the faultline GPU-like PCI device.
 *
 * Files (one concern each; this header holds the shared structures, the
 * lock order and the cross-file interfaces):
 *   main.c       module parameters, probe, remove, FLR, open/release, ioctl
 *                dispatch, FL_IOC_INFO
 *   queue.c      command submission, waits, reset and quiesce, interrupts,
 *                fl_exec() and fl_stop_translations()
 *   pagetable.c  the device page table of a context
 *   ctx.c        contexts, their binding, the mmu_interval_notifier mirror
 *   fault.c      fault-ring servicing: batches, windows, hmm_range_fault()
 *   job.c        FL_IOC_JOB and the shared-virtual-memory ioctls
 *   testioc.c    the test-only ioctls: SUBMIT with its checks, FENCE, RESET,
 *                STATS
 *   benchioc.c   the test-only FL_IOC_MIRROR_BENCH (driver-only mirror rate)
 *   debugfs.c    the counters in /sys/kernel/debug/faultline/<dev>/
 *   hmm_compat.c /dev/hmm_dmirrorN: the uAPI of the kernel's lib/test_hmm.c,
 *                served by device jobs, for the kernel's own hmm-tests
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
 * Shared virtual memory ("Shared virtual memory" below, ctx.c, fault.c): each open
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
 *         -> fault_mutex (the fetcher; fl_fr_program() under reset_mutex)
 *           -> sq_lock (spinlock, never taken in hard-IRQ context)
 *   context fault work (ctx_wq) or the fault IRQ thread after its fetch
 *   (both hold no lock of the above)
 *     -> ctx->pass_mutex (one pass of a context at a time; the IRQ
 *        thread only trylocks it)
 *       -> mmap_lock (read, or write when escalated) [-> vma write lock]
 *       -> notifier callbacks (from its own hmm_range_fault() faults)
 *       -> ctx->lock -> sq_lock
 *   the ahead work (ahead_wq; prefetch_ahead): as the context
 *   fault work, without pass_mutex
 *   any of these, with no lock held: ctx->block_mutex [-> mmap_lock]
 * ctx->lock is taken inside mmap_lock (either mode) by the invalidate
 * callbacks and by the fault work, so nothing holding ctx->lock takes
 * mmap_lock or allocates memory with reclaim (reclaim may call the
 * callbacks). The callbacks take io_rwsem only with a trylock. ctx_lock,
 * orphan_lock, cancel_lock and fq_lock are leaf spinlocks. The interrupt
 * handlers take no lock: they use atomics, WRITE_ONCE, the wait queue and
 * queue_work(); the error handler's thread takes reset_mutex only; the
 * fault handler's thread (fl_fault_irq_thread()) takes fault_mutex for a
 * fetch, releases it, then may run one pass of a context as its work would,
 * except that it never waits for mmap_lock (trylock) nor retries (see
 * "Inline passes" in fault.c).
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
#include <linux/userfaultfd_k.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "faultline_abi.h"
#include "faultline_uapi.h"

#ifndef __LITTLE_ENDIAN
#error "the device's structures are little-endian and used as native here"
#endif

/* Module parameters (main.c). */
extern unsigned int fl_cq_entries;
extern unsigned int fl_timeout_ms;
extern unsigned int fl_fr_entries;
extern unsigned int fl_fr_irq_delay_us;
extern unsigned int fl_fault_batch_max;
extern bool fl_fault_prefetch;
extern unsigned int fl_job_timeout_ms;
extern unsigned int fl_escalate_after;
extern unsigned int fl_escalate_ms;
extern unsigned int fl_prefetch_pct;
extern unsigned int fl_fault_inline;
extern bool fl_prefetch_ahead;

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
#define FLS_ASYNC		BIT(4)	/* fl_exec(): queue and return, nobody waits */

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
	/* /dev/hmm_dmirrorN (hmm_compat.c); registered and removed with misc */
	struct miscdevice hmm_misc;
	char hmm_name[24];
	bool hmm_registered;

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
	 * is held by the fetcher for a fetch, by fl_fr_program() and by
	 * fl_hw_init() around its clearing of the writeback block; it protects
	 * fr_size, fr_get, fr_overflows, fbatch and the fault-ring fields of
	 * the writeback block. Taken after reset_mutex; the fetcher never
	 * sleeps on an mm under it (servicing is the contexts' work), only on
	 * the REPLAY after an overflow, which a reset settles, so a reset never
	 * waits for it for long. Never taken with ctx->lock or mmap_lock held.
	 */
	struct mutex fault_mutex;
	struct fl_fault *fr;
	dma_addr_t fr_dma;
	u32 fr_alloc;
	u32 fr_size;			/* entries programmed; 0 = no ring */
	u32 fr_get;			/* free-running GET */
	u32 fr_overflows;		/* last FL_WB_FR_OVERFLOWS seen */
	struct fl_fault_rec *fbatch;	/* FL_BATCH_LIMIT */
	struct workqueue_struct *fault_wq;	/* the fetcher: fault_work */
	struct work_struct fault_work;
	struct workqueue_struct *ctx_wq;	/* per-context servicing, concurrent */
	struct workqueue_struct *ahead_wq;	/* unbound: population ahead */

	/*
	 * ctx_lock (spinlock, leaf): ctx_table (context id -> bound context)
	 * and nr_ctx; the worker takes a context reference under it. Context
	 * ids come from ctx_ida.
	 */
	spinlock_t ctx_lock;
	struct fl_ctx **ctx_table;
	u32 nr_ctx;
	struct ida ctx_ida;
	/*
	 * Retired context ids (ctx_lock): an id goes back to ctx_ida only once
	 * the fetcher's GET has passed the PUT read after its UNBIND, or a
	 * reset cleared the ring, so that no entry posted for the old owner
	 * is ever serviced in the mm of the next one.
	 */
	struct fl_retired {
		u32 put;
		u64 gen;
		bool held;
	} *retired;			/* num_contexts */
	/* Job completion records; orphan_lock (leaf) guards orphans. */
	struct dma_pool *compl_pool;
	spinlock_t orphan_lock;		/* leaf: orphans */
	struct list_head orphans;
	bool hw_stopped;		/* remove() has reset the device for good */

	/* Fault-servicing counters (FL_IOC_FAULT_STATS). */
	struct {
		atomic64_t faults, batches, duplicates, windows, retries;
		atomic64_t retry_timeouts, cancels, invalidations, replays;
		atomic64_t overflows, pages_mapped, huge_mapped, upgrades;
		atomic64_t notifier_calls, notifier_clears, notifier_busy;
		atomic64_t worker_runs, stale;
		atomic64_t escalations, deferrals, transient_cancels;
		atomic64_t cancels_dropped, prefetch_blocks, prefetch_pages;
		atomic64_t blocks, job_timeouts, begin_wait_ns, ctx_passes;
		atomic64_t inline_passes, inline_punts, ahead_blocks;
	} fst;

	/* Written by the interrupt handlers only (lockless, READ_ONCE). */
	u64 irq_fence;			/* highest FL_SLOT_DONE value a queue IRQ saw */
	u64 irq_fence_ns;		/* ktime_get_ns() when irq_fence last grew */
	u32 hw_error;			/* FL_REG_ERROR explained by the error thread */
	atomic64_t irqs[FL_MSIX_VECTORS];
};

static inline struct device *fl_device(struct fl_dev *fl)
{
	return &fl->pdev->dev;
}

static inline dma_addr_t fl_fence_dma(struct fl_dev *fl, unsigned int slot)
{
	return fl->aux_dma + FL_AUX_FENCES + slot * sizeof(u64);
}

static inline u64 fl_fence_read(struct fl_dev *fl, unsigned int slot)
{
	return READ_ONCE(fl->fences[slot]);
}

static inline u32 fl_wb_head(struct fl_dev *fl)
{
	return READ_ONCE(fl->wb->cq_head);
}

static inline bool fl_broken(struct fl_dev *fl)
{
	return test_bit(FL_FLAG_ERROR, &fl->flags) ||
	       test_bit(FL_FLAG_DEAD, &fl->flags);
}

/* 0 if work may be queued now. */
static inline int fl_usable(struct fl_dev *fl)
{
	if (test_bit(FL_FLAG_DEAD, &fl->flags))
		return -ENODEV;
	if (test_bit(FL_FLAG_ERROR, &fl->flags) ||
	    READ_ONCE(fl->state) != FL_STATE_RUNNING)
		return -EIO;
	return 0;
}

static inline bool fl_zero(const __u64 *v, size_t n)
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
/*
 * Spare tables: one window can need three (L2, L1, L0), and two windows may
 * be mapped at once: a pass's (or an inline pass's) and the ahead work's.
 */
#define FL_PT_SPARE		6
#define FL_HUGE_SIZE		SZ_2M
#define FL_HUGE_PAGES		(FL_HUGE_SIZE >> PAGE_SHIFT)
#define FL_VA_LIMIT		BIT_ULL(FL_VA_BITS)

struct fl_pt {
	u64 *e;			/* FL_PT_ENTRIES entries; the device reads them */
	dma_addr_t dma;
	struct fl_pt **child;	/* levels 3..1: CPU view of the next tables */
};

#define FL_CANCEL_LOG		32
#define FL_CTX_QUEUE		FL_BATCH_LIMIT	/* fetched records a context holds */
#define FL_PASS_PREFETCH	16	/* windows one pass may prefetch */
#define FL_INLINE_MAX		16	/* records the fault IRQ thread may service */
#define FL_TRANSIENT_SLOTS	16	/* pages in backoff per context */

/*
 * One naturally aligned 2 MiB block of a context's address space that the
 * device may map, with its own mmu_interval_notifier (see ctx.c, "Notifier
 * granularity"). Device PTEs exist only inside blocks that have one.
 */
struct fl_block {
	struct mmu_interval_notifier notifier;	/* [start, start + FL_HUGE_SIZE) */
	struct fl_ctx *ctx;
	u64 start;
};

/* A page whose fault failed for a reason that may pass (fault.c). */
struct fl_transient {
	u64 va;			/* 0: free slot */
	unsigned long not_before;	/* jiffies */
	unsigned int attempts;
};

/* A window to populate after a replay (fault.c, "Prefetch"). */
struct fl_prefetch_req {
	u64 va;			/* a faulting page of the window */
	bool populate;		/* populate absent pages too */
	bool write;		/* ... for writing */
};

/* One device context: the mirror of one process's address space. */
struct fl_ctx {
	struct fl_dev *fl;		/* reference held (fl->ref) */
	/* the file, each queued or running work item, each batch using it */
	struct kref ref;
	struct mm_struct *mm;		/* mmgrab()ed at bind, mmdrop()ed at free */
	/*
	 * blocks: block index (va >> 21) -> struct fl_block. Inserted by
	 * fl_block_get() (the fault work, an inline pass, the ahead work)
	 * under block_mutex, removed at release (fl_ctx_destroy()) after the
	 * device stopped walking the tables and those works were stopped. The
	 * xarray's own lock covers its structure; entries are never freed
	 * while a work runs. block_mutex is taken with no other lock held;
	 * mmap_lock may nest inside it (mmu_interval_notifier_insert()).
	 */
	struct xarray blocks;
	struct mutex block_mutex;	/* inserts into blocks; see above */
	u16 id;				/* device context; ida-owned until retired */
	bool leak;			/* UNBIND failed: never free the tables */
	/*
	 * lock: the mirror's "update lock". Held by the invalidate callbacks
	 * from mmu_interval_set_seq() until their INVALIDATE is queued (they
	 * wait for its FENCE without it: the range's PTEs cannot come back
	 * before the invalidation ends), and by the fault work from
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
	u64 inv_fence;			/* fence of the last callback's INVALIDATE */
	u64 inv_gen;			/* fl->generation it was queued in */
	u32 retire_put;			/* FL_REG_FR_PUT read after the UNBIND */
	u64 retire_gen;			/* fl->generation of that read */

	/*
	 * Fault servicing (fault.c). fq_lock (leaf spinlock) guards the queue
	 * of records the fetcher hands over (fq, fq_n, fq_gen, fq_replay),
	 * the deferred records, the prefetch hand-over (pf, npf, pf_gen) and
	 * dying. The work item runs on fl->ctx_wq, one instance at a time per
	 * context; fwork is its own.
	 *
	 * pass_mutex: held across one pass (and its prefetch) by the work, or
	 * by the fault IRQ thread for an inline pass (mutex_trylock only);
	 * protects hmm_pfns, fcmds and transient. Taken with no other lock
	 * held; mmap_lock and ctx->lock nest inside it. The invalidate
	 * callbacks never take it; fl_ctx_destroy() takes it once (after
	 * dying is set) to wait for an inline pass to end.
	 */
	spinlock_t fq_lock;
	struct fl_fault_rec *fq;	/* FL_CTX_QUEUE records, not yet serviced */
	u32 fq_n;
	u64 fq_gen;			/* fl->generation the records were fetched in */
	bool fq_replay;			/* records were dropped: REPLAY anyway */
	bool dying;			/* release started: queue nothing more */
	struct fl_fault_rec *deferred;	/* FL_TRANSIENT_SLOTS records in backoff */
	u32 ndeferred;
	u64 deferred_gen;		/* fl->generation of the deferred records */
	struct work_struct fault_work;
	struct delayed_work backoff_work;	/* re-queues the deferred records */
	struct fl_prefetch_req pf[FL_PASS_PREFETCH];	/* from inline passes */
	u32 npf;
	u64 pf_gen;			/* fl->generation of the pf requests */
	struct mutex pass_mutex;
	/*
	 * Population ahead (fault.c, "Ahead"): ahead_work runs on
	 * fl->ahead_wq, one instance at a time, a context reference per
	 * queued instance; ahead_va (0: none), ahead_write and ahead_gen are
	 * its request (fq_lock), ahead_pfns its own. It takes mmap_lock (read)
	 * and ctx->lock inside it, never pass_mutex.
	 */
	struct work_struct ahead_work;
	u64 ahead_va;
	u64 ahead_gen;
	bool ahead_write;
	unsigned long *ahead_pfns;	/* FL_HUGE_PAGES */
	struct fl_fault_rec *fwork;	/* FL_CTX_QUEUE: the pass being serviced */
	unsigned long *hmm_pfns;	/* FL_HUGE_PAGES */
	struct fl_cmd *fcmds;		/* FL_CTX_QUEUE + 2 */
	struct fl_transient transient[FL_TRANSIENT_SLOTS];

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
	u8 transient;		/* failed for a reason that may pass */
	u8 deferred;		/* in backoff: waits in ctx->deferred */
	u8 why;			/* FL_WHY_*: what decided the cancel */
	s16 err;		/* errno of the cancel */
};

/* Why a fault is cancelled; the first two are re-checked before sending. */
enum {
	FL_WHY_NONE,
	FL_WHY_NO_VMA,		/* no VMA, or one the device cannot use */
	FL_WHY_PERM,		/* write or atomic to a VMA without VM_WRITE */
	FL_WHY_FAILED,		/* hmm_range_fault() failed on the page itself */
};

#define FL_ACC_BIT(a)		(1U << (a))
#define FL_ACC_WRITES		(FL_ACC_BIT(FL_ACCESS_WRITE) | FL_ACC_BIT(FL_ACCESS_ATOMIC))
#define FL_ACC_ALL		0xf

/* A span of VA to invalidate on the device. */
struct fl_span {
	u64 start, end;		/* empty when start >= end */
};

struct fl_reset_report {
	unsigned int failed;
	u32 head;
};

#define FL_BATCH_LIMIT		1024	/* most fault records one batch takes */
#define FL_MAX_BATCHES		16	/* batches per worker run */

/* main.c: probe, remove, FLR, ioctl dispatch */
void fl_release_dev(struct kref *ref);

/* queue.c: command queue, waits, reset, interrupts */
const char *fl_err_name(u32 code);
int fl_wait_cond(struct fl_dev *fl,
		 bool (*cond)(struct fl_dev *fl, const void *arg),
		 const void *arg, u64 poll_ns, bool intr);
int fl_wait_request(struct fl_dev *fl, struct fl_request *req);
int fl_submit(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n,
	      unsigned int flags, struct fl_request *req);
void fl_write_addr(struct fl_dev *fl, u32 reg_lo, dma_addr_t addr);
u32 fl_hw_reset(struct fl_dev *fl);
void fl_set_state(struct fl_dev *fl, int state);
int fl_hw_init(struct fl_dev *fl);
unsigned int fl_quiesce(struct fl_dev *fl, u32 *head_at_reset);
int fl_reset(struct fl_dev *fl, struct fl_reset_report *rep);
void fl_free_irqs(struct fl_dev *fl, unsigned int nr);
int fl_request_irqs(struct fl_dev *fl);
int fl_exec(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n, unsigned int flags);
bool fl_gen_moved(struct fl_dev *fl, const void *arg);
void fl_stop_translations(struct fl_dev *fl, u64 gen, int err);

/* pagetable.c: the device page table */
struct fl_pt *fl_pt_alloc(struct fl_dev *fl, unsigned int level);
void fl_pt_free(struct fl_dev *fl, struct fl_pt *pt, unsigned int level);
int fl_pt_prealloc(struct fl_ctx *ctx);
void fl_span_add(struct fl_span *sp, u64 start, u64 end);
int fl_pt_set(struct fl_ctx *ctx, u64 va, u64 leaf, bool huge, struct fl_span *changed);
u64 fl_pt_lookup(struct fl_ctx *ctx, u64 va, bool *huge);
void fl_pt_clear(struct fl_pt *pt, unsigned int level, u64 base, u64 start,
		 u64 end, struct fl_span *cleared);
bool fl_pt_any(struct fl_pt *pt, unsigned int level, u64 base, u64 start, u64 end);
unsigned int fl_pt_block_mapped(struct fl_ctx *ctx, u64 va);

/* ctx.c: contexts and the mirror notifier */
struct fl_ctx *fl_ctx_get(struct fl_dev *fl, u16 id);
void fl_ctx_put(struct fl_ctx *ctx);
int fl_ctx_bind_hw(struct fl_ctx *ctx);
void fl_ctx_destroy(struct fl_ctx *ctx);
struct fl_ctx *fl_file_ctx(struct fl_file *ff, bool create);
void fl_ctx_log_cancel(struct fl_ctx *ctx, u64 va, int err);
u64 fl_ctx_cancel_seq(struct fl_ctx *ctx);
int fl_ctx_cancel_errno(struct fl_ctx *ctx, u64 seq0, u64 src, u64 slen, u64 dst, u64 dlen);
struct fl_block *fl_block_get(struct fl_ctx *ctx, u64 va);
void fl_ctx_ids_release(struct fl_dev *fl);

/* fault.c: fault servicing */
void fl_fault_work(struct work_struct *work);
void fl_fr_program(struct fl_dev *fl);
void fl_ctx_fault_work(struct work_struct *work);
void fl_ctx_backoff_work(struct work_struct *work);
void fl_fault_irq_thread(struct fl_dev *fl);
void fl_ctx_ahead_work(struct work_struct *work);

/* job.c: jobs and the shared-virtual-memory ioctls */
void fl_orphans_free(struct fl_dev *fl, bool all);
int fl_job_run(struct fl_ctx *ctx, struct fl_ioc_job *ap);
long fl_ioc_job(struct fl_file *ff, void __user *uarg);
long fl_ioc_bind(struct fl_file *ff, void __user *uarg);
long fl_ioc_snapshot(struct fl_file *ff, void __user *uarg);
long fl_ioc_fault_stats(struct fl_dev *fl, void __user *uarg);

/* testioc.c: test-only ioctls (queue checks, fences, resets, STATS) */
long fl_ioc_submit(struct fl_dev *fl, void __user *uarg);
long fl_ioc_fence(struct fl_dev *fl, void __user *uarg);
long fl_ioc_reset(struct fl_dev *fl, void __user *uarg);
long fl_ioc_stats(struct fl_dev *fl, void __user *uarg);

/* benchioc.c: FL_IOC_MIRROR_BENCH */
long fl_ioc_mirror_bench(struct fl_dev *fl, void __user *uarg);

/* debugfs.c: /sys/kernel/debug/faultline/<dev>/ */
void fl_debugfs_init(void);
void fl_debugfs_exit(void);
void fl_debugfs_add(struct fl_dev *fl);
void fl_debugfs_remove(struct fl_dev *fl);
/* hmm_compat.c: test_hmm's uAPI as /dev/hmm_dmirrorN (N < FL_HMM_UNITS) */
#define FL_HMM_UNITS		2	/* test_hmm's units 2, 3 are device-coherent */
int fl_hmm_register(struct fl_dev *fl);
void fl_hmm_unregister(struct fl_dev *fl);

#endif /* FAULTLINE_DRV_H */
