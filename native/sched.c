/* sched.c: the per-thread scheduler's running parts: the coroutine
 * allocator, park and wake, and the hub.  Each OS thread that uses
 * interpose gets a scheduler, lazily: a root coroutine (the thread's own
 * stack and thread state), a hub on a stack of its own, a FIFO run queue,
 * an epoll set, a timer heap and an eventfd through which other threads
 * wake coroutines.  Its creation, destruction and registry live in
 * sched_life.c, its signal state in signals.c, its recovery after fork in
 * fork.c (which calls each room's hook in order), the stack switches as
 * ASan sees them in asan.h, and the exported coroutine calls in
 * coro_abi.c.
 *
 * Invariants the scheduler relies on:
 *  - A coroutine is in exactly one state: RUNNING (s->current), RUNNABLE
 *    (on s->runq, s->yieldq, s->remote or in s->run_next), PARKED (switched away,
 *    waiting for a wake) or DEAD.  Only the owning thread changes the state.
 *  - Exactly one wake ends a park.  Wakes name the park generation they aim
 *    at; the first wake for the current generation wins (a CAS on
 *    park_word) and later ones return 0.  Generations only grow, also across
 *    the reuse of a coroutine struct, so a stale handle can never wake a
 *    later park.
 *  - A switch happens only with no thread state attached: parks are entered
 *    through ctypes.CDLL, which released the GIL, and a coroutine's body
 *    runs between PyEval_RestoreThread and PyThreadState_DeleteCurrent.
 *  - While a coroutine runs, CPython's gilstate slot of its OS thread holds
 *    that coroutine's own thread state, and on 3.12+ only that thread state
 *    of the thread's coroutines is flagged bound_gilstate.  run_coroutine
 *    establishes it before every switch into a coroutine
 *    (ip__gilstate_bind), so C code that calls back into Python from a
 *    coroutine (PyGILState_Ensure: ctypes callbacks, sqlite3 functions,
 *    OpenSSL callbacks after a parked read) runs on that coroutine; a
 *    coroutine's thread state is deleted on its own stack while bound, so
 *    CPython empties the slot and it never dangles.  A hook does not switch
 *    while the slot holds another thread state (a subinterpreter's).  See
 *    gilstate.c and docs/design.md.
 *  - The hub never runs Python and never parks; coroutines only switch to
 *    the hub and the hub only switches to coroutines.
 *  - Coroutine structs are never freed, only recycled (type-stable
 *    memory), so a handle held by Python or another thread stays readable.
 *    Scheduler structs likewise: the blocking monitor samples them from
 *    another thread and the guard-page handler walks them, with no lock. */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "asan.h"

#define EPOLL_BATCH 256
#define POLL_INTERVAL_NS (50 * IP_NS_PER_US)

__thread ip_sched_t *ip__tls_sched;
#define tls_sched ip__tls_sched

/* Shared with preempt.c, whose monitor thread walks every scheduler. */
pthread_mutex_t ip__coro_lock = PTHREAD_MUTEX_INITIALIZER;
ip_sched_t *ip__sched_all; /* guarded by coro_lock */
#define coro_lock ip__coro_lock
#define sched_all ip__sched_all
static ip_coro_t *coro_free; /* guarded by coro_lock */
static ip_coro_t *coro_all;  /* guarded by coro_lock; never shrinks */
static _Atomic uint64_t next_id = 1;

void ip__fatal(const char *file, int line, const char *what) {
  char msg[512];
  int n = snprintf(msg, sizeof(msg),
                   "interpose: internal invariant broken at %s:%d: %s\n",
                   file, line, what);
  ssize_t IP_UNUSED w = ip__real.write(2, msg, n > 0 ? (size_t) n : 0);
  abort();
}


/* ---- coroutine structs ------------------------------------------------ */

