/* rawcall.h: system calls made directly, without libc's wrappers, for the
 * one place that wants them: the non-blocking attempt a hooked call makes
 * inside a coroutine (hookcore.c's I/O loop, hooks_data.c's attempts).
 *
 * Facts: glibc (2.34 and later, sysdeps/unix/sysdep.h SYSCALL_CANCEL) makes
 * recv, send, read, write and the other cancellation points check whether
 * the process is single-threaded; when it is not, the wrapper switches the
 * calling thread to asynchronous cancellation around the system call and
 * back (two atomic read-modify-writes of the thread's cancelhandling word).
 * A process running interpose always has more threads than one (the
 * diagnostics and preemption threads).  Measured on this project's
 * machine, a recvfrom that fails with EAGAIN costs 254 ns made inline, 258
 * through glibc's syscall() and 267 through glibc's recv in a
 * multi-threaded process (best of 8 runs of 2 million calls each).
 *
 * Consequences: the direct call saves about 12 ns per call, two calls per
 * echo round trip.  It is no cancellation point.  That is what a coroutine
 * wants anyway: a deferred cancellation of the carrier OS thread acted upon
 * inside a coroutine would unwind the thread's cleanup handlers on the
 * coroutine's stack, past the hub's frames; the carrier's cancellation
 * point is the hub's epoll_wait, which still goes through libc.  Calls made
 * outside a scheduler (plain threads, the passthrough path) keep libc's
 * wrappers and their cancellation points.
 *
 * Our solution: ip__rawcall6 returns the kernel's result, and
 * ip__rawcall_result converts it exactly as glibc's wrappers do: a value in
 * [-4095, -1] is -errno, stored in errno, and the call returns -1.  Every
 * other value is the call's result and errno is left untouched.  Both
 * variants are checked against libc's wrappers, call by call and through
 * the hooks, by tests/test_rawcall.py (aarch64 under qemu-user; what that
 * does and does not show: docs/platforms.md). */
#ifndef INTERPOSE_RAWCALL_H
#define INTERPOSE_RAWCALL_H

#include <errno.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__x86_64__)
static inline long ip__rawcall6(long nr, long a, long b, long c, long d,
                                long e, long f) {
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  long ret;
  /* The kernel's x86-64 convention: rcx and r11 are clobbered by the
   * instruction itself; memory, because the call reads and writes the
   * caller's buffers. */
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
                     "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
static inline long ip__rawcall6(long nr, long a, long b, long c, long d,
                                long e, long f) {
  register long x8 __asm__("x8") = nr;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  register long x5 __asm__("x5") = f;
  __asm__ volatile("svc 0"
                   : "+r"(x0)
                   : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                   : "memory");
  return x0;
}
#else /* neither x86-64 nor aarch64: glibc's syscall(), no cancellation */
static inline long ip__rawcall6(long nr, long a, long b, long c, long d,
                                long e, long f) {
  long ret = syscall(nr, a, b, c, d, e, f);
  return ret == -1 ? -errno : ret;
}
#endif /* __x86_64__, __aarch64__ */

static inline ssize_t ip__rawcall_result(long ret) {
  if ((unsigned long) ret > -4096UL) {
    errno = (int) -ret;
    return -1;
  }
  return ret;
}

#define IP_RAWCALL(nr, a, b, c, d, e, f)                                      \
  ip__rawcall_result(ip__rawcall6((nr), (long) (a), (long) (b), (long) (c),   \
                                  (long) (d), (long) (e), (long) (f)))

#endif /* INTERPOSE_RAWCALL_H */
