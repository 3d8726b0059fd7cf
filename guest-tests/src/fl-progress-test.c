// SPDX-License-Identifier: GPL-2.0
/*
 * fl-progress-test: forward progress of device fault servicing under
 * invalidation storms, what a fault means under prefetch, and exact
 * teardown (context ids, remove()).
 *
 *   fl-progress-test [-d N] [-l] [-t SECONDS] [TEST...]
 *
 * -d N uses /dev/faultlineN (default: the lowest present), -l lists the
 * tests, -t sets how long each storm lasts (default 6 s). Prints "ok - NAME"
 * or "not ok - NAME: REASON" per test, then "# N passed, M failed".
 *
 * The storm tests set job_timeout_ms to 2000 for their duration: a driver
 * that cancels a job on time fails them (a job returns an error); this one
 * only reports, so every job must complete. Nothing here asserts a speed:
 * figures are printed as "# " lines, and qemu/bench measures them.
 *
 * remove_during_fill removes the PCI device and rescans the bus; it runs
 * last and only when asked for by name or with -r.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl_common.h"

#define PAGE		4096ul
#define HUGE		(2ul << 20)
#define MIB		(1ul << 20)
#define MAX_LAT		100000

static int dev_index = -1;
static unsigned int storm_s = 6;

#define FAIL(...) do { snprintf(why, wlen, __VA_ARGS__); rc = FL_FAILED; goto out; } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static uint64_t u(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static int open_dev(void)
{
	return fl_open_dev(dev_index);
}

static void *map_buf(size_t len, bool thp)
{
	void *p = fl_map_aligned(len, HUGE, PROT_READ | PROT_WRITE);

	if (p)
		madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}

static uint64_t delta(const struct fl_ioc_fault_stats *a,
		      const struct fl_ioc_fault_stats *b, size_t off)
{
	return *(const uint64_t *)((const char *)b + off) -
	       *(const uint64_t *)((const char *)a + off);
}

#define D(a, b, field) delta(a, b, offsetof(struct fl_ioc_fault_stats, field))

static void stats(int fd, struct fl_ioc_fault_stats *s)
{
	memset(s, 0, sizeof(*s));
	fl_ioctl(fd, FL_IOC_FAULT_STATS, s);
}

static void print_stats(const char *name, const struct fl_ioc_fault_stats *a,
			const struct fl_ioc_fault_stats *b)
{
	printf("# %s: faults %llu, retries %llu, escalations %llu, cancels %llu (dropped %llu), deferrals %llu, job timeout reports %llu, retry timeouts %llu\n",
	       name, (unsigned long long)D(a, b, faults),
	       (unsigned long long)D(a, b, retries),
	       (unsigned long long)D(a, b, escalations),
	       (unsigned long long)D(a, b, cancels),
	       (unsigned long long)D(a, b, cancels_dropped),
	       (unsigned long long)D(a, b, deferrals),
	       (unsigned long long)D(a, b, job_timeouts),
	       (unsigned long long)D(a, b, retry_timeouts));
}

/* A module parameter set for one test and restored afterwards. */
struct saved_param {
	const char *name;
	char old[32];
};

static int param_push(struct saved_param *sp, const char *name, const char *val)
{
	sp->name = name;
	if (fl_param_get(name, sp->old, sizeof(sp->old)))
		return -1;
	return fl_param_set(name, val);
}

/* As param_push(), for a parameter an older driver may not have. */
static int param_push_opt(struct saved_param *sp, const char *name, const char *val)
{
	char old[32];

	if (fl_param_get(name, old, sizeof(old))) {
		sp->name = NULL;
		return 0;
	}
	return param_push(sp, name, val);
}

static void param_pop(struct saved_param *sp)
{
	if (sp->name)
		fl_param_set(sp->name, sp->old);
	sp->name = NULL;
}

/* ---------------------------------------------------------------------- */
/* Storms */

enum storm_kind { STORM_DONTNEED, STORM_MPROTECT, STORM_COW, STORM_TOUCH_DONTNEED };

