// SPDX-License-Identifier: GPL-2.0
/*
 * ctx.c: contexts and the mirror notifier
 */

#include "faultline.h"

/* ---------------------------------------------------------------------- */
/* The mirror: one mmu_interval_notifier per 2 MiB block */

/*
 * Notifier granularity. A context does not watch its whole address space:
 * the fault work inserts a notifier for each naturally aligned 2 MiB block
 * before it first maps a page there (fl_block_get()), as UVM does for its
 * va_blocks, and device PTEs exist only inside such blocks. So:
 *  - an invalidation of memory the device never mapped calls nothing of
 *    ours (a storm on an unrelated range costs the device nothing);
 *  - a window is always inside one block, and its hmm_range_fault() runs
 *    under that block's sequence, so only an invalidation that overlaps the
 *    block makes it retry (mmu_interval_read_begin() waits only for those);
 *  - the notifiers are inserted once per block, not per window, so the
 *    steady state costs no interval-tree updates.
 * The block's notifier is the only thing that both bumps the sequence the
 * window checks and clears the PTEs it may have written, under the same
 * ctx->lock, which is the canonical HMM pattern per block.
 *
 * Invalidate callback (the mmu_interval_notifier contract): once it returns
 * true, the device never again uses a translation of [start, end) that it
 * had before. Sequence: take ctx->lock (trylock when the caller cannot
 * sleep), mmu_interval_set_seq() so that any fault servicing of this block
 * that read the CPU page table before now retries, clear the device PTEs of
 * the whole invalidated range (not just this block: a munmap of many blocks
 * then costs one INVALIDATE + FENCE, and the other blocks' callbacks find
 * nothing left to clear unless a fault re-mapped a page in between, which
 * they then clear and fence themselves), and when one was valid,
 * INVALIDATE(ctx, span) + FENCE and wait for the fence (spec section 6:
 * after it the device neither has nor can re-create the old translation).
 * Nothing mapped: nothing on the device to invalidate (the TLB caches only
 * valid PTEs, each cleared under an INVALIDATE of its own). No event is
 * skipped: the driver never migrates pages itself.
 */
/* An INVALIDATE queued by a callback of @ctx whose fence has not been seen. */
static bool fl_inv_pending(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;

	lockdep_assert_held(&ctx->lock);
	return ctx->inv_gen == READ_ONCE(fl->generation) &&
	       fl_fence_read(fl, FL_SLOT_DONE) < ctx->inv_fence &&
	       !READ_ONCE(fl->hw_stopped);
}

struct fl_inv_wait {
	u64 fence;
	u64 gen;
};

static bool fl_inv_done(struct fl_dev *fl, const void *arg)
{
	const struct fl_inv_wait *w = arg;

	return fl_fence_read(fl, FL_SLOT_DONE) >= w->fence ||
	       READ_ONCE(fl->generation) != w->gen || fl_broken(fl) ||
	       READ_ONCE(fl->hw_stopped);
}

/*
 * Queue INVALIDATE(ctx, @cleared) and its fence under ctx->lock, then wait
 * for it without the lock (the fault work maps other blocks meanwhile; no
 * PTE of the range can come back before the invalidation ends, since
 * mmu_interval_read_begin() waits for it and read_retry() fails). The fence
 * is recorded in ctx->inv_fence, so that a callback that finds nothing left
 * to clear still waits for it. Drops ctx->lock.
 */
static void fl_block_inv_wait(struct fl_ctx *ctx, const struct fl_span *cleared)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_cmd cmd = {
		.opcode = FL_OP_INVALIDATE,
		.context = ctx->id,
		.args = { cleared->start, cleared->end - cleared->start },
	};
	struct fl_request req;
	u64 gen = ctx->bound_gen;
	int err;

	atomic64_inc(&fl->fst.invalidations);
	err = fl_submit(fl, &cmd, 1, FLS_NOINTR, &req);
	if (!err) {
		ctx->inv_fence = max(ctx->inv_fence, req.fence);
		ctx->inv_gen = gen;
	}
	mutex_unlock(&ctx->lock);
	if (!err)
		err = fl_wait_request(fl, &req);
	if (err)
		fl_stop_translations(fl, gen, err);
}

