// SPDX-License-Identifier: GPL-2.0
/*
 * fl-hmm-test: guest tests of the driver's HMM mirror and fault servicing,
 * modelled on the kernel's hmm-tests, plus invalidation races.
 *
 *   fl-hmm-test [-d N] [-l] [-i ITER] [-s SEED] [TEST...]
 *
 * -d N uses /dev/faultlineN (default: the lowest present), -l lists the
 * tests, -i scales the race iterations (default 20), -s seeds the fault
 * storm's threads (default: from the clock; printed). Prints "ok - NAME" or
 * "not ok - NAME: REASON" per test, then "# N passed, M failed"; exits 0 iff
 * all passed. The device does the accesses (FL_IOC_JOB on this process's
 * virtual addresses); the CPU checks the results.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl_common.h"

#define PAGE		4096ul
#define HUGE		(2ul << 20)
#define MIB		(1ul << 20)

static int dev_index = -1;
static int iters = 20;
static unsigned int storm_seed;	/* -s; default: from the clock */

#define FAIL(...) do { snprintf(why, wlen, __VA_ARGS__); rc = FL_FAILED; goto out; } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static int open_dev(void)
{
	return fl_open_dev(dev_index);
}

static void *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}


static uint64_t u(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* The device's CHECKSUM of @len bytes at @p (default chunks). */
static uint64_t fnv(const void *p, size_t len)
{
	return fl_checksum(p, len, 0);
}

static uint64_t fnv_zero(size_t len)
{
	void *z = calloc(1, len);
	uint64_t h = fl_checksum(z, len, 0);

	free(z);
	return h;
}

static int snapshot(int fd, const void *addr, size_t len, unsigned char *out,
		    struct fl_ioc_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	s->addr = u(addr);
	s->npages = len / PAGE;
	s->ptr = u(out);
	return fl_ioctl(fd, FL_IOC_SNAPSHOT, s);
}

static void fault_stats(int fd, struct fl_ioc_fault_stats *st)
{
	memset(st, 0, sizeof(*st));
	fl_ioctl(fd, FL_IOC_FAULT_STATS, st);
}

static void spin_us(unsigned int us)
{
	uint64_t end = fl_now_ns() + us * 1000ull;

	while (fl_now_ns() < end)
		;
}

static int job_errno_ok(int err, const struct fl_ioc_job *j, int want)
{
	return err == want && j->status == FL_JOBST_CANCELLED;
}

/* ---------------------------------------------------------------------- */

static int t_bind(char *why, size_t wlen)
{
	struct fl_ioc_bind b = {};
	struct fl_ioc_info info = {};
	int fd = open_dev(), fd2 = -1, err, rc = FL_PASS;

	CHECK(fd >= 0, "open: %s", strerror(-fd));
	err = fl_ioctl(fd, FL_IOC_INFO, &info);
	CHECK(!err, "INFO: %s", strerror(-err));
	CHECK(info.features & 3, "device has no MMU/fault ring (features %#llx)",
	      (unsigned long long)info.features);
	err = fl_ioctl(fd, FL_IOC_BIND, &b);
	CHECK(!err, "BIND: %s", strerror(-err));
	CHECK(b.context < info.num_contexts, "context %llu of %llu",
	      (unsigned long long)b.context, (unsigned long long)info.num_contexts);
	fd2 = open_dev();
	struct fl_ioc_bind b2 = {};

	err = fl_ioctl(fd2, FL_IOC_BIND, &b2);
	CHECK(!err, "second BIND: %s", strerror(-err));
	CHECK(b2.context != b.context, "two files share context %llu",
	      (unsigned long long)b.context);
	printf("# bind: contexts %llu and %llu of %llu\n",
	       (unsigned long long)b.context, (unsigned long long)b2.context,
	       (unsigned long long)info.num_contexts);
out:
	if (fd2 >= 0)
		close(fd2);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Device checksum of CPU-written data and of never-touched pages (zero page). */
static int t_anon_read(char *why, size_t wlen)
{
	const size_t len = 1 * MIB;
	struct fl_ioc_job j;
	struct fl_ioc_snapshot s;
	unsigned char *snap = malloc(len / PAGE);
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(p && snap && fd >= 0, "setup");
	for (i = 0; i < len / 2; i++)
		p[i] = (unsigned char)(i * 13 + 7);
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err, "checksum job: %s (status %llu)", strerror(-err),
	      (unsigned long long)j.status);
	CHECK(j.result == fnv(p, len), "device checksum %#llx, CPU %#llx",
	      (unsigned long long)j.result, (unsigned long long)fnv(p, len));
	CHECK(j.faults > 0, "no faults taken on fresh memory");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p + len / 2), 0, len / 2, 0, 0,
		     FL_JOBPAT_SEQ);
	CHECK(!err && j.result == fnv_zero(len / 2),
	      "untouched half: err %d, checksum %#llx != zeros", err,
	      (unsigned long long)j.result);
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err && s.valid == len / PAGE, "snapshot: err %d, %llu of %lu pages mapped",
	      err, (unsigned long long)s.valid, len / PAGE);
	for (i = len / 2 / PAGE; i < len / PAGE; i++)
		CHECK(!(snap[i] & FL_SNAP_WRITE), "zero page %zu mapped writable", i);
	/* Read-only VMA: reads still work. */
	CHECK(!mprotect(p, len, PROT_READ), "mprotect");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 4, FL_JOBPAT_RANDOM);
	CHECK(!err && j.result == fnv(p, len), "after mprotect(READ): err %d", err);
	/* A second pass has nothing to fault. */
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err && j.faults == 0, "warm pass: err %d, %llu faults", err,
	      (unsigned long long)j.faults);
out:
	if (p)
		munmap(p, len);
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_anon_read_prot(char *why, size_t wlen)
{
	const size_t len = 256 * 1024;
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;

	CHECK(p && fd >= 0, "setup");
	memset(p, 0x5a, len);
	CHECK(!mprotect(p, len, PROT_NONE), "mprotect");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(job_errno_ok(err, &j, -EFAULT),
	      "read of PROT_NONE: err %d status %llu (want EFAULT, cancelled)",
	      err, (unsigned long long)j.status);
	/* Unmapped hole: EFAULT too. */
	CHECK(!munmap(p + len / 2, len / 2), "munmap");
	CHECK(!mprotect(p, len / 2, PROT_READ), "mprotect");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(job_errno_ok(err, &j, -EFAULT), "read over a hole: err %d status %llu",
	      err, (unsigned long long)j.status);
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len / 2, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err && j.result == fnv(p, len / 2), "readable half: err %d", err);
out:
	if (p)
		munmap(p, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_anon_write(char *why, size_t wlen)
{
	const size_t len = 2 * MIB;
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(p && fd >= 0, "setup");
	madvise(p, len, MADV_NOHUGEPAGE);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0xa5, 0, FL_JOBPAT_STRIDED);
	CHECK(!err, "fill: %s status %llu", strerror(-err), (unsigned long long)j.status);
	CHECK(j.bytes == len, "bytes %llu", (unsigned long long)j.bytes);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0xa5, "byte %zu is %#x", i, p[i]);
	/* Unaligned sub-range over existing data. */
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p + 4095), 8194, 0x3c, 3, FL_JOBPAT_SEQ);
	CHECK(!err, "small fill: %d", err);
	for (i = 4090; i < 4095 + 8194 + 5; i++)
		CHECK(p[i] == (i >= 4095 && i < 4095 + 8194 ? 0x3c : 0xa5),
		      "byte %zu is %#x after the unaligned fill", i, p[i]);
