// SPDX-License-Identifier: GPL-2.0
/*
 * fault.c: fault servicing.
 *
 * Two stages, so that no context waits for another:
 *
 * The fetcher (fl->fault_work on the ordered fl->fault_wq, queued by the
 * FL_VEC_FAULT handler; fault_mutex held) drains the ring: it takes up to
 * fault_batch entries from GET to the written-back PUT (clearing
 * FL_FAULT_VALID of each), sorts them by (context, page, access
 * descending), merges entries of one page, hands each context's records to
 * that context's queue (fl_ctx_enqueue()) and queues its work, writes
 * FL_REG_FR_GET (frees the slots, re-arms the interrupt; the device raises
 * it again if PUT moved meanwhile) and, when the ring overflowed, REPLAYs
 * every context (stalled lanes without an entry re-post theirs). Entries of
 * an unbound context are stale: its UNBIND failed their jobs. It never
 * sleeps on the mm or on the device except for that REPLAY, so a reset
 * (which takes fault_mutex to reprogram the ring) never waits for fault
 * servicing.
 *
 * A pass of a context (ctx->fault_work on fl->ctx_wq, contexts concurrently,
 * one pass of a context at a time):
 *  1. take the queued records; records of an older device generation are
 *     moot (the reset aborted their jobs); sort and merge them again (they
 *     may come from several fetches);
 *  2. skip pages whose device PTE already allows every access (duplicates:
 *     a fault serviced already, re-posted by a replay), and defer pages in
 *     backoff after a transient failure (see "Transient failures");
 *  3. take the mm (mmget_not_zero(); gone: every fault is cancelled), then
 *     service each window (fl_service_window()): a window is the 2 MiB block
 *     of its first fault clipped to that fault's VMA, and takes every later
 *     record inside it; the device generation is checked between windows;
 *  4. send, in this order: INVALIDATE of the span of PTEs that changed while
 *     valid, the CANCELs (re-checked under mmap_lock and sent under it, see
 *     "Cancels"), and one REPLAY of the context; wait only when there were
 *     CANCELs;
 *  5. after the replay, so that the stalled accesses resume first, map
 *     what the CPU already has in each serviced window, and populate the
 *     windows that qualify for prefetch (see "Prefetch"); then INVALIDATE
 *     what changed and REPLAY;
 *  6. drop the mm with mmput_async(): the worker never runs exit_mmap().
 *
 * With fault_inline > 0 the fault vector is a threaded IRQ whose thread
 * fetches, and runs the pass of a small fetch of one idle context itself
 * (see "Inline passes"); with prefetch_ahead, the population of a faulting
 * window also starts that of the next block on another worker (see
 * "Ahead").
 *
 * Forward progress. A window whose hmm_range_fault() result collides with
 * an invalidation of its block (-EBUSY, or mmu_interval_read_retry()) is
 * serviced again at once. After escalate_after collisions, or once it has
 * spent escalate_ms, it is serviced under mmap_write_lock with its VMA
 * write-locked (vma_start_write(): CPU faults under the per-VMA lock wait
 * too), so munmap, mprotect, madvise and CPU faults on that VMA cannot start
 * an invalidation until its PTEs are written: the CPU and the device take
 * turns, as the 2019 linux-mm thread prescribes. hmm_range_fault() accepts
 * either mode of mmap_lock. Nothing is ever failed because of contention;
 * only reclaim and migration can still collide under the write lock, and
 * they do not storm.
 *
 * Runs. hmm_range_fault() faults every page from the first one it must
 * fault to the end of its range, with the one fault type the range asks
 * for. So the faulting pages are serviced in runs of consecutive pages of
 * one kind, reads apart from writes: a device read never write-faults a
 * page (no COW break after fork, no dirtied file page, no real page where
 * the zero page serves), and no page the device did not touch is faulted
 * on the faults' account. The runs' own results are mapped at once (a
 * 2 MiB leaf where the CPU maps the whole block with a PMD) and the REPLAY
 * leaves; only after it does a snapshot of the window without faulting
 * (default_flags 0) map what else the CPU has there.
 *
 * Prefetch. Only after the replay, and only for windows whose block is
 * already at least prefetch_pct percent faulted or mapped (0: every
 * window): a read-only population of the window's absent pages, or for
 * writes to private anonymous memory a write population of the absent
 * pages only (fresh zeroed pages; present pages are never write-faulted).
 * A failure there (SIGBUS past the end of a short file, a poisoned page)
 * is ignored: prefetch never changes what a fault means. It maps and
 * REPLAYs every FL_PREFETCH_MAP pages, so lanes follow its front, and it
 * yields: a fault queued for the context outside the window ends it between
 * chunks of FL_PREFETCH_CHUNK pages (the next pass takes it up again).
 *
 * Cancels. A fault is cancelled when its page has no usable VMA, when it
 * writes to a VMA without VM_WRITE (write and atomic only; its reads are
 * serviced), or when hmm_range_fault() fails on the page itself for a
 * reason that does not pass. The no-VMA and permission decisions are
 * re-checked under mmap_read_lock, and the CANCELs are sent and executed
 * while it is held, so a page mapped again in between is never cancelled
 * for a lane that stalls on it after the remap.
 *
 * Transient failures (VM_FAULT_OOM, memcg included, in anonymous memory; a
 * userfaultfd-registered range, which user space may populate; a file page
 * inside the file) are not cancelled: the page goes into backoff, its
 * records are deferred for 1, 2, 4 .. 128 ms and serviced again, and only
 * after FL_TRANSIENT_TRIES failures is the fault cancelled (-EFAULT).
 */

#include "faultline.h"

#define FL_TRANSIENT_TRIES	10
#define FL_BACKOFF_MAX_MS	128
#define FL_PREFETCH_CHUNK	32	/* pages populated between checks for faults */
#define FL_PREFETCH_MAP		64	/* pages populated between map + REPLAY */

/* What a pass collects (struct on the stack of the work or IRQ thread). */
struct fl_pass {
	struct fl_span changed;		/* valid PTEs changed: INVALIDATE first */
	bool inl;			/* inline pass (see "Inline passes") */
	bool punt;			/* inline: a window needs the work */
	unsigned int nprefetch;
	struct fl_prefetch_req prefetch[FL_PASS_PREFETCH];
};

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
 * block with a PMD, else a 4 KiB leaf for each valid page. Returns how many
 * entries it wrote. ctx->lock.
 */
static unsigned int fl_window_map(struct fl_dev *fl, struct fl_ctx *ctx,
				  u64 ws, u64 we, u64 vs, u64 ve,
				  const unsigned long *pfns,
				  struct fl_span *changed)
{
	unsigned int written = 0;
	u64 va = ws;

