// SPDX-License-Identifier: GPL-2.0
/*
 * fl-test: guest tests of the faultline driver and device.
 *
 *   fl-test [-d N] [-l] [TEST...]
 *
 * -d N runs against /dev/faultlineN (default: the lowest N present), -l lists
 * the tests, TEST... runs only those. Prints "ok - NAME" or
 * "not ok - NAME: REASON" per test, then "# N passed, M failed"; exits 0 iff
 * every test that ran passed. Lines starting with "# " are diagnostics.
 * The tests assert behaviour (values, counts, order, errors), never timing.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl_common.h"

struct ctx {
	int ndev;
	int devs[FL_MAX_DEVICES];
	int index;		/* device under test */
	int fd;			/* its fd, or -errno */
	uint64_t submitted;	/* commands this run queued since its last reset */
};

struct test {
	const char *name;
	int (*fn)(struct ctx *c, char *why, size_t wlen);
};

enum { PASS = 0, FAILED = 1, SKIP = 2 };

#define FAIL(...) do { snprintf(why, wlen, __VA_ARGS__); return FAILED; } while (0)
#define SKIPPED(...) do { snprintf(why, wlen, __VA_ARGS__); return SKIP; } while (0)

#define SUBMIT_CHECKED_NOPS 1000

static const char *check_names(uint64_t mask)
{
	static char buf[256];
	static const char *const names[] = {
		"head_lag", "head_range", "order", "fence_order", "order_final",
		"head_delta", "completed_delta", "completed_head",
	};
	size_t i;

	buf[0] = '\0';
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(mask & (1ull << i)))
			continue;
		if (buf[0])
			strncat(buf, ",", sizeof(buf) - strlen(buf) - 1);
		strncat(buf, names[i], sizeof(buf) - strlen(buf) - 1);
	}
	return buf;
}

static int need_fd(struct ctx *c, char *why, size_t wlen)
{
	if (c->fd < 0)
		FAIL("cannot open /dev/faultline%d: %s", c->index, strerror(-c->fd));
	return PASS;
}

static int get_info(int fd, struct fl_ioc_info *info, char *why, size_t wlen)
{
	int ret;

	memset(info, 0, sizeof(*info));
	ret = fl_ioctl(fd, FL_IOC_INFO, info);
	if (ret)
		FAIL("FL_IOC_INFO: %s", strerror(-ret));
	return PASS;
}

/* One FENCE with an interrupt that must arrive. */
static int fence_irq_once(int fd, struct fl_ioc_fence *f, char *why, size_t wlen)
{
	int ret;

	memset(f, 0, sizeof(*f));
	ret = fl_ioctl(fd, FL_IOC_FENCE, f);
	if (ret)
		FAIL("FL_IOC_FENCE: %s", strerror(-ret));
	if (f->seen < f->value)
		FAIL("fence %llu completed but the slot reads %llu",
		     (unsigned long long)f->value, (unsigned long long)f->seen);
	if (f->irqs < 1)
		FAIL("fence %llu completed with no queue interrupt taken",
		     (unsigned long long)f->value);
	return PASS;
}

/*
 * FL_IOC_SUBMIT that must complete everything and pass every in-kernel check
 * (with FL_SUBMIT_F_EXCLUSIVE: exact head/completed advance).
 */
static int submit_checked(struct ctx *c, uint64_t count, uint64_t flags,
			  uint64_t batch, uint64_t fence_every,
			  struct fl_ioc_submit *s, char *why, size_t wlen)
{
	int ret;

