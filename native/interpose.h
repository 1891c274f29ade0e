/* interpose.h: the one exported ABI of libinterpose.so, bound by
 * interpose/_core/_native.py through ctypes.  Every exported name starts with
 * interpose_ because a preloaded library's exports shadow the same names in
 * every process it is loaded into.
 *
 * Unless a comment says otherwise, functions return 0 or a negative errno
 * value and never set errno. */
#ifndef INTERPOSE_H
#define INTERPOSE_H

#include <stddef.h>
#include <stdint.h>

#define IP_EXPORT __attribute__((visibility("default")))

/* Bumped whenever a signature below or a struct layout changes; the Python
 * side refuses a library built with another value. */
#define INTERPOSE_ABI_VERSION 3

/* Results of a park besides 0 (woken) and -errno. */
#define INTERPOSE_PARK_TIMEOUT 1 /* the park's own timeout expired */

/* Events for interpose_wait_fd. */
#define INTERPOSE_READABLE 1
#define INTERPOSE_WRITABLE 2

/* ---- Library identity --------------------------------------------------
 * Callable from any thread at any time, with or without the GIL. */

/* Returns INTERPOSE_ABI_VERSION as compiled into the library. */
IP_EXPORT int interpose_abi_version(void);
/* Returns the SHA-256 of the native sources the library was built from. */
IP_EXPORT const char *interpose_build_id(void);
/* Returns 1 when this library's hooks are the ones the process resolves
 * (it was preloaded), 0 when it was only loaded by ctypes. */
IP_EXPORT int interpose_preloaded(void);

/* ---- CPython bridge ----------------------------------------------------
 * Called once, GIL held, before anything below.  The library never links
 * libpython: Python hands it the C-API entry points it needs. */

/* Records the C-API function called name.  -ENOENT for an unknown name. */
IP_EXPORT int interpose_py_bind(const char *name, void *fn);
/* Checks that every needed function was bound and that hexversion is a
 * supported interpreter, and finds CPython's gilstate key (see gilstate.c).
 * -ENOTSUP for an unsupported version or thread state layout, -EINVAL when a
 * function is missing, -ENOSYS when the version needs
 * PyUnstable_ThreadState_SetStackProtection and it was not bound (CPython
 * 3.14+; optional before), -ENOENT when the gilstate key cannot be found,
 * -EXDEV when the library already serves another interpreter (it serves one:
 * the first to call this).  interp is the PyInterpreterState *. */
IP_EXPORT int interpose_py_init(unsigned long hexversion, void *interp);

/* ---- Coroutines --------------------------------------------------------
 * Functions marked "GIL held" are bound through ctypes.PyDLL and create the
 * calling thread's scheduler on first use.  Handles are never freed: a
 * handle stays valid forever and is recycled with a new id. */

/* GIL held.  Creates a runnable coroutine that will call body() with no
 * arguments on a fresh thread state and a stack of stack_size usable bytes
 * (0 = the default).  Takes a new reference to body.  Stores the coroutine's
 * id in *id_out.  Returns the handle, or NULL with *err_out = -errno
 * (-ENOMEM when out of memory or memory mappings, -EINVAL for a bad size). */
IP_EXPORT void *interpose_coro_spawn(void *body, size_t stack_size,
                                     const char *name, uint64_t *id_out,
                                     int *err_out);
/* GIL held.  Creates the calling thread's scheduler if it has none, or
 * reopens its epoll set if a fork left it pending (native/fork.c).  0, or
 * -errno (-ENOMEM, -EMFILE, ...). */
IP_EXPORT int interpose_sched_ensure(void);
/* GIL held.  The running coroutine's handle (the root's on a thread that is
 * not inside a spawned coroutine), or NULL when the calling thread has no
 * scheduler (interpose_sched_ensure makes one).  Cannot fail. */
IP_EXPORT void *interpose_coro_current(void);
/* Any thread.  The id of the coroutine behind the handle (0 when the
 * handle's coroutine has died and the handle is not reused yet). */
