// SPDX-License-Identifier: GPL-2.0
/*
 * debugfs.c: the driver's counters in /sys/kernel/debug/faultline/<dev>/
 *
 * One read-only file per fault-servicing counter of struct fl_dev's fst
 * (the same values FL_IOC_FAULT_STATS returns), the interrupt counts, and
 * "counters", all of them as "name value" lines, so that a user can
 * `watch cat /sys/kernel/debug/faultline/faultline0/counters` while a
 * workload runs. A new counter in fst is one line in fl_dbg_counters[].
 */

#include "faultline.h"

#include <linux/debugfs.h>
#include <linux/seq_file.h>

struct fl_dbg_counter {
	const char *name;
	size_t offset;		/* of an atomic64_t in struct fl_dev */
};

#define FL_DBG_FST(f)	{ #f, offsetof(struct fl_dev, fst.f) }
#define FL_DBG_IRQ(v, n) { n, offsetof(struct fl_dev, irqs[v]) }

static const struct fl_dbg_counter fl_dbg_counters[] = {
	FL_DBG_FST(faults),
	FL_DBG_FST(batches),
	FL_DBG_FST(duplicates),
	FL_DBG_FST(windows),
	FL_DBG_FST(retries),
	FL_DBG_FST(retry_timeouts),
	FL_DBG_FST(cancels),
	FL_DBG_FST(invalidations),
	FL_DBG_FST(replays),
	FL_DBG_FST(overflows),
	FL_DBG_FST(pages_mapped),
	FL_DBG_FST(huge_mapped),
	FL_DBG_FST(upgrades),
	FL_DBG_FST(notifier_calls),
	FL_DBG_FST(notifier_clears),
	FL_DBG_FST(notifier_busy),
	FL_DBG_FST(worker_runs),
	FL_DBG_FST(stale),
	FL_DBG_FST(escalations),
	FL_DBG_FST(deferrals),
	FL_DBG_FST(transient_cancels),
	FL_DBG_FST(cancels_dropped),
	FL_DBG_FST(prefetch_blocks),
	FL_DBG_FST(prefetch_pages),
	FL_DBG_FST(blocks),
	FL_DBG_FST(job_timeouts),
	FL_DBG_FST(begin_wait_ns),
	FL_DBG_FST(ctx_passes),
	FL_DBG_FST(inline_passes),
	FL_DBG_FST(inline_punts),
	FL_DBG_FST(ahead_blocks),
	FL_DBG_IRQ(FL_VEC_QUEUE, "irq_queue"),
	FL_DBG_IRQ(FL_VEC_FAULT, "irq_fault"),
	FL_DBG_IRQ(FL_VEC_ERROR, "irq_error"),
};

static struct dentry *fl_dbg_root;

static int fl_dbg_get(void *data, u64 *val)
{
	*val = atomic64_read(data);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(fl_dbg_fops, fl_dbg_get, NULL, "%llu\n");

static int fl_dbg_counters_show(struct seq_file *m, void *unused)
{
	struct fl_dev *fl = m->private;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(fl_dbg_counters); i++)
		seq_printf(m, "%s %lld\n", fl_dbg_counters[i].name,
			   atomic64_read((atomic64_t *)((char *)fl +
							fl_dbg_counters[i].offset)));
	seq_printf(m, "fault_batch %u\n", READ_ONCE(fl_fault_batch_max));
	seq_printf(m, "prefetch %d\n", READ_ONCE(fl_fault_prefetch));
	seq_printf(m, "prefetch_pct %u\n", READ_ONCE(fl_prefetch_pct));
	seq_printf(m, "fault_inline %u\n", READ_ONCE(fl_fault_inline));
	seq_printf(m, "prefetch_ahead %d\n", READ_ONCE(fl_prefetch_ahead));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(fl_dbg_counters);

void fl_debugfs_init(void)
{
	fl_dbg_root = debugfs_create_dir(KBUILD_MODNAME, NULL);
}

void fl_debugfs_exit(void)
{
	debugfs_remove_recursive(fl_dbg_root);
	fl_dbg_root = NULL;
}

/* Called at the end of probe; a failure only loses the files. */
void fl_debugfs_add(struct fl_dev *fl)
{
	struct dentry *dir;
	unsigned int i;

	if (IS_ERR_OR_NULL(fl_dbg_root))
		return;
	dir = debugfs_create_dir(fl->name, fl_dbg_root);
	for (i = 0; i < ARRAY_SIZE(fl_dbg_counters); i++)
		debugfs_create_file_unsafe(fl_dbg_counters[i].name, 0444, dir,
					   (char *)fl + fl_dbg_counters[i].offset,
					   &fl_dbg_fops);
	debugfs_create_file("counters", 0444, dir, fl, &fl_dbg_counters_fops);
}

/* Called first in remove: the files go before fl may be freed. */
void fl_debugfs_remove(struct fl_dev *fl)
{
	if (IS_ERR_OR_NULL(fl_dbg_root))
		return;
	debugfs_lookup_and_remove(fl->name, fl_dbg_root);
}
