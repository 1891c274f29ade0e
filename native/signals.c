/* signals.c: signals as the main coroutine must see them.  Python's signal
 * handlers run only in the main coroutine of the main thread, as CPython
 * runs them only in the main thread; this room owns the state that makes
 * that so (ip_signals_t, one per scheduler, used on the main thread's):
 *  - the read end of the runtime's signal wakeup pipe (_signals.py points
 *    CPython's set_wakeup_fd at it), watched by the hub's epoll set;
 *  - the program's own wakeup fd, which gets every byte CPython wrote, as
 *    if CPython had written it there;
 *  - signals whose Python handler first ran in another coroutine, tripped
 *    again as the main coroutine resumes, and the wakeup bytes those
 *    re-trips write, which the program has seen already.
 * The hub calls in when epoll_wait is interrupted or the wakeup pipe is
 * readable; the park path when the main coroutine resumes. */
#include "internal.h"


void ip__signals_init(ip_signals_t *sig) {
  sig->wakeup_fd = -1;
  sig->forward_fd = -1;
}


void ip__signals_after_fork_child(ip_signals_t *sig) {
  sig->deferred = 0; /* they were the parent's to run */
}


/* Trips again, for CPython to run in the main coroutine, the signals whose
 * Python handlers first ran in another coroutine.  Runs as the main
 * coroutine resumes, before any Python code of it. */
void ip__signals_retrip(ip_signals_t *sig) {
  uint64_t mask = sig->deferred;
  sig->deferred = 0;
  for (int signum = 1; mask != 0; signum++, mask >>= 1) {
    if (mask & 1u) {
      if (sig->forward_fd >= 0)
        sig->retripped[signum - 1]++; /* CPython writes the wakeup byte again */
      ip__py.PyErr_SetInterruptEx(signum);
    }
  }
}


void ip__signals_wake_main(ip_sched_t *s) {
  if (s->is_main_thread)
    ip__wake(s->main, ip__park_gen(s->main), -EINTR, 1);
}


/* The signal wakeup pipe carries one byte per signal (its number); the
 * program's own wakeup fd, if it set one, gets the same bytes, as if
 * CPython had written them there.  A full or broken fd loses bytes, as
 * CPython's own write would. */
void ip__signals_drain(ip_signals_t *sig) {
  char buf[256];
  ssize_t n;
  while ((n = ip__real.read(sig->wakeup_fd, buf, sizeof(buf))) > 0) {
    if (sig->forward_fd < 0)
      continue;
    size_t kept = 0;
    for (ssize_t i = 0; i < n; i++) {
      unsigned char signum = (unsigned char) buf[i];
      if (signum >= 1 && signum <= IP_NSIG_MAX &&
          sig->retripped[signum - 1] > 0)
        sig->retripped[signum - 1]--; /* the program saw this signal already */
      else
        buf[kept++] = buf[i];
    }
    if (kept > 0) {
      ssize_t IP_UNUSED w = ip__real.write(sig->forward_fd, buf, kept);
    }
  }
}


/* Watches the wakeup pipe in s's (new) epoll set; after a failure the pipe
 * is no longer watched, as if none had been set. */
void ip__signals_watch(ip_sched_t *s) {
  if (s->sig.wakeup_fd >= 0 &&
      ip__sched_add_tagged(s, s->sig.wakeup_fd, IP_TAG_SIGNAL) < 0)
    s->sig.wakeup_fd = -1;
}


/* ---- exported API ----------------------------------------------------- */

int interpose_sched_defer_signal(int signum) {
  ip_sched_t *s = ip__sched_get();
  if (s == NULL || !s->is_main_thread || signum < 1 || signum > IP_NSIG_MAX)
    return -EINVAL;
  s->sig.deferred |= UINT64_C(1) << (signum - 1);
  if (s->current != s->main)
    ip__wake(s->main, ip__park_gen(s->main), -EINTR, 1);
  return 0;
}


int interpose_sched_set_signal_forward(int fd) {
  ip_sched_t *s = ip__sched_get();
  if (s == NULL || !s->is_main_thread)
    return -EINVAL;
  s->sig.forward_fd = fd;
  return 0;
}


int interpose_sched_set_signal_fd(int fd) {
  ip_sched_t *s;
  int r = ip__sched_ensure(&s);
  if (r < 0)
    return r;
  if (!s->is_main_thread)
    return -EINVAL;
  if (s->sig.wakeup_fd >= 0)
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->sig.wakeup_fd, NULL);
  s->sig.wakeup_fd = -1;
  if (fd < 0)
    return 0;
  r = ip__sched_add_tagged(s, fd, IP_TAG_SIGNAL);
  if (r == 0)
    s->sig.wakeup_fd = fd;
  return r;
}