struct storm {
	enum storm_kind kind;
	unsigned char *p;
	size_t len;
	size_t piece;		/* bytes one storm operation covers */
	unsigned char fill;	/* the content every page keeps (or loses to 0) */
	_Atomic int stop;
	_Atomic uint64_t ops;
};

static void *storm_main(void *arg)
{
	struct storm *s = arg;
	unsigned int seed = (unsigned int)(uintptr_t)s ^ (unsigned int)fl_now_ns();
	const size_t piece = s->piece;
	size_t pieces = s->len / piece;
	pid_t pid;

	while (!atomic_load(&s->stop)) {
		size_t off = (size_t)(rand_r(&seed) % pieces) * piece;

		switch (s->kind) {
		case STORM_DONTNEED:
			madvise(s->p + off, piece, MADV_DONTNEED);
			break;
		case STORM_MPROTECT:
			mprotect(s->p + off, piece, PROT_READ);
			mprotect(s->p + off, piece, PROT_READ | PROT_WRITE);
			break;
		case STORM_COW:
			/* fork write-protects every page; the writes break COW */
			pid = fork();
			if (!pid)
				_exit(0);
			if (pid > 0)
				waitpid(pid, NULL, 0);
			for (size_t i = 0; i < piece; i += PAGE)
				((volatile unsigned char *)s->p)[off + i] = s->fill;
			break;
		case STORM_TOUCH_DONTNEED:
			memset(s->p, s->fill, s->len);
			madvise(s->p, s->len, MADV_DONTNEED);
			break;
		}
		atomic_fetch_add(&s->ops, 1);
	}
	return NULL;
}

struct storm_run {
	struct storm s;
	pthread_t t[4];
	int n;
};

static void storm_start(struct storm_run *r, enum storm_kind kind, void *p,
			size_t len, size_t piece, unsigned char fill, int threads)
{
	int k;

	r->s = (struct storm) { .kind = kind, .p = p, .len = len, .piece = piece,
				.fill = fill };
	r->n = threads;
	for (k = 0; k < threads; k++)
		pthread_create(&r->t[k], NULL, storm_main, &r->s);
}

static void storm_stop(struct storm_run *r)
{
	int k;

	atomic_store(&r->s.stop, 1);
	for (k = 0; k < r->n; k++)
		pthread_join(r->t[k], NULL);
}

/* Job latencies of one test. */
struct lat {
	uint64_t v[MAX_LAT];
	size_t n;
};

static void lat_add(struct lat *l, uint64_t ns)
{
	if (l->n < MAX_LAT)
		l->v[l->n++] = ns;
}

static void lat_print(const char *name, struct lat *l)
{
	fl_sort_u64(l->v, l->n);
	printf("# %s: %zu jobs, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
	       name, l->n, fl_percentile(l->v, l->n, 50) / 1e6,
	       fl_percentile(l->v, l->n, 99) / 1e6,
	       l->n ? l->v[l->n - 1] / 1e6 : 0.0);
}

static bool page_is(const unsigned char *p, unsigned char v)
{
	size_t i;

	for (i = 0; i < PAGE; i++)
		if (p[i] != v)
			return false;
	return true;
}

/*
 * Device jobs on pages under a storm of @kind for storm_s seconds; every
 * job must complete, with the right content. @op is COPY (src -> dst;
 * each destination page holds the fill or, after a DONTNEED, zeros) or
 * CHECKSUM (the content never changes).
 */
static int storm_jobs(char *why, size_t wlen, const char *name,
		      enum storm_kind kind, unsigned int op, int threads, size_t piece)
{
	const size_t len = 16 * MIB, jlen = 8 * MIB;
	const unsigned char fill = 0x3c;
	unsigned char *src = map_buf(len, false), *dst = map_buf(len, false);
	struct fl_ioc_fault_stats s0, s1;
	struct saved_param sp = {};
	static struct lat lat;
	struct storm_run r = {};
	int fd = open_dev(), err, rc = FL_PASS;
	uint64_t t_end, t0, sum;
	bool storming = false;
	struct fl_ioc_job j;
	size_t i;

