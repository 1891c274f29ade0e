/* timeconv.h: the time room.  Every clock read and every conversion
 * between the time units the hooked calls take (s, ms, us, timeval,
 * timespec, absolute times on other clocks) and the engine's int64
 * nanoseconds on the monotonic clock lives here; no other file multiplies
 * or divides by a unit.
 *
 * Facts: an int64 of nanoseconds covers 292 years, while a timeval or
 * timespec holds 2^63 seconds and poll's int milliseconds 24 days; callers
 * pass huge values on purpose to mean "forever" (LONG_MAX seconds,
 * INT_MAX milliseconds), and the kernel saturates them (timespec64_add_safe,
 * ktime_add_safe).  Signed overflow is undefined behaviour in C and under
 * UBSan a crash; wrapped, it turns "forever" into a short or negative
 * timeout.  Consequence: no caller may multiply or add time values on its
 * own.  Solution: these helpers saturate at INT64_MAX, and everything that
 * computes a deadline treats a sum that would pass INT64_MAX as no deadline
 * at all.
 *
 * Conventions, the same in every file: a timeout or deadline of -1 means
 * none (wait forever); timeouts are relative nanoseconds >= 0; deadlines are
 * absolute nanoseconds on CLOCK_MONOTONIC (ip__now_ns). */
#ifndef IP_TIMECONV_H
#define IP_TIMECONV_H

#include <limits.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>

#define IP_NS_PER_SEC INT64_C(1000000000)
#define IP_NS_PER_MS INT64_C(1000000)
#define IP_NS_PER_US INT64_C(1000)
#define IP_US_PER_SEC INT64_C(1000000)
#define IP_NO_TIMEOUT (-1)


/* The time on clk in nanoseconds (for absolute timeouts given on it). */
static inline int64_t ip__clock_ns(clockid_t clk) {
  struct timespec now;
  clock_gettime(clk, &now);
  return (int64_t) now.tv_sec * IP_NS_PER_SEC + now.tv_nsec;
}


/* Whether ts has a valid nanosecond field (0 <= tv_nsec < 1e9), as every
 * call taking a timespec requires (else EINVAL). */
static inline int ip__timespec_nsec_valid(const struct timespec *ts) {
  return ts->tv_nsec >= 0 && ts->tv_nsec < IP_NS_PER_SEC;
}


/* Whether ts is a valid relative timeout: not negative, nsec valid. */
static inline int ip__timespec_valid(const struct timespec *ts) {
  return ts->tv_sec >= 0 && ip__timespec_nsec_valid(ts);
}

/* a + b for a, b >= 0, saturating at INT64_MAX. */
static inline int64_t ip__ns_add_sat(int64_t a, int64_t b) {
  return a > INT64_MAX - b ? INT64_MAX : a + b;
}


/* sec seconds and nsec nanoseconds (both >= 0), saturating. */
static inline int64_t ip__ns_of(int64_t sec, int64_t nsec) {
  if (sec > (INT64_MAX - nsec) / IP_NS_PER_SEC)
    return INT64_MAX;
  return sec * IP_NS_PER_SEC + nsec;
}


/* poll/epoll_wait milliseconds: negative is no timeout. */
static inline int64_t ip__ns_from_ms(int timeout_ms) {
  return timeout_ms < 0 ? IP_NO_TIMEOUT : (int64_t) timeout_ms * IP_NS_PER_MS;
}


/* Microseconds (>= 0), saturating. */
static inline int64_t ip__ns_from_us(int64_t us) {
  return us > INT64_MAX / IP_NS_PER_US ? INT64_MAX : us * IP_NS_PER_US;
}


/* Whole seconds in ns (>= 0), rounded up: what sleep() reports unslept. */
static inline int64_t ip__sec_ceil(int64_t ns) {
  return ns / IP_NS_PER_SEC + (ns % IP_NS_PER_SEC != 0);
}


/* A relative timespec (the caller has checked it is valid: tv_sec >= 0,
 * 0 <= tv_nsec < 1e9); NULL is no timeout. */
static inline int64_t ip__ns_from_timespec(const struct timespec *ts) {
  if (ts == NULL)
    return IP_NO_TIMEOUT;
  return ip__ns_of(ts->tv_sec, ts->tv_nsec);
}


/* A relative timeval with tv_sec >= 0 and 0 <= tv_usec; NULL is none.
 * tv_usec may exceed a second (select accepts that). */
