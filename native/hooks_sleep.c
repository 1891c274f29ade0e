/* hooks_sleep.c: sleep, usleep, nanosleep, clock_nanosleep.
 *
 * In a coroutine with hooks on, a sleep parks the coroutine until its
 * deadline on the monotonic clock and never returns early; a zero sleep
 * lets every other runnable coroutine run first.  Interrupted by a signal
 * for the main coroutine, it returns EINTR and reports the time not slept,
 * as the kernel does (CPython's time.sleep then runs the handlers and sleeps
 * on to its absolute deadline).  Cancellation and coroutine deadlines end
 * it with ECANCELED / ETIMEDOUT.  CPU-time clocks are not ours to wait on:
 * they go to the real call. */
#include <limits.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)


/* Parks until the monotonic deadline; 0 or -errno.  A
 * deadline saturated at INT64_MAX (the kernel's KTIME_MAX) is never
 * reached, and the time left is then reported as the kernel reports it:
 * the distance to that saturated expiry. */
static int park_until(ip_sched_t *s, int64_t deadline_ns, int64_t *left_ns) {
  for (;;) {
    ip__prepare(s->current);
    ip__wait_note(s->current, IP_WAIT_SLEEP, -1, 0, NULL);
    int r = ip__park(s, ip__timeout_left(deadline_ns, ip__now_ns()));
    int64_t now = ip__now_ns();
    *left_ns = deadline_ns > now ? deadline_ns - now : 0;
    if (r < 0)
      return r;
    if (now >= deadline_ns)
      return 0;
  }
}


int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
                    struct timespec *rem) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || req == NULL || !ip__timespec_valid(req) ||
      (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME &&
       clk != CLOCK_BOOTTIME && clk != CLOCK_TAI))
    return ip__real.clock_nanosleep(clk, flags, req, rem);
  int64_t now = ip__now_ns();
  int64_t wait = ip__ns_from_timespec(req);
  if (flags & TIMER_ABSTIME)
    wait = wait == INT64_MAX ? wait : wait - ip__clock_ns(clk);
  int64_t left;
  int r = park_until(s, ip__ns_add_sat(now, wait > 0 ? wait : 0), &left);
  if (r == -EINTR && rem != NULL && !(flags & TIMER_ABSTIME))
    *rem = ip__timespec_of(left);
  return -r; /* POSIX: clock_nanosleep returns the error, errno untouched */
}


int nanosleep(const struct timespec *req, struct timespec *rem) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || req == NULL || !ip__timespec_valid(req))
    return ip__real.nanosleep(req, rem);
  int64_t left;
  int r = park_until(s, ip__ns_add_sat(ip__now_ns(), ip__ns_from_timespec(req)),
                     &left);
  if (r == 0)
    return 0;
  if (r == -EINTR && rem != NULL)
    *rem = ip__timespec_of(left);
  return ip__fail(r);
}


int usleep(useconds_t usec) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.usleep(usec);
  int64_t left;
  int r = park_until(s, ip__ns_add_sat(ip__now_ns(), ip__ns_from_us(usec)),
                     &left);
  return r < 0 ? ip__fail(r) : 0;
}


unsigned int sleep(unsigned int seconds) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.sleep(seconds);
  int64_t left;
  int r = park_until(s, ip__ns_add_sat(ip__now_ns(), ip__ns_of(seconds, 0)),
                     &left);
  if (r == 0)
    return 0;
  ip__set_errno(r);
  return (unsigned) ip__sec_ceil(left); /* seconds not slept */
}

#pragma GCC visibility pop
