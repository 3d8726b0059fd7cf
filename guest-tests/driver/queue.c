// SPDX-License-Identifier: GPL-2.0
/*
 * queue.c: command queue, waits, reset, interrupts
 */

#include "faultline.h"

const char *fl_err_name(u32 code)
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

/* ---------------------------------------------------------------------- */
/* Waiting */

/*
 * Sleep on fl->wq until @cond(@fl, @arg) holds, for at most fl_timeout_ms,
 * re-evaluating it at least every @poll_ns (0: only when woken); with !@intr
 * signals do not end the wait (the MMU-notifier path must wait for the
 * device even in a task that is being killed).
 * Returns 0, -EINTR or -ETIMEDOUT.
 */
int fl_wait_cond(struct fl_dev *fl,
		 bool (*cond)(struct fl_dev *fl, const void *arg),
		 const void *arg, u64 poll_ns, bool intr)
{
	ktime_t deadline = ktime_add_ms(ktime_get(), READ_ONCE(fl_timeout_ms));

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
		READ_ONCE(fl_timeout_ms), fl_wb_head(fl),
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
int fl_wait_request(struct fl_dev *fl, struct fl_request *req)
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
int fl_submit(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n,
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
				fl->name, READ_ONCE(fl_timeout_ms), fl_wb_head(fl),
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
	if (flags & FLS_ASYNC) {
		req->status = 0;	/* nobody waits: not on the list */
		INIT_LIST_HEAD(&req->node);
	} else {
		req->status = -EINPROGRESS;
		list_add_tail(&req->node, &fl->inflight);
	}
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

void fl_write_addr(struct fl_dev *fl, u32 reg_lo, dma_addr_t addr)
{
	writel(lower_32_bits(addr), fl->regs + reg_lo);
	writel(upper_32_bits(addr), fl->regs + reg_lo + 4);
}

/*
 * Reset the device and wait until the server has processed the reset: the
 * read is answered after every earlier (posted) write, so afterwards the
 * device neither consumes commands nor writes fences or the writeback block.
 */
u32 fl_hw_reset(struct fl_dev *fl)
{
	writel(FL_CTRL_RESET, fl->regs + FL_REG_CONTROL);
	return readl(fl->regs + FL_REG_STATUS);
}

void fl_set_state(struct fl_dev *fl, int state)
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
int fl_hw_init(struct fl_dev *fl)
{
	u32 want = FL_STATUS_ENABLED | FL_STATUS_QUEUE_RUNNING;
	u32 status;

	lockdep_assert_held(&fl->reset_mutex);

	fl_hw_reset(fl);
	memset(fl->cq, 0, (size_t)fl->cq_entries * FL_CMD_SIZE);
	/* The fetcher reads the fault-ring fields of the block under it. */
	mutex_lock(&fl->fault_mutex);
	memset(fl->wb, 0, FL_WB_SIZE);
	mutex_unlock(&fl->fault_mutex);
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
unsigned int fl_quiesce(struct fl_dev *fl, u32 *head_at_reset)
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

int fl_reset(struct fl_dev *fl, struct fl_reset_report *rep)
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

	/* The device disarmed it; the fetch re-arms it by writing GET. */
	atomic64_inc(&fl->irqs[FL_VEC_FAULT]);
	if (READ_ONCE(fl_fault_inline))
		return IRQ_WAKE_THREAD;
	queue_work(fl->fault_wq, &fl->fault_work);
	return IRQ_HANDLED;
}

/* Fetch in the thread, and service a small batch there (fault.c). */
static irqreturn_t fl_irq_fault_thread(int irq, void *data)
{
	fl_fault_irq_thread(data);
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

void fl_free_irqs(struct fl_dev *fl, unsigned int nr)
{
	while (nr--)
		free_irq(pci_irq_vector(fl->pdev, nr), fl);
}

int fl_request_irqs(struct fl_dev *fl)
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
		else if (v == FL_VEC_FAULT)
			ret = request_threaded_irq(irq, fl_irq_fault,
						   fl_irq_fault_thread, 0,
						   fl->irq_name[v], fl);
		else
			ret = request_irq(irq, fl_irq_queue, 0,
					  fl->irq_name[v], fl);
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
/* Executing driver commands */

/*
 * Queue @n commands (split into chunks when needed) and wait until all have
 * executed, polling the completion fence (FLS_ASYNC: queue them and return
 * at once; they execute in order after everything queued before, and
 * nobody learns when). FLS_NOINTR for waits that must
 * not end on a signal.
 */
int fl_exec(struct fl_dev *fl, const struct fl_cmd *cmds, u32 n,
	    unsigned int flags)
{
	const u32 cap = fl->chunk_max - 1;
	struct fl_request req;
	int err;

	do {
		u32 k = min(n, cap);

		err = fl_submit(fl, cmds, k, flags, &req);
		if (!err && !(flags & FLS_ASYNC))
			err = fl_wait_request(fl, &req);
		if (err)
			return err;
		cmds += k;
		n -= k;
	} while (n);
	return 0;
}

bool fl_gen_moved(struct fl_dev *fl, const void *arg)
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
 * - a device error, removal, or no answer within fl_timeout_ms: reset the device
 *   here and mark it failed (FL_IOC_RESET re-initialises it). This cannot
 *   take reset_mutex (its holder may wait for the fault worker, which may be
 *   in hmm_range_fault() calling us), so the raw reset is written under
 *   sq_lock, which orders it before any re-initialisation that clears the
 *   error. Caller holds io_rwsem for reading, so BAR0 is mapped.
 */
void fl_stop_translations(struct fl_dev *fl, u64 gen, int err)
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
