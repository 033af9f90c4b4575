// SPDX-License-Identifier: GPL-2.0
/*
 * udskit's eBPF capture of unix socket traffic, from syscall tracepoints only.
 *
 * Why syscall tracepoints and not kprobes on unix_stream_sendmsg: they are a stable
 * ABI (the context layout below is the syscall's arguments, from
 * /sys/kernel/tracing/events/syscalls/NAME/format), they need no kernel headers or
 * BTF, and they load where lockdown=integrity refuses kprobes and fentry.
 *
 * Which descriptors are watched is decided in user space: the map `socks` holds one
 * entry per (process, fd) of interest, filled at start from /proc/PID/fd and
 * sock_diag. Every connection is recorded at ONE of its ends, sends and receives
 * both, so each byte is seen once; the entry's flags say whether that end is the
 * server's (its sends go server to client). A listener's entry makes accept(2)
 * add the new descriptor here, in the kernel, before the server can read from it,
 * so no byte of a new connection is missed. close(2) and dup(2) keep the map
 * current and tell user space.
 *
 * No kernel headers: the few types and helper numbers we need are declared here
 * (helper numbers are ABI, include/uapi/linux/bpf.h).
 */

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define INLINE static inline __attribute__((always_inline))

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_ANY 0
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0

/* Wake the reader only once this much waits in the ring: a wakeup per record (the
 * ring's default when the reader keeps up) costs the traced process an irq_work and
 * the reader a context switch per syscall, which at redis rates was most of the
 * capture's cost. The reader polls every few milliseconds for the rest. */
#define WAKEUP_BYTES (1 << 20)

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static __u64 (*bpf_ringbuf_query)(void *ringbuf, __u64 flags) = (void *)134;
static long (*bpf_loop)(__u32 nr_loops, void *callback_fn, void *callback_ctx,
                        __u64 flags) = (void *)181;

/* The few kernel structures the accept(2) exit walks, from the new descriptor to
 * the credentials connect(2) stored in the server's socket (what SO_PEERCRED
 * returns). Only the fields used are declared: preserve_access_index makes clang
 * emit CO-RE relocations, and libbpf fits every offset to the running kernel from
 * its BTF (/sys/kernel/btf/vmlinux) at load, so no kernel headers are needed. */
#define CORE __attribute__((preserve_access_index))
typedef struct { __u32 val; } kuid_t;
typedef struct { __u32 val; } kgid_t;
struct cred { kuid_t euid; kgid_t egid; } CORE;
struct hlist_node { struct hlist_node *next, **pprev; };
struct hlist_head { struct hlist_node *first; };
struct upid { int nr; } CORE;
struct pid { struct hlist_head tasks[4]; struct upid numbers[1]; } CORE;
struct sock { struct pid *sk_peer_pid; const struct cred *sk_peer_cred; } CORE;
struct socket { short type; struct sock *sk; } CORE;
struct file { void *private_data; } CORE;
struct fdtable { unsigned int max_fds; struct file **fd; } CORE;
struct files_struct { struct fdtable *fdt; } CORE;
struct task_struct {
	struct files_struct *files;
	struct hlist_node pid_links[4];
	char comm[16];
} CORE;
#define PIDTYPE_TGID 1
#define BPF_FIELD_BYTE_OFFSET 0
#define KREAD(dst, src) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), __builtin_preserve_access_index(&(src)))

/* The raw syscall tracepoint contexts: common header, syscall number, arguments. */
struct enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

struct iovec_u {
	__u64 base;
	__u64 len;
};

struct msghdr_u {
	__u64 name;
	__u32 namelen;
	__u32 pad;
	__u64 iov;
	__u64 iovlen;
	__u64 control;
	__u64 controllen;
	__u32 flags;
};

/* struct mmsghdr of sendmmsg(2)/recvmmsg(2): a msghdr and the bytes it moved. */
struct mmsghdr_u {
	struct msghdr_u hdr;
	__u32 len;
	__u32 pad;
};