/* Wait, without ctx->lock, for the INVALIDATE another callback queued. */
static void fl_block_pending_wait(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_inv_wait w = { .fence = ctx->inv_fence, .gen = ctx->inv_gen };
	int err;

	mutex_unlock(&ctx->lock);
	err = fl_wait_cond(fl, fl_inv_done, &w, FL_POLL_NS, false);
	if (err)
		fl_stop_translations(fl, w.gen, err);
}

static bool fl_block_invalidate(struct mmu_interval_notifier *mni,
				const struct mmu_notifier_range *range,
				unsigned long cur_seq)
{
	struct fl_block *b = container_of(mni, struct fl_block, notifier);
	struct fl_ctx *ctx = b->ctx;
	struct fl_dev *fl = ctx->fl;
	u64 start = range->start, end = min_t(u64, range->end, FL_VA_LIMIT);
	u64 bs = max(start, b->start), be = min(end, b->start + FL_HUGE_SIZE);
	struct fl_span cleared = {};

	atomic64_inc(&fl->fst.notifier_calls);
	if (mmu_notifier_range_blockable(range)) {
		mutex_lock(&ctx->lock);
	} else if (!mutex_trylock(&ctx->lock)) {
		atomic64_inc(&fl->fst.notifier_busy);
		return false;
	}
	/* A caller that cannot sleep cannot wait for the device either. */
	if (!mmu_notifier_range_blockable(range)) {
		if ((bs < be && ctx->root && fl_pt_any(ctx->root, 3, 0, bs, be)) ||
		    fl_inv_pending(ctx)) {
			mutex_unlock(&ctx->lock);
			atomic64_inc(&fl->fst.notifier_busy);
			return false;
		}
		end = be;	/* clear only what we checked */
		start = bs;
	}
	mmu_interval_set_seq(mni, cur_seq);
	if (start < end && ctx->root)
		fl_pt_clear(ctx->root, 3, 0, start, end, &cleared);
	if (cleared.start >= cleared.end)
		goto nothing;

	atomic64_inc(&fl->fst.notifier_clears);
	if (ctx->bound_gen != READ_ONCE(fl->generation))
		goto out;	/* reset since BIND: the device has nothing cached */
	if (!down_read_trylock(&fl->io_rwsem))
		goto out;	/* remove() holds it: it has reset the device */
	if (READ_ONCE(fl->hw_stopped)) {
		up_read(&fl->io_rwsem);
		goto out;	/* removed: reset for good, BAR0 gone */
	}
	fl_block_inv_wait(ctx, &cleared);	/* drops ctx->lock */
	up_read(&fl->io_rwsem);
	return true;

nothing:
	/*
	 * Nothing of ours is valid in the range now, but another callback
	 * may have cleared it and still wait for its fence: the device may
	 * hold the old translation until then, so wait too.
	 */
	if (mmu_notifier_range_blockable(range) && fl_inv_pending(ctx) &&
	    down_read_trylock(&fl->io_rwsem)) {
		fl_block_pending_wait(ctx);	/* drops ctx->lock */
		up_read(&fl->io_rwsem);
		return true;
	}
out:
	mutex_unlock(&ctx->lock);
	return true;
}

static const struct mmu_interval_notifier_ops fl_block_ops = {
	.invalidate = fl_block_invalidate,
};

/*
 * The block of @va, with its notifier inserted. Called by the context's
 * fault work, an inline pass and the ahead work, without mmap_lock
 * (mmu_interval_notifier_insert() may take it) and without ctx->lock;
 * block_mutex serialises the inserts, and a block is published in the
 * xarray only once its notifier is in, so a lockless lookup never finds a
 * half-made one. Returns NULL without memory.
 */
