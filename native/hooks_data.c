/* hooks_data.c: read, readv, recv, recvfrom, recvmsg, recvmmsg, write,
 * writev, send, sendto, sendmsg, sendmmsg, sendfile, the fortified __*_chk
 * variants, and eventfd_read/eventfd_write.
 *
 * The rule is the kernel's blocking behaviour, minus blocking the thread:
 *  - a read returns as soon as anything is there (with MSG_WAITALL on a
 *    stream socket, once everything asked for is there, or EOF or an error
 *    after a partial transfer returns the partial count);
 *  - a write to a stream socket transfers everything, or returns the count
 *    transferred before an error, a signal or SO_SNDTIMEO stopped it, and
 *    fails with that error only when nothing was transferred;
 *  - SO_RCVTIMEO / SO_SNDTIMEO give EAGAIN once the timeout has passed,
 *    never before; without them there is no timeout;
 *  - a signal for the main coroutine gives EINTR (or the partial count), as
 *    the blocking call would, and CPython retries after running handlers.
 * Pipes and ttys we did not make non-blocking are waited on first, then
 * the real call is made; writes of more than PIPE_BUF bytes to a pipe go in
 * PIPE_BUF pieces so no piece can block the thread. */
#include <limits.h>
#include <sys/sendfile.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "rawcall.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)

#define SMALL_IOV 16

/* ---- iovec windows: the part of a caller's buffers not yet done ------- */

typedef struct iovwin {
  struct iovec *v;    /* the first buffer not yet done */
  int n;              /* buffers from v on */
  struct iovec *base; /* the copy: small, or malloc'd */
  struct iovec small[SMALL_IOV];
} iovwin_t;


static int iovwin_init(iovwin_t *w, const struct iovec *iov, int n) {
  w->base = n <= SMALL_IOV ? w->small : malloc((size_t) n * sizeof(*iov));
  if (w->base == NULL)
    return -ENOMEM;
  w->v = w->base;
  memcpy(w->v, iov, (size_t) n * sizeof(*iov));
  w->n = n;
  return 0;
}


static void iovwin_free(iovwin_t *w) {
  if (w->base != w->small)
    free(w->base);
}


static void iovwin_advance(iovwin_t *w, size_t done) {
  while (w->n > 0 && done >= w->v->iov_len) {
    done -= w->v->iov_len;
    w->v++;
    w->n--;
  }
  if (w->n > 0) {
    w->v->iov_base = (char *) w->v->iov_base + done;
    w->v->iov_len -= done;
  }
}


static size_t iov_total(const struct iovec *iov, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += iov[i].iov_len;
  return total;
}


static int is_stream(int fd) {
  return (ip__fd_state(fd) & IP_FD_STREAM) != 0;
}


/* Whether a blocking call on a pipe, tty or other pollable fd would return
 * at once (an error such as EBADF on the wrong end of a pipe, EINVAL, or 0
 * for an empty transfer): then the real call is made before any wait for
 * readiness, which would never come for the wrong end of a pipe (CPython's
 * test_signal test_wakeup_write_error hung on that).  Socket calls need no
 * check: they are always tried first, with MSG_DONTWAIT.  st: the fd's
 * state bits from ip__io_lookup (0 when unarmed). */
static int refused_now(uint32_t st, int events, size_t len) {
  return (st & IP_FD_KNOWN) && (st & IP_FD_KIND_MASK) != IP_FD_SOCKET &&
         ip__refused_at_once(st, events, len);
}


/* recv, send and the other socket-only calls on an open fd that is no
 * socket fail with ENOTSOCK at once; waiting for readiness first would
 * hang on an empty pipe. */
static int not_a_socket_state(uint32_t st) {
  return (st & IP_FD_KNOWN) && (st & IP_FD_KIND_MASK) != IP_FD_SOCKET;
}


/* fd's state bits, or 0 before any scheduler exists (then every check
 * above says no and the hook makes the real call). */
static uint32_t armed_state(int fd) {
  return ip__hooks_armed() ? ip__fd_state(fd) : 0;
}


static int not_a_socket(int fd) {
  return not_a_socket_state(armed_state(fd));
}

/* A call's result with errno as the caller had it when the call succeeds
 * (n >= 0, a partial count included): libc's wrappers set errno only on
 * failure, while the attempts and waits of a hooked call set it on the way
 * (EAGAIN before a park), and the coroutines of one OS thread share it. */
