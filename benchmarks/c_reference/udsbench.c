/*
 * udsbench: the C reference for `udskit bench`.
 *
 * One trial of one transport, pattern and size, done the way udskit does it, so that
 * benchmarks/bench_vs_c.py can tell how much the Python harness hides of the kernel:
 *   - both ends are made in one process (listen, connect, accept), which then forks;
 *     the parent measures, the child is the peer;
 *   - pingpong: the parent sends SIZE bytes, the child reads them all and sends the
 *     same bytes back; one sample per round trip; the first 10% of the time is warm-up;
 *   - throughput: the child sends SIZE-byte messages for SECONDS, then ends (close, or
 *     an empty datagram for unix-dgram, which has no end of file); the parent reads
 *     (one message per call where the kernel keeps boundaries, up to 256 KiB per call on
 *     a byte stream) and counts the bytes after a 10% warm-up until the end.
 *
 * usage: udsbench TRANSPORT PATTERN SIZE SECONDS SOCKDIR [PARENT_CPU CHILD_CPU]
 *   TRANSPORT: unix-stream unix-stream-abstract socketpair unix-dgram unix-seqpacket tcp pipe
 *   PATTERN:   pingpong throughput
 *   PARENT_CPU CHILD_CPU: pin the measuring and the peer process (like `udskit bench --pin`)
 * prints one JSON object on a line: the keys of udskit's results, for this one trial.
 *
 * Build: gcc -O2 -Wall -o build/udsbench udsbench.c -lm   (bench_vs_c.py does it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP_SHARE 0.1
#define STREAM_READ (256 * 1024)
#define BATCH_BYTES (256 * 1024)

enum kind { STREAM, DGRAM, SEQPACKET, TCP, PIPE };

/* One end: where to write and where to read (the same fd for a socket). */
struct end {
	int wfd;
	int rfd;
};

static void die(const char *what)
{
	fprintf(stderr, "udsbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void send_all(int fd, const char *buf, size_t size)
{
	size_t sent = 0;
	while (sent < size) {
		ssize_t n = write(fd, buf + sent, size - sent);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		sent += (size_t)n;
	}
}

/* Read exactly `size` bytes; returns 0 at end of file before the first byte. */
static int recv_all(int fd, char *buf, size_t size, int keeps_boundaries)
{
	size_t got = 0;
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		if (n == 0) {
			if (got == 0)
				return 0;
			fprintf(stderr, "udsbench: peer closed mid-message\n");
			exit(1);
		}
		got += (size_t)n;
		if (keeps_boundaries && got != size) {
			fprintf(stderr, "udsbench: short message\n");
			exit(1);
		}
	}
	return 1;
}

static void unix_addr(struct sockaddr_un *sun, socklen_t *len, const char *dir, int abstract,
		      int n)
{
	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if (abstract) {
		int k = snprintf(sun->sun_path + 1, sizeof sun->sun_path - 1, "udsbench-c-%d-%d",
				 (int)getpid(), n);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)k);
	} else {
		snprintf(sun->sun_path, sizeof sun->sun_path, "%s/c%d-%d.sock", dir, (int)getpid(), n);
		*len = sizeof *sun;
	}
}

