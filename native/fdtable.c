/* fdtable.c: what the hooks know about each file descriptor, and the
 * coroutines waiting on it.
 *
 * The table.  Indexed by fd, growable and readable from any thread: a fixed
 * top-level array of chunk pointers (covering every fd Linux can hand out,
 * up to 2^30) whose chunks are allocated on first use and published with a
 * CAS; entries never move or disappear, so a hook can read an entry's state
 * bits without a lock.  The rest of an entry is guarded by its own spinlock.
 *
 * Registration: facts.  An fd in an epoll set stays there until every
 * duplicate of its open file description is closed, so after dup(fd);
 * close(fd) the registration can no longer be removed by number, and events
 * keep arriving for it.  One epoll_wait returns a batch of events; a
 * coroutine woken early in the batch may close an fd and get the same number
 * back from socket() before the hub reaches a later event that describes the
 * old file.  Consequences: remove a registration before the real close or
 * dup2, never after, and match every event against the registration that
 * produced it.  Solution: ip__fd_forget runs in the close/dup2/dup3 hooks
 * before the real call and removes the registration (EPOLL_CTL_DEL), wakes
 * the waiters with EBADF and bumps the entry's generation; the epoll data of
 * a registration carries fd and generation, and the hub drops an event whose
 * generation is not the entry's current one.
 *
 * Two registration modes.  A TRACKED fd (created by a hook, so its close is
 * seen) is registered once, edge-triggered for every event, and stays
 * registered until it is closed: no epoll_ctl per wait.  Waiting on an edge
 * is safe only after the call returned EAGAIN (or after looking with poll()
 * with the waiter already registered): then any new readiness is a new
 * edge.  Any other fd (inherited, opened by code the hooks do not see) may
 * be closed behind our back, so it is registered level-triggered only while
 * someone waits on it and removed when the last waiter leaves.
 *
 * Waiters of any scheduler may wait on one fd; the registration lives in
 * one scheduler's epoll set.  A waiter from another scheduler moves it
 * there and wakes the previous scheduler's waiters, who retry their calls
 * (a spurious wake-up is harmless: every waiter retries its call). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define CHUNK_SHIFT IP_FD_CHUNK_SHIFT
#define CHUNK_SIZE (1u << CHUNK_SHIFT)
#define TOP_SIZE IP_FD_TOP_SIZE /* CHUNK_SIZE * TOP_SIZE = 2^30 fds */
#define chunks ip__fd_chunks

ip_fd_t *_Atomic ip__fd_chunks[TOP_SIZE];
static _Atomic uint64_t next_desc = 1;


/* The waiters of e, set up on first use (the entry lock is held): a fresh
 * chunk is left all zero, so that its pages cost nothing until used. */
static ip_link_t *waiters_of(ip_fd_t *e) {
  if (e->waiters.next == NULL)
    ip__queue_init(&e->waiters);
  return &e->waiters;
}


/* ip__fd_entry (internal.h) when the fd's chunk is not there yet. */
ip_fd_t *ip__fd_entry_slow(int fd) {
  if (fd < 0 || (unsigned) fd >= CHUNK_SIZE * TOP_SIZE)
    return NULL;
  unsigned top = (unsigned) fd >> CHUNK_SHIFT;
  ip_fd_t *chunk = atomic_load_explicit(&chunks[top], memory_order_acquire);
  if (chunk == NULL) {
    /* All zero is a valid entry: unknown state, clear lock (C11 leaves
     * the clear representation of atomic_flag unspecified; every ABI we
     * build for uses 0), no waiters list yet. */
    ip_fd_t *fresh = calloc(CHUNK_SIZE, sizeof(*fresh));
    if (fresh == NULL)
      return NULL;
    if (atomic_compare_exchange_strong(&chunks[top], &chunk, fresh))
      chunk = fresh;
    else
      free(fresh); /* another thread published first */
  }
  return &chunk[(unsigned) fd & (CHUNK_SIZE - 1)];
}


static void lock(ip_fd_t *e) {
  while (atomic_flag_test_and_set_explicit(&e->lock, memory_order_acquire))
    sched_yield();
}


static void unlock(ip_fd_t *e) {
  atomic_flag_clear_explicit(&e->lock, memory_order_release);
}


