/* hooks_pthread.c: thread identities for coroutines that stand for threads,
 * and the pthread functions that take a pthread_t.
 *
 * Facts.  On Linux CPython's thread ident is pthread_self(): _thread.get_ident,
 * the owner of a C RLock and of the import lock, the main-thread checks
 * (_Py_IsMainThread: signal.signal, set_wakeup_fd, which thread runs Python
 * signal handlers and pending calls) and tstate->thread_id (which
 * sys._current_frames, PyThreadState_SetAsyncExc and faulthandler use) all
 * come from it.  tstate->thread_id is taken inside PyThreadState_New, which
 * runs on the coroutine that spawns.  Libraries hand idents to pthread_kill
 * and pthread_setname_np, and glibc dereferences a pthread_t: a small
 * integer there is a segfault.  glibc's own uses of the thread pointer go
 * through its internal THREAD_SELF, never through the exported pthread_self.
 *
 * Consequences.  If pthread_self() answers per coroutine, CPython gives each
 * converted thread its own ident, RLock owner, main-thread status and
 * thread state id with no Python-level replacement.  But every function
 * that takes a pthread_t must then recognise these handles and never pass
 * one to glibc.
 *
 * Our solution.  Once ip__thread_idents is on (interpose run), every
 * spawned coroutine gets a handle: an address inside IDENT_SPAN bytes of
 * PROT_NONE address space this library reserves and never touches, so a
 * handle is never a real pthread_t (those point into mapped thread
 * descriptors) and any stray dereference faults in our range.  A side
 * table (slot per handle) records the coroutine, the OS thread carrying it
 * and the name pthread_setname_np gave it.  pthread_self() returns the
 * running coroutine's handle; a thread's main coroutine (and the hub, and
 * every thread without a scheduler) gets the real value.  The handle is in
 * force while the coroutine's thread state is created.  A slot is freed
 * when the coroutine's thread state has been deleted; after that every
 * function below gives ESRCH for it, as glibc does for a thread that has
 * been joined.  Freed slots are reused only once the bump allocator has
 * gone through the whole range, so a stale ident rarely names a new
 * thread (glibc reuses descriptors at once).
 *
 * What each hooked function does with a handle:
 *  - pthread_kill / pthread_sigqueue: signal 0 checks liveness; a real
 *    signal goes to the OS thread that carries the coroutine (handlers run
 *    as for any signal there) and, if the coroutine is parked in a hooked
 *    call, that call fails with EINTR, as the thread's system call would.
 *  - pthread_setname_np / pthread_getname_np: a per-handle name (ERANGE as
 *    glibc); before any setname, the carrying OS thread's name, which a new
 *    thread inherits from its creator.
 *  - pthread_getattr_np: the coroutine's own stack and guard size, and
 *    the detach state CPython gives its OS threads (detached before 3.13).
 *  - pthread_getcpuclockid, pthread_{get,set}schedparam,
 *    pthread_setschedprio, pthread_{get,set}affinity_np: the carrying OS
 *    thread's (a coroutine has no kernel thread of its own).
 *  - pthread_join, pthread_tryjoin_np, pthread_timedjoin_np,
 *    pthread_clockjoin_np, pthread_detach: EINVAL, as for the detached
 *    threads CPython creates up to 3.12 (3.13 joins its threads itself;
 *    joining one behind its back is undefined there, and still EINVAL).  pthread_cancel: ENOTSUP (a coroutine cannot
 *    be cancelled asynchronously).
 *  pthread_equal compares values and needs nothing. */
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define IDENT_STRIDE 64u
#define IDENT_SHIFT 12 /* slots per chunk: 4096 */
#define IDENT_CHUNKS 256u
#define IDENT_SLOTS (IDENT_CHUNKS << IDENT_SHIFT) /* 1 Mi live threads */
#define IDENT_SPAN ((size_t) IDENT_SLOTS * IDENT_STRIDE) /* 64 MiB, reserved */
#define NAME_LEN 16 /* TASK_COMM_LEN, as glibc checks it */

typedef struct ident_slot {
  /* Invariant: non-NULL exactly while the handle names a live coroutine;
   * changes only under ident_lock. */
  ip_coro_t *co;
  pthread_t os_thread; /* the real pthread_t of the carrying OS thread */
  int named;           /* 1 once pthread_setname_np gave a name */
  char name[NAME_LEN];
  uint32_t free_next; /* index + 1 of the next free slot; 0 ends the list */
} ident_slot_t;