IP_EXPORT uint64_t interpose_coro_id(void *handle);
/* GIL held.  Starts a new park generation for the running coroutine and
 * returns it (>= 1); wakes for earlier generations are ignored from now
 * on.  -ESRCH when the calling thread has no scheduler. */
IP_EXPORT int64_t interpose_coro_prepare(void);
/* GIL released (ctypes.CDLL).  Parks the running coroutine until it is woken
 * for the prepared generation, timeout_ns passes (-1 = no timeout; then
 * INTERPOSE_PARK_TIMEOUT), its deadline passes (-ETIMEDOUT), it is cancelled
 * (-ECANCELED) or a signal needs the main coroutine (-EINTR).  A wake that
 * arrived between prepare and park makes the park return at once.
 * -EDEADLK when called with a thread state attached or no prepare. */
IP_EXPORT int interpose_coro_park(int64_t timeout_ns);
/* Any thread.  Wakes handle's park of generation gen with result (0 for a
 * normal wake).  Returns 1 if this call woke it, 0 if the park was already
 * woken or belongs to another generation. */
IP_EXPORT int interpose_coro_unpark(void *handle, uint64_t gen, int result);
/* Any thread.  Cancels the coroutine with the given id: its current and all
 * later parks return -ECANCELED.  Returns 1, or 0 if it is no longer alive. */
IP_EXPORT int interpose_coro_cancel(void *handle, uint64_t id);
/* GIL held.  Turns the running coroutine's hooks on (1) or off (0) and
 * returns the previous setting.  With hooks on (the default for spawned
 * coroutines; off for a thread's main coroutine until it asks), blocking
 * libc calls made by the coroutine park it when the library is preloaded. */
IP_EXPORT int interpose_coro_set_hooks(int on);
/* GIL held.  Adds delta (+1 or -1) to the running coroutine's shield depth
 * and returns the new depth.  While it is positive, parks ignore
 * cancellation and the deadline: cleanup that must finish (re-acquiring a
 * Condition's lock) runs shielded.  -EINVAL if the depth would go below 0. */
IP_EXPORT int interpose_coro_shield(int delta);
/* GIL held.  Sets the running coroutine's absolute deadline on the
 * interpose_clock_ns clock (negative = none) and stores the previous one
 * (-1 = none) in *previous_out.  0, or -errno as for
 * interpose_sched_ensure (then nothing is set). */
IP_EXPORT int interpose_coro_set_deadline(int64_t deadline_ns,
                                          int64_t *previous_out);
/* GIL released.  Waits until fd is ready for events (INTERPOSE_READABLE |
 * INTERPOSE_WRITABLE); returns like interpose_coro_park, plus -EBADF for
 * a descriptor that is not open and -EPERM for one epoll cannot watch
 * (regular files, which are always ready: callers treat that as ready). */
IP_EXPORT int interpose_wait_fd(int fd, int events, int64_t timeout_ns);

/* ---- Scheduler ---------------------------------------------------------*/

typedef struct interpose_stats {
  uint64_t created;     /* coroutines spawned on this thread */
  uint64_t alive;       /* spawned and not yet dead (the root not counted) */
  uint64_t switches;    /* context switches */
  uint64_t parks;       /* parks that switched away */
  uint64_t timeouts;    /* parks ended by a timeout or deadline */
  uint64_t epoll_waits; /* epoll_wait calls made by the hub */
  uint64_t preemptions; /* yields forced at a bytecode boundary */
} interpose_stats_t;

/* GIL held.  Copies the calling thread's scheduler counters into *out;
 * -ESRCH when the thread has no scheduler. */
IP_EXPORT int interpose_sched_stats(interpose_stats_t *out);
/* GIL held.  Frees the calling thread's scheduler (its epoll set, eventfd
 * and hub stack); called when a thread that used interpose exits.  -EBUSY
 * while spawned coroutines are alive or it is called from one of them. */