	while (va < we) {
		unsigned long p = pfns[(va - ws) >> PAGE_SHIFT];
		unsigned long hpfn = fl_hmm_huge_pfn(p, va, vs, ve);
		struct fl_span sp = {};

		if (hpfn) {
			p = hpfn | (p & HMM_PFN_WRITE);
			va = ALIGN_DOWN(va, FL_HUGE_SIZE);
			if (fl_pt_set(ctx, va, fl_leaf(p) | FL_PTE_LEAF, true, &sp) > 0) {
				atomic64_inc(&fl->fst.huge_mapped);
				written++;
			}
			va += FL_HUGE_SIZE;
		} else {
			if ((p & HMM_PFN_VALID) && !(p & HMM_PFN_ERROR) &&
			    fl_pt_set(ctx, va, fl_leaf(p), false, &sp) > 0) {
				atomic64_inc(&fl->fst.pages_mapped);
				written++;
			}
			va += PAGE_SIZE;
		}
		if (sp.start < sp.end) {
			atomic64_inc(&fl->fst.upgrades);
			fl_span_add(changed, sp.start, sp.end);
		}
	}
	return written;
}

static void fl_fault_cancel(struct fl_fault_rec *f, u8 mask, int err, u8 why)
{
	f->cancel = f->mask & mask;
	f->err = err;
	f->why = why;
	f->done = 1;
}

/* A VMA whose pages the device may map at all. */
static bool fl_vma_usable(const struct vm_area_struct *vma)
{
	return vma && !(vma->vm_flags & (VM_IO | VM_PFNMAP)) &&
	       (vma->vm_flags & VM_READ);
}

/*
 * hmm_range_fault() failed with @err on the page @va itself, in a VMA that
 * is still valid: may a later attempt succeed?
 */
static bool fl_fault_transient(struct vm_area_struct *vma, u64 va, int err)
{
	struct file *file = vma->vm_file;
	loff_t pos;

	if (err == -ENOMEM)
		return true;
	if (err == -EPERM)
		return false;
	if (userfaultfd_armed(vma))
		return true;	/* user space may resolve it */
	if (vma_is_anonymous(vma) || !file)
		return true;	/* anonymous faults fail on OOM */
	/* A file page past the end of the file is SIGBUS for good. */
	pos = ((loff_t)vma->vm_pgoff << PAGE_SHIFT) + (va - vma->vm_start);
	return pos < i_size_read(file_inode(file));
}

/* Service, or give up on, the record @f after @err on its own page. */
static void fl_fault_failed(struct vm_area_struct *vma, struct fl_fault_rec *f,
			    int err)
{
	if (fl_fault_transient(vma, f->va, err)) {
		f->transient = 1;
		f->done = 1;
		return;
	}
	fl_fault_cancel(f, FL_ACC_ALL, err == -EPERM ? -EPERM : -EFAULT,
			FL_WHY_FAILED);
}

/* The access kind a record still needs serviced: 0, READ or WRITE. */
static u8 fl_rec_kind(const struct fl_fault_rec *f)
{
	u8 left = f->mask & ~f->cancel;

	if (f->done || !left)
		return 0;
	return left & FL_ACC_WRITES ? FL_ACCESS_WRITE : FL_ACCESS_READ;
}

/*
 * hmm_range_fault() over [start, end) of the window whose pfns start at
 * @ws, faulting every page from the first (see "Runs") for reading or
 * writing. Returns its result.
 */
static int fl_hmm_fault(struct fl_block *b, unsigned long seq,
			unsigned long *pfns, u64 ws, u64 start, u64 end,
			unsigned long flags)
{
	struct hmm_range range = {
		.notifier = &b->notifier,
		.notifier_seq = seq,
		.start = start,
		.end = end,
		.hmm_pfns = pfns + ((start - ws) >> PAGE_SHIFT),
		.default_flags = flags,
	};

	return hmm_range_fault(&range);
}

/*
 * Fault the runs of the window's records [0, k): maximal runs of
 * consecutive pages of one kind. A run that fails is retried page by page,
 * so a page that fails never takes its neighbours with it. Returns 0, or
 * -EBUSY on a collision.
 */
static int fl_fault_runs(struct fl_block *b, unsigned long seq,
			 struct vm_area_struct *vma, unsigned long *pfns,
			 u64 ws, struct fl_fault_rec *f, u32 k)
{
	u32 i = 0, j, p;
	int ret;

	while (i < k) {
		u8 kind = fl_rec_kind(&f[i]);
		unsigned long flags;

		if (!kind) {
			i++;
			continue;
		}
		for (j = i + 1; j < k && fl_rec_kind(&f[j]) == kind &&
		     f[j].va == f[j - 1].va + PAGE_SIZE; j++)
			;
		flags = HMM_PFN_REQ_FAULT |
			(kind == FL_ACCESS_WRITE ? HMM_PFN_REQ_WRITE : 0);
		ret = fl_hmm_fault(b, seq, pfns, ws, f[i].va,
				   f[j - 1].va + PAGE_SIZE, flags);
		if (ret == -EBUSY)
			return ret;
		if (ret) {
			for (p = i; p < j; p++) {
				ret = j - i == 1 ? ret :
				      fl_hmm_fault(b, seq, pfns, ws, f[p].va,
						   f[p].va + PAGE_SIZE, flags);
				if (ret == -EBUSY)
					return ret;
				if (ret)
					fl_fault_failed(vma, &f[p], ret);
			}
		}
		i = j;
	}
	return 0;
}

/* Snapshot [ws, we) without faulting into @pfns. 0 or -EBUSY. */
static int fl_hmm_snapshot(struct fl_block *b, unsigned long seq,
			   unsigned long *pfns, u64 ws, u64 we)
{
	int ret;

	memset(pfns, 0, ((we - ws) >> PAGE_SHIFT) * sizeof(*pfns));
	ret = fl_hmm_fault(b, seq, pfns, ws, ws, we, 0);
	/* Without faulting, only a collision makes it fail. */
	return ret == -EBUSY ? ret : 0;
}

static bool fl_escalate(struct fl_dev *fl, unsigned int collisions, u64 t0)
{
	unsigned int after = READ_ONCE(fl_escalate_after);
	u64 ms = READ_ONCE(fl_escalate_ms);

	return (after && collisions >= after) ||
	       (ms && ktime_get_ns() - t0 >= ms * NSEC_PER_MSEC);
}

static void fl_mmap_lock(struct mm_struct *mm, bool write)
{
	if (write)
		mmap_write_lock(mm);
	else
		mmap_read_lock(mm);
}

static void fl_mmap_unlock(struct mm_struct *mm, bool write)
{
	if (write)
		mmap_write_unlock(mm);
	else
		mmap_read_unlock(mm);
}

