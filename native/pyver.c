/* pyver.c: the only code that knows CPython versions.  The library is
 * built once and loaded into whichever interpreter preloads it, so the
 * version is chosen at run time, once, from the hexversion Python passes to
 * interpose_py_init, and cached.
 *
 * Supported: CPython 3.11, 3.12, 3.13, 3.14 from 3.14.1, and 3.15, with the
 * GIL.  Refused here: anything older than 3.11, newer than 3.15, and 3.14.0
 * (it lacks PyUnstable_ThreadState_SetStackProtection, see below).
 * Free-threaded builds are refused on the Python side (interpose/_core/_compat.py),
 * which can see Py_GIL_DISABLED; the same file words every refusal.
 *
 * Branches are ordered newest first.  When the oldest supported version
 * moves up, delete its predicate and the branches labelled with it. */
#include <semaphore.h>
#include <string.h>
#include <sys/syscall.h>

#include "internal.h"

/* 3.12 moved the current thread state from a process-wide variable into a
 * thread-local one (gh-95174 and the per-interpreter GIL work, PEP 684). */
static int ip_py312;
/* 3.13 counts C recursion against a fixed limit of 10,000 levels
 * (Py_C_RECURSION_LIMIT) instead of the recursion limit: nested repr or
 * json.loads reach about 1.5 MiB of C stack before RecursionError. */
static int ip_py313;
/* 3.14 guards C recursion with the stack pointer instead of a counter
 * (gh-130396): each thread state carries a soft and a hard limit, computed
 * from the OS thread's stack (pthread_getattr_np) when the thread state is
 * first attached.
 * Facts: a coroutine runs on a stack of its own, far from the OS thread's,
 * so those limits say nothing about it.  3.14.0 then misjudged every frame
 * of a coroutine (objects freed there were deferred forever: fds leaked and
 * __del__ never ran; deep recursion got no RecursionError).  3.14.1
 * (gh-139653) ignores a stack pointer outside the known stack and added
 * PyUnstable_ThreadState_SetStackProtection(tstate, base, size) for code
 * that switches stacks.
 * Consequence: every coroutine's thread state must be told its own stack
 * before its first Python frame; 3.14.0 cannot be told and is refused.
 * Solution: ip__pyver_new_coroutine below, from spawn. */
static int ip_py314;

/* CPython 3.14 refuses a stack under _PyOS_MIN_STACK_SIZE: three safety
 * margins of 2,048 pointers (48 KiB on 64-bit), twice that on debug and
 * AddressSanitizer builds of CPython (Include/internal/pycore_pythonrun.h).
 * The larger figure is required so that one library serves both. */
#define PY314_MIN_STACK (96 * 1024)


int ip__pyver_select(unsigned long hexversion) {
  unsigned major = (unsigned) (hexversion >> 24) & 0xff;
  unsigned minor = (unsigned) (hexversion >> 16) & 0xff;
  unsigned micro = (unsigned) (hexversion >> 8) & 0xff;
  if (major != 3 || minor < 11 || minor > 15)
    return -ENOTSUP;
  if (minor == 14 && micro == 0) /* no SetStackProtection (see above) */
    return -ENOTSUP;
  ip_py312 = minor >= 12;
  ip_py313 = minor >= 13;
  ip_py314 = minor >= 14;
  return 0;
}


/* Whether the interpreter must be given every coroutine's stack; then
 * PyUnstable_ThreadState_SetStackProtection must have been bound. */
int ip__pyver_needs_stack_protection(void) { return ip_py314; }