out:
	if (p)
		munmap(p, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_anon_write_prot(char *why, size_t wlen)
{
	const size_t len = 512 * 1024;
	unsigned char *p = map_anon(len, PROT_READ);
	struct fl_ioc_job j;
	struct fl_ioc_snapshot s;
	unsigned char *snap = malloc(len / PAGE);
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(p && snap && fd >= 0, "setup");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err && j.result == fnv_zero(len), "read of PROT_READ zero pages: %d", err);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x77, 0, FL_JOBPAT_SEQ);
	CHECK(job_errno_ok(err, &j, -EPERM), "write to PROT_READ: err %d status %llu (want EPERM)",
	      err, (unsigned long long)j.status);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0, "byte %zu written (%#x) through a read-only VMA", i, p[i]);
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err, "snapshot %d", err);
	for (i = 0; i < len / PAGE; i++)
		CHECK(!(snap[i] & FL_SNAP_WRITE), "page %zu writable on the device", i);
	CHECK(!mprotect(p, len, PROT_READ | PROT_WRITE), "mprotect");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x77, 0, FL_JOBPAT_SEQ);
	CHECK(!err, "write after mprotect(RW): %d status %llu", err,
	      (unsigned long long)j.status);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0x77, "byte %zu is %#x", i, p[i]);
out:
	if (p)
		munmap(p, len);
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_copy(char *why, size_t wlen)
{
	const size_t len = 1 * MIB + 3 * PAGE;
	unsigned char *a = map_anon(len, PROT_READ | PROT_WRITE);
	unsigned char *b = map_anon(len, PROT_READ | PROT_WRITE);
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(a && b && fd >= 0, "setup");
	for (i = 0; i < len; i++)
		a[i] = (unsigned char)(i ^ (i >> 9));
	err = fl_job(fd, &j, FL_JOBOP_COPY, u(a), u(b), len, 0, 0, FL_JOBPAT_RANDOM);
	CHECK(!err, "copy: %d status %llu", err, (unsigned long long)j.status);
	CHECK(!memcmp(a, b, len), "copy differs");
	/* Overlapping halves inside one buffer, small chunks. */
	err = fl_job(fd, &j, FL_JOBOP_COPY, u(b), u(a + len / 2), len / 2, 0, 2,
		     FL_JOBPAT_SEQ);
	CHECK(!err && !memcmp(a + len / 2, b, len / 2), "second copy: %d", err);
out:
	if (a)
		munmap(a, len);
	if (b)
		munmap(b, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

struct cpu_adder {
	_Atomic uint64_t *w;
	size_t n;
	int rounds;
};

static void *cpu_add(void *arg)
{
	struct cpu_adder *c = arg;
	int r;
	size_t i;

	for (r = 0; r < c->rounds; r++)
		for (i = 0; i < c->n; i++)
			atomic_fetch_add(&c->w[i], 1);
	return NULL;
}

/* Device atomics and CPU atomics on the same words: no update is lost. */
static int t_atomic_add(char *why, size_t wlen)
{
	const size_t len = 256 * 1024, n = len / 8;
	_Atomic uint64_t *w = map_anon(len, PROT_READ | PROT_WRITE);
	struct cpu_adder c = { .w = w, .n = n, .rounds = 3 };
	struct fl_ioc_job j;
	pthread_t t;
	int fd = open_dev(), err = 0, rc = FL_PASS, k;
	size_t i;

	CHECK(w && fd >= 0, "setup");
	for (i = 0; i < n; i++)
		w[i] = i << 20;
	pthread_create(&t, NULL, cpu_add, &c);
	for (k = 0; k < 4 && !err; k++)
		err = fl_job(fd, &j, FL_JOBOP_ATOMIC_ADD, 0, u(w), len, 1000, 0,
			     FL_JOBPAT_RANDOM);
	pthread_join(t, NULL);
	CHECK(!err, "atomic_add: %d status %llu", err, (unsigned long long)j.status);
	CHECK(j.result == n, "result %llu words, want %zu", (unsigned long long)j.result, n);
	for (i = 0; i < n; i++)
		CHECK(w[i] == (i << 20) + 4000 + 3, "word %zu: %#llx, want %#llx", i,
		      (unsigned long long)w[i], (unsigned long long)((i << 20) + 4003));
out:
	if (w)
		munmap((void *)w, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_file_read(char *why, size_t wlen)
{
	const size_t len = 512 * 1024;
	unsigned char *buf = malloc(len), *p = NULL;
	struct fl_ioc_job j;
	int fd = open_dev(), mfd = memfd_create("fl-file", 0), err, rc = FL_PASS;
	size_t i;

	CHECK(buf && fd >= 0 && mfd >= 0, "setup");
	for (i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 31);
	CHECK(pwrite(mfd, buf, len, 0) == (ssize_t)len, "pwrite");
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, mfd, 0);
	CHECK(p != MAP_FAILED, "mmap");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err && j.result == fnv(buf, len), "checksum of the file: err %d", err);
	/* A write through the file shows up in the device's next read. */
	memset(buf, 0xee, PAGE);
	CHECK(pwrite(mfd, buf, PAGE, 0) == PAGE, "pwrite");
	err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
	CHECK(!err && j.result == fnv(buf, len), "after pwrite: err %d", err);
out:
	if (p && p != MAP_FAILED)
		munmap(p, len);
	free(buf);
	if (mfd >= 0)
		close(mfd);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_file_write(char *why, size_t wlen)
{
	const size_t len = 512 * 1024;
	unsigned char *buf = malloc(len), *p = NULL;
	struct fl_ioc_job j;
	int fd = open_dev(), mfd = memfd_create("fl-file", 0), err, rc = FL_PASS;
	size_t i;

	CHECK(buf && fd >= 0 && mfd >= 0, "setup");
	CHECK(!ftruncate(mfd, len), "ftruncate");
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(p != MAP_FAILED, "mmap");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x42, 0, FL_JOBPAT_RANDOM);
	CHECK(!err, "fill: err %d status %llu", err, (unsigned long long)j.status);
	CHECK(pread(mfd, buf, len, 0) == (ssize_t)len, "pread");
	for (i = 0; i < len; i++)
		CHECK(buf[i] == 0x42, "file byte %zu is %#x", i, buf[i]);
out:
	if (p && p != MAP_FAILED)
		munmap(p, len);
	free(buf);
	if (mfd >= 0)
		close(mfd);
	if (fd >= 0)
		close(fd);
	return rc;
}

static bool thp_enabled(void)
{
	char buf[128];

	if (fl_read_file("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof(buf)))
		return false;
	return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

static int t_anon_write_huge(char *why, size_t wlen)
{
	const size_t len = 2 * HUGE;
	unsigned char *p = fl_map_aligned(len, HUGE, PROT_READ | PROT_WRITE);
	unsigned char *snap = malloc(len / PAGE);
	struct fl_ioc_fault_stats s0, s1;
	struct fl_ioc_snapshot s;
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(p && snap && fd >= 0, "setup");
	madvise(p, len, MADV_HUGEPAGE);
	fault_stats(fd, &s0);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x99, 0, FL_JOBPAT_SEQ);
	fault_stats(fd, &s1);
	CHECK(!err, "fill: err %d status %llu", err, (unsigned long long)j.status);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0x99, "byte %zu is %#x", i, p[i]);
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err, "snapshot: %d", err);
	printf("# anon_write_huge: THP %s, %llu faults, %llu of %lu pages mapped by 2 MiB device PTEs\n",
	       thp_enabled() ? "on" : "off", (unsigned long long)j.faults,
	       (unsigned long long)s.huge, len / PAGE);
	if (thp_enabled())
		CHECK(s.huge == len / PAGE && s1.huge_mapped - s0.huge_mapped >= 2,
		      "THP region not mapped by 2 MiB device pages (%llu of %lu huge)",
		      (unsigned long long)s.huge, len / PAGE);
out:
	if (p)
		munmap(p, len);
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* fork: a child's device write breaks COW; the parent keeps its data (and back). */
static int t_fork_cow(char *why, size_t wlen)
{
	const size_t len = 1 * MIB;
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS, st;
	pid_t pid;
	size_t i;

	CHECK(p && fd >= 0, "setup");
	memset(p, 0x11, len);
	/* The parent's device maps the pages writable first. */
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x12, 0, FL_JOBPAT_SEQ);
	CHECK(!err, "parent fill: %d", err);
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (!pid) {
		int cfd = open_dev(), bad = 0;

		if (cfd < 0 || fl_job(cfd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x22, 0,
				      FL_JOBPAT_SEQ))
			_exit(2);
		for (i = 0; i < len; i++)
			bad |= p[i] != 0x22;
		_exit(bad ? 3 : 0);
	}
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(WIFEXITED(st) && !WEXITSTATUS(st), "child failed (status %#x)", st);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0x12, "parent byte %zu is %#x after the child's device write", i, p[i]);

	/* Parent writes through the device after a fork: child unchanged. */
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (!pid) {
		usleep(200000);
		for (i = 0; i < len; i++)
			if (p[i] != 0x12)
				_exit(4);
		_exit(0);
	}
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x33, 0, FL_JOBPAT_SEQ);
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(!err, "parent fill after fork: %d", err);
	CHECK(WIFEXITED(st) && !WEXITSTATUS(st),
	      "child saw the parent's device write (status %#x)", st);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0x33, "parent byte %zu is %#x", i, p[i]);
