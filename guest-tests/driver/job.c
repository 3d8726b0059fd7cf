// SPDX-License-Identifier: GPL-2.0
/*
 * job.c: jobs and the shared-virtual-memory ioctls
 */

#include "faultline.h"

/* ---------------------------------------------------------------------- */
/* Job records */

/* Free the orphaned records; all of them once the device has been reset. */
void fl_orphans_free(struct fl_dev *fl, bool all)
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

/*
 * Wait for a job's record until it is written, a reset or removal ends the
 * job, or a signal ends the wait. A job that takes longer than
 * job_timeout_ms is reported, once a period, and never cancelled: every
 * fault of a valid VMA is serviced eventually (fault.c), and one of an
 * invalid VMA is cancelled there. A process killed meanwhile ends the job
 * with its context's UNBIND.
 */
static int fl_job_wait_reporting(struct fl_dev *fl, struct fl_ctx *ctx,
				 struct fl_job_wait *w, u64 t0)
{
	unsigned int ms;
	int err;

	for (;;) {
		ms = READ_ONCE(fl_job_timeout_ms);
		err = fl_job_wait(fl, w, ms ? ms : UINT_MAX);
		if (err != -ETIMEDOUT)
			return err;
		atomic64_inc(&fl->fst.job_timeouts);
		dev_warn_ratelimited(fl_device(fl), "%s: job on context %u not done after %llu ms (still waiting): faults %lld, retries %lld, escalations %lld, deferrals %lld, fault ring PUT %u GET %u\n",
				     fl->name, ctx->id,
				     (ktime_get_ns() - t0) / NSEC_PER_MSEC,
				     atomic64_read(&fl->fst.faults),
				     atomic64_read(&fl->fst.retries),
				     atomic64_read(&fl->fst.escalations),
				     atomic64_read(&fl->fst.deferrals),
				     READ_ONCE(fl->wb->fr_put), READ_ONCE(fl->fr_get));
	}
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

/*
 * Run the job described by @ap on @ctx's address space and wait for it; the
 * body of FL_IOC_JOB, also called by the test_hmm compatibility layer. The
 * caller holds fl->io_rwsem for reading and is in the context's mm. @ap's out
 * fields (status, bytes, result, faults, replays, context, elapsed_ns) are
 * written whenever the job's record was read, and then ap->status != 0.
 */
/* The job's arguments, checked before anything is bound or queued. */
static int fl_job_check(const struct fl_ioc_job *a, u64 *slen, u64 *dlen)
{
	if (!a->op || a->op >= ARRAY_SIZE(fl_job_opcode) || a->flags ||
	    a->pattern > FL_JOBPAT_RANDOM || a->engine > 0xff || a->lanes > 0xff ||
	    a->chunk > U32_MAX || !a->len ||
	    !fl_zero(a->reserved, ARRAY_SIZE(a->reserved)))
		return -EINVAL;
	*slen = a->op == FL_JOBOP_COPY || a->op == FL_JOBOP_CHECKSUM ? a->len : 0;
	*dlen = a->op != FL_JOBOP_CHECKSUM ? a->len : 0;
	if ((*slen && !fl_user_range_ok(a->src, *slen)) ||
	    (*dlen && !fl_user_range_ok(a->dst, *dlen)))
		return -EFAULT;
	return 0;
}

int fl_job_run(struct fl_ctx *ctx, struct fl_ioc_job *ap)
{
	struct fl_dev *fl = ctx->fl;
	struct fl_completion *rec;
	struct fl_ioc_job a = *ap;
	struct fl_request req;
	struct fl_job_wait w;
	dma_addr_t rec_dma;
	struct fl_cmd cmd;
	u64 slen = 0, dlen = 0, cseq, t0;
	int err, ret, status;

	ap->status = 0;
	err = fl_job_check(&a, &slen, &dlen);
	if (err)
		return err;

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
		err = fl_job_wait_reporting(fl, ctx, &w, t0);
		ret = fl_wait_request(fl, &req);
		if (!err && ret && !READ_ONCE(rec->status))
			err = ret;
	}
	up_read(&fl->excl_rwsem);
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
		err = fl_ctx_cancel_errno(ctx, cseq, a.src, slen, a.dst, dlen);
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
	*ap = a;
	return err;
}

long fl_ioc_job(struct fl_file *ff, void __user *uarg)
{
	struct fl_ioc_job a;
	struct fl_ctx *ctx;
	u64 slen, dlen;
	int err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	err = fl_job_check(&a, &slen, &dlen);
	if (err)
		return err;	/* nothing bound for a malformed job */
	ctx = fl_file_ctx(ff, true);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	err = fl_job_run(ctx, &a);
	if (a.status && copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return err;
}

long fl_ioc_bind(struct fl_file *ff, void __user *uarg)
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
#define FL_SNAP_MAX		BIT_ULL(20)

long fl_ioc_snapshot(struct fl_file *ff, void __user *uarg)
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

long fl_ioc_fault_stats(struct fl_dev *fl, void __user *uarg)
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
	a.escalations = atomic64_read(&fl->fst.escalations);
	a.deferrals = atomic64_read(&fl->fst.deferrals);
	a.transient_cancels = atomic64_read(&fl->fst.transient_cancels);
	a.cancels_dropped = atomic64_read(&fl->fst.cancels_dropped);
	a.prefetch_blocks = atomic64_read(&fl->fst.prefetch_blocks);
	a.prefetch_pages = atomic64_read(&fl->fst.prefetch_pages);
	a.blocks = atomic64_read(&fl->fst.blocks);
	a.job_timeouts = atomic64_read(&fl->fst.job_timeouts);
	a.begin_wait_ns = atomic64_read(&fl->fst.begin_wait_ns);
	a.ctx_passes = atomic64_read(&fl->fst.ctx_passes);
	spin_lock(&fl->ctx_lock);
	a.contexts = fl->nr_ctx;
	spin_unlock(&fl->ctx_lock);
	return copy_to_user(uarg, &a, sizeof(a)) ? -EFAULT : 0;
}
