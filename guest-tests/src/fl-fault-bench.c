// SPDX-License-Identifier: GPL-2.0
/*
 * fl-fault-bench: how fast are device faults here, and why. One guest boot
 * runs a matrix of device fault-in points and the anchors every ratio of
 * qemu/bench needs, on equal buffers:
 *
 *   fl-fault-bench [-q] [-d N] [-m MIB] [-t SECONDS] [-p PARAM=V1,V2,...]...
 *                  [-o POINT]
 *
 *   -q        quick subset (64 MiB buffers, fewer points)
 *   -m MIB    buffer of the base point and of the anchors (default 256)
 *   -t SECS   length of each storm measurement (default 4, quick 2)
 *   -p P=V,.. also sweep the driver's module parameter P over the values
 *             (any file in /sys/module/faultline/parameters; skipped if absent)
 *   -o NAME   only the matrix point NAME, or only the anchor NAME (one_page_job,
 *             munmap, storm_copy), for a fault timeline
 *
 * Every result is one line "FLB {json}" on stdout (qemu/bench collects
 * them; faultline-report turns them into the table, the JSON file and the
 * plots); lines starting with "#" are progress. Figures only; no pass/fail.
 *
 * A point is one device FILL of a fresh buffer (every page first touched by
 * the device) with one setting changed from the base (sequential, 16 lanes,
 * fault_batch 256, prefetch Y, 4 KiB pages, one process, no storm). Per
 * point: bytes and pages made device-accessible per second, faults, batches,
 * mean batch and duplicate share (FL_IOC_FAULT_STATS deltas), fault->replay
 * latency p50/p99/p999 (the device's log2 histogram: each figure is the
 * upper bound of its bucket), the transfer time (the same job again on the
 * now mapped buffer) and servicing = job - transfer, retries, retry timeouts
 * and escalations, deferrals, post-replay prefetch and the time spent in
 * mmu_interval_read_begin() (FL_IOC_FAULT_STATS).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl_common.h"

#define PAGE	4096ul
#define HUGE	(2ul << 20)
#define MIB	(1ul << 20)
#define PARAMS	"/sys/module/faultline/parameters/"
/*
 * The figures the ratios use are taken REPS times, interleaved with the
 * rest (points: at the start, middle and end of the matrix); each is one
 * FLB line and faultline-report takes the median of each figure.
 */
#define REPS	3
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

static int fd, dev_index, quick;
static double storm_secs = 4;
static char dbg_dir[128];

/* ---------------------------------------------------------------------- */
/* JSON lines */

static char jbuf[16384];
static size_t jlen;

static void jraw(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	jlen += vsnprintf(jbuf + jlen, sizeof(jbuf) - jlen, fmt, ap);
	va_end(ap);
	if (jlen >= sizeof(jbuf))
		jlen = sizeof(jbuf) - 1;
}

static void jkey(const char *k)
{
	jraw("%s\"%s\":", jlen > 1 ? "," : "", k);
}

static void jbegin(const char *kind, const char *name)
{
	jlen = 0;
	jraw("{");
	jkey("kind");
	jraw("\"%s\"", kind);
	jkey("name");
	jraw("\"%s\"", name);
}

static void jnum(const char *k, double v)
{
	jkey(k);
	jraw("%.6g", v);
}

static void jint(const char *k, long long v)
{
	jkey(k);
	jraw("%lld", v);
}

static void jstr(const char *k, const char *v)
{
	jkey(k);
	jraw("\"%s\"", v);
}

static void jend(void)
{
	printf("FLB %s}\n", jbuf);
	fflush(stdout);
}

/* ---------------------------------------------------------------------- */
/* Counters */

struct snap {
	struct fl_ioc_fault_stats f;
	struct fl_ioc_stats d;
};

/* A debugfs counter of the driver, or -1 if the driver has none by that name. */
static long long dbg_counter(const char *name)
{
	char path[256], buf[64];

	if (!dbg_dir[0])
		return -1;
	snprintf(path, sizeof(path), "%s/%s", dbg_dir, name);
	if (fl_read_file(path, buf, sizeof(buf)))
		return -1;
	return strtoll(buf, NULL, 0);
}

static void take(struct snap *s)
{
	memset(s, 0, sizeof(*s));
	fl_ioctl(fd, FL_IOC_FAULT_STATS, &s->f);
	fl_ioctl(fd, FL_IOC_STATS, &s->d);
}

#define FD(field) ((long long)(b.f.field - a.f.field))
#define DD(idx) ((long long)(b.d.values[idx] - a.d.values[idx]))