	memset(s, 0, sizeof(*s));
	s->count = count;
	s->flags = flags;
	s->batch = batch;
	s->fence_every = fence_every;
	ret = fl_ioctl(c->fd, FL_IOC_SUBMIT, s);
	if (ret)
		FAIL("FL_IOC_SUBMIT(count=%llu batch=%llu): %s after %llu completed",
		     (unsigned long long)count, (unsigned long long)batch,
		     strerror(-ret), (unsigned long long)s->completed);
	c->submitted += s->commands;
	if (s->completed != count)
		FAIL("SUBMIT completed %llu of %llu NOPs", (unsigned long long)s->completed,
		     (unsigned long long)count);
	if (s->check_failures)
		FAIL("SUBMIT(count=%llu batch=%llu fence_every=%llu): %llu kernel check(s) failed: %s (head_delta %llu, completed_delta %llu, commands %llu)",
		     (unsigned long long)count, (unsigned long long)batch,
		     (unsigned long long)fence_every, (unsigned long long)s->check_failures,
		     check_names(s->check_mask), (unsigned long long)s->head_delta,
		     (unsigned long long)s->completed_delta, (unsigned long long)s->commands);
	if (s->commands != count + s->order_fences + s->chunks)
		FAIL("SUBMIT wrote %llu commands for %llu NOPs, %llu order fences, %llu chunks",
		     (unsigned long long)s->commands, (unsigned long long)count,
		     (unsigned long long)s->order_fences, (unsigned long long)s->chunks);
	if (fence_every && s->order_fences != count / fence_every)
		FAIL("SUBMIT wrote %llu order fences, expected %llu",
		     (unsigned long long)s->order_fences,
		     (unsigned long long)(count / fence_every));
	if (flags & FL_SUBMIT_F_EXCLUSIVE) {
		if (s->head_delta != s->commands || s->completed_delta != s->commands)
			FAIL("writeback head advanced %llu, completed %llu, for %llu commands",
			     (unsigned long long)s->head_delta,
			     (unsigned long long)s->completed_delta,
			     (unsigned long long)s->commands);
	}
	if ((flags & FL_SUBMIT_F_IRQ) && count && s->irqs < 1)
		FAIL("SUBMIT with interrupts took none");
	return PASS;
}

/* ---------------------------------------------------------------------- */

