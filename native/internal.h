/* Cross-file declarations of the native engine: the coroutine, the
 * per-thread scheduler, stacks, timers, the fd waiter map and the bridge to
 * CPython.  Nothing here is exported; see interpose.h for the ABI.
 *
 * The error convention, the one place it is written down (docs/design.md,
 * "Error convention", points here):
 *  - Inside the engine a function that can fail returns 0, or a
 *    non-negative value (a count, a park result, a generation), or -errno.
 *    It never sets errno to report, never returns -1 meaning "see errno",
 *    and never returns a positive errno.  A pointer result is not an error
 *    channel: a function that can fail returns 0 / -errno and its pointer
 *    through an out-parameter (ip__sched_ensure); NULL from a lookup means
 *    "none", never "failed".  Cleanup paths keep errno (IP_SAVE_ERRNO).
 *  - At a hook boundary (a libc name this library defines) -errno becomes
 *    libc's convention exactly once, through ip__fail (-1 + errno) or
 *    ip__set_errno (a call that reports failure another way: sleep's
 *    unslept seconds, a NULL hostent, EAI_SYSTEM).  Functions whose libc
 *    contract returns the error number (pthread_*, clock_nanosleep,
 *    gethostbyname_r) return -r.  A real call's own errno (ip__real.*)
 *    passes through untouched.  hookcore.c's ip__io family is part of the
 *    boundary: it returns like the call it carries out.
 *  - The exported ABI (interpose.h) returns 0 / a non-negative value /
 *    -errno and never sets errno; a value that could collide with an error
 *    goes through an out-parameter, never an in-band sentinel. */
#ifndef IP_INTERNAL_H
#define IP_INTERNAL_H

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <spawn.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "interpose.h"
#include "timeconv.h"

#define IP_HIDDEN __attribute__((visibility("hidden")))
#define IP_UNUSED __attribute__((unused))

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))

/* Keeps errno intact across cleanup code that may clobber it. */
#define IP_SAVE_ERRNO(block)                                                  \
  do {                                                                        \
    int ip__saved_errno = errno;                                              \
    block;                                                                    \
    errno = ip__saved_errno;                                                  \
  } while (0)

/* A broken invariant that could corrupt memory ends the process with a
 * message naming the invariant rather than limping on. */