atomic_int ip__thread_idents;
static __thread uintptr_t creating; /* a handle whose tstate is being made */
static pthread_mutex_t ident_lock = PTHREAD_MUTEX_INITIALIZER;
static char *ident_base;          /* guarded by ident_lock once set */
static ident_slot_t *chunks[IDENT_CHUNKS]; /* guarded by ident_lock */
static uint32_t bump;             /* next never-used slot */
static uint32_t free_head;        /* index + 1 of a freed slot, or 0 */

/* The real functions, found by our constructor, or on first use when
 * another library's constructor calls one (pthread_self) before ours ran. */
#define PTHREAD_FUNCTIONS(X)                                                  \
  X(pthread_self) X(pthread_kill) X(pthread_sigqueue) X(pthread_setname_np)  \
  X(pthread_getname_np) X(pthread_getattr_np) X(pthread_getcpuclockid)       \
  X(pthread_getschedparam) X(pthread_setschedparam) X(pthread_setschedprio)  \
  X(pthread_getaffinity_np) X(pthread_setaffinity_np) X(pthread_join)        \
  X(pthread_tryjoin_np) X(pthread_timedjoin_np) X(pthread_clockjoin_np)      \
  X(pthread_detach) X(pthread_cancel)
#define PT_FIELD(name) __typeof__(&name) name;
static struct {
  PTHREAD_FUNCTIONS(PT_FIELD)
} real;
#define PT_RESOLVE(name) real.name = dlsym(RTLD_NEXT, #name);
/* The real function, resolved now if our constructor has not run yet. */
static void *resolved(void *fn, const char *name) {
  return fn != NULL ? fn : dlsym(RTLD_NEXT, name);
}
#define REAL(name) ((__typeof__(real.name)) resolved((void *) real.name, #name))

__attribute__((constructor)) static void pthread_real_init(void) {
  PTHREAD_FUNCTIONS(PT_RESOLVE);
}


static pthread_t real_self(void) { return REAL(pthread_self)(); }

/* ---- the handle table ------------------------------------------------- */

static ident_slot_t *slot_at(uint32_t index) {
  return &chunks[index >> IDENT_SHIFT][index & ((1u << IDENT_SHIFT) - 1)];
}


/* The live slot a handle names, or NULL (not ours, freed); ident_lock
 * held. */
static ident_slot_t *slot_of(pthread_t h) {
  uintptr_t off = (uintptr_t) h - (uintptr_t) ident_base;
  if (ident_base == NULL || (uintptr_t) h < (uintptr_t) ident_base ||
      off >= IDENT_SPAN || off % IDENT_STRIDE != 0)
    return NULL;
  uint32_t index = (uint32_t) (off / IDENT_STRIDE);
  if (index >= bump)
    return NULL;
  ident_slot_t *slot = slot_at(index);
  return slot->co != NULL ? slot : NULL;
}


/* Whether h lies in our reserved range at all (then glibc must never see
 * it, live or not).  Lock-free: ident_base is written once. */
static int is_handle(pthread_t h) {
  char *base = __atomic_load_n(&ident_base, __ATOMIC_ACQUIRE);
  return base != NULL && (uintptr_t) h >= (uintptr_t) base &&
         (uintptr_t) h - (uintptr_t) base < IDENT_SPAN;
}