/* Upper bound in us of the bucket holding fraction @q of the histogram. */
static double hist_q(const long long *h, double q)
{
	long long total = 0, acc = 0;
	unsigned int i;

	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++)
		total += h[i];
	if (!total)
		return -1;
	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++) {
		acc += h[i];
		if (acc >= q * total)
			return 2u << i;
	}
	return 2u << (FL_STAT_LAT_BUCKETS - 1);
}

/* ---------------------------------------------------------------------- */
/* Memory, parameters */

static void *map(size_t len, int thp)
{
	char *p = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t a;

	if (p == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)p + HUGE - 1) & ~(HUGE - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	munmap((char *)a + len, (uintptr_t)p + HUGE - a);
	madvise((void *)a, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return (void *)a;
}

static int param_get(const char *name, char *buf, size_t len)
{
	char path[320];

	snprintf(path, sizeof(path), PARAMS "%s", name);
	return fl_read_file(path, buf, len);
}

static int param_set(const char *name, const char *v)
{
	char path[320];
	FILE *f;
	int err;

	snprintf(path, sizeof(path), PARAMS "%s", name);
	f = fopen(path, "w");
	if (!f)
		return -1;
	err = fputs(v, f) < 0;
	return fclose(f) || err ? -1 : 0;
}

/* "params": every module parameter of the driver as it is now. */
static void jparams(void)
{
	DIR *d = opendir(PARAMS);
	struct dirent *e;
	char v[64];
	int n = 0;

	jkey("params");
	jraw("{");
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.' || param_get(e->d_name, v, sizeof(v)))
			continue;
		jraw("%s\"%s\":\"%s\"", n++ ? "," : "", e->d_name, v);
	}
	jraw("}");
	if (d)
		closedir(d);
}

/*
 * Parameters the driver applies only when it (re-)programs the device, such
 * as the fault-interrupt moderation: reset the device after setting one.
 */
static void param_apply(const char *name)
{
	struct fl_ioc_reset r = {};

	if (!strcmp(name, "fr_irq_delay_us") || !strcmp(name, "fr_entries"))
		fl_ioctl(fd, FL_IOC_RESET, &r);
}

static double secs(uint64_t ns)
{
	return ns / 1e9;
}

/* ---------------------------------------------------------------------- */
/* Storms: MADV_DONTNEED of random 64 KiB pieces of a range, continuously */

struct storm {
	char *base;
	size_t len;
	int touch;		/* write a byte first, so there is something to zap */
	volatile int stop;
	unsigned int seed;
	unsigned long ops;
	pthread_t t;
};

static void *storm_fn(void *arg)
{
	struct storm *s = arg;
	size_t piece = s->len < 16 * PAGE ? s->len : 16 * PAGE;
	size_t slots = (s->len - piece) / PAGE + 1;

	while (!s->stop) {
		char *p = s->base + (rand_r(&s->seed) % slots) * PAGE;

		if (s->touch)
			*(volatile char *)p = 1;
		madvise(p, piece, MADV_DONTNEED);
		s->ops++;
	}
	return NULL;
}

static void storm_start(struct storm *s, unsigned int n, char *base, size_t len,
			int touch)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		s[i] = (struct storm){ .base = base, .len = len, .touch = touch,
				       .seed = 12345 + i };
		pthread_create(&s[i].t, NULL, storm_fn, &s[i]);
	}
}

static unsigned long storm_stop(struct storm *s, unsigned int n)
{
	unsigned long ops = 0;
	unsigned int i;

	for (i = 0; i < n; i++)
		s[i].stop = 1;
	for (i = 0; i < n; i++) {
		pthread_join(s[i].t, NULL);
		ops += s[i].ops;
	}
	return ops;
}

/* ---------------------------------------------------------------------- */
/* Matrix points */

enum { STORM_NONE, STORM_OWN, STORM_UNRELATED };
static const char *const storm_names[] = { "none", "own", "unrelated" };
static const char *const pat_names[] = { "seq", "strided", "random" };

struct point {
	const char *name;
	const char *group;	/* the dimension this point varies */
	size_t mib;
	unsigned int pattern, lanes, batch;
	const char *prefetch;	/* "Y" / "N" */
	int thp, procs, storm;
	const char *pname, *pval;	/* an extra module parameter, or NULL */
};

static char *child_open_map(size_t len, int thp)
{
	struct fl_ioc_bind b = {};
	int cfd = fl_open_dev(dev_index);

	if (cfd < 0 || fl_ioctl(cfd, FL_IOC_BIND, &b))
		return NULL;
	fd = cfd;
	return map(len, thp);
}