static int t_probe_id(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info info;
	char path[64], bdf[64], file[160], val[64];
	struct stat st;
	unsigned long long want_bdf;
	unsigned int dom, bus, dev, fn;
	int ret;

	if (!c->ndev)
		FAIL("no /dev/faultline* device");
	snprintf(path, sizeof(path), "/dev/faultline%d", c->index);
	if (stat(path, &st))
		FAIL("%s: %s", path, strerror(errno));
	if (!S_ISCHR(st.st_mode))
		FAIL("%s is not a character device", path);
	if (need_fd(c, why, wlen))
		return FAILED;
	if (get_info(c->fd, &info, why, wlen))
		return FAILED;

	if (info.id != FL_ID_MAGIC)
		FAIL("id %#llx, expected %#x", (unsigned long long)info.id, FL_ID_MAGIC);
	if (info.version >> 16 != FL_VERSION >> 16)
		FAIL("version %#llx, expected major %u", (unsigned long long)info.version,
		     FL_VERSION >> 16);
	if (info.num_contexts < 1 || info.num_contexts >= FL_CONTEXT_ALL)
		FAIL("num_contexts %llu", (unsigned long long)info.num_contexts);
	if (info.num_engines < 1 || info.num_engines >= FL_ENGINE_ANY)
		FAIL("num_engines %llu", (unsigned long long)info.num_engines);
	if (info.num_lanes < 1 || info.num_lanes > 255)
		FAIL("num_lanes %llu", (unsigned long long)info.num_lanes);
	if (info.tlb_entries < 1)
		FAIL("tlb_entries %llu", (unsigned long long)info.tlb_entries);
	if (info.cq_entries < FL_CQ_MIN_ENTRIES || info.cq_entries > FL_CQ_MAX_ENTRIES ||
	    (info.cq_entries & (info.cq_entries - 1)))
		FAIL("cq_entries %llu", (unsigned long long)info.cq_entries);
	if (info.chunk_max < 2 || info.chunk_max > info.cq_entries / 2)
		FAIL("chunk_max %llu for %llu entries", (unsigned long long)info.chunk_max,
		     (unsigned long long)info.cq_entries);
	if (info.state != FL_STATE_RUNNING)
		FAIL("driver state %llu, expected running", (unsigned long long)info.state);

	/* The misc device leads to the PCI function it was probed for. */
	ret = fl_pci_address(c->index, bdf, sizeof(bdf));
	if (ret)
		FAIL("/sys/class/misc/faultline%d/device: %s", c->index, strerror(-ret));
	if (sscanf(bdf, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4)
		FAIL("unexpected PCI address '%s'", bdf);
	want_bdf = ((unsigned long long)dom << 16) | (bus << 8) | (dev << 3) | fn;
	if (info.pci_bdf != want_bdf)
		FAIL("INFO pci_bdf %#llx but sysfs says %s", (unsigned long long)info.pci_bdf, bdf);
	snprintf(file, sizeof(file), "/sys/bus/pci/devices/%s/vendor", bdf);
	if (fl_read_file(file, val, sizeof(val)) || strtoul(val, NULL, 0) != FL_PCI_VENDOR_ID)
		FAIL("%s: '%s'", file, val);
	snprintf(file, sizeof(file), "/sys/bus/pci/devices/%s/device", bdf);
	if (fl_read_file(file, val, sizeof(val)) || strtoul(val, NULL, 0) != FL_PCI_DEVICE_ID)
		FAIL("%s: '%s'", file, val);

	printf("# faultline%d at %s: version %llu.%llu, features %#llx, %llu contexts, %llu engines x %llu lanes, %llu TLB entries, queue %llu\n",
	       c->index, bdf, (unsigned long long)info.version >> 16,
	       (unsigned long long)info.version & 0xffff, (unsigned long long)info.features,
	       (unsigned long long)info.num_contexts, (unsigned long long)info.num_engines,
	       (unsigned long long)info.num_lanes, (unsigned long long)info.tlb_entries,
	       (unsigned long long)info.cq_entries);
	return PASS;
}

static int t_fence_irq(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info before, after;
	struct fl_ioc_fence f;
	uint64_t prev = 0;
	int i, ret;

	if (need_fd(c, why, wlen) || get_info(c->fd, &before, why, wlen))
		return FAILED;
	for (i = 0; i < 20; i++) {
		if (fence_irq_once(c->fd, &f, why, wlen))
			return FAILED;
		c->submitted++;
		if (f.value <= prev)
			FAIL("fence value %llu after %llu", (unsigned long long)f.value,
			     (unsigned long long)prev);
		prev = f.value;
	}
	/* The polled variant completes too, in order. */
	memset(&f, 0, sizeof(f));
	f.flags = FL_FENCE_F_POLL;
	ret = fl_ioctl(c->fd, FL_IOC_FENCE, &f);
	if (ret)
		FAIL("polled FL_IOC_FENCE: %s", strerror(-ret));
	c->submitted++;
	if (f.value <= prev || f.seen < f.value)
		FAIL("polled fence value %llu (seen %llu) after %llu",
		     (unsigned long long)f.value, (unsigned long long)f.seen,
		     (unsigned long long)prev);
	if (get_info(c->fd, &after, why, wlen))
		return FAILED;
	if (after.irq_queue < before.irq_queue + 20)
		FAIL("queue interrupts went from %llu to %llu over 20 fences",
		     (unsigned long long)before.irq_queue, (unsigned long long)after.irq_queue);
	if (after.irq_error != before.irq_error)
		FAIL("%llu error interrupt(s) during the test",
		     (unsigned long long)(after.irq_error - before.irq_error));
	return PASS;
}

static int t_commands_in_order_100k(struct ctx *c, char *why, size_t wlen)
{
	static const uint64_t batches[] = { 0, 256, 61, 7, 1000, 1 };
	static const uint64_t every[] = { 64, 0, 5, 1000, 3, 0 };
	const uint64_t total = 100000, per_call = 1000;
	uint64_t done = 0, prev_fence = 0, prev_order = 0, irqs = 0;
	struct fl_ioc_submit s;
	struct fl_ioc_fence f;
	unsigned int i;

	if (need_fd(c, why, wlen))
		return FAILED;
	for (i = 0; done < total; i++) {
		uint64_t flags = FL_SUBMIT_F_EXCLUSIVE | (i % 2 ? 0 : FL_SUBMIT_F_IRQ);
		uint64_t batch = batches[i % 6], fe = every[(i / 6) % 6];

		if (submit_checked(c, per_call, flags, batch, fe, &s, why, wlen))
			return FAILED;
		if (s.last_fence <= prev_fence)
			FAIL("call %u: completion fence %llu after %llu", i,
			     (unsigned long long)s.last_fence, (unsigned long long)prev_fence);
		if (s.order_fences && s.last_order <= prev_order)
			FAIL("call %u: order fence %llu after %llu", i,
			     (unsigned long long)s.last_order, (unsigned long long)prev_order);
		prev_fence = s.last_fence;
		if (s.order_fences)
			prev_order = s.last_order;
		irqs += s.irqs;
		done += s.completed;
	}
	/* Fences carrying increasing values read back in order. */
	for (i = 0; i < 100; i++) {
		if (fence_irq_once(c->fd, &f, why, wlen))
			return FAILED;
		c->submitted++;
		if (f.value <= prev_fence)
			FAIL("fence %u: value %llu after %llu", i, (unsigned long long)f.value,
			     (unsigned long long)prev_fence);
		prev_fence = f.value;
	}
	printf("# commands_in_order_100k: %llu NOPs in %u SUBMIT calls, %llu queue interrupts\n",
	       (unsigned long long)done, i, (unsigned long long)irqs);
	return PASS;
}

static int t_stats(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_stats st;
	struct fl_ioc_submit s;
	uint64_t cmds;
	int ret;

	if (need_fd(c, why, wlen))
		return FAILED;
	if (submit_checked(c, SUBMIT_CHECKED_NOPS, FL_SUBMIT_F_EXCLUSIVE | FL_SUBMIT_F_IRQ,
			   0, 0, &s, why, wlen))
		return FAILED;
	memset(&st, 0, sizeof(st));
	ret = fl_ioctl(c->fd, FL_IOC_STATS, &st);
	if (ret)
		FAIL("FL_IOC_STATS: %s", strerror(-ret));
	if (st.count != FL_STAT_COUNT)
		FAIL("%llu counters, expected %u", (unsigned long long)st.count, FL_STAT_COUNT);
	cmds = st.values[FL_STAT_COMMANDS];
	if (cmds < c->submitted)
		FAIL("device counted %llu commands, this run queued %llu",
		     (unsigned long long)cmds, (unsigned long long)c->submitted);
	printf("# stats: commands %llu (this run queued %llu), jobs %llu, faults r/w/a/p %llu/%llu/%llu/%llu, tlb hits %llu misses %llu\n",
	       (unsigned long long)cmds, (unsigned long long)c->submitted,
	       (unsigned long long)st.values[FL_STAT_JOBS],
	       (unsigned long long)st.values[FL_STAT_FAULTS_READ],
	       (unsigned long long)st.values[FL_STAT_FAULTS_WRITE],
	       (unsigned long long)st.values[FL_STAT_FAULTS_ATOMIC],
	       (unsigned long long)st.values[FL_STAT_FAULTS_PREFETCH],
	       (unsigned long long)st.values[FL_STAT_TLB_HITS],
	       (unsigned long long)st.values[FL_STAT_TLB_MISSES]);
	c->submitted++;
	return PASS;
}

/* Queue work, then the device must work as before. */
static int check_works(struct ctx *c, const char *after, char *why, size_t wlen)
{
	struct fl_ioc_info info;
	struct fl_ioc_submit s;
	struct fl_ioc_fence f;
	char sub[200];

	if (get_info(c->fd, &info, why, wlen))
		return FAILED;
	if (info.state != FL_STATE_RUNNING)
		FAIL("after %s: driver state %llu, expected running", after,
		     (unsigned long long)info.state);
	if (submit_checked(c, SUBMIT_CHECKED_NOPS, FL_SUBMIT_F_EXCLUSIVE | FL_SUBMIT_F_IRQ,
			   0, 16, &s, sub, sizeof(sub)))
		FAIL("after %s: %s", after, sub);
	if (fence_irq_once(c->fd, &f, sub, sizeof(sub)))
		FAIL("after %s: %s", after, sub);
	c->submitted++;
	return PASS;
}

/* Child of reset_mid_stream: keep the queue busy until the reset hits. */
static int child_submitter(int index, int ready_fd)
{
	const uint64_t deadline = fl_now_ns() + 3000000000ull;	/* 3 s at most */
	struct fl_ioc_submit s;
	int fd = fl_open_dev(index), ret;
	char b = 'r';

	if (fd < 0)
		return 20;
	if (write(ready_fd, &b, 1) != 1)
		return 21;
	close(ready_fd);
	while (fl_now_ns() < deadline) {
		memset(&s, 0, sizeof(s));
		s.count = 20000;
		ret = fl_ioctl(fd, FL_IOC_SUBMIT, &s);
		if (ret == -EIO)
			return 10;
		if (ret) {
			fprintf(stderr, "# reset_mid_stream child: SUBMIT: %s\n", strerror(-ret));
			return 22;
		}
		if (s.completed != s.count)
			return 23;
	}
	return 0;
}

static int t_reset_mid_stream(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info before;
	struct fl_ioc_reset r;
	int pipefd[2], status = 0, ret, waited, resets, exited;
	uint64_t failed = 0;
	pid_t pid;
	char b;

	if (need_fd(c, why, wlen) || get_info(c->fd, &before, why, wlen))
		return FAILED;

	/*
	 * 1. A batch the device has not consumed when the reset comes: it
	 * must fail with EIO, and the driver must work afterwards.
	 */
	memset(&r, 0, sizeof(r));
	r.flags = FL_RESET_F_INFLIGHT | FL_RESET_F_HOLD;
	r.inflight = before.chunk_max - 1;
	ret = fl_ioctl(c->fd, FL_IOC_RESET, &r);
	if (ret)
		FAIL("FL_IOC_RESET with %llu held in the ring: %s",
		     (unsigned long long)r.inflight, strerror(-ret));
	c->submitted = 0;
	if (r.inflight_errno != EIO || r.inflight_done || r.failed < 1)
		FAIL("batch held in the ring at the reset: errno %llu, %llu consumed, %llu failed; expected EIO, 0, >= 1",
		     (unsigned long long)r.inflight_errno, (unsigned long long)r.inflight_done,
		     (unsigned long long)r.failed);
	if (r.generation != before.generation + 1)
		FAIL("generation %llu after reset, was %llu", (unsigned long long)r.generation,
		     (unsigned long long)before.generation);
	if (check_works(c, "FL_IOC_RESET", why, wlen))
		return FAILED;

	/*
	 * 2. A batch the device is consuming: reset mid-stream. Whether it
	 * finished first is up to the race (the writeback head may lag the
	 * fence, so the consumed count is only reported).
	 */
	if (get_info(c->fd, &before, why, wlen))
		return FAILED;
	memset(&r, 0, sizeof(r));
	r.flags = FL_RESET_F_INFLIGHT;
	r.inflight = before.chunk_max - 1;
	ret = fl_ioctl(c->fd, FL_IOC_RESET, &r);
	if (ret)
		FAIL("FL_IOC_RESET with %llu in flight: %s", (unsigned long long)r.inflight,
		     strerror(-ret));
	c->submitted = 0;
	if (r.inflight_errno != 0 && r.inflight_errno != EIO)
		FAIL("in-flight batch ended with errno %llu, expected EIO or success",
		     (unsigned long long)r.inflight_errno);
	if (r.inflight_done > r.inflight + 1)
		FAIL("device consumed %llu of %llu in-flight commands",
		     (unsigned long long)r.inflight_done, (unsigned long long)r.inflight + 1);
	if (r.inflight_errno == EIO && r.failed < 1)
		FAIL("in-flight batch failed but the reset reports no failed submission");
	if (r.generation != before.generation + 1)
		FAIL("generation %llu after reset, was %llu", (unsigned long long)r.generation,
		     (unsigned long long)before.generation);
	printf("# reset_mid_stream: reset with %llu in flight: %llu consumed before the reset, batch %s\n",
	       (unsigned long long)r.inflight + 1, (unsigned long long)r.inflight_done,
	       r.inflight_errno ? "failed with EIO" : "completed");
	if (check_works(c, "FL_IOC_RESET", why, wlen))
		return FAILED;

	/* 3. Another process waiting in SUBMIT when the reset comes. */
	if (pipe(pipefd))
		FAIL("pipe: %s", strerror(errno));
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		FAIL("fork: %s", strerror(errno));
	if (!pid) {
		close(pipefd[0]);
		_exit(child_submitter(c->index, pipefd[1]));
	}
	close(pipefd[1]);
	ret = (int)read(pipefd[0], &b, 1) == 1 ? 0 : -EPIPE;
	close(pipefd[0]);
	/* Up to 20 resets, 20 ms apart, while the other process submits. */
	exited = 0;
	for (resets = 0; !ret && resets < 20 && !exited; resets++) {
		usleep(20000);
		memset(&r, 0, sizeof(r));
		ret = fl_ioctl(c->fd, FL_IOC_RESET, &r);
		failed += r.failed;
		exited = waitpid(pid, &status, WNOHANG) == pid;
	}
	c->submitted = 0;
	for (waited = 0; !exited && waited < 600; waited++) {	/* 60 s: never hang */
		exited = waitpid(pid, &status, WNOHANG) == pid;
		if (!exited)
			usleep(100000);
	}
	if (!exited) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		FAIL("the submitting process did not return within 60 s of the resets");
	}
	if (ret)
		FAIL("FL_IOC_RESET with another process submitting: %s", strerror(-ret));
	if (!WIFEXITED(status))
		FAIL("submitting process died (status %#x)", status);
	if (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 10)
		FAIL("submitting process ended with code %d (20+: unexpected error)",
		     WEXITSTATUS(status));
	if (failed > 0 && WEXITSTATUS(status) != 10)
		FAIL("resets failed %llu submission(s) but the submitter never saw EIO",
		     (unsigned long long)failed);
	printf("# reset_mid_stream: %d reset(s) under load failed %llu submission(s); the other process %s\n",
	       resets, (unsigned long long)failed,
	       WEXITSTATUS(status) == 10 ? "got EIO" : "never saw EIO");
	return check_works(c, "a reset under load", why, wlen);
}

