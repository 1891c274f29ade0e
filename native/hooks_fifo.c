/* hooks_fifo.c: a blocking open() of a FIFO, called from the open hooks
 * (hooks_create.c).
 *
 * Facts: open() of a FIFO for reading only or for writing only, without
 * O_NONBLOCK, blocks in the kernel until the other end is opened too; its
 * other end is often opened by another thread of the same program (CPython's
 * test_logging test_should_not_rollover_named_pipe, new in 3.14).  With
 * O_NONBLOCK a reader's open succeeds at once and a writer's fails with
 * ENXIO while there is no reader.  No readiness event says that a writer
 * came: a FIFO with a writer and no data polls as neither readable nor
 * hung up.
 *
 * Consequences: the real blocking open would block the OS thread, and the
 * coroutine that would open the other end (a Python thread, under
 * `interpose run`) never runs: a hang where plain Python's two threads
 * meet.  Waiting on the epoll set cannot replace it, for want of an event.
 *
 * Solution: in a coroutine that may park, such an open is made with
 * O_NONBLOCK, and the coroutine naps on a timer between checks (1 ms,
 * doubling to 50 ms, as for semaphores posted by other processes) until
 * the other end is there; then O_NONBLOCK is cleared, so the caller gets
 * the blocking fd it asked for.  A writer checks by retrying its open until
 * it no longer fails with ENXIO.  A reader holds its fd and asks tee() for
 * one byte into a scratch pipe: it copies without consuming, fails with
 * EAGAIN while a writer is there and the FIFO is empty, and returns 0 when
 * no writer is; a writer that came and went without writing leaves the
 * reader's fd polling POLLHUP.  A signal for the main coroutine ends the
 * wait with EINTR, cancellation and deadlines with ECANCELED / ETIMEDOUT,
 * as for a sleep; the reader's fd is then closed.  Cost: one fstatat() per
 * open(), only in such a coroutine, and only without O_NONBLOCK, O_PATH,
 * O_RDWR, O_DIRECTORY or O_CREAT|O_EXCL (none of which can block on a
 * FIFO): about 0.75 us (os.open + os.close of a regular file took 3.1 us
 * instead of 2.35 under `interpose run` on the 2-core VM, 2026-12-08).
 * Opening with O_NONBLOCK first and asking fstat() would be cheaper but is
 * not the same open: O_NONBLOCK changes what opening a tty or a file with
 * a lease does. */
#include <sys/stat.h>

#include "internal.h"

#define FIFO_POLL_FIRST_NS 1000000LL /* 1 ms */
#define FIFO_POLL_MAX_NS 50000000LL  /* 50 ms */


/* Whether open(path, flags) could block on a FIFO: a read-only or
 * write-only blocking open of one.  errno unchanged. */
static int may_block_on_fifo(int dirfd, const char *path, int flags) {
  int acc = flags & O_ACCMODE;
  if ((flags & (O_NONBLOCK | O_PATH | O_DIRECTORY)) ||
      (flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL) ||
      (acc != O_RDONLY && acc != O_WRONLY) || path == NULL)
    return 0;
  struct stat st;
  int saved = errno;
  int r = fstatat(dirfd, path, &st,
                  (flags & O_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0);
  errno = saved;
  return r == 0 && S_ISFIFO(st.st_mode);
}


/* Parks the running coroutine for *poll_ns, then doubles it up to the
 * maximum; 0, or -errno (EINTR, ECANCELED, ETIMEDOUT). */
static int nap(ip_sched_t *s, int64_t *poll_ns) {
  ip__prepare(s->current);
  ip__wait_note(s->current, IP_WAIT_SLEEP, -1, 0, NULL);
  int r = ip__park(s, *poll_ns);
  *poll_ns = *poll_ns * 2 < FIFO_POLL_MAX_NS ? *poll_ns * 2 : FIFO_POLL_MAX_NS;
  return r < 0 ? r : 0;
}


/* fd, blocking again as the caller asked; -errno (fd closed) on failure. */
static int make_blocking(int fd) {
  int fl = ip__real.fcntl(fd, F_GETFL);
  if (fl < 0 || ip__real.fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
    int err = errno;
    ip__real.close(fd);
    return -err;
  }
  return fd;
}


static int open_writer(ip_sched_t *s, int dirfd, const char *path, int flags,
                       mode_t mode) {
  int64_t poll_ns = FIFO_POLL_FIRST_NS;
  for (;;) {
    int fd = ip__real.openat(dirfd, path, flags | O_NONBLOCK, mode);
    if (fd >= 0)
      return make_blocking(fd);
    if (errno != ENXIO)
      return -errno;
    int r = nap(s, &poll_ns);
    if (r < 0)
      return r;
  }
}


/* 1 when a writer has opened the FIFO that fd reads (it may have gone
 * since), 0 when none has yet, -errno when tee() cannot tell.  scratch is
 * an empty non-blocking pipe. */
static int writer_came(int fd, const int scratch[2]) {
  ssize_t n = tee(fd, scratch[1], 1, SPLICE_F_NONBLOCK);
  if (n > 0 || (n < 0 && errno == EAGAIN))
    return 1; /* data, or a writer and no data */
  if (n < 0)
    return -errno;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return ip__real.poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}


static int open_reader(ip_sched_t *s, int dirfd, const char *path, int flags,
                       mode_t mode) {
  int fd = ip__real.openat(dirfd, path, flags | O_NONBLOCK, mode);
  if (fd < 0)
    return -errno;
  int scratch[2];
  if (ip__real.pipe2(scratch, O_NONBLOCK | O_CLOEXEC) < 0) {
    /* No fds for the check: wait in the kernel, as without the hook. */
    ip__real.close(fd);
    fd = ip__real.openat(dirfd, path, flags, mode);
    return fd >= 0 ? fd : -errno;
  }
  /* Out of the program's way while other coroutines run (fdtable.c). */
  scratch[0] = ip__fd_move_internal(scratch[0]);
  scratch[1] = ip__fd_move_internal(scratch[1]);
  int64_t poll_ns = FIFO_POLL_FIRST_NS;
  int r;
  while ((r = writer_came(fd, scratch)) == 0 && (r = nap(s, &poll_ns)) == 0)
    ;
  IP_SAVE_ERRNO({
    ip__real.close(scratch[0]);
    ip__real.close(scratch[1]);
  });
  /* tee() refusing (a FIFO replaced by something else since the check)
   * ends the wait: the fd is open, as a real open of it would be. */
  if (r < 0 && r != -EINTR && r != -ECANCELED && r != -ETIMEDOUT)
    r = 1;
  if (r < 0) {
    ip__real.close(fd);
    return r;
  }
  return make_blocking(fd);
}


int ip__fifo_open(int dirfd, const char *path, int flags, mode_t mode,
                  int *result) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || !may_block_on_fifo(dirfd, path, flags))
    return 0;
  *result = (flags & O_ACCMODE) == O_WRONLY
                ? open_writer(s, dirfd, path, flags, mode)
                : open_reader(s, dirfd, path, flags, mode);
  return 1;
}