static void make_pair(const char *transport, const char *dir, struct end *ours,
		      struct end *theirs, enum kind *kind)
{
	int sv[2];
	if (!strcmp(transport, "pipe")) {
		int down[2], up[2];
		if (pipe2(down, O_CLOEXEC) || pipe2(up, O_CLOEXEC))
			die("pipe2");
		*kind = PIPE;
		ours->wfd = down[1];
		ours->rfd = up[0];
		theirs->wfd = up[1];
		theirs->rfd = down[0];
		return;
	}
	if (!strcmp(transport, "socketpair")) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			die("socketpair");
		*kind = STREAM;
	} else if (!strcmp(transport, "tcp")) {
		struct sockaddr_in sin = {.sin_family = AF_INET};
		socklen_t len = sizeof sin;
		int one = 1;
		int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (l < 0 || bind(l, (struct sockaddr *)&sin, sizeof sin) || listen(l, 1) ||
		    getsockname(l, (struct sockaddr *)&sin, &len))
			die("tcp listen");
		sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&sin, sizeof sin))
			die("tcp connect");
		sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (sv[1] < 0)
			die("accept");
		close(l);
		setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		*kind = TCP;
	} else if (!strcmp(transport, "unix-dgram")) {
		struct sockaddr_un a, b;
		socklen_t alen, blen;
		unix_addr(&a, &alen, dir, 0, 0);
		unix_addr(&b, &blen, dir, 1, 1);
		sv[0] = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		sv[1] = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (sv[0] < 0 || sv[1] < 0 || bind(sv[1], (struct sockaddr *)&a, alen) ||
		    bind(sv[0], (struct sockaddr *)&b, blen) ||
		    connect(sv[0], (struct sockaddr *)&a, alen) ||
		    connect(sv[1], (struct sockaddr *)&b, blen))
			die("unix-dgram setup");
		unlink(a.sun_path);
		*kind = DGRAM;
	} else {
		int abstract = !strcmp(transport, "unix-stream-abstract");
		int type = !strcmp(transport, "unix-seqpacket") ? SOCK_SEQPACKET : SOCK_STREAM;
		struct sockaddr_un a;
		socklen_t alen;
		int l;
		if (!abstract && strcmp(transport, "unix-stream") && type != SOCK_SEQPACKET) {
			fprintf(stderr, "udsbench: unknown transport %s\n", transport);
			exit(2);
		}
		unix_addr(&a, &alen, dir, abstract, 2);
		l = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&a, alen) || listen(l, 1))
			die("unix listen");
		sv[0] = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
		if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&a, alen))
			die("unix connect");
		sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (sv[1] < 0)
			die("accept");
		close(l);
		if (!abstract)
			unlink(a.sun_path);
		*kind = type == SOCK_SEQPACKET ? SEQPACKET : STREAM;
	}
	ours->wfd = ours->rfd = sv[0];
	theirs->wfd = theirs->rfd = sv[1];
}

static void close_end(struct end *e)
{
	close(e->wfd);
	if (e->rfd != e->wfd)
		close(e->rfd);
}

/* Tell the peer we are done: an empty datagram (datagrams have no end of file), then close. */
static void finish(struct end *e, enum kind kind)
{
	if (kind == DGRAM)
		(void)send(e->wfd, "", 0, 0);
	close_end(e);
}

static void fill(char *buf, size_t size)
{
	for (size_t i = 0; i < size; i++)
		buf[i] = (char)(i & 0xff);
}