/* Keep in step with udskit/capture/ebpf_records.py. */
#define SNAP_LEN 65536
#define TINY 128
#define SMALL 1024
#define MEDIUM 8192

#define F_LISTENER 1 /* accept(2) on it adds the new descriptor */
#define F_SERVER 2   /* this end's sends go server to client */
#define F_RECORD 4   /* record its sends and receives */

#define K_SEND 1
#define K_RECV 2
#define K_ACCEPT 3
#define K_CLOSE 4
#define K_DUP 5
#define K_EOF 6  /* a read returned 0: the peer closed its sending side */
#define K_EXIT 7 /* a process holding watched descriptors exited */
#define K_CONNECT 8 /* a traced process connected a unix socket: now watched */
#define K_PAIR 9    /* a traced process made a socketpair: its first end is watched */

#define R_TRUNCATED 0x100   /* the chunk is longer than what was recorded */
#define R_READ_FAILED 0x200 /* bpf_probe_read_user failed: bytes are missing */
#define R_MORE 0x400        /* the next record of this thread continues this call */

/* A call moving more than SNAP_LEN bytes is recorded as several pieces, up to
 * MAX_PIECES of them (64 MiB); what is beyond is marked as cut. */
#define MAX_PIECES 1024
#define MAX_IOVECS 64
/* sendmmsg/recvmmsg: the messages of one call that are recorded (UIO_MAXIOV allows
 * 1024; senders batch far fewer), each as its own chunk. */
#define MAX_MMSG 64

#define OP_BUF 1    /* args: fd, buf, count (write, read, sendto, recvfrom) */
#define OP_IOV 2    /* args: fd, iov, vlen (writev, readv) */
#define OP_MSG 3    /* args: fd, msghdr (sendmsg, recvmsg) */
#define OP_ACCEPT 4 /* args: listening fd */
#define OP_DUP 5    /* args: old fd */
#define OP_CONNECT 6
#define OP_SOCKETPAIR 7
#define OP_MMSG 8   /* args: fd, mmsghdr vector, vlen (sendmmsg, recvmmsg) */
#define OP_NODATA 9 /* splice, sendfile: bytes that never pass through user memory */
#define AF_UNIX 1

#define MSG_PEEK 2
#define F_DUPFD 0
#define F_DUPFD_CLOEXEC 1030

#define C_LOST_EVENTS 0
#define C_LOST_BYTES 1
#define C_READ_FAILED 2
#define C_NEXT_COOKIE 3
#define C_COUNTERS 4

struct key {
	__u32 tgid;
	__u32 fd;
};

struct val {
	__u32 cookie;
	__u32 flags;
};

struct call {
	__u64 ptr;
	__u64 count;
	__u32 fd;
	__u32 op;
	__u32 cookie;
	__u32 flags;
	/* filled at exit, while the call's bytes are walked */
	__u64 id;
	__u32 kind;
	__u32 nr;       /* the syscall's number: its exit must be the same call's */
	__u64 iov_ptr;  /* the next iovec to read */
	__u64 iov_left; /* iovecs not read yet */
	__u64 base;     /* the current buffer */
	__u64 len;      /* its length */
	__u64 off;      /* how far into it */
	__u64 left;     /* bytes of the current message not recorded yet */
	__u64 msg_ptr;  /* sendmmsg/recvmmsg: the next struct mmsghdr */
	__u64 msgs_left;
};

struct rec {
	__u64 time_ns; /* CLOCK_MONOTONIC */
	__u32 kind_flags; /* K_* | R_* | F_* << 16 */
	__u32 tgid;
	__u32 tid;
	__s32 fd;
	__u32 cookie;
	__u32 caplen;
	__u64 len; /* the real length; newfd for K_ACCEPT and K_DUP */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, struct val);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct call);
} calls SEC(".maps");

/* The processes that hold watched descriptors (filled by user space): their exit
 * closes those descriptors without any close(2). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} procs SEC(".maps");

/* The processes whose own new unix connections are recorded (`udskit dump -- CMD`):
 * the command, and the processes it forks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} traced SEC(".maps");

/* Where sched_process_fork keeps child_pid: it moved between kernels, so user space
 * reads it from the tracepoint's format file and sets it before loading. */