struct fl_block *fl_block_get(struct fl_ctx *ctx, u64 va)
{
	unsigned long idx = va >> ilog2(FL_HUGE_SIZE);
	struct fl_block *b = xa_load(&ctx->blocks, idx);

	if (b)
		return b;
	mutex_lock(&ctx->block_mutex);
	b = xa_load(&ctx->blocks, idx);
	if (b)
		goto out;
	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		goto out;
	b->ctx = ctx;
	b->start = ALIGN_DOWN(va, FL_HUGE_SIZE);
	if (mmu_interval_notifier_insert(&b->notifier, ctx->mm, b->start,
					 FL_HUGE_SIZE, &fl_block_ops)) {
		kfree(b);
		b = NULL;
		goto out;
	}
	if (xa_insert(&ctx->blocks, idx, b, GFP_KERNEL)) {
		mmu_interval_notifier_remove(&b->notifier);
		kfree(b);
		b = NULL;
		goto out;
	}
	atomic64_inc(&ctx->fl->fst.blocks);
out:
	mutex_unlock(&ctx->block_mutex);
	return b;
}

/*
 * Remove every block's notifier (each removal waits for a callback in
 * progress). Only once the device no longer walks the context's tables:
 * after UNBIND, a reset, or fl_stop_translations().
 */
static void fl_blocks_remove(struct fl_ctx *ctx)
{
	struct fl_block *b;
	unsigned long idx;

	xa_for_each(&ctx->blocks, idx, b) {
		mmu_interval_notifier_remove(&b->notifier);
		xa_erase(&ctx->blocks, idx);
		kfree(b);
	}
	xa_destroy(&ctx->blocks);
}

/* ---------------------------------------------------------------------- */
/* Contexts */

/* Take a reference on the context with device id @id, if it is bound. */
struct fl_ctx *fl_ctx_get(struct fl_dev *fl, u16 id)
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

/*
 * Give the ids whose quarantine is over back to the ida: the fetcher's GET
 * has passed the PUT read after their UNBIND, or the ring was reset since.
 * Called by the fetcher (fault_mutex held, so fr_get is stable).
 */
void fl_ctx_ids_release(struct fl_dev *fl)
{
	u64 gen = READ_ONCE(fl->generation);
	u32 id;

	lockdep_assert_held(&fl->fault_mutex);
	for (id = 0; id < fl->num_contexts; id++) {
		bool free = false;

		spin_lock(&fl->ctx_lock);
		if (fl->retired[id].held &&
		    (fl->retired[id].gen != gen ||
		     (s32)(fl->fr_get - fl->retired[id].put) >= 0)) {
			fl->retired[id].held = false;
			free = true;
		}
		spin_unlock(&fl->ctx_lock);
		if (free)
			ida_free(&fl->ctx_ida, id);
	}
}

/*
 * Quarantine the id until the ring has passed the UNBIND (see fl_dev). The
 * fetcher releases it; once remove() has started there is no fetcher and
 * the device is reset for good, so the id is free at once. The trylock
 * keeps this callable from any context that drops the last reference.
 */
static void fl_ctx_id_retire(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;

	if (!down_read_trylock(&fl->io_rwsem)) {
		ida_free(&fl->ctx_ida, ctx->id);	/* remove() in progress */
		return;
	}
	if (test_bit(FL_FLAG_DEAD, &fl->flags)) {
		ida_free(&fl->ctx_ida, ctx->id);
	} else {
		spin_lock(&fl->ctx_lock);
		fl->retired[ctx->id] = (struct fl_retired) {
			.put = ctx->retire_put,
			.gen = ctx->retire_gen,
			.held = true,
		};
		spin_unlock(&fl->ctx_lock);
		queue_work(fl->fault_wq, &fl->fault_work);
	}
	up_read(&fl->io_rwsem);
}