/* Shared by the processes of a multi-process point. */
struct mp {
	uint64_t start_ns;
	uint64_t end_ns[8];
	int err[8];
	uint64_t faults[8];
};

/*
 * @procs processes, each with its own device context and buffer of
 * len / procs, start together; returns the span from the start to the
 * last end, 0 on failure.
 */
static uint64_t run_procs(const struct point *pt, size_t len, int *err)
{
	struct mp *mp = mmap(NULL, sizeof(*mp), PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int go[2], ready[2], i, status;
	uint64_t end = 0;
	char c = 1;

	*err = 0;
	if (mp == MAP_FAILED || pipe(go) || pipe(ready))
		return 0;
	for (i = 0; i < pt->procs; i++) {
		pid_t pid = fork();

		if (!pid) {
			struct fl_ioc_job j;
			size_t l = len / pt->procs;
			char *p = child_open_map(l, pt->thp);

			c = p ? 1 : 0;
			if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1 || !p)
				_exit(1);
			mp->err[i] = fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, l,
					    0x5a, pt->lanes, pt->pattern);
			mp->end_ns[i] = fl_now_ns();
			mp->faults[i] = j.faults;
			_exit(0);
		}
	}
	for (i = 0; i < pt->procs; i++)
		if (read(ready[0], &c, 1) != 1 || !c)
			*err = -ENOMEM;
	mp->start_ns = fl_now_ns();
	for (i = 0; i < pt->procs; i++)
		if (write(go[1], &c, 1) != 1)
			*err = -EIO;
	for (i = 0; i < pt->procs; i++)
		wait(&status);
	for (i = 0; i < pt->procs; i++) {
		if (mp->err[i])
			*err = mp->err[i];
		if (mp->end_ns[i] > end)
			end = mp->end_ns[i];
	}
	end = end > mp->start_ns ? end - mp->start_ns : 0;
	close(go[0]);
	close(go[1]);
	close(ready[0]);
	close(ready[1]);
	munmap(mp, sizeof(*mp));
	return end;
}