/* The window of @va in @vma: its 2 MiB block clipped to the VMA. */
static void fl_window(const struct vm_area_struct *vma, u64 va, u64 *ws,
		      u64 *we)
{
	u64 hstart = ALIGN_DOWN(va, FL_HUGE_SIZE);

	*ws = max_t(u64, vma->vm_start, hstart);
	*we = min_t(u64, vma->vm_end, hstart + FL_HUGE_SIZE);
}

/*
 * Service the window that starts with the record @f[0] (see the comment at
 * the top). Returns how many records of @f it consumed (>= 1).
 */
static u32 fl_service_window(struct fl_ctx *ctx, struct fl_fault_rec *f,
			     u32 n, struct fl_pass *ps)
{
	struct fl_dev *fl = ctx->fl;
	struct mm_struct *mm = ctx->mm;
	unsigned long *pfns = ctx->hmm_pfns;
	u64 hend = ALIGN_DOWN(f[0].va, FL_HUGE_SIZE) + FL_HUGE_SIZE;
	unsigned int collisions = 0, mapped, need = 0;
	u64 t0 = ktime_get_ns(), tb, ws, we;
	struct vm_area_struct *vma;
	bool write_lock = false, any_write;
	unsigned long seq;
	struct fl_block *b;
	u32 k, i;
	int ret;

	atomic64_inc(&fl->fst.windows);
	for (k = 1; k < n && f[k].va < hend; k++)
		;
	b = fl_block_get(ctx, f[0].va);
	if (!b)
		goto transient;
again:
	if (fl_pt_prealloc(ctx))
		goto transient;
	tb = ktime_get_ns();
	seq = mmu_interval_read_begin(&b->notifier);
	atomic64_add(ktime_get_ns() - tb, &fl->fst.begin_wait_ns);
	if (!ps->inl && !write_lock && fl_escalate(fl, collisions, t0)) {
		write_lock = true;
		atomic64_inc(&fl->fst.escalations);
	}
	if (ps->inl) {
		if (!mmap_read_trylock(mm))
			goto punt;
	} else {
		fl_mmap_lock(mm, write_lock);
	}
	vma = vma_lookup(mm, f[0].va);
	if (ps->inl && (!vma || !vma_is_anonymous(vma))) {
		mmap_read_unlock(mm);
		goto punt;	/* a file page may wait for I/O */
	}
	if (!fl_vma_usable(vma)) {
		fl_mmap_unlock(mm, write_lock);
		fl_fault_cancel(&f[0], FL_ACC_ALL, -EFAULT, FL_WHY_NO_VMA);
		return 1;
	}
	if (write_lock)
		vma_start_write(vma);
	fl_window(vma, f[0].va, &ws, &we);
	any_write = false;
	for (k = 0; k < n && f[k].va < we; k++) {
		if (f[k].done && !f[k].transient)
			continue;	/* decided in an earlier attempt */
		f[k].done = 0;
		f[k].transient = 0;
		f[k].cancel = 0;
		f[k].why = FL_WHY_NONE;
		if ((f[k].mask & FL_ACC_WRITES) && !(vma->vm_flags & VM_WRITE)) {
			f[k].cancel = f[k].mask & FL_ACC_WRITES;
			f[k].err = -EPERM;
			f[k].why = FL_WHY_PERM;
			if (!(f[k].mask & ~FL_ACC_WRITES))
				f[k].done = 1;	/* nothing left to service */
		}
		any_write |= fl_rec_kind(&f[k]) == FL_ACCESS_WRITE;
	}

	/* The runs fill in their own pages only: those are mapped now. */
	memset(pfns, 0, ((we - ws) >> PAGE_SHIFT) * sizeof(*pfns));
	ret = fl_fault_runs(b, seq, vma, pfns, ws, f, k);
	if (ret == -EBUSY)
		goto collided;

	mutex_lock(&ctx->lock);
	if (mmu_interval_read_retry(&b->notifier, seq)) {
		mutex_unlock(&ctx->lock);
		goto collided;
	}
	fl_window_map(fl, ctx, ws, we, vma->vm_start, vma->vm_end, pfns,
		      &ps->changed);
	mapped = fl_pt_block_mapped(ctx, f[0].va);
	mutex_unlock(&ctx->lock);

	for (i = 0; i < k; i++) {
		if (f[i].done)
			continue;
		f[i].done = 1;
		need++;
	}
	/*
	 * After the replay: map what the CPU has in the rest of the window,
	 * and populate it too when enough of the block is in use (prefetch by
	 * need, see the top).
	 */
	if (need && ps->nprefetch < FL_PASS_PREFETCH &&
	    mapped < (we - ws) >> PAGE_SHIFT) {
		ps->prefetch[ps->nprefetch].va = f[0].va;
		ps->prefetch[ps->nprefetch].populate = READ_ONCE(fl_fault_prefetch) &&
			mapped * 100 >= READ_ONCE(fl_prefetch_pct) * ((we - ws) >> PAGE_SHIFT);
		ps->prefetch[ps->nprefetch].write = any_write &&
			vma_is_anonymous(vma) && !(vma->vm_flags & VM_SHARED);
		ps->nprefetch++;
	}
	fl_mmap_unlock(mm, write_lock);
	return k;

collided:
	fl_mmap_unlock(mm, write_lock);
	if (ps->inl)
		goto punt;	/* retries and escalation are the work's */
	atomic64_inc(&fl->fst.retries);
	collisions++;
	goto again;

punt:
	ps->punt = true;
	return 0;

transient:
	/* No memory for the block or a table: back off, never cancel. */
	for (i = 0; i < k; i++) {
		if (!f[i].done) {
			f[i].transient = 1;
			f[i].done = 1;
		}
	}
	return k;
}

/*
 * Records are queued for the context outside [ws, we): stalled accesses
 * that the prefetch of that window will not satisfy come first. Faults
 * inside the window wait for it: it is about to populate their pages, and
 * maps and replays them as its front passes.
 */
static bool fl_ctx_pending(struct fl_ctx *ctx, u64 ws, u64 we)
{
	bool pending = false;
	u32 i;

	if (!READ_ONCE(ctx->fq_n) && !READ_ONCE(ctx->fq_replay))
		return false;
	spin_lock(&ctx->fq_lock);
	pending = ctx->fq_replay;
	for (i = 0; i < ctx->fq_n && !pending; i++)
		pending = ctx->fq[i].va < ws || ctx->fq[i].va >= we;
	spin_unlock(&ctx->fq_lock);
	return pending;
}

static void fl_prefetch_send(struct fl_ctx *ctx, const struct fl_span *changed);