static int t_pci_flr_reinit(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info before, after;
	char bdf[64], path[160];
	int fd, ret;

	if (need_fd(c, why, wlen) || get_info(c->fd, &before, why, wlen))
		return FAILED;
	ret = fl_pci_address(c->index, bdf, sizeof(bdf));
	if (ret)
		FAIL("/sys/class/misc/faultline%d/device: %s", c->index, strerror(-ret));
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/reset", bdf);
	if (access(path, F_OK))
		FAIL("%s is absent: the kernel found no reset method for the function", path);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		FAIL("open %s: %s", path, strerror(errno));
	ret = (int)write(fd, "1", 1);
	if (ret != 1) {
		ret = errno;
		close(fd);
		FAIL("write 1 to %s: %s", path, strerror(ret));
	}
	close(fd);
	c->submitted = 0;
	if (get_info(c->fd, &after, why, wlen))
		return FAILED;
	if (after.generation < before.generation + 1)
		FAIL("generation %llu -> %llu: the driver did not re-initialise",
		     (unsigned long long)before.generation, (unsigned long long)after.generation);
	return check_works(c, "the function reset", why, wlen);
}

static int t_multi_device(struct ctx *c, char *why, size_t wlen)
{
	uint64_t bdfs[FL_MAX_DEVICES];
	struct fl_ioc_info info;
	struct fl_ioc_fence f;
	char sub[200];
	int i, j;

	if (c->ndev < 2)
		SKIPPED("fewer than two /dev/faultline* devices");
	for (i = 0; i < c->ndev; i++) {
		int fd = fl_open_dev(c->devs[i]);

		if (fd < 0)
			FAIL("open /dev/faultline%d: %s", c->devs[i], strerror(-fd));
		if (get_info(fd, &info, sub, sizeof(sub)) || info.id != FL_ID_MAGIC) {
			close(fd);
			FAIL("faultline%d: bad INFO %s", c->devs[i], sub);
		}
		if (fence_irq_once(fd, &f, sub, sizeof(sub))) {
			close(fd);
			FAIL("faultline%d: %s", c->devs[i], sub);
		}
		close(fd);
		bdfs[i] = info.pci_bdf;
		for (j = 0; j < i; j++)
			if (bdfs[j] == bdfs[i])
				FAIL("faultline%d and faultline%d report the same PCI function",
				     c->devs[j], c->devs[i]);
	}
	printf("# multi_device: fenced on %d devices\n", c->ndev);
	return PASS;
}