IP_EXPORT int interpose_sched_destroy(void);
/* GIL held, main thread.  Hands the read end of the pipe given to
 * signal.set_wakeup_fd to the scheduler, which then wakes the root
 * coroutine with -EINTR when a signal arrives. */
IP_EXPORT int interpose_sched_set_signal_fd(int fd);
/* GIL held.  Wakes the calling thread's main coroutine with -EINTR, ahead
 * of every other runnable coroutine, if it is parked or about to park, so
 * that it raises an exception forwarded to it.  Returns 1 if it woke it. */
IP_EXPORT int interpose_sched_interrupt_main(void);
/* GIL held.  1 when a coroutine of the calling thread's scheduler is
 * runnable (queued, next, or woken from another thread), else 0: exit-time
 * shutdown abandons the coroutines left parked once nothing can run. */
IP_EXPORT int interpose_sched_runnable(void);
/* GIL held.  Moves a runnable coroutine of the calling thread (one just
 * spawned) ahead of the run queue: it runs as soon as the caller parks.
 * Thread.start() uses it, as it waits for the new thread to start.
 * -EINVAL if it is not runnable on this thread's queue, -EBUSY if the
 * caller already woke a coroutine that runs next (it then stays queued). */
IP_EXPORT int interpose_coro_run_next(void *coro);
/* GIL held, main thread.  A Python signal handler that ran in a coroutine
 * other than the main one hands its signal over: the main coroutine is
 * woken with -EINTR and, as it resumes, the signal is tripped again
 * (PyErr_SetInterruptEx), so that CPython runs the handler there.
 * -EINVAL for a signal number outside 1..64 or off the main thread. */
IP_EXPORT int interpose_sched_defer_signal(int signum);
/* GIL held, main thread.  The bytes the signal wakeup pipe receives are
 * copied to fd (the one the program gave signal.set_wakeup_fd; -1: none)
 * when the hub drains the pipe. */
IP_EXPORT int interpose_sched_set_signal_forward(int fd);
/* GIL held.  The calling thread's scheduler, or NULL, and in *incarnation
 * which life of it this is: together an opaque handle for
 * interpose_sched_probe that stays safe to pass after the scheduler is
 * destroyed (the struct is never freed, only reused). */
IP_EXPORT void *interpose_sched_self(uint64_t *incarnation);
/* GIL held, any thread.  For the blocking monitor: the scheduler's switch
 * count, the coroutine it is running (*coro; NULL while its hub runs) and
 * its number of live spawned coroutines, and, returned, a new reference to
 * the running coroutine's innermost frame (PyFrameObject *) or NULL.  A
 * scheduler destroyed since (its incarnation moved on) reads as zeros and
 * NULL. */
IP_EXPORT void *interpose_sched_probe(void *sched, uint64_t incarnation,
                                      uint64_t *switches, void **coro,
                                      uint64_t *alive);
/* GIL held.  The calling thread exits with coroutines still alive in its
 * scheduler, which is therefore kept: its own thread state is about to be
 * deleted, and the scheduler stops reporting it (and its thread id).
 * Returns 1, or 0 when the thread has no scheduler. */
IP_EXPORT int interpose_sched_forget_root(void);
/* Any thread.  The lowest number the runtime's own fds are moved to (0:
 * they stay where they were opened); see fdtable.c. */
IP_EXPORT int interpose_fd_internal_floor(void);
/* Any thread.  CLOCK_MONOTONIC in nanoseconds (time.monotonic_ns's clock). */
IP_EXPORT int64_t interpose_clock_ns(void);
/* GIL held.  Default usable stack size in bytes (what
 * interpose_stack_set_default set, else 1 MiB on CPython 3.11, 3.12, 3.14
 * and 3.15, 4 MiB on 3.13), the smallest accepted one (16 KiB; 96 KiB from
 * 3.14, whose recursion checks need it) and the largest (1 TiB).  Valid
 * only after interpose_py_init. */