static ip_coro_t *coro_alloc(void) {
  pthread_mutex_lock(&coro_lock);
  ip_coro_t *co = coro_free;
  if (co != NULL)
    coro_free = co->free_next;
  pthread_mutex_unlock(&coro_lock);
  if (co == NULL) {
    /* Cache-line aligned, so that the hot fields (see ip_coro_t) span
     * four lines, not five. */
    size_t size = (sizeof(*co) + IP_CACHE_LINE - 1) &
                  ~(size_t) (IP_CACHE_LINE - 1);
    co = aligned_alloc(IP_CACHE_LINE, size);
    if (co == NULL)
      return NULL;
    memset(co, 0, size);
    pthread_mutex_lock(&coro_lock);
    co->all_next = coro_all;
    coro_all = co;
    pthread_mutex_unlock(&coro_lock);
  }
  /* The generation survives reuse; start a fresh one so wakes aimed at the
   * previous incarnation miss. */
  uint64_t gen = ip__park_gen(co) + 1;
  atomic_store(&co->park_word, gen << IP_PARK_STATE_BITS);
  co->free_next = NULL;
  co->timer.index = SIZE_MAX;
  co->deadline_ns = -1;
  atomic_store(&co->cancelled, 0);
  co->shield = 0;
  co->wake_result = 0;
  co->preemptible = 0;
  ip__wait_note(co, IP_WAIT_NONE, -1, 0, NULL);
  co->run_ns = co->max_turn_ns = co->turns = 0;
  memset(co->held, 0, sizeof(co->held));
  return co;
}


static void coro_recycle(ip_coro_t *co) {
  pthread_mutex_lock(&coro_lock);
  co->id = 0;
  co->free_next = coro_free;
  coro_free = co;
  pthread_mutex_unlock(&coro_lock);
}


static void name_copy(ip_coro_t *co, const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n >= sizeof(co->name))
    n = sizeof(co->name) - 1;
  memcpy(co->name, name ? name : "", n);
  co->name[n] = '\0';
}


/* The calling thread's own context as the root coroutine of s, running. */
void ip__coro_init_root(ip_sched_t *s) {
  ip_coro_t *root = &s->root;
  root->id = atomic_fetch_add(&next_id, 1);
  root->sched = s;
  root->tstate = ip__py.PyThreadState_Get();
  root->state = IP_CORO_RUNNING;
  root->deadline_ns = -1;
  root->timer.index = SIZE_MAX;
  root->wait_fd = -1;
  root->ready_ns = s->now_ns = ip__now_ns();
  name_copy(root, "main");
  s->main = root;
  s->current = root;
}


/* Makes a coroutine that did not survive a fork unreachable: every wake
 * aimed at it misses (a new generation, already woken) and cancel finds no
 * id.  Its thread state was deleted by CPython; its stack is unmapped. */
void ip__coro_invalidate(ip_coro_t *co) {
  uint64_t gen = ip__park_gen(co) + 1;
  atomic_store(&co->park_word, (gen << IP_PARK_STATE_BITS) | IP_PARK_WOKEN);
  co->id = 0;
  co->tstate = NULL;
  co->body = NULL; /* its reference died with the parent's objects' owner */
  if (co->stack.base != NULL)
    ip__stack_unmap(&co->stack);
}


/* In a forked child (fork.c): every coroutine struct but the survivor's
 * is invalidated without being resumed and goes back to the free list;
 * Python objects that still hold its handle then find it gone. */
void ip__coro_after_fork_child(ip_coro_t *survivor) {
  pthread_mutex_init(&coro_lock, NULL);
  coro_free = NULL;
  for (ip_coro_t *co = coro_all; co != NULL; co = co->all_next) {
    if (co == survivor)
      continue;
    ip__coro_invalidate(co);
    co->free_next = coro_free;
    coro_free = co;
  }
}


/* ---- wake and park ---------------------------------------------------- */

static void make_runnable(ip_sched_t *s, ip_coro_t *co, int front) {
  co->state = IP_CORO_RUNNABLE;
  if (front)
    ip__queue_push_front(&s->runq, &co->run_link);
  else
    ip__queue_push_back(&s->runq, &co->run_link);
}


/* The time a coroutine may run before yielding at a hooked call (see
 * ip__yield_if_due), shared by a chain of run_next hand-offs. */
#define TIME_SLICE_NS (10 * IP_NS_PER_MS)
/* ip__yield_if_due reads the clock only every YIELD_CHECK_EVERY-th hooked
 * call of a turn: a power of two, so the test is a mask. */
#define YIELD_CHECK_EVERY 64u
_Static_assert((YIELD_CHECK_EVERY & (YIELD_CHECK_EVERY - 1)) == 0,
               "YIELD_CHECK_EVERY must be a power of two");

