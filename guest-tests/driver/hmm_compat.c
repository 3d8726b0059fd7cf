// SPDX-License-Identifier: GPL-2.0
/*
 * hmm_compat.c: the uAPI of the kernel's HMM test driver (lib/test_hmm.c) on
 * faultline devices, so that the kernel's own selftest
 * (tools/testing/selftests/mm/hmm-tests.c) runs, unmodified, through the
 * device's MMU, its fault ring and this driver's fault servicing.
 *
 * /dev/hmm_dmirrorN is registered beside /dev/faultlineN for N < FL_HMM_UNITS
 * (test_hmm's units 0 and 1 mirror; its units 2 and 3 are the device-coherent
 * ones, and faultline has no device memory). Each open file gets, on its first
 * READ/WRITE/MIGRATE_TO_DEV, a device context of its own (struct fl_file, as
 * for /dev/faultlineN) mirroring the opener's mm.
 *
 *   READ, WRITE  one FL_OP_JOB_COPY between [addr, addr + npages pages) and the
 *                caller's buffer ptr, both translated by the device's MMU; the
 *                device faults on what its mirror lacks and fault.c services
 *                it. No CPU copy of the data. cpages is the bytes the job
 *                moved, in pages. faults is test_hmm's count of fault passes:
 *                1 if the device's page table lacked a page of the range (or
 *                lacked write permission, for WRITE) when the job started and
 *                the job took faults, else 0. The device's own per-job count
 *                (every lane, the buffer's pages too) is not that measure.
 *   SNAPSHOT     the CPU page table's view of the range: hmm_range_fault()
 *                without faulting, under a temporary interval notifier,
 *                encoded as test_hmm encodes it (HMM_DMIRROR_PROT_*).
 *   MIGRATE_TO_DEV
 *                faultline has no device memory: the pages are collected and
 *                unmapped by migrate_vma_setup() (which invalidates every
 *                mirror of the range, this one included), get no destination
 *                and are restored; then, as test_hmm does after a migration,
 *                the range is read back to ptr by the device, or -ENOENT if
 *                this file's mirror did not hold every page of it before.
 *   RELEASE      nothing to release (no device memory): 0.
 *   MIGRATE_TO_SYS, EXCLUSIVE, CHECK_EXCLUSIVE
 *                -EOPNOTSUPP: no device memory to migrate back from, and
 *                make_device_exclusive_range() is not exported.
 *   mmap         zeroed pages inserted with vm_insert_page(), as test_hmm's
 *                mmap does (a VM_MIXEDMAP mapping).
 *
 * The ioctl numbers and structures below are test_hmm's ABI, defined here
 * (no kernel package installs test_hmm_uapi.h). Built with LINUX_SRC=<the
 * guest kernel's source> (qemu/test does), the kernel's header is included
 * too and static_asserts check that both agree.
 */

#include "faultline.h"

#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/pgtable.h>

/* test_hmm's struct hmm_dmirror_cmd */
struct fl_hmm_cmd {
	__u64 addr;		/* in: the mirrored range */
	__u64 ptr;		/* in: the caller's buffer */
	__u64 npages;		/* in: pages in the range */
	__u64 cpages;		/* out: pages copied (or snapshotted) */
	__u64 faults;		/* out: fault passes */
};

#define FL_HMM_READ		_IOWR('H', 0x00, struct fl_hmm_cmd)
#define FL_HMM_WRITE		_IOWR('H', 0x01, struct fl_hmm_cmd)
#define FL_HMM_MIGRATE_TO_DEV	_IOWR('H', 0x02, struct fl_hmm_cmd)
#define FL_HMM_MIGRATE_TO_SYS	_IOWR('H', 0x03, struct fl_hmm_cmd)
#define FL_HMM_SNAPSHOT		_IOWR('H', 0x04, struct fl_hmm_cmd)
#define FL_HMM_EXCLUSIVE	_IOWR('H', 0x05, struct fl_hmm_cmd)
#define FL_HMM_CHECK_EXCLUSIVE	_IOWR('H', 0x06, struct fl_hmm_cmd)
#define FL_HMM_RELEASE		_IOWR('H', 0x07, struct fl_hmm_cmd)