static int reserve_range(void) {
  if (ident_base != NULL)
    return 0;
  void *p = mmap(NULL, IDENT_SPAN, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return -errno;
  __atomic_store_n(&ident_base, (char *) p, __ATOMIC_RELEASE);
  return 0;
}


/* A slot index for a new handle, or -errno; ident_lock held. */
static int64_t slot_take(void) {
  if (bump < IDENT_SLOTS) {
    uint32_t index = bump;
    if (chunks[index >> IDENT_SHIFT] == NULL) {
      chunks[index >> IDENT_SHIFT] = calloc(1u << IDENT_SHIFT,
                                            sizeof(ident_slot_t));
      if (chunks[index >> IDENT_SHIFT] == NULL)
        return -ENOMEM;
    }
    bump++;
    return index;
  }
  if (free_head == 0)
    return -EAGAIN; /* as pthread_create says when threads run out */
  uint32_t index = free_head - 1;
  free_head = slot_at(index)->free_next;
  return index;
}


int ip__ident_attach(ip_coro_t *co) {
  co->thread_ident = 0;
  if (!atomic_load(&ip__thread_idents))
    return 0;
  pthread_t os_thread = real_self();
  pthread_mutex_lock(&ident_lock);
  int r = reserve_range();
  int64_t index = r < 0 ? r : slot_take();
  if (index >= 0) {
    ident_slot_t *slot = slot_at((uint32_t) index);
    slot->co = co;
    slot->os_thread = os_thread;
    slot->named = 0;
    slot->free_next = 0;
    co->thread_ident =
        (uintptr_t) ident_base + (uintptr_t) index * IDENT_STRIDE;
  }
  pthread_mutex_unlock(&ident_lock);
  return index < 0 ? (int) index : 0;
}


void ip__ident_creating(uintptr_t handle) { creating = handle; }


void ip__ident_detach(ip_coro_t *co) {
  uintptr_t h = co->thread_ident;
  if (h == 0)
    return;
  pthread_mutex_lock(&ident_lock);
  ident_slot_t *slot = slot_of((pthread_t) h);
  if (slot != NULL && slot->co == co) {
    slot->co = NULL;
    slot->free_next = free_head;
    free_head = (uint32_t) ((h - (uintptr_t) ident_base) / IDENT_STRIDE) + 1;
  }
  pthread_mutex_unlock(&ident_lock);
  co->thread_ident = 0;
}


/* In a forked child only the forking coroutine lives on: every other
 * handle now names a thread that does not exist in this process. */
void ip__ident_after_fork_child(ip_coro_t *survivor) {
  pthread_mutex_init(&ident_lock, NULL);
  free_head = 0;
  for (uint32_t i = bump; i-- > 0;) {
    ident_slot_t *slot = slot_at(i);
    if (slot->co != NULL && slot->co == survivor) {
      slot->os_thread = real_self();
      continue;
    }
    slot->co = NULL;
    slot->free_next = free_head;
    free_head = i + 1;
  }
}

/* ---- exported ABI ----------------------------------------------------- */

int interpose_thread_idents_enable(void) {
  pthread_mutex_lock(&ident_lock);
  int r = reserve_range();
  pthread_mutex_unlock(&ident_lock);
  if (r == 0)
    atomic_store(&ip__thread_idents, 1);
  return r;
}


uintptr_t interpose_coro_thread_ident(void *handle) {
  ip_coro_t *co = handle;
  return co == NULL ? 0 : co->thread_ident;
}


uintptr_t interpose_thread_os_ident(void) { return (uintptr_t) real_self(); }

/* ---- hooks ------------------------------------------------------------ */

#pragma GCC visibility push(default)

pthread_t pthread_self(void) {
  if (creating != 0)
    return (pthread_t) creating;
  ip_sched_t *s = ip__tls_sched;
  if (s != NULL) {
    ip_coro_t *co = s->current;
    if (co != NULL && co->thread_ident != 0)
      return (pthread_t) co->thread_ident;
  }
  return real_self();
}


/* Looks h up: 0 with *slot_out (a copy) for a live handle, -ESRCH for a
 * dead one, 1 for a real pthread_t. */
static int lookup(pthread_t h, ident_slot_t *slot_out) {
  if (!is_handle(h))
    return 1;
  pthread_mutex_lock(&ident_lock);
  ident_slot_t *slot = slot_of(h);
  if (slot != NULL)
    *slot_out = *slot;
  pthread_mutex_unlock(&ident_lock);
  return slot != NULL ? 0 : -ESRCH;
}


/* A signal for a converted thread interrupts its parked hooked call, as
 * it would the thread's system call.  Under ident_lock the coroutine is
 * alive (its slot is freed before its struct can be recycled). */
static void interrupt_parked(pthread_t h) {
  pthread_mutex_lock(&ident_lock);
  ident_slot_t *slot = slot_of(h);
  if (slot != NULL) {
    ip_coro_t *co = slot->co;
    uint64_t w = atomic_load(&co->park_word);
    if (ip__park_state(w) == IP_PARK_SLEEP)
      ip__wake(co, w >> IP_PARK_STATE_BITS, -EINTR, 0);
  }
  pthread_mutex_unlock(&ident_lock);
}


int pthread_kill(pthread_t h, int sig) {
  ident_slot_t slot;
  int r = lookup(h, &slot);
  if (r > 0)
    return REAL(pthread_kill)(h, sig);
  if (r < 0)
    return -r;
  if (sig == 0)
    return 0;
  r = REAL(pthread_kill)(slot.os_thread, sig);
  if (r == 0)
    interrupt_parked(h);
  return r;
}


int pthread_sigqueue(pthread_t h, int sig, const union sigval value) {
  ident_slot_t slot;
  int r = lookup(h, &slot);
  if (r > 0)
    return REAL(pthread_sigqueue)(h, sig, value);
  if (r < 0)
    return -r;
  if (sig == 0)
    return 0;
  r = REAL(pthread_sigqueue)(slot.os_thread, sig, value);
  if (r == 0)
    interrupt_parked(h);
  return r;
}


int pthread_setname_np(pthread_t h, const char *name) {
  if (!is_handle(h))
    return REAL(pthread_setname_np)(h, name);
  size_t len = strlen(name);
  if (len >= NAME_LEN)
    return ERANGE;
  pthread_mutex_lock(&ident_lock);
  ident_slot_t *slot = slot_of(h);
  if (slot != NULL) {
    memcpy(slot->name, name, len + 1);
    slot->named = 1;
  }
  pthread_mutex_unlock(&ident_lock);
  return slot != NULL ? 0 : ESRCH;
}


int pthread_getname_np(pthread_t h, char *buf, size_t len) {
  ident_slot_t slot;
  int r = lookup(h, &slot);
  if (r > 0)
    return REAL(pthread_getname_np)(h, buf, len);
  if (len < NAME_LEN)
    return ERANGE; /* checked first, as glibc does */
  if (r < 0)
    return -r;
  if (!slot.named)
    return REAL(pthread_getname_np)(slot.os_thread, buf, len);
  memcpy(buf, slot.name, strlen(slot.name) + 1);
  return 0;
}


int pthread_getattr_np(pthread_t h, pthread_attr_t *attr) {
  ident_slot_t slot;
  int r = lookup(h, &slot);
  if (r > 0)
    return REAL(pthread_getattr_np)(h, attr);
  if (r < 0)
    return -r;
  /* The stack of a live coroutine does not change (stack.c). */
  ip_stack_t st = slot.co->stack;
  r = pthread_attr_init(attr);
  if (r != 0)
    return r;
  pthread_attr_setdetachstate(attr, ip__pyver_threads_joinable()
                                         ? PTHREAD_CREATE_JOINABLE
                                         : PTHREAD_CREATE_DETACHED);
  pthread_attr_setguardsize(attr, st.guard);
  r = pthread_attr_setstack(attr, st.base + st.guard, st.size - st.guard);
  if (r != 0)
    pthread_attr_destroy(attr);
  return r;
}


/* The functions that act on the carrying OS thread. */
#define ON_OS_THREAD(name, params, args)                                      \
  int name params {                                                           \
    ident_slot_t slot;                                                        \
    int r = lookup(h, &slot);                                                 \
    if (r < 0)                                                                \
      return -r;                                                              \
    if (r == 0)                                                               \
      h = slot.os_thread;                                                     \
    return REAL(name) args;                                                   \
  }

ON_OS_THREAD(pthread_getcpuclockid, (pthread_t h, clockid_t *clk), (h, clk))
ON_OS_THREAD(pthread_getschedparam,
             (pthread_t h, int *policy, struct sched_param *param),
             (h, policy, param))
ON_OS_THREAD(pthread_setschedparam,
             (pthread_t h, int policy, const struct sched_param *param),
             (h, policy, param))
ON_OS_THREAD(pthread_setschedprio, (pthread_t h, int prio), (h, prio))
ON_OS_THREAD(pthread_getaffinity_np,
             (pthread_t h, size_t size, cpu_set_t *set), (h, size, set))
ON_OS_THREAD(pthread_setaffinity_np,
             (pthread_t h, size_t size, const cpu_set_t *set), (h, size, set))


/* The functions a converted thread refuses: errno for a handle, or 0 for
 * a real pthread_t (then the caller makes the real call). */
static int refused(pthread_t h, int live_errno) {
  ident_slot_t slot;
  int r = lookup(h, &slot);
  if (r > 0)
    return 0;
  return r < 0 ? -r : live_errno;
}


int pthread_join(pthread_t h, void **ret) {
  int r = refused(h, EINVAL);
  return r ? r : REAL(pthread_join)(h, ret);
}


int pthread_tryjoin_np(pthread_t h, void **ret) {
  int r = refused(h, EINVAL);
  return r ? r : REAL(pthread_tryjoin_np)(h, ret);
}


int pthread_timedjoin_np(pthread_t h, void **ret,
                         const struct timespec *abstime) {
  int r = refused(h, EINVAL);
  return r ? r : REAL(pthread_timedjoin_np)(h, ret, abstime);
}


int pthread_clockjoin_np(pthread_t h, void **ret, clockid_t clk,
                         const struct timespec *abstime) {
  int r = refused(h, EINVAL);
  return r ? r : REAL(pthread_clockjoin_np)(h, ret, clk, abstime);
}


int pthread_detach(pthread_t h) {
  int r = refused(h, EINVAL);
  return r ? r : REAL(pthread_detach)(h);
}


int pthread_cancel(pthread_t h) {
  int r = refused(h, ENOTSUP);
  return r ? r : REAL(pthread_cancel)(h);
}

#pragma GCC visibility pop