/* A coroutine woken by the running one (a lock or event handed over, a
 * thread started) runs as soon as the waker parks, not after every other
 * runnable coroutine: the hand-off then costs two switches, not a round.
 * Like Go's runnext it inherits the waker's time slice, so a pair handing
 * work back and forth goes to the back of the queue once the slice is
 * spent.  Only the first coroutine a waker wakes takes the slot; the others
 * queue behind, in the order they were woken, so wake order stays FIFO. */
static void wake_local(ip_sched_t *s, ip_coro_t *co, int front) {
  ip_coro_t *waker = s->current;
  if (front || waker == NULL || s->run_next != NULL ||
      ip__now_ns() - waker->resumed_ns >= TIME_SLICE_NS) {
    make_runnable(s, co, front);
    return;
  }
  co->state = IP_CORO_RUNNABLE;
  co->resumed_ns = waker->resumed_ns;
  s->run_next = co;
}


static void enqueue_woken(ip_coro_t *co, int front) {
  ip_sched_t *s = co->sched;
  if (s == tls_sched) {
    wake_local(s, co, front);
    return;
  }
  pthread_mutex_lock(&s->remote_lock);
  ip__queue_push_back(&s->remote, &co->run_link);
  atomic_store(&s->remote_pending, 1);
  pthread_mutex_unlock(&s->remote_lock);
  uint64_t one = 1;
  ssize_t IP_UNUSED n = ip__real.write(s->evfd, &one, sizeof(one));
}


/* When a wake happened, for the run-queue latency.  The hub wakes in
 * batches (an epoll batch, expired timers) right after reading the clock,
 * so its wakes reuse that reading: the I/O path pays no clock read per
 * wake.  Coroutines and other threads read the clock. */
static int64_t wake_time(ip_sched_t *s) {
  if (s == tls_sched && s->current == NULL)
    return s->now_ns;
  return ip__now_ns();
}


int ip__wake(ip_coro_t *co, uint64_t gen, int result, int front) {
  uint64_t w = atomic_load(&co->park_word);
  for (;;) {
    unsigned st = ip__park_state(w);
    if ((w >> IP_PARK_STATE_BITS) != gen || st == IP_PARK_WOKEN ||
        st == IP_PARK_CLAIMED)
      return 0;
    uint64_t claimed = (gen << IP_PARK_STATE_BITS) | IP_PARK_CLAIMED;
    if (atomic_compare_exchange_weak(&co->park_word, &w, claimed)) {
      co->wake_result = result;
      atomic_store(&co->park_word, (gen << IP_PARK_STATE_BITS) | IP_PARK_WOKEN);
      if (st == IP_PARK_SLEEP) {
        co->ready_ns = wake_time(co->sched);
        enqueue_woken(co, front);
      }
      return 1;
    }
  }
}


uint64_t ip__prepare(ip_coro_t *co) {
  uint64_t gen = ip__park_gen(co) + 1;
  atomic_store(&co->park_word, gen << IP_PARK_STATE_BITS);
  return gen;
}


/* The blocking monitor reads the switch count, the running coroutine and
 * the number of live coroutines from another thread: they are stored
 * atomically. */
static void bump_switches(ip_sched_t *s) {
  __atomic_store_n(&s->stats.switches, s->stats.switches + 1, __ATOMIC_RELAXED);
}


/* dying: the coroutine will never be resumed (its fake stack goes).
 * errno belongs to the OS thread, and while this coroutine is away the hub
 * (draining its eventfd ends in EAGAIN) and the other coroutines change
 * it: the coroutine gets its own back, as an OS thread keeps its errno
 * while others run. */
static void switch_to_hub(ip_sched_t *s, ip_coro_t *co, int dying) {
  int own_errno = errno;
  bump_switches(s);
  san_leave(s, dying ? NULL : &co->san_fake, NULL);
  ip__switch(&co->sp, s->hub_sp);
  san_arrive(co->san_fake);
  errno = own_errno;
}


/* Waits out a waker on another thread that has claimed the park but not
 * yet published its result; the window is a few instructions. */
static int claimed_result(ip_coro_t *co) {
  while (ip__park_state(atomic_load(&co->park_word)) == IP_PARK_CLAIMED)
    sched_yield();
  return co->wake_result;
}