static ssize_t keep_errno_on_success(ssize_t n, int entry_errno) {
  if (n >= 0)
    errno = entry_errno;
  return n;
}

/* ---- reads ------------------------------------------------------------ */

typedef struct rcall {
  int call; /* which function */
  void *buf;
  size_t len;
  int flags;
  struct sockaddr *from;
  socklen_t *fromlen;
  const struct iovec *iov;
  int iovcnt;
  struct msghdr *msg;
} rcall_t;

enum { R_READ, R_READV, R_RECV, R_RECVFROM, R_RECVMSG };


/* Each system call an attempt makes, through libc's wrapper (a
 * cancellation point) or, when direct, made directly (rawcall.h): one
 * mapping of calls to system calls serves both ways. */
static ssize_t read_via(int direct, int fd, void *buf, size_t len) {
  return direct ? IP_RAWCALL(SYS_read, fd, buf, len, 0, 0, 0)
                : ip__real.read(fd, buf, len);
}


static ssize_t readv_via(int direct, int fd, const struct iovec *iov,
                         int iovcnt) {
  return direct ? IP_RAWCALL(SYS_readv, fd, iov, iovcnt, 0, 0, 0)
                : ip__real.readv(fd, iov, iovcnt);
}


static ssize_t recvfrom_via(int direct, int fd, void *buf, size_t len,
                            int flags, struct sockaddr *from,
                            socklen_t *fromlen) {
  return direct ? IP_RAWCALL(SYS_recvfrom, fd, buf, len, flags, from, fromlen)
                : ip__real.recvfrom(fd, buf, len, flags, from, fromlen);
}


static ssize_t recvmsg_via(int direct, int fd, struct msghdr *msg,
                           int flags) {
  return direct ? IP_RAWCALL(SYS_recvmsg, fd, msg, flags, 0, 0, 0)
                : ip__real.recvmsg(fd, msg, flags);
}


/* A msghdr carrying just iov: readv/writev made as recvmsg/sendmsg, which
 * take MSG_DONTWAIT. */
static void iov_msghdr(struct msghdr *m, const struct iovec *iov,
                       int iovcnt) {
  memset(m, 0, sizeof(*m));
  m->msg_iov = (struct iovec *) iov;
  m->msg_iovlen = (size_t) iovcnt;
}


static ssize_t read_attempt(void *ctx, int fd, int dontwait, int direct) {
  rcall_t *c = ctx;
  struct msghdr m;
  switch (c->call) {
  case R_READ:
    return dontwait ? recvfrom_via(direct, fd, c->buf, c->len, dontwait,
                                   NULL, NULL)
                    : read_via(direct, fd, c->buf, c->len);
  case R_READV:
    if (!dontwait)
      return readv_via(direct, fd, c->iov, c->iovcnt);
    iov_msghdr(&m, c->iov, c->iovcnt);
    return recvmsg_via(direct, fd, &m, dontwait);
  case R_RECV:
    return recvfrom_via(direct, fd, c->buf, c->len, c->flags | dontwait,
                        NULL, NULL);
  case R_RECVFROM:
    return recvfrom_via(direct, fd, c->buf, c->len, c->flags | dontwait,
                        c->from, c->fromlen);
  default:
    return recvmsg_via(direct, fd, c->msg, c->flags | dontwait);
  }
}


/* Continues a blocking stream transfer that has done `done` of the `total`
 * bytes of iov; defined with the writes. */
static ssize_t transfer_rest(int fd, int events, const struct iovec *iov,
                             int iovcnt, size_t done, int flags,
                             int64_t deadline);


/* MSG_WAITALL on a stream socket: keep reading the rest of the buffers
 * until they are full, EOF, or an error (then the partial count). */
static ssize_t read_rest(rcall_t *c, int fd, ssize_t first, int64_t deadline) {
  struct iovec one = {c->buf, c->len};
  const struct iovec *iov = c->call == R_RECVMSG ? c->msg->msg_iov : &one;
  int iovcnt = c->call == R_RECVMSG ? (int) c->msg->msg_iovlen : 1;
  if (first <= 0 || (size_t) first >= iov_total(iov, iovcnt))
    return first;
  return transfer_rest(fd, INTERPOSE_READABLE, iov, iovcnt, (size_t) first,
                       c->flags & ~MSG_WAITALL, deadline);
}


