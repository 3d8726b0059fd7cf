// SPDX-License-Identifier: GPL-2.0
/*
 * testioc.c: test-only ioctls (queue checks, fences, resets, STATS)
 */

#include "faultline.h"

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
				fl->name, READ_ONCE(fl_timeout_ms), fl_wb_head(fl),
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

long fl_ioc_submit(struct fl_dev *fl, void __user *uarg)
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

long fl_ioc_fence(struct fl_dev *fl, void __user *uarg)
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

long fl_ioc_reset(struct fl_dev *fl, void __user *uarg)
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

long fl_ioc_stats(struct fl_dev *fl, void __user *uarg)
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
