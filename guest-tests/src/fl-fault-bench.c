// SPDX-License-Identifier: GPL-2.0
/*
 * fl-fault-bench: device page-fault figures from inside the guest.
 *
 *   fl-fault-bench [-d N] [-m MIB] [-n SAMPLES]
 *
 * Each case runs one device FILL job over MIB MiB (default 32) and prints
 *   NAME faults_per_s=.. mib_per_s=.. faults=.. batches=.. avg_batch=..
 *        replays=.. dups=.. windows=.. job_ms=.. tlb_hits=.. tlb_misses=..
 *        dev_duplicates=.. overflows=.. lat_p50_us=.. lat_p99_us=..
 * where faults.. come from the driver (FL_IOC_FAULT_STATS deltas), tlb_*,
 * dev_duplicates, overflows and the fault->replay latency percentiles from the
 * device (FL_IOC_STATS deltas; latency from the power-of-two histogram, so
 * the figure is the bucket's upper bound). Then fault_1page_us: the time of a
 * one-page FILL that takes one fault vs one that takes none (p50/p99 over
 * SAMPLES). The *_noprefetch cases repeat some with the driver's prefetch
 * parameter off (a fault window then ends at its last fault, so the device
 * takes a fault per page touched instead of one per 2 MiB block).
 * Figures only; no pass/fail.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fl_common.h"

#define PAGE	4096ul
#define HUGE	(2ul << 20)

static int fd;

struct snap {
	struct fl_ioc_fault_stats f;
	struct fl_ioc_stats d;
};

static void take(struct snap *s)
{
	memset(s, 0, sizeof(*s));
	fl_ioctl(fd, FL_IOC_FAULT_STATS, &s->f);
	fl_ioctl(fd, FL_IOC_STATS, &s->d);
}

static void *map(size_t len, int huge)
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
	madvise((void *)a, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return (void *)a;
}

/* Upper bound in us of the bucket holding percentile @pct of the histogram. */
static uint64_t hist_pct(const uint64_t *b, unsigned int pct)
{
	uint64_t total = 0, acc = 0, want;
	unsigned int i;

	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++)
		total += b[i];
	if (!total)
		return 0;
	want = (total * pct + 99) / 100;
	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++) {
		acc += b[i];
		if (acc >= want)
			return 2ull << i;
	}
	return 0;
}

static void report(const char *name, const struct snap *a, const struct snap *b,
		   const struct fl_ioc_job *j, size_t len)
{
	uint64_t faults = b->f.faults - a->f.faults, batches = b->f.batches - a->f.batches;
	uint64_t lat[FL_STAT_LAT_BUCKETS];
	double s = j->elapsed_ns / 1e9;
	unsigned int i;

	for (i = 0; i < FL_STAT_LAT_BUCKETS; i++)
		lat[i] = b->d.values[FL_STAT_LAT_BASE + i] - a->d.values[FL_STAT_LAT_BASE + i];
	printf("%s faults_per_s=%.0f mib_per_s=%.1f faults=%llu batches=%llu avg_batch=%.1f replays=%llu dups=%llu windows=%llu retries=%llu job_ms=%.1f job_faults=%llu tlb_hits=%llu tlb_misses=%llu dev_duplicates=%llu overflows=%llu lat_p50_us=%llu lat_p99_us=%llu status=%llu\n",
	       name, s > 0 ? faults / s : 0, s > 0 ? len / s / (1 << 20) : 0,
	       (unsigned long long)faults, (unsigned long long)batches,
	       batches ? (double)faults / batches : 0,
	       (unsigned long long)(b->f.replays - a->f.replays),
	       (unsigned long long)(b->f.duplicates - a->f.duplicates),
	       (unsigned long long)(b->f.windows - a->f.windows),
	       (unsigned long long)(b->f.retries - a->f.retries),
	       j->elapsed_ns / 1e6, (unsigned long long)j->faults,
	       (unsigned long long)(b->d.values[FL_STAT_TLB_HITS] - a->d.values[FL_STAT_TLB_HITS]),
	       (unsigned long long)(b->d.values[FL_STAT_TLB_MISSES] - a->d.values[FL_STAT_TLB_MISSES]),
	       (unsigned long long)(b->d.values[FL_STAT_DUPLICATES] - a->d.values[FL_STAT_DUPLICATES]),
	       (unsigned long long)(b->d.values[FL_STAT_FAULT_OVERFLOWS] - a->d.values[FL_STAT_FAULT_OVERFLOWS]),
	       (unsigned long long)hist_pct(lat, 50), (unsigned long long)hist_pct(lat, 99),
	       (unsigned long long)j->status);
}

static void run_fill(const char *name, unsigned char *p, size_t len,
		     unsigned int lanes, unsigned int pattern)
{
	struct snap a, b;
	struct fl_ioc_job j;
	int err;

	take(&a);
	err = fl_job(fd, &j, FL_JOBOP_FILL, 0, (uintptr_t)p, len, 0x5a, lanes, pattern);
	take(&b);
	if (err)
		printf("# %s: job failed: %s (status %llu)\n", name, strerror(-err),
		       (unsigned long long)j.status);
	report(name, &a, &b, &j, len);
}