/* A park with no timeout and no deadline (every blocking socket call
 * without SO_RCVTIMEO, the echo server's whole hot path) arms nothing and
 * reads no clock. */
static int arm_timer(ip_sched_t *s, ip_coro_t *co, int64_t timeout_ns,
                     int *timer_result) {
  int64_t dl = co->shield ? -1 : co->deadline_ns;
  if (timeout_ns < 0 && dl < 0)
    return 0;
  int64_t now = ip__now_ns();
  int64_t own = ip__deadline_of(now, timeout_ns); /* beyond INT64_MAX: none */
  if (dl >= 0 && dl <= now)
    return -ETIMEDOUT;
  if (own >= 0 && (dl < 0 || own < dl)) {
    co->timer.deadline_ns = own;
    *timer_result = INTERPOSE_PARK_TIMEOUT;
  } else if (dl >= 0) {
    co->timer.deadline_ns = dl;
    *timer_result = -ETIMEDOUT;
  } else {
    return 0;
  }
  return ip__heap_insert(&s->timers, &co->timer);
}


int ip__park(ip_sched_t *s, int64_t timeout_ns) {
  ip_coro_t *co = s->current;
  IP_CHECK(co != NULL && co->state == IP_CORO_RUNNING);
  uint64_t w = atomic_load(&co->park_word);
  uint64_t gen = w >> IP_PARK_STATE_BITS;
  int result;
  if (atomic_load(&co->cancelled) && !co->shield)
    return -ECANCELED;
  if (co->pending_eintr) {
    co->pending_eintr = 0;
    return -EINTR;
  }
  if (ip__park_state(w) != IP_PARK_ARMED)
    return ip__park_state(w) == IP_PARK_SLEEP ? -EDEADLK : claimed_result(co);
  int r = arm_timer(s, co, timeout_ns, &co->timer_result);
  if (r < 0)
    return r;
  if (!atomic_compare_exchange_strong(
          &co->park_word, &w, (gen << IP_PARK_STATE_BITS) | IP_PARK_SLEEP)) {
    result = claimed_result(co);
  } else {
    co->state = IP_CORO_PARKED;
    s->stats.parks++;
    switch_to_hub(s, co, 0);
    s = co->sched; /* a fork may have replaced the scheduler's insides */
    result = co->wake_result;
    if (co == s->main)
      ip__signals_main_resumed(&s->sig);
  }
  if (ip__timer_armed(&co->timer))
    ip__heap_remove(&s->timers, &co->timer);
  if (result == INTERPOSE_PARK_TIMEOUT || result == -ETIMEDOUT)
    s->stats.timeouts++;
  if (result == -ECANCELED && co->shield)
    result = 0; /* a spurious wake: the caller retries and parks again */
  return result;
}


/* ---- the hub ---------------------------------------------------------- */

static void reclaim_dead(ip_sched_t *s) {
  ip_coro_t *co = s->dead;
  s->dead = NULL;
  ip__stack_release(&co->stack);
  __atomic_store_n(&s->stats.alive, s->stats.alive - 1, __ATOMIC_RELAXED);
  coro_recycle(co);
}


/* What the preemption monitor reads about the coroutine about to run: a
 * request left for an earlier run is void, and the nearest timer is
 * published (only a switch can change the timers of the others). */
static void publish_for_monitor(ip_sched_t *s) {
  if (atomic_load_explicit(&s->preempt_co, memory_order_relaxed) != NULL)
    atomic_store_explicit(&s->preempt_co, NULL, memory_order_relaxed);
  ip_timer_t *t = ip__heap_min(&s->timers);
  atomic_store_explicit(&s->next_timer_ns, t ? t->deadline_ns : INT64_MAX,
                        memory_order_relaxed);
}


/* The bucket of a duration in the log2 latency histogram. */
static unsigned latency_bucket(int64_t ns) {
  if (ns <= 0)
    return 0;
  unsigned b = 64u - (unsigned) __builtin_clzll((uint64_t) ns);
  return b < IP_LATENCY_BUCKETS ? b : IP_LATENCY_BUCKETS - 1;
}


