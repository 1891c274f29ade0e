/* rawcall_test.c: checks native/rawcall.h on its own, against libc.
 *
 * Every case builds the same fresh fds twice, makes one call through libc's
 * wrapper the first time and through IP_RAWCALL the second, and records
 * what the caller can observe: the result, errno (set to a sentinel before
 * the call, so a success must leave it untouched), the bytes received and
 * every out-parameter (address and its length, msg_flags, msg_controllen,
 * a passed fd).  The two records must be equal byte for byte.  The cases
 * cover each system call hooks_data.c can make directly (read, readv,
 * recvfrom, recvmsg, write, writev, sendto, sendmsg) on its success paths
 * (whole, partial, EOF, truncated datagram, ancillary data, six arguments
 * with an address) and its error paths (EAGAIN, EBADF, EFAULT, EINVAL,
 * EPIPE, ECONNRESET, ENOTCONN, ENOTSOCK, EMSGSIZE, EDESTADDRREQ, EISDIR).
 * Then ip__rawcall_result is checked at the edges of the error range
 * glibc uses ([-4095, -1]).
 *
 * A wrong register in the aarch64 asm (an argument in the wrong register, a
 * missing clobber) or a wrong errno conversion changes a record, so this
 * fails on it; tests/test_rawcall.py runs it natively and, cross-built and
 * static, under qemu-aarch64.  Prints "rawcall_test: ok <arch> <cases>"
 * and exits 0; on a difference it prints both records to stderr and exits
 * 1.
 *
 * Build: cc -std=gnu11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE
 *        -I../../native rawcall_test.c */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "rawcall.h"

#if defined(__x86_64__)
#define ARCH "x86_64"
#elif defined(__aarch64__)
#define ARCH "aarch64"
#else
#define ARCH "generic"
#endif

/* errno before every call: no call sets it, so a success must leave it. */
#define SENTINEL 12345
/* Deliberately bad arguments, read through volatile objects so that the
 * compiler's checks of libc's declarations cannot see (and refuse) them:
 * an unmapped address (the kernel reports EFAULT) and iovec counts out of
 * the kernel's range (EINVAL, before it reads a single iovec). */
static void *volatile unmapped = (void *) 8;
static volatile int iovcnt_negative = -1;
static volatile int iovcnt_over_max = IOV_MAX + 1;
#define BAD (unmapped)

typedef struct outcome {
  long ret;
  int err;
  unsigned char data[256]; /* what the case chose to record, in order */
  size_t used;
} outcome_t;


static void die(const char *what) {
  fprintf(stderr, "rawcall_test: %s: %s\n", what, strerror(errno));
  exit(2);
}


static void note(outcome_t *o, const void *p, size_t n) {
  if (o->used + n > sizeof(o->data)) {
    fprintf(stderr, "rawcall_test: a case records too much\n");
    exit(2);
  }
  memcpy(o->data + o->used, p, n);
  o->used += n;
}


static void note_int(outcome_t *o, long v) {
  note(o, &v, sizeof(v));
}

/* ---- one call, through libc's wrapper (direct 0) or made directly ----- */

static ssize_t via_read(int direct, int fd, void *buf, size_t len) {
  return direct ? IP_RAWCALL(SYS_read, fd, buf, len, 0, 0, 0)
                : read(fd, buf, len);
}


static ssize_t via_readv(int direct, int fd, const struct iovec *iov,
                         int iovcnt) {
  return direct ? IP_RAWCALL(SYS_readv, fd, iov, iovcnt, 0, 0, 0)
                : readv(fd, iov, iovcnt);
}


static ssize_t via_write(int direct, int fd, const void *buf, size_t len) {
  return direct ? IP_RAWCALL(SYS_write, fd, buf, len, 0, 0, 0)
                : write(fd, buf, len);
}


static ssize_t via_writev(int direct, int fd, const struct iovec *iov,
                          int iovcnt) {
  return direct ? IP_RAWCALL(SYS_writev, fd, iov, iovcnt, 0, 0, 0)
                : writev(fd, iov, iovcnt);
}


static ssize_t via_recvfrom(int direct, int fd, void *buf, size_t len,
                            int flags, struct sockaddr *from,
                            socklen_t *fromlen) {
  return direct ? IP_RAWCALL(SYS_recvfrom, fd, buf, len, flags, from, fromlen)
                : recvfrom(fd, buf, len, flags, from, fromlen);
}