static void pin_to(const char *cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(atoi(cpu), &set);
	if (sched_setaffinity(0, sizeof set, &set))
		die("sched_setaffinity");
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static double pct_us(const int64_t *sorted, size_t n, double q)
{
	/* nearest rank, as udskit: ceil(q% of n), tolerant of 99.9/100*1000 = 999.0000000000001 */
	size_t rank = (size_t)ceil((q / 100.0) * (double)n - 1e-9);
	if (rank < 1)
		rank = 1;
	return (double)sorted[rank - 1] / 1000.0;
}

int main(int argc, char **argv)
{
	struct end ours, theirs;
	enum kind kind;
	size_t size;
	double seconds;
	int keeps, pingpong;
	pid_t pid;
	char *out, *back;

	if (argc != 6 && argc != 8) {
		fprintf(stderr, "usage: udsbench TRANSPORT PATTERN SIZE SECONDS SOCKDIR "
				"[PARENT_CPU CHILD_CPU]\n");
		return 2;
	}
	pingpong = !strcmp(argv[2], "pingpong");
	if (!pingpong && strcmp(argv[2], "throughput")) {
		fprintf(stderr, "udsbench: unknown pattern %s\n", argv[2]);
		return 2;
	}
	size = strtoul(argv[3], NULL, 10);
	seconds = strtod(argv[4], NULL);
	if (size < 1 || seconds <= 0) {
		fprintf(stderr, "udsbench: bad size or seconds\n");
		return 2;
	}
	make_pair(argv[1], argv[5], &ours, &theirs, &kind);
	keeps = kind == DGRAM || kind == SEQPACKET;
	out = malloc(size);
	back = malloc(size > STREAM_READ ? size : STREAM_READ);
	if (!out || !back)
		die("malloc");
	fill(out, size);
	signal(SIGPIPE, SIG_IGN);

	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (argc == 8)
			pin_to(argv[7]);
		close_end(&ours);
		if (pingpong) {
			while (recv_all(theirs.rfd, back, size, keeps))
				send_all(theirs.wfd, back, size);
		} else {
			size_t batch = BATCH_BYTES / size ? BATCH_BYTES / size : 1;
			int64_t deadline = now_ns() + (int64_t)(seconds * 1e9);
			while (now_ns() < deadline)
				for (size_t i = 0; i < batch; i++)
					send_all(theirs.wfd, out, size);
			finish(&theirs, kind);
		}
		_exit(0);
	}
	close_end(&theirs);
	if (argc == 8)
		pin_to(argv[6]);

	if (pingpong) {
		size_t cap = 1 << 16, n = 0;
		int64_t *samples = malloc(cap * sizeof *samples);
		int64_t start = now_ns();
		int64_t warm_until = start + (int64_t)(seconds * WARMUP_SHARE * 1e9);
		int64_t deadline = start + (int64_t)(seconds * 1e9);
		int64_t t0, t1;
		if (!samples)
			die("malloc");
		do {
			t0 = now_ns();
			send_all(ours.wfd, out, size);
			if (!recv_all(ours.rfd, back, size, keeps))
				die("peer gone");
			t1 = now_ns();
		} while (t1 < warm_until);
		do {
			t0 = now_ns();
			send_all(ours.wfd, out, size);
			if (!recv_all(ours.rfd, back, size, keeps))
				die("peer gone");
			t1 = now_ns();
			if (n == cap) {
				cap *= 2;
				samples = realloc(samples, cap * sizeof *samples);
				if (!samples)
					die("realloc");
			}
			samples[n++] = t1 - t0;
		} while (t1 < deadline);
		finish(&ours, kind);
		waitpid(pid, NULL, 0);
		qsort(samples, n, sizeof *samples, cmp_i64);
		printf("{\"transport\": \"%s\", \"pattern\": \"pingpong\", \"size\": %zu, "
		       "\"p50_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f, \"mb_s\": null, "
		       "\"msgs_s\": null, \"samples\": %zu}\n",
		       argv[1], size, pct_us(samples, n, 50), pct_us(samples, n, 99),
		       pct_us(samples, n, 99.9), n);
	} else {
		size_t rsize = keeps ? size : (size > STREAM_READ ? size : STREAM_READ);
		int64_t total = 0, start, elapsed, warm_until;
		ssize_t got;
		double secs;
		if (read(ours.rfd, back, rsize) <= 0)
			die("peer sent nothing");
		warm_until = now_ns() + (int64_t)(seconds * WARMUP_SHARE * 1e9);
		while (now_ns() < warm_until)
			if (read(ours.rfd, back, rsize) <= 0)
				die("peer stopped during warm-up");
		start = now_ns();
		while ((got = read(ours.rfd, back, rsize)) > 0)
			total += got;
		if (got < 0)
			die("read");
		elapsed = now_ns() - start;
		close_end(&ours);
		waitpid(pid, NULL, 0);
		secs = (double)elapsed / 1e9;
		printf("{\"transport\": \"%s\", \"pattern\": \"throughput\", \"size\": %zu, "
		       "\"p50_us\": null, \"p99_us\": null, \"p999_us\": null, \"mb_s\": %.3f, "
		       "\"msgs_s\": %.1f, \"samples\": %lld}\n",
		       argv[1], size, (double)total / secs / 1e6, (double)total / (double)size / secs,
		       (long long)(total / (int64_t)size));
	}
	return 0;
}