/*
 * Map [a, c) of the window [ws, ..) from @pfns, then INVALIDATE what changed
 * and REPLAY, so that lanes stalled in it resume (every PTE write is
 * followed by a REPLAY; see fl_ctx_pass()). -EBUSY if an invalidation of
 * the block overtook the pfns. mmap_lock held.
 */
static int fl_prefetch_flush(struct fl_ctx *ctx, struct fl_block *b,
			     unsigned long seq, struct vm_area_struct *vma,
			     const unsigned long *pfns, u64 ws, u64 a, u64 c,
			     unsigned int *written)
{
	struct fl_span changed = {};
	unsigned int n;

	if (a >= c)
		return 0;
	mutex_lock(&ctx->lock);
	if (mmu_interval_read_retry(&b->notifier, seq)) {
		mutex_unlock(&ctx->lock);
		return -EBUSY;
	}
	n = fl_window_map(ctx->fl, ctx, a, c, vma->vm_start, vma->vm_end,
			  pfns + ((a - ws) >> PAGE_SHIFT), &changed);
	mutex_unlock(&ctx->lock);
	if (n || changed.start < changed.end)
		fl_prefetch_send(ctx, &changed);
	*written += n;
	return 0;
}

/*
 * After the replay, map what the CPU has in the window of @va and, with
 * @populate, populate its absent pages too (see "Prefetch"), mapping and
 * replaying every FL_PREFETCH_MAP pages so that the lanes follow the
 * population front. Best effort: a few collisions end it, failures are
 * ignored, and a fault queued for the context outside the window ends the
 * population early (what it populated so far is mapped; the next pass
 * takes it up again).
 * Returns how many PTEs it wrote.
 */
static unsigned int fl_prefetch_window(struct fl_ctx *ctx, u64 va,
				       bool populate, bool write,
				       unsigned long *pfns, bool yield)
{
	struct fl_dev *fl = ctx->fl;
	struct mm_struct *mm = ctx->mm;
	unsigned int tries = 0, written = 0;
	struct vm_area_struct *vma;
	struct fl_block *b;
	unsigned long seq;
	u64 ws, we, p, q, m;
	int ret;

	b = fl_block_get(ctx, va);
	if (!b)
		return 0;
again:
	if (++tries > 3 || fl_pt_prealloc(ctx))
		return written;
	seq = mmu_interval_read_begin(&b->notifier);
	mmap_read_lock(mm);
	vma = vma_lookup(mm, va);
	if (!fl_vma_usable(vma)) {
		mmap_read_unlock(mm);
		return written;
	}
	fl_window(vma, va, &ws, &we);
	if (write && !(vma->vm_flags & VM_WRITE))
		write = false;
	ret = fl_hmm_snapshot(b, seq, pfns, ws, we);
	if (ret)
		goto collided;
	/*
	 * Runs of absent pages only (present ones keep what they have), at
	 * most FL_PREFETCH_CHUNK pages at a time; each run's own result fills
	 * in its pfns.
	 */
	for (p = ws, m = ws; populate && p < we &&
	     !(yield && fl_ctx_pending(ctx, ws, we)); p = q) {
		unsigned long flags = HMM_PFN_REQ_FAULT |
				      (write ? HMM_PFN_REQ_WRITE : 0);

		if (pfns[(p - ws) >> PAGE_SHIFT] & HMM_PFN_VALID) {
			q = p + PAGE_SIZE;
			continue;
		}
		for (q = p + PAGE_SIZE; q < we && q < p + FL_PREFETCH_CHUNK * PAGE_SIZE &&
		     !(pfns[(q - ws) >> PAGE_SHIFT] & HMM_PFN_VALID); q += PAGE_SIZE)
			;
		ret = fl_hmm_fault(b, seq, pfns, ws, p, q, flags);
		if (ret == -EBUSY)
			goto collided;
		if (!ret)
			atomic64_add((q - p) >> PAGE_SHIFT, &fl->fst.prefetch_pages);
		/* Failed: ignored, the device's own faults decide. */
		if (q - m >= FL_PREFETCH_MAP * PAGE_SIZE) {
			if (fl_prefetch_flush(ctx, b, seq, vma, pfns, ws, m, q, &written))
				goto collided;
			m = q;
		}
	}
	if (fl_prefetch_flush(ctx, b, seq, vma, pfns, ws, m, we, &written))
		goto collided;
	mmap_read_unlock(mm);
	if (populate)
		atomic64_inc(&fl->fst.prefetch_blocks);
	return written;

collided:
	mmap_read_unlock(mm);
	atomic64_inc(&fl->fst.retries);
	goto again;
}

/* ---------------------------------------------------------------------- */
/* Transient failures: backoff */

/* The backoff slot of @va, or NULL. Slots with no attempts are free. */
static struct fl_transient *fl_transient_find(struct fl_ctx *ctx, u64 va)
{
	unsigned int i;

	for (i = 0; i < FL_TRANSIENT_SLOTS; i++)
		if (ctx->transient[i].attempts && ctx->transient[i].va == va)
			return &ctx->transient[i];
	return NULL;
}

/*
 * Defer the record @f if its page is in backoff: it waits in ctx->deferred
 * (merged by page) until the backoff work queues it again.
 */
static bool fl_transient_defer(struct fl_ctx *ctx, struct fl_fault_rec *f,
			       u64 gen)
{
	struct fl_transient *t = fl_transient_find(ctx, f->va);
	u32 i;

	if (!t || !time_before(jiffies, t->not_before))
		return false;
	spin_lock(&ctx->fq_lock);
	for (i = 0; i < ctx->ndeferred && ctx->deferred[i].va != f->va; i++)
		;
	if (i < ctx->ndeferred)
		ctx->deferred[i].mask |= f->mask;
	else if (i < FL_TRANSIENT_SLOTS)
		ctx->deferred[ctx->ndeferred++] = *f;
	ctx->deferred_gen = gen;
	spin_unlock(&ctx->fq_lock);
	f->done = 1;
	f->deferred = 1;
	atomic64_inc(&ctx->fl->fst.deferrals);
	return true;
}

/*
 * After a window: a transient failure starts or extends its page's backoff
 * (1, 2, 4 .. FL_BACKOFF_MAX_MS ms), or after FL_TRANSIENT_TRIES becomes a
 * cancel; a page serviced leaves backoff. A full table leaves the page to
 * the next replay without backoff.
 */
