/* hooks_state.c: fcntl, fcntl64, ioctl(FIONBIO), setsockopt (the socket
 * timeouts), close, close_range, closefrom, dup, dup2, dup3, and
 * posix_spawn_file_actions_adddup2.
 *
 * These keep the fd table true and the user's view intact: F_GETFL hides
 * the O_NONBLOCK we set, F_SETFL and FIONBIO record the user's wish without
 * ever clearing ours, duplicates share their file description's state, and
 * close/dup2/dup3 unregister the fd and wake its waiters with EBADF before
 * the real call (see fdtable.c for why before).  Every command the hooks do
 * not need passes through untouched; getsockopt is not hooked at all,
 * because the kernel keeps the timeouts we are told about. */
#include <limits.h>
#include <linux/close_range.h>
#include <stdarg.h>
#include <stdint.h>

#include <string.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)


static int user_sees_blocking(int fd) {
  uint32_t st = ip__fd_state(fd);
  return (st & IP_FD_OURS_NB) && !(st & IP_FD_USER_NB);
}


static void note_dup(int oldfd, int newfd) {
  IP_SAVE_ERRNO({
    ip__fd_forget(newfd);
    ip__fd_copy(oldfd, newfd);
  });
}


/* The shared body of fcntl and fcntl64, which differ only in the real
 * function (CPython is built with _FILE_OFFSET_BITS=64 and calls fcntl64). */
static int do_fcntl(int (*real)(int, int, ...), int fd, int cmd, void *arg) {
  if (!ip__hooks_armed())
    return real(fd, cmd, arg);
  int r;
  switch (cmd) {
  case F_GETFL:
    r = real(fd, cmd);
    if (r >= 0 && user_sees_blocking(fd))
      r &= ~O_NONBLOCK;
    return r;
  case F_SETFL: {
    int flags = (int) (intptr_t) arg;
    uint32_t st = ip__fd_state(fd);
    int keep = (st & IP_FD_OURS_NB) ? O_NONBLOCK : 0;
    r = real(fd, cmd, flags | keep);
    if (r == 0)
      IP_SAVE_ERRNO(ip__fd_set_user_nonblock(fd, (flags & O_NONBLOCK) != 0));
    return r;
  }
  case F_DUPFD:
  case F_DUPFD_CLOEXEC:
    r = real(fd, cmd, arg);
    if (r >= 0)
      note_dup(fd, r);
    return r;
  default:
    return real(fd, cmd, arg);
  }
}


int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return do_fcntl(ip__real.fcntl, fd, cmd, arg);
}


int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return do_fcntl(ip__real.fcntl64, fd, cmd, arg);
}


int ioctl(int fd, unsigned long request, ...) {
  va_list ap;
  va_start(ap, request);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (request != FIONBIO || arg == NULL || !ip__hooks_armed())
    return ip__real.ioctl(fd, request, arg);
  /* The kernel reads the int at any alignment, and callers rely on it:
   * CPython 3.13's fcntl.ioctl passes a misaligned buffer (UBSan in the
   * 3.13 root, docs/platforms.md). */
  int on;
  memcpy(&on, arg, sizeof(on));
  uint32_t st = ip__fd_state(fd);
  int one = 1;
  /* Ours stays non-blocking in the kernel whatever the user asks. */
  int r = ip__real.ioctl(fd, FIONBIO, (st & IP_FD_OURS_NB) ? &one : arg);
  if (r == 0)
    IP_SAVE_ERRNO(ip__fd_set_user_nonblock(fd, on != 0));
  return r;
}


int setsockopt(int fd, int level, int name, const void *value,
               socklen_t len) {
  int r = ip__real.setsockopt(fd, level, name, value, len);
  if (r != 0 || level != SOL_SOCKET || !ip__hooks_armed() ||
      (name != SO_RCVTIMEO && name != SO_SNDTIMEO) ||
      len < sizeof(struct timeval))
    return r;
  if (ip__fd_state(fd) & IP_FD_KNOWN) {
    IP_SAVE_ERRNO(ip__fd_set_timeout(fd, name, ip__ns_from_sockopt(value)));
  }
  return r;
}


int close(int fd) {
  if (ip__hooks_armed())
    ip__fd_forget(fd);
  return ip__real.close(fd);
}


/* os.closerange and subprocess close fds in bulk with these. */
int close_range(unsigned int first, unsigned int last, int flags) {
  if (ip__hooks_armed() && !(flags & CLOSE_RANGE_CLOEXEC) && first <= last)
    ip__fd_forget_range(first, last);
  return ip__real.close_range(first, last, flags);
}


void closefrom(int lowfd) {
  if (ip__hooks_armed() && lowfd >= 0)
    ip__fd_forget_range((unsigned) lowfd, UINT_MAX);
  ip__real.closefrom(lowfd);
}


int dup(int fd) {
  int r = ip__real.dup(fd);
  if (r >= 0 && ip__hooks_armed())
    note_dup(fd, r);
  return r;
}


/* A socket we made non-blocking, dup2'ed onto a standard fd in a forked
 * child or in a posix_spawn file action, is on its way to another program
 * (subprocess's stdin=sock, inetd-style servers), which must find it
 * blocking as the user created it.  O_NONBLOCK is cleared on the shared
 * file description; the processes that keep using it through the hooks are
 * unaffected, because hooked socket calls carry MSG_DONTWAIT. */
static void hand_over_blocking(int oldfd, int newfd) {
  if (ip__forked_child && newfd <= 2 && ip__fd_hand_over(oldfd))
    ip__fd_forget(newfd); /* reclassified, as foreign, on next use */
}


int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *actions,
                                     int fd, int newfd) {
  if (ip__hooks_armed() && newfd >= 0 && newfd <= 2 && fd != newfd)
    IP_SAVE_ERRNO(ip__fd_hand_over(fd));
  return ip__real.posix_spawn_file_actions_adddup2(actions, fd, newfd);
}


/* dup2 and dup3 close newfd first, unless oldfd is not open: then they
 * fail with EBADF and newfd must stay as it is. */
static int do_dup2(int oldfd, int newfd, int flags, int three) {
  if (ip__hooks_armed() && oldfd != newfd &&
      ip__real.fcntl(oldfd, F_GETFD) >= 0)
    ip__fd_forget(newfd);
  int r = three ? ip__real.dup3(oldfd, newfd, flags)
                : ip__real.dup2(oldfd, newfd);
  if (r >= 0 && oldfd != newfd && ip__hooks_armed())
    IP_SAVE_ERRNO({
      ip__fd_copy(oldfd, newfd);
      hand_over_blocking(oldfd, newfd);
    });
  return r;
}


int dup2(int oldfd, int newfd) { return do_dup2(oldfd, newfd, 0, 0); }


int dup3(int oldfd, int newfd, int flags) {
  return do_dup2(oldfd, newfd, flags, 1);
}

#pragma GCC visibility pop
