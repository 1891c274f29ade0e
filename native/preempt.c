/* preempt.c: time slicing.  Converted threads must take turns the way OS
 * threads do: CPython hands the GIL to a waiting thread every switch
 * interval, so a thread computing in pure Python never starves the others,
 * the timers, the I/O or the main thread's signal handlers.  Coroutines
 * switch only where no thread state is attached, so a coroutine that never
 * reaches a hooked call kept its OS thread for good.
 *
 * Facts (CPython 3.11, 3.12 and 3.13, Python/ceval_gil.c):
 *  - A thread that wants the GIL waits on gil->cond with gil->mutex
 *    (take_gil, pthread_cond_timedwait through PyCOND_TIMEDWAIT) for one
 *    switch interval; if no switch happened meanwhile it sets the drop
 *    request on the holder (3.13: on the holder's own eval breaker).
 *  - The holder notices the request at its next bytecode boundary
 *    (_Py_HandlePending), detaches its thread state (3.11/3.12:
 *    _PyThreadState_Swap(NULL); 3.13: _PyThreadState_Detach) and calls
 *    drop_gil, then take_gil.  With FORCE_SWITCHING (always defined) it
 *    first waits on switch_cond until another thread has taken the GIL, then
 *    waits on gil->cond like any other waiter.  Every one of these waits
 *    happens with no thread state attached: a safe point, exactly like
 *    Py_BEGIN_ALLOW_THREADS.
 *  - take_gil loops until the GIL is free; a wake-up without a timeout is
 *    simply another turn of that loop.  POSIX allows spurious wake-ups of
 *    every condition variable wait.
 *  - Pending calls and signal handlers run only in CPython's "main thread"
 *    (3.11/3.12; 3.12+ has per-interpreter pending calls, but not for a
 *    chosen thread), so they cannot stop a coroutine that is not the main
 *    one, nor one on a thread of INTERPOSE_THREADS=native.
 *
 * Consequences: the drop request is the one mechanism that stops any
 * thread state at a bytecode boundary, on every version, through the public
 * API alone: whoever contends for the GIL sets it.  And the preempted
 * coroutine arrives, detached, in a wait on gil->cond, where it may leave
 * its OS thread.
 *
 * Our solution: a monitor OS thread with a thread state of its own samples
 * every scheduler each half switch interval.  When the same preemptible
 * coroutine has been running for a whole sample period while its
 * scheduler has other work (a runnable coroutine, one left in the hub's
 * current round or preempted, a due timer, or its epoll
 * set readable: I/O, a cross-thread wake or a signal byte), the monitor
 * names that coroutine in sched->preempt_co and contends for the GIL
 * (PyEval_RestoreThread).  CPython then makes the coroutine drop the GIL
 * at its next bytecode boundary; it waits for the monitor to take it, then
 * waits on gil->cond, where the hook below sees the request, unlocks
 * gil->mutex, puts the coroutine at the back of its run queue and switches
 * to the hub (ip__yield).  The monitor holds the GIL until the coroutine
 * has yielded (or briefly, if it is not the holder), then releases it; the
 * hub polls, fires timers and runs the next coroutine, which takes the GIL
 * as its hooked call returns.  Resumed later, the preempted coroutine
 * relocks gil->mutex and returns 0 from the wait: a spurious wake-up, after
 * which take_gil takes the GIL as usual.
 *
 * The monitor learns which condition variable is gil->cond from its own
 * first wait in PyEval_RestoreThread (take_gil waits on nothing else), so
 * no CPython structure layout is needed.  The hook acts only on that
 * condition variable, only for the coroutine the monitor named, only while
 * it runs with its hooks on and no thread state attached: every other wait
 * is the real call.  A coroutine parked in this wait holds no lock (the
 * wait released gil->mutex), so the next coroutine can take the GIL.
 *
 * The monitor sleeps in a futex while every scheduler's hub is blocked in
 * epoll_wait or has no spawned coroutine, so an idle process is not woken
 * 400 times a second. */
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes, or part of the exported ABI. */

