/* hooks_wait.c: poll, ppoll, select, pselect, epoll_wait, epoll_pwait.
 *
 * A zero timeout is the real call.  Otherwise the hook looks with the real
 * call and a zero timeout; if nothing is ready it registers the running
 * coroutine as a waiter on every fd, looks once more (an edge could have
 * passed before the registration), and parks until an fd may be ready, the
 * timeout passes or a signal arrives; then it looks again.  The answer the
 * caller gets always comes from the real call with a zero timeout, so the
 * revents, the fd sets and the counts are exactly the kernel's; and the
 * caller's buffers are written only where the kernel writes them (poll's
 * revents on every return, select's sets only on success or timeout: see
 * the select section).
 *
 * Known difference: ppoll, pselect and epoll_pwait install their signal
 * mask only for the real zero-timeout calls, not while the coroutine is
 * parked (other coroutines run then, under the thread's own mask).  Python
 * never passes a mask. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)

#define SMALL_WAITERS 8


/* A ppoll/pselect timeout in nanoseconds (saturated, see timeconv.h), or
 * 0, which sends the call to the real function, when it is invalid: the
 * kernel then reports EINVAL. */
static int64_t ts_timeout_ns(const struct timespec *ts) {
  if (ts != NULL && !ip__timespec_valid(ts))
    return 0;
  return ip__ns_from_timespec(ts);
}


static int events_of_poll(short events) {
  int ev = 0;
  if (events & (POLLIN | POLLPRI | POLLRDNORM | POLLRDBAND | POLLRDHUP))
    ev |= INTERPOSE_READABLE;
  if (events & (POLLOUT | POLLWRNORM | POLLWRBAND))
    ev |= INTERPOSE_WRITABLE;
  /* Errors and hang-ups are reported even when nothing is asked for. */
  return ev ? ev : INTERPOSE_READABLE;
}


/* Parks until one of fds may be ready (0), the deadline passes
 * (INTERPOSE_PARK_TIMEOUT) or the park fails (-errno).  probe() is called
 * after the registration; a nonzero answer returns at once. */
static int wait_any(ip_sched_t *s, const int *fds, const short *events,
                    int n, int64_t deadline_ns, int (*probe)(void *),
                    void *probe_arg) {
  ip_waiter_t small[SMALL_WAITERS];
  ip_waiter_t *w = n <= SMALL_WAITERS ? small : calloc((size_t) n, sizeof(*w));
  if (w == NULL)
    return -ENOMEM;
  ip_coro_t *co = s->current;
  uint64_t gen = ip__prepare(co);
  int watched = 0, r = 0;
  for (int i = 0; i < n; i++) {
    if (fds[i] < 0)
      continue;
    w[watched] = (ip_waiter_t){.co = co, .gen = gen, .fd = fds[i],
                               .events = events_of_poll(events[i])};
    /* A watch that fails (EBADF, EPERM for a regular file) is left to the
     * probe, the real call: it reports such an fd (EBADF, POLLNVAL, always
     * ready) or, like select for an fd beyond the fd table, ignores it;
     * then so does the wait, instead of spinning on it. */
    if (ip__fd_watch(s, &w[watched]) == 0)
      watched++;
  }
  r = probe(probe_arg);
  if (r == 0) {
    ip__wait_note(co, IP_WAIT_POLL, watched > 0 ? w[0].fd : -1, watched,
                  NULL);
    s->fd_waits += watched > 0;
    r = ip__park(s, ip__timeout_left(deadline_ns, ip__now_ns()));
    s = co->sched;
    s->fd_waits -= watched > 0;
  } else {
    r = r < 0 ? r : 0;
  }
  for (int i = 0; i < watched; i++)
    ip__fd_unwatch(s, &w[i]);
  if (w != small)
    free(w);
  return r;
}

/* ---- poll ------------------------------------------------------------- */

typedef struct pollctx {
  struct pollfd *fds;
  nfds_t n;
  const sigset_t *mask;
} pollctx_t;


static int poll_now(pollctx_t *p) {
  struct timespec zero = {0, 0};
  if (p->mask != NULL)
    return ip__real.ppoll(p->fds, p->n, &zero, p->mask);
  return ip__real.poll(p->fds, p->n, 0);
}


static int poll_probe(void *arg) {
  int r = poll_now(arg);
  return r < 0 ? -errno : r;
}