static int t_error_irq_recovery(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info before, info;
	struct fl_ioc_submit s;
	struct fl_ioc_fence f;
	struct fl_ioc_reset r;
	int ret;

	if (need_fd(c, why, wlen) || get_info(c->fd, &before, why, wlen))
		return FAILED;

	/* A command the device does not know stops the queue with an error. */
	memset(&s, 0, sizeof(s));
	s.count = 10;
	s.flags = FL_SUBMIT_F_IRQ | FL_SUBMIT_F_BAD_OPCODE;
	ret = fl_ioctl(c->fd, FL_IOC_SUBMIT, &s);
	if (ret != -EIO)
		FAIL("SUBMIT with a bad opcode returned %s, expected EIO",
		     ret ? strerror(-ret) : "success");
	if (get_info(c->fd, &info, why, wlen))
		return FAILED;
	if (info.state != FL_STATE_FAILED)
		FAIL("driver state %llu after a device error, expected failed",
		     (unsigned long long)info.state);
	if (info.hw_error != FL_ERR_BAD_OPCODE)
		FAIL("device error %llu, expected FL_ERR_BAD_OPCODE (%u)",
		     (unsigned long long)info.hw_error, FL_ERR_BAD_OPCODE);
	if (info.irq_error != before.irq_error + 1)
		FAIL("error interrupts went from %llu to %llu",
		     (unsigned long long)before.irq_error, (unsigned long long)info.irq_error);

	/* Nothing runs until the reset... */
	memset(&f, 0, sizeof(f));
	ret = fl_ioctl(c->fd, FL_IOC_FENCE, &f);
	if (ret != -EIO)
		FAIL("FENCE on a failed device returned %s, expected EIO",
		     ret ? strerror(-ret) : "success");

	/* ...which brings the device back. */
	memset(&r, 0, sizeof(r));
	ret = fl_ioctl(c->fd, FL_IOC_RESET, &r);
	if (ret)
		FAIL("FL_IOC_RESET after the error: %s", strerror(-ret));
	c->submitted = 0;
	return check_works(c, "recovery from a device error", why, wlen);
}

