// SPDX-License-Identifier: GPL-2.0
/*
 * ctx.c: contexts and the mirror notifier
 */

#include "faultline.h"

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
void fl_ctx_destroy(struct fl_ctx *ctx)
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
