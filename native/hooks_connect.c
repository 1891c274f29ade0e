/* hooks_connect.c: connect, and listen for the sake of connect.
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
 * description someone else may share, so its connect blocks the thread.
 *
 * Loopback connects to a listener of this process wait for room in its
 * accept queue.  Facts: the kernel drops a SYN (or the final ACK) while a
 * listener's accept queue is full (more than its backlog), and the client
 * retries only after 1, 3, 7, 15 s; socketserver and http.server listen
 * with a backlog of 5.  With threads, the OS runs the accepting thread as
 * soon as a connection is queued.  Here the accepting coroutine may share
 * its OS thread with hundreds of client coroutines that each connect in
 * one round of the run queue before it runs again, and on a loaded machine
 * the kernel may finish loopback handshakes later, in ksoftirqd, where no
 * poll right after connect can see them.  So: listen records the
 * listening socket's port; a connect to 127.0.0.0/8 or ::1 on that port
 * first asks the listener's queue length (TCP_INFO on a listening socket
 * reports the queue in tcpi_unacked and the backlog in tcpi_sacked) and,
 * while it is full, parks for a short while (the listener's coroutine
 * runs meanwhile) and looks again, for at most MAX_ROOM_WAIT_NS, after
 * which it connects anyway, as a thread would.  The backlog the program chose is left as it is. */
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "internal.h"

#define LISTENERS 64
#define MAX_ROOM_WAIT_NS IP_NS_PER_SEC /* then connect like a thread would */

/* Listening TCP sockets of this process by port: fd + 1 (0: free slot).
 * Entries go stale when the fd is closed; every use re-checks the fd. */
static struct {
  atomic_int fd1;
  _Atomic unsigned port;
} listeners[LISTENERS];


/* The port of an AF_INET/AF_INET6 socket address, or 0. */
static unsigned port_of(const struct sockaddr *a, socklen_t len) {
  if (a->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
    return ntohs(((const struct sockaddr_in *) a)->sin_port);
  if (a->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
    return ntohs(((const struct sockaddr_in6 *) a)->sin6_port);
  return 0;
}


static int is_loopback(const struct sockaddr *a, socklen_t len) {
  if (a->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
    return (ntohl(((const struct sockaddr_in *) a)->sin_addr.s_addr) >> 24) ==
           127;
  if (a->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    const struct in6_addr *x = &((const struct sockaddr_in6 *) a)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(x) ||
           (IN6_IS_ADDR_V4MAPPED(x) && x->s6_addr[12] == 127);
  }
  return 0;
}


static unsigned local_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *) &ss, &len) != 0)
    return 0;
  return port_of((struct sockaddr *) &ss, len);
}


static void remember_listener(int fd) {
  unsigned port = local_port(fd);
  if (port == 0)
    return;
  for (int i = 0; i < LISTENERS; i++) {
    int fd1 = atomic_load(&listeners[i].fd1);
    int empty = 0;
    if (fd1 == fd + 1 ||
        (fd1 == 0 && atomic_compare_exchange_strong(&listeners[i].fd1, &empty,
                                                    fd + 1))) {
      atomic_store(&listeners[i].port, port);
      return;
    }
  }
}


/* 1 while the listener of this process on port has a full accept queue. */
static int listener_full(unsigned port) {
  for (int i = 0; i < LISTENERS; i++) {
    int fd1 = atomic_load(&listeners[i].fd1);
    if (fd1 == 0 || atomic_load(&listeners[i].port) != port)
      continue;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd1 - 1, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        ti.tcpi_state != TCP_LISTEN || local_port(fd1 - 1) != port) {
      atomic_compare_exchange_strong(&listeners[i].fd1, &fd1, 0); /* stale */
      continue;
    }
    return ti.tcpi_unacked > ti.tcpi_sacked; /* the kernel's own test */
  }
  return 0;
}


static int is_stream(int fd) {
  int type = 0;
  socklen_t len = sizeof(type);
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
         type == SOCK_STREAM;
}


static void wait_for_room(ip_sched_t *s, int fd, const struct sockaddr *addr,
                          socklen_t len) {
  if (!is_loopback(addr, len))
    return;
  unsigned port = port_of(addr, len);
  if (!listener_full(port) || !is_stream(fd))
    return;
  int64_t give_up = ip__now_ns() + MAX_ROOM_WAIT_NS;
  int64_t pause_ns = 50000;
  int saved = errno;
  while (listener_full(port) && ip__now_ns() < give_up) {
    ip_coro_t *co = s->current;
    ip__prepare(co);
    /* The others run, the listener's owner among them; look again after a
     * pause that grows to 2 ms (no event says "the queue has room"). */
    int r = ip__park(s, pause_ns);
    if (pause_ns < 2000000)
      pause_ns *= 2;
    if (r == -EINTR)
      co->pending_eintr = 1; /* the connect's own wait reports it */
    else if (r < 0 && r != INTERPOSE_PARK_TIMEOUT)
      break; /* cancelled or past a deadline: the connect will say so */
  }
  errno = saved;
}

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)


int listen(int fd, int backlog) {
  int r = ip__real.listen(fd, backlog);
  if (r == 0 && ip__hooks_armed())
    IP_SAVE_ERRNO(remember_listener(fd));
  return r;
}


int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  ip_sched_t *s;
  if (addr != NULL && ip__hooks_armed() && (s = ip__hook_sched()) != NULL)
    wait_for_room(s, fd, addr, len); /* also for the user's non-blocking fds */
  if (ip__io_mode(fd, &s) != IP_MODE_RETRY)
    return ip__real.connect(fd, addr, len);
  /* A blocking connect that succeeds leaves errno alone; the attempts and
   * waits below set it (EINPROGRESS, EALREADY, EISCONN) on the way. */
  int entry_errno = errno;
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
    if (r == 0 || errno == EISCONN) {
      errno = entry_errno;
      return 0;
    }
    if (errno != EALREADY && errno != EINPROGRESS)
      return -1;
  }
}

#pragma GCC visibility pop