	lat.n = 0;
	CHECK(fd >= 0 && src && dst, "setup");
	CHECK(!param_push(&sp, "job_timeout_ms", "2000"), "set job_timeout_ms");
	memset(src, fill, len);
	sum = fl_checksum(src, jlen, 0);
	stats(fd, &s0);
	storm_start(&r, kind, src, len, piece, fill, threads);
	storming = true;
	t_end = fl_now_ns() + storm_s * 1000000000ull;
	while (fl_now_ns() < t_end) {
		t0 = fl_now_ns();
		if (op == FL_JOBOP_COPY)
			err = fl_job(fd, &j, FL_JOBOP_COPY, u(src), u(dst), jlen, 0, 0,
				     FL_JOBPAT_SEQ);
		else
			err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(src), 0, jlen, 0, 0,
				     FL_JOBPAT_SEQ);
		lat_add(&lat, fl_now_ns() - t0);
		CHECK(!err, "job %zu failed: %d (%s), status %llu", lat.n, err,
		      strerror(-err), (unsigned long long)j.status);
		if (op == FL_JOBOP_COPY) {
			for (i = 0; i < jlen; i += PAGE)
				CHECK(page_is(dst + i, fill) || page_is(dst + i, 0),
				      "job %zu: destination page %zu is neither the source nor zero",
				      lat.n, i / PAGE);
		} else {
			CHECK(j.result == sum, "job %zu: checksum %#llx, want %#llx", lat.n,
			      (unsigned long long)j.result, (unsigned long long)sum);
		}
	}
	storm_stop(&r);
	storming = false;
	stats(fd, &s1);
	printf("# %s: %llu storm operations\n", name,
	       (unsigned long long)atomic_load(&r.s.ops));
	lat_print(name, &lat);
	print_stats(name, &s0, &s1);
	CHECK(lat.n > 0, "no job ran");
out:
	if (storming)
		storm_stop(&r);
	param_pop(&sp);
	if (src)
		munmap(src, len);
	if (dst)
		munmap(dst, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_storm_dontneed_own(char *why, size_t wlen)
{
	return storm_jobs(why, wlen, "storm_dontneed_own", STORM_DONTNEED,
			  FL_JOBOP_COPY, 3, HUGE);
}

static int t_storm_mprotect_own(char *why, size_t wlen)
{
	return storm_jobs(why, wlen, "storm_mprotect_own", STORM_MPROTECT,
			  FL_JOBOP_CHECKSUM, 3, HUGE);
}

static int t_storm_cow_own(char *why, size_t wlen)
{
	return storm_jobs(why, wlen, "storm_cow_own", STORM_COW,
			  FL_JOBOP_CHECKSUM, 2, HUGE);
}

/*
 * A storm on an unrelated page of the same mm while a fresh 8 MiB buffer
 * faults in: nothing the device maps is invalidated, so no window retries
 * and none escalates.
 */
static int t_unrelated_storm(char *why, size_t wlen)
{
	const size_t len = 8 * MIB;
	unsigned char *other = map_buf(64 * 1024, false), *buf = NULL;
	struct fl_ioc_fault_stats s0, s1;
	struct storm_run r = {};
	int fd = open_dev(), err, rc = FL_PASS, round;
	bool storming = false;
	struct fl_ioc_job j;

	CHECK(fd >= 0 && other, "setup");
	storm_start(&r, STORM_TOUCH_DONTNEED, other, 64 * 1024, 64 * 1024, 0x11, 1);
	storming = true;
	stats(fd, &s0);
	for (round = 0; round < 4; round++) {
		buf = map_buf(len, false);
		CHECK(buf, "mmap");
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(buf), len, 0x77, 0, FL_JOBPAT_SEQ);
		CHECK(!err, "round %d: fill: %d", round, err);
		CHECK(buf[0] == 0x77 && buf[len - 1] == 0x77, "round %d: fill not seen", round);
		munmap(buf, len);
		buf = NULL;
	}
	stats(fd, &s1);
	storm_stop(&r);
	storming = false;
	printf("# unrelated_storm: %llu storm operations during the fault-ins\n",
	       (unsigned long long)atomic_load(&r.s.ops));
	print_stats("unrelated_storm", &s0, &s1);
	CHECK(atomic_load(&r.s.ops) > 0, "the storm did not run");
	CHECK(!D(&s0, &s1, retries), "%llu window retries for invalidations the device never mapped",
	      (unsigned long long)D(&s0, &s1, retries));
	CHECK(!D(&s0, &s1, escalations) && !D(&s0, &s1, retry_timeouts),
	      "escalations %llu, retry timeouts %llu",
	      (unsigned long long)D(&s0, &s1, escalations),
	      (unsigned long long)D(&s0, &s1, retry_timeouts));
out:
	if (storming)
		storm_stop(&r);
	if (buf)
		munmap(buf, len);
	if (other)
		munmap(other, 64 * 1024);
	if (fd >= 0)
		close(fd);
	return rc;
}