static void run_point(const struct point *pt)
{
	size_t len = pt->mib * MIB;
	char batch[16], old_extra[64] = "";
	struct storm st[2];
	unsigned long sops = 0;
	struct fl_ioc_job j = {}, jx = {};
	struct snap a, b, c;
	long long hist[FL_STAT_LAT_BUCKETS];
	uint64_t job_ns, xfer_ns = 0, pages;
	char *p = NULL, *other = NULL;
	unsigned int i;
	int err = 0;

	if (pt->pname && param_get(pt->pname, old_extra, sizeof(old_extra))) {
		printf("# %s: no module parameter %s, skipped\n", pt->name, pt->pname);
		return;
	}
	snprintf(batch, sizeof(batch), "%u", pt->batch);
	if (param_set("fault_batch", batch) || param_set("prefetch", pt->prefetch) ||
	    (pt->pname && param_set(pt->pname, pt->pval))) {
		printf("# %s: cannot set the driver's parameters, skipped\n", pt->name);
		if (pt->pname)
			param_set(pt->pname, old_extra);
		return;
	}
	if (pt->pname)
		param_apply(pt->pname);
	printf("# point %s\n", pt->name);
	fflush(stdout);

	if (pt->procs > 1) {
		take(&a);
		job_ns = run_procs(pt, len, &err);
		take(&b);
		c = b;
	} else {
		p = map(len, pt->thp);
		if (!p) {
			printf("# %s: mmap failed\n", pt->name);
			return;
		}
		if (pt->storm == STORM_OWN) {
			storm_start(st, 1, p, len, 0);
		} else if (pt->storm == STORM_UNRELATED) {
			other = map(8 * MIB, 0);
			memset(other, 1, 8 * MIB);
			storm_start(st, 1, other, 8 * MIB, 1);
		}
		take(&a);
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 0x5a,
			     pt->lanes, pt->pattern);
		take(&b);
		job_ns = j.elapsed_ns;
		if (pt->storm != STORM_NONE)
			sops = storm_stop(st, 1);
		/* Transfer: the same job on the buffer the device now maps. */
		if (!err && pt->storm == STORM_NONE) {
			fl_job(fd, &jx, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 0x5b,
			       pt->lanes, pt->pattern);
			xfer_ns = jx.elapsed_ns;
		}
		take(&c);
		munmap(p, len);
		if (other)
			munmap(other, 8 * MIB);
	}
	if (pt->pname) {
		param_set(pt->pname, old_extra);
		param_apply(pt->pname);
	}

	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++)
		hist[i] = DD(FL_STAT_LAT_BASE + i);
	pages = FD(pages_mapped) + 512 * FD(huge_mapped);

	jbegin("point", pt->name);
	jstr("group", pt->group);
	jint("mib", pt->mib);
	jstr("pattern", pat_names[pt->pattern]);
	jint("lanes", pt->lanes);
	jint("fault_batch", pt->batch);
	jstr("prefetch", pt->prefetch);
	jint("thp", pt->thp);
	jint("procs", pt->procs);
	jstr("storm", storm_names[pt->storm]);
	if (pt->pname) {
		jstr("param", pt->pname);
		jstr("param_value", pt->pval);
	}
	jparams();
	jint("error", err);
	jint("job_ns", job_ns);
	jnum("mib_per_s", job_ns ? len / MIB / secs(job_ns) : 0);
	jint("pages_mapped", pages);
	jnum("pages_per_s", job_ns ? pages / secs(job_ns) : 0);
	jint("faults", FD(faults));
	jnum("faults_per_s", job_ns ? FD(faults) / secs(job_ns) : 0);
	jint("batches", FD(batches));
	jnum("batches_per_s", job_ns ? FD(batches) / secs(job_ns) : 0);
	jnum("mean_batch", FD(batches) ? (double)FD(faults) / FD(batches) : 0);
	jint("duplicates", FD(duplicates));
	jnum("duplicate_share", FD(faults) ? (double)FD(duplicates) / FD(faults) : 0);
	jint("windows", FD(windows));
	jint("replays", FD(replays));
	jint("retries", FD(retries));
	jint("retry_timeouts", FD(retry_timeouts));
	jint("cancels", FD(cancels));
	jint("invalidations", FD(invalidations));
	jint("notifier_calls", FD(notifier_calls));
	jint("escalations", FD(escalations));
	jint("deferrals", FD(deferrals));
	jint("transient_cancels", FD(transient_cancels));
	jint("prefetch_blocks", FD(prefetch_blocks));
	jint("prefetch_pages", FD(prefetch_pages));
	jint("begin_wait_ns", FD(begin_wait_ns));
	jint("ctx_passes", FD(ctx_passes));
	jint("dev_faults", DD(FL_STAT_FAULTS_READ) + DD(FL_STAT_FAULTS_WRITE) +
	     DD(FL_STAT_FAULTS_ATOMIC));
	jint("dev_duplicates", DD(FL_STAT_DUPLICATES));
	jint("overflows", DD(FL_STAT_FAULT_OVERFLOWS));
	jint("tlb_hits", DD(FL_STAT_TLB_HITS));
	jint("tlb_misses", DD(FL_STAT_TLB_MISSES));
	jnum("lat_p50_us", hist_q(hist, 0.50));
	jnum("lat_p99_us", hist_q(hist, 0.99));
	jnum("lat_p999_us", hist_q(hist, 0.999));
	jkey("lat_hist");
	jraw("[");
	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++)
		jraw("%s%lld", i ? "," : "", hist[i]);
	jraw("]");
	if (xfer_ns) {
		jint("transfer_ns", xfer_ns);
		jint("servicing_ns", job_ns > xfer_ns ? job_ns - xfer_ns : 0);
		jint("transfer_faults", (long long)(c.f.faults - b.f.faults));
	}
	if (pt->storm != STORM_NONE)
		jint("storm_ops", sops);
	jend();
}

/* ---------------------------------------------------------------------- */
/* Anchors */

static void anchor_cpu_touch(const char *name, size_t len, int thp)
{
	char *p = map(len, thp);
	uint64_t t0, t1, t2;
	size_t i;

	if (!p)
		return;
	t0 = fl_now_ns();
	memset(p, 0x5a, len);		/* the device FILL's work: fault + write */
	t1 = fl_now_ns();
	munmap(p, len);
	p = map(len, thp);
	t2 = fl_now_ns();
	for (i = 0; i < len; i += PAGE)	/* fault only */
		p[i] = 1;
	t2 = fl_now_ns() - t2;
	munmap(p, len);
	jbegin("anchor", name);
	jint("mib", len / MIB);
	jint("thp", thp);
	jint("memset_ns", t1 - t0);
	jnum("mib_per_s", len / MIB / secs(t1 - t0));
	jnum("pages_per_s", len / PAGE / secs(t1 - t0));
	jint("touch_ns", t2);
	jnum("touch_mib_per_s", len / MIB / secs(t2));
	jend();
}