static void classify_socket(int fd, ip_fd_t *e, uint32_t *state) {
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
      type == SOCK_STREAM)
    *state |= IP_FD_STREAM;
  struct timeval tv;
  len = sizeof(tv);
  if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0)
    atomic_store(&e->rcv_timeout_ns, ip__ns_from_sockopt(&tv));
  len = sizeof(tv);
  if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0)
    atomic_store(&e->snd_timeout_ns, ip__ns_from_sockopt(&tv));
}


/* The size limits of an anonymous-inode fd that reads and writes check
 * before they block (fs/eventfd.c, fs/timerfd.c, fs/signalfd.c). */
static uint32_t anon_limits(int fd) {
  char path[32], target[32];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof(target) - 1);
  if (n <= 0)
    return 0;
  target[n] = '\0';
  if (strcmp(target, "anon_inode:[eventfd]") == 0 ||
      strcmp(target, "anon_inode:[timerfd]") == 0)
    return IP_FD_MIN8;
  return strcmp(target, "anon_inode:[signalfd]") == 0 ? IP_FD_MIN128 : 0;
}


/* The access mode's refusals: a read-only description refuses writes, a
 * write-only one reads, an O_PATH one both. */
static uint32_t access_limits(int flags) {
  if (flags & O_PATH)
    return IP_FD_NO_READ | IP_FD_NO_WRITE;
  switch (flags & O_ACCMODE) {
  case O_RDONLY:
    return IP_FD_NO_WRITE;
  case O_WRONLY:
    return IP_FD_NO_READ;
  default:
    return 0;
  }
}


/* First sight of an fd no hook created: learn its kind, the user's
 * O_NONBLOCK and what the kernel refuses at once.  Never changes the fd. */
static uint32_t classify(int fd, ip_fd_t *e) {
  struct stat st;
  int saved = errno;
  if (fstat(fd, &st) != 0) {
    errno = saved;
    return 0; /* not open: the real call reports EBADF */
  }
  uint32_t state = IP_FD_KNOWN;
  if (S_ISSOCK(st.st_mode)) {
    state |= IP_FD_SOCKET;
    classify_socket(fd, e, &state);
  } else if (S_ISFIFO(st.st_mode)) {
    state |= IP_FD_PIPE;
  } else if (S_ISCHR(st.st_mode)) {
    state |= IP_FD_CHR;
  } else if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) ||
             S_ISBLK(st.st_mode)) {
    state |= IP_FD_REG;
  } else {
    state |= IP_FD_POLL | anon_limits(fd);
  }
  int flags = ip__real.fcntl(fd, F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK))
    state |= IP_FD_USER_NB;
  if (flags >= 0 && !(state & IP_FD_SOCKET))
    state |= access_limits(flags);
  errno = saved;
  atomic_store(&e->desc, atomic_fetch_add(&next_desc, 1));
  atomic_store(&e->state, state);
  return state;
}


uint32_t ip__fd_state(int fd) {
  return ip__fd_entry_state(fd, ip__fd_entry(fd));
}


uint32_t ip__fd_entry_state(int fd, ip_fd_t *e) {
  if (e == NULL)
    return 0;
  uint32_t state = atomic_load_explicit(&e->state, memory_order_acquire);
  if (state & IP_FD_KNOWN)
    return state;
  return classify(fd, e);
}


void ip__fd_created(int fd, uint32_t state) {
  ip_fd_t *e = ip__fd_entry(fd);
  if (e == NULL)
    return;
  atomic_store(&e->rcv_timeout_ns, 0);
  atomic_store(&e->snd_timeout_ns, 0);
  atomic_store(&e->rd_drained, NULL);
  atomic_store(&e->desc, atomic_fetch_add(&next_desc, 1));
  atomic_store(&e->state, state | IP_FD_KNOWN | IP_FD_TRACKED);
}


/* Removes the registration; the entry lock is held. */
static void unregister(ip_fd_t *e, int fd) {
  atomic_store(&e->rd_drained, NULL);
  if (e->reg_sched == NULL)
    return;
  IP_SAVE_ERRNO(epoll_ctl(e->reg_sched->epfd, EPOLL_CTL_DEL, fd, NULL));
  e->reg_sched = NULL;
  e->reg_events = 0;
  e->gen++;
}


static void wake_waiters(ip_fd_t *e, int ready, int result) {
  ip_link_t *q = waiters_of(e);
  for (ip_link_t *l = q->next; l != q; l = l->next) {
    ip_waiter_t *w = container_of(l, ip_waiter_t, link);
    if (w->events & ready)
      ip__wake(w->co, w->gen, result, 0);
  }
}