static ssize_t read_call(rcall_t *c, int fd) {
  ip_io_fd_t f;
  ip__io_lookup(fd, &f);
  int plain_read = c->call == R_READ || c->call == R_READV;
  if (plain_read ? refused_now(f.st, INTERPOSE_READABLE,
                               c->call == R_READ
                                   ? c->len
                                   : iov_total(c->iov, c->iovcnt))
                 : not_a_socket_state(f.st))
    return read_attempt(c, fd, 0, 0);
  if (!(c->flags & MSG_WAITALL)) {
    /* A plain read into one buffer may use the drained-socket hint; the
     * socket timeout starts inside. */
    int plain = c->flags == 0 && (c->call == R_READ || c->call == R_RECV ||
                                  c->call == R_RECVFROM);
    ip__io_resolve(&f);
    if (plain)
      return ip__read_fd_until(&f, fd, read_attempt, c, IP_SOCKET_TIMEOUT,
                               c->len);
    return ip__io_fd_until(&f, fd, INTERPOSE_READABLE, read_attempt, c,
                           IP_SOCKET_TIMEOUT);
  }
  int64_t deadline = ip__io_deadline(fd, INTERPOSE_READABLE);
  ssize_t n = ip__io_until(fd, INTERPOSE_READABLE, read_attempt, c, deadline);
  if ((c->flags & MSG_WAITALL) && c->call != R_READ && c->call != R_READV &&
      !(c->flags & MSG_DONTWAIT) && is_stream(fd) &&
      ip__io_mode_of(fd) != IP_MODE_REAL)
    return read_rest(c, fd, n, deadline);
  return n;
}


static ssize_t do_read(rcall_t *c, int fd) {
  int entry_errno = errno;
  return keep_errno_on_success(read_call(c, fd), entry_errno);
}


ssize_t read(int fd, void *buf, size_t len) {
  rcall_t c = {.call = R_READ, .buf = buf, .len = len};
  return do_read(&c, fd);
}


ssize_t readv(int fd, const struct iovec *iov, int iovcnt) {
  rcall_t c = {.call = R_READV, .iov = iov, .iovcnt = iovcnt};
  return do_read(&c, fd);
}


ssize_t recv(int fd, void *buf, size_t len, int flags) {
  if (flags & MSG_DONTWAIT)
    return ip__real.recv(fd, buf, len, flags);
  rcall_t c = {.call = R_RECV, .buf = buf, .len = len, .flags = flags};
  return do_read(&c, fd);
}


ssize_t recvfrom(int fd, void *buf, size_t len, int flags,
                 struct sockaddr *from, socklen_t *fromlen) {
  if (flags & MSG_DONTWAIT)
    return ip__real.recvfrom(fd, buf, len, flags, from, fromlen);
  rcall_t c = {.call = R_RECVFROM, .buf = buf, .len = len, .flags = flags,
               .from = from, .fromlen = fromlen};
  return do_read(&c, fd);
}


ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  if (flags & MSG_DONTWAIT)
    return ip__real.recvmsg(fd, msg, flags);
  rcall_t c = {.call = R_RECVMSG, .msg = msg, .flags = flags};
  return do_read(&c, fd);
}


ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen) {
  if (len > buflen)
    __chk_fail();
  return read(fd, buf, len);
}


ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags) {
  if (len > buflen)
    __chk_fail();
  return recv(fd, buf, len, flags);
}


ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen,
                       int flags, struct sockaddr *from, socklen_t *fromlen) {
  if (len > buflen)
    __chk_fail();
  return recvfrom(fd, buf, len, flags, from, fromlen);
}

/* ---- writes ----------------------------------------------------------- */

typedef struct wcall {
  int call;
  const void *buf;
  size_t len;
  const struct iovec *iov;
  int iovcnt;
  const struct msghdr *msg;
  int flags;
  const struct sockaddr *to;
  socklen_t tolen;
} wcall_t;

enum { W_WRITE, W_WRITEV, W_SEND, W_SENDTO, W_SENDMSG };


/* As read_via and its kind, for the writes. */
static ssize_t write_via(int direct, int fd, const void *buf, size_t len) {
  return direct ? IP_RAWCALL(SYS_write, fd, buf, len, 0, 0, 0)
                : ip__real.write(fd, buf, len);
}


static ssize_t writev_via(int direct, int fd, const struct iovec *iov,
                          int iovcnt) {
  return direct ? IP_RAWCALL(SYS_writev, fd, iov, iovcnt, 0, 0, 0)
                : ip__real.writev(fd, iov, iovcnt);
}


