/* hooks_sem.c: sem_wait, sem_timedwait, sem_clockwait and sem_post.
 *
 * CPython's locks are POSIX semaphores: threading.Lock, the lock inside
 * RLock/Condition/Event/queue, the thread-state lock Thread.join waits on,
 * _queue.SimpleQueue, the import lock; on 3.13 every PyMutex and PyEvent
 * waits on a semaphore through the parking lot.  CPython waits on them with
 * no thread state attached, so a coroutine that must wait for a lock can
 * park instead of blocking its thread, which a coroutine of that same
 * thread may be holding the lock for.  That makes every lock cooperative,
 * including locks created before interpose started (logging's, the ones C
 * extensions allocate).
 *
 * A waiter registers itself under the semaphore's address and parks; every
 * hooked sem_post, after the real post, wakes the first registered waiter
 * of that semaphore (from any thread: ip__wake crosses threads).  A woken
 * waiter only retries sem_trywait, so a wake that finds the token already
 * taken costs a re-park, never a lost token.  Registration happens before
 * the second sem_trywait, and sem_post loads the waiter count after the
 * real post, both behind full fences: one of the two always sees the other.
 *
 * A process-shared semaphore (sem_open, or sem_init with pshared: the
 * locks of multiprocessing) can be posted by another process, whose
 * sem_post no hook here sees: its waiters poll it instead, with a backoff
 * from 1 ms to 50 ms between tries.
 *
 * Lock waits are not cancellation points and ignore coroutine deadlines
 * (the park is shielded): CPython treats any error but EINTR/ETIMEDOUT
 * from sem_wait as fatal for the lock, and a cancelled lock wait has no way
 * to surface in Python.  The main coroutine still gets EINTR for a signal,
 * so Ctrl-C interrupts Lock.acquire, Thread.join, Event.wait, Queue.get. */
#include <semaphore.h>
#include <string.h>

#include "internal.h"

#define SHARED_POLL_FIRST_NS IP_NS_PER_MS
#define SHARED_POLL_MAX_NS 50000000

typedef struct sem_waiter {
  ip_link_t link; /* in its bucket; unlinked by the waker or the waiter */
  sem_t *sem;
  ip_coro_t *co;
  uint64_t gen;
  int linked;
} sem_waiter_t;

/* Chained buckets: any number of waiters fits, a long chain only costs a
 * longer scan.  Guarded by waiters_lock. */
#define SEM_BUCKETS 1024u
static ip_link_t buckets[SEM_BUCKETS];
static pthread_mutex_t waiters_lock = PTHREAD_MUTEX_INITIALIZER;
static int buckets_ready;
/* Registered waiters; sem_post takes the lock only when it is non-zero. */
static atomic_long waiting;


static ip_link_t *bucket_of(const sem_t *sem) {
  uintptr_t a = (uintptr_t) sem;
  return &buckets[((a >> 4) ^ (a >> 14)) % SEM_BUCKETS];
}


static void lock_waiters(void) {
  pthread_mutex_lock(&waiters_lock);
  if (!buckets_ready) {
    for (unsigned i = 0; i < SEM_BUCKETS; i++)
      ip__queue_init(&buckets[i]);
    buckets_ready = 1;
  }
}


static void enlist(sem_waiter_t *w) {
  lock_waiters();
  ip__queue_push_back(bucket_of(w->sem), &w->link);
  w->linked = 1;
  atomic_fetch_add(&waiting, 1);
  pthread_mutex_unlock(&waiters_lock);
  atomic_thread_fence(memory_order_seq_cst);
}


static void delist_locked(sem_waiter_t *w) {
  ip__queue_remove(&w->link);
  w->linked = 0;
  atomic_fetch_sub(&waiting, 1);
}


static void delist(sem_waiter_t *w) {
  lock_waiters();
  if (w->linked)
    delist_locked(w);
  pthread_mutex_unlock(&waiters_lock);
}


/* Wakes the first waiter of sem whose park the wake still reaches.  A
 * waiter that already left its park (signal, timeout) is skipped, so the
 * post is never spent on it. */
static void wake_one(sem_t *sem) {
  ip_link_t *head = bucket_of(sem);
  lock_waiters();
  for (ip_link_t *l = head->next; l != head;) {
    sem_waiter_t *w = container_of(l, sem_waiter_t, link);
    l = l->next;
    if (w->sem != sem)
      continue;
    delist_locked(w);
    if (ip__wake(w->co, w->gen, 0, 0))
      break;
  }
  pthread_mutex_unlock(&waiters_lock);
}


/* The monotonic deadline of an absolute timeout on clk; -1: none. */
static int64_t deadline_of(clockid_t clk, const struct timespec *abstime) {
  return ip__deadline_of_abs(abstime, ip__clock_ns(clk), ip__now_ns());
}


/* glibc's sem_t on 64-bit targets (struct new_sem) is { uint64_t data;
 * int private; int pad; }, private being 0 (FUTEX_PRIVATE) for sem_init
 * with pshared 0 and 128 (FUTEX_SHARED) for process-shared and sem_open
 * semaphores.  Anything but 0 counts as shared, which is only slower. */
_Static_assert(sizeof(void *) == 8, "the sem_t layout below is glibc's 64-bit one");
static int sem_process_shared(const sem_t *sem) {
  int private;
  memcpy(&private, (const char *) sem + sizeof(uint64_t), sizeof(private));
  return private != 0;
}


