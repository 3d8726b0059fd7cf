// SPDX-License-Identifier: GPL-2.0
/*
 * fault.c: fault servicing
 */

#include "faultline.h"

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
	if (!READ_ONCE(fl_fault_prefetch) && last > ws) {
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
	n = fl_fault_fetch(fl, f, clamp_t(u32, READ_ONCE(fl_fault_batch_max), 1,
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

void fl_fault_work(struct work_struct *work)
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
 * is the fl_fr_entries parameter at this moment, so a test can shrink it and
 * reset to provoke overflows. fault_mutex keeps the worker out meanwhile.
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
	mutex_unlock(&fl->fault_mutex);
}
