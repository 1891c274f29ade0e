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


static int valid_ts(const struct timespec *ts) {
  return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000;
}


static int64_t ts_ns(const struct timespec *ts) {
  if (ts->tv_sec >= INT64_MAX / 1000000000 - 1)
    return INT64_MAX / 2; /* effectively forever, without overflow */
  return (int64_t) ts->tv_sec * 1000000000 + ts->tv_nsec;
}


/* Parks until the monotonic deadline; 0, or a positive errno value. */
static int park_until(ip_sched_t *s, int64_t deadline_ns, int64_t *left_ns) {
  for (;;) {
    ip__prepare(s->current);
    ip__wait_note(s->current, IP_WAIT_SLEEP, -1, 0, NULL);
    int64_t left = deadline_ns - ip__now_ns();
    int r = ip__park(s, left > 0 ? left : 0);
    int64_t now = ip__now_ns();
    *left_ns = deadline_ns > now ? deadline_ns - now : 0;
    if (r < 0)
      return -r;
    if (now >= deadline_ns)
      return 0;
  }
}


static void set_ts(struct timespec *ts, int64_t ns) {
  ts->tv_sec = ns / 1000000000;
  ts->tv_nsec = ns % 1000000000;
}


int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
                    struct timespec *rem) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || req == NULL || !valid_ts(req) ||
      (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME &&
       clk != CLOCK_BOOTTIME && clk != CLOCK_TAI))
    return ip__real.clock_nanosleep(clk, flags, req, rem);
  int64_t now = ip__now_ns();
  int64_t wait = ts_ns(req);
  if (flags & TIMER_ABSTIME)
    wait -= ip__clock_ns(clk);
  int64_t left;
  int r = park_until(s, now + (wait > 0 ? wait : 0), &left);
  if (r == EINTR && rem != NULL && !(flags & TIMER_ABSTIME))
    set_ts(rem, left);
  return r;
}


int nanosleep(const struct timespec *req, struct timespec *rem) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || req == NULL || !valid_ts(req))
    return ip__real.nanosleep(req, rem);
  int64_t left;
  int r = park_until(s, ip__now_ns() + ts_ns(req), &left);
  if (r == 0)
    return 0;
  if (r == EINTR && rem != NULL)
    set_ts(rem, left);
  return ip__fail(-r);
}


int usleep(useconds_t usec) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.usleep(usec);
  int64_t left;
  int r = park_until(s, ip__now_ns() + (int64_t) usec * 1000, &left);
  return r ? ip__fail(-r) : 0;
}


unsigned int sleep(unsigned int seconds) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.sleep(seconds);
  int64_t left;
  int r = park_until(s, ip__now_ns() + (int64_t) seconds * 1000000000, &left);
  if (r == 0)
    return 0;
  errno = r;
  return (unsigned) ((left + 999999999) / 1000000000); /* seconds not slept */
}

#pragma GCC visibility pop