out:
	if (p)
		munmap(p, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_invalidate_munmap(char *why, size_t wlen)
{
	const size_t len = 1 * MIB;
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	unsigned char *snap = malloc(len / PAGE);
	struct fl_ioc_fault_stats s0, s1;
	struct fl_ioc_snapshot s;
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;

	CHECK(p && snap && fd >= 0, "setup");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 1, 0, FL_JOBPAT_SEQ);
	CHECK(!err, "fill %d", err);
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err && s.valid == len / PAGE, "mapped %llu", (unsigned long long)s.valid);
	fault_stats(fd, &s0);
	CHECK(!munmap(p + len / 2, len / 2), "munmap");
	fault_stats(fd, &s1);
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err && s.valid == len / PAGE / 2, "after munmap of half: %llu valid",
	      (unsigned long long)s.valid);
	CHECK(s1.invalidations > s0.invalidations, "munmap sent no INVALIDATE");
	CHECK(!madvise(p, len / 2, MADV_DONTNEED), "madvise");
	err = snapshot(fd, p, len, snap, &s);
	CHECK(!err && s.valid == 0, "after DONTNEED: %llu valid", (unsigned long long)s.valid);
out:
	if (p)
		munmap(p, len);
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}


static int count_resident(void *p, size_t len)
{
	unsigned char v[512];
	size_t i;
	int n = 0;

	if (len / PAGE > sizeof(v) || mincore(p, len, v))
		return -1;
	for (i = 0; i < len / PAGE; i++)
		n += v[i] & 1;
	return n;
}

/* Wait up to @ms for at least @want of @len bytes at @p to be resident. */
static int wait_resident(void *p, size_t len, int want, unsigned int ms)
{
	int n = count_resident(p, len);

	while (n >= 0 && n < want && ms--) {
		usleep(1000);
		n = count_resident(p, len);
	}
	return n;
}

/*
 * Window policy: with prefetch=N a fault populates only the pages the device
 * touches; with prefetch=Y and prefetch_pct=0 the first fault of a block
 * populates the rest, right after the replay (so the job may end first);
 * with prefetch_pct=50 one fault in a fresh block is not enough.
 */
static int t_window_policy(char *why, size_t wlen)
{
	const size_t len = HUGE;
	unsigned char *p = fl_map_aligned(len, HUGE, PROT_READ | PROT_WRITE);
	unsigned char *q = fl_map_aligned(len, HUGE, PROT_READ | PROT_WRITE);
	char old_pct[16] = "10";
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS, n;
	size_t off;

	CHECK(p && q && fd >= 0, "setup");
	fl_param_get("prefetch_pct", old_pct, sizeof(old_pct));
	madvise(p, len, MADV_NOHUGEPAGE);
	madvise(q, len, MADV_NOHUGEPAGE);
	CHECK(!fl_param_set("prefetch", "N"), "cannot set prefetch");
	for (off = PAGE; off < len; off += 16 * PAGE) {
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p + off), 100, 7, 1, FL_JOBPAT_SEQ);
		CHECK(!err, "fill at %zu: %d", off, err);
	}
	n = count_resident(p, len);
	CHECK(n == (int)(len / PAGE / 16), "prefetch=N: %d pages resident, want %lu", n,
	      len / PAGE / 16);
	CHECK(!fl_param_set("prefetch", "Y") && !fl_param_set("prefetch_pct", "50"),
	      "cannot set prefetch");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p + PAGE), 100, 7, 1, FL_JOBPAT_SEQ);
	CHECK(!err, "fill: %d", err);
	madvise(p, len, MADV_DONTNEED);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p + PAGE), 100, 7, 1, FL_JOBPAT_SEQ);
	CHECK(!err, "fill: %d", err);
	n = wait_resident(p, len, 2, 200);
	CHECK(n == 1, "prefetch_pct=50: %d pages resident after one fault, want 1", n);
	CHECK(!fl_param_set("prefetch_pct", "0"), "cannot set prefetch_pct");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(q + PAGE), 100, 7, 1, FL_JOBPAT_SEQ);
	CHECK(!err, "fill: %d", err);
	n = wait_resident(q, len, (int)(len / PAGE), 5000);
	CHECK(n == (int)(len / PAGE), "prefetch=Y: %d pages resident, want %lu", n,
	      len / PAGE);
	printf("# window_policy: one-page faults populate 1 page (prefetch=N), %d pages (prefetch=Y)\n", n);