const volatile __u32 fork_child_pid_offset = 20;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, C_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* user space may resize it before loading */
} events SEC(".maps");

INLINE __u64 wake_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
									       : BPF_RB_NO_WAKEUP;
}

INLINE void count(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);
	if (v)
		__sync_fetch_and_add(v, n);
}

INLINE struct val *watched(__u32 tgid, __u64 fd)
{
	struct key k = {.tgid = tgid, .fd = (__u32)fd};
	if (fd > 0x7fffffff)
		return 0;
	return bpf_map_lookup_elem(&socks, &k);
}

/* On entry: remember the call of a watched descriptor until its exit. */
INLINE int enter_nr(__s32 nr, __u64 fd, __u32 op, __u64 ptr, __u64 count_, __u32 need)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct val *v = watched(id >> 32, fd);
	if (!v || !(v->flags & need))
		return 0;
	struct call c = {.ptr = ptr, .count = count_, .fd = (__u32)fd, .op = op,
			 .cookie = v->cookie, .flags = v->flags, .nr = (__u32)nr};
	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 0;
}

/* Every enter program has its context as `ctx`: the call remembers its number. */
#define enter(...) enter_nr(ctx->nr, __VA_ARGS__)

INLINE void head(struct rec *r, __u32 kind, struct call *c, __u64 id, __u64 len, __u32 cap)
{
	r->time_ns = bpf_ktime_get_ns();
	r->kind_flags = kind | ((c->flags & 0xff) << 16);
	r->tgid = id >> 32;
	r->tid = (__u32)id;
	r->fd = (__s32)c->fd;
	r->cookie = c->cookie;
	r->caplen = cap;
	r->len = len;
}

/* One reservation of a constant size (the ring buffer wants constants), filled with
 * up to `size` bytes from `src`. */
#define EMIT_CLASS(size)                                                                  \
	do {                                                                              \
		struct rec *r = bpf_ringbuf_reserve(&events, sizeof(struct rec) + (size), 0); \
		if (!r)                                                                   \
			goto lost;                                                        \
		__u32 n = cap & (2 * (size) - 1);                                         \
		if (n > (size))                                                           \
			n = (size);                                                       \
		err = bpf_probe_read_user((void *)(r + 1), n, (void *)src);               \
		head(r, kind | flags | (err ? R_READ_FAILED : 0), c, id, len, err ? 0 : n);   \
		bpf_ringbuf_submit(r, wake_flags());                                      \
	} while (0)

/* One chunk: `len` bytes moved, of which the first `avail` are at `src`. Four size
 * classes, so that a 5-byte redis reply does not take 64 KiB of the ring. */
INLINE void emit_data(__u32 kind, struct call *c, __u64 id, __u64 src, __u64 avail, __u64 len,
		       __u32 flags)
{
	__u64 cap = avail < len ? avail : len;
	long err;
	if (cap > SNAP_LEN)
		cap = SNAP_LEN;
	if (cap < len)
		flags |= R_TRUNCATED;
	if (cap <= TINY)
		EMIT_CLASS(TINY);
	else if (cap <= SMALL)
		EMIT_CLASS(SMALL);
	else if (cap <= MEDIUM)
		EMIT_CLASS(MEDIUM);
	else
		EMIT_CLASS(SNAP_LEN);
	if (err)
		count(C_READ_FAILED, 1);
	return;
lost:
	count(C_LOST_EVENTS, 1);
	count(C_LOST_BYTES, len);
}

INLINE void emit_fd(__u32 kind, struct call *c, __u64 id, __u64 newfd)
{
	struct rec *r = bpf_ringbuf_reserve(&events, sizeof(struct rec), 0);
	if (!r) {
		count(C_LOST_EVENTS, 1);
		return;
	}
	head(r, kind, c, id, newfd, 0);
	bpf_ringbuf_submit(r, wake_flags());
}

