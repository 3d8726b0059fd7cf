// SPDX-License-Identifier: GPL-2.0
/*
 * fl-bench: queue round-trip latency and command throughput of a faultline
 * device, through the driver's ioctls. Prints figures only; no pass/fail.
 *
 *   fl-bench [-d N] [-n FENCES] [-b BATCH] [-s SUBMITS] [-l LARGE]
 *
 *   -n  FENCE round trips to time (default 2000; a tenth as many polled)
 *   -b  NOPs per SUBMIT in the throughput run (default 256)
 *   -s  SUBMIT calls in the throughput run (default 400)
 *   -l  NOPs in one large, pipelined SUBMIT (default 65536; 0 skips)
 *
 * Lines:
 *   fence_rtt_us       kernel-measured: ktime before the doorbell to the waiter woken by MSI-X
 *   fence_rtt_user_us  the same round trips measured around the ioctl with clock_gettime
 *   fence_irq_us       kernel-measured: before the doorbell to the queue interrupt handler
 *   fence_poll_rtt_us  FENCE without interrupt, the waiter polling the fence slot
 *   submit_cmds_per_s  ring commands (NOPs + completion fences) per second, user-measured
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl_common.h"

static void print_dist(const char *name, uint64_t *ns, size_t n)
{
	fl_sort_u64(ns, n);
	printf("%s p50=%.1f p99=%.1f mean=%.1f min=%.1f max=%.1f n=%zu\n", name,
	       fl_percentile(ns, n, 50) / 1000.0, fl_percentile(ns, n, 99) / 1000.0,
	       fl_mean(ns, n) / 1000.0, n ? ns[0] / 1000.0 : 0.0,
	       n ? ns[n - 1] / 1000.0 : 0.0, n);
}

static int bench_fences(int fd, size_t n)
{
	uint64_t *k = calloc(n, sizeof(*k)), *u = calloc(n, sizeof(*u));
	uint64_t *irq = calloc(n, sizeof(*irq)), irqs = 0;
	size_t i, nirq = 0, npoll = n / 10 ? n / 10 : 1;
	struct fl_ioc_fence f;
	int ret = 0;

	if (!k || !u || !irq) {
		fprintf(stderr, "fl-bench: out of memory\n");
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		uint64_t t0;

		memset(&f, 0, sizeof(f));
		t0 = fl_now_ns();
		ret = fl_ioctl(fd, FL_IOC_FENCE, &f);
		u[i] = fl_now_ns() - t0;
		if (ret) {
			fprintf(stderr, "fl-bench: FL_IOC_FENCE %zu: %s\n", i, strerror(-ret));
			goto out;
		}
		k[i] = f.rtt_ns;
		if (f.irq_ns)
			irq[nirq++] = f.irq_ns;
		irqs += f.irqs;
	}
	print_dist("fence_rtt_us", k, n);
	print_dist("fence_rtt_user_us", u, n);
	print_dist("fence_irq_us", irq, nirq);
	printf("fence_irqs_per_fence value=%.3f\n", (double)irqs / (double)n);

	for (i = 0; i < npoll; i++) {
		memset(&f, 0, sizeof(f));
		f.flags = FL_FENCE_F_POLL;
		ret = fl_ioctl(fd, FL_IOC_FENCE, &f);
		if (ret) {
			fprintf(stderr, "fl-bench: polled FL_IOC_FENCE: %s\n", strerror(-ret));
			goto out;
		}
		k[i] = f.rtt_ns;
	}
	print_dist("fence_poll_rtt_us", k, npoll);
out:
	free(k);
	free(u);
	free(irq);
	return ret;
}

static int bench_submit(int fd, uint64_t batch, unsigned int calls, const char *label)
{
	uint64_t t0, ns, cmds = 0, nops = 0, irqs = 0;
	struct fl_ioc_submit s;
	unsigned int i;
	int ret;

	t0 = fl_now_ns();
	for (i = 0; i < calls; i++) {
		memset(&s, 0, sizeof(s));
		s.count = batch;
		s.flags = FL_SUBMIT_F_IRQ;
		ret = fl_ioctl(fd, FL_IOC_SUBMIT, &s);
		if (ret) {
			fprintf(stderr, "fl-bench: FL_IOC_SUBMIT(%llu): %s\n",
				(unsigned long long)batch, strerror(-ret));
			return ret;
		}
		if (s.check_failures)
			fprintf(stderr, "fl-bench: SUBMIT reported %llu failed checks (mask %#llx)\n",
				(unsigned long long)s.check_failures,
				(unsigned long long)s.check_mask);
		cmds += s.commands;
		nops += s.completed;
		irqs += s.irqs;
	}
	ns = fl_now_ns() - t0;
	printf("submit_cmds_per_s batch=%s value=%.0f nops_per_s=%.0f calls=%u commands=%llu irqs=%llu seconds=%.3f\n",
	       label, cmds * 1e9 / (double)ns, nops * 1e9 / (double)ns, calls,
	       (unsigned long long)cmds, (unsigned long long)irqs, ns / 1e9);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long nfences = 2000, batch = 256, submits = 400, large = 65536;
	int devs[FL_MAX_DEVICES], ndev, index = -1, fd, opt, ret;
	struct fl_ioc_info info;
	char label[32];

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "d:n:b:s:l:h")) != -1) {
		switch (opt) {
		case 'd':
			index = atoi(optarg);
			break;
		case 'n':
			nfences = strtoul(optarg, NULL, 0);
			break;
		case 'b':
			batch = strtoul(optarg, NULL, 0);
			break;
		case 's':
			submits = strtoul(optarg, NULL, 0);
			break;
		case 'l':
			large = strtoul(optarg, NULL, 0);
			break;
		default:
			fprintf(stderr, "usage: fl-bench [-d N] [-n FENCES] [-b BATCH] [-s SUBMITS] [-l LARGE]\n");
			return 2;
		}
	}
	/* Positional FENCES, for "fl-bench 5000". */
	if (optind < argc)
		nfences = strtoul(argv[optind], NULL, 0);
	if (!nfences || !batch || !submits) {
		fprintf(stderr, "fl-bench: counts must be positive\n");
		return 2;
	}

	ndev = fl_list_devices(devs, FL_MAX_DEVICES);
	if (index < 0) {
		if (!ndev) {
			fprintf(stderr, "fl-bench: no /dev/faultline* device\n");
			return 1;
		}
		index = devs[0];
	}
	fd = fl_open_dev(index);
	if (fd < 0) {
		fprintf(stderr, "fl-bench: /dev/faultline%d: %s\n", index, strerror(-fd));
		return 1;
	}
	memset(&info, 0, sizeof(info));
	ret = fl_ioctl(fd, FL_IOC_INFO, &info);
	if (ret) {
		fprintf(stderr, "fl-bench: FL_IOC_INFO: %s\n", strerror(-ret));
		return 1;
	}
	printf("# faultline%d: version %llu.%llu, queue %llu entries, chunk_max %llu\n", index,
	       (unsigned long long)info.version >> 16, (unsigned long long)info.version & 0xffff,
	       (unsigned long long)info.cq_entries, (unsigned long long)info.chunk_max);

	if (bench_fences(fd, nfences))
		return 1;
	snprintf(label, sizeof(label), "%lu", batch);
	if (bench_submit(fd, batch, (unsigned int)submits, label))
		return 1;
	if (large) {
		snprintf(label, sizeof(label), "max:%lu", large);
		if (bench_submit(fd, large, 1, label))
			return 1;
	}
	close(fd);
	return 0;
}
