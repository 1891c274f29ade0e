/* coro_abi.c: the exported ABI of the coroutine and scheduler families
 * (interpose.h) that Python's scheduler drives: argument checks, the
 * thread-and-state preconditions of each call, and its result in the ABI's
 * convention around the engine's calls (sched.c).  Spawning stays with the
 * allocator in sched.c. */
#include "internal.h"

#define tls_sched ip__tls_sched


int interpose_sched_ensure(void) {
  ip_sched_t *s;
  return ip__sched_ensure(&s);
}


/* On the path of every park, with interpose_coro_prepare: a read, no
 * scheduler creation, so nothing that can fail. */
void *interpose_coro_current(void) {
  ip_sched_t *s = tls_sched;
  return s ? s->current : NULL;
}


uint64_t interpose_coro_id(void *handle) {
  return handle ? ((ip_coro_t *) handle)->id : 0;
}


/* Generations count parks from 1 and cannot reach 2^63 (one per park), so
 * they share the return value with -errno without ambiguity. */
int64_t interpose_coro_prepare(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL || s->current == NULL)
    return -ESRCH;
  return (int64_t) ip__prepare(s->current);
}


int interpose_coro_park(int64_t timeout_ns) {
  ip_sched_t *s;
  int r = ip__sched_live(&s);
  if (r < 0)
    return r;
  if (s == NULL || s->current == NULL || ip__py_tstate_attached(s))
    return -EDEADLK;
  ip__wait_note(s->current, IP_WAIT_PARK, -1, 0, NULL);
  return ip__park(s, timeout_ns);
}


int interpose_coro_unpark(void *handle, uint64_t gen, int result) {
  if (handle == NULL)
    return 0;
  return ip__wake(handle, gen, result, 0);
}


int interpose_coro_cancel(void *handle, uint64_t id) {
  ip_coro_t *co = handle;
  if (co == NULL)
    return 0;
  pthread_mutex_lock(&ip__coro_lock);
  if (co->id != id) {
    pthread_mutex_unlock(&ip__coro_lock);
    return 0;
  }
  atomic_store(&co->cancelled, 1);
  uint64_t gen = ip__park_gen(co);
  pthread_mutex_unlock(&ip__coro_lock);
  ip__wake(co, gen, -ECANCELED, 0);
  return 1;
}


int interpose_coro_set_hooks(int on) {
  ip_sched_t *s;
  int r = ip__sched_ensure(&s);
  if (r < 0)
    return r;
  int previous = s->current->hooks;
  s->current->hooks = on != 0;
  return previous;
}


int interpose_coro_shield(int delta) {
  ip_sched_t *s;
  int r = ip__sched_ensure(&s);
  if (r < 0)
    return r;
  int depth = s->current->shield + delta;
  if (depth < 0)
    return -EINVAL;
  s->current->shield = depth;
  return depth;
}


int interpose_coro_set_deadline(int64_t deadline_ns, int64_t *previous_out) {
  ip_sched_t *s;
  int r = ip__sched_ensure(&s);
  *previous_out = IP_NO_TIMEOUT;
  if (r < 0)
    return r;
  *previous_out = s->current->deadline_ns;
  s->current->deadline_ns = deadline_ns < 0 ? IP_NO_TIMEOUT : deadline_ns;
  return 0;
}


int interpose_wait_fd(int fd, int events, int64_t timeout_ns) {
  ip_sched_t *s;
  int r = ip__sched_live(&s);
  if (r < 0)
    return r;
  if (s == NULL || s->current == NULL || ip__py_tstate_attached(s))
    return -EDEADLK;
  if (fd < 0)
    return -EBADF;
  if (events & ~(INTERPOSE_READABLE | INTERPOSE_WRITABLE) || events == 0)
    return -EINVAL;
  return ip__fd_wait(s, fd, events, timeout_ns, 1);
}


int interpose_sched_stats(interpose_stats_t *out) {
  ip_sched_t *s = tls_sched;
  if (s == NULL)
    return -ESRCH;
  *out = s->stats;
  return 0;
}


int interpose_sched_interrupt_main(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL || s->current == s->main)
    return 0;
  return ip__wake(s->main, ip__park_gen(s->main), -EINTR, 1);
}


int interpose_sched_runnable(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL)
    return 0;
  return !ip__queue_empty(&s->runq) || !ip__queue_empty(&s->round) ||
         !ip__queue_empty(&s->yieldq) || s->run_next != NULL ||
         atomic_load(&s->remote_pending) != 0;
}




int interpose_coro_run_next(void *handle) {
  ip_coro_t *co = handle;
  ip_sched_t *s = tls_sched;
  if (s == NULL || co->sched != s || co->state != IP_CORO_RUNNABLE ||
      co == s->run_next || s->current == NULL)
    return -EINVAL;
  if (s->run_next != NULL)
    return -EBUSY; /* it stays queued, FIFO */
  ip__queue_remove(&co->run_link);
  co->resumed_ns = s->current->resumed_ns;
  s->run_next = co;
  return 0;
}