/* Walking what a call moved: one buffer, or an iovec array, piece by piece. The
 * state lives in the `calls` map value, not on the stack: the verifier then sees
 * unknown numbers and checks the loop body once, instead of following each value. */
struct walker {
	struct call *w;
};

static long walk_step(__u32 index, void *arg)
{
	struct call *w = ((struct walker *)arg)->w;
	if (!w)
		return 1;
	if (w->left == 0) {
		/* The next message of a sendmmsg/recvmmsg call, if there is one. */
		struct mmsghdr_u m;
		if (w->msgs_left == 0)
			return 1;
		if (bpf_probe_read_user(&m, sizeof(m), (void *)w->msg_ptr)) {
			count(C_READ_FAILED, 1);
			return 1;
		}
		w->msg_ptr += sizeof(m);
		w->msgs_left -= 1;
		w->iov_ptr = m.hdr.iov;
		w->iov_left = m.hdr.iovlen;
		w->left = m.len;
		w->off = 0;
		w->len = 0;
		return 0;
	}
	if (w->off >= w->len) {
		struct iovec_u iov;
		if (w->iov_left == 0 || w->iov_left > MAX_IOVECS ||
		    bpf_probe_read_user(&iov, sizeof(iov), (void *)w->iov_ptr)) {
			/* The bytes are not where we can find them: say how many. */
			emit_data(w->kind, w, w->id, 0, 0, w->left, 0);
			count(C_READ_FAILED, 1);
			w->left = 0;
			return 1;
		}
		w->iov_ptr += sizeof(iov);
		w->iov_left -= 1;
		w->base = iov.base;
		w->len = iov.len;
		w->off = 0;
		return 0;
	}
	__u64 n = w->len - w->off;
	if (n > w->left)
		n = w->left;
	if (n > SNAP_LEN)
		n = SNAP_LEN;
	__u32 more = n < w->left ? R_MORE : 0;
	emit_data(w->kind, w, w->id, w->base + w->off, n, n, more);
	w->off += n;
	w->left -= n;
	return 0;
}

/* On exit: record what the call moved. */
INLINE int leave(struct exit_ctx *ctx, __u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);
	if (!c)
		return 0;
	__s64 ret = ctx->ret;
	if (c->nr != (__u32)ctx->nr)
		goto done; /* an entry left from another call (see _resume_in_progress) */
	if (c->op == OP_NODATA) {
		/* The length is known, the bytes went from file to socket (or socket to
		 * pipe) inside the kernel: a chunk marked as cut, with nothing captured. */
		if (ret > 0)
			emit_data(c->kind, c, id, 0, 0, (__u64)ret, 0);
		goto done;
	}
	if (c->op != OP_BUF && c->op != OP_IOV && c->op != OP_MSG && c->op != OP_MMSG)
		goto done;
	if (ret == 0 && kind == K_RECV && c->op != OP_MMSG) {
		emit_fd(K_EOF, c, id, 0);
		goto done;
	}
	if (ret <= 0)
		goto done;
	if (c->op == OP_BUF && ret <= SNAP_LEN) {
		/* The common case, one buffer and one piece: no walk. */
		emit_data(kind, c, id, c->ptr, c->count, (__u64)ret, 0);
		goto done;
	}
	c->id = id;
	c->kind = kind;
	c->left = (__u64)ret;
	c->off = 0;
	c->base = 0;
	c->len = 0;
	c->iov_ptr = 0;
	c->iov_left = 0;
	c->msg_ptr = 0;
	c->msgs_left = 0;
	if (c->op == OP_MMSG) {
		/* ret is the number of messages; each says how many bytes it moved. */
		c->left = 0;
		c->msg_ptr = c->ptr;
		c->msgs_left = (__u64)ret < c->count ? (__u64)ret : c->count;
		if (c->msgs_left > MAX_MMSG)
			c->msgs_left = MAX_MMSG;
	} else if (c->op == OP_BUF) {
		c->base = c->ptr;
		c->len = c->count;
	} else if (c->op == OP_IOV) {
		c->iov_ptr = c->ptr;
		c->iov_left = c->count;
	} else {
		struct msghdr_u m;
		if (bpf_probe_read_user(&m, sizeof(m), (void *)c->ptr) == 0) {
			c->iov_ptr = m.iov;
			c->iov_left = m.iovlen;
		}
	}
	struct walker walker = {.w = c};
	bpf_loop(MAX_PIECES + MAX_IOVECS + 2 * MAX_MMSG, walk_step, &walker, 0);
	if (c->left) /* more than MAX_PIECES pieces: the rest is marked as cut */
		emit_data(kind, c, id, 0, 0, c->left, 0);
