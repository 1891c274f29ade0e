/* real.c: the one table of real libc functions, found with
 * dlsym(RTLD_NEXT) once, when the library is loaded.  Every call the engine
 * makes to a function that a hook shadows goes through this table, so the
 * engine never re-enters its own hooks. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

ip_real_t ip__real;


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
         dladdr((void *) &ip__real, &ours) &&
         theirs.dli_fbase == ours.dli_fbase;
}


#define RESOLVE(name) ip__real.name = resolve(#name);

/* glibc keeps an old pthread_cond_* ABI (GLIBC_2.2.5 on x86-64, from
 * LinuxThreads) beside the current one (GLIBC_2.3.2); dlsym may hand back
 * the old one, whose condition variable layout differs, so ask for the
 * current version by name.  Architectures born later (aarch64: 2.17) have
 * a single version, which dlsym finds. */
static void resolve_versioned(void) {
  void *fn = dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
  if (fn != NULL)
    ip__real.pthread_cond_timedwait = fn;
}


__attribute__((constructor)) static void real_init(void) {
  IP_REAL_FUNCTIONS(RESOLVE);
  resolve_versioned();
  /* Without these the process cannot do I/O at all: refuse loudly rather
   * than crash on the first call. */
  if (ip__real.read == NULL || ip__real.write == NULL ||
      ip__real.close == NULL) {
    static const char msg[] =
        "interpose: cannot find the real read/write/close in libc\n";
    ssize_t IP_UNUSED n = syscall(SYS_write, 2, msg, sizeof(msg) - 1);
    abort();
  }
}
