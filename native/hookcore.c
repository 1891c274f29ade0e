/* hookcore.c: what every hook shares: deciding whether the caller may park,
 * and waiting for an fd the way a blocking call would.
 *
 * A hook may park only in a coroutine whose hooks are on, on a thread whose
 * scheduler runs, with no thread state attached.  Everywhere else a call on
 * an fd that we made non-blocking behind the user's back must still behave
 * as blocking, so the hook blocks the thread in the real poll() and
 * retries: that covers other threads, processes that never start the
 * runtime, and hooks entered with the GIL held (faulthandler writing to a
 * socket, os.set_blocking), which must never switch. */
#include "internal.h"

atomic_int ip__armed;


ip_sched_t *ip__hook_sched(void) {
  ip_sched_t *s = ip__tls_sched;
  if (s == NULL || s->current == NULL || !s->current->hooks ||
      s->fork_pending)
    return NULL;
  if (ip__py_tstate_attached(s) || ip__gilstate_foreign(s))
    return NULL;
  ip__yield_if_due(s);
  return s;
}


int64_t ip__deadline_after(int64_t timeout_ns) {
  /* A socket timeout of 0 is none (SO_RCVTIMEO's convention). */
  return timeout_ns > 0 ? ip__deadline_of(ip__now_ns(), timeout_ns) : -1;
}


static int poll_events_of(int events) {
  int ev = 0;
  if (events & INTERPOSE_READABLE)
    ev |= POLLIN;
  if (events & INTERPOSE_WRITABLE)
    ev |= POLLOUT;
  return ev;
}


int ip__block_on(ip_sched_t *s, int fd, int events, int64_t deadline_ns,
                 int check_first) {
  int64_t timeout_ns = -1;
  if (deadline_ns >= 0) {
    timeout_ns = deadline_ns - ip__now_ns();
    if (timeout_ns <= 0)
      return -EAGAIN;
  }
  if (s != NULL) {
    int r = ip__fd_wait(s, fd, events, timeout_ns, check_first);
    if (r == INTERPOSE_PARK_TIMEOUT)
      return -EAGAIN;
    return r == -EPERM ? 0 : r; /* EPERM: a regular file, always ready */
  }
  struct pollfd p = {.fd = fd, .events = (short) poll_events_of(events)};
  int n = ip__real.poll(&p, 1, ip__ms_ceil(timeout_ns));
  if (n < 0)
    return -errno;
  if (n == 0)
    return -EAGAIN;
  return (p.revents & POLLNVAL) ? -EBADF : 0;
}


/* Which timeout applies to a socket call waiting for events. */
static int64_t entry_timeout_ns(ip_fd_t *e, int events) {
  if (e == NULL)
    return 0;
  return (events & INTERPOSE_WRITABLE) ? atomic_load(&e->snd_timeout_ns)
                                       : atomic_load(&e->rcv_timeout_ns);
}


static int64_t socket_timeout_ns(int fd, int events) {
  return entry_timeout_ns(ip__fd_entry(fd), events);
}


void ip__io_lookup(int fd, ip_io_fd_t *f) {
  f->s = NULL;
  f->e = NULL;
  f->st = 0;
  f->mode = IP_MODE_REAL;
  if (!ip__hooks_armed())
    return;
  f->e = ip__fd_entry(fd);
  f->st = ip__fd_entry_state(fd, f->e);
}


ip_mode_t ip__io_resolve(ip_io_fd_t *f) {
  uint32_t st = f->st;
  if (!(st & IP_FD_KNOWN) || (st & IP_FD_USER_NB))
    return f->mode = IP_MODE_REAL; /* closed (the call reports it) or
                                      user non-blocking */
  ip_sched_t *s = f->s = ip__hook_sched();
  if (st & IP_FD_OURS_NB)
    return f->mode = IP_MODE_RETRY;
  unsigned kind = st & IP_FD_KIND_MASK;
  if (s == NULL || kind == IP_FD_REG)
    return f->mode = IP_MODE_REAL;
  return f->mode = kind == IP_FD_SOCKET ? IP_MODE_DONTWAIT
                                        : IP_MODE_READY_FIRST;
}


ip_mode_t ip__io_mode(int fd, ip_sched_t **s_out) {
  ip_io_fd_t f;
  ip__io_lookup(fd, &f);
  ip_mode_t mode = ip__io_resolve(&f);
  *s_out = f.s;
  return mode;
}


int64_t ip__io_fd_deadline(const ip_io_fd_t *f, int events) {
  return ip__deadline_after(entry_timeout_ns(f->e, events));
}


