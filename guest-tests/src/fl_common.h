/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by the faultline guest programs (fl-test, fl-bench). */
#ifndef FL_COMMON_H
#define FL_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "faultline_abi.h"

#include "faultline_uapi.h"

#define FL_MAX_DEVICES 32

/* Indices N of the /dev/faultlineN that exist, ascending. Returns how many. */
int fl_list_devices(int *idx, int max);

/* Opens /dev/faultline<index>; returns the fd or -errno. */
int fl_open_dev(int index);

/* ioctl() returning 0 or -errno. */
int fl_ioctl(int fd, unsigned long req, void *arg);

/* CLOCK_MONOTONIC in ns. */
uint64_t fl_now_ns(void);

/*
 * PCI address ("0000:00:03.0") of faultline<index>, from the
 * /sys/class/misc/faultline<index>/device link. 0 or -errno.
 */
int fl_pci_address(int index, char *buf, size_t len);

/* Reads a small sysfs file into buf (trailing newline removed). 0 or -errno. */
int fl_read_file(const char *path, char *buf, size_t len);

/* Sorts ascending. */
void fl_sort_u64(uint64_t *v, size_t n);

/* Nearest-rank percentile (p in 0..100) of a sorted array; 0 if empty. */
uint64_t fl_percentile(const uint64_t *sorted, size_t n, unsigned int p);

/* Mean of an array; 0 if empty. */
double fl_mean(const uint64_t *v, size_t n);

/* FNV-1a 64 of @len bytes, continuing from @h (start with FL_FNV_OFFSET). */
#define FL_FNV_OFFSET 0xcbf29ce484222325ull
uint64_t fl_fnv1a(uint64_t h, const void *p, size_t len);

/*
 * The device's CHECKSUM result (device/src/jobs.rs: FNV-1a 64 cannot be
 * computed by lanes in any order, so the device hashes each chunk and returns
 * the FNV-1a 64 of the chunks' digests, 8 little-endian bytes each, in address
 * order). @chunk 0 means 4096, as for the job.
 */
uint64_t fl_checksum(const void *p, size_t len, size_t chunk);

/*
 * FL_IOC_JOB: fills *job (op, src, dst, len, value, lanes, pattern; the rest
 * zero) and runs it. Returns 0 or -errno; *job has the results.
 */
int fl_job(int fd, struct fl_ioc_job *job, unsigned int op, uint64_t src,
	   uint64_t dst, uint64_t len, uint64_t value, unsigned int lanes,
	   unsigned int pattern);

/* Anonymous private memory aligned to @align (a power of two); NULL on failure. */
void *fl_map_aligned(size_t len, size_t align, int prot);

/* Writes/reads /sys/module/faultline/parameters/@name. 0 or -errno. */
int fl_param_set(const char *name, const char *val);
int fl_param_get(const char *name, char *buf, size_t len);

/* Test programs: one function per test, "ok - NAME" / "not ok - NAME: WHY". */
enum { FL_PASS = 0, FL_FAILED = 1, FL_SKIP = 2 };

struct fl_test {
	const char *name;
	int (*fn)(char *why, size_t wlen);
	int by_name_only;	/* runs only when named (or with @all_too) */
};

/*
 * Runs the tests named in @names (all of them when @nnames is 0, except
 * those by_name_only unless @all_too), prints a line per test and
 * "# N passed, M failed". Returns the number that failed.
 */
int fl_run_tests(const struct fl_test *tests, size_t n, char **names, int nnames,
		 int all_too);

#endif /* FL_COMMON_H */