out:
	fl_param_set("prefetch", "Y");
	fl_param_set("prefetch_pct", old_pct);
	if (p)
		munmap(p, len);
	if (q)
		munmap(q, len);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* Races */

struct racer {
	_Atomic int go;
	unsigned int delay_us;
	void (*fn)(struct racer *r);
	void *addr;
	size_t len;
	pid_t child;
	int child_status;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;

	while (!atomic_load(&r->go))
		;
	spin_us(r->delay_us);
	r->fn(r);
	return NULL;
}

static void race_start(struct racer *r, pthread_t *t, unsigned int max_us)
{
	atomic_store(&r->go, 0);
	r->delay_us = rand() % (max_us + 1);
	pthread_create(t, NULL, racer_main, r);
}

static void do_munmap(struct racer *r)
{
	munmap(r->addr, r->len);
}

static void do_mprotect_ro(struct racer *r)
{
	mprotect(r->addr, r->len, PROT_READ);
}

static void do_dontneed(struct racer *r)
{
	madvise(r->addr, r->len, MADV_DONTNEED);
}

/* munmap of the second half during a device read or write of the whole. */
static int t_race_munmap(char *why, size_t wlen)
{
	const size_t len = 2 * MIB;
	unsigned char *snap = malloc(len / PAGE);
	int fd = open_dev(), err, rc = FL_PASS, it, ok = 0, failed = 0;
	struct fl_ioc_snapshot s;
	struct fl_ioc_job j;
	struct racer r;
	pthread_t t;
	size_t i;

	CHECK(fd >= 0 && snap, "setup");
	for (it = 0; it < 2 * iters; it++) {
		unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
		bool write = it & 1;
		uint64_t expect;

		CHECK(p, "mmap");
		for (i = 0; i < len; i++)
			p[i] = (unsigned char)(i * 5 + it);
		expect = fnv(p, len);
		if (it & 2)	/* the device maps everything first */
			fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
		r.addr = p + len / 2;
		r.len = len / 2;
		r.fn = do_munmap;
		race_start(&r, &t, 50);
		atomic_store(&r.go, 1);
		if (write)
			err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0xf0, 0, FL_JOBPAT_SEQ);
		else
			err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0,
				     FL_JOBPAT_SEQ);
		pthread_join(t, NULL);
		if (!err) {
			ok++;
			if (!write)
				CHECK(j.result == expect, "iteration %d: checksum %#llx, want %#llx (stale data)",
				      it, (unsigned long long)j.result, (unsigned long long)expect);
			else
				for (i = 0; i < len / 2; i++)
					CHECK(p[i] == 0xf0, "iteration %d: byte %zu is %#x", it, i, p[i]);
		} else {
			failed++;
			CHECK(job_errno_ok(err, &j, -EFAULT), "iteration %d: err %d status %llu (want 0 or EFAULT)",
			      it, err, (unsigned long long)j.status);
			if (write)
				for (i = 0; i < len / 2; i++)
					CHECK(p[i] == 0xf0 || p[i] == (unsigned char)(i * 5 + it),
					      "iteration %d: byte %zu is %#x", it, i, p[i]);
		}
		err = snapshot(fd, p + len / 2, len / 2, snap, &s);
		CHECK(!err && !s.valid, "iteration %d: %llu device PTEs survive munmap",
		      it, (unsigned long long)s.valid);
		munmap(p, len / 2);
	}
	printf("# race_munmap: %d completed, %d cancelled (EFAULT)\n", ok, failed);
out:
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_race_mprotect(char *why, size_t wlen)
{
	const size_t len = 2 * MIB;
	unsigned char *snap = malloc(len / PAGE);
	int fd = open_dev(), err, rc = FL_PASS, it, ok = 0, perm = 0;
	struct fl_ioc_snapshot s;
	struct fl_ioc_job j;
	struct racer r;
	pthread_t t;
	size_t i;

	CHECK(fd >= 0 && snap, "setup");
	for (it = 0; it < iters; it++) {
		unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);

		CHECK(p, "mmap");
		memset(p, 0, len);
		if (it & 1)
			fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0, 0, FL_JOBPAT_SEQ);
		r.addr = p;
		r.len = len;
		r.fn = do_mprotect_ro;
		race_start(&r, &t, 50);
		atomic_store(&r.go, 1);
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0xab, 0, FL_JOBPAT_RANDOM);
		pthread_join(t, NULL);
		if (err) {
			perm++;
			CHECK(job_errno_ok(err, &j, -EPERM), "iteration %d: err %d status %llu (want 0 or EPERM)",
			      it, err, (unsigned long long)j.status);
		} else {
			ok++;
		}
		for (i = 0; i < len; i++)
			CHECK(p[i] == 0xab || (err && !p[i]), "iteration %d: byte %zu is %#x",
			      it, i, p[i]);
		err = snapshot(fd, p, len, snap, &s);
		CHECK(!err, "snapshot %d", err);
		for (i = 0; i < len / PAGE; i++)
			CHECK(!(snap[i] & FL_SNAP_WRITE),
			      "iteration %d: page %zu still writable on the device after mprotect(READ)",
			      it, i);
		/* And the device really cannot write any more. */
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), PAGE, 0x01, 1, FL_JOBPAT_SEQ);
		CHECK(err == -EPERM && p[0] != 0x01, "iteration %d: write after mprotect: %d", it, err);
		munmap(p, len);
	}
	printf("# race_mprotect: %d completed, %d EPERM\n", ok, perm);