done:
	bpf_map_delete_elem(&calls, &id);
	return 0;
}

#define ARG(i) (ctx->args[i])

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct enter_ctx *ctx) { return enter(ARG(0), OP_BUF, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct enter_ctx *ctx) { return enter(ARG(0), OP_BUF, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct enter_ctx *ctx) { return enter(ARG(0), OP_IOV, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct enter_ctx *ctx) { return enter(ARG(0), OP_MSG, ARG(1), 0, F_RECORD); }

SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct enter_ctx *ctx) { return enter(ARG(0), OP_BUF, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct enter_ctx *ctx)
{
	if (ARG(3) & MSG_PEEK) /* peeked bytes are read again later */
		return 0;
	return enter(ARG(0), OP_BUF, ARG(1), ARG(2), F_RECORD);
}
SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct enter_ctx *ctx) { return enter(ARG(0), OP_IOV, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct enter_ctx *ctx)
{
	if (ARG(2) & MSG_PEEK)
		return 0;
	return enter(ARG(0), OP_MSG, ARG(1), 0, F_RECORD);
}

SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int enter_sendmmsg(struct enter_ctx *ctx) { return enter(ARG(0), OP_MMSG, ARG(1), ARG(2), F_RECORD); }
SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int enter_recvmmsg(struct enter_ctx *ctx)
{
	if (ARG(3) & MSG_PEEK)
		return 0;
	return enter(ARG(0), OP_MMSG, ARG(1), ARG(2), F_RECORD);
}

/* splice(2) and sendfile(2): which end is the watched socket says the direction. */
INLINE int enter_nodata(__s32 nr, __u64 fd, __u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct val *v = watched(id >> 32, fd);
	if (!v || !(v->flags & F_RECORD))
		return 0;
	struct call c = {.fd = (__u32)fd, .op = OP_NODATA, .cookie = v->cookie,
			 .flags = v->flags, .kind = kind, .nr = (__u32)nr};
	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 1;
}

SEC("tracepoint/syscalls/sys_enter_splice")
int enter_splice(struct enter_ctx *ctx)
{
	if (!enter_nodata(ctx->nr, ARG(2), K_SEND)) /* fd_out */
		enter_nodata(ctx->nr, ARG(0), K_RECV); /* fd_in */
	return 0;
}
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int enter_sendfile(struct enter_ctx *ctx) { enter_nodata(ctx->nr, ARG(0), K_SEND); return 0; }

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int exit_sendmmsg(struct exit_ctx *ctx) { return leave(ctx, K_SEND); }
SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int exit_recvmmsg(struct exit_ctx *ctx) { return leave(ctx, K_RECV); }
SEC("tracepoint/syscalls/sys_exit_splice")
int exit_splice(struct exit_ctx *ctx) { return leave(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_sendfile64")
int exit_sendfile(struct exit_ctx *ctx) { return leave(ctx, 0); }

SEC("tracepoint/syscalls/sys_exit_write")
int exit_write(struct exit_ctx *ctx) { return leave(ctx, K_SEND); }
SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct exit_ctx *ctx) { return leave(ctx, K_SEND); }
SEC("tracepoint/syscalls/sys_exit_writev")
int exit_writev(struct exit_ctx *ctx) { return leave(ctx, K_SEND); }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct exit_ctx *ctx) { return leave(ctx, K_SEND); }
SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct exit_ctx *ctx) { return leave(ctx, K_RECV); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct exit_ctx *ctx) { return leave(ctx, K_RECV); }
SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct exit_ctx *ctx) { return leave(ctx, K_RECV); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct exit_ctx *ctx) { return leave(ctx, K_RECV); }

/* accept(2) on a watched listener: watch the new descriptor at once, as the server's
 * end, under a fresh cookie, and tell user space. */
SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct enter_ctx *ctx) { return enter(ARG(0), OP_ACCEPT, 0, 0, F_LISTENER); }
SEC("tracepoint/syscalls/sys_enter_accept4")
int enter_accept4(struct enter_ctx *ctx) { return enter(ARG(0), OP_ACCEPT, 0, 0, F_LISTENER); }

