/* hooks_create.c: socket, socketpair, accept, accept4, pipe, pipe2,
 * eventfd, and the creators whose only hook duty is to forget what was
 * known about a reused fd number (open, openat, epoll_create; a blocking
 * open of a FIFO is hooks_fifo.c's).
 *
 * A socket created by a coroutine with hooks on is made non-blocking in
 * the kernel for life, while the user keeps seeing a blocking fd;
 * SOCK_NONBLOCK from the user makes it the user's own non-blocking fd,
 * passed through untouched.  Pipes and eventfds are never made
 * non-blocking: pipes are routinely handed to child processes, which would
 * inherit the flag on the shared file description, and see eventfd below. */
#include <stdarg.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)


static uint32_t socket_state(int type, int user_nonblock, int ours) {
  uint32_t st = IP_FD_SOCKET;
  if ((type & 0xf) == SOCK_STREAM)
    st |= IP_FD_STREAM;
  if (user_nonblock)
    st |= IP_FD_USER_NB;
  else if (ours)
    st |= IP_FD_OURS_NB;
  return st;
}


/* Records a new fd; ours: a hook-enabled coroutine created it. */
static void note_created(int fd, uint32_t state, int ours) {
  if (fd < 0 || !ip__hooks_armed())
    return;
  IP_SAVE_ERRNO({
    ip__fd_forget(fd);
    if (ours)
      ip__fd_created(fd, state);
  });
}


int socket(int domain, int type, int protocol) {
  int ours = ip__hook_sched() != NULL;
  int user_nb = (type & SOCK_NONBLOCK) != 0;
  int fd = ip__real.socket(domain, type | (ours ? SOCK_NONBLOCK : 0),
                           protocol);
  note_created(fd, socket_state(type, user_nb, ours), ours);
  return fd;
}


int socketpair(int domain, int type, int protocol, int sv[2]) {
  int ours = ip__hook_sched() != NULL;
  int user_nb = (type & SOCK_NONBLOCK) != 0;
  int r = ip__real.socketpair(domain, type | (ours ? SOCK_NONBLOCK : 0),
                              protocol, sv);
  if (r == 0) {
    note_created(sv[0], socket_state(type, user_nb, ours), ours);
    note_created(sv[1], socket_state(type, user_nb, ours), ours);
  }
  return r;
}


/* Whether fd is a socket that listens (SO_ACCEPTCONN); errno unchanged. */
static int listening(int fd) {
  int on = 0;
  socklen_t len = sizeof(on);
  int saved = errno;
  int r = getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len);
  errno = saved;
  return r == 0 && on;
}


/* accept4 with the blocking rules of the listening socket, and the new
 * socket made ours when a hook-enabled coroutine accepts it. */
static int do_accept(int fd, struct sockaddr *addr, socklen_t *len,
                     int flags) {
  int entry_errno = errno; /* a success leaves it, as the kernel's does */
  ip_sched_t *s;
  ip_mode_t mode = ip__io_mode(fd, &s);
  int ours = s != NULL && !(flags & SOCK_NONBLOCK);
  int real_flags = flags | (ours ? SOCK_NONBLOCK : 0);
  int nfd;
  if (mode == IP_MODE_REAL) {
    nfd = real_flags ? ip__real.accept4(fd, addr, len, real_flags)
                     : ip__real.accept(fd, addr, len);
  } else if (mode != IP_MODE_RETRY && !listening(fd)) {
    /* Not a socket, or not listening: the kernel refuses at once (ENOTSOCK,
     * EINVAL, EOPNOTSUPP), where a wait for readiness could last for ever. */
    nfd = ip__real.accept4(fd, addr, len, real_flags);
  } else if (mode != IP_MODE_RETRY) {
    /* A listening socket that is blocking in the kernel: wait until a
     * connection is queued, then accept (another process may still win
     * the race, and then this blocks the thread, as the kernel would). */
    int r = ip__block_on(s, fd, INTERPOSE_READABLE,
                         ip__io_deadline(fd, INTERPOSE_READABLE), 1);
    if (r < 0)
      return ip__fail(r);
    nfd = ip__real.accept4(fd, addr, len, real_flags);
  } else {
    int64_t deadline = ip__io_deadline(fd, INTERPOSE_READABLE);
    for (;;) {
      nfd = ip__real.accept4(fd, addr, len, real_flags);
      if (nfd >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
        break;
      int r = ip__block_on(s, fd, INTERPOSE_READABLE, deadline, 0);
      if (r < 0)
        return ip__fail(r);
    }
  }
  if (nfd >= 0) {
    errno = entry_errno;
    int stream = (ip__fd_state(fd) & IP_FD_STREAM) ? SOCK_STREAM : 0;
    note_created(nfd, socket_state(stream, (flags & SOCK_NONBLOCK) != 0, ours),
                 ours);
  }
  return nfd;
}


int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  return do_accept(fd, addr, len, 0);
}


