// SPDX-License-Identifier: GPL-2.0
/*
 * main.c: probe, remove, FLR, ioctl dispatch
 */

#include "faultline.h"

static DEFINE_IDA(fl_ida);

static void fl_free_dma(struct fl_dev *fl);

unsigned int fl_cq_entries = 1024;
module_param_named(cq_entries, fl_cq_entries, uint, 0444);
MODULE_PARM_DESC(cq_entries, "command-queue entries per device (power of two, 4..65536; default 1024)");

unsigned int fl_timeout_ms = 5000;
module_param_named(timeout_ms, fl_timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms, "longest wait for the device, in ms (default 5000)");

unsigned int fl_fr_entries = 1024;
module_param_named(fr_entries, fl_fr_entries, uint, 0644);
MODULE_PARM_DESC(fr_entries, "fault-ring entries (power of two, 2..; at most the probe-time value or 1024; applied at each reset)");

unsigned int fl_fr_irq_delay_us;
module_param_named(fr_irq_delay_us, fl_fr_irq_delay_us, uint, 0644);
MODULE_PARM_DESC(fr_irq_delay_us, "fault-interrupt moderation in us (0..10000; applied at each reset; default 0)");

unsigned int fl_fault_batch_max = 256;
module_param_named(fault_batch, fl_fault_batch_max, uint, 0644);
MODULE_PARM_DESC(fault_batch, "most fault-ring entries serviced per batch (1..1024; default 256)");

bool fl_fault_prefetch = true;
module_param_named(prefetch, fl_fault_prefetch, bool, 0644);
MODULE_PARM_DESC(prefetch, "fault windows reach the end of their 2 MiB block: hmm_range_fault() then populates every page after the first fault (default Y); N: only up to the window's last fault");

unsigned int fl_job_timeout_ms = 60000;
module_param_named(job_timeout_ms, fl_job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms, "FL_IOC_JOB reports (never cancels) a job not done after this many ms, and again each period (default 60000)");

unsigned int fl_escalate_after = 4;
module_param_named(escalate_after, fl_escalate_after, uint, 0644);
MODULE_PARM_DESC(escalate_after, "collisions with invalidations after which a fault window is serviced under mmap_write_lock (0: never by count; default 4)");

unsigned int fl_escalate_ms = 20;
module_param_named(escalate_ms, fl_escalate_ms, uint, 0644);
MODULE_PARM_DESC(escalate_ms, "time in ms a fault window may spend before it is serviced under mmap_write_lock (0: never by time; default 20)");

unsigned int fl_prefetch_pct;
module_param_named(prefetch_pct, fl_prefetch_pct, uint, 0644);
MODULE_PARM_DESC(prefetch_pct, "with prefetch=Y, populate the rest of a window after the replay once this percentage of its 2 MiB block is mapped (0: always; default 0)");

unsigned int fl_fault_inline = FL_INLINE_MAX;
module_param_named(fault_inline, fl_fault_inline, uint, 0644);
MODULE_PARM_DESC(fault_inline, "a fetch of at most this many pages, all of one idle context, is serviced in the fault interrupt's thread instead of the context's work (0: never; at most 16; default 16)");

bool fl_prefetch_ahead = true;
module_param_named(prefetch_ahead, fl_prefetch_ahead, bool, 0644);
MODULE_PARM_DESC(prefetch_ahead, "with prefetch=Y, when a faulting window's population starts, populate the next 2 MiB block of the same VMA concurrently, on an unbound worker (default Y)");

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
	case FL_IOC_MIRROR_BENCH:
		ret = fl_ioc_mirror_bench(fl, uarg);
		break;
	default:
		ret = -ENOTTY;
		break;
	}
out:
	up_read(&fl->io_rwsem);
	return ret;
}

