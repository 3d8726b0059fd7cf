// SPDX-License-Identifier: GPL-2.0
/*
 * benchioc.c: the test-only FL_IOC_MIRROR_BENCH, the driver-only mirror rate
 *
 * The same window sequence fault.c runs for a device fault, with no device in
 * the loop: a temporary mmu_interval_notifier over the range, and per window
 * mmu_interval_read_begin() -> mmap_read_lock -> hmm_range_fault() ->
 * unlock -> (update lock) mmu_interval_read_retry(). What a device's fault
 * path adds on top of this (fault ring, interrupts, command queue, replay) is
 * what qemu/bench's fault_in_vs_driver_only_mirror ratio measures.
 */

#include "faultline.h"

struct fl_mbench {
	struct mmu_interval_notifier mni;
	struct mutex lock;	/* the update lock of this temporary mirror */
};

static bool fl_mbench_invalidate(struct mmu_interval_notifier *mni,
				 const struct mmu_notifier_range *range,
				 unsigned long cur_seq)
{
	struct fl_mbench *mb = container_of(mni, struct fl_mbench, mni);

	if (mmu_notifier_range_blockable(range))
		mutex_lock(&mb->lock);
	else if (!mutex_trylock(&mb->lock))
		return false;
	mmu_interval_set_seq(mni, cur_seq);
	mutex_unlock(&mb->lock);
	return true;
}

static const struct mmu_interval_notifier_ops fl_mbench_ops = {
	.invalidate = fl_mbench_invalidate,
};

/* One window; 0, or -errno of hmm_range_fault() other than -EBUSY. */
static int fl_mbench_window(struct fl_mbench *mb, struct mm_struct *mm,
			    struct hmm_range *range,
			    struct fl_ioc_mirror_bench *a)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	unsigned long i, n = (range->end - range->start) >> PAGE_SHIFT;
	int ret;

	for (;;) {
		range->notifier_seq = mmu_interval_read_begin(&mb->mni);
		mmap_read_lock(mm);
		ret = hmm_range_fault(range);
		mmap_read_unlock(mm);
		if (!ret) {
			mutex_lock(&mb->lock);
			if (!mmu_interval_read_retry(&mb->mni, range->notifier_seq))
				break;
			mutex_unlock(&mb->lock);
		} else if (ret != -EBUSY) {
			return ret;
		}
		a->retries++;
		if (time_after(jiffies, timeout))
			return -EBUSY;
	}
	/* Where the device path writes its PTEs, count the valid pages. */
	for (i = 0; i < n; i++) {
		unsigned long p = range->hmm_pfns[i];

		if (!(p & HMM_PFN_VALID) || (p & HMM_PFN_ERROR))
			continue;
		a->pages++;
		if (hmm_pfn_to_map_order(p) >= ilog2(FL_HUGE_PAGES))
			a->huge++;
	}
	mutex_unlock(&mb->lock);
	a->windows++;
	return 0;
}

long fl_ioc_mirror_bench(struct fl_dev *fl, void __user *uarg)
{
	struct mm_struct *mm = current->mm;
	struct fl_ioc_mirror_bench a;
	struct hmm_range range = {};
	struct vm_area_struct *vma;
	struct fl_mbench *mb;
	u64 va, end, t0;
	int ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (!fl_zero(a.reserved, ARRAY_SIZE(a.reserved)) ||
	    a.flags & ~FL_MIRROR_F_WRITE)
		return -EINVAL;
	if (!a.window)
		a.window = FL_HUGE_SIZE;
	if (!a.len || a.len > SZ_4G || !PAGE_ALIGNED(a.addr) ||
	    !PAGE_ALIGNED(a.len) || a.addr + a.len < a.addr ||
	    !is_power_of_2(a.window) || a.window < PAGE_SIZE ||
	    a.window > FL_HUGE_SIZE || !mm)
		return -EINVAL;

	mmap_read_lock(mm);
	vma = vma_lookup(mm, a.addr);
	ret = !vma || a.addr + a.len > vma->vm_end ? -EINVAL : 0;
	mmap_read_unlock(mm);
	if (ret)
		return ret;

	mb = kzalloc(sizeof(*mb), GFP_KERNEL);
	if (!mb)
		return -ENOMEM;
	range.hmm_pfns = kvcalloc(a.window >> PAGE_SHIFT, sizeof(unsigned long),
				  GFP_KERNEL);
	if (!range.hmm_pfns) {
		ret = -ENOMEM;
		goto out_free;
	}
	mutex_init(&mb->lock);
	ret = mmu_interval_notifier_insert(&mb->mni, mm, a.addr, a.len,
					   &fl_mbench_ops);
	if (ret)
		goto out_free;

	range.notifier = &mb->mni;
	range.default_flags = HMM_PFN_REQ_FAULT;
	if (a.flags & FL_MIRROR_F_WRITE)
		range.default_flags |= HMM_PFN_REQ_WRITE;
	a.windows = 0;
	a.pages = 0;
	a.huge = 0;
	a.retries = 0;
	end = a.addr + a.len;
	t0 = ktime_get_ns();
	for (va = a.addr; va < end && !ret; va = range.end) {
		range.start = va;
		range.end = min(ALIGN_DOWN(va, a.window) + a.window, end);
		ret = fl_mbench_window(mb, mm, &range, &a);
		if (!ret && fatal_signal_pending(current))
			ret = -EINTR;
	}
	a.elapsed_ns = ktime_get_ns() - t0;
	mmu_interval_notifier_remove(&mb->mni);
	if (!ret && copy_to_user(uarg, &a, sizeof(a)))
		ret = -EFAULT;
out_free:
	kvfree(range.hmm_pfns);
	kfree(mb);
	return ret;
}