/*
 * Two processes: an innocent one runs one-page jobs that fault, on fresh
 * memory each time, while the other storms its own pages under device
 * COPYs. The innocent one's jobs all complete, and keep completing during
 * the storm (at least 10 in storm_s seconds: one every 400 ms at most).
 */
static int t_innocent_process(char *why, size_t wlen)
{
	int pfd[2] = { -1, -1 }, rc = FL_PASS, status;
	struct { uint64_t jobs, failed, p50, p99, max; int err; } res = {};
	char sub[256] = "";
	pid_t child;

	CHECK(!pipe(pfd), "pipe");
	child = fork();
	CHECK(child >= 0, "fork");
	if (!child) {
		static struct lat lat;
		int fd = open_dev(), err;
		struct fl_ioc_job j;
		uint64_t t_end, t0;

		close(pfd[0]);
		usleep(300000);	/* the storm is under way */
		t_end = fl_now_ns() + (storm_s > 1 ? storm_s - 1 : 1) * 1000000000ull;
		while (fd >= 0 && fl_now_ns() < t_end) {
			unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
						MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED)
				break;
			t0 = fl_now_ns();
			err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), PAGE, 0x42, 1,
				     FL_JOBPAT_SEQ);
			lat_add(&lat, fl_now_ns() - t0);
			res.jobs++;
			if (err || p[PAGE - 1] != 0x42) {
				res.failed++;
				res.err = err;
			}
			munmap(p, PAGE);
		}
		fl_sort_u64(lat.v, lat.n);
		res.p50 = fl_percentile(lat.v, lat.n, 50);
		res.p99 = fl_percentile(lat.v, lat.n, 99);
		res.max = lat.n ? lat.v[lat.n - 1] : 0;
		if (write(pfd[1], &res, sizeof(res)) != sizeof(res))
			_exit(3);
		_exit(0);
	}
	close(pfd[1]);
	pfd[1] = -1;
	rc = storm_jobs(sub, sizeof(sub), "innocent_process/storming", STORM_DONTNEED,
			FL_JOBOP_COPY, 3, HUGE);
	if (read(pfd[0], &res, sizeof(res)) != sizeof(res))
		res.err = -EPIPE;
	waitpid(child, &status, 0);
	CHECK(rc == FL_PASS, "the storming process: %s", sub);
	printf("# innocent_process: %llu one-page jobs during the storm, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
	       (unsigned long long)res.jobs, res.p50 / 1e6, res.p99 / 1e6, res.max / 1e6);
	CHECK(!res.failed && res.err != -EPIPE, "%llu of the innocent process's jobs failed (%d)",
	      (unsigned long long)res.failed, res.err);
	CHECK(res.jobs >= 10, "the innocent process completed only %llu jobs during the storm",
	      (unsigned long long)res.jobs);
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* What a fault means */

/*
 * A shared mapping of 2 MiB over an 8 KiB memfd: the first page reads fine
 * with prefetch on (prefetching the window hits SIGBUS past the end of the
 * file, which must not cancel the valid page), and a page past the end of
 * the file fails with -EFAULT.
 */