out:
	free(snap);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int t_race_dontneed(char *why, size_t wlen)
{
	const size_t len = 1 * MIB;
	int fd = open_dev(), err, rc = FL_PASS, it;
	struct fl_ioc_job j;
	struct racer r;
	pthread_t t;
	size_t i;

	CHECK(fd >= 0, "setup");
	for (it = 0; it < iters; it++) {
		unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);

		CHECK(p, "mmap");
		memset(p, 0x6d, len);
		if (it & 1)
			fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
		r.addr = p;
		r.len = len;
		r.fn = do_dontneed;
		race_start(&r, &t, 50);
		atomic_store(&r.go, 1);
		err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_RANDOM);
		pthread_join(t, NULL);
		CHECK(!err, "iteration %d: read during DONTNEED: %d status %llu", it, err,
		      (unsigned long long)j.status);
		for (i = 0; i < len; i++)
			CHECK(!p[i], "iteration %d: CPU byte %zu is %#x after DONTNEED", it, i, p[i]);
		err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(p), 0, len, 0, 0, FL_JOBPAT_SEQ);
		CHECK(!err && j.result == fnv_zero(len),
		      "iteration %d: device still reads the old pages (err %d)", it, err);
		munmap(p, len);
	}
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

static void do_fork_snapshot(struct racer *r)
{
	pid_t pid = fork();

	if (!pid) {
		unsigned char *a = malloc(r->len), *p = r->addr;
		size_t i;

		if (!a)
			_exit(2);
		memcpy(a, p, r->len);
		spin_us(20000);	/* the parent's device keeps writing */
		for (i = 0; i < r->len; i++) {
			if (p[i] != a[i])
				_exit(3);	/* a device write reached the child */
			if (p[i] != 0x11 && p[i] != 0x22)
				_exit(4);
		}
		_exit(0);
	}
	r->child = pid;
}

static int t_race_fork_cow(char *why, size_t wlen)
{
	const size_t len = 1 * MIB;
	int fd = open_dev(), err, rc = FL_PASS, it, st;
	struct fl_ioc_job j;
	struct racer r;
	pthread_t t;
	size_t i;

	CHECK(fd >= 0, "setup");
	for (it = 0; it < iters; it++) {
		unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);

		CHECK(p, "mmap");
		madvise(p, len, MADV_NOHUGEPAGE);
		memset(p, 0x11, len);
		fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x11, 0, FL_JOBPAT_SEQ);
		r.addr = p;
		r.len = len;
		r.fn = do_fork_snapshot;
		r.child = -1;
		race_start(&r, &t, 50);
		atomic_store(&r.go, 1);
		err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0x22, 1, FL_JOBPAT_SEQ);
		pthread_join(t, NULL);
		CHECK(r.child > 0, "fork failed");
		CHECK(waitpid(r.child, &st, 0) == r.child, "waitpid");
		CHECK(!err, "iteration %d: parent fill: %d", it, err);
		CHECK(WIFEXITED(st) && !WEXITSTATUS(st),
		      "iteration %d: child's memory changed after fork (status %d)", it,
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		for (i = 0; i < len; i++)
			CHECK(p[i] == 0x22, "iteration %d: parent byte %zu is %#x", it, i, p[i]);
		munmap(p, len);
	}
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* Fault storm */

#define STORM_VMAS	3
#define STORM_THREADS	4

struct storm {
	unsigned char *vma[STORM_VMAS];
	size_t vlen[STORM_VMAS];
	unsigned char *scratch;		/* perturbed: PROT_NONE <-> READ, DONTNEED */
	size_t slen;
	int fds[2];
	int jobs;
	_Atomic int stop;
	_Atomic int errors;
	char why[STORM_THREADS][160];
};

struct storm_thread {
	struct storm *s;
	int id;
	unsigned int seed;
};

static uint64_t rnd(unsigned int *seed, uint64_t n)
{
	return n ? (uint64_t)rand_r(seed) * (uint64_t)rand_r(seed) % n : 0;
}

static void *storm_main(void *arg)
{
	struct storm_thread *st = arg;
	struct storm *s = st->s;
	int fd = s->fds[st->id & 1], k, err = 0;
	unsigned char *shadow[STORM_VMAS];
	unsigned char *mine[STORM_VMAS];
	size_t slice[STORM_VMAS];
	char *why = s->why[st->id];
	struct fl_ioc_job j;

	for (k = 0; k < STORM_VMAS; k++) {
		slice[k] = s->vlen[k] / STORM_THREADS;
		mine[k] = s->vma[k] + st->id * slice[k];
		shadow[k] = malloc(slice[k]);
		memcpy(shadow[k], mine[k], slice[k]);
	}
	for (k = 0; k < s->jobs && !err; k++) {
		unsigned int op = rnd(&st->seed, 6), v = rnd(&st->seed, STORM_VMAS);
		unsigned int v2 = (v + 1 + rnd(&st->seed, STORM_VMAS - 1)) % STORM_VMAS;
		size_t len = 1 + rnd(&st->seed, slice[v] < slice[v2] ? slice[v] : slice[v2]);
		size_t off = rnd(&st->seed, slice[v] - len + 1);
		size_t off2 = rnd(&st->seed, slice[v2] - len + 1);
		unsigned int lanes = rnd(&st->seed, 17), pat = rnd(&st->seed, 3);
		uint64_t val = rand_r(&st->seed);

		switch (op) {
		case 0:	/* fill */
			err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(mine[v] + off), len, val,
				     lanes, pat);
			memset(shadow[v] + off, (unsigned char)val, len);
			if (!err && memcmp(mine[v] + off, shadow[v] + off, len))
				snprintf(why, 160, "fill %zu@%zu of vma %u differs", len, off, v), err = 1;
			break;
		case 1:	/* copy between two of my slices */
			err = fl_job(fd, &j, FL_JOBOP_COPY, u(mine[v] + off),
				     u(mine[v2] + off2), len, 0, lanes, pat);
			memcpy(shadow[v2] + off2, shadow[v] + off, len);
			if (!err && memcmp(mine[v2] + off2, shadow[v2] + off2, len))
				snprintf(why, 160, "copy %zu to vma %u differs", len, v2), err = 1;
			break;
		case 2:	/* checksum */
			err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(mine[v] + off), 0, len, 0,
				     lanes, pat);
			if (!err && j.result != fnv(shadow[v] + off, len))
				snprintf(why, 160, "checksum %zu@%zu of vma %u wrong", len, off, v), err = 1;
			break;
		case 3: {	/* atomic add on 8-aligned words */
			size_t a = off & ~7ul, n = (len & ~7ul) ? (len & ~7ul) : 8;
			size_t i;

			if (a + n > slice[v])
				n = (slice[v] - a) & ~7ul;
			if (!n || ((uintptr_t)(mine[v] + a) & 7))
				break;
			err = fl_job(fd, &j, FL_JOBOP_ATOMIC_ADD, 0, u(mine[v] + a), n, val,
				     lanes, pat);
			for (i = 0; i < n; i += 8) {
				uint64_t w;

				memcpy(&w, shadow[v] + a + i, 8);
				w += val;
				memcpy(shadow[v] + a + i, &w, 8);
			}
			if (!err && memcmp(mine[v] + a, shadow[v] + a, n))
				snprintf(why, 160, "atomic_add %zu@%zu of vma %u differs", n, a, v), err = 1;
			break;
		}
		case 4:	/* the CPU writes */
			memset(mine[v] + off, (unsigned char)val, len);
			memset(shadow[v] + off, (unsigned char)val, len);
			break;
		default: {	/* read the perturbed scratch VMA: OK or EFAULT */
			size_t so = rnd(&st->seed, s->slen / 2);

			err = fl_job(fd, &j, FL_JOBOP_CHECKSUM, u(s->scratch + so), 0,
				     s->slen / 2, 0, lanes, pat);
			if (err == -EFAULT && j.status == FL_JOBST_CANCELLED)
				err = 0;
			break;
		}
		}
		if (err < 0)
			snprintf(why, 160, "job op %u (%zu bytes, vma %u): %s, status %llu", op, len, v,
				 strerror(-err), (unsigned long long)j.status);
	}
	for (k = 0; k < STORM_VMAS && !err; k++) {
		size_t i, n = 0, first = 0;

		for (i = 0; i < slice[k]; i++) {
			if (mine[k][i] != shadow[k][i] && !n++)
				first = i;
		}
		if (n)
			snprintf(why, 160, "final check of vma %d: %zu bytes differ, first at %zu (%#x, want %#x)",
				 k, n, first, mine[k][first], shadow[k][first]), err = 1;
	}
	for (k = 0; k < STORM_VMAS; k++)
		free(shadow[k]);
	if (err)
		atomic_fetch_add(&s->errors, 1);
	return NULL;
}