int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  return do_accept(fd, addr, len, flags);
}


int pipe2(int fds[2], int flags) {
  int r = ip__real.pipe2(fds, flags);
  if (r == 0) {
    int ours = ip__hook_sched() != NULL;
    uint32_t st = IP_FD_PIPE | ((flags & O_NONBLOCK) ? IP_FD_USER_NB : 0);
    note_created(fds[0], st | IP_FD_NO_WRITE, ours);
    note_created(fds[1], st | IP_FD_NO_READ, ours);
  }
  return r;
}


int pipe(int fds[2]) {
  int r = ip__real.pipe(fds);
  if (r == 0) {
    int ours = ip__hook_sched() != NULL;
    note_created(fds[0], IP_FD_PIPE | IP_FD_NO_WRITE, ours);
    note_created(fds[1], IP_FD_PIPE | IP_FD_NO_READ, ours);
  }
  return r;
}


/* An eventfd stays as the user made it, like a pipe: glibc's
 * eventfd_read/eventfd_write (os.eventfd_read) use internal read/write
 * calls no hook sees, which would fail with EAGAIN on an eventfd we had
 * made non-blocking.  Hooked reads and writes wait for readiness first. */
int eventfd(unsigned int initval, int flags) {
  int fd = ip__real.eventfd(initval, flags);
  uint32_t st = IP_FD_POLL | IP_FD_MIN8 |
                ((flags & EFD_NONBLOCK) ? IP_FD_USER_NB : 0);
  note_created(fd, st, ip__hook_sched() != NULL);
  return fd;
}


/* Creators the hooks do not otherwise change: the new number's old
 * knowledge must go.  One exception: a blocking open of a FIFO, which
 * parks the coroutine until the other end is opened (hooks_fifo.c). */
#define OPEN_HOOK(name, dirfd, ...)                                           \
  {                                                                           \
    mode_t mode = 0;                                                          \
    if (flags & (O_CREAT | O_TMPFILE)) {                                      \
      va_list ap;                                                             \
      va_start(ap, flags);                                                    \
      mode = va_arg(ap, mode_t);                                              \
      va_end(ap);                                                             \
    }                                                                         \
    int fd;                                                                   \
    if (ip__fifo_open(dirfd, path, flags, mode, &fd))                         \
      fd = fd >= 0 ? fd : ip__fail(fd);                                       \
    else                                                                      \
      fd = ip__real.name(__VA_ARGS__, flags, mode);                           \
    note_created(fd, 0, 0);                                                   \
    return fd;                                                                \
  }

int open(const char *path, int flags, ...) OPEN_HOOK(open, AT_FDCWD, path)
int open64(const char *path, int flags, ...)
    OPEN_HOOK(open64, AT_FDCWD, path)
int openat(int dirfd, const char *path, int flags, ...)
    OPEN_HOOK(openat, dirfd, dirfd, path)
int openat64(int dirfd, const char *path, int flags, ...)
    OPEN_HOOK(openat64, dirfd, dirfd, path)


int epoll_create(int size) {
  int fd = ip__real.epoll_create(size);
  note_created(fd, 0, 0);
  return fd;
}


int epoll_create1(int flags) {
  int fd = ip__real.epoll_create1(flags);
  note_created(fd, 0, 0);
  return fd;
}

#pragma GCC visibility pop
