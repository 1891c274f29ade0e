/* hooks_connect.c: connect.
 *
 * On a socket we made non-blocking, a blocking connect becomes: start it,
 * park until the socket is writable, then report SO_ERROR as the kernel's
 * blocking connect would (0, ECONNREFUSED, ETIMEDOUT, ...).  SO_SNDTIMEO
 * bounds the wait as it bounds the kernel's (then EINPROGRESS, and the
 * connection goes on in the background); there is no other timeout (libco
 * caps connect at 75 s; the kernel's own SYN retries still apply).  A
 * signal for the main coroutine gives EINTR and the connection also goes
 * on, exactly as with the blocking call.  A foreign socket that is blocking
 * in the kernel cannot be switched to non-blocking without touching a file
 * description someone else may share, so its connect blocks the thread. */
#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)


int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  ip_sched_t *s;
  if (ip__io_mode(fd, &s) != IP_MODE_RETRY)
    return ip__real.connect(fd, addr, len);
  int r = ip__real.connect(fd, addr, len);
  if (r == 0 || errno != EINPROGRESS)
    return r;
  int64_t deadline = ip__io_deadline(fd, INTERPOSE_WRITABLE);
  for (;;) {
    r = ip__block_on(s, fd, INTERPOSE_WRITABLE, deadline, 0);
    if (r == -EAGAIN)
      return ip__fail(-EINPROGRESS);
    if (r < 0)
      return ip__fail(r);
    /* Asking the kernel again, as its own blocking connect does, reports
     * the outcome and leaves the socket as a failed blocking connect would
     * (reading SO_ERROR instead would leave it half-connecting, and a
     * retry would fail with ECONNABORTED). */
    r = ip__real.connect(fd, addr, len);
    if (r == 0 || errno == EISCONN)
      return 0;
    if (errno != EALREADY && errno != EINPROGRESS)
      return -1;
  }
}

#pragma GCC visibility pop