void ip__fd_forget(int fd) {
  ip_fd_t *e = ip__fd_entry(fd);
  if (e == NULL)
    return;
  lock(e);
  unregister(e, fd);
  wake_waiters(e, INTERPOSE_READABLE | INTERPOSE_WRITABLE, -EBADF);
  atomic_store(&e->state, 0);
  unlock(e);
}


void ip__fd_forget_range(unsigned first, unsigned last) {
  for (unsigned top = first >> CHUNK_SHIFT; top < TOP_SIZE; top++) {
    ip_fd_t *chunk = atomic_load(&chunks[top]);
    if (chunk == NULL)
      continue;
    unsigned base = top << CHUNK_SHIFT;
    for (unsigned i = 0; i < CHUNK_SIZE; i++) {
      unsigned fd = base + i;
      if (fd < first)
        continue;
      if (fd > last)
        return;
      if (atomic_load(&chunk[i].state) != 0) /* waiters imply a known fd */
        ip__fd_forget((int) fd);
    }
  }
}


void ip__fd_copy(int oldfd, int newfd) {
  ip_fd_t *from = ip__fd_entry(oldfd);
  ip_fd_t *to = ip__fd_entry(newfd);
  if (from == NULL || to == NULL)
    return;
  uint32_t state = ip__fd_state(oldfd);
  if (state == 0) {
    atomic_store(&to->state, 0);
    return;
  }
  atomic_fetch_or(&from->state, IP_FD_SHARED);
  atomic_store(&to->rcv_timeout_ns, atomic_load(&from->rcv_timeout_ns));
  atomic_store(&to->snd_timeout_ns, atomic_load(&from->snd_timeout_ns));
  atomic_store(&to->desc, atomic_load(&from->desc));
  atomic_store(&to->rd_drained, NULL);
  atomic_store(&to->state, state | IP_FD_TRACKED | IP_FD_SHARED);
}


typedef struct desc_update {
  uint64_t desc;
  int what; /* 0: user O_NONBLOCK; SO_RCVTIMEO / SO_SNDTIMEO; -1: not ours */
  int64_t value;
} desc_update_t;


static void apply_update(ip_fd_t *e, const desc_update_t *u) {
  if (u->what == -1)
    atomic_fetch_and(&e->state, ~IP_FD_OURS_NB);
  else if (u->what == 0 && u->value)
    atomic_fetch_or(&e->state, IP_FD_USER_NB);
  else if (u->what == 0)
    atomic_fetch_and(&e->state, ~IP_FD_USER_NB);
  else if (u->what == SO_RCVTIMEO)
    atomic_store(&e->rcv_timeout_ns, u->value);
  else
    atomic_store(&e->snd_timeout_ns, u->value);
}


static void update_if_same_desc(ip_fd_t *e, int fd, void *arg) {
  (void) fd;
  const desc_update_t *u = arg;
  if ((atomic_load(&e->state) & IP_FD_KNOWN) && atomic_load(&e->desc) == u->desc)
    apply_update(e, u);
}


static void each_entry(void (*fn)(ip_fd_t *e, int fd, void *arg), void *arg);


/* Applies an update to fd and, when the description was duplicated, to
 * every fd sharing it (a table scan: dups are rare). */
static void update_desc(int fd, int what, int64_t value) {
  ip_fd_t *e = ip__fd_entry(fd);
  if (e == NULL)
    return;
  uint32_t state = atomic_load(&e->state);
  if (!(state & IP_FD_KNOWN))
    return;
  desc_update_t u = {atomic_load(&e->desc), what, value};
  if (state & IP_FD_SHARED)
    each_entry(update_if_same_desc, &u);
  else
    apply_update(e, &u);
}


void ip__fd_set_user_nonblock(int fd, int on) { update_desc(fd, 0, on != 0); }


void ip__fd_set_timeout(int fd, int optname, int64_t ns) {
  update_desc(fd, optname, ns);
}