#define IP_CHECK(cond)                                                        \
  do {                                                                        \
    if (!(cond))                                                              \
      ip__fatal(__FILE__, __LINE__, #cond);                                   \
  } while (0)

IP_HIDDEN __attribute__((noreturn)) void ip__fatal(const char *file, int line,
                                                   const char *what);

/* ---- intrusive doubly linked queue ------------------------------------ */

typedef struct ip_link {
  struct ip_link *prev;
  struct ip_link *next;
} ip_link_t;

static inline void ip__queue_init(ip_link_t *q) { q->prev = q->next = q; }
static inline int ip__queue_empty(const ip_link_t *q) { return q->next == q; }
static inline void ip__queue_push_back(ip_link_t *q, ip_link_t *n) {
  n->prev = q->prev;
  n->next = q;
  q->prev->next = n;
  q->prev = n;
}
static inline void ip__queue_push_front(ip_link_t *q, ip_link_t *n) {
  n->next = q->next;
  n->prev = q;
  q->next->prev = n;
  q->next = n;
}
static inline void ip__queue_remove(ip_link_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}
/* Moves every element of src to the back of dst, leaving src empty. */
static inline void ip__queue_splice(ip_link_t *dst, ip_link_t *src) {
  if (ip__queue_empty(src))
    return;
  src->next->prev = dst->prev;
  dst->prev->next = src->next;
  src->prev->next = dst;
  dst->prev = src->prev;
  ip__queue_init(src);
}

/* ---- context switch (switch_<arch>.S) --------------------------------- */

/* Saves the callee-saved registers and FP control words on the current
 * stack, stores the stack pointer in *save_sp and resumes the context whose
 * stack pointer is new_sp. */
IP_HIDDEN void ip__switch(void **save_sp, void *new_sp);
/* Lays out a fresh context at the top of a stack so that switching to the
 * returned stack pointer calls fn(arg).  fn must never return. */
IP_HIDDEN void *ip__context_init(void *stack_top, void (*fn)(void *),
                                 void *arg);

/* ---- stacks (stack.c) ------------------------------------------------- */

typedef struct ip_stack {
  char *base;   /* lowest mapped address: the guard page lives here */
  size_t size;  /* whole mapping, guard page included */
  size_t guard; /* bytes of PROT_NONE at base */
} ip_stack_t;

IP_HIDDEN size_t ip__stack_default_size(void);
IP_HIDDEN size_t ip__stack_round(size_t usable);
/* 0 or -errno (-ENOMEM when the process is out of memory mappings). */
IP_HIDDEN int ip__stack_acquire(ip_stack_t *st, size_t usable);
IP_HIDDEN void ip__stack_release(ip_stack_t *st);
IP_HIDDEN void ip__stack_unmap(ip_stack_t *st);
static inline void *ip__stack_top(const ip_stack_t *st) {
  return st->base + st->size;
}
/* Installs the guard-page SIGSEGV handler (once per process) and an
 * alternate signal stack for the calling thread (once per thread). */
IP_HIDDEN int ip__stack_install_guard_handler(void);
/* Unmaps the calling thread's pooled stacks and its alternate signal stack;
 * called when the thread's scheduler is destroyed. */
IP_HIDDEN void ip__stack_thread_exit(void);
/* Unmaps the calling thread's released stacks that wait to be unmapped
 * together (stack.c); the hub calls it after each round. */
IP_HIDDEN void ip__stack_unmap_released(void);

/* ---- timers (timer.c): a binary min-heap on deadline ------------------ */

typedef struct ip_timer {
  int64_t deadline_ns;
  uint64_t seq;   /* insertion order: equal deadlines fire FIFO */
  size_t index;   /* position in the heap; SIZE_MAX when not armed */
} ip_timer_t;

typedef struct ip_heap {
  ip_timer_t **items;
  size_t len;
  size_t cap;
  uint64_t next_seq;
} ip_heap_t;

IP_HIDDEN void ip__heap_init(ip_heap_t *h);
IP_HIDDEN void ip__heap_free(ip_heap_t *h);
IP_HIDDEN int ip__heap_insert(ip_heap_t *h, ip_timer_t *t); /* 0 / -ENOMEM */
IP_HIDDEN void ip__heap_remove(ip_heap_t *h, ip_timer_t *t);
IP_HIDDEN ip_timer_t *ip__heap_min(const ip_heap_t *h);
static inline int ip__timer_armed(const ip_timer_t *t) {
  return t->index != SIZE_MAX;
}

/* The monotonic clock in nanoseconds: the engine's time (timer.c). */
IP_HIDDEN int64_t ip__now_ns(void);

/* ---- coroutines and the scheduler (sched.c) --------------------------- */

enum ip_coro_state {
  IP_CORO_RUNNABLE = 1,
  IP_CORO_RUNNING,
  IP_CORO_PARKED,
  IP_CORO_DEAD,
};

/* The park word packs the park generation with the wake state, so that a
 * wake aimed at an earlier park can never end a later one. */
#define IP_PARK_ARMED 0u  /* prepared; no wake yet */
#define IP_PARK_WOKEN 1u  /* a wake won; wake_result holds its result */
#define IP_PARK_SLEEP 2u  /* switched away; the winner of a wake enqueues */
#define IP_PARK_CLAIMED 3u /* a waker is writing wake_result */
#define IP_PARK_STATE_BITS 2
#define IP_PARK_STATE_MASK ((1u << IP_PARK_STATE_BITS) - 1)
/* The IP_PARK_* state in a park word. */
static inline unsigned ip__park_state(uint64_t word) {
  return (unsigned) (word & IP_PARK_STATE_MASK);
}

/* Why a parked coroutine waits (ip_coro_t.wait_kind); the values are part
 * of the ABI (INTERPOSE_WAIT_* in interpose.h). */
enum ip_wait_kind {
  IP_WAIT_NONE = 0,
  IP_WAIT_PARK = 1,    /* interpose_coro_park from Python: see its stack */
  IP_WAIT_FD = 2,      /* one fd (a blocking call, wait_readable, ...) */
  IP_WAIT_POLL = 3,    /* poll/select/epoll_wait over several fds */
  IP_WAIT_LOCK = 4,    /* a semaphore: a CPython lock */
  IP_WAIT_SLEEP = 5,   /* a sleep hook */
  IP_WAIT_RESOLVE = 6, /* a name lookup on the resolver pool */
  IP_WAIT_YIELD = 7,   /* gave its turn away at the end of a time slice */
};
#define IP_HELD_LOCKS 4

struct ip_sched;

/* The cache line size of every CPU we build for (x86_64, aarch64). */
#define IP_CACHE_LINE 64

/* Layout: the fields every turn of an I/O-bound coroutine reads or writes
 * (switch, park, wake, time slice, statistics, pthread_self) come first and
 * fill the struct's first four cache lines, which coro_alloc aligns; the
 * rest (semaphores held, name, sanitizer state) is cold.  With a thousand
 * coroutines taking turns, each hot line outside that block is one more
 * cache miss per turn (pthread_self alone cost ~100 ns per round trip of
 * the echo benchmark when thread_ident sat in a line of its own). */
typedef struct ip_coro {
  void *sp; /* saved stack pointer while not running */
  ip_link_t run_link;
  struct ip_sched *sched;
  ip_stack_t stack; /* base == NULL for a root (the thread's own stack) */
  void *tstate;     /* PyThreadState *, owned by CPython */
  /* Invariant: 0, or the pthread_self() value of this coroutine while it is
   * alive (hooks_pthread.c); 0 for every thread's root coroutine. */
  uintptr_t thread_ident;
  void *body;       /* PyObject *, one reference, dropped before death */
  uint64_t id;      /* unique per incarnation; 0 only for free structs */
  /* Invariant: changes only by CAS; (gen << 2) | IP_PARK_*. */
  _Atomic uint64_t park_word;
  int wake_result;  /* written by the wake that won, read after the park */
  atomic_int cancelled;
  int shield; /* > 0: parks ignore cancellation and the deadline */
  int state;        /* enum ip_coro_state; touched only by the owning thread */
  int64_t deadline_ns; /* -1 when none */
  ip_timer_t timer;
  int timer_result; /* what the armed timer wakes the park with */
  int hooks;        /* 1: blocking libc calls made here park this coroutine */
  /* Time slice (see ip__yield_if_due): when the hub last resumed it, its
   * hooked calls since, and an EINTR a yield swallowed for the next park. */
  int64_t resumed_ns;
  unsigned hook_calls;
  int pending_eintr;
  /* 1: the preemption monitor may make it yield at a bytecode boundary
   * (preempt.c); threads are, spawned coroutines opt in. */
  int preemptible;
  struct ip_coro *free_next;
  struct ip_coro *all_next; /* every struct ever allocated, for fork */
  /* What the coroutine waits for while parked, for interpose.dump() and
   * the deadlock report (diag.c).  Written by the owning thread just
   * before it parks; read by other threads without a lock (the struct is
   * type-stable), so a reader may see the previous park's reason. */
  int wait_kind;        /* IP_WAIT_* */
  int wait_fd;          /* IP_WAIT_FD, IP_WAIT_POLL: the (first) fd */
  int wait_events;      /* IP_WAIT_FD: INTERPOSE_READABLE | _WRITABLE;
                           IP_WAIT_POLL: the number of fds */
  const void *wait_obj; /* IP_WAIT_LOCK: the sem_t */
  /* IP_WAIT_LOCK: what names the lock (ip__pyver_lock_key): the sem_t, or
   * on 3.13+ the address a parking-lot waiter parked on. */
  const void *wait_key;
  /* Statistics, written by the owning thread's hub: when it last became
   * runnable, its time on the thread, its longest single turn, turns. */
  int64_t ready_ns;
  uint64_t run_ns;
  uint64_t max_turn_ns;
  uint64_t turns;
  /* Semaphores it took last (sem_trywait/sem_wait succeeded and it has not
   * posted them since), newest first: the owners in a lock cycle. */
  const void *held[IP_HELD_LOCKS];
  char name[64]; /* truncated copy, for the async-signal-safe overflow report */
  void *san_fake; /* AddressSanitizer's fake stack while switched away */
} ip_coro_t;

#define IP_LATENCY_BUCKETS 48

/* Signals 1..IP_NSIG_MAX, as the kernel numbers them (glibc's NSIG is one
 * more than the highest); a bit each in ip_signals_t.deferred. */
#define IP_NSIG_MAX (NSIG - 1)
_Static_assert(IP_NSIG_MAX <= 64,
               "ip_signals_t.deferred holds a bit per signal");

/* The signal state of a scheduler (signals.c). */
typedef struct ip_signals {
  int wakeup_fd;  /* read end of Python's signal wakeup pipe, or -1 */
  int forward_fd; /* the program's own wakeup fd, or -1 */
  uint64_t deferred; /* bit n-1: signal n waits for the main coroutine */
  /* Per signal: wakeup bytes that a re-trip wrote, not to forward. */
  unsigned retripped[IP_NSIG_MAX];
} ip_signals_t;

typedef struct ip_sched {
  /* These first four fields survive the reuse of the struct (sched.c resets
   * everything from root on).  Invariant: scheduler structs are never freed
   * (type-stable memory): a destroyed one goes to a free list and may be
   * reused by another thread, so the blocking monitor and the guard-page
   * handler may read any struct they once found, at any time, and must
   * check incarnation to know it is still the scheduler they meant. */
  struct ip_sched *every_next; /* every struct ever allocated; never shrinks */
  struct ip_sched *free_next;  /* guarded by the free list's lock */
  /* Invariant: odd while the scheduler lives, even once destroyed; it
   * changes after everything is set up and before anything is torn down. */
  _Atomic uint64_t incarnation;
  /* The owning thread's kernel id while the scheduler lives, else 0: the
   * guard-page handler finds its thread's scheduler by it, without TLS. */
  _Atomic pid_t tid;
  ip_coro_t root;     /* the thread's own context and thread state */
  /* Invariant: the coroutine that gets KeyboardInterrupt and forwarded
   * exceptions; &root except in a child forked from a spawned coroutine. */
  ip_coro_t *main;
  ip_coro_t *current; /* running coroutine; NULL while the hub runs */
  void *hub_sp;
  ip_stack_t hub_stack;
  ip_link_t runq; /* FIFO of RUNNABLE coroutines of this thread */
  /* FIFO of RUNNABLE coroutines that were preempted (ip__yield): one runs
   * at the end of each round, after every coroutine woken by I/O, a timer
   * or a wake, as a thread woken from a wait gets the GIL ahead of those
   * that compute. */
  ip_link_t yieldq;
  /* RUNNABLE, runs before the rest of the round: the last coroutine that a
   * running coroutine woke (see wake_local in sched.c). */
  ip_coro_t *run_next;
  /* RUNNABLE: the part of the run queue the hub's current round took and
   * has not run yet (see run_round in sched.c). */
  ip_link_t round;
  pthread_mutex_t remote_lock;
  ip_link_t remote; /* woken from other threads; guarded by remote_lock */
  /* Invariant: non-zero whenever remote is non-empty (set under
   * remote_lock, before the eventfd write), so the hub can skip the lock
   * when it reads zero: a push it misses wakes epoll_wait. */
  atomic_int remote_pending;
  /* Invariant: epfd and evfd are -1 exactly while fork_pending is set. */
  int epfd;
  int evfd;      /* eventfd for cross-thread wake-ups */
  /* Set in a forked child until the runtime uses the scheduler again (see
   * fork.c): until then every hook is the real call. */
  int fork_pending;
  ip_signals_t sig; /* signals.c; used on the main thread's scheduler */
  int is_main_thread;
  ip_heap_t timers;
  ip_coro_t *dead; /* exited coroutine whose stack the hub reclaims */
  int64_t last_poll_ns; /* when the hub last polled while work was queued */
  interpose_stats_t stats;
  pid_t pid; /* detects use in a forked child */
  struct ip_sched *all_next; /* every live scheduler, for fork */
  void *hub_san_fake;        /* SANITIZE=1 only: see sched.c */
  void *root_stack_bottom;
  size_t root_stack_size;
  /* Preemption (preempt.c).  Invariant: preempt_co is NULL or the
   * coroutine the monitor asked to yield; only the hook acts on it, and
   * only while that coroutine is the running one. */
  _Atomic(ip_coro_t *) preempt_co;
  /* Earliest timer deadline when the hub last resumed a coroutine
   * (INT64_MAX: none), and whether the hub is blocked in epoll_wait: read
   * by the monitor thread. */
  _Atomic int64_t next_timer_ns;
  atomic_int in_epoll;
  uint64_t mon_switches; /* the monitor's own: switch count last seen */
  int64_t mon_since_ns;  /* the monitor's own: when it last changed */
  /* Diagnostics (diag.c).  Parked coroutines waiting on an fd or on the
   * resolver pool: while either is non-zero something outside the
   * scheduler can wake it, so it is not deadlocked. */
  int fd_waits;
  int ext_waits;
  /* Invariant: 1 only while the hub sleeps in epoll_wait with no timer,
   * an empty run queue and fd_waits == ext_waits == 0: every coroutine of
   * the thread is parked on something only another coroutine, another OS
   * thread or a signal can end. */
  atomic_int stuck;
  /* Run-queue latency (wake to run) in log2(ns) buckets, and the longest
   * turn any coroutine took; written by the hub only. */
  uint64_t latency_hist[IP_LATENCY_BUCKETS];
  uint64_t max_turn_ns;
  int64_t now_ns; /* the hub's latest clock reading (see run_coroutine) */
} ip_sched_t;

IP_HIDDEN extern __thread ip_sched_t *ip__tls_sched;
static inline ip_sched_t *ip__sched_get(void) { return ip__tls_sched; }
/* The live scheduler of the thread whose kernel id is tid, or NULL.
 * Async-signal-safe: it reads the type-stable list of schedulers without a
 * lock or TLS (the SIGSEGV handler uses it). */
IP_HIDDEN ip_sched_t *ip__sched_of_tid(pid_t tid);
/* The calling thread's scheduler in *out, created if needed; the GIL must
 * be held.  0, or -errno with *out NULL (sched_life.c). */
IP_HIDDEN int ip__sched_ensure(ip_sched_t **out);
/* The calling thread's scheduler in *out (NULL: it has none), its epoll
 * set reopened if a fork left it pending; 0, or -errno with *out NULL. */
IP_HIDDEN int ip__sched_live(ip_sched_t **out);
/* Adds fd to s's epoll set, level-triggered for reading, its events tagged
 * with tag (IP_TAG_*); 0 or -errno. */
IP_HIDDEN int ip__sched_add_tagged(ip_sched_t *s, int fd, uint64_t tag);
/* Tags of the hub's own epoll registrations; an fd's registration carries
 * its number and generation instead (fdtable.c), never these values. */
#define IP_TAG_EVENTFD UINT64_MAX
#define IP_TAG_SIGNAL (UINT64_MAX - 1)
/* The hub's loop, entered on its own stack (sched.c). */
IP_HIDDEN void ip__hub_main(void *arg);
/* The calling thread's own context as the root coroutine of s (sched.c). */
IP_HIDDEN void ip__coro_init_root(ip_sched_t *s);
IP_HIDDEN void ip__coro_invalidate(ip_coro_t *co);
/* After-fork hooks of the coroutine allocator and of the schedulers,
 * called by fork.c in its stated order. */
IP_HIDDEN void ip__coro_after_fork_child(ip_coro_t *survivor);
IP_HIDDEN void ip__sched_after_fork_child(ip_sched_t *s, ip_coro_t *survivor);
/* fork.c: registers the after-fork handler, once per process. */
IP_HIDDEN void ip__fork_install(void);

/* ---- signals (signals.c) ---------------------------------------------- */

IP_HIDDEN void ip__signals_init(ip_signals_t *sig);
IP_HIDDEN void ip__signals_after_fork_child(ip_signals_t *sig);
IP_HIDDEN void ip__signals_retrip(ip_signals_t *sig);
/* The main coroutine resumes: signals deferred to it trip again, before
 * any Python code of it runs. */
static inline void ip__signals_main_resumed(ip_signals_t *sig) {
  if (sig->deferred != 0)
    ip__signals_retrip(sig);
}
/* A signal arrived (epoll_wait was interrupted, or the wakeup pipe is
 * readable): the main coroutine of the main thread wakes with EINTR. */
IP_HIDDEN void ip__signals_wake_main(ip_sched_t *s);
/* Empties the wakeup pipe, forwarding its bytes to the program's fd. */
IP_HIDDEN void ip__signals_drain(ip_signals_t *sig);
/* Watches the wakeup pipe in s's epoll set (a new or reopened one). */
IP_HIDDEN void ip__signals_watch(ip_sched_t *s);
/* Parks the running coroutine until a wake for the prepared generation. */
IP_HIDDEN int ip__park(ip_sched_t *s, int64_t timeout_ns);
IP_HIDDEN uint64_t ip__prepare(ip_coro_t *co);
IP_HIDDEN void ip__coro_main(void *arg);
IP_HIDDEN int ip__wake(ip_coro_t *co, uint64_t gen, int result, int front);
/* At a hooked call: lets the others run first if the running coroutine
 * has held the thread for a whole time slice. */
IP_HIDDEN void ip__yield_if_due(ip_sched_t *s);
/* Puts the running coroutine at the back of the run queue and runs the
 * others: a preemption (preempt.c), called with no thread state attached.
 * Unlike a park it ignores cancellation, deadlines and pending wakes. */
IP_HIDDEN void ip__yield(ip_sched_t *s);
/* preempt.c: the hub is about to block in epoll_wait (blocking = 1) or has
 * returned from it (0); a new scheduler exists (the monitor watches it). */
IP_HIDDEN void ip__preempt_hub_blocking(ip_sched_t *s, int blocking);
IP_HIDDEN void ip__preempt_wake_monitor(void);
/* The list of every live scheduler and its lock (sched.c), which the
 * monitor walks. */
IP_HIDDEN extern pthread_mutex_t ip__coro_lock;
IP_HIDDEN extern ip_sched_t *ip__sched_all;
static inline uint64_t ip__park_gen(ip_coro_t *co) {
  return atomic_load(&co->park_word) >> IP_PARK_STATE_BITS;
}

/* ---- diagnostics (diag.c) --------------------------------------------- */

/* Records what the running coroutine is about to park for. */
static inline void ip__wait_note(ip_coro_t *co, int kind, int fd, int events,
                                 const void *obj) {
  co->wait_kind = kind;
  co->wait_fd = fd;
  co->wait_events = events;
  co->wait_obj = obj;
}
/* The hub of s is about to sleep with nothing but other coroutines, other
 * threads or signals able to wake its coroutines: tell the deadlock
 * watcher, if one waits to hear it.  Async-signal-unsafe; hub only. */
IP_HIDDEN void ip__diag_stuck(ip_sched_t *s);
/* The running coroutine took or gave back a semaphore. */
IP_HIDDEN void ip__diag_took(const void *sem);
IP_HIDDEN void ip__diag_gave(const void *sem);
/* Resolver pool threads alive (hooks_names.c): not wakers of their own. */
IP_HIDDEN int ip__names_workers(void);
/* Locks the registry of coroutines and schedulers (sched.c) and calls fn
 * for every live coroutine, roots included. */
IP_HIDDEN void ip__sched_each(void (*sched_fn)(ip_sched_t *s, void *arg),
                              void (*coro_fn)(ip_coro_t *co, void *arg),
                              void *arg);

/* ---- real libc functions (real.c) ------------------------------------ */

#define IP_REAL_FUNCTIONS(X)                                                  \
  X(socket) X(socketpair) X(accept) X(accept4) X(pipe) X(pipe2) X(eventfd)    \
  X(connect) X(read) X(readv) X(recv) X(recvfrom) X(recvmsg) X(recvmmsg)      \
  X(write) X(writev) X(send) X(sendto) X(sendmsg) X(sendmmsg) X(poll)         \
  X(ppoll) X(select) X(pselect) X(epoll_wait) X(epoll_pwait) X(sleep)         \
  X(usleep) X(nanosleep) X(clock_nanosleep) X(fcntl) X(fcntl64) X(ioctl)      \
  X(setsockopt) X(close) X(dup) X(dup2) X(dup3) X(open) X(open64) X(openat)   \
  X(openat64) X(epoll_create) X(epoll_create1) X(getaddrinfo)                 \
  X(getnameinfo) X(gethostbyname) X(gethostbyname2) X(gethostbyname_r)        \
  X(gethostbyname2_r) X(gethostbyaddr) X(gethostbyaddr_r) X(waitpid)     \
  X(close_range) X(closefrom) X(sendfile) X(sendfile64)                      \
  X(posix_spawn_file_actions_adddup2) X(sem_wait) X(sem_timedwait)          \
  X(sem_clockwait) X(sem_post) X(sem_trywait) X(pthread_cond_timedwait) \
  X(listen)

#define IP_REAL_FIELD(name) __typeof__(&name) name;
typedef struct ip_real {
  IP_REAL_FUNCTIONS(IP_REAL_FIELD)
} ip_real_t;

/* The table, resolved on first use (real.c explains why: another library's
 * constructor may call a hooked function before ours has run).  Every use
 * goes through ip__real_table(), which the ip__real macro below spells, so
 * no code can read an unresolved pointer. */
IP_HIDDEN extern ip_real_t ip__real_storage;
IP_HIDDEN extern int ip__real_ready;
IP_HIDDEN void ip__real_resolve(void);
static inline ip_real_t *ip__real_table(void) {
  if (__builtin_expect(!__atomic_load_n(&ip__real_ready, __ATOMIC_ACQUIRE), 0))
    ip__real_resolve();
  return &ip__real_storage;
}
#define ip__real (*ip__real_table())

/* ---- the fd table (fdtable.c) ----------------------------------------- */

enum ip_fd_kind {
  IP_FD_UNKNOWN = 0, /* not classified yet */
  IP_FD_SOCKET,
  IP_FD_PIPE,  /* pipes and FIFOs */
  IP_FD_CHR,   /* terminals and other character devices */
  IP_FD_REG,   /* regular files and directories: never wait */
  IP_FD_POLL,  /* other pollable kinds: eventfd, epoll, signalfd, ... */
};

/* Bits of ip_fd_t.state, read without the entry lock. */
#define IP_FD_KIND_MASK 0x7u
#define IP_FD_KNOWN 0x8u      /* the entry describes the open fd */
#define IP_FD_TRACKED 0x10u   /* created by a hook: its close is seen too */
#define IP_FD_OURS_NB 0x20u   /* we set O_NONBLOCK; the user sees blocking */
#define IP_FD_USER_NB 0x40u   /* the user asked for non-blocking I/O */
#define IP_FD_STREAM 0x80u    /* SOCK_STREAM socket: writes transfer all */
#define IP_FD_SHARED 0x100u   /* a dup shares the file description */
/* The hub saw EPOLLRDHUP, EPOLLHUP or EPOLLERR: a read may now return at
 * once (EOF, an error) with no further event, so rd_drained is ignored. */
#define IP_FD_RD_FINAL 0x200u
/* What the kernel refuses before it would block (see ip__refused_at_once):
 * reads of a write-only (or O_PATH) description and writes to a read-only
 * one fail with EBADF; an eventfd or timerfd refuses reads and writes of
 * fewer than 8 bytes, a signalfd reads of fewer than 128, with EINVAL. */
#define IP_FD_NO_READ 0x400u
#define IP_FD_NO_WRITE 0x800u
#define IP_FD_MIN8 0x1000u
#define IP_FD_MIN128 0x2000u

/* 1 when the real call on a blocking fd of state st would return at once
 * (an error, or 0 for an empty transfer): the hook must make it without
 * waiting for readiness first.  len: the bytes asked for. */
static inline int ip__refused_at_once(uint32_t st, int events, size_t len) {
  if (len == 0)
    return 1;
  if (events & INTERPOSE_READABLE)
    return (st & IP_FD_NO_READ) || ((st & IP_FD_MIN8) && len < 8) ||
           ((st & IP_FD_MIN128) && len < 128);
  return (st & IP_FD_NO_WRITE) || ((st & IP_FD_MIN8) && len < 8);
}

typedef struct ip_fd {
  _Atomic uint32_t state; /* IP_FD_* bits */
  _Atomic int64_t rcv_timeout_ns; /* SO_RCVTIMEO; 0 = none */
  _Atomic int64_t snd_timeout_ns; /* SO_SNDTIMEO; 0 = none */
  /* Names the open file description: dups share it, and with it the
   * user's O_NONBLOCK and the socket timeouts. */
  _Atomic uint64_t desc;
  /* Invariant: equal to scheduler s only if a plain read on a stream
   * socket, made on s's thread, returned less than it asked for (the
   * receive queue was empty at that moment) and s's hub has dispatched no
   * read event for the fd since: every byte that arrived later has raised
   * an edge that s has not yet dispatched, or the registration is not in
   * s, and waiting there re-adds it, which reports the readiness anyway.
   * A read on s may then park without first trying the call (hookcore.c).
   * Cleared by every dispatched read event and every registration change;
   * other threads only ever clear it. */
  _Atomic(ip_sched_t *) rd_drained;
  atomic_flag lock; /* guards the fields below */
  /* Invariant: non-NULL exactly while the fd is in that scheduler's epoll
   * set; registrations are tagged with gen, which grows on every removal. */
  ip_sched_t *reg_sched;
  uint32_t gen;
  uint32_t reg_events; /* EPOLL* events registered */
  ip_link_t waiters;   /* ip_waiter_t.link, from any scheduler */
} ip_fd_t;

typedef struct ip_waiter {
  ip_link_t link;
  ip_coro_t *co;
  uint64_t gen;
  int fd;
  int events; /* INTERPOSE_READABLE | INTERPOSE_WRITABLE */
} ip_waiter_t;

/* The table's top level (fdtable.c): chunks of 2^15 entries, allocated on
 * first use and published with a CAS; entries never move. */
#define IP_FD_CHUNK_SHIFT 15
#define IP_FD_TOP_SIZE (1u << 15) /* 2^15 chunks of 2^15 entries: 2^30 fds */
IP_HIDDEN extern ip_fd_t *_Atomic ip__fd_chunks[IP_FD_TOP_SIZE];
IP_HIDDEN ip_fd_t *ip__fd_entry_slow(int fd);
/* The entry for fd, or NULL when fd is negative or memory ran out.  Every
 * hooked call looks its fd up, several times per round trip: the common
 * case (chunk already there) is inline. */
static inline ip_fd_t *ip__fd_entry(int fd) {
  if (fd >= 0 && (unsigned) fd < (IP_FD_TOP_SIZE << IP_FD_CHUNK_SHIFT)) {
    ip_fd_t *chunk = atomic_load_explicit(
        &ip__fd_chunks[(unsigned) fd >> IP_FD_CHUNK_SHIFT],
        memory_order_acquire);
    if (chunk != NULL)
      return &chunk[(unsigned) fd & ((1u << IP_FD_CHUNK_SHIFT) - 1)];
  }
  return ip__fd_entry_slow(fd);
}
/* The state bits of fd, classifying it (fstat, F_GETFL) if needed. */
IP_HIDDEN uint32_t ip__fd_state(int fd);
/* ip__fd_state for e = ip__fd_entry(fd), already looked up (may be NULL). */
IP_HIDDEN uint32_t ip__fd_entry_state(int fd, ip_fd_t *e);
/* A hook created fd: records its kind and whether we made it
 * non-blocking behind the user's back. */
IP_HIDDEN void ip__fd_created(int fd, uint32_t state);
/* fd is about to be closed or replaced: unregister it, wake its waiters
 * with -EBADF and forget what was known about it. */
IP_HIDDEN void ip__fd_forget(int fd);
/* ip__fd_forget for every known fd from first to last, inclusive. */
IP_HIDDEN void ip__fd_forget_range(unsigned first, unsigned last);
/* newfd now shares oldfd's open file description (dup and friends). */
IP_HIDDEN void ip__fd_copy(int oldfd, int newfd);
/* Record the user's O_NONBLOCK / a socket timeout for fd and every dup of
 * its file description. */
IP_HIDDEN void ip__fd_set_user_nonblock(int fd, int on);
IP_HIDDEN void ip__fd_set_timeout(int fd, int optname, int64_t ns);
/* fd, a socket we made non-blocking, is being handed to another program as
 * a standard fd: clear O_NONBLOCK on its file description, which is then no
 * longer ours (hooked socket calls carry MSG_DONTWAIT and do not care).
 * Returns 1 if it changed anything.  errno is kept. */
IP_HIDDEN int ip__fd_hand_over(int fd);
/* Registers w (its co and gen filled in) as waiting on fd; 0, -EBADF, or
 * -EPERM for a file epoll cannot watch (always ready). */
IP_HIDDEN int ip__fd_watch(ip_sched_t *s, ip_waiter_t *w);
IP_HIDDEN void ip__fd_unwatch(ip_sched_t *s, ip_waiter_t *w);
/* Parks until fd may be ready.  check_first: look with poll() before
 * parking (needed unless the caller has just seen EAGAIN). */
IP_HIDDEN int ip__fd_wait(ip_sched_t *s, int fd, int events,
                          int64_t timeout_ns, int check_first);
IP_HIDDEN void ip__fd_dispatch(ip_sched_t *s, uint64_t data,
                               uint32_t events);
/* Drops every registration held by s (its epoll set is going away). */
IP_HIDDEN void ip__fd_drop_sched(ip_sched_t *s);
/* In a forked child: every registration and waiter belonged to the parent. */
IP_HIDDEN void ip__fd_after_fork_child(void);
/* fd, opened by the runtime for itself with a real (unhooked) call, moved
 * to the lowest free number at or above the internal floor, close-on-exec;
 * fd itself when it cannot move.  errno is kept. */
IP_HIDDEN int ip__fd_move_internal(int fd);

/* ---- hooks (hooks_*.c) ------------------------------------------------ */

/* The scheduler when the caller may park: a running coroutine with its
 * hooks on and no thread state attached (a hook entered with the GIL held
 * must block the thread instead, or it would switch with the GIL). */
IP_HIDDEN ip_sched_t *ip__hook_sched(void);
/* open()/openat() of a FIFO that would block in the kernel, done so that
 * the coroutine parks instead (hooks_fifo.c): 1 with *result the new fd or
 * -errno, or 0 (*result untouched) when the caller makes the real call. */
IP_HIDDEN int ip__fifo_open(int dirfd, const char *path, int flags,
                            mode_t mode, int *result);
/* glibc's report of a fortified call's buffer overflow; never returns. */
extern void __chk_fail(void) __attribute__((noreturn));
/* The hook boundary: the one conversion of the engine's -errno into libc's
 * errno (see the convention at the top of this file).  ip__fail for calls
 * that report -1, ip__set_errno for those that report failure otherwise
 * (sleep's unslept seconds, a NULL hostent). */
static inline void ip__set_errno(int neg_errno) {
  errno = -neg_errno;
}
static inline int ip__fail(int neg_errno) {
  ip__set_errno(neg_errno);
  return -1;
}
/* Waits for fd per the blocking rules: parks when s is non-NULL, else
 * blocks the thread in the real poll().  Returns 0 when ready, -EAGAIN on
 * timeout (the SO_RCVTIMEO convention), or -errno. */
IP_HIDDEN int ip__block_on(ip_sched_t *s, int fd, int events,
                           int64_t deadline_ns, int check_first);
IP_HIDDEN int64_t ip__deadline_after(int64_t timeout_ns);

/* How a call that may block on fd is carried out. */
typedef enum ip_mode {
  IP_MODE_REAL,        /* the real call as it is: it will not park */
  IP_MODE_RETRY,       /* non-blocking in the kernel: retry after EAGAIN */
  IP_MODE_DONTWAIT,    /* a foreign socket: add MSG_DONTWAIT, then as RETRY */
  IP_MODE_READY_FIRST, /* a foreign pipe or tty: wait until ready, then call */
} ip_mode_t;

IP_HIDDEN ip_mode_t ip__io_mode(int fd, ip_sched_t **s_out);
/* What a hooked call knows about its fd and its caller, found once per
 * call: a round trip's recv and send each look their fd up and ask
 * ip__hook_sched once, not once per step.  Valid until the call parks
 * (then the fd may have been closed and reused: the engine re-reads). */
typedef struct ip_io_fd {
  ip_sched_t *s; /* ip__hook_sched(), set by ip__io_resolve */
  ip_fd_t *e;    /* the fd's entry, NULL when unarmed or out of memory */
  uint32_t st;   /* its state bits, 0 when unarmed */
  ip_mode_t mode;
} ip_io_fd_t;
/* Step one: the entry and state bits (no switch can happen here). */
IP_HIDDEN void ip__io_lookup(int fd, ip_io_fd_t *f);
/* Step two, after any check that fails the call at once: the mode and the
 * scheduler, as ip__io_mode (this may yield, if a turn is due). */
IP_HIDDEN ip_mode_t ip__io_resolve(ip_io_fd_t *f);
/* ip__io_deadline from the looked-up entry. */
IP_HIDDEN int64_t ip__io_fd_deadline(const ip_io_fd_t *f, int events);
static inline ip_mode_t ip__io_mode_of(int fd) {
  ip_sched_t *s;
  return ip__io_mode(fd, &s);
}
/* Set once any scheduler exists in the process; until then every hook is
 * a plain call to the real function (a preloaded ls pays one load). */
IP_HIDDEN extern atomic_int ip__armed;
static inline int ip__hooks_armed(void) {
  return atomic_load_explicit(&ip__armed, memory_order_relaxed);
}
/* One attempt of a call; dontwait is MSG_DONTWAIT or 0; direct: make the
 * system call without libc's wrapper (rawcall.h), only ever for an attempt
 * that cannot block, made in a coroutine.  Returns like the call, with
 * errno set. */
typedef ssize_t (*ip_attempt_fn)(void *ctx, int fd, int dontwait,
                                 int direct);
/* A call that would block on fd for events, carried out per ip__io_mode,
 * honouring SO_RCVTIMEO / SO_SNDTIMEO (EAGAIN after the timeout). */
IP_HIDDEN ssize_t ip__io(int fd, int events, ip_attempt_fn attempt,
                         void *ctx);
/* ip__io with an absolute deadline (-1: none) that bounds the whole of a
 * call made of several attempts, as SO_RCVTIMEO / SO_SNDTIMEO bound the
 * kernel's; IP_SOCKET_TIMEOUT: start the socket's timeout now. */
#define IP_SOCKET_TIMEOUT (-2)
IP_HIDDEN ssize_t ip__io_until(int fd, int events, ip_attempt_fn attempt,
                               void *ctx, int64_t deadline);
/* ip__io_fd_until (below) for a plain read of len bytes (no flags) from
 * fd: on a stream socket that the last read found drained
 * (ip_fd_t.rd_drained), it parks for the next edge before making the call,
 * which saves a system call that would return EAGAIN. */
IP_HIDDEN ssize_t ip__read_fd_until(const ip_io_fd_t *f, int fd,
                                    ip_attempt_fn attempt, void *ctx,
                                    int64_t deadline, size_t len);
/* ip__io_until for a call that has looked up and resolved f itself. */
IP_HIDDEN ssize_t ip__io_fd_until(const ip_io_fd_t *f, int fd, int events,
                                  ip_attempt_fn attempt, void *ctx,
                                  int64_t deadline);
/* The absolute deadline set by fd's socket timeout for events, or -1. */
IP_HIDDEN int64_t ip__io_deadline(int fd, int events);
IP_HIDDEN void ip__names_after_fork_child(void);
IP_HIDDEN void ip__sem_after_fork_child(void);
/* Set in a forked child (by fork.c's handler), where fds may be on their
 * way to a program that exec replaces us with. */
IP_HIDDEN extern int ip__forked_child;

/* ---- thread identities (hooks_pthread.c) ------------------------------ */

/* Set by interpose_thread_idents_enable: spawned coroutines get handles. */
IP_HIDDEN extern atomic_int ip__thread_idents;
/* Gives co (on the calling OS thread) a handle when identities are on:
 * 0, or -ENOMEM / -EAGAIN when none is left. */
IP_HIDDEN int ip__ident_attach(ip_coro_t *co);
/* pthread_self() answers handle (0: as usual) on this OS thread: spawn sets
 * it around PyThreadState_New, which records the thread id. */
IP_HIDDEN void ip__ident_creating(uintptr_t handle);
/* Frees co's handle: after its thread state is gone, the handle is dead. */
IP_HIDDEN void ip__ident_detach(ip_coro_t *co);
IP_HIDDEN void ip__ident_after_fork_child(ip_coro_t *survivor);

/* ---- the CPython bridge (pybridge.c, pyver.c) ------------------------- */

typedef struct ip_pyapi {
  void *(*PyThreadState_New)(void *interp);
  void *(*PyThreadState_Get)(void);
  void (*PyThreadState_Clear)(void *tstate);
  void (*PyThreadState_DeleteCurrent)(void);
  void (*PyThreadState_Delete)(void *tstate);
  void (*PyEval_RestoreThread)(void *tstate);
  void *(*PyEval_SaveThread)(void);
  void *(*PyObject_CallNoArgs)(void *callable);
  void (*Py_IncRef)(void *obj);
  void (*Py_DecRef)(void *obj);
  void (*PyErr_WriteUnraisable)(void *obj);
  void *(*PyThreadState_GetUnchecked)(void);
  void (*PyObject_GetArenaAllocator)(void *allocator);
  void (*PyObject_SetArenaAllocator)(void *allocator);
  int (*PyErr_SetInterruptEx)(int signum);
  void *(*PyThreadState_GetFrame)(void *tstate);
  void *(*PyInterpreterState_ThreadHead)(void *interp);
  void *(*PyThreadState_Next)(void *tstate);
  void *(*PyGILState_GetThisThreadState)(void);
  int (*PyGILState_Ensure)(void);
  void (*PyGILState_Release)(int state);
  void *(*PyInterpreterState_Head)(void);
  void *(*PyInterpreterState_Next)(void *interp);
  /* 3.14.1 and later only (NULL before): see pyver.c. */
  int (*PyUnstable_ThreadState_SetStackProtection)(void *tstate, void *base,
                                                   size_t size);
  void *interp;
  unsigned long hexversion;
} ip_pyapi_t;

IP_HIDDEN extern ip_pyapi_t ip__py;
IP_HIDDEN int ip__py_ready(void);
/* GIL held.  1 when tstate is one of the interpreter's thread states (not
 * deleted), found by walking the interpreter's list: O(thread states). */
IP_HIDDEN int ip__py_tstate_alive(void *tstate);
/* Runs a coroutine's Python body on its own thread state, then destroys
 * that thread state.  Called on the coroutine's stack, no tstate attached. */
IP_HIDDEN void ip__py_run_body(ip_coro_t *co);
/* arena.c: caches the thread states' data stack chunks.  Installed once, by
 * the first scheduler, with the GIL held. */
IP_HIDDEN void ip__arena_install(void);
/* 1 once 16 KiB data stack chunks come from slabs, not a mapping each. */
IP_HIDDEN int ip__arena_slabs_on(void);
IP_HIDDEN void ip__arena_after_fork_child(void);
/* pyver.c: the only code that knows CPython versions. */
IP_HIDDEN int ip__pyver_select(unsigned long hexversion);
IP_HIDDEN int ip__pyver_needs_stack_protection(void);
IP_HIDDEN size_t ip__pyver_default_stack(void);
/* The smallest usable stack CPython accepts, never below engine_min. */
IP_HIDDEN size_t ip__pyver_min_stack(size_t engine_min);
/* What names the lock a semaphore wait is for: sem itself, or on 3.13+,
 * when sem lies in a parking-lot wait entry inside [live_lo, live_hi) (the
 * live part of the waiter's own stack), the address it parked on. */
IP_HIDDEN const void *ip__pyver_lock_key(const void *sem, const void *live_lo,
                                         const void *live_hi);
/* Whether ip__pyver_lock_key may read the stack (else it returns sem). */
IP_HIDDEN int ip__pyver_lock_key_reads_stack(void);
/* Tells CPython a new coroutine's stack, before its tstate is first
 * attached; GIL held.  0, or -EINVAL with a Python exception set. */
IP_HIDDEN int ip__pyver_new_coroutine(ip_coro_t *co);
/* 1 when CPython's own threads are joinable (3.13+), 0 when detached. */
IP_HIDDEN int ip__pyver_threads_joinable(void);
IP_HIDDEN int ip__py_tstate_attached(ip_sched_t *s);
IP_HIDDEN void ip__pyver_gilstate_flag(size_t *offset, unsigned *mask);
/* gilstate.c: the gilstate slot follows the running coroutine. */
/* GIL held, once: finds CPython's gilstate key (a thread-local word from
 * 3.15); 0, -ENOENT or -ENOTSUP. */
IP_HIDDEN int ip__gilstate_init(void);
/* The hub, before switching into a coroutine: binds its thread state. */
IP_HIDDEN void ip__gilstate_bind(void *tstate);
/* 1 when the slot holds a thread state that is not the running
 * coroutine's (a subinterpreter's, bound as it attached on 3.12+): a hook
 * must not switch under it. */
IP_HIDDEN int ip__gilstate_foreign(ip_sched_t *s);
IP_HIDDEN void ip__gilstate_after_fork_child(void);

#endif /* IP_INTERNAL_H */