/* Finds the faultline misc device of PCI function @bdf; its index or -1. */
static int misc_index_of(const char *bdf)
{
	char path[160], link[64];
	int i;

	for (i = 0; i < 64; i++) {
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/misc/faultline%d", bdf, i);
		snprintf(link, sizeof(link), "/dev/faultline%d", i);
		if (!access(path, F_OK) && !access(link, F_OK))
			return i;
	}
	return -1;
}

static int write_sysfs(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		ret = -errno;
	close(fd);
	return ret;
}

static int t_unbind_rebind(struct ctx *c, char *why, size_t wlen)
{
	struct fl_ioc_info info;
	char bdf[64], path[160], dev[64];
	int fd2, ret, idx, tries;

	if (need_fd(c, why, wlen))
		return FAILED;
	ret = fl_pci_address(c->index, bdf, sizeof(bdf));
	if (ret)
		FAIL("/sys/class/misc/faultline%d/device: %s", c->index, strerror(-ret));
	fd2 = fl_open_dev(c->index);
	if (fd2 < 0)
		FAIL("second open: %s", strerror(-fd2));

	/* Remove with files open: they must fail cleanly, not crash. */
	ret = write_sysfs("/sys/bus/pci/drivers/faultline/unbind", bdf);
	if (ret) {
		close(fd2);
		FAIL("unbind %s: %s", bdf, strerror(-ret));
	}
	memset(&info, 0, sizeof(info));
	ret = fl_ioctl(fd2, FL_IOC_INFO, &info);
	close(fd2);
	close(c->fd);
	c->fd = -ENODEV;
	if (ret != -ENODEV)
		FAIL("INFO on a file of the removed device returned %s, expected ENODEV",
		     ret ? strerror(-ret) : "success");
	snprintf(dev, sizeof(dev), "/dev/faultline%d", c->index);
	for (tries = 0; tries < 50 && !access(dev, F_OK); tries++)
		usleep(20000);
	if (!access(dev, F_OK))
		FAIL("%s still exists after unbind", dev);

	ret = write_sysfs("/sys/bus/pci/drivers/faultline/bind", bdf);
	if (ret)
		FAIL("bind %s: %s", bdf, strerror(-ret));
	for (tries = 0, idx = -1; tries < 50 && idx < 0; tries++) {
		idx = misc_index_of(bdf);
		if (idx < 0)
			usleep(20000);
	}
	if (idx < 0)
		FAIL("no /dev/faultline* for %s after bind", bdf);
	c->index = idx;
	c->fd = fl_open_dev(idx);
	if (c->fd < 0)
		FAIL("open /dev/faultline%d after bind: %s", idx, strerror(-c->fd));
	c->submitted = 0;
	snprintf(path, sizeof(path), "rebinding %s", bdf);
	return check_works(c, path, why, wlen);
}