static void fault_case(const char *name, size_t len, int huge, unsigned int lanes,
		       unsigned int pattern, int refault)
{
	unsigned char *p = map(len, huge);

	if (!p) {
		printf("# %s: mmap failed\n", name);
		return;
	}
	if (refault == 1) {
		/* Map everything, then invalidate it all: DONTNEED. */
		run_fill("# warmup", p, len, lanes, pattern);
		madvise(p, len, MADV_DONTNEED);
	} else if (refault == 2) {
		run_fill("# warmup", p, len, lanes, pattern);
		munmap(p, len);
		p = map(len, huge);
	}
	run_fill(name, p, len, lanes, pattern);
	if (!refault && !strcmp(name, "fault_fill_4k_seq"))
		run_fill("nofault_fill_4k_seq", p, len, lanes, pattern);
	munmap(p, len);
}

static int set_prefetch(const char *v)
{
	FILE *f = fopen("/sys/module/faultline/parameters/prefetch", "w");
	int err;

	if (!f)
		return -1;
	err = fputs(v, f) < 0;
	return fclose(f) || err ? -1 : 0;
}

static void one_page(unsigned int samples)
{
	uint64_t *f = calloc(samples, sizeof(*f)), *w = calloc(samples, sizeof(*w));
	struct fl_ioc_job j;
	unsigned int i;

	for (i = 0; i < samples; i++) {
		unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
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
	printf("fault_1page_us p50=%.1f p99=%.1f n=%u\n", fl_percentile(f, i, 50) / 1e3,
	       fl_percentile(f, i, 99) / 1e3, i);
	printf("nofault_1page_us p50=%.1f p99=%.1f n=%u\n", fl_percentile(w, i, 50) / 1e3,
	       fl_percentile(w, i, 99) / 1e3, i);
	free(f);
	free(w);
}

int main(int argc, char **argv)
{
	int devs[FL_MAX_DEVICES], index = -1, opt;
	unsigned int samples = 200;
	size_t mib = 32, len;
	struct fl_ioc_bind b = {};

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "d:m:n:")) != -1) {
		switch (opt) {
		case 'd':
			index = atoi(optarg);
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 'n':
			samples = strtoul(optarg, NULL, 0);
			break;
		default:
			fprintf(stderr, "usage: %s [-d N] [-m MIB] [-n SAMPLES]\n", argv[0]);
			return 2;
		}
	}
	if (index < 0) {
		if (fl_list_devices(devs, FL_MAX_DEVICES) <= 0) {
			fprintf(stderr, "no /dev/faultline*\n");
			return 1;
		}
		index = devs[0];
	}
	fd = fl_open_dev(index);
	if (fd < 0 || fl_ioctl(fd, FL_IOC_BIND, &b)) {
		fprintf(stderr, "cannot open/bind faultline%d\n", index);
		return 1;
	}
	len = mib << 20;
	printf("# fl-fault-bench: %zu MiB per case, device context %llu\n", mib,
	       (unsigned long long)b.context);
	fault_case("fault_fill_4k_seq", len, 0, 0, FL_JOBPAT_SEQ, 0);
	fault_case("fault_fill_4k_rand", len, 0, 0, FL_JOBPAT_RANDOM, 0);
	fault_case("fault_fill_4k_seq_1lane", len / 4, 0, 1, FL_JOBPAT_SEQ, 0);
	fault_case("fault_fill_thp_seq", len, 1, 0, FL_JOBPAT_SEQ, 0);
	fault_case("fault_fill_thp_rand", len, 1, 0, FL_JOBPAT_RANDOM, 0);
	fault_case("refault_dontneed_4k_seq", len, 0, 0, FL_JOBPAT_SEQ, 1);
	fault_case("refault_remap_4k_seq", len, 0, 0, FL_JOBPAT_SEQ, 2);
	fault_case("refault_dontneed_thp_seq", len, 1, 0, FL_JOBPAT_SEQ, 1);
	one_page(samples);
	/* Windows end at their last fault: one device fault per page touched. */
	if (!set_prefetch("N")) {
		fault_case("fault_fill_4k_seq_noprefetch", len / 4, 0, 0, FL_JOBPAT_SEQ, 0);
		fault_case("fault_fill_4k_rand_noprefetch", len / 4, 0, 0, FL_JOBPAT_RANDOM, 0);
		fault_case("fault_fill_4k_seq_1lane_noprefetch", len / 16, 0, 1, FL_JOBPAT_SEQ, 0);
		fault_case("refault_dontneed_4k_seq_noprefetch", len / 4, 0, 0, FL_JOBPAT_SEQ, 1);
		fault_case("fault_fill_thp_seq_noprefetch", len, 1, 0, FL_JOBPAT_SEQ, 0);
		set_prefetch("Y");
	}
	return 0;
}
