/* sched.c: the per-thread scheduler.  Each OS thread that uses interpose
 * gets one, lazily: a root coroutine (the thread's own stack and thread
 * state), a hub on a stack of its own, a FIFO run queue, an epoll set, a
 * timer heap and an eventfd through which other threads wake coroutines.
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

#define HUB_STACK_SIZE (256 * 1024)
#define EPOLL_BATCH 256
#define POLL_INTERVAL_NS (50 * 1000)
#define TAG_EVENTFD UINT64_MAX
#define TAG_SIGNAL (UINT64_MAX - 1)
#define PARK_CLAIMED 3u /* a waker is writing wake_result */

__thread ip_sched_t *ip__tls_sched;
#define tls_sched ip__tls_sched

/* Shared with preempt.c, whose monitor thread walks every scheduler. */
pthread_mutex_t ip__coro_lock = PTHREAD_MUTEX_INITIALIZER;
ip_sched_t *ip__sched_all; /* guarded by coro_lock */
#define coro_lock ip__coro_lock
#define sched_all ip__sched_all
static ip_coro_t *coro_free; /* guarded by coro_lock */
static ip_coro_t *coro_all;  /* guarded by coro_lock; never shrinks */
static ip_sched_t *sched_free; /* guarded by coro_lock */
/* Every scheduler struct ever allocated, newest first; pushed under
 * coro_lock, read without it (the list only grows). */
static ip_sched_t *_Atomic sched_every;
static _Atomic uint64_t next_id = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void hub_main(void *arg);


void ip__fatal(const char *file, int line, const char *what) {
  char msg[512];
  int n = snprintf(msg, sizeof(msg),
                   "interpose: internal invariant broken at %s:%d: %s\n",
                   file, line, what);
  ssize_t IP_UNUSED w = ip__real.write(2, msg, n > 0 ? (size_t) n : 0);
  abort();
}


int64_t interpose_clock_ns(void) {
  return ip__now_ns();
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
#define TIME_SLICE_NS 10000000

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
    unsigned st = w & 3u;
    if ((w >> IP_PARK_STATE_BITS) != gen || st == IP_PARK_WOKEN ||
        st == PARK_CLAIMED)
      return 0;
    uint64_t claimed = (gen << IP_PARK_STATE_BITS) | PARK_CLAIMED;
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


/* ---- stack switches as AddressSanitizer must see them ----------------
 * ASan keeps the bounds of the stack it believes is running; interceptors
 * such as vfork's clear shadow memory up to that stack's top.  Under
 * SANITIZE=1 every switch is announced with the sanitizer fiber API;
 * otherwise these are empty. */
#ifdef IP_SANITIZE
#include <sanitizer/common_interface_defs.h>

static void stack_bounds(ip_sched_t *s, ip_coro_t *co, const void **bottom,
                         size_t *size) {
  const ip_stack_t *st = co ? &co->stack : &s->hub_stack;
  if (co == &s->root) {
    *bottom = s->root_stack_bottom;
    *size = s->root_stack_size;
  } else {
    *bottom = st->base + st->guard;
    *size = st->size - st->guard;
  }
}


static void san_leave(ip_sched_t *s, void **fake, ip_coro_t *to) {
  const void *bottom;
  size_t size;
  stack_bounds(s, to, &bottom, &size);
  __sanitizer_start_switch_fiber(fake, bottom, size);
}


static void san_arrive(void *fake) {
  __sanitizer_finish_switch_fiber(fake, NULL, NULL);
}


static void root_stack_bounds(ip_sched_t *s) {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void *addr;
    pthread_attr_getstack(&attr, &addr, &s->root_stack_size);
    s->root_stack_bottom = addr;
    pthread_attr_destroy(&attr);
  }
}
#else  /* !IP_SANITIZE */
#define san_leave(s, fake, to) ((void) (fake))
#define san_arrive(fake) ((void) (fake))
#define root_stack_bounds(s) ((void) (s))
#endif /* IP_SANITIZE */


/* The blocking monitor reads the switch count, the running coroutine and
 * the number of live coroutines from another thread: they are stored
 * atomically. */
static void bump_switches(ip_sched_t *s) {
  __atomic_store_n(&s->stats.switches, s->stats.switches + 1, __ATOMIC_RELAXED);
}