static void fl_transient_note(struct fl_ctx *ctx, struct fl_fault_rec *f)
{
	struct fl_transient *t = fl_transient_find(ctx, f->va);
	unsigned int i;

	if (f->deferred)
		return;
	if (!f->transient) {
		if (t)
			t->attempts = 0;
		return;
	}
	if (!t) {
		for (i = 0; i < FL_TRANSIENT_SLOTS && ctx->transient[i].attempts; i++)
			;
		if (i == FL_TRANSIENT_SLOTS)
			return;
		t = &ctx->transient[i];
		t->va = f->va;
	}
	if (++t->attempts >= FL_TRANSIENT_TRIES) {
		t->attempts = 0;
		f->transient = 0;
		fl_fault_cancel(f, FL_ACC_ALL, -EFAULT, FL_WHY_FAILED);
		atomic64_inc(&ctx->fl->fst.transient_cancels);
		return;
	}
	t->not_before = jiffies +
		msecs_to_jiffies(min(1U << (t->attempts - 1), FL_BACKOFF_MAX_MS));
}

/* Queue the backoff work for the earliest end of a backoff. */
static void fl_backoff_schedule(struct fl_ctx *ctx)
{
	unsigned long now = jiffies, delay = MAX_JIFFY_OFFSET;
	unsigned int i;

	for (i = 0; i < FL_TRANSIENT_SLOTS; i++) {
		const struct fl_transient *t = &ctx->transient[i];

		if (t->attempts)
			delay = min(delay, time_after(t->not_before, now) ?
					   t->not_before - now : 0);
	}
	spin_lock(&ctx->fq_lock);
	if (!ctx->dying && ctx->ndeferred) {
		kref_get(&ctx->ref);
		if (!queue_delayed_work(ctx->fl->ctx_wq, &ctx->backoff_work,
					delay == MAX_JIFFY_OFFSET ? 1 : delay))
			fl_ctx_put(ctx);	/* already queued; not the last ref */
	}
	spin_unlock(&ctx->fq_lock);
}

/* ---------------------------------------------------------------------- */
/* A context's queue and its pass */

/*
 * Hand @n records fetched in generation @gen to the context and queue its
 * work (a reference per queued work). fq_lock held. Records of an older
 * generation still queued are moot: a reset aborted their jobs. Records
 * beyond the queue's room are dropped, and the context is REPLAYed so that
 * their lanes post them again.
 */
static void fl_ctx_queue_locked(struct fl_ctx *ctx,
				const struct fl_fault_rec *f, u32 n, u64 gen)
{
	u32 room;

	lockdep_assert_held(&ctx->fq_lock);
	if (ctx->dying)
		return;
	if (ctx->fq_gen != gen) {
		ctx->fq_n = 0;
		ctx->fq_replay = false;
	}
	ctx->fq_gen = gen;
	room = FL_CTX_QUEUE - ctx->fq_n;
	if (n > room) {
		ctx->fq_replay = true;
		n = room;
	}
	memcpy(ctx->fq + ctx->fq_n, f, n * sizeof(*f));
	ctx->fq_n += n;
	kref_get(&ctx->ref);
	if (!queue_work(ctx->fl->ctx_wq, &ctx->fault_work))
		fl_ctx_put(ctx);	/* already queued; not the last ref */
}

void fl_ctx_backoff_work(struct work_struct *work)
{
	struct fl_ctx *ctx = container_of(to_delayed_work(work), struct fl_ctx,
					  backoff_work);

	spin_lock(&ctx->fq_lock);
	if (ctx->ndeferred && ctx->deferred_gen == READ_ONCE(ctx->fl->generation)) {
		fl_ctx_queue_locked(ctx, ctx->deferred, ctx->ndeferred,
				    ctx->deferred_gen);
		ctx->fq_replay = true;
	}
	ctx->ndeferred = 0;
	spin_unlock(&ctx->fq_lock);
	fl_ctx_put(ctx);
}

/* An INVALIDATE of @changed into @cmd if it is not empty; returns 0 or 1. */
static u32 fl_cmd_invalidate(struct fl_ctx *ctx, const struct fl_span *changed,
			     struct fl_cmd *cmd)
{
	if (changed->start >= changed->end)
		return 0;
	*cmd = (struct fl_cmd) {
		.opcode = FL_OP_INVALIDATE,
		.context = ctx->id,
		.args = { changed->start, changed->end - changed->start },
	};
	atomic64_inc(&ctx->fl->fst.invalidations);
	return 1;
}

/*
 * A cancel decided for "no usable VMA" or "no VM_WRITE" that no longer
 * holds (the page was mapped again). mmap_lock held.
 */
static bool fl_cancel_stale(struct mm_struct *mm, const struct fl_fault_rec *f)
{
	struct vm_area_struct *vma;

	if (f->why != FL_WHY_NO_VMA && f->why != FL_WHY_PERM)
		return false;
	vma = vma_lookup(mm, f->va);
	if (!fl_vma_usable(vma))
		return false;
	return f->why == FL_WHY_NO_VMA || (vma->vm_flags & VM_WRITE);
}

/*
 * Send what a pass decided: INVALIDATE of the changed span, the CANCELs
 * and a REPLAY of the context, and wait for them. The cancels are
 * re-checked and sent under mmap_read_lock (see "Cancels"); one that no
 * longer holds is dropped, and the replay makes its lane fault again.
 */
static void fl_ctx_send(struct fl_ctx *ctx, struct fl_fault_rec *f, u32 m,
			const struct fl_span *changed, bool replay, bool mm_ok)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_cmd *cmds = ctx->fcmds;
	bool locked = false;
	u32 nc = 0, i;
	int err;

	nc += fl_cmd_invalidate(ctx, changed, cmds + nc);
	for (i = 0; i < m; i++) {
		if (!f[i].cancel)
			continue;
		replay = true;
		if (mm_ok && !locked) {
			mmap_read_lock(ctx->mm);
			locked = true;
		}
		if (locked && fl_cancel_stale(ctx->mm, &f[i])) {
			atomic64_inc(&fl->fst.cancels_dropped);
			continue;
		}
		cmds[nc++] = (struct fl_cmd) {
			.opcode = FL_OP_CANCEL,
			.context = ctx->id,
			.args = { f[i].va, f[i].cancel },
		};
		fl_ctx_log_cancel(ctx, f[i].va, f[i].err);
		atomic64_inc(&fl->fst.cancels);
	}
	if (replay) {
		cmds[nc++] = (struct fl_cmd) {
			.opcode = FL_OP_REPLAY,
			.context = ctx->id,
		};
		atomic64_inc(&fl->fst.replays);
	}
	if (nc) {
		/*
		 * CANCELs are waited for under mmap_lock (see "Cancels");
		 * otherwise nothing needs the commands done before the next
		 * pass, and the REPLAY leaves at once.
		 */
		err = fl_exec(fl, cmds, nc, FLS_NOINTR | (locked ? 0 : FLS_ASYNC));
		if (err)
			dev_dbg_ratelimited(fl_device(fl), "%s: context %u fault commands: %d\n",
					    fl->name, ctx->id, err);
	}
	if (locked)
		mmap_read_unlock(ctx->mm);
}