/* SNAPSHOT bytes: test_hmm's HMM_DMIRROR_PROT_* */
#define FL_HMM_PROT_ERROR		0xff	/* no VMA, or not readable */
#define FL_HMM_PROT_NONE		0x00	/* not populated */
#define FL_HMM_PROT_READ		0x01
#define FL_HMM_PROT_WRITE		0x02
#define FL_HMM_PROT_PMD			0x04
#define FL_HMM_PROT_PUD			0x08
#define FL_HMM_PROT_ZERO		0x10
#define FL_HMM_PROT_DEV_PRIVATE_REMOTE	0x30
#define FL_HMM_PROT_DEV_COHERENT_REMOTE	0x50

#ifdef FL_HMM_UAPI_CHECK
/*
 * Built with LINUX_SRC= (qemu/test does): the kernel's own header, from the
 * guest kernel's linux-source, must agree with the definitions above.
 */
#include <test_hmm_uapi.h>

static_assert(sizeof(struct fl_hmm_cmd) == sizeof(struct hmm_dmirror_cmd));
static_assert(offsetof(struct fl_hmm_cmd, addr) == offsetof(struct hmm_dmirror_cmd, addr));
static_assert(offsetof(struct fl_hmm_cmd, ptr) == offsetof(struct hmm_dmirror_cmd, ptr));
static_assert(offsetof(struct fl_hmm_cmd, npages) == offsetof(struct hmm_dmirror_cmd, npages));
static_assert(offsetof(struct fl_hmm_cmd, cpages) == offsetof(struct hmm_dmirror_cmd, cpages));
static_assert(offsetof(struct fl_hmm_cmd, faults) == offsetof(struct hmm_dmirror_cmd, faults));
static_assert(FL_HMM_READ == HMM_DMIRROR_READ);
static_assert(FL_HMM_WRITE == HMM_DMIRROR_WRITE);
static_assert(FL_HMM_MIGRATE_TO_DEV == HMM_DMIRROR_MIGRATE_TO_DEV);
static_assert(FL_HMM_MIGRATE_TO_SYS == HMM_DMIRROR_MIGRATE_TO_SYS);
static_assert(FL_HMM_SNAPSHOT == HMM_DMIRROR_SNAPSHOT);
static_assert(FL_HMM_EXCLUSIVE == HMM_DMIRROR_EXCLUSIVE);
static_assert(FL_HMM_CHECK_EXCLUSIVE == HMM_DMIRROR_CHECK_EXCLUSIVE);
static_assert(FL_HMM_RELEASE == HMM_DMIRROR_RELEASE);
static_assert(FL_HMM_PROT_ERROR == HMM_DMIRROR_PROT_ERROR);
static_assert(FL_HMM_PROT_NONE == HMM_DMIRROR_PROT_NONE);
static_assert(FL_HMM_PROT_READ == HMM_DMIRROR_PROT_READ);
static_assert(FL_HMM_PROT_WRITE == HMM_DMIRROR_PROT_WRITE);
static_assert(FL_HMM_PROT_PMD == HMM_DMIRROR_PROT_PMD);
static_assert(FL_HMM_PROT_PUD == HMM_DMIRROR_PROT_PUD);
static_assert(FL_HMM_PROT_ZERO == HMM_DMIRROR_PROT_ZERO);
static_assert(FL_HMM_PROT_DEV_PRIVATE_REMOTE == HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE);
static_assert(FL_HMM_PROT_DEV_COHERENT_REMOTE == HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE);
#endif

#define FL_HMM_CHUNK		64	/* pages per snapshot or migration step */

struct fl_hmm_file {
	struct fl_file ff;		/* the device context, as for /dev/faultlineN */
	struct mm_struct *mm;		/* the opener's; mmgrab()ed */
	/*
	 * snap_lock: SNAPSHOT's update lock. Taken by the temporary
	 * notifier's callback (inside mmap_lock) around mmu_interval_set_seq()
	 * and by SNAPSHOT around mmu_interval_read_retry() and the encoding of
	 * the hmm_range_fault() result. A leaf: nothing is taken, allocated or
	 * waited for under it.
	 */
	struct mutex snap_lock;
};

/* ---------------------------------------------------------------------- */
/* READ, WRITE: device jobs */

/*
 * Does @ctx's device page table lack a page of the range, or its permission?
 * ctx->lock is held for FL_PT_ENTRIES lookups at a time, so that a long
 * range does not hold off the invalidate callback.
 */