/* Data of K_ACCEPT records: who connected, read here, at the accept's exit, while
 * the descriptor surely is the accepted socket. Read later in user space through
 * the server's descriptor, it could name the NEXT client: a short-lived one closes,
 * the server closes its end, and the next accept reuses the number. */
struct peer_info {
	__u32 pid; /* 0: the kernel holds no pid (or it could not be read) */
	__u32 uid; /* the client's effective ids when it connected, as SO_PEERCRED */
	__u32 gid;
	__u16 type; /* SOCK_STREAM, SOCK_SEQPACKET */
	__u16 ok;   /* 1 when uid, gid and type were read */
	char comm[16]; /* its command name, if it still runs ("" if not) */
};

INLINE void peer_of(__u32 fd, struct peer_info *out)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = 0;
	struct fdtable *fdt = 0;
	struct file **array = 0;
	struct file *file = 0;
	struct socket *sock = 0;
	struct sock *sk = 0;
	const struct cred *cred = 0;
	struct pid *pid = 0;
	unsigned int max_fds = 0;
	__builtin_memset(out, 0, sizeof(*out));
	if (KREAD(files, task->files) || !files || KREAD(fdt, files->fdt) || !fdt ||
	    KREAD(max_fds, fdt->max_fds) || fd >= max_fds || KREAD(array, fdt->fd) || !array ||
	    bpf_probe_read_kernel(&file, sizeof(file), array + fd) || !file ||
	    KREAD(sock, file->private_data) || !sock || KREAD(sk, sock->sk) || !sk ||
	    KREAD(cred, sk->sk_peer_cred) || !cred || KREAD(out->uid, cred->euid.val) ||
	    KREAD(out->gid, cred->egid.val) || KREAD(out->type, sock->type))
		return;
	out->ok = 1;
	if (KREAD(pid, sk->sk_peer_pid) || !pid || KREAD(out->pid, pid->numbers[0].nr))
		return;
	/* The thread group's leader, from the pid's list of tasks: its name now, read
	 * here because a short-lived client is gone before user space could look. */
	struct hlist_node *node = 0;
	if (KREAD(node, pid->tasks[PIDTYPE_TGID].first) || !node)
		return;
	__u32 links = __builtin_preserve_field_info(((struct task_struct *)0)->pid_links,
						    BPF_FIELD_BYTE_OFFSET);
	struct task_struct *leader =
		(struct task_struct *)((char *)node - links - PIDTYPE_TGID * sizeof(struct hlist_node));
	KREAD(out->comm, leader->comm);
}