int ip__fd_hand_over(int fd) {
  uint32_t st = ip__fd_state(fd);
  if (!(st & IP_FD_OURS_NB) || (st & IP_FD_USER_NB))
    return 0;
  int fl = ip__real.fcntl(fd, F_GETFL);
  if (fl < 0 || ip__real.fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
    return 0;
  update_desc(fd, -1, 0);
  return 1;
}


static uint32_t epoll_events_of(int events) {
  uint32_t ev = 0;
  if (events & INTERPOSE_READABLE)
    ev |= EPOLLIN | EPOLLRDHUP;
  if (events & INTERPOSE_WRITABLE)
    ev |= EPOLLOUT;
  return ev;
}


static uint32_t wanted(const ip_fd_t *e, uint32_t state) {
  if (state & IP_FD_TRACKED)
    return EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  int events = 0;
  const ip_link_t *q = e->waiters.next ? &e->waiters : NULL;
  for (const ip_link_t *l = q ? q->next : NULL; l != q; l = l->next)
    events |= container_of(l, ip_waiter_t, link)->events;
  return events ? epoll_events_of(events) : 0;
}


/* Brings the registration in line with the waiters, in scheduler s;
 * the entry lock is held.  0 or -errno. */
static int sync_registration(ip_sched_t *s, ip_fd_t *e, int fd) {
  uint32_t state = atomic_load(&e->state);
  uint32_t want = wanted(e, state);
  if (e->reg_sched != NULL && e->reg_sched != s) {
    /* Another thread's epoll holds it: move it here.  Its waiters retry. */
    unregister(e, fd);
    wake_waiters(e, INTERPOSE_READABLE | INTERPOSE_WRITABLE, 0);
  }
  if (want == e->reg_events && (want == 0 || e->reg_sched == s))
    return 0;
  if (want == 0) {
    unregister(e, fd);
    return 0;
  }
  struct epoll_event ev = {
      .events = want,
      .data.u64 = ((uint64_t) e->gen << 32) | (uint32_t) fd,
  };
  int op = e->reg_sched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(s->epfd, op, fd, &ev) != 0) {
    int err = errno;
    if (err == EEXIST) { /* a stale registration from a reused number */
      if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
        goto registered;
    }
    return -err;
  }
registered:
  e->reg_sched = s;
  e->reg_events = want;
  return 0;
}


int ip__fd_watch(ip_sched_t *s, ip_waiter_t *w) {
  ip_fd_t *e = ip__fd_entry(w->fd);
  if (e == NULL)
    return w->fd < 0 ? -EBADF : -ENOMEM;
  if (!(ip__fd_entry_state(w->fd, e) & IP_FD_KNOWN))
    return -EBADF;
  lock(e);
  ip__queue_push_back(waiters_of(e), &w->link);
  int r = sync_registration(s, e, w->fd);
  if (r < 0)
    ip__queue_remove(&w->link);
  unlock(e);
  return r;
}


void ip__fd_unwatch(ip_sched_t *s, ip_waiter_t *w) {
  ip_fd_t *e = ip__fd_entry(w->fd);
  lock(e);
  ip__queue_remove(&w->link);
  if (e->reg_sched == s)
    sync_registration(s, e, w->fd);
  unlock(e);
}


/* 1 when ready now, 0 when not, -EBADF for a closed fd. */
static int ready_now(int fd, int events) {
  struct pollfd p = {.fd = fd, .events = 0};
  if (events & INTERPOSE_READABLE)
    p.events |= POLLIN;
  if (events & INTERPOSE_WRITABLE)
    p.events |= POLLOUT;
  int n;
  do
    n = ip__real.poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  if (p.revents & POLLNVAL)
    return -EBADF;
  return n > 0;
}


int ip__fd_wait(ip_sched_t *s, int fd, int events, int64_t timeout_ns,
                int check_first) {
  ip_coro_t *co = s->current;
  ip_waiter_t w = {.co = co, .gen = ip__prepare(co), .fd = fd,
                   .events = events};
  int r = ip__fd_watch(s, &w);
  if (r < 0)
    return r;
  if (check_first)
    r = ready_now(fd, events);
  if (r == 0)
    r = ip__park(s, timeout_ns);
  else if (r > 0)
    r = 0;
  ip__fd_unwatch(s, &w);
  return r;
}


void ip__fd_dispatch(ip_sched_t *s, uint64_t data, uint32_t events) {
  int fd = (int) (uint32_t) data;
  uint32_t gen = (uint32_t) (data >> 32);
  ip_fd_t *e = ip__fd_entry(fd);
  if (e == NULL)
    return;
  /* Any read event ends the drained hint, a stale one too (harmless); the
   * ones that a read may answer at once with no further edge end it for
   * the life of the fd. */
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    atomic_store_explicit(&e->rd_drained, NULL, memory_order_relaxed);
  if ((events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) &&
      (atomic_load(&e->state) & IP_FD_KNOWN))
    atomic_fetch_or(&e->state, IP_FD_RD_FINAL);
  lock(e);
  if (e->reg_sched == s && e->gen == gen) { /* else stale: drop it */
    int ready = 0;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
      ready |= INTERPOSE_READABLE;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
      ready |= INTERPOSE_WRITABLE;
    wake_waiters(e, ready, 0);
  }
  unlock(e);
}


