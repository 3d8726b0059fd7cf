// SPDX-License-Identifier: GPL-2.0
/* Helpers shared by the faultline guest programs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fl_common.h"

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;

	return (x > y) - (x < y);
}

int fl_list_devices(int *idx, int max)
{
	struct dirent *de;
	DIR *d = opendir("/dev");
	int n = 0;

	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL && n < max) {
		char *end;
		long v;

		if (strncmp(de->d_name, "faultline", 9) != 0 || !de->d_name[9])
			continue;
		v = strtol(de->d_name + 9, &end, 10);
		if (*end || v < 0 || v > 1000000)
			continue;
		idx[n++] = (int)v;
	}
	closedir(d);
	qsort(idx, (size_t)n, sizeof(*idx), cmp_int);
	return n;
}

int fl_open_dev(int index)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/dev/faultline%d", index);
	fd = open(path, O_RDWR | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int fl_ioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg) < 0 ? -errno : 0;
}

uint64_t fl_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int fl_pci_address(int index, char *buf, size_t len)
{
	char path[96], target[512];
	const char *base;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/class/misc/faultline%d/device", index);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (strlen(base) + 1 > len)
		return -ENAMETOOLONG;
	strcpy(buf, base);
	return 0;
}

int fl_read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	if (n < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	close(fd);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

void fl_sort_u64(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
}

uint64_t fl_percentile(const uint64_t *sorted, size_t n, unsigned int p)
{
	size_t rank;

	if (!n)
		return 0;
	rank = ((size_t)p * n + 99) / 100;	/* nearest rank, 1-based */
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

double fl_mean(const uint64_t *v, size_t n)
{
	double sum = 0;
	size_t i;

	for (i = 0; i < n; i++)
		sum += (double)v[i];
	return n ? sum / (double)n : 0;
}

uint64_t fl_fnv1a(uint64_t h, const void *p, size_t len)
{
	const unsigned char *b = p;

	while (len--) {
		h ^= *b++;
		h *= 0x100000001b3ull;
	}
	return h;
}

uint64_t fl_checksum(const void *p, size_t len, size_t chunk)
{
	const unsigned char *b = p;
	uint64_t h = FL_FNV_OFFSET;

	if (!chunk)
		chunk = 4096;
	while (len) {
		size_t n = len < chunk ? len : chunk;
		uint64_t d = fl_fnv1a(FL_FNV_OFFSET, b, n);
		unsigned char le[8];
		int i;

		for (i = 0; i < 8; i++)
			le[i] = (unsigned char)(d >> (8 * i));
		h = fl_fnv1a(h, le, 8);
		b += n;
		len -= n;
	}
	return h;
}

int fl_job(int fd, struct fl_ioc_job *job, unsigned int op, uint64_t src,
	   uint64_t dst, uint64_t len, uint64_t value, unsigned int lanes,
	   unsigned int pattern)
{
	memset(job, 0, sizeof(*job));
	job->op = op;
	job->src = src;
	job->dst = dst;
	job->len = len;
	job->value = value;
	job->lanes = lanes;
	job->pattern = pattern;
	job->engine = FL_JOB_ENGINE_ANY;
	return fl_ioctl(fd, FL_IOC_JOB, job);
}

void *fl_map_aligned(size_t len, size_t align, int prot)
{
	char *p = mmap(NULL, len + align, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t a;

	if (p == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)p + align - 1) & ~(align - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	munmap((char *)a + len, (uintptr_t)p + align - a);
	return (void *)a;
}

static void param_path(const char *name, char *path, size_t len)
{
	snprintf(path, len, "/sys/module/faultline/parameters/%s", name);
}

int fl_param_set(const char *name, const char *val)
{
	char path[128];
	ssize_t n;
	int fd;

	param_path(name, path, sizeof(path));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -errno : 0;
}

int fl_param_get(const char *name, char *buf, size_t len)
{
	char path[128];

	param_path(name, path, sizeof(path));
	return fl_read_file(path, buf, len);
}

int fl_run_tests(const struct fl_test *tests, size_t n, char **names, int nnames,
		 int all_too)
{
	int passed = 0, failed = 0, k;
	size_t i;

	for (i = 0; i < n; i++) {
		char why[256] = "";
		int want = !nnames && (!tests[i].by_name_only || all_too), r;

		for (k = 0; k < nnames; k++)
			want |= !strcmp(names[k], tests[i].name);
		if (!want)
			continue;
		r = tests[i].fn(why, sizeof(why));
		if (r == FL_PASS) {
			printf("ok - %s\n", tests[i].name);
			passed++;
		} else if (r == FL_SKIP) {
			printf("ok - %s # skip %s\n", tests[i].name, why);
			passed++;
		} else {
			printf("not ok - %s: %s\n", tests[i].name, why);
			failed++;
		}
	}
	printf("# %d passed, %d failed\n", passed, failed);
	return failed;
}