/* The context's memory, its mm and device references; the tables are gone. */
static void fl_ctx_free_mem(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;

	mmdrop(ctx->mm);
	kvfree(ctx->fq);
	kvfree(ctx->fwork);
	kfree(ctx->deferred);
	kvfree(ctx->hmm_pfns);
	kvfree(ctx->ahead_pfns);
	kvfree(ctx->fcmds);
	kfree(ctx);
	kref_put(&fl->ref, fl_release_dev);
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
		fl_ctx_id_retire(ctx);
	}
	for (i = 0; i < ctx->nspare; i++)
		fl_pt_free(fl, ctx->spare[i], 1);
	fl_ctx_free_mem(ctx);
}

void fl_ctx_put(struct fl_ctx *ctx)
{
	kref_put(&ctx->ref, fl_ctx_free);
}

/*
 * BIND the context to its root table in the current device generation.
 * ctx->lock held. After a reset the device has forgotten every binding; the
 * job path calls this again when bound_gen is stale.
 */
int fl_ctx_bind_hw(struct fl_ctx *ctx)
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

static int fl_ctx_alloc_fault_state(struct fl_ctx *ctx)
{
	ctx->fq = kvcalloc(FL_CTX_QUEUE, sizeof(*ctx->fq), GFP_KERNEL);
	ctx->fwork = kvcalloc(FL_CTX_QUEUE, sizeof(*ctx->fwork), GFP_KERNEL);
	ctx->deferred = kcalloc(FL_TRANSIENT_SLOTS, sizeof(*ctx->deferred),
				GFP_KERNEL);
	ctx->ahead_pfns = kvcalloc(FL_HUGE_PAGES, sizeof(*ctx->ahead_pfns),
				   GFP_KERNEL);
	ctx->hmm_pfns = kvcalloc(FL_HUGE_PAGES, sizeof(*ctx->hmm_pfns),
				 GFP_KERNEL);
	ctx->fcmds = kvcalloc(FL_CTX_QUEUE + 2, sizeof(*ctx->fcmds), GFP_KERNEL);
	if (!ctx->fq || !ctx->fwork || !ctx->deferred || !ctx->hmm_pfns ||
	    !ctx->ahead_pfns ||
	    !ctx->fcmds)
		return -ENOMEM;
	return 0;
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
	mutex_init(&ctx->pass_mutex);
	mutex_init(&ctx->block_mutex);
	spin_lock_init(&ctx->cancel_lock);
	spin_lock_init(&ctx->fq_lock);
	xa_init(&ctx->blocks);
	INIT_WORK(&ctx->fault_work, fl_ctx_fault_work);
	INIT_WORK(&ctx->ahead_work, fl_ctx_ahead_work);
	INIT_DELAYED_WORK(&ctx->backoff_work, fl_ctx_backoff_work);
	ctx->bound_gen = U64_MAX;
	ctx->fl = fl;
	kref_get(&fl->ref);
	mmgrab(mm);
	ctx->mm = mm;

	ret = fl_ctx_alloc_fault_state(ctx);
	if (ret)
		goto err_free;
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

	mutex_lock(&ctx->lock);
	ret = fl_ctx_bind_hw(ctx);
	mutex_unlock(&ctx->lock);
	if (ret) {
		/* A BIND that timed out may still run: keep the tables. */
		if (ret == -ETIMEDOUT) {
			ctx->leak = true;
			fl_ctx_put(ctx);
			return ERR_PTR(ret);
		}
		goto err_pt;
	}

	spin_lock(&fl->ctx_lock);
	fl->ctx_table[ctx->id] = ctx;
	fl->nr_ctx++;
	spin_unlock(&fl->ctx_lock);
	return ctx;

err_pt:
	fl_pt_free(fl, ctx->root, 3);
	ctx->root = NULL;
err_ida:
	ida_free(&fl->ctx_ida, ctx->id);
err_free:
	fl_ctx_free_mem(ctx);
	return ERR_PTR(ret);
}