INLINE int accepted(struct exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);
	if (!c)
		return 0;
	struct call copy = *c;
	bpf_map_delete_elem(&calls, &id);
	if (ctx->ret < 0 || copy.op != OP_ACCEPT || copy.nr != (__u32)ctx->nr)
		return 0;
	__u32 which = C_NEXT_COOKIE;
	__u64 *seq = bpf_map_lookup_elem(&counters, &which);
	if (!seq)
		return 0;
	struct key k = {.tgid = id >> 32, .fd = (__u32)ctx->ret};
	struct val v = {.cookie = 0x80000000u | (__u32)__sync_fetch_and_add(seq, 1),
			.flags = F_SERVER | F_RECORD};
	bpf_map_update_elem(&socks, &k, &v, BPF_ANY);
	copy.cookie = v.cookie;
	copy.flags = v.flags;
	struct rec *r = bpf_ringbuf_reserve(&events, sizeof(struct rec) + sizeof(struct peer_info), 0);
	if (!r) {
		count(C_LOST_EVENTS, 1);
		return 0;
	}
	peer_of((__u32)ctx->ret, (struct peer_info *)(r + 1));
	head(r, K_ACCEPT, &copy, id, (__u64)ctx->ret, sizeof(struct peer_info));
	bpf_ringbuf_submit(r, wake_flags());
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct exit_ctx *ctx) { return accepted(ctx); }
SEC("tracepoint/syscalls/sys_exit_accept4")
int exit_accept4(struct exit_ctx *ctx) { return accepted(ctx); }

/* dup(2), dup2, dup3, fcntl(F_DUPFD): the copy is watched like the original. */
SEC("tracepoint/syscalls/sys_enter_dup")
int enter_dup(struct enter_ctx *ctx) { return enter(ARG(0), OP_DUP, 0, 0, F_RECORD | F_LISTENER); }
SEC("tracepoint/syscalls/sys_enter_dup2")
int enter_dup2(struct enter_ctx *ctx) { return enter(ARG(0), OP_DUP, 0, 0, F_RECORD | F_LISTENER); }
SEC("tracepoint/syscalls/sys_enter_dup3")
int enter_dup3(struct enter_ctx *ctx) { return enter(ARG(0), OP_DUP, 0, 0, F_RECORD | F_LISTENER); }
SEC("tracepoint/syscalls/sys_enter_fcntl")
int enter_fcntl(struct enter_ctx *ctx)
{
	if (ARG(1) != F_DUPFD && ARG(1) != F_DUPFD_CLOEXEC)
		return 0;
	return enter(ARG(0), OP_DUP, 0, 0, F_RECORD | F_LISTENER);
}

INLINE int duplicated(struct exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);
	if (!c)
		return 0;
	struct call copy = *c;
	bpf_map_delete_elem(&calls, &id);
	if (ctx->ret < 0 || copy.op != OP_DUP || (__u64)ctx->ret == copy.fd)
		return 0;
	struct key k = {.tgid = id >> 32, .fd = (__u32)ctx->ret};
	struct val v = {.cookie = copy.cookie, .flags = copy.flags};
	bpf_map_update_elem(&socks, &k, &v, BPF_ANY);
	emit_fd(K_DUP, &copy, id, (__u64)ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_dup")
int exit_dup(struct exit_ctx *ctx) { return duplicated(ctx); }
SEC("tracepoint/syscalls/sys_exit_dup2")
int exit_dup2(struct exit_ctx *ctx) { return duplicated(ctx); }
SEC("tracepoint/syscalls/sys_exit_dup3")
int exit_dup3(struct exit_ctx *ctx) { return duplicated(ctx); }
SEC("tracepoint/syscalls/sys_exit_fcntl")
int exit_fcntl(struct exit_ctx *ctx) { return duplicated(ctx); }

/* close(2) of a watched descriptor: forget it (the number will be reused). */
SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct key k = {.tgid = id >> 32, .fd = (__u32)ARG(0)};
	struct val *v = watched(k.tgid, ARG(0));
	if (!v)
		return 0;
	struct call c = {.fd = k.fd, .cookie = v->cookie, .flags = v->flags};
	bpf_map_delete_elem(&socks, &k);
	emit_fd(K_CLOSE, &c, id, 0);
	return 0;
}

/* A traced process connects a unix socket, or makes a socketpair: watch the new
 * descriptor as the client's end, under a fresh cookie. */
INLINE __u32 new_cookie(void)
{
	__u32 which = C_NEXT_COOKIE;
	__u64 *seq = bpf_map_lookup_elem(&counters, &which);
	return seq ? 0x80000000u | (__u32)__sync_fetch_and_add(seq, 1) : 0;
}