static ssize_t sendto_via(int direct, int fd, const void *buf, size_t len,
                          int flags, const struct sockaddr *to,
                          socklen_t tolen) {
  return direct ? IP_RAWCALL(SYS_sendto, fd, buf, len, flags, to, tolen)
                : ip__real.sendto(fd, buf, len, flags, to, tolen);
}


static ssize_t sendmsg_via(int direct, int fd, const struct msghdr *msg,
                           int flags) {
  return direct ? IP_RAWCALL(SYS_sendmsg, fd, msg, flags, 0, 0, 0)
                : ip__real.sendmsg(fd, msg, flags);
}


static ssize_t write_attempt(void *ctx, int fd, int dontwait, int direct) {
  wcall_t *c = ctx;
  struct msghdr m;
  switch (c->call) {
  case W_WRITE:
    return dontwait ? sendto_via(direct, fd, c->buf, c->len, dontwait, NULL,
                                 0)
                    : write_via(direct, fd, c->buf, c->len);
  case W_WRITEV:
    if (!dontwait)
      return writev_via(direct, fd, c->iov, c->iovcnt);
    iov_msghdr(&m, c->iov, c->iovcnt);
    return sendmsg_via(direct, fd, &m, dontwait);
  case W_SEND:
    return sendto_via(direct, fd, c->buf, c->len, c->flags | dontwait, NULL,
                      0);
  case W_SENDTO:
    return sendto_via(direct, fd, c->buf, c->len, c->flags | dontwait, c->to,
                      c->tolen);
  default:
    return sendmsg_via(direct, fd, c->msg, c->flags | dontwait);
  }
}


static void write_buffers(const wcall_t *c, struct iovec *one,
                          const struct iovec **iov, int *iovcnt) {
  one->iov_base = (void *) c->buf;
  one->iov_len = c->len;
  *iov = one;
  *iovcnt = 1;
  if (c->call == W_WRITEV) {
    *iov = c->iov;
    *iovcnt = c->iovcnt;
  } else if (c->call == W_SENDMSG) {
    *iov = c->msg->msg_iov;
    *iovcnt = (int) c->msg->msg_iovlen;
  }
}


static ssize_t transfer_rest(int fd, int events, const struct iovec *iov,
                             int iovcnt, size_t done, int flags,
                             int64_t deadline) {
  size_t total = iov_total(iov, iovcnt);
  iovwin_t w;
  if (iovwin_init(&w, iov, iovcnt) < 0)
    return (ssize_t) done;
  iovwin_advance(&w, done);
  while (done < total) {
    struct msghdr m;
    iov_msghdr(&m, w.v, w.n);
    rcall_t rc = {.call = R_RECVMSG, .msg = &m, .flags = flags};
    wcall_t wc = {.call = W_SENDMSG, .msg = &m, .flags = flags};
    int saved = errno; /* a partial count hides the error that ended it */
    ssize_t n = events == INTERPOSE_READABLE
                    ? ip__io_until(fd, events, read_attempt, &rc, deadline)
                    : ip__io_until(fd, events, write_attempt, &wc, deadline);
    if (n <= 0) {
      errno = saved;
      break;
    }
    done += (size_t) n;
    iovwin_advance(&w, (size_t) n);
  }
  iovwin_free(&w);
  return (ssize_t) done;
}


/* A write of more than PIPE_BUF bytes to a pipe that is blocking in the
 * kernel: wait until writable, then write at most PIPE_BUF bytes, which a
 * writable pipe always takes without blocking. */
static ssize_t write_pipe_pieces(wcall_t *c, ip_sched_t *s, int fd) {
  struct iovec one;
  const struct iovec *iov;
  int iovcnt;
  write_buffers(c, &one, &iov, &iovcnt);
  size_t done = 0;
  for (int i = 0; i < iovcnt; i++) {
    size_t off = 0;
    while (off < iov[i].iov_len) {
      int r = ip__block_on(s, fd, INTERPOSE_WRITABLE, -1, 1);
      if (r < 0)
        return done ? (ssize_t) done : ip__fail(r);
      size_t piece = iov[i].iov_len - off;
      if (piece > PIPE_BUF)
        piece = PIPE_BUF;
      ssize_t n = ip__real.write(fd, (char *) iov[i].iov_base + off, piece);
      if (n < 0)
        return done ? (ssize_t) done : -1;
      off += (size_t) n;
      done += (size_t) n;
    }
  }
  return (ssize_t) done;
}


