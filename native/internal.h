/* Cross-file declarations of the native engine: the coroutine, the
 * per-thread scheduler, stacks, timers, the fd waiter map and the bridge to
 * CPython.  Nothing here is exported; see interpose.h for the ABI. */
#ifndef IP_INTERNAL_H
#define IP_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "interpose.h"

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
static inline void *ip__stack_top(const ip_stack_t *st) {
  return st->base + st->size;
}
/* Installs the guard-page SIGSEGV handler (once per process) and an
 * alternate signal stack for the calling thread (once per thread). */
IP_HIDDEN int ip__stack_install_guard_handler(void);
/* Unmaps the calling thread's pooled stacks and its alternate signal stack;
 * called when the thread's scheduler is destroyed. */
IP_HIDDEN void ip__stack_thread_exit(void);

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
#define IP_PARK_STATE_BITS 2

struct ip_sched;

typedef struct ip_coro {
  void *sp; /* saved stack pointer while not running */
  ip_link_t run_link;
  struct ip_sched *sched;
  ip_stack_t stack; /* base == NULL for a root (the thread's own stack) */
  void *tstate;     /* PyThreadState *, owned by CPython */
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
  struct ip_coro *free_next;
  char name[64]; /* truncated copy, for the async-signal-safe overflow report */
} ip_coro_t;

typedef struct ip_fdwait ip_fdwait_t;

typedef struct ip_fdmap {
  ip_fdwait_t **slots; /* indexed by fd; grows on demand */
  size_t cap;
} ip_fdmap_t;

typedef struct ip_sched {
  ip_coro_t root;     /* the thread's own context and thread state */
  /* Invariant: the coroutine that gets KeyboardInterrupt and forwarded
   * exceptions; &root except in a child forked from a spawned coroutine. */
  ip_coro_t *main;
  ip_coro_t *current; /* running coroutine; NULL while the hub runs */
  void *hub_sp;
  ip_stack_t hub_stack;
  ip_link_t runq; /* FIFO of RUNNABLE coroutines of this thread */
  pthread_mutex_t remote_lock;
  ip_link_t remote; /* woken from other threads; guarded by remote_lock */
  int epfd;
  int evfd;      /* eventfd for cross-thread wake-ups */
  int signal_fd; /* read end of Python's signal wakeup pipe, or -1 */
  int is_main_thread;
  ip_heap_t timers;
  ip_fdmap_t fds;
  ip_coro_t *dead; /* exited coroutine whose stack the hub reclaims */
  int64_t last_poll_ns; /* when the hub last polled while work was queued */
  interpose_stats_t stats;
  pid_t pid; /* detects use in a forked child */
} ip_sched_t;

IP_HIDDEN ip_sched_t *ip__sched_get(void);
/* Creates the calling thread's scheduler if needed; the GIL must be held. */
IP_HIDDEN ip_sched_t *ip__sched_ensure(void);
/* Parks the running coroutine until a wake for the prepared generation. */
IP_HIDDEN int ip__park(ip_sched_t *s, int64_t timeout_ns);
IP_HIDDEN uint64_t ip__prepare(ip_coro_t *co);
IP_HIDDEN void ip__coro_main(void *arg);
IP_HIDDEN int ip__wake(ip_coro_t *co, uint64_t gen, int result, int front);
static inline uint64_t ip__park_gen(ip_coro_t *co) {
  return atomic_load(&co->park_word) >> IP_PARK_STATE_BITS;
}

/* ---- fd waits (fdwait.c) ---------------------------------------------- */

IP_HIDDEN int ip__fd_wait(ip_sched_t *s, int fd, int events,
                          int64_t timeout_ns);
IP_HIDDEN void ip__fd_dispatch(ip_sched_t *s, uint64_t data,
                               uint32_t events);
IP_HIDDEN void ip__fdmap_free(ip_fdmap_t *m);

/* ---- the CPython bridge (pybridge.c, pyver.c) ------------------------- */

typedef struct ip_pyapi {
  void *(*PyThreadState_New)(void *interp);
  void *(*PyThreadState_Get)(void);
  void (*PyThreadState_Clear)(void *tstate);
  void (*PyThreadState_DeleteCurrent)(void);
  void (*PyEval_RestoreThread)(void *tstate);
  void *(*PyEval_SaveThread)(void);
  void *(*PyObject_CallNoArgs)(void *callable);
  void (*Py_IncRef)(void *obj);
  void (*Py_DecRef)(void *obj);
  void (*PyErr_WriteUnraisable)(void *obj);
  void *(*PyThreadState_GetUnchecked)(void);
  void (*PyObject_GetArenaAllocator)(void *allocator);
  void (*PyObject_SetArenaAllocator)(void *allocator);
  void *interp;
  unsigned long hexversion;
} ip_pyapi_t;

IP_HIDDEN extern ip_pyapi_t ip__py;
IP_HIDDEN int ip__py_ready(void);
/* Runs a coroutine's Python body on its own thread state, then destroys
 * that thread state.  Called on the coroutine's stack, no tstate attached. */
IP_HIDDEN void ip__py_run_body(ip_coro_t *co);
/* arena.c: caches the thread states' data stack chunks. */
IP_HIDDEN void ip__arena_install(void);
/* pyver.c: the only code that knows CPython versions. */
IP_HIDDEN int ip__pyver_select(unsigned long hexversion);
IP_HIDDEN int ip__py_tstate_attached(ip_sched_t *s);

#endif /* IP_INTERNAL_H */
