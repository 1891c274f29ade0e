/* libc_spy.c: preloaded right after libinterpose by tests/test_rawcall.py,
 * so that libinterpose's table of real functions (real.c, dlsym with
 * RTLD_NEXT) finds these definitions instead of libc's.  Each one counts
 * the call against its fd and forwards it to libc unchanged.
 *
 * What it tells: a data call that a hook made through libc's wrapper shows
 * up here; one it made as a direct system call (native/rawcall.h) does not.
 * A hooked call that moved data while its fd's count stayed 0 was therefore
 * made directly.  libc_spy_take(fd) returns the count and resets it (the
 * test takes it when it creates a socket, since fd numbers are reused).
 *
 * Build: cc -std=gnu11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -shared
 *        -fPIC -o libc_spy.so libc_spy.c -ldl */
#include <dlfcn.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define SPY_FDS 4096

static atomic_uint counts[SPY_FDS];


static void count(int fd) {
  if (fd >= 0 && fd < SPY_FDS)
    atomic_fetch_add(&counts[fd], 1);
}


unsigned libc_spy_take(int fd) {
  return fd >= 0 && fd < SPY_FDS ? atomic_exchange(&counts[fd], 0) : 0;
}


/* libc's definition of name, looked up once. */
#define NEXT(name)                                                            \
  static __typeof__(name) *next;                                              \
  if (next == NULL)                                                           \
    next = (__typeof__(name) *) dlsym(RTLD_NEXT, #name)


ssize_t read(int fd, void *buf, size_t len) {
  NEXT(read);
  count(fd);
  return next(fd, buf, len);
}


ssize_t readv(int fd, const struct iovec *iov, int iovcnt) {
  NEXT(readv);
  count(fd);
  return next(fd, iov, iovcnt);
}


ssize_t recv(int fd, void *buf, size_t len, int flags) {
  NEXT(recv);
  count(fd);
  return next(fd, buf, len, flags);
}


ssize_t recvfrom(int fd, void *buf, size_t len, int flags,
                 struct sockaddr *from, socklen_t *fromlen) {
  NEXT(recvfrom);
  count(fd);
  return next(fd, buf, len, flags, from, fromlen);
}


ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  NEXT(recvmsg);
  count(fd);
  return next(fd, msg, flags);
}


ssize_t write(int fd, const void *buf, size_t len) {
  NEXT(write);
  count(fd);
  return next(fd, buf, len);
}


ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
  NEXT(writev);
  count(fd);
  return next(fd, iov, iovcnt);
}


ssize_t send(int fd, const void *buf, size_t len, int flags) {
  NEXT(send);
  count(fd);
  return next(fd, buf, len, flags);
}


ssize_t sendto(int fd, const void *buf, size_t len, int flags,
               const struct sockaddr *to, socklen_t tolen) {
  NEXT(sendto);
  count(fd);
  return next(fd, buf, len, flags, to, tolen);
}


ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  NEXT(sendmsg);
  count(fd);
  return next(fd, msg, flags);
}