static int cooperative_poll(ip_sched_t *s, pollctx_t *p, int64_t timeout_ns) {
  int64_t deadline = ip__deadline_of(ip__now_ns(), timeout_ns);
  int small_fds[SMALL_WAITERS];
  short small_ev[SMALL_WAITERS];
  int *fds = small_fds;
  short *ev = small_ev;
  if (p->n > SMALL_WAITERS) {
    fds = malloc(p->n * sizeof(*fds));
    ev = malloc(p->n * sizeof(*ev));
    if (fds == NULL || ev == NULL) {
      free(fds);
      free(ev);
      return ip__fail(-ENOMEM);
    }
  }
  for (nfds_t i = 0; i < p->n; i++) {
    fds[i] = p->fds[i].fd;
    ev[i] = p->fds[i].events;
  }
  int r;
  for (;;) {
    r = poll_now(p);
    if (r != 0)
      break;
    int w = wait_any(s, fds, ev, (int) p->n, deadline, poll_probe, p);
    if (w == INTERPOSE_PARK_TIMEOUT) {
      r = poll_now(p);
      break;
    }
    if (w < 0) {
      r = ip__fail(w);
      break;
    }
  }
  if (fds != small_fds) {
    free(fds);
    free(ev);
  }
  return r;
}


int poll(struct pollfd *fds, nfds_t n, int timeout_ms) {
  ip_sched_t *s;
  if (timeout_ms == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL)
    return ip__real.poll(fds, n, timeout_ms);
  pollctx_t p = {fds, n, NULL};
  return cooperative_poll(s, &p, ip__ns_from_ms(timeout_ms));
}


int __poll_chk(struct pollfd *fds, nfds_t n, int timeout_ms, size_t fdslen) {
  if (fdslen / sizeof(*fds) < n)
    __chk_fail();
  return poll(fds, n, timeout_ms);
}


int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *timeout,
          const sigset_t *mask) {
  ip_sched_t *s;
  int64_t ns = ts_timeout_ns(timeout);
  if (ns == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL)
    return ip__real.ppoll(fds, n, timeout, mask);
  pollctx_t p = {fds, n, mask};
  return cooperative_poll(s, &p, ns);
}

/* ---- select ----------------------------------------------------------- */

/* Linux leaves the caller's fd sets untouched unless select succeeds or
 * times out (then they hold the answer, empty on a timeout): on EINTR and
 * on every error they keep the caller's request, and CPython retries an
 * interrupted select with the same sets (PEP 475).  So every probe works on
 * scratch copies, and only a real call's success or timeout is copied out.
 * select() stores the time not slept in the timeval on every return, as
 * Linux does; pselect() never writes its timespec (glibc passes the kernel
 * a copy). */
typedef struct selctx {
  int nfds;
  fd_set *sets[3];   /* the caller's; written only by select_result */
  fd_set request[3]; /* what the caller asked for */
  fd_set answer[3];  /* scratch for the real zero-timeout calls */
  const sigset_t *mask;
} selctx_t;


/* The real select with a zero timeout on fresh copies of the request;
 * answer keeps what the kernel reported. */
static int select_now(selctx_t *c) {
  fd_set *a[3];
  for (int i = 0; i < 3; i++) {
    a[i] = c->sets[i] ? &c->answer[i] : NULL;
    if (a[i])
      *a[i] = c->request[i];
  }
  if (c->mask != NULL) {
    struct timespec zero = {0, 0};
    return ip__real.pselect(c->nfds, a[0], a[1], a[2], &zero, c->mask);
  }
  struct timeval zero = {0, 0};
  return ip__real.select(c->nfds, a[0], a[1], a[2], &zero);
}


static int select_probe(void *arg) {
  int r = select_now(arg);
  return r < 0 ? -errno : r;
}


/* Hands a real call's result to the caller: its answer when it succeeded
 * or timed out; nothing (the sets keep the request) when it failed. */
static int select_result(selctx_t *c, int r) {
  if (r >= 0) {
    for (int i = 0; i < 3; i++)
      if (c->sets[i])
        *c->sets[i] = c->answer[i];
  }
  return r;
}


/* The fds of the request and the poll events each waits for; their count,
 * or -ENOMEM. */
static int select_wait_fds(selctx_t *c, int **fds_out, short **ev_out) {
  int n = 0;
  int *fds = malloc((size_t) c->nfds * sizeof(*fds) + 1);
  short *ev = malloc((size_t) c->nfds * sizeof(*ev) + 1);
  if (fds == NULL || ev == NULL) {
    free(fds);
    free(ev);
    return -ENOMEM;
  }
  for (int fd = 0; fd < c->nfds; fd++) {
    short e = 0;
    if (c->sets[0] && FD_ISSET(fd, &c->request[0]))
      e |= POLLIN;
    if (c->sets[1] && FD_ISSET(fd, &c->request[1]))
      e |= POLLOUT;
    if (c->sets[2] && FD_ISSET(fd, &c->request[2]))
      e |= POLLPRI;
    if (e) {
      fds[n] = fd;
      ev[n++] = e;
    }
  }
  *fds_out = fds;
  *ev_out = ev;
  return n;
}