/* Where 3.12+ flags the thread state bound to the gilstate slot
 * (PyThreadState._status.bound_gilstate, bit 3 of the bitfield word that
 * follows prev, next, interp and, from 3.13, eval_breaker; see
 * Include/cpython/pystate.h of each version: 3.14 and 3.15 keep 3.13's
 * layout there).  3.11 has no flag: it binds
 * the slot once per thread and unbinds by comparing pointers.  GCC fills
 * bitfields from the least significant bit on little-endian targets, the
 * only ones switch_<arch>.S supports.  gilstate.c checks the result on a
 * bound thread state before using it.  Delete with 3.13 support. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pyver.c: the bound_gilstate bit position assumes little-endian"
#endif
void ip__pyver_gilstate_flag(size_t *offset, unsigned *mask) {
  if (ip_py313) { /* 3.13 to 3.15 */
    *offset = 4 * sizeof(void *);
    *mask = 1u << 3;
  } else if (ip_py312) {
    *offset = 3 * sizeof(void *);
    *mask = 1u << 3;
  } else { /* 3.11 */
    *offset = 0;
    *mask = 0;
  }
}


/* 3.13 joins its threads with pthread_join (gh-110829, PR #110848);
 * before, every thread CPython started was detached.  pthread_getattr_np
 * reports a converted thread the way the interpreter creates OS threads. */
int ip__pyver_threads_joinable(void) { return ip_py313; }


/* The default usable C stack per coroutine: enough for CPython's own
 * recursion checks to fire before the guard page does.  Virtual only: an
 * idle coroutine touches one page of it. */
size_t ip__pyver_default_stack(void) {
  if (ip_py314) {
    /* The stack-pointer check raises RecursionError before any overflow,
     * whatever the size; 1 MiB keeps the C recursion depth of 3.11's
     * default (json.loads 900 deep needs 114 KiB). */
    return 1024 * 1024;
  } else if (ip_py313) {
    return 4 * 1024 * 1024;
  } else { /* 3.11, 3.12: recursion through __repr__ needs 456 KiB */
    return 1024 * 1024;
  }
}


/* The smallest usable stack a coroutine may ask for. */
size_t ip__pyver_min_stack(size_t engine_min) {
  if (ip_py314 && engine_min < PY314_MIN_STACK) {
    return PY314_MIN_STACK;
  } else { /* 3.11 to 3.13: no lower bound of CPython's own */
    return engine_min;
  }
}


/* Called by spawn, right after PyThreadState_New, with the spawner's
 * thread state attached.  Returns 0, or -EINVAL with a Python exception
 * set (on the spawner's thread state, so spawn raises it).
 * Why at spawn and not on the coroutine's stack: the first attach of a
 * thread state whose limits are unset computes them from the OS thread
 * (_PyThreadState_Attach calls _Py_InitializeRecursionLimits), and on the
 * main thread glibc's pthread_getattr_np reads all of /proc/self/maps to
 * do so; with two mappings per coroutine stack, each spawn then cost time
 * proportional to the coroutines alive (measured on 3.14.10: 3,000 parked
 * coroutines took 17 s to spawn, 3.11 takes 0.09 s).  Limits set before
 * the first attach are never recomputed.  The C-API docs allow the call
 * before or after the stack change, with no other C-API call between: the
 * stack never changes again for this thread state. */
int ip__pyver_new_coroutine(ip_coro_t *co) {
  if (ip_py314) {
    char *usable = co->stack.base + co->stack.guard;
    int r = ip__py.PyUnstable_ThreadState_SetStackProtection(
        co->tstate, usable, co->stack.size - co->stack.guard);
    return r < 0 ? -EINVAL : 0;
  } else { /* 3.11 to 3.13: C recursion is counted, not measured */
    return 0;
  }
}


