/* fork.c: recovery in a forked child.  One at-fork handler,
 * after_fork_child, calls each room's own after-fork hook in the order
 * stated below; no room reaches into another's state.
 *
 * Facts: in a forked child only the forking thread exists, and of its
 * coroutines only the running one: CPython's PyOS_AfterFork_Child deletes
 * every other thread state.  Locks held by threads that did not survive
 * stay held forever.  The handler runs before fork() returns in the child,
 * before any hook or Python code of the child can run, and in a child
 * that is single-threaded, so the rooms need no locks here.
 *
 * The child's epoll set, eventfd and hub are made later, by the runtime's
 * first use of the scheduler (ip__sched_live), not here.  Facts:
 * subprocess's child (CPython's _posixsubprocess, also on its vfork path,
 * which is fork here) runs C code between fork and exec: dup2, chdir,
 * closing every fd with close_fds, and on a failed exec a write of the
 * errno to the parent's error pipe; no Python after-fork hook runs unless
 * preexec_fn is given.  Consequence: fds opened here would be closed under
 * us by close_fds, and a hook that then parked would fail in epoll_ctl; the
 * error pipe write was lost that way and Popen returned a child exiting 255
 * instead of raising.  Solution: until the runtime asks for the scheduler
 * again (os.fork's after-fork hook does, preexec_fn's too), the child's
 * hooks are the real calls, blocking as they would without interpose. */
#include "internal.h"

int ip__forked_child;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;


/* The order, and why:
 *  1. The coroutine allocator (sched.c) first: every coroutine but the
 *     forking one is invalidated without being resumed and its struct
 *     goes back to the free list, so every later step sees only the
 *     survivor.
 *  2. The schedulers (sched_life.c): other threads' are retired, the
 *     forking thread's reset around the survivor.  It needs step 1: it
 *     counts the survivor as the only live coroutine.
 *  3. Thread identities (hooks_pthread.c), the semaphore waiters
 *     (hooks_sem.c), the gilstate slot (gilstate.c), the fd table's
 *     registrations and waiters (fdtable.c) and the resolver pool
 *     (hooks_names.c) forget what the parent's threads, hubs and
 *     coroutines held; they read nothing of steps 1-2 but the survivor's
 *     pointer.  In every child, also one forked from a thread with no
 *     scheduler: a registration left naming a parent's scheduler would
 *     make the child's first wait on that fd remove it from the epoll set
 *     the child shares with the parent (EPOLL_CTL_DEL on an inherited epoll
 *     fd), so that the parent's waiter never wakes, and would wake the
 *     parent's waiters, whose structs lay on stacks step 1 unmapped
 *     (tests/test_fork_recovery.py).
 *  4. Only when the forking thread had a scheduler: its signal state
 *     (signals.c).
 * The frame-chunk cache's lock (arena.c) is reset first of all: it guards
 * memory only, and CPython's own after-fork code may allocate. */
static void after_fork_child(void) {
  ip_sched_t *s = ip__sched_get();
  ip_coro_t *survivor = s ? s->current : NULL;
  ip__forked_child = 1;
  ip__arena_after_fork_child();
  ip__coro_after_fork_child(survivor);
  ip__sched_after_fork_child(s, survivor);
  ip__ident_after_fork_child(survivor);
  ip__sem_after_fork_child();
  ip__gilstate_after_fork_child();
  ip__fd_after_fork_child();
  ip__names_after_fork_child();
  if (s != NULL)
    ip__signals_after_fork_child(&s->sig);
}


static void install(void) {
  pthread_atfork(NULL, NULL, after_fork_child);
}


void ip__fork_install(void) {
  pthread_once(&install_once, install);
}
