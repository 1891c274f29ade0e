/* pyver.c: the only code that knows CPython versions.  The library is
 * built once and loaded into whichever interpreter preloads it, so the
 * version is chosen at run time, once, from the hexversion Python passes to
 * interpose_py_init, and cached.
 *
 * Supported: CPython 3.11, 3.12 and 3.13 with the GIL.  Refused: 3.14 and
 * later (the interpreter checks the C stack pointer against the OS thread's
 * stack and would need PyUnstable_ThreadState_SetStackProtection per
 * coroutine) and anything older than 3.11.  Free-threaded builds are refused
 * on the Python side, which can see Py_GIL_DISABLED. */
#include <sys/syscall.h>

#include "internal.h"

/* 3.12 moved the current thread state from a process-wide variable into a
 * thread-local one (gh-95174 and the per-interpreter GIL work, PEP 684). */
static int ip_py312;
/* 3.13 counts C recursion against a fixed limit of 10,000 levels
 * (Py_C_RECURSION_LIMIT) instead of the recursion limit: nested repr or
 * json.loads reach about 1.5 MiB of C stack before RecursionError. */
static int ip_py313;


int ip__pyver_select(unsigned long hexversion) {
  unsigned major = (unsigned) (hexversion >> 24) & 0xff;
  unsigned minor = (unsigned) (hexversion >> 16) & 0xff;
  if (major != 3 || minor < 11 || minor > 13)
    return -ENOTSUP;
  ip_py312 = minor >= 12;
  ip_py313 = minor >= 13;
  return 0;
}


/* Where 3.12+ flags the thread state bound to the gilstate slot
 * (PyThreadState._status.bound_gilstate, bit 3 of the bitfield word that
 * follows prev, next, interp and, on 3.13, eval_breaker; see
 * Include/cpython/pystate.h of each version).  3.11 has no flag: it binds
 * the slot once per thread and unbinds by comparing pointers.  GCC fills
 * bitfields from the least significant bit on little-endian targets, the
 * only ones switch_<arch>.S supports.  gilstate.c checks the result on a
 * bound thread state before using it.  Delete with 3.13 support. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pyver.c: the bound_gilstate bit position assumes little-endian"
#endif
void ip__pyver_gilstate_flag(size_t *offset, unsigned *mask) {
  if (ip_py313) {
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
  if (ip_py313) {
    return 4 * 1024 * 1024;
  } else { /* 3.11, 3.12: recursion through __repr__ needs 456 KiB */
    return 1024 * 1024;
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