static bool fl_hmm_missing(struct fl_ctx *ctx, u64 addr, u64 npages, bool write)
{
	u64 need = FL_PTE_VALID | (write ? FL_PTE_WRITE : FL_PTE_READ);
	bool missing = false, huge;
	u64 i = 0, stop;

	while (i < npages && !missing) {
		stop = min_t(u64, npages, i + FL_PT_ENTRIES);
		mutex_lock(&ctx->lock);
		for (; i < stop && !missing; i++)
			missing = (fl_pt_lookup(ctx, addr + (i << PAGE_SHIFT), &huge) &
				   need) != need;
		mutex_unlock(&ctx->lock);
		cond_resched();
	}
	return missing;
}

static int fl_hmm_rw(struct fl_hmm_file *hf, struct fl_hmm_cmd *cmd, bool write)
{
	struct fl_ioc_job job = {
		.op = FL_JOBOP_COPY,
		.src = write ? cmd->ptr : cmd->addr,
		.dst = write ? cmd->addr : cmd->ptr,
		.len = cmd->npages << PAGE_SHIFT,
		.pattern = FL_JOBPAT_SEQ,
		.engine = FL_JOB_ENGINE_ANY,
	};
	struct fl_ctx *ctx;
	bool missing;
	int err;

	ctx = fl_file_ctx(&hf->ff, true);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	missing = fl_hmm_missing(ctx, cmd->addr, cmd->npages, write);
	err = fl_job_run(ctx, &job);
	if (err)
		return err;
	cmd->cpages = job.bytes >> PAGE_SHIFT;
	cmd->faults = missing && job.faults;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* SNAPSHOT: the CPU page table, through hmm_range_fault() without faulting */

struct fl_hmm_snap {
	struct mmu_interval_notifier notifier;
	struct fl_hmm_file *hf;
};

static bool fl_hmm_snap_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	struct fl_hmm_snap *snap = container_of(mni, struct fl_hmm_snap, notifier);

	if (mmu_notifier_range_blockable(range))
		mutex_lock(&snap->hf->snap_lock);
	else if (!mutex_trylock(&snap->hf->snap_lock))
		return false;
	mmu_interval_set_seq(mni, cur_seq);
	mutex_unlock(&snap->hf->snap_lock);
	return true;
}

static const struct mmu_interval_notifier_ops fl_hmm_snap_ops = {
	.invalidate = fl_hmm_snap_invalidate,
};

static u8 fl_hmm_prot(unsigned long e)
{
	unsigned int order;
	struct page *page;
	u8 p;

	if (e & HMM_PFN_ERROR)
		return FL_HMM_PROT_ERROR;
	if (!(e & HMM_PFN_VALID))
		return FL_HMM_PROT_NONE;
	page = hmm_pfn_to_page(e);
	/* Device memory is never this device's: faultline has none. */
	if (is_device_private_page(page))
		p = FL_HMM_PROT_DEV_PRIVATE_REMOTE;
	else if (is_device_coherent_page(page))
		p = FL_HMM_PROT_DEV_COHERENT_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		p = FL_HMM_PROT_ZERO;
	else
		p = FL_HMM_PROT_NONE;
	p |= e & HMM_PFN_WRITE ? FL_HMM_PROT_WRITE : FL_HMM_PROT_READ;
	order = hmm_pfn_to_map_order(e);
	if (order + PAGE_SHIFT == PMD_SHIFT)
		p |= FL_HMM_PROT_PMD;
	else if (order + PAGE_SHIFT == PUD_SHIFT)
		p |= FL_HMM_PROT_PUD;
	return p;
}