static void anchor_mirror(const char *name, size_t len, int thp, size_t window)
{
	struct fl_ioc_mirror_bench m = {};
	char *p = map(len, thp);
	int err;

	if (!p)
		return;
	m.addr = (uintptr_t)p;
	m.len = len;
	m.window = window;
	m.flags = FL_MIRROR_F_WRITE;
	err = fl_ioctl(fd, FL_IOC_MIRROR_BENCH, &m);
	munmap(p, len);
	jbegin("anchor", name);
	jint("mib", len / MIB);
	jint("thp", thp);
	jint("window", window);
	jint("error", err);
	if (!err) {
		jint("elapsed_ns", m.elapsed_ns);
		jnum("mib_per_s", len / MIB / secs(m.elapsed_ns));
		jnum("pages_per_s", m.pages / secs(m.elapsed_ns));
		jint("windows", m.windows);
		jint("pages", m.pages);
		jint("huge", m.huge);
		jint("retries", m.retries);
	}
	jend();
}

/*
 * The device on prefaulted buffers: (a) CPU-touched then a device job (the
 * device still faults, the CPU page tables are populated); (b) the device
 * job again on the buffer the device maps (no faults: transfer ceiling);
 * (c) an equal cold buffer the device faults in on its own.
 */
static void anchor_prefault(size_t len)
{
	struct fl_ioc_job j1 = {}, j2 = {}, j3 = {};
	char *p = map(len, 0), *q = map(len, 0);
	uint64_t t0, touch;

	if (!p || !q)
		return;
	t0 = fl_now_ns();
	memset(p, 1, len);
	touch = fl_now_ns() - t0;
	fl_job(fd, &j1, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 0x5a, 16, FL_JOBPAT_SEQ);
	fl_job(fd, &j2, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 0x5b, 16, FL_JOBPAT_SEQ);
	fl_job(fd, &j3, FL_JOBOP_FILL, 0, (uintptr_t)q, len, 0x5a, 16, FL_JOBPAT_SEQ);
	munmap(p, len);
	munmap(q, len);
	jbegin("anchor", "device_prefaulted");
	jint("mib", len / MIB);
	jint("cpu_touch_ns", touch);
	jint("job_after_cpu_touch_ns", j1.elapsed_ns);
	jint("job_after_cpu_touch_faults", j1.faults);
	jint("job_device_mapped_ns", j2.elapsed_ns);
	jint("job_device_mapped_faults", j2.faults);
	jnum("mib_per_s", len / MIB / secs(j2.elapsed_ns));
	jint("job_cold_ns", j3.elapsed_ns);
	jnum("cold_mib_per_s", len / MIB / secs(j3.elapsed_ns));
	jend();
}

static void anchor_fence(unsigned int n)
{
	uint64_t *v = calloc(n, sizeof(*v));
	struct fl_ioc_fence f;
	unsigned int i, k = 0;

	for (i = 0; i < n; i++) {
		memset(&f, 0, sizeof(f));
		if (!fl_ioctl(fd, FL_IOC_FENCE, &f))
			v[k++] = f.rtt_ns;
	}
	fl_sort_u64(v, k);
	jbegin("anchor", "fence_rtt");
	jint("n", k);
	jnum("p50_us", fl_percentile(v, k, 50) / 1e3);
	jnum("p99_us", fl_percentile(v, k, 99) / 1e3);
	jend();
	free(v);
}

/*
 * A one-page FILL of a fresh 4 KiB mapping that faults, and the same job
 * again (no fault). The mapping may merge with a neighbouring anonymous VMA,
 * as an application's would; with prefetch on, the fault window is then the
 * 2 MiB block clipped to that VMA.
 */
static void anchor_one_page(const char *name, unsigned int n)
{
	uint64_t *f = calloc(n, sizeof(*f)), *w = calloc(n, sizeof(*w));
	struct fl_ioc_job j;
	unsigned int i;

	for (i = 0; i < n; i++) {
		char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			break;
		fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, PAGE, 1, 1, FL_JOBPAT_SEQ);
		f[i] = j.elapsed_ns;
		fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, PAGE, 2, 1, FL_JOBPAT_SEQ);
		w[i] = j.elapsed_ns;
		munmap(p, PAGE);
	}
	fl_sort_u64(f, i);
	fl_sort_u64(w, i);
	jbegin("anchor", name);
	jint("n", i);
	jnum("fault_p50_us", fl_percentile(f, i, 50) / 1e3);
	jnum("fault_p99_us", fl_percentile(f, i, 99) / 1e3);
	jnum("nofault_p50_us", fl_percentile(w, i, 50) / 1e3);
	jnum("nofault_p99_us", fl_percentile(w, i, 99) / 1e3);
	jend();
	free(f);
	free(w);
}