/* Statistics cost one clock read per turn (vDSO, no system call): a turn
 * starts when the previous one of the round ended (s->now_ns; the hub's
 * bookkeeping in between takes nanoseconds) and its end is read here.  The
 * turn's length is the coroutine's time on the thread; its start minus its
 * wake time is its run-queue latency. */
static void run_coroutine(ip_sched_t *s, ip_coro_t *co) {
  IP_CHECK(co->state == IP_CORO_RUNNABLE);
  co->state = IP_CORO_RUNNING;
  publish_for_monitor(s);
  __atomic_store_n(&s->current, co, __ATOMIC_RELAXED);
  bump_switches(s);
  int64_t start = s->now_ns;
  s->latency_hist[latency_bucket(start - co->ready_ns)]++;
  ip__gilstate_bind(co->tstate);
  san_leave(s, &s->hub_san_fake, co);
  ip__switch(&s->hub_sp, co->sp);
  s = tls_sched;
  san_arrive(s->hub_san_fake);
  s->now_ns = ip__now_ns();
  uint64_t turn = (uint64_t) (s->now_ns - start);
  co->run_ns += turn;
  co->turns++;
  if (turn > co->max_turn_ns)
    co->max_turn_ns = turn;
  if (turn > s->max_turn_ns)
    s->max_turn_ns = turn;
  __atomic_store_n(&s->current, NULL, __ATOMIC_RELAXED);
  if (s->dead != NULL)
    reclaim_dead(s);
}


static void take_remote(ip_sched_t *s) {
  if (!atomic_load(&s->remote_pending))
    return; /* the common case, twice per hub round: no lock */
  ip_link_t batch;
  ip__queue_init(&batch);
  pthread_mutex_lock(&s->remote_lock);
  ip__queue_splice(&batch, &s->remote);
  atomic_store(&s->remote_pending, 0);
  pthread_mutex_unlock(&s->remote_lock);
  while (!ip__queue_empty(&batch)) {
    ip_link_t *l = batch.next;
    ip__queue_remove(l);
    make_runnable(s, container_of(l, ip_coro_t, run_link), 0);
  }
}


/* Runs every coroutine that was runnable when the round began, then the
 * longest-preempted one; those woken during the round wait for the next
 * one, after the hub has polled. */
static void run_round(ip_sched_t *s) {
  ip_link_t *batch = &s->round;
  ip__queue_splice(batch, &s->runq);
  if (!ip__queue_empty(&s->yieldq)) {
    ip_link_t *l = s->yieldq.next;
    ip__queue_remove(l);
    ip__queue_push_back(batch, l);
  }
  int64_t round_start = ip__now_ns(); /* one clock read per round */
  s->now_ns = round_start;
  for (;;) {
    ip_coro_t *co = s->run_next;
    if (co != NULL) {
      s->run_next = NULL; /* its slice was inherited from its waker */
    } else if (!ip__queue_empty(batch)) {
      ip_link_t *l = batch->next;
      ip__queue_remove(l);
      co = container_of(l, ip_coro_t, run_link);
      co->resumed_ns = round_start;
    } else {
      return;
    }
    co->hook_calls = 0;
    run_coroutine(s, co);
    s = tls_sched;
    batch = &s->round;
  }
}


/* A coroutine that keeps finding its blocking calls ready never parks, and
 * the coroutines waiting for the events it could consume never run: e.g.
 * multiprocessing.Pool's worker handler, whose wait() returns at once while
 * results it leaves to another thread are pending.  Threads would be
 * preempted there; a coroutine yields at a hooked call once it has run
 * for TIME_SLICE_NS (the clock is read every YIELD_CHECK_EVERY-th hooked
 * call). */
void ip__yield_if_due(ip_sched_t *s) {
  ip_coro_t *co = s->current;
  if ((++co->hook_calls & (YIELD_CHECK_EVERY - 1)) != 0)
    return;
  if (ip__now_ns() - co->resumed_ns < TIME_SLICE_NS)
    return;
  ip__prepare(co);
  ip__wait_note(co, IP_WAIT_YIELD, -1, 0, NULL);
  if (ip__park(s, 0) == -EINTR)
    co->pending_eintr = 1; /* the signal is for the next real wait */
}