static ssize_t via_sendto(int direct, int fd, const void *buf, size_t len,
                          int flags, const struct sockaddr *to,
                          socklen_t tolen) {
  return direct ? IP_RAWCALL(SYS_sendto, fd, buf, len, flags, to, tolen)
                : sendto(fd, buf, len, flags, to, tolen);
}


static ssize_t via_recvmsg(int direct, int fd, struct msghdr *msg,
                           int flags) {
  return direct ? IP_RAWCALL(SYS_recvmsg, fd, msg, flags, 0, 0, 0)
                : recvmsg(fd, msg, flags);
}


static ssize_t via_sendmsg(int direct, int fd, const struct msghdr *msg,
                           int flags) {
  return direct ? IP_RAWCALL(SYS_sendmsg, fd, msg, flags, 0, 0, 0)
                : sendmsg(fd, msg, flags);
}


/* The result and errno of expr, errno preset to SENTINEL. */
#define CALL(o, expr)                                                         \
  do {                                                                        \
    errno = SENTINEL;                                                         \
    (o)->ret = (long) (expr);                                                 \
    (o)->err = errno;                                                         \
  } while (0)

/* ---- fds ----------------------------------------------------------------- */

static void make_pipe(int p[2], int flags) {
  if (pipe2(p, flags) < 0)
    die("pipe2");
}


static void make_pair(int type, int sv[2]) {
  if (socketpair(AF_UNIX, type, 0, sv) < 0)
    die("socketpair");
}


static void write_all(int fd, const char *s) {
  if (write(fd, s, strlen(s)) != (ssize_t) strlen(s))
    die("write");
}


/* An abstract unix address; the same bytes in both runs of a case, and
 * free again once its socket is closed. */
static socklen_t abstract_addr(struct sockaddr_un *a, const char *tag) {
  memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1,
                   "interpose-rawcall-%d-%s", (int) getpid(), tag);
  return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + n);
}


static int bound_dgram(const char *tag) {
  struct sockaddr_un a;
  socklen_t len = abstract_addr(&a, tag);
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *) &a, len) < 0)
    die("bind unix dgram");
  return fd;
}


/* A connected TCP pair on loopback: p[0] the client, p[1] the accepted. */
static void tcp_pair(int p[2]) {
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  if (l < 0 || bind(l, (struct sockaddr *) &a, len) < 0 || listen(l, 1) < 0 ||
      getsockname(l, (struct sockaddr *) &a, &len) < 0)
    die("listen");
  p[0] = socket(AF_INET, SOCK_STREAM, 0);
  if (p[0] < 0 || connect(p[0], (struct sockaddr *) &a, len) < 0)
    die("connect");
  p[1] = accept(l, NULL, NULL);
  if (p[1] < 0)
    die("accept");
  close(l);
}


static void close2(int p[2]) {
  close(p[0]);
  close(p[1]);
}

/* ---- read and readv -------------------------------------------------- */

static void read_partial(int d, outcome_t *o) {
  int p[2];
  char buf[64] = {0};
  make_pipe(p, 0);
  write_all(p[1], "hello");
  CALL(o, via_read(d, p[0], buf, sizeof(buf)));
  note(o, buf, sizeof(buf));
  close2(p);
}


static void read_eof(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  make_pipe(p, 0);
  close(p[1]);
  CALL(o, via_read(d, p[0], buf, sizeof(buf)));
  close(p[0]);
}


static void read_eagain(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  make_pipe(p, O_NONBLOCK);
  CALL(o, via_read(d, p[0], buf, sizeof(buf)));
  close2(p);
}


static void read_ebadf_write_end(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  make_pipe(p, 0);
  CALL(o, via_read(d, p[1], buf, sizeof(buf)));
  close2(p);
}


static void read_ebadf_closed(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  make_pipe(p, 0);
  close2(p);
  CALL(o, via_read(d, p[0], buf, sizeof(buf)));
}


static void read_efault(int d, outcome_t *o) {
  int p[2];
  make_pipe(p, 0);
  write_all(p[1], "x");
  CALL(o, via_read(d, p[0], BAD, 1));
  close2(p);
}


