/* The cost of a hooked call that does not need to wait, in C.
 *
 * Built as a small shared library by scripts/bench_suite.py and called
 * through ctypes.CDLL by scripts/bench_hookcost.py.  ctypes releases the
 * GIL around the call, so inside it no Python thread state is attached and,
 * under the preload, send() and recv() below resolve to interpose's hooks
 * and act exactly as in a blocking Python socket call.  Each iteration
 * sends one byte on one end of a socket pair and receives it on the other:
 * the buffer always has room and the byte is always there, so neither call
 * ever waits; what is measured is the hook's own bookkeeping on top of the
 * system call.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>


/* Nanoseconds per call (a send or a recv), over n send+recv pairs; -1 or
 * -2 when a send or a recv did not move its one byte. */
double hookcost_pingpong(int a, int b, long n) {
  struct timespec t0, t1;
  char byte = 'x';
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < n; i++) {
    if (send(a, &byte, 1, 0) != 1) return -1;
    if (recv(b, &byte, 1, 0) != 1) return -2;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 +
              (double)(t1.tv_nsec - t0.tv_nsec);
  return ns / (2.0 * (double)n);
}
