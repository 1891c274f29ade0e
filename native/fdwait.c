/* fdwait.c: coroutines waiting for file descriptors, per scheduler.
 *
 * Facts: without the preloaded hooks the library cannot see close(), dup2()
 * or a reused fd number; an fd left in an epoll set survives in the kernel
 * as long as any duplicate of its file description is open, and a batch of
 * events returned by one epoll_wait may describe an fd that a coroutine woken
 * earlier in the same batch has already closed and reopened.
 * Consequences: a registration must not outlive the waits that need it, and
 * an event must be matched to the registration that produced it.
 * Solution: an fd is in the epoll set (level-triggered) exactly while at
 * least one coroutine waits on it, with the union of their events; the
 * epoll data carries the fd and a generation that is bumped whenever the
 * registration is removed, so a stale event is recognised and dropped.  A
 * wait checks readiness with poll() before it registers, so it never waits
 * for an edge that already passed.  Spurious wake-ups are harmless: every
 * caller retries its operation. */
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>

#include "internal.h"

struct ip_fdwait {
  int fd;
  uint32_t gen;       /* generation of the current registration */
  uint32_t in_epoll;  /* EPOLL* events registered; 0 when not registered */
  ip_link_t waiters;  /* ip_waiter_t.link */
};

typedef struct ip_waiter {
  ip_link_t link;
  ip_coro_t *co;
  uint64_t gen;
  int events; /* INTERPOSE_READABLE | INTERPOSE_WRITABLE */
} ip_waiter_t;


static ip_fdwait_t *entry_get(ip_fdmap_t *m, int fd) {
  size_t i = (size_t) fd;
  if (i >= m->cap) {
    size_t cap = m->cap ? m->cap : 64;
    while (cap <= i)
      cap *= 2;
    ip_fdwait_t **slots = realloc(m->slots, cap * sizeof(*slots));
    if (slots == NULL)
      return NULL;
    for (size_t j = m->cap; j < cap; j++)
      slots[j] = NULL;
    m->slots = slots;
    m->cap = cap;
  }
  if (m->slots[i] == NULL) {
    ip_fdwait_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
      return NULL;
    e->fd = fd;
    ip__queue_init(&e->waiters);
    m->slots[i] = e;
  }
  return m->slots[i];
}


void ip__fdmap_free(ip_fdmap_t *m) {
  for (size_t i = 0; i < m->cap; i++)
    free(m->slots[i]);
  free(m->slots);
  m->slots = NULL;
  m->cap = 0;
}


static uint32_t epoll_events_of(int events) {
  uint32_t ev = 0;
  if (events & INTERPOSE_READABLE)
    ev |= EPOLLIN | EPOLLRDHUP;
  if (events & INTERPOSE_WRITABLE)
    ev |= EPOLLOUT;
  return ev;
}


static uint32_t wanted_events(const ip_fdwait_t *e) {
  int events = 0;
  for (const ip_link_t *l = e->waiters.next; l != &e->waiters; l = l->next)
    events |= container_of(l, ip_waiter_t, link)->events;
  return epoll_events_of(events);
}


/* Brings the epoll registration in line with the waiters; 0 or -errno. */
static int sync_registration(ip_sched_t *s, ip_fdwait_t *e) {
  uint32_t want = wanted_events(e);
  if (want == e->in_epoll)
    return 0;
  if (want == 0) {
    /* The fd may be closed already (EBADF) or gone from the set because
     * its description was closed (ENOENT): either way it is unregistered. */
    IP_SAVE_ERRNO(epoll_ctl(s->epfd, EPOLL_CTL_DEL, e->fd, NULL));
    e->in_epoll = 0;
    e->gen++;
    return 0;
  }
  struct epoll_event ev = {
      .events = want,
      .data.u64 = ((uint64_t) e->gen << 32) | (uint32_t) e->fd,
  };
  int op = e->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(s->epfd, op, e->fd, &ev) != 0)
    return -errno;
  e->in_epoll = want;
  return 0;
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
    n = poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  if (p.revents & POLLNVAL)
    return -EBADF;
  return n > 0;
}


int ip__fd_wait(ip_sched_t *s, int fd, int events, int64_t timeout_ns) {
  int r = ready_now(fd, events);
  if (r != 0)
    return r < 0 ? r : 0;
  ip_fdwait_t *e = entry_get(&s->fds, fd);
  if (e == NULL)
    return -ENOMEM;
  ip_coro_t *co = s->current;
  ip_waiter_t w = {.co = co, .gen = ip__prepare(co), .events = events};
  ip__queue_push_back(&e->waiters, &w.link);
  r = sync_registration(s, e);
  if (r == 0)
    r = ip__park(s, timeout_ns);
  /* Re-read: the map may have grown while this coroutine was parked. */
  e = s->fds.slots[fd];
  ip__queue_remove(&w.link);
  int r2 = sync_registration(s, e);
  return r < 0 ? r : (r2 < 0 ? r2 : r);
}


void ip__fd_dispatch(ip_sched_t *s, uint64_t data, uint32_t events) {
  size_t fd = (uint32_t) data;
  uint32_t gen = (uint32_t) (data >> 32);
  if (fd >= s->fds.cap || s->fds.slots[fd] == NULL)
    return;
  ip_fdwait_t *e = s->fds.slots[fd];
  if (e->gen != gen || e->in_epoll == 0)
    return; /* stale: the registration that produced it is gone */
  int ready = 0;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    ready |= INTERPOSE_READABLE;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
    ready |= INTERPOSE_WRITABLE;
  for (ip_link_t *l = e->waiters.next; l != &e->waiters; l = l->next) {
    ip_waiter_t *w = container_of(l, ip_waiter_t, link);
    if (w->events & ready)
      ip__wake(w->co, w->gen, 0, 0);
  }
}