static ssize_t write_call(wcall_t *c, int fd) {
  ip_io_fd_t f;
  ip__io_lookup(fd, &f);
  int plain_write = c->call == W_WRITE || c->call == W_WRITEV;
  if (plain_write ? refused_now(f.st, INTERPOSE_WRITABLE,
                                c->call == W_WRITE
                                    ? c->len
                                    : iov_total(c->iov, c->iovcnt))
                  : not_a_socket_state(f.st))
    return write_attempt(c, fd, 0, 0);
  ip_mode_t mode = ip__io_resolve(&f);
  if (mode == IP_MODE_READY_FIRST) {
    struct iovec one;
    const struct iovec *iov;
    int iovcnt;
    write_buffers(c, &one, &iov, &iovcnt);
    int pipe = (f.st & IP_FD_KIND_MASK) == IP_FD_PIPE;
    if (pipe && (c->call == W_WRITE || c->call == W_WRITEV) &&
        iov_total(iov, iovcnt) > PIPE_BUF)
      return write_pipe_pieces(c, f.s, fd);
  }
  int64_t deadline = ip__io_fd_deadline(&f, INTERPOSE_WRITABLE);
  ssize_t n = ip__io_fd_until(&f, fd, INTERPOSE_WRITABLE, write_attempt, c,
                              deadline);
  if (n <= 0 || mode == IP_MODE_REAL)
    return n;
  struct iovec one;
  const struct iovec *iov;
  int iovcnt;
  write_buffers(c, &one, &iov, &iovcnt);
  size_t total = iov_total(iov, iovcnt);
  if ((size_t) n >= total || !is_stream(fd)) /* the common case tests first */
    return n;
  /* Ancillary data and the address went with the first part. */
  int flags = c->call == W_WRITE || c->call == W_WRITEV ? 0 : c->flags;
  return transfer_rest(fd, INTERPOSE_WRITABLE, iov, iovcnt, (size_t) n, flags,
                       deadline);
}


static ssize_t do_write(wcall_t *c, int fd) {
  int entry_errno = errno;
  return keep_errno_on_success(write_call(c, fd), entry_errno);
}


ssize_t write(int fd, const void *buf, size_t len) {
  wcall_t c = {.call = W_WRITE, .buf = buf, .len = len};
  return do_write(&c, fd);
}


ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
  wcall_t c = {.call = W_WRITEV, .iov = iov, .iovcnt = iovcnt};
  return do_write(&c, fd);
}


ssize_t send(int fd, const void *buf, size_t len, int flags) {
  if (flags & MSG_DONTWAIT)
    return ip__real.send(fd, buf, len, flags);
  wcall_t c = {.call = W_SEND, .buf = buf, .len = len, .flags = flags};
  return do_write(&c, fd);
}


ssize_t sendto(int fd, const void *buf, size_t len, int flags,
               const struct sockaddr *to, socklen_t tolen) {
  if (flags & MSG_DONTWAIT)
    return ip__real.sendto(fd, buf, len, flags, to, tolen);
  wcall_t c = {.call = W_SENDTO, .buf = buf, .len = len, .flags = flags,
               .to = to, .tolen = tolen};
  return do_write(&c, fd);
}


ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  if (flags & MSG_DONTWAIT)
    return ip__real.sendmsg(fd, msg, flags);
  wcall_t c = {.call = W_SENDMSG, .msg = msg, .flags = flags};
  return do_write(&c, fd);
}

/* ---- calls glibc implements with internal reads and writes ------------- */

/* glibc's eventfd_read/eventfd_write call its internal read/write, which no
 * hook sees: go through the hooked ones (os.eventfd_read uses these). */
int eventfd_read(int fd, eventfd_t *value) {
  return read(fd, value, sizeof(*value)) == sizeof(*value) ? 0 : -1;
}


int eventfd_write(int fd, eventfd_t value) {
  return write(fd, &value, sizeof(value)) == sizeof(value) ? 0 : -1;
}

/* ---- sendfile --------------------------------------------------------- */

/* A blocking sendfile to a stream socket sends count bytes, or stops at the
 * end of the input, an error, a signal or SO_SNDTIMEO (then the partial
 * count).  Both names: CPython, built with _FILE_OFFSET_BITS=64, calls
 * sendfile64. */