static void read_eisdir(int d, outcome_t *o) {
  char buf[8];
  int fd = open("/", O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    die("open /");
  CALL(o, via_read(d, fd, buf, sizeof(buf)));
  close(fd);
}


static void read_socket_econnreset(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  tcp_pair(p);
  write_all(p[0], "unread"); /* unread data at close: the kernel sends RST */
  struct linger lg = {1, 0};
  if (setsockopt(p[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
    die("SO_LINGER");
  close(p[1]);
  CALL(o, via_read(d, p[0], buf, sizeof(buf)));
  close(p[0]);
}


static void readv_partial(int d, outcome_t *o) {
  int p[2];
  char a[3] = {0}, b[4] = {0}, c[8] = {0};
  struct iovec iov[3] = {{a, sizeof(a)}, {b, sizeof(b)}, {c, sizeof(c)}};
  make_pipe(p, 0);
  write_all(p[1], "abcdefghi");
  CALL(o, via_readv(d, p[0], iov, 3));
  note(o, a, sizeof(a));
  note(o, b, sizeof(b));
  note(o, c, sizeof(c));
  close2(p);
}


static void readv_einval(int d, outcome_t *o) {
  int p[2];
  char a[3];
  struct iovec iov[1] = {{a, sizeof(a)}};
  make_pipe(p, 0);
  CALL(o, via_readv(d, p[0], iov, iovcnt_negative));
  close2(p);
}


static void readv_efault(int d, outcome_t *o) {
  int p[2];
  make_pipe(p, 0);
  write_all(p[1], "x");
  CALL(o, via_readv(d, p[0], BAD, 2));
  close2(p);
}

/* ---- write and writev ------------------------------------------------ */

static void write_whole(int d, outcome_t *o) {
  int p[2];
  char buf[16] = {0};
  make_pipe(p, 0);
  CALL(o, via_write(d, p[1], "hello", 5));
  note_int(o, read(p[0], buf, sizeof(buf)));
  note(o, buf, sizeof(buf));
  close2(p);
}


static void write_partial_then_eagain(int d, outcome_t *o) {
  int p[2];
  static char big[1 << 20];
  make_pipe(p, O_NONBLOCK);
  CALL(o, via_write(d, p[1], big, sizeof(big))); /* what the pipe takes */
  outcome_t again = {0};
  CALL(&again, via_write(d, p[1], big, sizeof(big)));
  note_int(o, again.ret);
  note_int(o, again.err);
  close2(p);
}


static void write_epipe(int d, outcome_t *o) {
  int p[2];
  make_pipe(p, 0);
  close(p[0]);
  CALL(o, via_write(d, p[1], "x", 1));
  close(p[1]);
}


static void write_ebadf_read_end(int d, outcome_t *o) {
  int p[2];
  make_pipe(p, 0);
  CALL(o, via_write(d, p[0], "x", 1));
  close2(p);
}


static void write_efault(int d, outcome_t *o) {
  int p[2];
  make_pipe(p, 0);
  CALL(o, via_write(d, p[1], BAD, 1));
  close2(p);
}


static void writev_whole(int d, outcome_t *o) {
  int p[2];
  char buf[16] = {0};
  struct iovec iov[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
  make_pipe(p, 0);
  CALL(o, via_writev(d, p[1], iov, 3));
  note_int(o, read(p[0], buf, sizeof(buf)));
  note(o, buf, sizeof(buf));
  close2(p);
}


static void writev_einval(int d, outcome_t *o) {
  int p[2];
  struct iovec iov[1] = {{"ab", 2}};
  make_pipe(p, 0);
  CALL(o, via_writev(d, p[1], iov, iovcnt_over_max));
  close2(p);
}


static void writev_efault(int d, outcome_t *o) {
  int p[2];
  /* The bad buffer first: after a good one, qemu-user (lock_iovec) writes
   * the good part and returns its count where the kernel fails. */
  struct iovec iov[2] = {{BAD, 2}, {"ab", 2}};
  make_pipe(p, 0);
  CALL(o, via_writev(d, p[1], iov, 2));
  close2(p);
}

/* ---- recvfrom and sendto --------------------------------------------- */

/* Six arguments: the address in the fifth and sixth (x4, x5 on aarch64). */
static void sendto_recvfrom_with_address(int d, outcome_t *o) {
  struct sockaddr_un to, from;
  socklen_t tolen = abstract_addr(&to, "to");
  int r = bound_dgram("to"), s = bound_dgram("from");
  char buf[32] = {0};
  CALL(o, via_sendto(d, s, "datagram", 8, 0, (struct sockaddr *) &to, tolen));
  outcome_t rcv = {0};
  memset(&from, 0, sizeof(from));
  socklen_t fromlen = sizeof(from);
  CALL(&rcv, via_recvfrom(d, r, buf, sizeof(buf), 0,
                          (struct sockaddr *) &from, &fromlen));
  note_int(o, rcv.ret);
  note_int(o, rcv.err);
  note(o, buf, sizeof(buf));
  note_int(o, fromlen);
  note(o, &from, sizeof(from));
  close(r);
  close(s);
}


static void recvfrom_truncated_datagram(int d, outcome_t *o) {
  int sv[2];
  char buf[4] = {0};
  make_pair(SOCK_DGRAM, sv);
  write_all(sv[0], "a longer datagram");
  CALL(o, via_recvfrom(d, sv[1], buf, sizeof(buf), MSG_TRUNC, NULL, NULL));
  note(o, buf, sizeof(buf));
  close2(sv);
}


static void recvfrom_peek_then_read(int d, outcome_t *o) {
  int sv[2];
  char buf[8] = {0};
  make_pair(SOCK_STREAM, sv);
  write_all(sv[0], "peek");
  CALL(o, via_recvfrom(d, sv[1], buf, sizeof(buf), MSG_PEEK, NULL, NULL));
  note_int(o, via_recvfrom(d, sv[1], buf + 4, 4, 0, NULL, NULL));
  note(o, buf, sizeof(buf));
  close2(sv);
}


static void recvfrom_eof(int d, outcome_t *o) {
  int sv[2];
  char buf[8];
  make_pair(SOCK_STREAM, sv);
  shutdown(sv[0], SHUT_WR);
  CALL(o, via_recvfrom(d, sv[1], buf, sizeof(buf), MSG_DONTWAIT, NULL, NULL));
  close2(sv);
}


static void recvfrom_eagain_dontwait(int d, outcome_t *o) {
  int sv[2];
  char buf[8];
  make_pair(SOCK_STREAM, sv);
  CALL(o, via_recvfrom(d, sv[1], buf, sizeof(buf), MSG_DONTWAIT, NULL, NULL));
  close2(sv);
}


static void recvfrom_econnreset(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  tcp_pair(p);
  write_all(p[0], "unread");
  struct linger lg = {1, 0};
  if (setsockopt(p[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
    die("SO_LINGER");
  close(p[1]);
  CALL(o, via_recvfrom(d, p[0], buf, sizeof(buf), MSG_DONTWAIT, NULL, NULL));
  close(p[0]);
}


static void recvfrom_enotconn(int d, outcome_t *o) {
  char buf[8];
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CALL(o, via_recvfrom(d, fd, buf, sizeof(buf), MSG_DONTWAIT, NULL, NULL));
  close(fd);
}


static void recvfrom_enotsock(int d, outcome_t *o) {
  int p[2];
  char buf[8];
  make_pipe(p, 0);
  CALL(o, via_recvfrom(d, p[0], buf, sizeof(buf), MSG_DONTWAIT, NULL, NULL));
  close2(p);
}


static void recvfrom_efault_address_length(int d, outcome_t *o) {
  int r = bound_dgram("to"), s = bound_dgram("from");
  struct sockaddr_un to, from;
  socklen_t tolen = abstract_addr(&to, "to");
  char buf[8];
  if (sendto(s, "x", 1, 0, (struct sockaddr *) &to, tolen) != 1)
    die("sendto");
  CALL(o, via_recvfrom(d, r, buf, sizeof(buf), 0, (struct sockaddr *) &from,
                       BAD));
  close(r);
  close(s);
}


static void recvfrom_ebadf(int d, outcome_t *o) {
  char buf[8];
  CALL(o, via_recvfrom(d, -1, buf, sizeof(buf), 0, NULL, NULL));
}


static void sendto_epipe(int d, outcome_t *o) {
  int sv[2];
  make_pair(SOCK_STREAM, sv);
  close(sv[1]);
  CALL(o, via_sendto(d, sv[0], "x", 1, MSG_DONTWAIT, NULL, 0));
  close(sv[0]);
}


static void sendto_emsgsize(int d, outcome_t *o) {
  static char big[70000];
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  CALL(o, via_sendto(d, fd, big, sizeof(big), 0, (struct sockaddr *) &a,
                     sizeof(a)));
  close(fd);
}


static void sendto_edestaddrreq(int d, outcome_t *o) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  CALL(o, via_sendto(d, fd, "x", 1, 0, NULL, 0));
  close(fd);
}


static void sendto_einval_address_length(int d, outcome_t *o) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9)};
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  CALL(o, via_sendto(d, fd, "x", 1, 0, (struct sockaddr *) &a, 3));
  close(fd);
}


static void sendto_efault(int d, outcome_t *o) {
  int sv[2];
  make_pair(SOCK_STREAM, sv);
  CALL(o, via_sendto(d, sv[0], BAD, 4, 0, NULL, 0));
  close2(sv);
}

/* ---- recvmsg and sendmsg --------------------------------------------- */

/* An fd passed with SCM_RIGHTS, and what came out of recvmsg: the count,
 * the bytes, msg_flags, msg_controllen and whether the received fd is the
 * same file (fd numbers are equal in both runs, but compare the file). */
static void sendmsg_recvmsg_rights(int d, outcome_t *o, socklen_t room) {
  int sv[2], p[2];
  make_pair(SOCK_STREAM, sv);
  make_pipe(p, 0);
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } out, in;
  memset(&out, 0, sizeof(out));
  memset(&in, 0, sizeof(in));
  struct iovec siov[2] = {{"rig", 3}, {"hts", 3}};
  struct msghdr sm = {.msg_iov = siov, .msg_iovlen = 2,
                      .msg_control = out.buf, .msg_controllen = sizeof(out)};
  struct cmsghdr *c = CMSG_FIRSTHDR(&sm);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &p[0], sizeof(int));
  CALL(o, via_sendmsg(d, sv[0], &sm, 0));
  char a[2] = {0}, b[8] = {0};
  struct iovec riov[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
  struct msghdr rm = {.msg_iov = riov, .msg_iovlen = 2,
                      .msg_control = in.buf, .msg_controllen = room};
  outcome_t rcv = {0};
  CALL(&rcv, via_recvmsg(d, sv[1], &rm, MSG_CMSG_CLOEXEC));
  note_int(o, rcv.ret);
  note_int(o, rcv.err);
  note(o, a, sizeof(a));
  note(o, b, sizeof(b));
  note_int(o, rm.msg_flags);
  note_int(o, (long) rm.msg_controllen);
  struct cmsghdr *got = rm.msg_controllen ? CMSG_FIRSTHDR(&rm) : NULL;
  int same = 0;
  if (got != NULL && got->cmsg_type == SCM_RIGHTS) {
    int fd;
    struct stat s1, s2;
    memcpy(&fd, CMSG_DATA(got), sizeof(int));
    same = fstat(fd, &s1) == 0 && fstat(p[0], &s2) == 0 &&
           s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev;
    close(fd);
  }
  note_int(o, same);
  close2(p);
  close2(sv);
}


static void sendmsg_recvmsg_fd_passed(int d, outcome_t *o) {
  sendmsg_recvmsg_rights(d, o, CMSG_SPACE(sizeof(int)));
}


static void recvmsg_control_truncated(int d, outcome_t *o) {
  sendmsg_recvmsg_rights(d, o, 0); /* MSG_CTRUNC, the fd is dropped */
}


static void sendmsg_to_address(int d, outcome_t *o) {
  struct sockaddr_un to, from;
  socklen_t tolen = abstract_addr(&to, "to");
  int r = bound_dgram("to"), s = bound_dgram("from");
  struct iovec iov = {"addressed", 9};
  struct msghdr sm = {.msg_name = &to, .msg_namelen = tolen, .msg_iov = &iov,
                      .msg_iovlen = 1};
  CALL(o, via_sendmsg(d, s, &sm, 0));
  char buf[16] = {0};
  struct iovec riov = {buf, sizeof(buf)};
  memset(&from, 0, sizeof(from));
  struct msghdr rm = {.msg_name = &from, .msg_namelen = sizeof(from),
                      .msg_iov = &riov, .msg_iovlen = 1};
  outcome_t rcv = {0};
  CALL(&rcv, via_recvmsg(d, r, &rm, 0));
  note_int(o, rcv.ret);
  note_int(o, rcv.err);
  note(o, buf, sizeof(buf));
  note_int(o, rm.msg_namelen);
  note(o, &from, sizeof(from));
  close(r);
  close(s);
}


static void sendmsg_ebadf_in_rights(int d, outcome_t *o) {
  int sv[2];
  make_pair(SOCK_STREAM, sv);
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } out;
  memset(&out, 0, sizeof(out));
  struct iovec iov = {"x", 1};
  struct msghdr sm = {.msg_iov = &iov, .msg_iovlen = 1,
                      .msg_control = out.buf, .msg_controllen = sizeof(out)};
  struct cmsghdr *c = CMSG_FIRSTHDR(&sm);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  int bad = -1;
  memcpy(CMSG_DATA(c), &bad, sizeof(int));
  CALL(o, via_sendmsg(d, sv[0], &sm, 0));
  close2(sv);
}


static void recvmsg_eagain_dontwait(int d, outcome_t *o) {
  int sv[2];
  char buf[8];
  struct iovec iov = {buf, sizeof(buf)};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  make_pair(SOCK_STREAM, sv);
  CALL(o, via_recvmsg(d, sv[1], &m, MSG_DONTWAIT));
  close2(sv);
}


static void recvmsg_waitall_after_eof(int d, outcome_t *o) {
  int sv[2];
  char buf[16] = {0};
  struct iovec iov = {buf, sizeof(buf)};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  make_pair(SOCK_STREAM, sv);
  write_all(sv[0], "short");
  shutdown(sv[0], SHUT_WR);
  CALL(o, via_recvmsg(d, sv[1], &m, MSG_WAITALL)); /* partial at EOF */
  note(o, buf, sizeof(buf));
  close2(sv);
}


static void recvmsg_efault(int d, outcome_t *o) {
  int sv[2];
  make_pair(SOCK_STREAM, sv);
  write_all(sv[0], "x");
  CALL(o, via_recvmsg(d, sv[1], BAD, 0));
  close2(sv);
}


static void sendmsg_epipe_after_reset(int d, outcome_t *o) {
  int p[2];
  tcp_pair(p);
  struct linger lg = {1, 0};
  if (setsockopt(p[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
    die("SO_LINGER");
  close(p[1]);
  struct iovec iov = {"x", 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  CALL(o, via_sendmsg(d, p[0], &m, MSG_DONTWAIT)); /* ECONNRESET */
  outcome_t again = {0};
  CALL(&again, via_sendmsg(d, p[0], &m, MSG_DONTWAIT)); /* then EPIPE */
  note_int(o, again.ret);
  note_int(o, again.err);
  close(p[0]);
}

/* ---- the table --------------------------------------------------------- */

/* want: the errno libc's call must leave (SENTINEL: it succeeds), so that a
 * case cannot pass by exercising some other path than its name says. */
typedef struct rcase {
  const char *name;
  void (*run)(int direct, outcome_t *o);
  int want;
} rcase_t;

#define CASE(fn, want) {#fn, fn, want}
static const rcase_t CASES[] = {
    CASE(read_partial, SENTINEL),
    CASE(read_eof, SENTINEL),
    CASE(read_eagain, EAGAIN),
    CASE(read_ebadf_write_end, EBADF),
    CASE(read_ebadf_closed, EBADF),
    CASE(read_efault, EFAULT),
    CASE(read_eisdir, EISDIR),
    CASE(read_socket_econnreset, ECONNRESET),
    CASE(readv_partial, SENTINEL),
    CASE(readv_einval, EINVAL),
    CASE(readv_efault, EFAULT),
    CASE(write_whole, SENTINEL),
    CASE(write_partial_then_eagain, SENTINEL),
    CASE(write_epipe, EPIPE),
    CASE(write_ebadf_read_end, EBADF),
    CASE(write_efault, EFAULT),
    CASE(writev_whole, SENTINEL),
    CASE(writev_einval, EINVAL),
    CASE(writev_efault, EFAULT),
    CASE(sendto_recvfrom_with_address, SENTINEL),
    CASE(recvfrom_truncated_datagram, SENTINEL),
    CASE(recvfrom_peek_then_read, SENTINEL),
    CASE(recvfrom_eof, SENTINEL),
    CASE(recvfrom_eagain_dontwait, EAGAIN),
    CASE(recvfrom_econnreset, ECONNRESET),
    CASE(recvfrom_enotconn, ENOTCONN),
    CASE(recvfrom_enotsock, ENOTSOCK),
    CASE(recvfrom_efault_address_length, EFAULT),
    CASE(recvfrom_ebadf, EBADF),
    CASE(sendto_epipe, EPIPE),
    CASE(sendto_emsgsize, EMSGSIZE),
    CASE(sendto_edestaddrreq, EDESTADDRREQ),
    CASE(sendto_einval_address_length, EINVAL),
    CASE(sendto_efault, EFAULT),
    CASE(sendmsg_recvmsg_fd_passed, SENTINEL),
    CASE(recvmsg_control_truncated, SENTINEL),
    CASE(sendmsg_to_address, SENTINEL),
    CASE(sendmsg_ebadf_in_rights, EBADF),
    CASE(recvmsg_eagain_dontwait, EAGAIN),
    CASE(recvmsg_waitall_after_eof, SENTINEL),
    CASE(recvmsg_efault, EFAULT),
    CASE(sendmsg_epipe_after_reset, ECONNRESET),
};


static void print_outcome(const char *how, const outcome_t *o) {
  fprintf(stderr, "  %s: ret %ld errno %d (%s), recorded", how, o->ret,
          o->err, o->err == SENTINEL ? "untouched" : strerror(o->err));
  for (size_t i = 0; i < o->used; i++)
    fprintf(stderr, " %02x", o->data[i]);
  fprintf(stderr, "\n");
}


/* Each case through libc, then directly; 1 if they differ. */
static int compare_case(const rcase_t *c) {
  outcome_t libc, direct;
  memset(&libc, 0, sizeof(libc));
  memset(&direct, 0, sizeof(direct));
  c->run(0, &libc);
  c->run(1, &direct);
  if (libc.err != c->want) {
    fprintf(stderr, "rawcall_test: %s: libc's call left errno %d, want %d\n",
            c->name, libc.err, c->want);
    return 1;
  }
  if (memcmp(&libc, &direct, sizeof(libc)) == 0)
    return 0;
  fprintf(stderr, "rawcall_test: %s differs\n", c->name);
  print_outcome("libc  ", &libc);
  print_outcome("direct", &direct);
  return 1;
}


/* ip__rawcall_result at the edges of glibc's error range: [-4095, -1] is
 * -errno; everything else is a result and leaves errno alone. */
static int check_conversion(void) {
  static const struct {
    long kernel;
    long ret;
    int err;
  } edges[] = {
      {0, 0, SENTINEL},       {1, 1, SENTINEL},
      {-1, -1, EPERM},        {-EAGAIN, -1, EAGAIN},
      {-4095, -1, 4095},      {-4096, -4096, SENTINEL},
      {-4097, -4097, SENTINEL}, {4096, 4096, SENTINEL},
      {0x7fffffffL, 0x7fffffffL, SENTINEL},
      {(long) (~0UL >> 1), (long) (~0UL >> 1), SENTINEL},
  };
  int bad = 0;
  for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
    errno = SENTINEL;
    long ret = ip__rawcall_result(edges[i].kernel);
    if (ret != edges[i].ret || errno != edges[i].err) {
      fprintf(stderr,
              "rawcall_test: kernel result %ld gave %ld errno %d, want %ld "
              "errno %d\n",
              edges[i].kernel, ret, errno, edges[i].ret, edges[i].err);
      bad = 1;
    }
  }
  return bad;
}


int main(void) {
  /* EPIPE must come back as an error, not end the process. */
  signal(SIGPIPE, SIG_IGN);
  /* A broken call may block for ever (a wrong system call number can turn
   * a read of an empty non-blocking pipe into a wait): end it as a
   * failure. */
  alarm(60);
  int failed = check_conversion();
  size_t n = sizeof(CASES) / sizeof(CASES[0]);
  for (size_t i = 0; i < n; i++)
    failed |= compare_case(&CASES[i]);
  if (failed)
    return 1;
  printf("rawcall_test: ok %s %zu\n", ARCH, n);
  return 0;
}
