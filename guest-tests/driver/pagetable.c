// SPDX-License-Identifier: GPL-2.0
/*
 * pagetable.c: the device page table
 */

#include "faultline.h"

struct fl_pt *fl_pt_alloc(struct fl_dev *fl, unsigned int level)
{
	struct fl_pt *pt = kzalloc(sizeof(*pt), GFP_KERNEL);

	if (!pt)
		return NULL;
	pt->e = dma_alloc_coherent(fl_device(fl), PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (!pt->e)
		goto err;
	if (level) {
		pt->child = kcalloc(FL_PT_ENTRIES, sizeof(*pt->child), GFP_KERNEL);
		if (!pt->child)
			goto err_dma;
	}
	return pt;
err_dma:
	dma_free_coherent(fl_device(fl), PAGE_SIZE, pt->e, pt->dma);
err:
	kfree(pt);
	return NULL;
}

void fl_pt_free(struct fl_dev *fl, struct fl_pt *pt, unsigned int level)
{
	unsigned int i;

	if (!pt)
		return;
	if (pt->child) {
		for (i = 0; i < FL_PT_ENTRIES; i++)
			fl_pt_free(fl, pt->child[i], level - 1);
		kfree(pt->child);
	}
	dma_free_coherent(fl_device(fl), PAGE_SIZE, pt->e, pt->dma);
	kfree(pt);
}

/*
 * Fill the spares (outside ctx->lock: GFP_KERNEL may reclaim, and reclaim
 * may call our invalidate callback, which takes ctx->lock). Spares are
 * allocated with child arrays so that they fit any level; level-0 use just
 * ignores the array.
 */
int fl_pt_prealloc(struct fl_ctx *ctx)
{
	struct fl_pt *pt;
	unsigned int n;

	mutex_lock(&ctx->lock);
	n = ctx->nspare;
	mutex_unlock(&ctx->lock);
	while (n < FL_PT_SPARE) {
		pt = fl_pt_alloc(ctx->fl, 1);
		if (!pt)
			return -ENOMEM;
		mutex_lock(&ctx->lock);
		if (ctx->nspare < FL_PT_SPARE) {
			ctx->spare[ctx->nspare++] = pt;
			pt = NULL;
		}
		n = ctx->nspare;
		mutex_unlock(&ctx->lock);
		fl_pt_free(ctx->fl, pt, 1);
	}
	return 0;
}

static unsigned int fl_pt_index(u64 va, unsigned int level)
{
	return (va >> (PAGE_SHIFT + 9 * level)) & (FL_PT_ENTRIES - 1);
}

/* Child table of @pt at @i, taken from the spares if missing. ctx->lock. */
static struct fl_pt *fl_pt_next(struct fl_ctx *ctx, struct fl_pt *pt,
				unsigned int i)
{
	struct fl_pt *c = pt->child[i];

	lockdep_assert_held(&ctx->lock);
	if (!c) {
		if (WARN_ON_ONCE(!ctx->nspare))
			return NULL;
		c = ctx->spare[--ctx->nspare];
		memset(c->e, 0, PAGE_SIZE);
		pt->child[i] = c;
	}
	return c;
}

void fl_span_add(struct fl_span *sp, u64 start, u64 end)
{
	if (sp->start >= sp->end) {
		sp->start = start;
		sp->end = end;
		return;
	}
	sp->start = min(sp->start, start);
	sp->end = max(sp->end, end);
}

/* Clear every valid entry of @c (a level-0 table); true if one was valid. */
static bool fl_pt_zap_table(struct fl_pt *c)
{
	bool any = false;
	unsigned int i;

	for (i = 0; i < FL_PT_ENTRIES; i++) {
		if (c->e[i] & FL_PTE_VALID) {
			WRITE_ONCE(c->e[i], 0);
			any = true;
		}
	}
	return any;
}

/*
 * Write a 4 KiB leaf (@huge false) or a 2 MiB leaf at level 1 for @va.
 * A valid translation that changes (permissions, a 2 MiB leaf replaced by a
 * table or the other way round) is added to @changed: the device may hold it
 * in its TLB, so it must be invalidated before the faulting lane replays.
 * ctx->lock held; the spares must hold FL_PT_SPARE tables. Returns 1 if the
 * entry was written, 0 if it already held @leaf, -ENOMEM without spares.
 *
 * Invariant: a valid PTE is replaced here without an INVALIDATE first, and
 * that is safe, because the old and the new translation map the same
 * physical memory: a PTE is written only from a hmm_range_fault() result
 * that no invalidation of its block overtook (mmu_interval_read_retry()
 * under ctx->lock), and any change of the CPU's mapping of a page runs the
 * block's invalidate callback, which clears the device PTE first. So what
 * changes here is permission (an upgrade) or granularity (4 KiB leaves of a
 * block that the CPU maps with a PMD, and back); until the INVALIDATE that
 * fl_ctx_send() queues before the REPLAY, the device may still use the old
 * translation, which points at the same page with no more rights. The
 * check below catches a breach of that invariant (and counts nothing else).
 */
int fl_pt_set(struct fl_ctx *ctx, u64 va, u64 leaf, bool huge,
	      struct fl_span *changed)
{
	const u64 hstart = ALIGN_DOWN(va, FL_HUGE_SIZE);
	struct fl_pt *pt = ctx->root, *c;
	unsigned int level, i;
	u64 old, tbl;