void fl_release_dev(struct kref *ref)
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

	fl->fr_alloc = clamp_t(u32, fl_fr_entries, FL_FR_MIN_ENTRIES,
			       FL_FR_MAX_ENTRIES);
	fl->fr_alloc = max_t(u32, 1024, rounddown_pow_of_two(fl->fr_alloc));
	fl->fr = dma_alloc_coherent(dev, (size_t)fl->fr_alloc * FL_FAULT_SIZE,
				    &fl->fr_dma, GFP_KERNEL);
	fl->fbatch = kvcalloc(FL_BATCH_LIMIT, sizeof(*fl->fbatch), GFP_KERNEL);
	fl->ctx_table = kcalloc(max(fl->num_contexts, 1U), sizeof(*fl->ctx_table),
				GFP_KERNEL);
	fl->retired = kcalloc(max(fl->num_contexts, 1U), sizeof(*fl->retired),
			      GFP_KERNEL);
	fl->compl_pool = dma_pool_create("faultline-job", dev, FL_COMPL_SIZE,
					 FL_COMPL_SIZE, 0);
	if (!fl->fr || !fl->fbatch || !fl->ctx_table || !fl->retired ||
	    !fl->compl_pool) {
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
	kfree(fl->retired);
	kfree(fl->ctx_table);
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

	if (!is_power_of_2(fl_cq_entries) || fl_cq_entries < FL_CQ_MIN_DRIVER ||
	    fl_cq_entries < FL_CQ_MIN_ENTRIES || fl_cq_entries > FL_CQ_MAX_ENTRIES) {
		dev_err(&pdev->dev, "cq_entries=%u: need a power of two in [%u, %u]\n",
			fl_cq_entries, max(FL_CQ_MIN_DRIVER, FL_CQ_MIN_ENTRIES),
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
	fl->cq_entries = fl_cq_entries;
	fl->chunk_max = min(fl_cq_entries / 2, FL_CHUNK_LIMIT);
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
	fl->fault_wq = alloc_workqueue("%s-fault", WQ_HIGHPRI, 0,
				       fl->name);
	/*
	 * Both per-CPU: the fetcher runs where the fault interrupt came in and
	 * queues the context's pass there, so the fault path crosses no CPU
	 * (under TCG a cross-CPU wake-up costs about a FENCE round trip).
	 * Contexts still run concurrently; CPU_INTENSIVE keeps a pass that
	 * zero-fills a prefetched block from holding up the others.
	 */
	fl->ctx_wq = alloc_workqueue("%s-ctx", WQ_HIGHPRI | WQ_CPU_INTENSIVE, 0,
				     fl->name);
	/*
	 * Unbound: a block populated ahead runs on whichever CPU is free,
	 * beside the context's own pass (fault.c, "Ahead"). Only context
	 * works queue it, so it is destroyed after ctx_wq.
	 */
	fl->ahead_wq = alloc_workqueue("%s-ahead", WQ_UNBOUND, 0, fl->name);
	if (!fl->fault_wq || !fl->ctx_wq || !fl->ahead_wq) {
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
	ret = fl_hmm_register(fl);
	if (ret) {
		misc_deregister(&fl->misc);
		goto err_hw;
	}

	dev_info(&pdev->dev,
		 "%s: version %u.%u, features %#x, %u contexts, %u engines x %u lanes, %u TLB entries; queue %u entries, MSI-X %u vectors\n",
		 fl->name, fl->hw_version >> 16, fl->hw_version & 0xffff,
		 fl->hw_features, fl->num_contexts, fl->num_engines,
		 fl->num_lanes, fl->tlb_entries, fl->cq_entries, FL_MSIX_VECTORS);
	fl_debugfs_add(fl);
	return 0;

err_hw:
	set_bit(FL_FLAG_DEAD, &fl->flags);
	fl_hw_reset(fl);
	fl_free_irqs(fl, FL_VEC_ERROR + 1);
err_vectors:
	pci_free_irq_vectors(pdev);
err_dma:
	fl_hw_reset(fl);
	if (fl->ctx_wq)
		destroy_workqueue(fl->ctx_wq);
	if (fl->ahead_wq)
		destroy_workqueue(fl->ahead_wq);
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

	fl_debugfs_remove(fl);
	misc_deregister(&fl->misc);	/* no new opens */
	fl_hmm_unregister(fl);

	/*
	 * Dead, then at once disabled and reset, before waiting for anything:
	 * from here the device neither translates, DMAs nor interrupts, so an
	 * invalidate callback that returns meanwhile (it skips the fence once
	 * hw_stopped is set) leaves no live TLB behind. Nothing re-enables the
	 * device: every path that would checks FL_FLAG_DEAD first, and FLR
	 * runs under device_lock like remove().
	 */
	set_bit(FL_FLAG_DEAD, &fl->flags);
	writel(0, fl->regs + FL_REG_CONTROL);
	fl_hw_reset(fl);
	WRITE_ONCE(fl->hw_stopped, true);

	/* Waiters see FL_FLAG_DEAD and return -ENODEV; ioctls drain. */
	wake_up_all(&fl->wq);
	cancel_work_sync(&fl->fault_work);	/* its waits end with -ENODEV */
	down_write(&fl->io_rwsem);

	fl_free_irqs(fl, FL_VEC_ERROR + 1);
	pci_free_irq_vectors(pdev);
	destroy_workqueue(fl->ctx_wq);		/* context passes end quickly */
	destroy_workqueue(fl->ahead_wq);	/* so do blocks populated ahead */
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

static int __init fl_init(void)
{
	int ret;

	fl_debugfs_init();
	ret = pci_register_driver(&fl_pci_driver);
	if (ret)
		fl_debugfs_exit();
	return ret;
}
module_init(fl_init);

static void __exit fl_exit(void)
{
	pci_unregister_driver(&fl_pci_driver);
	fl_debugfs_exit();
}
module_exit(fl_exit);

MODULE_DESCRIPTION("faultline GPU-like test device");
MODULE_AUTHOR("faultline project");
MODULE_LICENSE("GPL");