static inline int64_t ip__ns_from_timeval(const struct timeval *tv) {
  if (tv == NULL)
    return IP_NO_TIMEOUT;
  int64_t carry = tv->tv_usec / IP_US_PER_SEC;
  int64_t sec = tv->tv_sec > INT64_MAX - carry ? INT64_MAX : tv->tv_sec + carry;
  return ip__ns_of(sec, (int64_t) (tv->tv_usec % IP_US_PER_SEC) * IP_NS_PER_US);
}


/* SO_RCVTIMEO / SO_SNDTIMEO as the kernel keeps them (sock_set_timeout):
 * zero and negative seconds mean no timeout (0 here, the fd table's
 * "none"); anything too large to count in nanoseconds is forever too. */
static inline int64_t ip__ns_from_sockopt(const struct timeval *tv) {
  if (tv->tv_sec < 0 || (tv->tv_sec == 0 && tv->tv_usec <= 0))
    return 0;
  int64_t ns = ip__ns_from_timeval(tv);
  return ns == INT64_MAX ? 0 : ns;
}


/* The deadline timeout_ns after now: -1 (none) for no timeout, and for a
 * timeout whose deadline would pass INT64_MAX (292 years: forever). */
static inline int64_t ip__deadline_of(int64_t now_ns, int64_t timeout_ns) {
  if (timeout_ns < 0 || now_ns > INT64_MAX - timeout_ns)
    return IP_NO_TIMEOUT;
  return now_ns + timeout_ns;
}


/* The timeout left until deadline_ns (none stays none; overdue is 0). */
static inline int64_t ip__timeout_left(int64_t deadline_ns, int64_t now_ns) {
  if (deadline_ns < 0)
    return IP_NO_TIMEOUT;
  return deadline_ns > now_ns ? deadline_ns - now_ns : 0;
}


/* Milliseconds for poll/epoll_wait, rounded up, never down, so a wait
 * never ends early; clamped to INT_MAX; none stays -1. */
static inline int ip__ms_ceil(int64_t timeout_ns) {
  if (timeout_ns < 0)
    return -1;
  int64_t ms = timeout_ns / IP_NS_PER_MS + (timeout_ns % IP_NS_PER_MS != 0);
  return ms > INT_MAX ? INT_MAX : (int) ms;
}


/* A relative timespec for ns >= 0. */
static inline struct timespec ip__timespec_of(int64_t ns) {
  struct timespec ts = {ns / IP_NS_PER_SEC, ns % IP_NS_PER_SEC};
  return ts;
}


/* The monotonic deadline of an absolute time abs on clock clk (now_clk:
 * clk's time, now_ns: the monotonic time, read together by the caller).
 * A time already past is now; one beyond what nanoseconds count is -1. */
static inline int64_t ip__deadline_of_abs(const struct timespec *abs,
                                          int64_t now_clk, int64_t now_ns) {
  if (abs->tv_sec < 0)
    return now_ns;
  int64_t when = ip__ns_of(abs->tv_sec, abs->tv_nsec);
  if (when == INT64_MAX)
    return IP_NO_TIMEOUT;
  return ip__deadline_of(now_ns, when > now_clk ? when - now_clk : 0);
}

/* What select reports in its timeval: the time not slept, tv minus
 * elapsed_ns, at least zero.  Computed in seconds, not nanoseconds, so
 * that a timeval too large for nanoseconds comes back as the kernel
 * reports it (its saturated expiry minus the time slept: huge). */
static inline struct timeval ip__timeval_minus(const struct timeval *tv,
                                               int64_t elapsed_ns) {
  int64_t carry = tv->tv_usec / IP_US_PER_SEC;
  int64_t sec = tv->tv_sec > INT64_MAX - carry ? INT64_MAX : tv->tv_sec + carry;
  int64_t usec = tv->tv_usec % IP_US_PER_SEC -
                 (elapsed_ns % IP_NS_PER_SEC) / IP_NS_PER_US;
  sec -= elapsed_ns / IP_NS_PER_SEC;
  if (usec < 0) {
    usec += IP_US_PER_SEC;
    sec--;
  }
  struct timeval left = {0, 0};
  if (sec >= 0) {
    left.tv_sec = sec;
    left.tv_usec = usec;
  }
  return left;
}

#endif /* IP_TIMECONV_H */