/* Returns like select (with errno), the caller's sets per the rule above;
 * *elapsed_ns: how long the call took, for select's report of the time not
 * slept. */
static int cooperative_select(ip_sched_t *s, selctx_t *c, int64_t timeout_ns,
                              int64_t *elapsed_ns) {
  int64_t start = ip__now_ns();
  int64_t deadline = ip__deadline_of(start, timeout_ns);
  for (int i = 0; i < 3; i++)
    if (c->sets[i])
      c->request[i] = *c->sets[i];
  int r = select_now(c);
  int *fds = NULL;
  short *ev = NULL;
  int n = r != 0 ? 0 : select_wait_fds(c, &fds, &ev);
  if (r != 0) {
    r = select_result(c, r);
  } else if (n < 0) {
    r = ip__fail(n);
  } else {
    for (;;) {
      int w = wait_any(s, fds, ev, n, deadline, select_probe, c);
      if (w == INTERPOSE_PARK_TIMEOUT) {
        r = select_result(c, select_now(c));
        break;
      }
      if (w < 0) { /* EINTR, ECANCELED, ETIMEDOUT, ENOMEM: sets untouched */
        r = ip__fail(w);
        break;
      }
      r = select_now(c);
      if (r != 0) {
        r = select_result(c, r);
        break;
      }
    }
  }
  IP_SAVE_ERRNO({
    free(fds);
    free(ev);
    *elapsed_ns = ip__now_ns() - start;
  });
  return r;
}


int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv) {
  ip_sched_t *s;
  int invalid = tv && (tv->tv_sec < 0 || tv->tv_usec < 0);
  int64_t ns = invalid ? 0 : ip__ns_from_timeval(tv); /* 0: the real call */
  if (ns == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL ||
      nfds < 0 || nfds > FD_SETSIZE)
    return ip__real.select(nfds, r, w, e, tv);
  selctx_t c = {.nfds = nfds, .sets = {r, w, e}};
  int64_t elapsed = 0;
  int n = cooperative_select(s, &c, ns, &elapsed);
  if (tv != NULL) /* Linux reports the time not slept, whatever happened */
    *tv = ip__timeval_minus(tv, elapsed);
  return n;
}


int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e,
            const struct timespec *timeout, const sigset_t *mask) {
  ip_sched_t *s;
  int64_t ns = ts_timeout_ns(timeout);
  if (ns == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL ||
      nfds < 0 || nfds > FD_SETSIZE)
    return ip__real.pselect(nfds, r, w, e, timeout, mask);
  selctx_t c = {.nfds = nfds, .sets = {r, w, e}, .mask = mask};
  int64_t elapsed = 0;
  return cooperative_select(s, &c, ns, &elapsed);
}

/* ---- epoll_wait ------------------------------------------------------- */

typedef struct epctx {
  int epfd;
  struct epoll_event *events;
  int max;
  const sigset_t *mask;
} epctx_t;


static int epoll_now(epctx_t *c) {
  if (c->mask != NULL)
    return ip__real.epoll_pwait(c->epfd, c->events, c->max, 0, c->mask);
  return ip__real.epoll_wait(c->epfd, c->events, c->max, 0);
}


static int epoll_probe(void *arg) {
  int r = epoll_now(arg);
  return r < 0 ? -errno : r;
}


/* An epoll fd is itself pollable: readable while its ready list is not
 * empty. */
static int cooperative_epoll(ip_sched_t *s, epctx_t *c, int timeout_ms) {
  int64_t deadline = ip__deadline_of(ip__now_ns(), ip__ns_from_ms(timeout_ms));
  short ev = POLLIN;
  for (;;) {
    int r = epoll_now(c);
    if (r != 0)
      return r;
    int w = wait_any(s, &c->epfd, &ev, 1, deadline, epoll_probe, c);
    if (w == INTERPOSE_PARK_TIMEOUT)
      return epoll_now(c);
    if (w < 0)
      return ip__fail(w);
  }
}


int epoll_wait(int epfd, struct epoll_event *events, int max, int timeout) {
  ip_sched_t *s;
  if (timeout == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL)
    return ip__real.epoll_wait(epfd, events, max, timeout);
  epctx_t c = {epfd, events, max, NULL};
  return cooperative_epoll(s, &c, timeout);
}


int epoll_pwait(int epfd, struct epoll_event *events, int max, int timeout,
                const sigset_t *mask) {
  ip_sched_t *s;
  if (timeout == 0 || !ip__hooks_armed() || (s = ip__hook_sched()) == NULL)
    return ip__real.epoll_pwait(epfd, events, max, timeout, mask);
  epctx_t c = {epfd, events, max, mask};
  return cooperative_epoll(s, &c, timeout);
}

#pragma GCC visibility pop