/*
 * Release, in this order:
 *  1. dying: the fetcher queues nothing more for the context; forget the
 *     id (entries for it are stale from now); wait for an inline pass in
 *     the fault IRQ thread (pass_mutex), stop its fault work and its ahead
 *     work (which send their last commands for the id now, never after
 *     the id is freed);
 *  2. UNBIND (the device fails the context's stalled jobs), then read the
 *     device's PUT: entries posted before the UNBIND lie before it, and the
 *     id stays retired until the fetcher's GET has passed it;
 *  3. an UNBIND that failed stops the device's translations (a reset)
 *     before the notifiers go, since nothing would clear PTEs after that;
 *  4. remove the block notifiers (each waits for a callback in progress),
 *     then drop the file's reference; the tables go with the last one.
 * Tables are freed only when the device is known not to walk them any
 * more: UNBIND completed, or a reset came after the BIND.
 */
void fl_ctx_destroy(struct fl_ctx *ctx)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_cmd cmd = { .opcode = FL_OP_UNBIND, .context = ctx->id };
	u64 gen;
	int err = 0;

	spin_lock(&ctx->fq_lock);
	ctx->dying = true;
	spin_unlock(&ctx->fq_lock);
	spin_lock(&fl->ctx_lock);
	fl->ctx_table[ctx->id] = NULL;
	fl->nr_ctx--;
	spin_unlock(&fl->ctx_lock);
	/* An inline pass in progress ends; a later one sees dying. */
	mutex_lock(&ctx->pass_mutex);
	mutex_unlock(&ctx->pass_mutex);
	if (cancel_delayed_work_sync(&ctx->backoff_work))
		fl_ctx_put(ctx);
	if (cancel_work_sync(&ctx->fault_work))
		fl_ctx_put(ctx);
	if (cancel_work_sync(&ctx->ahead_work))
		fl_ctx_put(ctx);

	down_read(&fl->io_rwsem);
	mutex_lock(&ctx->lock);
	gen = ctx->bound_gen;
	if (gen == READ_ONCE(fl->generation)) {
		err = test_bit(FL_FLAG_DEAD, &fl->flags) ? -ENODEV :
		      fl_exec(fl, &cmd, 1, FLS_NOINTR);
		if (err && READ_ONCE(fl->generation) != gen &&
		    !test_bit(FL_FLAG_DEAD, &fl->flags))
			err = 0;	/* a reset unbound it */
	}
	ctx->bound_gen = U64_MAX;
	ctx->retire_gen = READ_ONCE(fl->generation);
	if (!READ_ONCE(fl->hw_stopped))
		ctx->retire_put = readl(fl->regs + FL_REG_FR_PUT);
	if (err && !READ_ONCE(fl->hw_stopped)) {
		/* The device may still translate for the id: stop it. */
		fl_stop_translations(fl, gen, err);
		ctx->leak = true;
	}
	mutex_unlock(&ctx->lock);
	up_read(&fl->io_rwsem);

	fl_blocks_remove(ctx);
	fl_ctx_put(ctx);
}

struct fl_ctx *fl_file_ctx(struct fl_file *ff, bool create)
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

void fl_ctx_log_cancel(struct fl_ctx *ctx, u64 va, int err)
{
	unsigned int slot;

	spin_lock(&ctx->cancel_lock);
	slot = ctx->cancel_seq % FL_CANCEL_LOG;
	ctx->cancel_log[slot].seq = ++ctx->cancel_seq;
	ctx->cancel_log[slot].va = va;
	ctx->cancel_log[slot].err = err;
	spin_unlock(&ctx->cancel_lock);
}

u64 fl_ctx_cancel_seq(struct fl_ctx *ctx)
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
int fl_ctx_cancel_errno(struct fl_ctx *ctx, u64 seq0, u64 src,
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