static ssize_t sendfile_call(ssize_t (*real)(int, int, off_t *, size_t),
                             int out, int in, off_t *offset, size_t count) {
  ip_sched_t *s;
  ip_mode_t mode = ip__io_mode(out, &s);
  if (mode == IP_MODE_REAL || count == 0 ||
      refused_now(armed_state(out), INTERPOSE_WRITABLE, count) ||
      refused_now(armed_state(in), INTERPOSE_READABLE, count))
    return real(out, in, offset, count);
  int64_t deadline = ip__io_deadline(out, INTERPOSE_WRITABLE);
  size_t done = 0;
  for (;;) {
    if (mode != IP_MODE_RETRY) { /* blocking in the kernel: wait first */
      int r = ip__block_on(s, out, INTERPOSE_WRITABLE, deadline, 1);
      if (r < 0)
        return done ? (ssize_t) done : ip__fail(r);
    }
    ssize_t n = real(out, in, offset, count - done);
    if (n > 0) {
      done += (size_t) n;
      if (done == count || !is_stream(out))
        return (ssize_t) done;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
      return done ? (ssize_t) done : n;
    int r = ip__block_on(s, out, INTERPOSE_WRITABLE, deadline, 0);
    if (r < 0)
      return done ? (ssize_t) done : ip__fail(r);
  }
}


static ssize_t do_sendfile(ssize_t (*real)(int, int, off_t *, size_t),
                           int out, int in, off_t *offset, size_t count) {
  int entry_errno = errno;
  return keep_errno_on_success(sendfile_call(real, out, in, offset, count),
                               entry_errno);
}


ssize_t sendfile(int out, int in, off_t *offset, size_t count) {
  return do_sendfile(ip__real.sendfile, out, in, offset, count);
}


ssize_t sendfile64(int out, int in, off64_t *offset, size_t count) {
  return do_sendfile(ip__real.sendfile64, out, in, offset, count);
}

/* ---- batches of datagrams --------------------------------------------- */

typedef struct mcall {
  struct mmsghdr *vec;
  unsigned vlen;
  int flags;
  struct timespec *timeout;
} mcall_t;


/* recvmmsg and sendmmsg keep libc's wrappers even in a coroutine: they are
 * not on any round trip this library has measured (see rawcall.h). */
static ssize_t recvmmsg_attempt(void *ctx, int fd, int dontwait,
                                int direct IP_UNUSED) {
  mcall_t *c = ctx;
  return ip__real.recvmmsg(fd, c->vec, c->vlen, c->flags | dontwait,
                           c->timeout);
}


static ssize_t sendmmsg_attempt(void *ctx, int fd, int dontwait,
                                int direct IP_UNUSED) {
  mcall_t *c = ctx;
  return ip__real.sendmmsg(fd, c->vec, c->vlen, c->flags | dontwait);
}


/* The blocking recvmmsg waits for the first datagram, then takes what is
 * queued; with MSG_WAITFORONE that is the kernel's rule too.  Without it
 * the kernel would also wait for further datagrams until vlen or the
 * timeout: this returns what is queued once the first arrives, which every
 * caller must handle anyway (the kernel checks its timeout only between
 * datagrams). */
int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
             struct timespec *timeout) {
  if (flags & MSG_DONTWAIT)
    return ip__real.recvmmsg(fd, vec, vlen, flags, timeout);
  mcall_t c = {vec, vlen, flags, NULL};
  if (ip__io_mode_of(fd) == IP_MODE_REAL || not_a_socket(fd))
    return ip__real.recvmmsg(fd, vec, vlen, flags, timeout);
  ssize_t n = ip__io(fd, INTERPOSE_READABLE, recvmmsg_attempt, &c);
  if (n > 0 && (unsigned) n < vlen) {
    int saved = errno;
    int more = ip__real.recvmmsg(fd, vec + n, vlen - (unsigned) n,
                                 flags | MSG_DONTWAIT, NULL);
    n += more > 0 ? more : 0;
    errno = saved;
  }
  return (int) n;
}


int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
  if ((flags & MSG_DONTWAIT) || not_a_socket(fd))
    return ip__real.sendmmsg(fd, vec, vlen, flags);
  unsigned sent = 0;
  while (sent < vlen) {
    mcall_t c = {vec + sent, vlen - sent, flags, NULL};
    ssize_t n = ip__io(fd, INTERPOSE_WRITABLE, sendmmsg_attempt, &c);
    if (n <= 0)
      return sent ? (int) sent : (int) n;
    sent += (unsigned) n;
  }
  return (int) sent;
}

#pragma GCC visibility pop