/* The bounds of the stack the running coroutine is on, in [*bottom, *top);
 * 0, or -1 when unknown.  A root coroutine runs on its thread's own stack,
 * asked of pthread_getattr_np once per scheduler (on the main thread glibc
 * reads /proc/self/maps for it: only at the root's first lock wait, and
 * only where the lock key needs it). */
static int running_stack(ip_sched_t *s, ip_coro_t *co, const char **bottom,
                         const char **top) {
  if (co->stack.base != NULL) {
    *bottom = co->stack.base + co->stack.guard;
    *top = ip__stack_top(&co->stack);
    return 0;
  }
  if (s->root_stack_size == 0) {
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
      return -1;
    void *low;
    size_t size;
    if (pthread_attr_getstack(&attr, &low, &size) == 0) {
      s->root_stack_bottom = low;
      s->root_stack_size = size;
    }
    pthread_attr_destroy(&attr);
  }
  if (s->root_stack_size == 0)
    return -1;
  *bottom = s->root_stack_bottom;
  *top = *bottom + s->root_stack_size;
  return 0;
}


/* Notes a lock wait for the diagnostics: the semaphore and what names its
 * lock.  When this frame is on the coroutine's own stack (not, say, on a
 * signal stack), everything between it and the stack's top is live: the
 * callers' frames, where ip__pyver_lock_key may read. */
static void note_lock_wait(ip_sched_t *s, ip_coro_t *co, sem_t *sem) {
  ip__wait_note(co, IP_WAIT_LOCK, -1, 0, sem);
  co->wait_key = sem;
  if (!ip__pyver_lock_key_reads_stack())
    return;
  const char *bottom, *top, *here = __builtin_frame_address(0);
  if (running_stack(s, co, &bottom, &top) == 0 && here >= bottom &&
      here < top)
    co->wait_key = ip__pyver_lock_key(sem, here, top);
}


/* Waits for a token like sem_timedwait on the monotonic deadline (-1:
 * forever): 0, -EINTR, -ETIMEDOUT, or sem_trywait's own -errno. */
static int park_for_token(ip_sched_t *s, sem_t *sem, int64_t deadline) {
  ip_coro_t *co = s->current;
  sem_waiter_t w = {.sem = sem, .co = co};
  int64_t poll_ns = sem_process_shared(sem) ? SHARED_POLL_FIRST_NS : -1;
  for (;;) {
    if (ip__real.sem_trywait(sem) == 0) {
      ip__diag_took(sem);
      return 0;
    }
    if (errno != EAGAIN)
      return -errno;
    int64_t timeout = -1;
    if (deadline >= 0) {
      timeout = deadline - ip__now_ns();
      if (timeout <= 0)
        return -ETIMEDOUT;
    }
    w.gen = ip__prepare(co);
    enlist(&w);
    if (ip__real.sem_trywait(sem) == 0) {
      delist(&w);
      ip__diag_took(sem);
      return 0;
    }
    if (poll_ns > 0 && (timeout < 0 || timeout > poll_ns)) {
      timeout = poll_ns;
      poll_ns = poll_ns * 2 < SHARED_POLL_MAX_NS ? poll_ns * 2 : SHARED_POLL_MAX_NS;
    }
    co->shield++;
    note_lock_wait(s, co, sem);
    int r = ip__park(s, timeout);
    co->shield--;
    delist(&w);
    if (r == -EINTR)
      return r;
    /* A timed-out park loops once more: the token may have come with the
     * deadline, and the deadline check above then reports ETIMEDOUT. */
  }
}


/* The sem_* hooks' boundary: sem_wait and friends report -1 + errno. */
static int sem_result(int r) {
  return r < 0 ? ip__fail(r) : 0;
}


/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)

int sem_wait(sem_t *sem) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.sem_wait(sem);
  return sem_result(park_for_token(s, sem, -1));
}


int sem_timedwait(sem_t *restrict sem, const struct timespec *restrict abstime) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || !ip__timespec_nsec_valid(abstime))
    return ip__real.sem_timedwait(sem, abstime);
  return sem_result(
      park_for_token(s, sem, deadline_of(CLOCK_REALTIME, abstime)));
}


int sem_clockwait(sem_t *restrict sem, clockid_t clk,
                  const struct timespec *restrict abstime) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL || !ip__timespec_nsec_valid(abstime) ||
      (clk != CLOCK_MONOTONIC && clk != CLOCK_REALTIME))
    return ip__real.sem_clockwait(sem, clk, abstime);
  return sem_result(park_for_token(s, sem, deadline_of(clk, abstime)));
}


/* Hooked only to note which coroutine holds which CPython lock (the lock
 * cycle of a deadlock report): CPython takes an uncontended lock with
 * sem_trywait.  A few loads when no scheduler runs here. */
int sem_trywait(sem_t *sem) {
  int r = ip__real.sem_trywait(sem);
  if (r == 0 && ip__hooks_armed())
    ip__diag_took(sem);
  return r;
}


int sem_post(sem_t *sem) {
  if (ip__hooks_armed())
    ip__diag_gave(sem);
  int r = ip__real.sem_post(sem);
  if (r == 0) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&waiting) > 0)
      wake_one(sem);
  }
  return r;
}

#pragma GCC visibility pop


/* In a forked child only the forking coroutine exists: every registered
 * waiter (on other coroutines' stacks, or other threads') is gone. */
void ip__sem_after_fork_child(void) {
  pthread_mutex_init(&waiters_lock, NULL);
  buckets_ready = 0;
  atomic_store(&waiting, 0);
}