static pthread_t monitor_thread;
static atomic_int monitor_running; /* 1 between start and stop */
static atomic_int monitor_stop;    /* futex: set to stop the monitor */
static atomic_int monitor_idle;    /* futex: 1 while it sleeps until work */
static atomic_int yield_done;      /* futex: the named coroutine yielded */
static _Atomic int64_t interval_us = 5000;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Learned from the monitor's own wait for the GIL (see the top). */
static _Atomic(pthread_cond_t *) gil_cond;
static _Atomic(pthread_mutex_t *) gil_mutex;
/* Set while the monitor is inside PyEval_RestoreThread. */
static atomic_int learning;
static atomic_int monitor_waited;
static __thread int is_monitor;


static long futex(atomic_int *word, int op, int val,
                  const struct timespec *timeout) {
  return syscall(SYS_futex, (int *) word, op | FUTEX_PRIVATE_FLAG, val,
                 timeout, NULL, 0);
}


static void futex_wake(atomic_int *word) {
  futex(word, FUTEX_WAKE, INT_MAX, NULL);
}


/* Waits while *word == val, at most timeout_ns (-1: no limit). */
static void futex_wait(atomic_int *word, int val, int64_t timeout_ns) {
  struct timespec ts = ip__timespec_of(timeout_ns < 0 ? 0 : timeout_ns);
  IP_SAVE_ERRNO(futex(word, FUTEX_WAIT, val, timeout_ns < 0 ? NULL : &ts));
}


/* ---- the hook ---------------------------------------------------------- */

static int yield_here(ip_sched_t *s, pthread_mutex_t *m) {
  int saved = errno;
  atomic_store(&s->preempt_co, NULL);
  pthread_mutex_unlock(m);
  atomic_store(&yield_done, 1);
  futex_wake(&yield_done);
  ip__yield(s);
  pthread_mutex_lock(m);
  errno = saved;
  return 0; /* a spurious wake-up: take_gil looks at the GIL again */
}


static void note_monitor_wait(pthread_cond_t *c, pthread_mutex_t *m) {
  pthread_cond_t *none = NULL;
  if (atomic_compare_exchange_strong(&gil_cond, &none, c))
    atomic_store(&gil_mutex, m);
  atomic_store(&monitor_waited, 1);
}


/* The named coroutine of this thread, waiting for the GIL with no thread
 * state attached and its hooks on, or NULL.  Never while a subinterpreter's
 * code runs on the coroutine (its thread state bound to the gilstate slot,
 * 3.12+): that thread state is not the coroutine's, and parking would let
 * the main interpreter's coroutines run under it, as a hook never does. */
static ip_sched_t *preempted_here(void) {
  ip_sched_t *s = ip__tls_sched;
  if (s == NULL)
    return NULL;
  ip_coro_t *co = s->current;
  if (co == NULL || !co->hooks ||
      atomic_load_explicit(&s->preempt_co, memory_order_relaxed) != co)
    return NULL;
  if (ip__py_tstate_attached(s) || ip__gilstate_foreign(s))
    return NULL;
  /* A subinterpreter's thread state that waits to attach for the first
   * time is not in the gilstate slot yet, so no slot check can see it:
   * while any subinterpreter exists, coroutines are not preempted.  The
   * interpreter list is read on the thread that may have just linked a new
   * interpreter into it, so that interpreter is seen. */
  void *head = ip__py.PyInterpreterState_Head();
  if (head != NULL && ip__py.PyInterpreterState_Next(head) != NULL)
    return NULL;
  return s;
}


#pragma GCC visibility push(default)

int pthread_cond_timedwait(pthread_cond_t *restrict c,
                           pthread_mutex_t *restrict m,
                           const struct timespec *restrict abstime) {
  pthread_cond_t *gc = atomic_load_explicit(&gil_cond, memory_order_relaxed);
  if (atomic_load_explicit(&learning, memory_order_relaxed) && is_monitor) {
    note_monitor_wait(c, m);
  } else if (c == gc && gc != NULL &&
             m == atomic_load_explicit(&gil_mutex, memory_order_relaxed)) {
    ip_sched_t *s = preempted_here();
    if (s != NULL)
      return yield_here(s, m);
  }
  return ip__real.pthread_cond_timedwait(c, m, abstime);
}

#pragma GCC visibility pop


/* ---- what the monitor looks at ----------------------------------------- */

static int64_t sample_period_ns(void) {
  int64_t us = atomic_load(&interval_us) / 2;
  if (us < 200)
    us = 200; /* waking more often than this costs more than it buys */
  if (us > 50000)
    us = 50000;
  return ip__ns_from_us(us);
}