static void *storm_perturb(void *arg)
{
	struct storm *s = arg;
	unsigned int seed = 99;
	int n = 0;

	while (!atomic_load(&s->stop)) {
		pid_t pid;

		switch (n++ % 4) {
		case 0:
			mprotect(s->scratch, s->slen, PROT_NONE);
			break;
		case 1:
			mprotect(s->scratch, s->slen, PROT_READ);
			break;
		case 2:
			madvise(s->scratch + rnd(&seed, s->slen / PAGE - 8) * PAGE, PAGE * 8,
				MADV_DONTNEED);
			break;
		default:
			/* fork write-protects every private page of the storm */
			pid = fork();
			if (!pid)
				_exit(0);
			if (pid > 0)
				waitpid(pid, NULL, 0);
			break;
		}
		usleep(500 + rnd(&seed, 2000));
	}
	return NULL;
}

/* The mixed race workload: @jobs device jobs per thread under the perturber. */
static int run_storm(char *why, size_t wlen, const char *label, int jobs)
{
	struct storm s = { .jobs = jobs, .fds = { -1, -1 } };
	struct storm_thread th[STORM_THREADS];
	pthread_t t[STORM_THREADS], pt;
	struct fl_ioc_fault_stats s0, s1;
	int mfd = memfd_create("fl-storm", 0), k, rc = FL_PASS;
	uint64_t t0;

	s.vlen[0] = 4 * MIB;
	s.vlen[1] = 4 * MIB;
	s.vlen[2] = 2 * MIB;
	s.slen = 1 * MIB;
	s.vma[0] = map_anon(s.vlen[0], PROT_READ | PROT_WRITE);
	s.vma[1] = fl_map_aligned(s.vlen[1], HUGE, PROT_READ | PROT_WRITE);
	CHECK(mfd >= 0 && !ftruncate(mfd, s.vlen[2]), "memfd");
	s.vma[2] = mmap(NULL, s.vlen[2], PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	s.scratch = map_anon(s.slen, PROT_READ | PROT_WRITE);
	CHECK(s.vma[0] && s.vma[1] && s.vma[2] != MAP_FAILED && s.scratch, "mmap");
	madvise(s.vma[0], s.vlen[0], MADV_NOHUGEPAGE);
	madvise(s.vma[1], s.vlen[1], MADV_HUGEPAGE);
	memset(s.scratch, 0x5c, s.slen);
	s.fds[0] = open_dev();
	s.fds[1] = open_dev();
	CHECK(s.fds[0] >= 0 && s.fds[1] >= 0, "open");
	fault_stats(s.fds[0], &s0);
	t0 = fl_now_ns();
	pthread_create(&pt, NULL, storm_perturb, &s);
	printf("# %s: seed %u\n", label, storm_seed);
	for (k = 0; k < STORM_THREADS; k++) {
		th[k] = (struct storm_thread) { .s = &s, .id = k, .seed = storm_seed + k };
		s.why[k][0] = '\0';
		pthread_create(&t[k], NULL, storm_main, &th[k]);
	}
	for (k = 0; k < STORM_THREADS; k++)
		pthread_join(t[k], NULL);
	atomic_store(&s.stop, 1);
	pthread_join(pt, NULL);
	fault_stats(s.fds[0], &s1);
	printf("# %s: %d threads x %d jobs in %.1f s: %llu faults, %llu batches, %llu duplicates, %llu retries, %llu escalations, %llu cancels, %llu invalidations, %llu notifier calls\n",
	       label, STORM_THREADS, s.jobs, (fl_now_ns() - t0) / 1e9,
	       (unsigned long long)(s1.faults - s0.faults),
	       (unsigned long long)(s1.batches - s0.batches),
	       (unsigned long long)(s1.duplicates - s0.duplicates),
	       (unsigned long long)(s1.retries - s0.retries),
	       (unsigned long long)(s1.escalations - s0.escalations),
	       (unsigned long long)(s1.cancels - s0.cancels),
	       (unsigned long long)(s1.invalidations - s0.invalidations),
	       (unsigned long long)(s1.notifier_calls - s0.notifier_calls));
	for (k = 0; k < STORM_THREADS; k++)
		CHECK(!s.why[k][0], "thread %d: %s", k, s.why[k]);
	CHECK(!atomic_load(&s.errors), "%d thread(s) failed", atomic_load(&s.errors));
out:
	for (k = 0; k < 2; k++)
		if (s.fds[k] >= 0)
			close(s.fds[k]);
	if (mfd >= 0)
		close(mfd);
	return rc;
}

static int t_fault_storm(char *why, size_t wlen)
{
	return run_storm(why, wlen, "fault_storm", 10 * iters / 4 + 10);
}

/*
 * The mixed race workload at every fault_batch from 1 to 1024, with
 * job_timeout_ms at 5 s: the device keeps making progress (every thread's
 * jobs complete; a job is never failed for taking long).
 */
static int t_batch_sweep(char *why, size_t wlen)
{
	static const char * const batches[] = { "1", "3", "16", "256", "1024" };
	char label[32], old_batch[16] = "256", old_timeout[16] = "60000";
	int rc = FL_PASS;
	size_t i;

	fl_param_get("fault_batch", old_batch, sizeof(old_batch));
	fl_param_get("job_timeout_ms", old_timeout, sizeof(old_timeout));
	CHECK(!fl_param_set("job_timeout_ms", "5000"), "cannot set job_timeout_ms");
	for (i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
		CHECK(!fl_param_set("fault_batch", batches[i]), "cannot set fault_batch");
		snprintf(label, sizeof(label), "batch_sweep/%s", batches[i]);
		rc = run_storm(why, wlen, label, iters / 2 + 5);
		if (rc != FL_PASS)
			break;
	}
out:
	fl_param_set("fault_batch", old_batch);
	fl_param_set("job_timeout_ms", old_timeout);
	return rc;
}

/* ---------------------------------------------------------------------- */


static int reset_dev(int fd)
{
	struct fl_ioc_reset r = {};

	return fl_ioctl(fd, FL_IOC_RESET, &r);
}

/* A 4-entry fault ring with 16 lanes faulting: overflows, drain + REPLAY recovers. */
static int t_ring_overflow(char *why, size_t wlen)
{
	const size_t len = 4 * MIB;
	unsigned char *p = map_anon(len, PROT_READ | PROT_WRITE);
	struct fl_ioc_fault_stats s0, s1;
	struct fl_ioc_stats ds = {};
	struct fl_ioc_job j;
	int fd = open_dev(), err, rc = FL_PASS;
	size_t i;

	CHECK(p && fd >= 0, "setup");
	madvise(p, len, MADV_NOHUGEPAGE);
	CHECK(!fl_param_set("fr_entries", "4"), "cannot set fr_entries");
	CHECK(!fl_param_set("prefetch", "N"), "cannot set prefetch");	/* a fault per page */
	err = reset_dev(fd);
	CHECK(!err, "reset: %d", err);
	fault_stats(fd, &s0);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), len, 0xcd, 0, FL_JOBPAT_STRIDED);
	fault_stats(fd, &s1);
	fl_ioctl(fd, FL_IOC_STATS, &ds);
	CHECK(!err, "fill with a 4-entry ring: %d status %llu", err,
	      (unsigned long long)j.status);
	for (i = 0; i < len; i++)
		CHECK(p[i] == 0xcd, "byte %zu is %#x", i, p[i]);
	printf("# ring_overflow: %llu faults, %llu overflows seen, %llu batches, device overflows %llu\n",
	       (unsigned long long)(s1.faults - s0.faults),
	       (unsigned long long)(s1.overflows - s0.overflows),
	       (unsigned long long)(s1.batches - s0.batches),
	       (unsigned long long)ds.values[FL_STAT_FAULT_OVERFLOWS]);
	CHECK(s1.overflows > s0.overflows, "the ring never overflowed");