ssize_t ip__io(int fd, int events, ip_attempt_fn attempt, void *ctx) {
  return ip__io_until(fd, events, attempt, ctx, IP_SOCKET_TIMEOUT);
}


/* Whether a read may trust rd_drained and park before trying: only when
 * parking cannot end in anything but the edge (no timeout, no deadline, no
 * pending cancellation), so that skipping the call changes no outcome. */
static int drained_read_may_park(ip_sched_t *s, ip_fd_t *e, uint32_t st,
                                 int64_t deadline) {
  if (deadline >= 0 || (st & IP_FD_RD_FINAL))
    return 0;
  if (atomic_load_explicit(&e->rd_drained, memory_order_relaxed) != s)
    return 0;
  ip_coro_t *co = s->current;
  return !atomic_load(&co->cancelled) && (co->deadline_ns < 0 || co->shield);
}


/* want > 0: a plain read of want bytes from a stream socket (see
 * ip__read_fd_until); 0: any other call.  errno as the attempts and waits
 * left it (io_loop restores it on success). */
static ssize_t io_attempts(const ip_io_fd_t *f, int fd, int events,
                           ip_attempt_fn attempt, void *ctx, int64_t deadline,
                           size_t want) {
  ip_sched_t *s = f->s;
  ip_fd_t *e = f->e;
  uint32_t st = f->st;
  ip_mode_t mode = f->mode;
  if (mode == IP_MODE_REAL)
    return attempt(ctx, fd, 0, 0);
  if (mode == IP_MODE_READY_FIRST) {
    int r = ip__block_on(s, fd, events, -1, 1);
    return r < 0 ? ip__fail(r) : attempt(ctx, fd, 0, 0);
  }
  /* Socket calls always carry MSG_DONTWAIT, even on a socket we made
   * non-blocking: its O_NONBLOCK lives in a file description that another
   * process may share and change (see the dup2 hook). */
  int socket = (st & IP_FD_KIND_MASK) == IP_FD_SOCKET;
  int flags = mode == IP_MODE_DONTWAIT || socket ? MSG_DONTWAIT : 0;
  if (deadline == IP_SOCKET_TIMEOUT)
    deadline = ip__deadline_after(entry_timeout_ns(e, events));
  int hint = want > 0 && s != NULL && mode == IP_MODE_RETRY &&
             (st & IP_FD_STREAM);
  if (hint && drained_read_may_park(s, e, st, deadline)) {
    int r = ip__block_on(s, fd, events, -1, 0);
    if (r < 0)
      return ip__fail(r);
  }
  /* In a coroutine the attempt is a direct system call (rawcall.h): it
   * cannot block, and the carrier thread's cancellation point is the hub. */
  int direct = s != NULL;
  for (;;) {
    ssize_t n = attempt(ctx, fd, flags, direct);
    if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      if (hint && n > 0 && (size_t) n < want)
        atomic_store_explicit(&e->rd_drained, s, memory_order_relaxed);
      return n;
    }
    int r = ip__block_on(s, fd, events, deadline, 0);
    if (r < 0)
      return ip__fail(r);
  }
}


/* io_attempts, with errno as the caller had it when the call succeeds:
 * libc's wrapper sets errno only on failure, but an attempt that met
 * EAGAIN before the one that succeeded, or a wait, leaves its own (a
 * successful recv after a park left EAGAIN, found by tests/test_rawcall.py
 * on both architectures). */
static ssize_t io_loop(const ip_io_fd_t *f, int fd, int events,
                       ip_attempt_fn attempt, void *ctx, int64_t deadline,
                       size_t want) {
  int entry_errno = errno;
  ssize_t n = io_attempts(f, fd, events, attempt, ctx, deadline, want);
  if (n >= 0)
    errno = entry_errno;
  return n;
}


ssize_t ip__io_until(int fd, int events, ip_attempt_fn attempt, void *ctx,
                     int64_t deadline) {
  ip_io_fd_t f;
  ip__io_lookup(fd, &f);
  ip__io_resolve(&f);
  return io_loop(&f, fd, events, attempt, ctx, deadline, 0);
}


ssize_t ip__io_fd_until(const ip_io_fd_t *f, int fd, int events,
                        ip_attempt_fn attempt, void *ctx, int64_t deadline) {
  return io_loop(f, fd, events, attempt, ctx, deadline, 0);
}


ssize_t ip__read_fd_until(const ip_io_fd_t *f, int fd, ip_attempt_fn attempt,
                          void *ctx, int64_t deadline, size_t len) {
  return io_loop(f, fd, INTERPOSE_READABLE, attempt, ctx, deadline, len);
}


int64_t ip__io_deadline(int fd, int events) {
  return ip__deadline_after(socket_timeout_ns(fd, events));
}