void ip__yield(ip_sched_t *s) {
  ip_coro_t *co = s->current;
  IP_CHECK(co != NULL && co->state == IP_CORO_RUNNING);
  s->stats.preemptions++;
  co->state = IP_CORO_RUNNABLE;
  ip__queue_push_back(&s->yieldq, &co->run_link);
  switch_to_hub(s, co, 0);
  s = co->sched;
  if (co == s->main)
    ip__signals_main_resumed(&s->sig);
}


static void drain_fd(int fd) {
  char buf[256];
  while (ip__real.read(fd, buf, sizeof(buf)) > 0) {
  }
}


/* Returns the epoll timeout: 0 when work is queued, -1 with no timer, else
 * the time to the nearest deadline rounded up, never down, so a timer never
 * fires early. */
static int64_t poll_timeout_ns(ip_sched_t *s) {
  if (!ip__queue_empty(&s->runq) || !ip__queue_empty(&s->yieldq))
    return 0;
  ip_timer_t *t = ip__heap_min(&s->timers);
  if (t == NULL)
    return -1;
  int64_t d = t->deadline_ns - ip__now_ns();
  return d > 0 ? d : 0;
}


static int epoll_wait_ns(ip_sched_t *s, struct epoll_event *ev,
                         int64_t timeout_ns) {
  static int have_pwait2 = 1; /* Linux >= 5.11; probed once, races benign */
  if (have_pwait2 && timeout_ns > 0) {
    struct timespec ts = ip__timespec_of(timeout_ns);
    long n = syscall(SYS_epoll_pwait2, s->epfd, ev, EPOLL_BATCH, &ts, NULL,
                     (size_t) 0);
    if (n >= 0 || errno != ENOSYS)
      return (int) n;
    have_pwait2 = 0;
  }
  return ip__real.epoll_wait(s->epfd, ev, EPOLL_BATCH, ip__ms_ceil(timeout_ns));
}


static void poll_events(ip_sched_t *s) {
  struct epoll_event ev[EPOLL_BATCH];
  int64_t timeout_ns = poll_timeout_ns(s);
  if (timeout_ns == 0 && !ip__queue_empty(&s->runq)) {
    /* Work is queued, so this poll could only add more.  A syscall per
     * round would dominate spawn/join and wake-up chains, so while work
     * keeps coming, poll at most once per POLL_INTERVAL_NS; I/O then waits
     * at most that long behind runnable coroutines. */
    int64_t now = ip__now_ns();
    if (now - s->last_poll_ns < POLL_INTERVAL_NS)
      return;
    s->last_poll_ns = now;
  }
  s->stats.epoll_waits++;
  int stuck = timeout_ns < 0 && s->fd_waits == 0 && s->ext_waits == 0;
  if (stuck)
    ip__diag_stuck(s);
  if (timeout_ns != 0)
    ip__preempt_hub_blocking(s, 1);
  int n = epoll_wait_ns(s, ev, timeout_ns);
  if (timeout_ns != 0)
    IP_SAVE_ERRNO(ip__preempt_hub_blocking(s, 0));
  if (stuck)
    atomic_store(&s->stuck, 0);
  /* The wake time of this batch's wakes: after a wait, now; after a poll
   * (timeout 0) the end of the last turn, a moment ago. */
  if (timeout_ns != 0)
    s->now_ns = s->last_poll_ns = ip__now_ns();
  if (n < 0) {
    IP_CHECK(errno == EINTR);
    ip__signals_wake_main(s);
    return;
  }
  for (int i = 0; i < n; i++) {
    uint64_t data = ev[i].data.u64;
    if (data == IP_TAG_EVENTFD) {
      drain_fd(s->evfd);
    } else if (data == IP_TAG_SIGNAL) {
      ip__signals_drain(&s->sig);
      ip__signals_wake_main(s);
    } else {
      ip__fd_dispatch(s, data, ev[i].events);
    }
  }
}


static void fire_timers(ip_sched_t *s) {
  if (ip__heap_min(&s->timers) == NULL)
    return; /* no clock read: run_round reads its own */
  int64_t now = ip__now_ns();
  s->now_ns = now;
  ip_timer_t *t;
  while ((t = ip__heap_min(&s->timers)) != NULL && t->deadline_ns <= now) {
    ip__heap_remove(&s->timers, t);
    ip_coro_t *co = container_of(t, ip_coro_t, timer);
    ip__wake(co, ip__park_gen(co), co->timer_result, 0);
  }
}