/*
 * After a prefetch mapped pages: INVALIDATE what changed while valid, and
 * REPLAY, since a lane may have stalled on a page the prefetch mapped
 * (every PTE write is followed by a REPLAY; see fl_ctx_pass()).
 */
static void fl_prefetch_send(struct fl_ctx *ctx, const struct fl_span *changed)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_cmd cmds[2];
	u32 nc = 0;

	nc += fl_cmd_invalidate(ctx, changed, cmds + nc);
	cmds[nc++] = (struct fl_cmd) { .opcode = FL_OP_REPLAY, .context = ctx->id };
	atomic64_inc(&fl->fst.replays);
	fl_exec(fl, cmds, nc, FLS_NOINTR | FLS_ASYNC);
}

static bool fl_ctx_dying(struct fl_ctx *ctx)
{
	bool dying;

	spin_lock(&ctx->fq_lock);
	dying = ctx->dying;
	spin_unlock(&ctx->fq_lock);
	return dying;
}

/* Sort @f and merge records of one page; returns how many are left. */
static u32 fl_fault_merge(struct fl_dev *fl, struct fl_fault_rec *f, u32 n)
{
	u32 i, m;

	sort(f, n, sizeof(*f), fl_fault_cmp, NULL);
	for (i = 0, m = 0; i < n; i++) {
		if (m && f[m - 1].ctx == f[i].ctx && f[m - 1].va == f[i].va) {
			f[m - 1].mask |= f[i].mask;
			atomic64_inc(&fl->fst.duplicates);
			continue;
		}
		f[m++] = f[i];
	}
	return m;
}

/*
 * Ahead (prefetch_ahead). When the population of a faulting window starts,
 * the next 2 MiB block, if the window's VMA goes on into it, is populated
 * at the same time by the context's ahead work on an unbound worker (so on
 * the other CPU), the same way (absent pages only, mapped and REPLAYed every
 * FL_PREFETCH_MAP pages; writes only in private anonymous memory). Only a
 * block the device faulted in starts it, so it runs at most one block past
 * the device's last fault. Best effort like any prefetch: it never yields
 * nor retries past three collisions, and a newer request replaces an older
 * one not yet started.
 */
static void fl_ctx_ahead(struct fl_ctx *ctx, const struct fl_prefetch_req *r,
			 u64 gen)
{
	u64 next = ALIGN_DOWN(r->va, FL_HUGE_SIZE) + FL_HUGE_SIZE;

	if (!READ_ONCE(fl_prefetch_ahead) || next >= FL_VA_LIMIT)
		return;
	spin_lock(&ctx->fq_lock);
	if (!ctx->dying && ctx->ahead_va != next) {
		ctx->ahead_va = next;
		ctx->ahead_write = r->write;
		ctx->ahead_gen = gen;
		kref_get(&ctx->ref);
		if (!queue_work(ctx->fl->ahead_wq, &ctx->ahead_work))
			fl_ctx_put(ctx);	/* already queued; not the last ref */
	}
	spin_unlock(&ctx->fq_lock);
}

void fl_ctx_ahead_work(struct work_struct *work)
{
	struct fl_ctx *ctx = container_of(work, struct fl_ctx, ahead_work);
	struct fl_dev *fl = ctx->fl;
	struct mm_struct *mm = ctx->mm;
	struct vm_area_struct *vma;
	bool write, same;
	u64 va, gen;

	spin_lock(&ctx->fq_lock);
	va = ctx->dying ? 0 : ctx->ahead_va;
	write = ctx->ahead_write;
	gen = ctx->ahead_gen;
	spin_unlock(&ctx->fq_lock);
	if (!va || gen != READ_ONCE(fl->generation) || fl_usable(fl) ||
	    !mmget_not_zero(mm))
		goto out;
	/* The VMA of the block before goes on into this one. */
	mmap_read_lock(mm);
	vma = vma_lookup(mm, va - 1);
	same = vma && vma->vm_end > va;
	mmap_read_unlock(mm);
	if (same) {
		atomic64_inc(&fl->fst.ahead_blocks);
		fl_prefetch_window(ctx, va, true, write, ctx->ahead_pfns, false);
	}
	mmput_async(mm);
out:
	/* Done with it; a request for another block re-queues the work. */
	spin_lock(&ctx->fq_lock);
	if (ctx->ahead_va == va)
		ctx->ahead_va = 0;
	spin_unlock(&ctx->fq_lock);
	fl_ctx_put(ctx);
}

/*
 * Populate the windows of @pf (see "Prefetch") while no fault outside them
 * waits, in generation @gen. pass_mutex held; only the work calls it.
 */
static void fl_ctx_prefetch(struct fl_ctx *ctx, const struct fl_prefetch_req *pf,
			    u32 n, u64 gen)
{
	struct fl_dev *fl = ctx->fl;
	u32 i;

	if (!n || !mmget_not_zero(ctx->mm))
		return;
	for (i = 0; i < n && !fl_ctx_pending(ctx, 0, 0); i++) {
		if (READ_ONCE(fl->generation) != gen || fl_ctx_dying(ctx))
			break;
		if (pf[i].populate)
			fl_ctx_ahead(ctx, &pf[i], gen);
		fl_prefetch_window(ctx, pf[i].va, pf[i].populate, pf[i].write,
				   ctx->hmm_pfns, true);
	}
	mmput_async(ctx->mm);
}

/*
 * Inline pass: move the records it leaves to the work (from index @stop
 * on, and those it would cancel: a cancel is re-checked under a blocking
 * mmap_read_lock) behind the rest of @f[0, m); returns how many it keeps.
 */
static u32 fl_punt_partition(struct fl_fault_rec *f, u32 m, u32 stop)
{
	struct fl_fault_rec tmp[FL_INLINE_MAX];
	u32 i, k = 0, p = 0;

	for (i = 0; i < m; i++) {
		if (i >= stop || f[i].cancel)
			tmp[p++] = f[i];
		else
			f[k++] = f[i];
	}
	memcpy(f + k, tmp, p * sizeof(*f));
	return k;
}

/*
 * Inline pass: hand the @n records it left and its prefetch requests to
 * the context's work (see "Inline passes").
 */
static void fl_ctx_hand_over(struct fl_ctx *ctx, const struct fl_fault_rec *f,
			     u32 n, const struct fl_pass *ps, u64 gen)
{
	u32 i;

	if (!n && !ps->nprefetch)
		return;
	if (n)
		atomic64_inc(&ctx->fl->fst.inline_punts);
	spin_lock(&ctx->fq_lock);
	if (ctx->pf_gen != gen)
		ctx->npf = 0;
	ctx->pf_gen = gen;
	for (i = 0; i < ps->nprefetch && ctx->npf < FL_PASS_PREFETCH; i++)
		ctx->pf[ctx->npf++] = ps->prefetch[i];
	fl_ctx_queue_locked(ctx, f, n, gen);
	spin_unlock(&ctx->fq_lock);
}