/* munmap of a CPU-touched buffer the device maps vs one it never saw. */
static void anchor_munmap(size_t len)
{
	struct fl_ioc_job j;
	uint64_t t0, cpu, dev;
	char *p = map(len, 0);

	if (!p)
		return;
	memset(p, 1, len);
	t0 = fl_now_ns();
	munmap(p, len);
	cpu = fl_now_ns() - t0;
	p = map(len, 0);
	memset(p, 1, len);
	fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 2, 16, FL_JOBPAT_SEQ);
	t0 = fl_now_ns();
	munmap(p, len);
	dev = fl_now_ns() - t0;
	jbegin("anchor", "munmap");
	jint("mib", len / MIB);
	jint("cpu_only_ns", cpu);
	jint("device_mapped_ns", dev);
	jend();
}

/*
 * Issue 6's storm figure: COPY of 8 MiB whose own pages (source and
 * destination) two threads keep zapping with MADV_DONTNEED, by the device
 * and by the CPU (memcpy), for storm_secs each.
 */
static void storm_copy(void)
{
	const size_t len = 8 * MIB;
	char *src = map(len, 0), *dst = map(len, 0);
	uint64_t *dl = calloc(100000, sizeof(*dl)), *cl = calloc(100000, sizeof(*cl));
	uint64_t t0, dspan, cspan;
	unsigned int nd = 0, nc = 0, fails = 0;
	unsigned long dops, cops;
	struct storm st[2];
	struct fl_ioc_job j;

	if (!src || !dst || !dl || !cl)
		return;
	memset(src, 3, len);
	memset(dst, 4, len);
	param_set("fault_batch", "256");
	param_set("prefetch", "Y");
	printf("# storm copy: device\n");
	storm_start(st, 1, src, len, 0);
	storm_start(st + 1, 1, dst, len, 0);
	t0 = fl_now_ns();
	while (nd < 100000 && (fl_now_ns() - t0 < storm_secs * 1e9 || !nd)) {
		if (fl_job(fd, &j, FL_JOBOP_COPY, (uintptr_t)src, (uintptr_t)dst,
			   len, 0, 16, FL_JOBPAT_SEQ))
			fails++;
		dl[nd++] = j.elapsed_ns;
	}
	dspan = fl_now_ns() - t0;
	dops = storm_stop(st, 2);
	printf("# storm copy: cpu\n");
	storm_start(st, 1, src, len, 0);
	storm_start(st + 1, 1, dst, len, 0);
	t0 = fl_now_ns();
	while (nc < 100000 && (fl_now_ns() - t0 < storm_secs * 1e9 || !nc)) {
		uint64_t t = fl_now_ns();

		memcpy(dst, src, len);
		cl[nc++] = fl_now_ns() - t;
	}
	cspan = fl_now_ns() - t0;
	cops = storm_stop(st, 2);
	fl_sort_u64(dl, nd);
	fl_sort_u64(cl, nc);
	jbegin("anchor", "storm_copy");
	jint("mib", len / MIB);
	jint("storm_threads", 2);
	jint("device_jobs", nd);
	jint("device_failures", fails);
	jnum("device_mib_per_s", nd * (len / MIB) / secs(dspan));
	jnum("device_p50_ms", fl_percentile(dl, nd, 50) / 1e6);
	jnum("device_p99_ms", fl_percentile(dl, nd, 99) / 1e6);
	jnum("device_max_ms", nd ? dl[nd - 1] / 1e6 : 0);
	jint("device_storm_ops", dops);
	jint("cpu_copies", nc);
	jnum("cpu_mib_per_s", nc * (len / MIB) / secs(cspan));
	jnum("cpu_p50_ms", fl_percentile(cl, nc, 50) / 1e6);
	jnum("cpu_p99_ms", fl_percentile(cl, nc, 99) / 1e6);
	jint("cpu_storm_ops", cops);
	jend();
	munmap(src, len);
	munmap(dst, len);
	free(dl);
	free(cl);
}

/* ---------------------------------------------------------------------- */

#define MAX_POINTS 64
static struct point pts[MAX_POINTS];
static unsigned int npts;
static char names[MAX_POINTS][64];

static struct point *add(const struct point *base, const char *group,
			 const char *fmt, ...)
{
	struct point *p = &pts[npts];
	va_list ap;

	if (npts >= MAX_POINTS)
		return &pts[MAX_POINTS - 1];
	*p = *base;
	p->group = group;
	va_start(ap, fmt);
	vsnprintf(names[npts], sizeof(names[0]), fmt, ap);
	va_end(ap);
	p->name = names[npts++];
	return p;
}