static const struct test tests[] = {
	{ "probe_id", t_probe_id },
	{ "fence_irq", t_fence_irq },
	{ "commands_in_order_100k", t_commands_in_order_100k },
	{ "stats", t_stats },
	{ "reset_mid_stream", t_reset_mid_stream },
	{ "error_irq_recovery", t_error_irq_recovery },
	{ "pci_flr_reinit", t_pci_flr_reinit },
	{ "multi_device", t_multi_device },
	{ "unbind_rebind", t_unbind_rebind },
};

#define NTESTS (sizeof(tests) / sizeof(tests[0]))

static void usage(void)
{
	fprintf(stderr, "usage: fl-test [-d N] [-l] [TEST...]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct ctx c = { .fd = -ENODEV };
	unsigned int passed = 0, failed = 0, i;
	int opt, want_index = -1, j;

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "d:lh")) != -1) {
		switch (opt) {
		case 'd':
			want_index = atoi(optarg);
			break;
		case 'l':
			for (i = 0; i < NTESTS; i++)
				printf("%s\n", tests[i].name);
			return 0;
		default:
			usage();
		}
	}
	for (j = optind; j < argc; j++) {
		for (i = 0; i < NTESTS; i++)
			if (!strcmp(argv[j], tests[i].name))
				break;
		if (i == NTESTS) {
			fprintf(stderr, "fl-test: unknown test '%s'\n", argv[j]);
			usage();
		}
	}

	c.ndev = fl_list_devices(c.devs, FL_MAX_DEVICES);
	c.index = want_index >= 0 ? want_index : c.ndev ? c.devs[0] : 0;
	if (c.ndev)
		c.fd = fl_open_dev(c.index);

	for (i = 0; i < NTESTS; i++) {
		char why[512] = "";
		int r;

		if (optind < argc) {
			for (j = optind; j < argc; j++)
				if (!strcmp(argv[j], tests[i].name))
					break;
			if (j == argc)
				continue;
		}
		r = tests[i].fn(&c, why, sizeof(why));
		if (r == PASS) {
			printf("ok - %s\n", tests[i].name);
			passed++;
		} else if (r == SKIP) {
			printf("# skip %s: %s\n", tests[i].name, why);
		} else {
			printf("not ok - %s: %s\n", tests[i].name, why);
			failed++;
		}
	}
	if (c.fd >= 0)
		close(c.fd);
	printf("# %u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