/* Snapshot [range->start, range->end) into @prot. */
static int fl_hmm_snap_range(struct fl_hmm_file *hf, struct hmm_range *range,
			     u8 *prot)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	struct fl_hmm_snap snap = { .hf = hf };
	unsigned long i, n;
	int ret;

	ret = mmu_interval_notifier_insert(&snap.notifier, hf->mm, range->start,
					   range->end - range->start,
					   &fl_hmm_snap_ops);
	if (ret)
		return ret;
	range->notifier = &snap.notifier;
	for (;;) {
		if (time_after(jiffies, timeout)) {
			ret = -EBUSY;
			goto out;
		}
		range->notifier_seq = mmu_interval_read_begin(range->notifier);
		mmap_read_lock(hf->mm);
		ret = hmm_range_fault(range);
		mmap_read_unlock(hf->mm);
		if (ret == -EBUSY)
			continue;
		if (ret)
			goto out;
		mutex_lock(&hf->snap_lock);
		if (!mmu_interval_read_retry(range->notifier, range->notifier_seq))
			break;
		mutex_unlock(&hf->snap_lock);
	}
	n = (range->end - range->start) >> PAGE_SHIFT;
	for (i = 0; i < n; i++)
		prot[i] = fl_hmm_prot(range->hmm_pfns[i]);
	mutex_unlock(&hf->snap_lock);
out:
	mmu_interval_notifier_remove(&snap.notifier);
	return ret;
}

static int fl_hmm_snapshot(struct fl_hmm_file *hf, struct fl_hmm_cmd *cmd)
{
	unsigned long pfns[FL_HMM_CHUNK];
	u8 prot[FL_HMM_CHUNK];
	struct hmm_range range = { .hmm_pfns = pfns };
	u64 addr, next, end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	char __user *uptr = u64_to_user_ptr(cmd->ptr);
	int ret = 0;

	if (!mmget_not_zero(hf->mm))
		return -EINVAL;
	for (addr = cmd->addr; addr < end; addr = next) {
		unsigned long n;

		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		next = min_t(u64, addr + (FL_HMM_CHUNK << PAGE_SHIFT), end);
		range.start = addr;
		range.end = next;
		ret = fl_hmm_snap_range(hf, &range, prot);
		if (ret)
			break;
		n = (next - addr) >> PAGE_SHIFT;
		if (copy_to_user(uptr, prot, n)) {
			ret = -EFAULT;
			break;
		}
		cmd->cpages += n;
		uptr += n;
	}
	mmput(hf->mm);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* MIGRATE_TO_DEV: a migration with nowhere to go, then a device read */

static int fl_hmm_migrate(struct fl_hmm_file *hf, struct fl_hmm_cmd *cmd)
{
	struct fl_dev *fl = hf->ff.fl;
	u64 addr, next, end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	struct migrate_vma args = {};
	struct vm_area_struct *vma;
	unsigned long *pfns;
	struct fl_ctx *ctx;
	bool mirrored;
	int ret = 0;

	ctx = fl_file_ctx(&hf->ff, true);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	/* What this mirror holds before the migration invalidates it. */
	mirrored = !fl_hmm_missing(ctx, cmd->addr, cmd->npages, false);

	pfns = kcalloc(2 * FL_HMM_CHUNK, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	if (!mmget_not_zero(hf->mm)) {
		kfree(pfns);
		return -EINVAL;
	}
	mmap_read_lock(hf->mm);
	for (addr = cmd->addr; addr < end; addr = next) {
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		vma = vma_lookup(hf->mm, addr);
		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		next = min_t(u64, addr + (FL_HMM_CHUNK << PAGE_SHIFT), end);
		next = min_t(u64, next, vma->vm_end);
		memset(pfns, 0, 2 * FL_HMM_CHUNK * sizeof(*pfns));
		args = (struct migrate_vma) {
			.vma = vma,
			.src = pfns,
			.dst = pfns + FL_HMM_CHUNK,
			.start = addr,
			.end = next,
			.pgmap_owner = fl,
			.flags = MIGRATE_VMA_SELECT_SYSTEM,
		};
		ret = migrate_vma_setup(&args);
		if (ret)
			break;
		/* No device memory: every dst entry stays 0, nothing moves. */
		migrate_vma_pages(&args);
		migrate_vma_finalize(&args);
	}
	mmap_read_unlock(hf->mm);
	mmput(hf->mm);
	kfree(pfns);
	if (ret)
		return ret;
	if (!mirrored)
		return -ENOENT;
	return fl_hmm_rw(hf, cmd, false);
}

/* ---------------------------------------------------------------------- */
/* File operations */

static long fl_hmm_ioctl(struct file *file, unsigned int command,
			 unsigned long arg)
{
	struct fl_hmm_file *hf = file->private_data;
	struct fl_dev *fl = hf->ff.fl;
	void __user *uarg = (void __user *)arg;
	struct fl_hmm_cmd cmd;
	long ret;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.addr & ~PAGE_MASK || cmd.npages > (U64_MAX >> PAGE_SHIFT) ||
	    cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT))
		return -EINVAL;
	if (current->mm != hf->mm)
		return -EINVAL;
	cmd.cpages = 0;
	cmd.faults = 0;

	down_read(&fl->io_rwsem);
	if (test_bit(FL_FLAG_DEAD, &fl->flags)) {
		ret = -ENODEV;
		goto out;
	}
	switch (command) {
	case FL_HMM_READ:
		ret = fl_hmm_rw(hf, &cmd, false);
		break;
	case FL_HMM_WRITE:
		ret = fl_hmm_rw(hf, &cmd, true);
		break;
	case FL_HMM_SNAPSHOT:
		ret = fl_hmm_snapshot(hf, &cmd);
		break;
	case FL_HMM_MIGRATE_TO_DEV:
		ret = fl_hmm_migrate(hf, &cmd);
		break;
	case FL_HMM_RELEASE:
		ret = 0;
		break;
	case FL_HMM_MIGRATE_TO_SYS:
	case FL_HMM_EXCLUSIVE:
	case FL_HMM_CHECK_EXCLUSIVE:
		ret = -EOPNOTSUPP;
		break;
	default:
		ret = -EINVAL;
		break;
	}
out:
	up_read(&fl->io_rwsem);
	if (!ret && copy_to_user(uarg, &cmd, sizeof(cmd)))
		ret = -EFAULT;
	return ret;
}