static void rerun_ratio_points(void)
{
	static const char *const again[] = { "base", "thp", "storm_own", "storm_unrelated" };
	unsigned int i, k;

	for (k = 0; k < ARRAY_SIZE(again); k++)
		for (i = 0; i < npts; i++)
			if (!strcmp(pts[i].name, again[k])) {
				run_point(&pts[i]);
				break;
			}
}

int main(int argc, char **argv)
{
	static const char *extra[8];
	unsigned int nextra = 0, i;
	const char *only = NULL;
	int devs[FL_MAX_DEVICES], opt;
	size_t mib = 0, len;
	struct fl_ioc_bind b = {};
	struct fl_ioc_info info = {};
	struct point base, *p;
	char pb[64], pp[64];
	struct stat sb;

	setvbuf(stdout, NULL, _IOLBF, 0);
	dev_index = -1;
	while ((opt = getopt(argc, argv, "qd:m:t:p:o:")) != -1) {
		switch (opt) {
		case 'q':
			quick = 1;
			break;
		case 'd':
			dev_index = atoi(optarg);
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 't':
			storm_secs = strtod(optarg, NULL);
			break;
		case 'o':
			only = optarg;
			break;
		case 'p':
			if (nextra < 8 && strchr(optarg, '='))
				extra[nextra++] = optarg;
			break;
		default:
			fprintf(stderr, "usage: %s [-q] [-d N] [-m MIB] [-t SECS] [-p PARAM=V1,V2] [-o POINT]\n",
				argv[0]);
			return 2;
		}
	}
	if (!mib)
		mib = quick ? 64 : 256;
	if (quick && storm_secs == 4)
		storm_secs = 2;
	if (dev_index < 0) {
		if (fl_list_devices(devs, FL_MAX_DEVICES) <= 0) {
			fprintf(stderr, "no /dev/faultline*\n");
			return 1;
		}
		dev_index = devs[0];
	}
	fd = fl_open_dev(dev_index);
	if (fd < 0 || fl_ioctl(fd, FL_IOC_BIND, &b) || fl_ioctl(fd, FL_IOC_INFO, &info)) {
		fprintf(stderr, "cannot open/bind faultline%d\n", dev_index);
		return 1;
	}
	if (stat("/sys/kernel/debug/faultline", &sb))
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	snprintf(dbg_dir, sizeof(dbg_dir), "/sys/kernel/debug/faultline/faultline%d", dev_index);
	if (stat(dbg_dir, &sb))
		dbg_dir[0] = 0;
	len = mib * MIB;
	param_get("fault_batch", pb, sizeof(pb));
	param_get("prefetch", pp, sizeof(pp));

	jbegin("info", "guest");
	jint("mib", mib);
	jint("quick", quick);
	jint("engines", info.num_engines);
	jint("lanes_per_engine", info.num_lanes);
	jint("tlb_entries", info.tlb_entries);
	jint("context", b.context);
	jint("debugfs", dbg_dir[0] != 0);
	jint("debugfs_counters", dbg_counter("faults") >= 0);
	jstr("default_fault_batch", pb);
	jstr("default_prefetch", pp);
	jparams();
	jend();

	/* Anchors first, on equal buffers. */
	if (only) {
		if (!strcmp(only, "one_page_job"))
			anchor_one_page(only, quick ? 50 : 200);
		else if (!strcmp(only, "munmap"))
			anchor_munmap(len);
		else if (!strcmp(only, "storm_copy"))
			storm_copy();
		else
			goto matrix;
		return 0;
	}
	printf("# anchors\n");
	anchor_fence(quick ? 300 : 1000);
	/*
	 * Single-fault latency first, while the guest is quiet: after the
	 * large buffers below are freed, background kernel work competes with
	 * the fault worker for the vCPUs and this figure grows several times.
	 */
	anchor_one_page("one_page_job", quick ? 50 : 200);
	/* The same with fault windows ending at the faulting page. */
	if (!param_set("prefetch", "N")) {
		anchor_one_page("one_page_job_noprefetch", quick ? 50 : 200);
		param_set("prefetch", pp);
	}
	for (i = 0; i < REPS; i++) {
		anchor_cpu_touch("cpu_first_touch_4k", len, 0);
		anchor_cpu_touch("cpu_first_touch_thp", len, 1);
		anchor_mirror("mirror_2m_4k", len, 0, HUGE);
		anchor_mirror("mirror_2m_thp", len, 1, HUGE);
		anchor_prefault(len);
		anchor_munmap(len);
	}
	anchor_mirror("mirror_4k_4k", quick ? len / 4 : len, 0, PAGE);
	/* The HMM ceiling by window size: what a window policy can reach. */
	for (i = 0; i < 5; i++) {
		static const unsigned int kib[] = { 4, 16, 64, 256, 2048 };
		char name[32];

		snprintf(name, sizeof(name), "mirror_window_%uk", kib[i]);
		anchor_mirror(name, len / 4, 0, kib[i] * 1024ul);
	}
	storm_copy();

matrix:
	/* The matrix: one dimension at a time around the base point. */
	base = (struct point){ .mib = mib, .pattern = FL_JOBPAT_SEQ, .lanes = 16,
			       .batch = 256, .prefetch = "Y", .procs = 1 };
	add(&base, "base", "base");
	add(&base, "pattern", "pattern_strided")->pattern = FL_JOBPAT_STRIDED;
	add(&base, "pattern", "pattern_random")->pattern = FL_JOBPAT_RANDOM;
	for (i = 0; i < 4; i++) {
		static const unsigned int lanes[] = { 1, 4, 32, 64 };

		if (quick && (lanes[i] == 4 || lanes[i] == 32))
			continue;
		if (lanes[i] > info.num_lanes)
			continue;
		add(&base, "lanes", "lanes_%u", lanes[i])->lanes = lanes[i];
	}
	for (i = 0; i < 4; i++) {
		static const unsigned int batch[] = { 1, 4, 16, 1024 };

		if (quick && (batch[i] == 4 || batch[i] == 1024))
			continue;
		add(&base, "batch", "batch_%u", batch[i])->batch = batch[i];
	}
	p = add(&base, "prefetch", "prefetch_N");
	p->prefetch = "N";
	p->mib = quick ? mib / 2 : mib;
	add(&base, "thp", "thp")->thp = 1;
	add(&base, "thp", "thp_random")->thp = 1;
	pts[npts - 1].pattern = FL_JOBPAT_RANDOM;
	add(&base, "procs", "procs_2")->procs = 2;
	if (!quick)
		add(&base, "procs", "procs_4")->procs = 4;
	add(&base, "storm", "storm_own")->storm = STORM_OWN;
	add(&base, "storm", "storm_unrelated")->storm = STORM_UNRELATED;
	/* Prefetch policy: populate the block after the replay once P % is mapped. */
	for (i = 0; i < 4; i++) {
		static const char *const pct[] = { "0", "10", "50", "100" };

		if (quick && i % 2)
			continue;
		p = add(&base, "param", "prefetch_pct_%s", pct[i]);
		p->pname = "prefetch_pct";
		p->pval = pct[i];
	}
	/* Fault-interrupt moderation (applied by a device reset). */
	for (i = 0; i < 2; i++) {
		static const char *const us[] = { "50", "500" };

		if (quick && i)
			continue;
		p = add(&base, "param", "fr_irq_delay_us_%s", us[i]);
		p->pname = "fr_irq_delay_us";
		p->pval = us[i];
	}
	/* Escalation at the first collision, under a storm on the job's pages. */
	p = add(&base, "storm", "storm_own_escalate_1");
	p->storm = STORM_OWN;
	p->pname = "escalate_after";
	p->pval = "1";
	if (!quick) {
		add(&base, "size", "size_64")->mib = 64;
		add(&base, "size", "size_512")->mib = 512;
		p = add(&base, "prefetch", "prefetch_N_random");
		p->prefetch = "N";
		p->pattern = FL_JOBPAT_RANDOM;
		p = add(&base, "prefetch", "prefetch_N_thp");
		p->prefetch = "N";
		p->thp = 1;
	}
	for (i = 0; i < nextra; i++) {
		static char buf[8][256];
		char *save = NULL, *v, *eq;

		snprintf(buf[i], sizeof(buf[i]), "%s", extra[i]);
		eq = strchr(buf[i], '=');
		*eq = 0;
		for (v = strtok_r(eq + 1, ",", &save); v; v = strtok_r(NULL, ",", &save)) {
			p = add(&base, "param", "%s_%s", buf[i], v);
			p->pname = buf[i];
			p->pval = v;
		}
	}
	printf("# matrix: %u points\n", npts);
	for (i = 0; i < npts; i++) {
		if (!only || !strcmp(only, pts[i].name))
			run_point(&pts[i]);
		/* The ratios' points again: mid-matrix and at the end. */
		if (!only && (i == npts / 2 || i == npts - 1))
			rerun_ratio_points();
	}
	param_set("fault_batch", pb);
	param_set("prefetch", pp);
	printf("# fl-fault-bench done\n");
	return 0;
}