static int t_short_file(char *why, size_t wlen)
{
	struct saved_param sp = {}, sp2 = {};
	int mfd = memfd_create("fl-short", 0), fd = open_dev(), err, rc = FL_PASS;
	unsigned char *p = MAP_FAILED, data[2 * PAGE];
	struct fl_ioc_job j;

	CHECK(mfd >= 0 && fd >= 0, "setup");
	memset(data, 0x5e, sizeof(data));
	CHECK(write(mfd, data, sizeof(data)) == sizeof(data), "write memfd");
	CHECK(!param_push(&sp, "prefetch", "Y") && !param_push_opt(&sp2, "prefetch_pct", "0"),
	      "set prefetch");
	p = mmap(NULL, HUGE, PROT_READ, MAP_SHARED, mfd, 0);
	CHECK(p != MAP_FAILED, "mmap");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, PAGE, 0, 1, FL_JOBPAT_SEQ);
	CHECK(!err, "reading the first page: %d (%s)", err, strerror(-err));
	CHECK(j.result == fl_checksum(data, PAGE, 0), "wrong checksum of the first page");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p + PAGE), 0, PAGE, 0, 1, FL_JOBPAT_SEQ);
	CHECK(!err, "reading the second page: %d", err);
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p + 4 * PAGE), 0, PAGE, 0, 1,
		     FL_JOBPAT_SEQ);
	CHECK(err == -EFAULT, "reading past the end of the file: %d, want -EFAULT", err);
out:
	param_pop(&sp2);
	param_pop(&sp);
	if (p != MAP_FAILED)
		munmap(p, HUGE);
	if (mfd >= 0)
		close(mfd);
	if (fd >= 0)
		close(fd);
	return rc;
}

struct uffd_filler {
	int uffd;
	unsigned char *dst;
	unsigned char *src;
	unsigned int delay_us;
	int err;
};

static void *uffd_fill_main(void *arg)
{
	struct uffd_filler *f = arg;
	struct uffdio_copy c = {
		.dst = u(f->dst), .src = u(f->src), .len = PAGE,
	};

	usleep(f->delay_us);
	f->err = ioctl(f->uffd, UFFDIO_COPY, &c) ? -errno : 0;
	return NULL;
}

/*
 * A device read of a page in a userfaultfd-registered range that user space
 * populates (UFFDIO_COPY) 50 ms later: the fault fails meanwhile (the
 * device's fault cannot wait for the userfaultfd handler), which is
 * transient, so it is retried with backoff, not cancelled, and the job
 * reads the page user space provided.
 */
static int t_userfaultfd_backoff(char *why, size_t wlen)
{
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), fd = open_dev();
	unsigned char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	static unsigned char src[PAGE];
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {};
	struct fl_ioc_fault_stats s0, s1;
	struct uffd_filler f;
	struct fl_ioc_job j;
	int err, rc = FL_PASS;
	pthread_t t;

	CHECK(fd >= 0 && p != MAP_FAILED, "setup");
	CHECK(uffd >= 0, "userfaultfd: %s", strerror(errno));
	CHECK(!ioctl(uffd, UFFDIO_API, &api), "UFFDIO_API: %s", strerror(errno));
	reg.range.start = u(p);
	reg.range.len = 4 * PAGE;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	CHECK(!ioctl(uffd, UFFDIO_REGISTER, &reg), "UFFDIO_REGISTER: %s", strerror(errno));
	memset(src, 0x6b, sizeof(src));
	f = (struct uffd_filler) { .uffd = uffd, .dst = p, .src = src, .delay_us = 50000 };
	stats(fd, &s0);
	pthread_create(&t, NULL, uffd_fill_main, &f);
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, PAGE, 0, 1, FL_JOBPAT_SEQ);
	pthread_join(t, NULL);
	stats(fd, &s1);
	print_stats("userfaultfd_backoff", &s0, &s1);
	CHECK(!f.err, "UFFDIO_COPY: %s", strerror(-f.err));
	CHECK(!err, "the device read failed: %d (%s)", err, strerror(-err));
	CHECK(j.result == fl_checksum(src, PAGE, 0), "the device read other bytes");
	CHECK(D(&s0, &s1, deferrals) > 0, "no deferral: the page was never in backoff");
out:
	if (uffd >= 0)
		close(uffd);
	if (p != MAP_FAILED)
		munmap(p, 4 * PAGE);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* pagemap bit 56: the page is mapped exclusively (by this process only). */