static void each_entry(void (*fn)(ip_fd_t *e, int fd, void *arg), void *arg) {
  for (unsigned top = 0; top < TOP_SIZE; top++) {
    ip_fd_t *chunk = atomic_load(&chunks[top]);
    if (chunk == NULL)
      continue;
    for (unsigned i = 0; i < CHUNK_SIZE; i++)
      fn(&chunk[i], (int) ((top << CHUNK_SHIFT) | i), arg);
  }
}


static void drop_if_in(ip_fd_t *e, int fd, void *arg) {
  (void) fd;
  /* Only s's own thread registers fds in s, and a registered fd is known:
   * an unknown entry cannot be in s (and its page need not be touched). */
  if (atomic_load(&e->state) == 0)
    return;
  lock(e);
  if (e->reg_sched == arg) {
    e->reg_sched = NULL; /* the epoll set itself is being closed */
    e->reg_events = 0;
    e->gen++;
  }
  unlock(e);
}


void ip__fd_drop_sched(ip_sched_t *s) {
  each_entry(drop_if_in, s);
}


static void reset_after_fork(ip_fd_t *e, int fd, void *arg) {
  (void) fd;
  (void) arg;
  /* Only this thread exists: no lock can be held by anyone alive, and
   * every waiter belonged to a coroutine that is gone.  Untouched entries
   * stay untouched. */
  if (atomic_load(&e->state) == 0 && e->reg_sched == NULL &&
      e->waiters.next == NULL)
    return;
  atomic_flag_clear(&e->lock);
  atomic_store(&e->rd_drained, NULL);
  e->reg_sched = NULL;
  e->reg_events = 0;
  e->gen++;
  e->waiters.next = e->waiters.prev = NULL;
}


void ip__fd_after_fork_child(void) {
  each_entry(reset_after_fork, NULL);
}


/* ---- the runtime's own fds ---------------------------------------------
 * Facts: the kernel hands out the lowest free fd number, and the runtime
 * opens its fds (each scheduler's epoll set and eventfd, the signal wakeup
 * pipe) when it starts, before the program's code runs.  Programs and
 * protocols pick low numbers on purpose: socket activation (LISTEN_FDS)
 * puts its sockets at 3, 4, ...; shell-like code dup2()s onto 3 or 4; and
 * a program's output may include the numbers it got (the first os.pipe()
 * is (3, 4) under plain Python).  Consequences: at low numbers the
 * runtime's fds shift every fd of the program to other numbers than plain
 * Python gives it, and a dup2() onto one of them silently replaces the
 * hub's epoll set (the next epoll_wait fails, and the process aborts).
 * Solution: every fd the runtime opens for itself moves, with
 * F_DUPFD_CLOEXEC, to the lowest free number at or above a floor: 256, or
 * a quarter of a soft RLIMIT_NOFILE below 1024 (a floor near the limit
 * would leave the program fewer fds before EMFILE than without us; the
 * count is the same either way).  Like bash's fds at 255 and above, they
 * are then out of the way of anything but a program that closes every fd
 * in a range. */
#include <sys/resource.h>

#define INTERNAL_FD_FLOOR 256


int interpose_fd_internal_floor(void) {
  static atomic_int floor = -1;
  int f = atomic_load(&floor);
  if (f >= 0)
    return f;
  struct rlimit rl;
  f = INTERNAL_FD_FLOOR;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < 4 * INTERNAL_FD_FLOOR)
    f = rl.rlim_cur >= 64 ? (int) (rl.rlim_cur / 4) : 0;
  atomic_store(&floor, f);
  return f;
}


int ip__fd_move_internal(int fd) {
  int floor = interpose_fd_internal_floor();
  if (fd < 0 || fd >= floor)
    return fd;
  int saved = errno;
  int high = ip__real.fcntl(fd, F_DUPFD_CLOEXEC, floor);
  if (high >= 0)
    ip__real.close(fd);
  errno = saved;
  return high >= 0 ? high : fd;
}
