/* real.c: the one table of real libc functions, found with
 * dlsym(RTLD_NEXT).  Every call the engine makes to a function that a hook
 * shadows goes through this table, so the engine never re-enters its own
 * hooks.
 *
 * Facts: the dynamic loader runs the constructors of every library of a
 * process in dependency order, and a preloaded library has no dependency
 * relation with the program's own libraries, so another library's
 * constructor may run before ours (libcap-ng's does: every program linked
 * with it, su, runuser, passwd, login, newgrp, chsh, calls open() and read()
 * from that constructor).  Our hooks are bound from the first instruction
 * of the process, before any constructor.  Consequence: a table filled in by
 * our constructor is still empty when such a call arrives, and the hook
 * jumps through a NULL pointer.  Solution: the table is resolved on first
 * use, by whichever hook or engine call gets there first, through
 * ip__real_table() (internal.h); the constructor below only resolves it
 * early in the common case.  Nothing in this library reads a real-function
 * pointer any other way.
 *
 * Invariant: resolving calls nothing but dlsym and dladdr, which call no
 * function this library hooks, so resolution never recurses into itself.
 * Two threads may resolve at once: each stores the same pointers (with
 * atomic stores), and the ready flag is published last, with release
 * order, so a reader that sees it set also sees every pointer. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

ip_real_t ip__real_storage;
int ip__real_ready;


static void *resolve(const char *name) {
  void *fn = dlsym(RTLD_NEXT, name);
  if (fn == NULL)
    fn = dlsym(RTLD_DEFAULT, name);
  return fn;
}


int interpose_preloaded(void) {
  /* Preloaded, the close() every caller gets is defined in this library.
   * (Taking close's address here would not tell: a reference from inside
   * the library resolves like any other, to libc's when not preloaded.) */
  Dl_info theirs, ours;
  void *resolved = dlsym(RTLD_DEFAULT, "close");
  return resolved != NULL && dladdr(resolved, &theirs) &&
         dladdr((void *) &ip__real_storage, &ours) &&
         theirs.dli_fbase == ours.dli_fbase;
}


#define RESOLVE(name)                                                         \
  __atomic_store_n(&ip__real_storage.name,                                    \
                   (__typeof__(ip__real_storage.name)) resolve(#name),        \
                   __ATOMIC_RELAXED);

/* glibc keeps an old pthread_cond_* ABI (GLIBC_2.2.5 on x86-64, from
 * LinuxThreads) beside the current one (GLIBC_2.3.2); dlsym may hand back
 * the old one, whose condition variable layout differs, so ask for the
 * current version by name.  Architectures born later (aarch64: 2.17) have
 * a single version, which dlsym finds. */
static void resolve_versioned(void) {
  void *fn = dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
  if (fn != NULL)
    __atomic_store_n(&ip__real_storage.pthread_cond_timedwait,
                     (__typeof__(ip__real_storage.pthread_cond_timedwait)) fn,
                     __ATOMIC_RELAXED);
}


void ip__real_resolve(void) {
  IP_REAL_FUNCTIONS(RESOLVE);
  resolve_versioned();
  /* Without these the process cannot do I/O at all: refuse loudly rather
   * than crash on the first call.  Only a raw system call can say so. */
  if (ip__real_storage.read == NULL || ip__real_storage.write == NULL ||
      ip__real_storage.close == NULL) {
    static const char msg[] =
        "interpose: cannot find the real read/write/close in libc\n";
    ssize_t IP_UNUSED n = syscall(SYS_write, 2, msg, sizeof(msg) - 1);
    abort();
  }
  __atomic_store_n(&ip__real_ready, 1, __ATOMIC_RELEASE);
}


/* Not needed for correctness (see above): it only moves the dlsym calls
 * out of the first hooked call. */
__attribute__((constructor)) static void real_init(void) {
  (void) ip__real_table();
}
