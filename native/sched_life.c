/* sched_life.c: the lifetime of a thread's scheduler: its creation on
 * first use (ip__sched_ensure), its destruction as its thread finishes,
 * its recovery in a forked child, and the registry of schedulers that
 * other threads read (the blocking monitor's probe, the preemption monitor,
 * the guard-page handler).
 *
 * Invariant: scheduler structs are never freed (type-stable memory).  A
 * destroyed one goes to a free list and may be reused by another thread;
 * its incarnation is odd while it lives and changes after everything is
 * set up and before anything is torn down, so a reader that holds a struct
 * it once found checks the incarnation around its reads (a seqlock, see
 * interpose_sched_probe) and never touches freed memory. */
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>

#include "internal.h"
#include "asan.h"

#define HUB_STACK_SIZE (256 * 1024)

#define tls_sched ip__tls_sched
#define coro_lock ip__coro_lock
#define sched_all ip__sched_all
static ip_sched_t *sched_free; /* guarded by coro_lock */
/* Every scheduler struct ever allocated, newest first; pushed under
 * coro_lock, read without it (the list only grows). */
static ip_sched_t *_Atomic sched_every;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;


/* ---- scheduler lifetime ----------------------------------------------- */

int ip__sched_add_tagged(ip_sched_t *s, int fd, uint64_t tag) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
  return epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
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
  int r = ip__sched_add_tagged(s, s->evfd, IP_TAG_EVENTFD);
  if (r < 0)
    goto fail_eventfd;
  ip__signals_watch(s);
  s->hub_sp = ip__context_init(ip__stack_top(&s->hub_stack), ip__hub_main, s);
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


/* The forking thread's scheduler in a forked child (fork.c orders this
 * after the coroutine allocator's recovery).  Other threads' schedulers
 * are retired but left allocated (their threads are gone, like a forked
 * child's other threads), and their roots invalidated.  s, when the
 * forking thread had one, gets fresh queues and timers, and the forking
 * coroutine becomes its main coroutine.  Its epoll set, eventfd and hub
 * are made later, by the runtime's first use of the scheduler
 * (ip__sched_live), not here: fork.c says why. */
void ip__sched_after_fork_child(ip_sched_t *s, ip_coro_t *survivor) {
  for (ip_sched_t *other = sched_all; other != NULL; other = other->all_next)
    if (other != s) {
      sched_retire(other); /* its thread did not survive; its id may recur */
      if (&other->root != survivor)
        ip__coro_invalidate(&other->root);
    }
  sched_all = s;
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
  s->pid = getpid();
  s->main = survivor;
  s->dead = NULL;
  s->run_next = NULL;
  atomic_store(&s->preempt_co, NULL);
  s->fd_waits = s->ext_waits = 0; /* the parent's parked coroutines' */
  atomic_store(&s->stuck, 0);
  __atomic_store_n(&s->stats.alive, survivor != &s->root, __ATOMIC_RELAXED);
  survivor->timer.index = SIZE_MAX;
}


int ip__sched_live(ip_sched_t **out) {
  ip_sched_t *s = tls_sched;
  *out = NULL;
  if (s != NULL && s->fork_pending) {
    int r = sched_open(s);
    if (r < 0)
      return r;
    s->fork_pending = 0;
  }
  *out = s;
  return 0;
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


static void create_exit_key(void) {
  exit_key_ok = pthread_key_create(&exit_key, sched_at_thread_exit) == 0;
}


int ip__sched_ensure(ip_sched_t **out) {
  *out = NULL;
  if (tls_sched != NULL)
    return ip__sched_live(out);
  int r = ip__stack_install_guard_handler();
  if (r < 0)
    return r;
  ip__fork_install();
  pthread_once(&exit_key_once, create_exit_key);
  /* CPython's arena allocator is replaced as the first scheduler starts,
   * not when Python binds the library, so that importing interpose leaves
   * the process as it was.  Every caller holds the GIL (they are bound
   * through ctypes.PyDLL), which serialises this with the allocator's
   * users; later calls return at once. */
  ip__arena_install();
  ip_sched_t *s = sched_struct_get();
  if (s == NULL)
    return -ENOMEM;
  ip__signals_init(&s->sig);
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
  ip__coro_init_root(s);
  root_stack_bounds(s);
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
  *out = s;
  return 0;
fail:
  sched_struct_put(s);
  return r;
}


/* ---- exported API ----------------------------------------------------- */

void *interpose_sched_self(uint64_t *incarnation) {
  ip_sched_t *s = tls_sched;
  *incarnation = s ? atomic_load(&s->incarnation) : 0;
  return s;
}


/* Reads like a seqlock: the incarnation before and after the fields tells
 * whether they belonged to the scheduler the caller means.  The struct is
 * type-stable, so reading it is safe even when they did not, and so is the
 * coroutine struct it names (never freed either).  (Schedulers are also
 * created and destroyed only with the GIL held, which the caller holds, so
 * the second check is a second line of defence.)
 *
 * The thread state handed to PyThreadState_GetFrame is alive, which is
 * what keeps the probe off freed memory: a spawned coroutine's pointer is
 * cleared before its thread state is deleted (pybridge.c), with the GIL
 * held, which the caller holds until PyThreadState_GetFrame is done.  A
 * root's is cleared by interpose_sched_forget_root as its thread exits, but
 * when CPython runs the thread's Python-level cleanup elsewhere (see
 * sched_at_thread_exit) the thread state is deleted first, and the pointer
 * dangles until the backstop destroys the scheduler.  So a root's is also
 * looked up among the interpreter's live thread states (diag.c does the
 * same); spawned coroutines', the many, need no walk. */
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
  if (tstate != NULL && co == &s->root && !ip__py_tstate_alive(tstate))
    tstate = NULL;
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