/* Whether s has something to do besides its running coroutine.  Reads
 * another thread's scheduler: a racy hint, re-checked by the next sample. */
static int has_work(ip_sched_t *s, int64_t now) {
  if (__atomic_load_n(&s->run_next, __ATOMIC_RELAXED) != NULL ||
      __atomic_load_n(&s->runq.next, __ATOMIC_RELAXED) != &s->runq ||
      __atomic_load_n(&s->yieldq.next, __ATOMIC_RELAXED) != &s->yieldq ||
      __atomic_load_n(&s->round.next, __ATOMIC_RELAXED) != &s->round ||
      atomic_load_explicit(&s->remote_pending, memory_order_relaxed))
    return 1;
  if (atomic_load_explicit(&s->next_timer_ns, memory_order_relaxed) <= now)
    return 1;
  /* An epoll fd polls readable while events wait in its ready list;
   * looking does not consume them. */
  struct pollfd p = {.fd = s->epfd, .events = POLLIN};
  return ip__real.poll(&p, 1, 0) == 1;
}


static int sched_idle(ip_sched_t *s) {
  return atomic_load(&s->in_epoll) ||
         __atomic_load_n(&s->stats.alive, __ATOMIC_RELAXED) == 0;
}


/* Under coro_lock: the coroutine to preempt, with its scheduler's request
 * set, or NULL.  *all_idle: no scheduler has anything running. */
static ip_coro_t *pick(int64_t now, int64_t period_ns, int *all_idle) {
  ip_coro_t *target = NULL;
  *all_idle = 1;
  for (ip_sched_t *s = ip__sched_all; s != NULL; s = s->all_next) {
    if (sched_idle(s))
      continue;
    *all_idle = 0;
    ip_coro_t *co = __atomic_load_n(&s->current, __ATOMIC_RELAXED);
    uint64_t sw = __atomic_load_n(&s->stats.switches, __ATOMIC_RELAXED);
    if (co == NULL || sw != s->mon_switches) {
      s->mon_switches = sw;
      s->mon_since_ns = now;
      continue;
    }
    /* Coroutine structs are type-stable: reading a stale one is harmless. */
    if (target != NULL || now - s->mon_since_ns < period_ns - period_ns / 8 ||
        !__atomic_load_n(&co->preemptible, __ATOMIC_RELAXED) ||
        !__atomic_load_n(&co->hooks, __ATOMIC_RELAXED) || !has_work(s, now))
      continue;
    atomic_store(&yield_done, 0);
    atomic_store(&s->preempt_co, co);
    s->mon_since_ns = now; /* if it does not yield, ask again a period on */
    target = co;
  }
  return target;
}


/* Makes CPython ask the GIL holder to drop the GIL, then holds it until the
 * named coroutine has yielded; if the monitor got the GIL without waiting,
 * the coroutine was not holding it (it is in C code that released it) and
 * the GIL goes back at once. */
static void contend(void *tstate) {
  atomic_store(&monitor_waited, 0);
  atomic_store(&learning, 1);
  ip__py.PyEval_RestoreThread(tstate);
  atomic_store(&learning, 0);
  pthread_cond_t *c = atomic_load(&gil_cond);
  if (atomic_load(&monitor_waited) && c != NULL) {
    /* A coroutine already in a real wait for the GIL re-enters the hook. */
    pthread_cond_broadcast(c);
    int64_t limit_ns = ip__ns_from_us(atomic_load(&interval_us));
    if (limit_ns < 200 * IP_NS_PER_US)
      limit_ns = 200 * IP_NS_PER_US;
    if (limit_ns > 2 * IP_NS_PER_MS)
      limit_ns = 2 * IP_NS_PER_MS;
    int64_t deadline = ip__now_ns() + limit_ns;
    int64_t left;
    while (!atomic_load(&yield_done) && (left = deadline - ip__now_ns()) > 0)
      futex_wait(&yield_done, 0, left);
  }
  ip__py.PyEval_SaveThread();
}


/* Sleeps until a scheduler may have work for the monitor, or stop. */
static void sleep_until_busy(void) {
  atomic_store(&monitor_idle, 1);
  int all_idle = 1;
  pthread_mutex_lock(&ip__coro_lock);
  for (ip_sched_t *s = ip__sched_all; s != NULL; s = s->all_next)
    if (!sched_idle(s))
      all_idle = 0;
  pthread_mutex_unlock(&ip__coro_lock);
  if (all_idle && !atomic_load(&monitor_stop))
    futex_wait(&monitor_idle, 1, -1);
  atomic_store(&monitor_idle, 0);
}