	lockdep_assert_held(&ctx->lock);
	for (level = 3; level >= 1; level--) {
		i = fl_pt_index(va, level);
		old = pt->e[i];
		if (level == 1 && huge) {
			if (old == leaf)
				return 0;
			if ((old & FL_PTE_VALID) &&
			    ((old & FL_PTE_LEAF) ||
			     (pt->child[i] && fl_pt_zap_table(pt->child[i]))))
				fl_span_add(changed, hstart, hstart + FL_HUGE_SIZE);
			WRITE_ONCE(pt->e[i], leaf);
			return 1;
		}
		c = fl_pt_next(ctx, pt, i);
		if (!c)
			return -ENOMEM;
		tbl = (c->dma & FL_PTE_ADDR_MASK) | FL_PTE_VALID;
		if (old != tbl) {
			if ((old & FL_PTE_VALID) && (old & FL_PTE_LEAF))
				fl_span_add(changed, hstart, hstart + FL_HUGE_SIZE);
			/* Only valid entries were zapped when the leaf went in. */
			memset(c->e, 0, PAGE_SIZE);
			dma_wmb();	/* an empty table before the link to it */
			WRITE_ONCE(pt->e[i], tbl);
		}
		pt = c;
	}
	i = fl_pt_index(va, 0);
	old = pt->e[i];
	if (old == leaf)
		return 0;
	if (old & FL_PTE_VALID) {
		WARN_ON_ONCE((old & FL_PTE_ADDR_MASK) != (leaf & FL_PTE_ADDR_MASK));
		fl_span_add(changed, va, va + PAGE_SIZE);
	}
	WRITE_ONCE(pt->e[i], leaf);
	return 1;
}

/* The leaf mapping @va (0 if none); *@huge says it is a 2 MiB one. ctx->lock. */
u64 fl_pt_lookup(struct fl_ctx *ctx, u64 va, bool *huge)
{
	struct fl_pt *pt = ctx->root;
	unsigned int level;
	u64 e;

	*huge = false;
	for (level = 3; level >= 1; level--) {
		unsigned int i = fl_pt_index(va, level);

		e = pt->e[i];
		if (!(e & FL_PTE_VALID))
			return 0;
		if (e & FL_PTE_LEAF) {
			*huge = true;
			return e;
		}
		pt = pt->child[i];
		if (!pt)
			return 0;
	}
	return pt->e[fl_pt_index(va, 0)];
}

/*
 * Clear every leaf of @pt (at @level, covering VA from @base) that overlaps
 * [start, end). A 2 MiB leaf that overlaps the range only in part is cleared
 * whole, and all of it goes into @cleared, so that the device invalidates
 * every TLB entry it may have made from it.
 */
void fl_pt_clear(struct fl_pt *pt, unsigned int level, u64 base,
		 u64 start, u64 end, struct fl_span *cleared)
{
	const unsigned int shift = PAGE_SHIFT + 9 * level;
	const u64 size = BIT_ULL(shift);
	unsigned int i, first, last;

	first = start > base ? (start - base) >> shift : 0;
	last = min_t(u64, (end - 1 - base) >> shift, FL_PT_ENTRIES - 1);
	for (i = first; i <= last; i++) {
		u64 va = base + (u64)i * size;
		u64 e = pt->e[i];

		if (!(e & FL_PTE_VALID))
			continue;
		if (level == 0 || (e & FL_PTE_LEAF)) {
			WRITE_ONCE(pt->e[i], 0);
			fl_span_add(cleared, va, va + size);
		} else if (pt->child[i]) {
			fl_pt_clear(pt->child[i], level - 1, va, max(start, va),
				    min(end, va + size), cleared);
		}
	}
}

/* True if a leaf of @pt overlapping [start, end) is valid. */
bool fl_pt_any(struct fl_pt *pt, unsigned int level, u64 base,
	       u64 start, u64 end)
{
	const unsigned int shift = PAGE_SHIFT + 9 * level;
	const u64 size = BIT_ULL(shift);
	unsigned int i, first, last;

	first = start > base ? (start - base) >> shift : 0;
	last = min_t(u64, (end - 1 - base) >> shift, FL_PT_ENTRIES - 1);
	for (i = first; i <= last; i++) {
		u64 va = base + (u64)i * size;
		u64 e = pt->e[i];

		if (!(e & FL_PTE_VALID))
			continue;
		if (level == 0 || (e & FL_PTE_LEAF))
			return true;
		if (pt->child[i] &&
		    fl_pt_any(pt->child[i], level - 1, va, max(start, va),
			      min(end, va + size)))
			return true;
	}
	return false;
}

/*
 * How many 4 KiB pages of the 2 MiB block of @va the device maps now (all
 * of them under a 2 MiB leaf). ctx->lock.
 */
unsigned int fl_pt_block_mapped(struct fl_ctx *ctx, u64 va)
{
	struct fl_pt *pt = ctx->root;
	unsigned int level, i, n = 0;
	u64 e;

	lockdep_assert_held(&ctx->lock);
	for (level = 3; level >= 1; level--) {
		i = fl_pt_index(va, level);
		e = pt->e[i];
		if (!(e & FL_PTE_VALID))
			return 0;
		if (e & FL_PTE_LEAF)
			return level == 1 ? FL_HUGE_PAGES : 0;
		pt = pt->child[i];
		if (!pt)
			return 0;
	}
	for (i = 0; i < FL_PT_ENTRIES; i++)
		n += !!(pt->e[i] & FL_PTE_VALID);
	return n;
}