/* dying: the coroutine will never be resumed (its fake stack goes). */
static void switch_to_hub(ip_sched_t *s, ip_coro_t *co, int dying) {
  bump_switches(s);
  san_leave(s, dying ? NULL : &co->san_fake, NULL);
  ip__switch(&co->sp, s->hub_sp);
  san_arrive(co->san_fake);
}


/* Waits out a waker on another thread that has claimed the park but not
 * yet published its result; the window is a few instructions. */
static int claimed_result(ip_coro_t *co) {
  while ((atomic_load(&co->park_word) & 3u) == PARK_CLAIMED)
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


/* Trips again, for CPython to run in the main coroutine, the signals whose
 * Python handlers first ran in another coroutine.  Runs as the main
 * coroutine resumes, before any Python code of it. */
static void retrip_deferred(ip_sched_t *s) {
  uint64_t mask = s->deferred_signals;
  s->deferred_signals = 0;
  for (int sig = 1; mask != 0; sig++, mask >>= 1) {
    if (mask & 1u) {
      if (s->signal_forward_fd >= 0)
        s->retripped[sig - 1]++; /* CPython writes the wakeup byte again */
      ip__py.PyErr_SetInterruptEx(sig);
    }
  }
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
  if ((w & 3u) != IP_PARK_ARMED)
    return (w & 3u) == IP_PARK_SLEEP ? -EDEADLK : claimed_result(co);
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
    if (co == s->main && s->deferred_signals != 0)
      retrip_deferred(s);
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
 * for TIME_SLICE_NS (the clock is read every 64th hooked call). */
void ip__yield_if_due(ip_sched_t *s) {
  ip_coro_t *co = s->current;
  if ((++co->hook_calls & 63u) != 0)
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
  if (co == s->main && s->deferred_signals != 0)
    retrip_deferred(s);
}


static void wake_main_for_signal(ip_sched_t *s) {
  if (s->is_main_thread)
    ip__wake(s->main, ip__park_gen(s->main), -EINTR, 1);
}


static void drain_fd(int fd) {
  char buf[256];
  while (ip__real.read(fd, buf, sizeof(buf)) > 0) {
  }
}


/* The signal wakeup pipe carries one byte per signal (its number); the
 * program's own wakeup fd, if it set one, gets the same bytes, as if
 * CPython had written them there.  A full or broken fd loses bytes, as
 * CPython's own write would. */
static void drain_signal_fd(ip_sched_t *s) {
  char buf[256];
  ssize_t n;
  while ((n = ip__real.read(s->signal_fd, buf, sizeof(buf))) > 0) {
    if (s->signal_forward_fd < 0)
      continue;
    size_t kept = 0;
    for (ssize_t i = 0; i < n; i++) {
      unsigned char sig = (unsigned char) buf[i];
      if (sig >= 1 && sig <= 64 && s->retripped[sig - 1] > 0)
        s->retripped[sig - 1]--; /* the program saw this signal already */
      else
        buf[kept++] = buf[i];
    }
    if (kept > 0) {
      ssize_t IP_UNUSED w = ip__real.write(s->signal_forward_fd, buf, kept);
    }
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
    wake_main_for_signal(s);
    return;
  }
  for (int i = 0; i < n; i++) {
    uint64_t data = ev[i].data.u64;
    if (data == TAG_EVENTFD) {
      drain_fd(s->evfd);
    } else if (data == TAG_SIGNAL) {
      drain_signal_fd(s);
      wake_main_for_signal(s);
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


static void hub_main(void *arg) {
  (void) arg;
  san_arrive(NULL); /* a fresh stack: nothing to restore */
  for (;;) {
    ip_sched_t *s = tls_sched;
    take_remote(s);
    run_round(s);
    s = tls_sched;
    take_remote(s);
    poll_events(s);
    fire_timers(s);
  }
}


/* ---- scheduler lifetime ----------------------------------------------- */

static int add_tagged(int epfd, int fd, uint64_t tag) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
  return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}


/* Empty run queues and timers (a new scheduler's, or a forked child's). */
static void sched_init_queues(ip_sched_t *s) {
  ip__queue_init(&s->runq);
  ip__queue_init(&s->round);
  ip__queue_init(&s->yieldq);
  ip__queue_init(&s->remote);
  atomic_store(&s->remote_pending, 0);
  pthread_mutex_init(&s->remote_lock, NULL);
  ip__heap_init(&s->timers);
}


/* Opens the kernel objects and the hub context; 0 or -errno.
 * Invariant: every fd the runtime opens for itself (these, the signal
 * wakeup pipe of _signals.py, stack.c's read of max_map_count) is
 * close-on-exec, so that no child of the program inherits one
 * (tests/test_internal_fds.py compares what children see with plain
 * Python's), and those it keeps live above the internal floor (fdtable.c:
 * the program's fds get plain Python's numbers). */
static int sched_open(ip_sched_t *s) {
  s->epfd = ip__real.epoll_create1(EPOLL_CLOEXEC);
  if (s->epfd < 0)
    return -errno;
  s->epfd = ip__fd_move_internal(s->epfd);
  s->evfd = ip__real.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->evfd < 0)
    goto fail_epoll;
  s->evfd = ip__fd_move_internal(s->evfd);
  int r = add_tagged(s->epfd, s->evfd, TAG_EVENTFD);
  if (r < 0)
    goto fail_eventfd;
  if (s->signal_fd >= 0 && add_tagged(s->epfd, s->signal_fd, TAG_SIGNAL) < 0)
    s->signal_fd = -1;
  s->hub_sp = ip__context_init(ip__stack_top(&s->hub_stack), hub_main, s);
  s->pid = getpid();
  s->is_main_thread = syscall(SYS_gettid) == s->pid;
  return 0;
fail_eventfd:
  ip__real.close(s->evfd);
fail_epoll:
  r = -errno;
  ip__real.close(s->epfd);
  return r;
}


/* ---- scheduler structs ---------------------------------------------- */

/* A zeroed scheduler struct from the free list or fresh.  A reused one
 * keeps its place in sched_every and its incarnation (both in front of
 * root), and its root coroutine's park generation, which only grows. */
static ip_sched_t *sched_struct_get(void) {
  pthread_mutex_lock(&coro_lock);
  ip_sched_t *s = sched_free;
  if (s != NULL)
    sched_free = s->free_next;
  pthread_mutex_unlock(&coro_lock);
  if (s != NULL) {
    uint64_t gen = ip__park_gen(&s->root) + 1;
    size_t keep = offsetof(ip_sched_t, root);
    memset((char *) s + keep, 0, sizeof(*s) - keep);
    atomic_store(&s->root.park_word, gen << IP_PARK_STATE_BITS);
    return s;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  pthread_mutex_lock(&coro_lock);
  s->every_next = atomic_load_explicit(&sched_every, memory_order_relaxed);
  atomic_store_explicit(&sched_every, s, memory_order_release);
  pthread_mutex_unlock(&coro_lock);
  return s;
}


static void sched_struct_put(ip_sched_t *s) {
  pthread_mutex_lock(&coro_lock);
  s->free_next = sched_free;
  sched_free = s;
  pthread_mutex_unlock(&coro_lock);
}


/* The scheduler is no longer what its handle named: probes of the old
 * incarnation fail from here on, and no signal handler finds it. */
static void sched_retire(ip_sched_t *s) {
  if (atomic_load(&s->incarnation) & 1)
    atomic_fetch_add(&s->incarnation, 1);
  atomic_store(&s->tid, 0);
}


ip_sched_t *ip__sched_of_tid(pid_t tid) {
  ip_sched_t *s = atomic_load_explicit(&sched_every, memory_order_acquire);
  for (; s != NULL; s = s->every_next)
    if (atomic_load_explicit(&s->tid, memory_order_relaxed) == tid)
      return s;
  return NULL;
}


/* Makes a coroutine that did not survive a fork unreachable: every wake
 * aimed at it misses (a new generation, already woken) and cancel finds no
 * id.  Its thread state was deleted by CPython; its stack is unmapped. */
static void invalidate(ip_coro_t *co) {
  uint64_t gen = ip__park_gen(co) + 1;
  atomic_store(&co->park_word, (gen << IP_PARK_STATE_BITS) | IP_PARK_WOKEN);
  co->id = 0;
  co->tstate = NULL;
  co->body = NULL; /* its reference died with the parent's objects' owner */
  if (co->stack.base != NULL)
    ip__stack_unmap(&co->stack);
}


/* In a forked child only the forking thread exists, and of its coroutines
 * only the running one: CPython deletes every other thread state.  Every
 * other coroutine, of every scheduler, is invalidated without being
 * resumed, and its struct goes back to the free list; Python objects that
 * still hold its handle then find it gone.  Other threads' schedulers are
 * left allocated (their threads are gone, like a forked child's other
 * threads).  The forking thread's scheduler gets fresh queues and timers,
 * and the forking coroutine becomes the thread's main coroutine.
 *
 * Its epoll set, eventfd and hub are made later, by the runtime's first use
 * of the scheduler (sched_live), not here.  Facts: subprocess's child
 * (CPython's _posixsubprocess, also on its vfork path, which is fork here)
 * runs C code between fork and exec: dup2, chdir, closing every fd with
 * close_fds, and on a failed exec a write of the errno to the parent's
 * error pipe; no Python after-fork hook runs unless preexec_fn is given.
 * Consequence: fds opened here would be closed under us by close_fds, and a
 * hook that then parked would fail in epoll_ctl; the error pipe write was
 * lost that way and Popen returned a child exiting 255 instead of raising.
 * Solution: until the runtime asks for the scheduler again (os.fork's
 * after-fork hook does, preexec_fn's too), the child's hooks are the real
 * calls, blocking as they would without interpose. */
int ip__forked_child;


static void sched_after_fork_child(void) {
  ip_sched_t *s = tls_sched;
  ip__forked_child = 1;
  ip_coro_t *survivor = s ? s->current : NULL;
  pthread_mutex_init(&coro_lock, NULL);
  coro_free = NULL;
  for (ip_coro_t *co = coro_all; co != NULL; co = co->all_next) {
    if (co == survivor)
      continue;
    invalidate(co);
    co->free_next = coro_free;
    coro_free = co;
  }
  for (ip_sched_t *other = sched_all; other != NULL; other = other->all_next)
    if (other != s) {
      sched_retire(other); /* its thread did not survive; its id may recur */
      if (&other->root != survivor)
        invalidate(&other->root);
    }
  sched_all = s;
  ip__ident_after_fork_child(survivor);
  ip__sem_after_fork_child();
  ip__gilstate_after_fork_child();
  if (s == NULL)
    return;
  s->all_next = NULL;
  atomic_store(&s->tid, (pid_t) syscall(SYS_gettid)); /* the child's own */
  ip__real.close(s->epfd);
  ip__real.close(s->evfd);
  s->epfd = s->evfd = -1;
  s->fork_pending = 1;
  ip__heap_free(&s->timers);
  sched_init_queues(s);
  ip__fd_after_fork_child();
  ip__names_after_fork_child();
  s->pid = getpid();
  s->main = survivor;
  s->dead = NULL;
  s->run_next = NULL;
  s->deferred_signals = 0; /* they were the parent's to run */
  atomic_store(&s->preempt_co, NULL);
  s->fd_waits = s->ext_waits = 0; /* the parent's parked coroutines' */
  atomic_store(&s->stuck, 0);
  __atomic_store_n(&s->stats.alive, survivor != &s->root, __ATOMIC_RELAXED);
  survivor->timer.index = SIZE_MAX;
}


/* The calling thread's scheduler, its epoll set reopened if a fork left it
 * pending; NULL with errno set if that fails. */
static ip_sched_t *sched_live(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL || !s->fork_pending)
    return s;
  int r = sched_open(s);
  if (r < 0) {
    errno = -r;
    return NULL;
  }
  s->fork_pending = 0;
  return s;
}


/* A thread's scheduler is torn down by that thread as it exits.  The
 * Python side asks for it from thread-local storage, but CPython does not
 * always free a thread's locals on that thread (seen on 3.11 while another
 * thread holds references into the scheduler registry): this destructor,
 * run by the exiting thread itself after its thread state is gone, is the
 * backstop.  interpose_sched_destroy refuses (EBUSY) a scheduler with live
 * coroutines, which then stay parked as before, and is a no-op when the
 * Python side already destroyed it. */
static pthread_key_t exit_key;
static int exit_key_ok;


static void sched_at_thread_exit(void *arg) {
  (void) arg;
  (void) interpose_sched_destroy();
}


static void register_atfork(void) {
  pthread_atfork(NULL, NULL, sched_after_fork_child);
  exit_key_ok = pthread_key_create(&exit_key, sched_at_thread_exit) == 0;
}


ip_sched_t *ip__sched_ensure(void) {
  if (tls_sched != NULL)
    return sched_live();
  int r = ip__stack_install_guard_handler();
  if (r < 0) {
    errno = -r;
    return NULL;
  }
  pthread_once(&atfork_once, register_atfork);
  ip_sched_t *s = sched_struct_get();
  if (s == NULL)
    return NULL;
  s->signal_fd = -1;
  s->signal_forward_fd = -1;
  atomic_store(&s->next_timer_ns, INT64_MAX);
  r = ip__stack_acquire(&s->hub_stack, HUB_STACK_SIZE);
  if (r < 0)
    goto fail;
  sched_init_queues(s);
  r = sched_open(s);
  if (r < 0) {
    ip__stack_release(&s->hub_stack);
    goto fail;
  }
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
  root_stack_bounds(s);
  s->main = root;
  s->current = root;
  pthread_mutex_lock(&coro_lock);
  s->all_next = sched_all;
  sched_all = s;
  pthread_mutex_unlock(&coro_lock);
  tls_sched = s;
  if (exit_key_ok && !s->is_main_thread)
    (void) pthread_setspecific(exit_key, s);
  atomic_store(&s->tid, (pid_t) syscall(SYS_gettid));
  atomic_fetch_add(&s->incarnation, 1); /* odd: alive, fully set up */
  atomic_store(&ip__armed, 1);
  ip__preempt_wake_monitor(); /* its root runs: watch it */
  return s;
fail:
  sched_struct_put(s);
  errno = -r;
  return NULL;
}


/* ---- exported API ----------------------------------------------------- */

void *interpose_coro_spawn(void *body, size_t stack_size, const char *name,
                           uint64_t *id_out, int *err_out) {
  int r = -EINVAL;
  if (!ip__py_ready() || body == NULL ||
      (stack_size != 0 && stack_size < interpose_stack_minimum()))
    goto fail;
  ip_sched_t *s = ip__sched_ensure();
  r = -errno;
  if (s == NULL)
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


void *interpose_coro_current(void) {
  ip_sched_t *s = ip__sched_ensure();
  return s ? s->current : NULL;
}


uint64_t interpose_coro_id(void *handle) {
  return handle ? ((ip_coro_t *) handle)->id : 0;
}


uint64_t interpose_coro_prepare(void) {
  ip_sched_t *s = ip__sched_ensure();
  return s ? ip__prepare(s->current) : 0;
}


int interpose_coro_park(int64_t timeout_ns) {
  ip_sched_t *s = sched_live();
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
  pthread_mutex_lock(&coro_lock);
  if (co->id != id) {
    pthread_mutex_unlock(&coro_lock);
    return 0;
  }
  atomic_store(&co->cancelled, 1);
  uint64_t gen = ip__park_gen(co);
  pthread_mutex_unlock(&coro_lock);
  ip__wake(co, gen, -ECANCELED, 0);
  return 1;
}


int interpose_coro_set_hooks(int on) {
  ip_sched_t *s = ip__sched_ensure();
  if (s == NULL)
    return -errno;
  int previous = s->current->hooks;
  s->current->hooks = on != 0;
  return previous;
}


int interpose_coro_shield(int delta) {
  ip_sched_t *s = ip__sched_ensure();
  if (s == NULL)
    return -errno;
  int depth = s->current->shield + delta;
  if (depth < 0)
    return -EINVAL;
  s->current->shield = depth;
  return depth;
}


int64_t interpose_coro_set_deadline(int64_t deadline_ns) {
  ip_sched_t *s = ip__sched_ensure();
  if (s == NULL)
    return -1;
  int64_t previous = s->current->deadline_ns;
  s->current->deadline_ns = deadline_ns < 0 ? -1 : deadline_ns;
  return previous;
}


int interpose_wait_fd(int fd, int events, int64_t timeout_ns) {
  ip_sched_t *s = sched_live();
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


void *interpose_sched_self(uint64_t *incarnation) {
  ip_sched_t *s = tls_sched;
  *incarnation = s ? atomic_load(&s->incarnation) : 0;
  return s;
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


/* Reads like a seqlock: the incarnation before and after the fields tells
 * whether they belonged to the scheduler the caller means.  The struct is
 * type-stable, so reading it is safe even when they did not.  (Schedulers
 * are also created and destroyed only with the GIL held, which the caller
 * holds, so the second check is a second line of defence.)  The thread
 * state read is alive: a coroutine's is cleared before it is deleted and
 * the root's when its thread exits (interpose_sched_forget_root), both with
 * the GIL held, which the caller holds until PyThreadState_GetFrame is
 * done with it. */
void *interpose_sched_probe(void *sched, uint64_t incarnation,
                            uint64_t *switches, void **coro, uint64_t *alive) {
  ip_sched_t *s = sched;
  *switches = *alive = 0;
  *coro = NULL;
  if (s == NULL || atomic_load_explicit(&s->incarnation,
                                        memory_order_acquire) != incarnation)
    return NULL;
  uint64_t sw = __atomic_load_n(&s->stats.switches, __ATOMIC_RELAXED);
  uint64_t al = __atomic_load_n(&s->stats.alive, __ATOMIC_RELAXED);
  ip_coro_t *co = __atomic_load_n(&s->current, __ATOMIC_RELAXED);
  void *tstate = co ? __atomic_load_n(&co->tstate, __ATOMIC_RELAXED) : NULL;
  atomic_thread_fence(memory_order_acquire);
  if (atomic_load_explicit(&s->incarnation, memory_order_relaxed) !=
      incarnation)
    return NULL;
  *switches = sw;
  *alive = al;
  *coro = co;
  return tstate ? ip__py.PyThreadState_GetFrame(tstate) : NULL;
}


int interpose_sched_forget_root(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL)
    return 0;
  __atomic_store_n(&s->root.tstate, NULL, __ATOMIC_RELAXED);
  atomic_store(&s->tid, 0);
  return 1;
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


int interpose_sched_defer_signal(int signum) {
  ip_sched_t *s = tls_sched;
  if (s == NULL || !s->is_main_thread || signum < 1 || signum > 64)
    return -EINVAL;
  s->deferred_signals |= UINT64_C(1) << (signum - 1);
  if (s->current != s->main)
    ip__wake(s->main, ip__park_gen(s->main), -EINTR, 1);
  return 0;
}


int interpose_sched_set_signal_forward(int fd) {
  ip_sched_t *s = tls_sched;
  if (s == NULL || !s->is_main_thread)
    return -EINVAL;
  s->signal_forward_fd = fd;
  return 0;
}


int interpose_sched_destroy(void) {
  ip_sched_t *s = tls_sched;
  if (s == NULL)
    return 0;
  if (s->current != &s->root || s->stats.alive != 0 ||
      !ip__queue_empty(&s->runq) || !ip__queue_empty(&s->yieldq) ||
      s->run_next != NULL)
    return -EBUSY;
  sched_retire(s);
  pthread_mutex_lock(&coro_lock);
  for (ip_sched_t **p = &sched_all; *p != NULL; p = &(*p)->all_next) {
    if (*p == s) {
      *p = s->all_next;
      break;
    }
  }
  pthread_mutex_unlock(&coro_lock);
  ip__fd_drop_sched(s);
  ip__real.close(s->epfd);
  ip__real.close(s->evfd);
  ip__heap_free(&s->timers);
  ip__stack_release(&s->hub_stack);
  pthread_mutex_destroy(&s->remote_lock);
  tls_sched = NULL;
  sched_struct_put(s);
  ip__stack_thread_exit();
  return 0;
}


int interpose_sched_set_signal_fd(int fd) {
  ip_sched_t *s = ip__sched_ensure();
  if (s == NULL)
    return -errno;
  if (!s->is_main_thread)
    return -EINVAL;
  if (s->signal_fd >= 0)
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->signal_fd, NULL);
  s->signal_fd = -1;
  if (fd < 0)
    return 0;
  int r = add_tagged(s->epfd, fd, TAG_SIGNAL);
  if (r == 0)
    s->signal_fd = fd;
  return r;
}