/* The monitor's kernel thread id while it runs (0 otherwise): the
 * deadlock watcher must not count it as a thread that could wake a parked
 * coroutine, since it only ever asks running ones to yield. */
static _Atomic pid_t monitor_tid;


int interpose_preempt_monitor_tid(void) { return atomic_load(&monitor_tid); }


static void *monitor_main(void *arg) {
  (void) arg;
  is_monitor = 1;
  atomic_store(&monitor_tid, (pid_t) syscall(SYS_gettid));
  pthread_setname_np(pthread_self(), "ip-preempt"); /* as ps and tests see it */
  void *tstate = ip__py.PyThreadState_New(ip__py.interp);
  while (tstate != NULL && !atomic_load(&monitor_stop)) {
    int64_t period = sample_period_ns();
    futex_wait(&monitor_stop, 0, period);
    if (atomic_load(&monitor_stop))
      break;
    int all_idle;
    pthread_mutex_lock(&ip__coro_lock);
    ip_coro_t *target = pick(ip__now_ns(), period, &all_idle);
    pthread_mutex_unlock(&ip__coro_lock);
    if (target != NULL)
      contend(tstate);
    else if (all_idle)
      sleep_until_busy();
  }
  if (tstate != NULL) {
    ip__py.PyEval_RestoreThread(tstate);
    ip__py.PyThreadState_Clear(tstate);
    ip__py.PyThreadState_DeleteCurrent();
  }
  atomic_store(&monitor_tid, 0);
  return NULL;
}


/* ---- hub side ---------------------------------------------------------- */

void ip__preempt_wake_monitor(void) {
  if (atomic_load(&monitor_idle) && atomic_exchange(&monitor_idle, 0))
    futex_wake(&monitor_idle);
}


void ip__preempt_hub_blocking(ip_sched_t *s, int blocking) {
  /* Sequentially consistent, paired with sleep_until_busy: either the
   * monitor sees this hub awake, or the hub sees the monitor asleep. */
  atomic_store(&s->in_epoll, blocking);
  if (!blocking)
    ip__preempt_wake_monitor();
}


/* ---- exported ---------------------------------------------------------- */

/* In a forked child the monitor thread is gone and CPython deleted its
 * thread state; gil->cond was re-created at the same address. */
static void preempt_after_fork_child(void) {
  atomic_store(&monitor_running, 0);
  atomic_store(&monitor_stop, 0);
  atomic_store(&monitor_idle, 0);
  atomic_store(&learning, 0);
}


static void register_atfork(void) {
  pthread_atfork(NULL, NULL, preempt_after_fork_child);
}


int interpose_preempt_start(void) {
  if (!ip__py_ready())
    return -EINVAL;
  pthread_once(&atfork_once, register_atfork);
  if (atomic_exchange(&monitor_running, 1))
    return 0;
  atomic_store(&monitor_stop, 0);
  /* Signals go to the program's threads, never to the monitor. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(&monitor_thread, NULL, monitor_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    atomic_store(&monitor_running, 0);
    return -r;
  }
  /* Its kernel id is published first thing: wait for it, so that whoever
   * counts the process's threads right after (the fork warning's filter,
   * the deadlock watcher) can tell the monitor from the program's threads. */
  while (atomic_load(&monitor_tid) == 0)
    sched_yield();
  return 0;
}


int interpose_preempt_stop(void) {
  if (!atomic_load(&monitor_running))
    return 0;
  atomic_store(&monitor_stop, 1);
  futex_wake(&monitor_stop);
  atomic_store(&monitor_idle, 0);
  futex_wake(&monitor_idle);
  pthread_join(monitor_thread, NULL);
  atomic_store(&monitor_running, 0);
  return 0;
}


int interpose_preempt_set_interval(int64_t us) {
  atomic_store(&interval_us, us < 1 ? 1 : us);
  return 0;
}


int interpose_coro_set_preemptible(void *handle, int on) {
  ip_coro_t *co = handle;
  if (co == NULL)
    return -EINVAL;
  int previous = co->preemptible;
  if (on >= 0)
    __atomic_store_n(&co->preemptible, on != 0, __ATOMIC_RELAXED);
  return previous;
}