/*
 * One pass over @n records of generation @gen (see the top of the file).
 * pass_mutex held. An inline pass (ps->inl) hands over what it leaves.
 */
static void fl_ctx_pass(struct fl_ctx *ctx, struct fl_fault_rec *f, u32 n,
			bool replay, u64 gen, struct fl_pass *ps)
{
	struct fl_dev *fl = ctx->fl;
	u32 i, m, dups = 0, stop;
	bool mm_ok;

	lockdep_assert_held(&ctx->pass_mutex);
	atomic64_inc(&fl->fst.ctx_passes);
	m = fl_fault_merge(fl, f, n);
	mutex_lock(&ctx->lock);
	for (i = 0; i < m; i++) {
		f[i].done = 0;
		f[i].cancel = 0;
		f[i].transient = 0;
		f[i].deferred = 0;
		f[i].why = FL_WHY_NONE;
		if (fl_pt_satisfies(ctx, &f[i])) {
			f[i].done = 1;
			dups++;
		}
	}
	mutex_unlock(&ctx->lock);
	/*
	 * Pages already mapped still need a REPLAY: a lane may have walked
	 * before their PTE was written and registered its stall after the
	 * REPLAY that followed the write (spec section 5, rule 1), so that
	 * REPLAY did not release it.
	 */
	atomic64_add(dups, &fl->fst.duplicates);
	replay |= dups > 0;
	for (i = 0; i < m; i++)
		if (!f[i].done)
			fl_transient_defer(ctx, &f[i], gen);

	mm_ok = mmget_not_zero(ctx->mm);
	for (i = 0; i < m; ) {
		if (f[i].done) {
			i++;
			continue;
		}
		/* A reset aborted the jobs; a release UNBINDs them. */
		if (READ_ONCE(fl->generation) != gen || fl_ctx_dying(ctx))
			goto out;
		if (!mm_ok) {
			if (ps->inl)
				break;	/* the work cancels */
			replay = true;
			fl_fault_cancel(&f[i], FL_ACC_ALL, -EFAULT, FL_WHY_NO_VMA);
			i++;
			continue;
		}
		stop = fl_service_window(ctx, f + i, m - i, ps);
		if (ps->punt)
			break;
		replay = true;
		i += stop;
	}
	stop = i;
	n = m;
	if (ps->inl)
		m = fl_punt_partition(f, m, stop);
	for (i = 0; i < m; i++)
		fl_transient_note(ctx, &f[i]);
	fl_ctx_send(ctx, f, m, &ps->changed, replay, mm_ok);

	if (ps->inl)
		fl_ctx_hand_over(ctx, f + m, n - m, ps, gen);
	else
		fl_ctx_prefetch(ctx, ps->prefetch, ps->nprefetch, gen);
	fl_backoff_schedule(ctx);
out:
	if (mm_ok)
		mmput_async(ctx->mm);
}

/* The context's work: passes until its queue is empty. */
void fl_ctx_fault_work(struct work_struct *work)
{
	struct fl_ctx *ctx = container_of(work, struct fl_ctx, fault_work);
	struct fl_prefetch_req pf[FL_PASS_PREFETCH];
	struct fl_dev *fl = ctx->fl;

	for (;;) {
		struct fl_pass ps = {};
		struct fl_fault_rec *f;
		bool replay, dying;
		u64 gen, pf_gen;
		u32 n, npf;

		spin_lock(&ctx->fq_lock);
		n = ctx->fq_n;
		replay = ctx->fq_replay;
		gen = ctx->fq_gen;
		dying = ctx->dying;
		f = ctx->fq;
		ctx->fq = ctx->fwork;
		ctx->fwork = f;
		ctx->fq_n = 0;
		ctx->fq_replay = false;
		npf = ctx->npf;
		pf_gen = ctx->pf_gen;
		memcpy(pf, ctx->pf, npf * sizeof(*pf));
		ctx->npf = 0;
		spin_unlock(&ctx->fq_lock);
		if (!n && !replay && !npf)
			break;
		if (dying || fl_usable(fl))
			continue;	/* moot: see fl_ctx_pass() */
		mutex_lock(&ctx->pass_mutex);
		if ((n || replay) && gen == READ_ONCE(fl->generation))
			fl_ctx_pass(ctx, f, n, replay, gen, &ps);
		if (pf_gen == READ_ONCE(fl->generation))
			fl_ctx_prefetch(ctx, pf, npf, pf_gen);
		mutex_unlock(&ctx->pass_mutex);
	}
	fl_ctx_put(ctx);
}

/*
 * Inline passes. The fault interrupt's thread fetches like the work
 * (fl_fault_batch()), and when the fetch holds at most fault_inline pages,
 * all of one context whose work has nothing queued and runs no pass, it
 * runs that context's pass itself (pass_mutex, trylock), saving the hops to
 * the fetcher's and the context's workers. It services only what cannot
 * wait long: mmap_lock is only trylocked, only anonymous VMAs are faulted
 * (a file page may wait for I/O), and the first collision with an
 * invalidation ends it; what it leaves (those windows, the cancels, the
 * post-replay prefetch) goes to the context's work, which retries,
 * escalates, cancels and populates as usual. Forward progress is the
 * work's: an inline pass only ever takes a window off its hands.
 */
static void fl_ctx_inline(struct fl_ctx *ctx, struct fl_fault_rec *f, u32 n,
			  u64 gen)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_pass ps = { .inl = true };
	bool idle;

	if (!mutex_trylock(&ctx->pass_mutex))
		goto hand_over;
	spin_lock(&ctx->fq_lock);
	idle = !ctx->dying && !ctx->fq_n && !ctx->fq_replay;
	spin_unlock(&ctx->fq_lock);
	if (!idle || gen != READ_ONCE(fl->generation) || fl_usable(fl)) {
		mutex_unlock(&ctx->pass_mutex);
		goto hand_over;
	}
	atomic64_inc(&fl->fst.inline_passes);
	fl_ctx_pass(ctx, f, n, false, gen, &ps);
	mutex_unlock(&ctx->pass_mutex);
	return;

hand_over:
	spin_lock(&ctx->fq_lock);
	fl_ctx_queue_locked(ctx, f, n, gen);
	spin_unlock(&ctx->fq_lock);
}

/* ---------------------------------------------------------------------- */
/* The fetcher */

/* A fetch the fault IRQ thread services itself (on its stack). */
struct fl_inline {
	struct fl_ctx *ctx;		/* a reference; NULL: none */
	u64 gen;
	u32 n;
	struct fl_fault_rec f[FL_INLINE_MAX];
};