IP_EXPORT size_t interpose_stack_default(void);
IP_EXPORT size_t interpose_stack_minimum(void);
IP_EXPORT size_t interpose_stack_maximum(void);
/* GIL held, after interpose_py_init, before the first spawn.  Sets the
 * default usable stack size (INTERPOSE_STACK_SIZE, parsed by the Python
 * side).  0, or -ERANGE outside [minimum, maximum]. */
IP_EXPORT int interpose_stack_set_default(size_t usable);
/* GIL held, before the first spawn.  markers = 1 (the default): guard
 * each stack with a guard marker (madvise MADV_GUARD_INSTALL, Linux 6.13+)
 * where the kernel has them, else with a PROT_NONE page; 0: always the
 * PROT_NONE page (INTERPOSE_STACK_GUARD=mprotect).  0, or -EINVAL for any
 * other value.  See stack.c. */
IP_EXPORT int interpose_stack_set_guard(int markers);
/* Any thread.  1 while stacks get guard markers (also before the first
 * stack, when the kernel has not been asked yet), 0 once they get
 * PROT_NONE pages (forced, or the kernel refused a marker). */
IP_EXPORT int interpose_stack_guard(void);

/* ---- Diagnostics (diag.c) ----------------------------------------------
 * What interpose.dump(), `interpose ps`, the deadlock report and the
 * statistics read.  Everything here is a snapshot taken under the engine's
 * registry lock; the fields of coroutines running on other threads are read
 * without stopping them, so a reason or counter may be one park old. */

/* Why a parked coroutine waits (interpose_coro_info_t.wait_kind). */
#define INTERPOSE_WAIT_NONE 0
#define INTERPOSE_WAIT_PARK 1    /* a wait of the Python runtime: see stack */
#define INTERPOSE_WAIT_FD 2      /* wait_fd for wait_events */
#define INTERPOSE_WAIT_POLL 3    /* poll/select/epoll: wait_events fds */
#define INTERPOSE_WAIT_LOCK 4    /* the semaphore wait_obj (a CPython lock) */
#define INTERPOSE_WAIT_SLEEP 5
#define INTERPOSE_WAIT_RESOLVE 6 /* a name lookup on the resolver pool */
#define INTERPOSE_WAIT_YIELD 7   /* gave its turn away; runnable again soon */

#define INTERPOSE_HELD_LOCKS 4
#define INTERPOSE_LATENCY_BUCKETS 48

typedef struct interpose_coro_info {
  void *handle;
  void *sched;
  uint64_t id;
  int32_t tid;         /* the OS thread (gettid) of its scheduler */
  int32_t state;       /* 1 runnable, 2 running, 3 parked */
  int32_t wait_kind;   /* INTERPOSE_WAIT_*; meaningful when parked */
  int32_t wait_fd;
  int32_t wait_events;
  int32_t cancelled;
  int32_t is_main;     /* the thread's main coroutine */
  int32_t shield;
  const void *wait_obj;
  /* INTERPOSE_WAIT_LOCK: the semaphore, or on CPython 3.13+ the address a
   * parking-lot waiter parked on (a PyMutex: inside the lock object). */
  const void *wait_key;
  int64_t timer_ns;    /* when its park times out (interpose_clock_ns), or -1 */
  int64_t deadline_ns; /* its deadline, or -1 */
  uint64_t run_ns;     /* time on its thread, all turns */
  uint64_t max_turn_ns;
  uint64_t turns;
  const void *held[INTERPOSE_HELD_LOCKS]; /* semaphores it took, or NULL */
  void *frame;         /* new reference to its innermost frame, or NULL */
  char name[64];
} interpose_coro_info_t;

typedef struct interpose_sched_info {
  void *sched;
  int32_t tid;
  int32_t is_main_thread;
  int32_t stuck;       /* ip_sched_t.stuck (internal.h), no remote wake queued */
  int32_t alive;
  uint64_t switches;
  uint64_t max_turn_ns;
  uint64_t latency[INTERPOSE_LATENCY_BUCKETS]; /* wake-to-run, log2(ns) */
} interpose_sched_info_t;

