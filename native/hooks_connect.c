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
  r = ip__block_on(s, fd, INTERPOSE_WRITABLE,
                   ip__io_deadline(fd, INTERPOSE_WRITABLE), 0);
  if (r == -EAGAIN)
    return ip__fail(-EINPROGRESS);
  if (r < 0)
    return ip__fail(r);
  int err = 0;
  socklen_t err_len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0)
    return -1;
  return err ? ip__fail(-err) : 0;
}

#pragma GCC visibility pop
