/* hooks_process.c: vfork and waitpid, the process calls that would
 * otherwise break or stall the scheduler.
 *
 * waitpid(pid > 0, ...) without WNOHANG waits on a pidfd (Linux 5.3+): the
 * coroutine parks until the child has changed state, then the real call
 * collects it.  Waits for any child (pid <= 0), and kernels without
 * pidfd_open, use the real call, which blocks the thread.  subprocess's
 * Popen.wait() and run() without capture_output therefore stop stalling
 * the other coroutines. */
#include <sys/syscall.h>
#include <sys/wait.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)

/* vfork() shares the parent's memory until the child execs, without the
 * atfork handlers that give a forked child its own scheduler: a hook
 * called in the child (CPython's _posixsubprocess closes and dup2s fds
 * there) would change the parent's fd table, remove the parent's fds from
 * the parent's epoll set, or even park the parent's coroutine.  So vfork is
 * fork here: slower for a large process, and always correct.  posix_spawn
 * is unaffected: glibc's child uses internal calls no hook sees. */
pid_t vfork(void) { return fork(); }



pid_t waitpid(pid_t pid, int *status, int options) {
  ip_sched_t *s;
  if (pid <= 0 || (options & WNOHANG) || (s = ip__hook_sched()) == NULL)
    return ip__real.waitpid(pid, status, options);
  /* Ask first, without waiting: a pid that is not our child (ECHILD), bad
   * options (EINVAL) and a child that has already exited are answered at
   * once, as the blocking call would; pidfd_open would accept any pid and
   * the wait below would last until that process exits. */
  pid_t done = ip__real.waitpid(pid, status, options | WNOHANG);
  if (done != 0)
    return done;
  int pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) /* no pidfd: the real call blocks the thread */
    return ip__real.waitpid(pid, status, options);
  /* A pidfd is readable once the process has exited; for stopped or
   * continued children (WUNTRACED, WCONTINUED) keep the real call. */
  int r = 0;
  if (!(options & (WUNTRACED | WCONTINUED)))
    r = ip__fd_wait(s, pidfd, INTERPOSE_READABLE, -1, 1);
  ip__real.close(pidfd);
  if (r < 0 && r != -EPERM)
    return ip__fail(r);
  return ip__real.waitpid(pid, status, options);
}

#pragma GCC visibility pop