/*
 * One fetch; true if more entries are pending. fault_mutex held. With @il
 * (the IRQ thread), a small fetch of one context from a ring that neither
 * overflowed nor was full is left in @il for an inline pass instead of
 * being queued, and GET is not written: the thread writes it after the
 * pass (fl_fault_irq_thread()), so that the REPLAY leaves first.
 */
static bool fl_fault_batch(struct fl_dev *fl, struct fl_inline *il)
{
	struct fl_fault_rec *f = fl->fbatch;
	u64 gen = READ_ONCE(fl->generation);
	bool overflow, full;
	u32 n, m, i, j, ov;
	int err;

	lockdep_assert_held(&fl->fault_mutex);
	ov = READ_ONCE(fl->wb->fr_overflows);
	overflow = ov != fl->fr_overflows;
	if (overflow) {
		atomic64_add(ov - fl->fr_overflows, &fl->fst.overflows);
		fl->fr_overflows = ov;
	}
	n = fl_fault_fetch(fl, f, clamp_t(u32, READ_ONCE(fl_fault_batch_max), 1,
					  FL_BATCH_LIMIT), &full);
	if (!n && !overflow)
		goto rearm;
	atomic64_add(n, &fl->fst.faults);
	atomic64_inc(&fl->fst.batches);

	m = fl_fault_merge(fl, f, n);
	if (il && (overflow || full ||
		   m > min_t(u32, READ_ONCE(fl_fault_inline), FL_INLINE_MAX)))
		il = NULL;
	for (i = 0; i < m; i = j) {
		struct fl_ctx *ctx;

		for (j = i + 1; j < m && f[j].ctx == f[i].ctx; j++)
			;
		ctx = fl_ctx_get(fl, f[i].ctx);
		if (!ctx) {
			/* Unbound since: UNBIND failed its stalled jobs. */
			atomic64_add(j - i, &fl->fst.stale);
			continue;
		}
		if (il && i == 0 && j == m) {
			il->ctx = ctx;	/* the reference goes with it */
			il->gen = gen;
			il->n = m;
			memcpy(il->f, f, m * sizeof(*f));
			continue;
		}
		spin_lock(&ctx->fq_lock);
		fl_ctx_queue_locked(ctx, f + i, j - i, gen);
		spin_unlock(&ctx->fq_lock);
		fl_ctx_put(ctx);
	}
	if (il && il->ctx)
		return READ_ONCE(fl->wb->fr_put) != fl->fr_get;
	writel(fl->fr_get, fl->regs + FL_REG_FR_GET);
	/*
	 * A full ring may overflow until the device has seen the new GET, and
	 * if this fetch took every entry up to that full PUT, the device would
	 * not re-raise the interrupt (PUT == GET) for the dropped faults: read
	 * a register (answered after the posted GET write) and look at the
	 * overflow count again.
	 */
	if (full)
		readl(fl->regs + FL_REG_FR_PUT);
	if (overflow) {
		/* Stalled lanes without an entry: all post theirs again. */
		struct fl_cmd cmd = {
			.opcode = FL_OP_REPLAY,
			.context = FL_CONTEXT_ALL,
		};

		atomic64_inc(&fl->fst.replays);
		err = fl_exec(fl, &cmd, 1, FLS_NOINTR | FLS_ASYNC);
		if (err)
			dev_dbg_ratelimited(fl_device(fl), "%s: replay after overflow: %d\n",
					    fl->name, err);
	}
	fl_ctx_ids_release(fl);
	return READ_ONCE(fl->wb->fr_put) != fl->fr_get ||
	       READ_ONCE(fl->wb->fr_overflows) != fl->fr_overflows;
rearm:
	writel(fl->fr_get, fl->regs + FL_REG_FR_GET);
	fl_ctx_ids_release(fl);
	return false;
}

void fl_fault_work(struct work_struct *work)
{
	struct fl_dev *fl = container_of(work, struct fl_dev, fault_work);
	unsigned int batches = 0;

	atomic64_inc(&fl->fst.worker_runs);
	mutex_lock(&fl->fault_mutex);
	while (fl->fr_size && !fl_usable(fl) && fl_fault_batch(fl, NULL)) {
		if (++batches >= FL_MAX_BATCHES) {
			queue_work(fl->fault_wq, &fl->fault_work);
			break;
		}
	}
	mutex_unlock(&fl->fault_mutex);
}

/*
 * The fault interrupt's thread (fault_inline > 0): one fetch; the rest of
 * the ring goes to the fetcher's work, and a small fetch of one idle
 * context is serviced here (see "Inline passes").
 */
void fl_fault_irq_thread(struct fl_dev *fl)
{
	struct fl_inline il;
	bool more = false;

	il.ctx = NULL;
	mutex_lock(&fl->fault_mutex);
	if (fl->fr_size && !fl_usable(fl))
		more = fl_fault_batch(fl, &il);
	mutex_unlock(&fl->fault_mutex);
	if (more)
		queue_work(fl->fault_wq, &fl->fault_work);
	if (!il.ctx)
		return;
	fl_ctx_inline(il.ctx, il.f, il.n, il.gen);
	fl_ctx_put(il.ctx);
	/*
	 * Free the slots and re-arm the interrupt (raised again if PUT moved
	 * meanwhile). A fetch or a reset in between wrote a GET at least as
	 * recent; this one repeats it.
	 */
	mutex_lock(&fl->fault_mutex);
	if (fl->fr_size && !fl_usable(fl))
		writel(fl->fr_get, fl->regs + FL_REG_FR_GET);
	fl_ctx_ids_release(fl);
	mutex_unlock(&fl->fault_mutex);
}

/*
 * Program the fault ring (from fl_hw_init(), reset_mutex held): GET = PUT =
 * 0, the ring's memory cleared, the interrupt armed by the enable. Its size
 * is the fr_entries parameter at this moment, so a test can shrink it and
 * reset to provoke overflows. fault_mutex keeps the fetcher out meanwhile.
 * The ring's old entries are gone, so retired context ids are free.
 */
void fl_fr_program(struct fl_dev *fl)
{
	u32 size = clamp_t(u32, READ_ONCE(fl_fr_entries), FL_FR_MIN_ENTRIES,
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
	writel(min_t(u32, READ_ONCE(fl_fr_irq_delay_us), FL_FR_IRQ_DELAY_MAX),
	       fl->regs + FL_REG_FR_IRQ_DELAY);
	writel(FL_FR_CTRL_ENABLE, fl->regs + FL_REG_FR_CONTROL);
	fl_ctx_ids_release(fl);
	mutex_unlock(&fl->fault_mutex);
}