/* 3.13 made threading.Lock a PyMutex (and, from 3.14, RLock a
 * _PyRecursiveMutex around one), whose contended acquire parks through
 * Python/parking_lot.c.
 * Facts: _PyParkingLot_Park keeps, on the waiter's own stack, a
 *   struct wait_entry { void *park_arg; uintptr_t addr; _PySemaphore sema;
 *                       struct llist_node node; bool is_unparking; };
 * (the same in 3.13, 3.14 and 3.15), where addr is the parked-on address
 * (the PyMutex, inside the lock object), and on Linux _PySemaphore is
 * { sem_t platform_sem; } (Include/internal/pycore_semaphore.h,
 * _Py_USE_SEMAPHORES), the semaphore the waiter sleeps on with sem_wait
 * or sem_clockwait.  PyMutex waits pass park_arg = a struct of
 * _PyMutex_LockTimed's, on the same stack.
 * Consequence: the semaphore a lock waiter sleeps on is a fresh one per
 * wait and names nothing; the word 8 bytes before it names the lock.
 * Solution: read that word only when the whole entry lies in the live part
 * of the waiter's own stack (memory that is surely mapped) and its
 * park_arg points into that same stack; otherwise the semaphore is the key
 * (3.11/3.12 locks, 3.13's RLock and other semaphores own theirs).  The
 * key is only compared, never followed: a wrong guess names a lock only
 * if the word read happens to be the exact address of a visible lock's
 * mutex, so in practice it shows no name rather than a wrong one
 * (interpose/_core/_compat.py lock_key_field is the object side).  When 3.12
 * support goes, only its else branch goes. */
#define PARKING_ENTRY_SEMA 16 /* offsetof(struct wait_entry, sema) */
#define PARKING_ENTRY_ADDR 8  /* offsetof(struct wait_entry, addr) */
int ip__pyver_lock_key_reads_stack(void) { return ip_py313; }


const void *ip__pyver_lock_key(const void *sem, const void *live_lo,
                               const void *live_hi) {
  if (ip_py313) { /* 3.13 to 3.15 */
    uintptr_t s = (uintptr_t) sem, lo = (uintptr_t) live_lo;
    uintptr_t hi = (uintptr_t) live_hi;
    if (s < lo + PARKING_ENTRY_SEMA || s + sizeof(sem_t) > hi)
      return sem;
    const char *entry = (const char *) sem - PARKING_ENTRY_SEMA;
    uintptr_t park_arg, addr;
    memcpy(&park_arg, entry, sizeof(park_arg));
    memcpy(&addr, entry + PARKING_ENTRY_ADDR, sizeof(addr));
    if (park_arg < lo || park_arg >= hi)
      return sem;
    return (const void *) addr;
  } else { /* 3.11, 3.12: each lock owns its semaphore */
    return sem;
  }
}


/* 3.11: the OS thread a thread state was created on
 * (PyThreadState.native_thread_id, from gettid; offset 160 on LP64 targets,
 * Include/cpython/pystate.h of 3.11).  Another thread's thread state may be
 * deleted while this reads it: the allocation stays mapped (PyMem_RawFree of
 * a few hundred bytes), a stale value names another thread, and the read is
 * kept out of AddressSanitizer's view.  Delete with 3.11 support. */
__attribute__((no_sanitize("address"))) static unsigned long
native_thread_id_311(void *tstate) {
  return *(volatile unsigned long *) ((char *) tstate + 160);
}


/* This OS thread's id, cached per thread and refreshed after fork (the
 * scheduler's pid changes in the child). */
static unsigned long this_thread_id(ip_sched_t *s) {
  static __thread unsigned long tid;
  static __thread pid_t tid_pid;
  if (tid_pid != s->pid) {
    tid = (unsigned long) syscall(SYS_gettid);
    tid_pid = s->pid;
  }
  return tid;
}


/* Whether a thread state is attached on this OS thread, i.e. it holds the
 * GIL; a hook that finds one attached must not switch.  Usually it is the
 * running coroutine's; it can also be a subinterpreter's, whose code runs
 * on the coroutine's stack (3.11 swaps it in with PyThreadState_Swap and
 * keeps no trace of it in the gilstate slot). */
int ip__py_tstate_attached(ip_sched_t *s) {
  void *cur = ip__py.PyThreadState_GetUnchecked();
  if (ip_py312) {
    return cur != NULL; /* thread-local: non-NULL means this thread's */
  } else {              /* 3.11: process-wide; any thread may hold it */
    if (cur == NULL || s->current == NULL)
      return 0;
    return cur == s->current->tstate ||
           native_thread_id_311(cur) == this_thread_id(s);
  }
}