/* GIL held (the frames are read and referenced).  Fills out[0..cap) with
 * every live coroutine of every scheduler and returns how many there are,
 * which may exceed cap (then only cap were filled).  With frames non-zero
 * each entry's frame is a new reference the caller owns; else NULL. */
IP_EXPORT long interpose_diag_coros(interpose_coro_info_t *out, size_t cap,
                                    int frames);
/* GIL held.  Like interpose_diag_coros, for the schedulers. */
IP_EXPORT long interpose_diag_scheds(interpose_sched_info_t *out, size_t cap);
/* Any thread.  Writes "ADDR:PORT" (or "unix:PATH") of socket fd's peer
 * (peer = 1) or own address (peer = 0) into buf, NUL-terminated; 0, or
 * -ENOTSOCK, -ENOTCONN or another -errno. */
IP_EXPORT int interpose_diag_fd_addr(int fd, int peer, char *buf, size_t len);
/* Any thread.  The deadlock watcher's eventfd (-1: none): once armed, the
 * next hub that finds its scheduler stuck writes 1 to it and disarms. */
IP_EXPORT int interpose_diag_set_notify_fd(int fd);
IP_EXPORT int interpose_diag_arm(void);
/* Any thread.  Resolver pool threads alive (they wake only the coroutine
 * whose lookup they run). */
IP_EXPORT int interpose_diag_resolver_threads(void);
/* GIL held.  Runs body() (a Python callable; a new reference is taken) on a
 * new OS thread named name, with every signal blocked, through
 * PyGILState_Ensure: a thread CPython's _thread module does not count
 * (_thread._count()) and threading does not list.  0 or -errno. */
IP_EXPORT int interpose_diag_start_thread(void *body, const char *name);
/* ---- Thread identities --------------------------------------------------
 * See native/hooks_pthread.c. */

/* Any thread.  From now on every spawned coroutine has a thread identity of
 * its own: pthread_self() in it returns a handle (an address in a range the
 * library reserves and never maps) that the hooked pthread_* functions
 * understand.  Returns 0, or -ENOMEM when the range cannot be reserved. */
IP_EXPORT int interpose_thread_idents_enable(void);
/* Any thread.  The pthread_self() value of the coroutine behind handle, or
 * 0 when it has none (a root, or identities are off, or it has died). */
IP_EXPORT uintptr_t interpose_coro_thread_ident(void *handle);
/* Any thread.  The calling OS thread's real pthread_self(), whichever
 * coroutine runs. */
IP_EXPORT uintptr_t interpose_thread_os_ident(void);

/* ---- Preemption (preempt.c) ---------------------------------------------
 * A monitor OS thread makes a preemptible coroutine that has run for about
 * a switch interval, while its scheduler has other work, yield at its next
 * bytecode boundary (see docs/time-slicing.md). */

/* GIL held.  Starts the monitor (once; again after fork).  0 or -errno. */
IP_EXPORT int interpose_preempt_start(void);
/* GIL released (the monitor may be waiting for the GIL).  Stops the monitor
 * and waits for it to exit; nothing is preempted afterwards.  0. */
IP_EXPORT int interpose_preempt_stop(void);
/* Any thread.  The switch interval, in microseconds (sys.setswitchinterval
 * reports it here); values below 1 count as 1.  Returns 0. */
IP_EXPORT int interpose_preempt_set_interval(int64_t interval_us);
/* Any thread.  The preemption monitor's kernel thread id while it runs,
 * else 0. */
IP_EXPORT int interpose_preempt_monitor_tid(void);
/* GIL held.  Sets whether coroutine may be preempted (on: 0 or 1; -1 only
 * reads); returns the previous setting, or -EINVAL for a NULL handle. */
IP_EXPORT int interpose_coro_set_preemptible(void *coro, int on);

#endif /* INTERPOSE_H */