static int count_exclusive(const void *p, size_t len, size_t *first)
{
	int pm = open("/proc/self/pagemap", O_RDONLY), n = 0;
	size_t i;

	if (pm < 0)
		return -1;
	for (i = 0; i < len / PAGE; i++) {
		uint64_t e;

		if (pread(pm, &e, sizeof(e), (off_t)((u(p) / PAGE + i) * sizeof(e))) != sizeof(e)) {
			n = -1;
			break;
		}
		if (e & (1ull << 56)) {
			if (!n)
				*first = i;
			n++;
		}
	}
	close(pm);
	return n;
}

/*
 * Fork, then a one-byte device write in the parent: exactly that page
 * loses its sharing with the child (a device write never write-faults the
 * rest of its window, and prefetch never write-faults a present page).
 */
static int t_fork_one_page(char *why, size_t wlen)
{
	const size_t len = HUGE, target = 100;
	struct saved_param sp = {}, sp2 = {};
	unsigned char *p = map_buf(len, false);
	int fd = open_dev(), err, rc = FL_PASS, n, gate[2] = { -1, -1 };
	struct fl_ioc_job j;
	size_t first = 0;
	pid_t child = -1;
	char c = 0;

	CHECK(fd >= 0 && p && !pipe(gate), "setup");
	CHECK(!param_push(&sp, "prefetch", "Y") && !param_push_opt(&sp2, "prefetch_pct", "0"),
	      "set prefetch");
	memset(p, 0x21, len);
	child = fork();
	CHECK(child >= 0, "fork");
	if (!child) {
		close(gate[1]);
		if (read(gate[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	n = count_exclusive(p, len, &first);
	CHECK(n == 0, "%d pages exclusive right after fork", n);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p + target * PAGE + 7), 1, 0x99, 1,
		     FL_JOBPAT_SEQ);
	CHECK(!err, "device write: %d", err);
	CHECK(p[target * PAGE + 7] == 0x99, "the write is not seen");
	usleep(100000);	/* prefetch after the replay has run */
	n = count_exclusive(p, len, &first);
	CHECK(n == 1 && first == target,
	      "%d pages lost their sharing (first: page %zu); want only page %zu", n, first,
	      target);
out:
	if (gate[1] >= 0)
		close(gate[1]);
	if (gate[0] >= 0)
		close(gate[0]);
	if (child > 0)
		waitpid(child, NULL, 0);
	param_pop(&sp2);
	param_pop(&sp);
	if (p)
		munmap(p, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* Teardown */

#define REUSE_ADDR	((void *)0x600000000000ul)
#define REUSE_LEN	(64 * MIB)

/*
 * The owner of a context is SIGKILLed with faults pending; a new process
 * binds (getting the same id if the driver lets it go) and maps the same
 * address: nothing is mapped or populated for it that it did not touch.
 */
static int t_id_reuse(char *why, size_t wlen)
{
	struct saved_param sp = {}, sp2 = {};
	int rc = FL_PASS, status, pfd[2] = { -1, -1 }, round;
	struct { uint64_t id, valid, resident; int err; } res;
	pid_t a, b;

	CHECK(!param_push(&sp, "prefetch", "N") && !param_push(&sp2, "fault_batch", "1"),
	      "set parameters");
	for (round = 0; round < 3; round++) {
		uint64_t a_id = UINT64_MAX;

		CHECK(!pipe(pfd), "pipe");
		a = fork();
		CHECK(a >= 0, "fork");
		if (!a) {
			struct fl_ioc_bind bd = {};
			struct fl_ioc_job j;
			int fd = open_dev();
			void *p = mmap(REUSE_ADDR, REUSE_LEN, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

			if (fd < 0 || p != REUSE_ADDR || fl_ioctl(fd, FL_IOC_BIND, &bd))
				_exit(2);
			madvise(p, REUSE_LEN, MADV_NOHUGEPAGE);
			if (write(pfd[1], &bd.context, sizeof(bd.context)) < 0)
				_exit(3);
			fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), REUSE_LEN, 1, 0, FL_JOBPAT_RANDOM);
			_exit(0);
		}
		if (read(pfd[0], &a_id, sizeof(a_id)) != sizeof(a_id)) {
			waitpid(a, NULL, 0);
			FAIL("the first process did not bind");
		}
		usleep(50000 + round * 50000);	/* its faults are pending */
		kill(a, SIGKILL);
		waitpid(a, NULL, 0);
		b = fork();
		CHECK(b >= 0, "fork");
		if (!b) {
			struct fl_ioc_bind bd = {};
			struct fl_ioc_snapshot s = {};
			static unsigned char snap[REUSE_LEN / PAGE], mc[REUSE_LEN / PAGE];
			int fd = open_dev();
			void *p = mmap(REUSE_ADDR, REUSE_LEN, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			size_t i;

			memset(&res, 0, sizeof(res));
			if (fd < 0 || p != REUSE_ADDR)
				res.err = -ENODEV;
			else
				res.err = fl_ioctl(fd, FL_IOC_BIND, &bd);
			madvise(p, REUSE_LEN, MADV_NOHUGEPAGE);
			res.id = bd.context;
			usleep(300000);	/* stale entries, if any, get serviced */
			s.addr = u(p);
			s.npages = REUSE_LEN / PAGE;
			s.ptr = u(snap);
			if (!res.err)
				res.err = fl_ioctl(fd, FL_IOC_SNAPSHOT, &s);
			res.valid = s.valid;
			if (!res.err && !mincore(p, REUSE_LEN, mc))
				for (i = 0; i < REUSE_LEN / PAGE; i++)
					res.resident += mc[i] & 1;
			if (write(pfd[1], &res, sizeof(res)) < 0)
				_exit(3);
			_exit(0);
		}
		memset(&res, 0, sizeof(res));
		if (read(pfd[0], &res, sizeof(res)) != sizeof(res))
			res.err = -EPIPE;
		waitpid(b, &status, 0);
		close(pfd[0]);
		close(pfd[1]);
		pfd[0] = pfd[1] = -1;
		printf("# id_reuse: round %d: first owner had context %llu, the next got %llu\n",
		       round, (unsigned long long)a_id, (unsigned long long)res.id);
		CHECK(!res.err, "round %d: second process: %d", round, res.err);
		CHECK(!res.valid && !res.resident,
		      "round %d: the new owner of context %llu has %llu device PTEs and %llu resident pages it never touched",
		      round, (unsigned long long)res.id, (unsigned long long)res.valid,
		      (unsigned long long)res.resident);
	}
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	param_pop(&sp2);
	param_pop(&sp);
	return rc;
}

struct remap_racer {
	unsigned char *p;
	size_t len;
	unsigned int delay_us;
	int done;
};

static void *remap_main(void *arg)
{
	struct remap_racer *r = arg;
	static unsigned char fill[64 * 1024];
	int mfd;
	size_t off;
	void *q;

	usleep(r->delay_us);
	munmap(r->p, r->len);
	/*
	 * New memory for the same addresses: a memfd filled through write()
	 * (its pages are allocated now, likely from the ones just freed) and
	 * mapped read-only from the start, so no device write to it is
	 * legitimate: one would come from a translation of the old memory.
	 */
	mfd = memfd_create("fl-remap", 0);
	if (mfd < 0)
		return NULL;
	memset(fill, 0xa5, sizeof(fill));
	for (off = 0; off < r->len; off += sizeof(fill))
		if (write(mfd, fill, sizeof(fill)) != sizeof(fill))
			goto out;
	q = mmap(r->p, r->len, PROT_READ, MAP_SHARED | MAP_FIXED, mfd, 0);
	if (q != MAP_FAILED)
		r->done = 1;
out:
	close(mfd);
	return NULL;
}

struct fill_racer {
	int fd;
	unsigned char *p;
	size_t len;
	int err;
};

static void *fill_main(void *arg)
{
	struct fill_racer *f = arg;
	struct fl_ioc_job j;

	f->err = fl_job(f->fd, &j, FL_JOBOP_FILL, 0, u(f->p), f->len, 0x3e, 0,
			FL_JOBPAT_RANDOM);
	return NULL;
}

static int wait_for_dev(int index, unsigned int ms)
{
	char path[64];

	snprintf(path, sizeof(path), "/dev/faultline%d", index);
	while (ms--) {
		if (!access(path, F_OK))
			return 0;
		usleep(1000);
	}
	return -1;
}

/*
 * remove() during a device FILL while another thread munmaps part of the
 * buffer and maps new memory there: the new memory is never written (the
 * device is stopped before remove() waits for anything, so no invalidate
 * callback can return with its TLB live). Then the bus is rescanned.
 */
static int t_remove_during_fill(char *why, size_t wlen)
{
	const size_t len = 32 * MIB;
	char bdf[64], path[160];
	int rc = FL_PASS, round, wfd;
	size_t i;

	CHECK(!fl_pci_address(dev_index, bdf, sizeof(bdf)), "PCI address of faultline%d",
	      dev_index);
	for (round = 0; round < 2; round++) {
		struct fill_racer f = { .fd = open_dev(), .len = len };
		struct remap_racer r;
		pthread_t tf, tr;

		f.p = map_buf(len, false);
		CHECK(f.fd >= 0 && f.p, "round %d: setup", round);
		r = (struct remap_racer) { .p = f.p + len / 2, .len = len / 2,
					   .delay_us = 20000 + round * 20000 };
		pthread_create(&tf, NULL, fill_main, &f);
		pthread_create(&tr, NULL, remap_main, &r);
		usleep(r.delay_us);
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/remove", bdf);
		wfd = open(path, O_WRONLY);
		CHECK(wfd >= 0, "open %s", path);
		CHECK(write(wfd, "1", 1) == 1, "remove");
		close(wfd);
		pthread_join(tr, NULL);
		pthread_join(tf, NULL);
		close(f.fd);
		printf("# remove_during_fill: round %d: the fill ended with %d\n", round, f.err);
		CHECK(r.done, "round %d: remapping failed", round);
		usleep(200000);
		for (i = 0; i < len / 2; i++)
			CHECK(r.p[i] == 0xa5, "round %d: new memory written at byte %zu (%#x)",
			      round, i, r.p[i]);
		munmap(f.p, len);
		wfd = open("/sys/bus/pci/rescan", O_WRONLY);
		CHECK(wfd >= 0 && write(wfd, "1", 1) == 1, "rescan");
		close(wfd);
		CHECK(!wait_for_dev(dev_index, 10000), "faultline%d did not come back", dev_index);
	}
out:
	return rc;
}

/* ---------------------------------------------------------------------- */

/* remove_during_fill runs only by name or with -r. */
static const struct fl_test tests[] = {
	{ "storm_dontneed_own", t_storm_dontneed_own, 0 },
	{ "storm_mprotect_own", t_storm_mprotect_own, 0 },
	{ "storm_cow_own", t_storm_cow_own, 0 },
	{ "unrelated_storm", t_unrelated_storm, 0 },
	{ "innocent_process", t_innocent_process, 0 },
	{ "short_file", t_short_file, 0 },
	{ "userfaultfd_backoff", t_userfaultfd_backoff, 0 },
	{ "fork_one_page", t_fork_one_page, 0 },
	{ "id_reuse", t_id_reuse, 0 },
	{ "remove_during_fill", t_remove_during_fill, 1 },
};

int main(int argc, char **argv)
{
	int devs[FL_MAX_DEVICES], ndev, opt;
	bool destructive = false;
	size_t i;

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "d:lrt:")) != -1) {
		switch (opt) {
		case 'd':
			dev_index = atoi(optarg);
			break;
		case 'r':
			destructive = true;
			break;
		case 't':
			storm_s = (unsigned int)atoi(optarg);
			break;
		case 'l':
			for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
				printf("%s\n", tests[i].name);
			return 0;
		default:
			fprintf(stderr, "usage: %s [-d N] [-l] [-r] [-t SECONDS] [TEST...]\n",
				argv[0]);
			return 2;
		}
	}
	if (dev_index < 0) {
		ndev = fl_list_devices(devs, FL_MAX_DEVICES);
		if (ndev <= 0) {
			printf("not ok - setup: no /dev/faultline*\n# 0 passed, 1 failed\n");
			return 1;
		}
		dev_index = devs[0];
	}
	return fl_run_tests(tests, sizeof(tests) / sizeof(tests[0]), argv + optind,
			    argc - optind, destructive) ? 1 : 0;
}