/* Data of K_CONNECT and K_PAIR records. */
struct made_info {
	char comm[16];
	__u64 uid_gid;
	__u32 addrlen;
	__u32 pad;
	char addr[112]; /* struct sockaddr_un as connect(2) was given it */
};

INLINE int traced_now(__u64 id)
{
	__u32 tgid = id >> 32;
	return bpf_map_lookup_elem(&traced, &tgid) != 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced_now(id))
		return 0;
	unsigned short family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), (void *)ARG(1)) || family != AF_UNIX)
		return 0;
	struct call c = {.fd = (__u32)ARG(0), .op = OP_CONNECT, .ptr = ARG(1), .count = ARG(2)};
	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_socketpair")
int enter_socketpair(struct enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced_now(id) || ARG(0) != AF_UNIX)
		return 0;
	struct call c = {.ptr = ARG(3), .op = OP_SOCKETPAIR};
	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 0;
}

INLINE int made(struct exit_ctx *ctx, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *found = bpf_map_lookup_elem(&calls, &id);
	if (!found)
		return 0;
	struct call c = *found;
	bpf_map_delete_elem(&calls, &id);
	if (c.op != op || ctx->ret != 0)
		return 0;
	if (op == OP_SOCKETPAIR) {
		int sv[2] = {-1, -1};
		if (bpf_probe_read_user(sv, sizeof(sv), (void *)c.ptr) || sv[0] < 0)
			return 0;
		c.fd = (__u32)sv[0];
	}
	struct key k = {.tgid = id >> 32, .fd = c.fd};
	struct val v = {.cookie = new_cookie(), .flags = F_RECORD};
	bpf_map_update_elem(&socks, &k, &v, BPF_ANY);
	c.cookie = v.cookie;
	c.flags = v.flags;
	/* Who and to where, now: the process may be gone before user space looks. */
	struct rec *r = bpf_ringbuf_reserve(&events, sizeof(struct rec) + sizeof(struct made_info), 0);
	if (!r) {
		count(C_LOST_EVENTS, 1);
		return 0;
	}
	struct made_info *info = (void *)(r + 1);
	__builtin_memset(info, 0, sizeof(*info));
	bpf_get_current_comm(info->comm, sizeof(info->comm));
	info->uid_gid = bpf_get_current_uid_gid();
	if (op == OP_CONNECT) {
		__u32 n = c.count > sizeof(info->addr) ? sizeof(info->addr) : (__u32)c.count;
		if (bpf_probe_read_user(info->addr, n & 127, (void *)c.ptr) == 0)
			info->addrlen = n & 127;
	}
	head(r, op == OP_CONNECT ? K_CONNECT : K_PAIR, &c, id, c.fd, sizeof(*info));
	bpf_ringbuf_submit(r, wake_flags());
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct exit_ctx *ctx) { return made(ctx, OP_CONNECT); }
SEC("tracepoint/syscalls/sys_exit_socketpair")
int exit_socketpair(struct exit_ctx *ctx) { return made(ctx, OP_SOCKETPAIR); }

/* A traced process forks: the child is traced too (and watched for its exit). */
SEC("tracepoint/sched/sched_process_fork")
int process_fork(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!traced_now(id))
		return 0;
	__s32 child = 0;
	__u32 off = fork_child_pid_offset & 0xff;
	if (bpf_probe_read_kernel(&child, sizeof(child), (char *)ctx + off) || child <= 0)
		return 0;
	__u32 key = (__u32)child, one = 1;
	bpf_map_update_elem(&traced, &key, &one, BPF_ANY);
	bpf_map_update_elem(&procs, &key, &one, BPF_ANY);
	return 0;
}

/* The end of a process (its main thread) that held watched descriptors. */
SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if ((__u32)id != tgid || !bpf_map_lookup_elem(&procs, &tgid))
		return 0;
	bpf_map_delete_elem(&procs, &tgid);
	struct call c = {.fd = 0};
	emit_fd(K_EXIT, &c, id, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