static int fl_hmm_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long addr;
	struct page *page;
	int ret;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, addr, page);
		put_page(page);		/* the mapping holds its own reference */
		if (ret)
			return ret;
	}
	return 0;
}

static int fl_hmm_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data, under misc_mtx, so we are registered. */
	struct fl_dev *fl = container_of(file->private_data, struct fl_dev,
					 hmm_misc);
	struct fl_hmm_file *hf;

	if (!current->mm)
		return -EINVAL;
	hf = kzalloc(sizeof(*hf), GFP_KERNEL);
	if (!hf)
		return -ENOMEM;
	kref_get(&fl->ref);
	hf->ff.fl = fl;
	mutex_init(&hf->ff.bind_mutex);
	mutex_init(&hf->snap_lock);
	mmgrab(current->mm);
	hf->mm = current->mm;
	file->private_data = hf;
	return 0;
}

static int fl_hmm_release(struct inode *inode, struct file *file)
{
	struct fl_hmm_file *hf = file->private_data;
	struct fl_dev *fl = hf->ff.fl;

	if (hf->ff.ctx)
		fl_ctx_destroy(hf->ff.ctx);
	mutex_destroy(&hf->ff.bind_mutex);
	mutex_destroy(&hf->snap_lock);
	mmdrop(hf->mm);
	kfree(hf);
	kref_put(&fl->ref, fl_release_dev);
	return 0;
}

static const struct file_operations fl_hmm_fops = {
	.owner = THIS_MODULE,
	.open = fl_hmm_open,
	.release = fl_hmm_release,
	.mmap = fl_hmm_mmap,
	.unlocked_ioctl = fl_hmm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

/* Register /dev/hmm_dmirrorN for faultline device N, if N < FL_HMM_UNITS. */
int fl_hmm_register(struct fl_dev *fl)
{
	int ret;

	if (fl->index >= FL_HMM_UNITS)
		return 0;
	snprintf(fl->hmm_name, sizeof(fl->hmm_name), "hmm_dmirror%d", fl->index);
	fl->hmm_misc.minor = MISC_DYNAMIC_MINOR;
	fl->hmm_misc.name = fl->hmm_name;
	fl->hmm_misc.fops = &fl_hmm_fops;
	fl->hmm_misc.parent = &fl->pdev->dev;
	fl->hmm_misc.mode = 0600;
	ret = misc_register(&fl->hmm_misc);
	if (ret) {
		dev_err(fl_device(fl), "cannot register /dev/%s: %d\n",
			fl->hmm_name, ret);
		return ret;
	}
	fl->hmm_registered = true;
	return 0;
}

void fl_hmm_unregister(struct fl_dev *fl)
{
	if (fl->hmm_registered)
		misc_deregister(&fl->hmm_misc);
	fl->hmm_registered = false;
}