out:
	fl_param_set("prefetch", "Y");
	fl_param_set("fr_entries", "1024");
	if (fd >= 0) {
		reset_dev(fd);
		close(fd);
	}
	if (p)
		munmap(p, len);
	return rc;
}

struct bg_job {
	int fd;
	void *p;
	size_t len;
	int err;
	struct fl_ioc_job j;
};

static void *bg_fill(void *arg)
{
	struct bg_job *b = arg;

	b->err = fl_job(b->fd, &b->j, FL_JOBOP_FILL, 0, u(b->p), b->len, 0x3e, 1,
			FL_JOBPAT_SEQ);
	return NULL;
}

/*
 * FL_IOC_RESET while a job faults page by page: the job ends (EIO, aborted,
 * or done), nothing hangs, and the context works again afterwards (the
 * driver re-binds it in the new device generation).
 */
static int t_reset_during_faults(char *why, size_t wlen)
{
	const size_t len = 8 * MIB;
	struct bg_job b = { .len = len };
	struct fl_ioc_job j;
	int fd2 = open_dev(), err, rc = FL_PASS;
	pthread_t t;
	size_t i;

	b.fd = open_dev();
	b.p = map_anon(len, PROT_READ | PROT_WRITE);
	CHECK(b.fd >= 0 && fd2 >= 0 && b.p, "setup");
	madvise(b.p, len, MADV_NOHUGEPAGE);
	CHECK(!fl_param_set("prefetch", "N"), "set prefetch");
	pthread_create(&t, NULL, bg_fill, &b);
	usleep(30000);
	err = reset_dev(fd2);
	pthread_join(t, NULL);
	fl_param_set("prefetch", "Y");
	CHECK(!err, "reset: %d", err);
	printf("# reset_during_faults: job ended with %d, status %llu, %llu faults\n", b.err,
	       (unsigned long long)b.j.status, (unsigned long long)b.j.faults);
	CHECK(!b.err || b.err == -EIO, "job during reset: %d status %llu", b.err,
	      (unsigned long long)b.j.status);
	err = fl_job(b.fd, &j, FL_JOBOP_FILL, 0, u(b.p), len, 0x4f, 0, FL_JOBPAT_SEQ);
	CHECK(!err, "job after the reset: %d status %llu", err, (unsigned long long)j.status);
	for (i = 0; i < len; i++)
		CHECK(((unsigned char *)b.p)[i] == 0x4f, "byte %zu", i);
out:
	fl_param_set("prefetch", "Y");
	if (b.p)
		munmap(b.p, len);
	if (b.fd >= 0)
		close(b.fd);
	if (fd2 >= 0)
		close(fd2);
	return rc;
}

/*
 * Processes die with device jobs in flight (their fds released, their mm torn
 * down while the device faults on it), others keep working; contexts are all
 * given back.
 */
static int t_teardown(char *why, size_t wlen)
{
	struct fl_ioc_fault_stats s;
	struct fl_ioc_job j;
	int fd = open_dev(), k, st, rc = FL_PASS, err;
	unsigned char *p = map_anon(MIB, PROT_READ | PROT_WRITE);
	pid_t pids[6];

	CHECK(fd >= 0 && p, "setup");
	CHECK(!fl_param_set("prefetch", "N"), "set prefetch");
	for (k = 0; k < 6; k++) {
		pids[k] = fork();
		CHECK(pids[k] >= 0, "fork");
		if (!pids[k]) {
			struct bg_job b = { .fd = open_dev(), .len = 16 * MIB };
			pthread_t t;

			b.p = map_anon(b.len, PROT_READ | PROT_WRITE);
			if (b.fd < 0 || !b.p)
				_exit(2);
			pthread_create(&t, NULL, bg_fill, &b);
			usleep(1000 * (5 + 10 * k));
			if (k & 1)
				munmap(b.p, b.len);	/* under the job's feet */
			_exit(0);	/* the job's thread dies with us */
		}
	}
	for (k = 0; k < 6; k++) {
		CHECK(waitpid(pids[k], &st, 0) == pids[k], "waitpid");
		CHECK(WIFEXITED(st) && !WEXITSTATUS(st), "child %d status %#x", k, st);
	}
	fl_param_set("prefetch", "Y");
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, u(p), MIB, 9, 0, FL_JOBPAT_SEQ);
	CHECK(!err && p[MIB - 1] == 9, "job after the teardowns: %d", err);
	fault_stats(fd, &s);
	CHECK(s.contexts == 1, "%llu contexts still bound (want only this file's)",
	      (unsigned long long)s.contexts);