void ip__hub_main(void *arg) {
  (void) arg;
  san_arrive(NULL); /* a fresh stack: nothing to restore */
  for (;;) {
    ip_sched_t *s = tls_sched;
    take_remote(s);
    run_round(s);
    ip__stack_unmap_released(); /* the round's dead, in one go */
    s = tls_sched;
    take_remote(s);
    poll_events(s);
    fire_timers(s);
  }
}


/* ---- spawn and death ------------------------------------------------- */

void *interpose_coro_spawn(void *body, size_t stack_size, const char *name,
                           uint64_t *id_out, int *err_out) {
  int r = -EINVAL;
  if (!ip__py_ready() || body == NULL ||
      (stack_size != 0 && stack_size < interpose_stack_minimum()))
    goto fail;
  ip_sched_t *s;
  r = ip__sched_ensure(&s);
  if (r < 0)
    goto fail;
  ip_coro_t *co = coro_alloc();
  r = -ENOMEM;
  if (co == NULL)
    goto fail;
  r = ip__stack_acquire(&co->stack, stack_size);
  if (r < 0)
    goto fail_coro;
  co->id = atomic_fetch_add(&next_id, 1);
  r = ip__ident_attach(co);
  if (r < 0)
    goto fail_stack;
  /* CPython records the thread id in the new thread state: the coroutine's
   * identity must be in force while it is created (hooks_pthread.c). */
  ip__ident_creating(co->thread_ident);
  co->tstate = ip__py.PyThreadState_New(ip__py.interp);
  ip__ident_creating(0);
  r = -ENOMEM;
  if (co->tstate == NULL)
    goto fail_ident;
  r = ip__pyver_new_coroutine(co); /* 3.14+: its stack, before 1st attach */
  if (r < 0)
    goto fail_tstate;
  ip__py.Py_IncRef(body);
  co->body = body;
  co->sched = s;
  co->hooks = 1;
  co->sp = ip__context_init(ip__stack_top(&co->stack), ip__coro_main, co);
  name_copy(co, name);
  co->ready_ns = ip__now_ns();
  make_runnable(s, co, 0);
  s->stats.created++;
  __atomic_store_n(&s->stats.alive, s->stats.alive + 1, __ATOMIC_RELAXED);
  ip__preempt_wake_monitor(); /* it may now have something to preempt */
  *id_out = co->id;
  return co;
fail_tstate:
  ip__py.PyThreadState_Clear(co->tstate);
  ip__py.PyThreadState_Delete(co->tstate);
  co->tstate = NULL;
fail_ident:
  ip__ident_detach(co);
fail_stack:
  ip__stack_release(&co->stack);
fail_coro:
  coro_recycle(co);
fail:
  *err_out = r;
  return NULL;
}


/* Entered on a fresh stack by the first switch to a spawned coroutine. */
void ip__coro_main(void *arg) {
  ip_coro_t *co = arg;
  san_arrive(NULL);
  ip__py_run_body(co);
  ip__ident_detach(co); /* the thread is gone: its ident is dead */
  ip_sched_t *s = tls_sched;
  if (co == s->main) {
    /* Only after fork: the coroutine that forked became the child's main
     * and has finished, like the last thread of a process returning. */
    _exit(0);
  }
  co->state = IP_CORO_DEAD;
  s->dead = co;
  switch_to_hub(s, co, 1);
  ip__fatal(__FILE__, __LINE__, "a dead coroutine was resumed");
}


void ip__sched_each(void (*sched_fn)(ip_sched_t *s, void *arg),
                    void (*coro_fn)(ip_coro_t *co, void *arg), void *arg) {
  pthread_mutex_lock(&coro_lock);
  for (ip_sched_t *s = sched_all; s != NULL; s = s->all_next) {
    sched_fn(s, arg);
    if (s->root.id != 0)
      coro_fn(&s->root, arg);
  }
  for (ip_coro_t *co = coro_all; co != NULL; co = co->all_next)
    if (co->id != 0 && co->state != IP_CORO_DEAD && co->sched != NULL)
      coro_fn(co, arg);
  pthread_mutex_unlock(&coro_lock);
}