out:
	fl_param_set("prefetch", "Y");
	if (p)
		munmap(p, MIB);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Several processes, each its own context, fault at once; all data checked. */
static int t_multi_process(char *why, size_t wlen)
{
	int k, st, rc = FL_PASS;
	pid_t pids[4];

	for (k = 0; k < 4; k++) {
		pids[k] = fork();
		CHECK(pids[k] >= 0, "fork");
		if (!pids[k]) {
			const size_t len = 4 * MIB;
			unsigned char *a = map_anon(len, PROT_READ | PROT_WRITE);
			unsigned char *b = map_anon(len, PROT_READ | PROT_WRITE);
			int fd = open_dev(), r;
			struct fl_ioc_job j;
			size_t i;

			if (fd < 0 || !a || !b)
				_exit(2);
			for (r = 0; r < 4; r++) {
				if (fl_job(fd, &j, FL_JOBOP_FILL, 0, u(a), len, k * 16 + r, 0,
					   FL_JOBPAT_RANDOM) ||
				    fl_job(fd, &j, FL_JOBOP_COPY, u(a), u(b), len, 0, 0,
					   FL_JOBPAT_STRIDED))
					_exit(3);
				for (i = 0; i < len; i++)
					if (b[i] != k * 16 + r)
						_exit(4);
				madvise(a, len, MADV_DONTNEED);
				madvise(b, len, MADV_DONTNEED);
			}
			_exit(0);
		}
	}
	for (k = 0; k < 4; k++) {
		CHECK(waitpid(pids[k], &st, 0) == pids[k], "waitpid");
		CHECK(WIFEXITED(st) && !WEXITSTATUS(st), "process %d failed (status %#x)", k, st);
	}
out:
	return rc;
}

static int t_counters(char *why, size_t wlen)
{
	struct fl_ioc_fault_stats s;
	struct fl_ioc_bind b = {};
	int fd = open_dev(), rc = FL_PASS;

	CHECK(fd >= 0 && !fl_ioctl(fd, FL_IOC_BIND, &b), "open/bind");
	fault_stats(fd, &s);
	printf("# counters: faults %llu batches %llu duplicates %llu windows %llu retries %llu timeouts %llu cancels %llu invalidations %llu replays %llu overflows %llu pages %llu huge %llu upgrades %llu notifier %llu/%llu/%llu irqs %llu runs %llu stale %llu\n",
	       (unsigned long long)s.faults, (unsigned long long)s.batches,
	       (unsigned long long)s.duplicates, (unsigned long long)s.windows,
	       (unsigned long long)s.retries, (unsigned long long)s.retry_timeouts,
	       (unsigned long long)s.cancels, (unsigned long long)s.invalidations,
	       (unsigned long long)s.replays, (unsigned long long)s.overflows,
	       (unsigned long long)s.pages_mapped, (unsigned long long)s.huge_mapped,
	       (unsigned long long)s.upgrades, (unsigned long long)s.notifier_calls,
	       (unsigned long long)s.notifier_clears, (unsigned long long)s.notifier_busy,
	       (unsigned long long)s.irqs, (unsigned long long)s.worker_runs,
	       (unsigned long long)s.stale);
	printf("# counters: escalations %llu deferrals %llu transient cancels %llu cancels dropped %llu prefetch %llu blocks %llu pages, block notifiers %llu, job timeout reports %llu, read_begin wait %llu us, context passes %llu\n",
	       (unsigned long long)s.escalations, (unsigned long long)s.deferrals,
	       (unsigned long long)s.transient_cancels, (unsigned long long)s.cancels_dropped,
	       (unsigned long long)s.prefetch_blocks, (unsigned long long)s.prefetch_pages,
	       (unsigned long long)s.blocks, (unsigned long long)s.job_timeouts,
	       (unsigned long long)s.begin_wait_ns / 1000, (unsigned long long)s.ctx_passes);
	/* A pass may take several fetches' entries and ends with one REPLAY. */
	CHECK(s.faults && s.batches && s.ctx_passes && s.replays && s.windows && s.blocks,
	      "fault counters did not move");
	CHECK(!s.retry_timeouts, "%llu windows given up", (unsigned long long)s.retry_timeouts);
	CHECK(s.contexts == 1, "%llu contexts bound, want 1 (this file)",
	      (unsigned long long)s.contexts);
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

static const struct fl_test tests[] = {
	{ "bind", t_bind, 0 },
	{ "anon_read", t_anon_read, 0 },
	{ "anon_read_prot", t_anon_read_prot, 0 },
	{ "anon_write", t_anon_write, 0 },
	{ "anon_write_prot", t_anon_write_prot, 0 },
	{ "copy", t_copy, 0 },
	{ "atomic_add", t_atomic_add, 0 },
	{ "file_read", t_file_read, 0 },
	{ "file_write", t_file_write, 0 },
	{ "anon_write_huge", t_anon_write_huge, 0 },
	{ "fork_cow", t_fork_cow, 0 },
	{ "invalidate_munmap", t_invalidate_munmap, 0 },
	{ "window_policy", t_window_policy, 0 },
	{ "race_munmap", t_race_munmap, 0 },
	{ "race_mprotect", t_race_mprotect, 0 },
	{ "race_dontneed", t_race_dontneed, 0 },
	{ "race_fork_cow", t_race_fork_cow, 0 },
	{ "fault_storm", t_fault_storm, 0 },
	{ "batch_sweep", t_batch_sweep, 0 },
	{ "multi_process", t_multi_process, 0 },
	{ "teardown", t_teardown, 0 },
	{ "reset_during_faults", t_reset_during_faults, 0 },
	{ "ring_overflow", t_ring_overflow, 0 },
	{ "counters", t_counters, 0 },
};

int main(int argc, char **argv)
{
	int devs[FL_MAX_DEVICES], ndev, opt;
	size_t i;

	setvbuf(stdout, NULL, _IOLBF, 0);
	storm_seed = (unsigned int)fl_now_ns();
	while ((opt = getopt(argc, argv, "d:li:s:")) != -1) {
		switch (opt) {
		case 'd':
			dev_index = atoi(optarg);
			break;
		case 'i':
			iters = atoi(optarg);
			break;
		case 's':
			storm_seed = strtoul(optarg, NULL, 0);
			break;
		case 'l':
			for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
				printf("%s\n", tests[i].name);
			return 0;
		default:
			fprintf(stderr, "usage: %s [-d N] [-l] [-i ITER] [-s SEED] [TEST...]\n", argv[0]);
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
	srand(fl_now_ns());
	return fl_run_tests(tests, sizeof(tests) / sizeof(tests[0]), argv + optind,
			    argc - optind, 0) ? 1 : 0;
}
