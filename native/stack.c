/* stack.c: coroutine stacks.  Each stack is an anonymous MAP_NORESERVE
 * range whose lowest page is a guard (a guard marker, else PROT_NONE: see
 * install_guard), so an overflow faults instead of silently overwriting
 * whatever lies below.  Default-size stacks are cut from per-thread slabs
 * (see slab_take); finished ones go back to a per-thread pool instead of
 * being unmapped.
 *
 * Facts: a stack guarded with mprotect costs two memory mappings (the
 * guard splits the mapping), one guarded with a guard marker (see
 * install_guard) costs at most one and usually shares it with its
 * neighbours; a coroutine that has run costs no more as long as CPython's
 * frame data stacks come from arena.c's slabs, and Linux caps a process at
 * vm.max_map_count mappings (65530 by default), after which mmap and
 * mprotect fail with ENOMEM.  A stack overflow is a SIGSEGV on the guard
 * page, delivered while the faulting stack is unusable.
 * Consequences: running out of mappings must surface as an error from spawn,
 * and the overflow report must run on an alternate signal stack and use
 * only async-signal-safe calls.  Solution: ip__stack_acquire returns -ENOMEM
 * for the caller to report; the SIGSEGV handler runs with SA_ONSTACK on a
 * per-thread sigaltstack, recognises a fault in the running coroutine's
 * guard page, writes the coroutine's id and name and aborts.  Any other
 * fault goes to the handler that was installed before ours (for example
 * faulthandler's), or to the default action.
 *
 * Async-signal safety.  The fault can strike anywhere: inside malloc, with
 * an fd table entry's lock held, in a hook.  So the handler calls no
 * function this library hooks (write is one: the hooked write takes locks,
 * may allocate and may even park) and nothing that may allocate or lock:
 * it writes with the raw system call, formats numbers itself, finds its
 * thread's scheduler by kernel thread id in the type-stable list of
 * schedulers (ip__sched_of_tid) rather than through TLS, whose first use
 * in a thread of a dlopen'ed library allocates, and restores the default
 * action with sigaction. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifdef IP_SANITIZE
#include <sanitizer/asan_interface.h>
#endif

#define POOL_MAX 256
#define MIN_USABLE (16 * 1024)
/* The largest usable size accepted: far beyond any real need, it keeps
 * every size computation far from overflow. */
#define MAX_USABLE ((size_t) 1 << 40)
/* Faults this far below a guard page still count as overflows: one frame
 * can jump past a single guard page. */
#define GUARD_SLACK (64 * 1024)
#define ALTSTACK_SIZE (64 * 1024)

static size_t page_size;
static size_t default_usable;
static struct sigaction previous_segv;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_error;

/* Invariant: every stack in the pool has the default size. */
static __thread ip_stack_t *pool;
static __thread size_t pool_len;
static __thread int altstack_installed;
static __thread void *altstack_ours; /* the sigaltstack we mapped, if any */


static size_t page(void) {
  if (page_size == 0)
    page_size = (size_t) sysconf(_SC_PAGESIZE);
  return page_size;
}


size_t ip__stack_round(size_t usable) {
  size_t p = page();
  if (usable < MIN_USABLE)
    usable = MIN_USABLE;
  return (usable + p - 1) / p * p;
}


/* The interpreter's default (pyver.c) unless the runtime set one.  The
 * library does not read INTERPOSE_STACK_SIZE itself: the Python side
 * parses it (interpose/_core/_settings.py, the one parser, which reports a bad
 * value in one line) and hands the bytes to interpose_stack_set_default,
 * which checks them against the limits kept here. */
size_t ip__stack_default_size(void) {
  if (default_usable)
    return default_usable;
  default_usable = ip__stack_round(ip__pyver_default_stack());
  return default_usable;
}


size_t interpose_stack_default(void) { return ip__stack_default_size(); }
size_t interpose_stack_minimum(void) {
  return ip__pyver_min_stack(MIN_USABLE);
}
size_t interpose_stack_maximum(void) { return MAX_USABLE; }


int interpose_stack_set_default(size_t usable) {
  if (usable < interpose_stack_minimum() || usable > MAX_USABLE)
    return -ERANGE;
  default_usable = ip__stack_round(usable);
  return 0;
}


/* Stacks mapped now, process-wide (pooled ones included). */
static atomic_long stacks_mapped;


/* ---- guard pages ---------------------------------------------------------
 * Facts (madvise(2), Linux 6.13+): madvise(MADV_GUARD_INSTALL = 102) puts
 * guard markers in the page tables of a range of a private, writable,
 * anonymous, not mlocked mapping: any access raises SIGSEGV with the
 * faulting address, like a PROT_NONE page, but no VMA is made or split.
 * Markers survive MADV_DONTNEED and MADV_FREE, stay in a fork child
 * (unless the range is MADV_WIPEONFORK, which stacks never are) and go
 * away with munmap.  Kernels before 6.13 reject the advice with EINVAL,
 * and so does every kernel for a locked mapping (mlockall(MCL_FUTURE)).
 * An mprotect guard costs a second system call and splits the stack's
 * mapping in two.  Anonymous mappings with the same flags that the kernel
 * places next to each other merge into one VMA.
 * Consequences: with markers a stack costs one mmap and one madvise, no
 * VMA of its own once it merges with its neighbours (stacks are mapped
 * top-down, one after the other), and at worst one mapping (a live stack
 * between two unmapped ones): vm.max_map_count stops being the capacity
 * limit while stacks live side by side.  The marker is as good a guard as
 * the PROT_NONE page for the overflow handler below: same signal, same
 * address range.
 * Solution: install_guard tries the marker; on EINVAL it falls back to
 * mprotect for this stack and every later one in the process (the answer
 * does not change while the process lives, and asking again would cost a
 * system call per spawn); any other marker failure falls back for this
 * stack only.  INTERPOSE_STACK_GUARD=mprotect (interpose_stack_set_guard)
 * forces the fallback, for tools that do not know markers and for the
 * tests of the fallback and of the mapping limit. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102 /* <linux/mman.h> of Linux 6.13 */
#endif
/* Invariant: once 0, stays 0 until interpose_stack_set_guard sets it (which
 * it may do only before the first spawn). */
static atomic_int guard_markers = 1;


int interpose_stack_set_guard(int markers) {
  if (markers != 0 && markers != 1)
    return -EINVAL;
  atomic_store(&guard_markers, markers);
  return 0;
}


int interpose_stack_guard(void) { return atomic_load(&guard_markers); }


static int install_guard(char *base, size_t guard) {
  if (atomic_load_explicit(&guard_markers, memory_order_relaxed)) {
    if (madvise(base, guard, MADV_GUARD_INSTALL) == 0)
      return 0;
    if (errno == EINVAL)
      atomic_store(&guard_markers, 0);
  }
  return mprotect(base, guard, PROT_NONE) == 0 ? 0 : -errno;
}


/* ---- the mapping budget -------------------------------------------------- */

/* Mappings left to everything else when stacks approach vm.max_map_count:
 * once the limit is reached, Python's own allocator fails too, and the
 * program could not even handle spawn's error. */
#define MAPPING_HEADROOM 1024
/* Facts (measured on 3.11, docs/performance.md): a coroutine costs two
 * mappings for its stack when the guard page is an mprotect one (it splits
 * the mapping), at most one with a guard marker, and, once it has run,
 * CPython's 16 KiB frame data stack for its thread state: a mapping of its
 * own, which merges with a neighbour only when it happens to be mapped
 * right next to another chunk, unless arena.c serves it from a slab.
 * Counting two per stack while chunks had mappings of their own let a
 * server that spawns and runs one coroutine per connection use up every
 * mapping at about 21,800 coroutines, headroom included, so that the next
 * mmap anywhere in the process failed.
 * Consequence: the estimate (per stack: one with markers, two with
 * mprotect, one more without slabs) only decides when counting is needed;
 * past half the limit the real count is read from /proc/self/maps (a
 * handful of times, see below), so the headroom holds whatever the chunks
 * and the rest of the process did, and a program gets all the coroutines
 * the limit allows. */
static long mappings_per_stack(void) {
  return (atomic_load(&guard_markers) ? 1 : 2) +
         (ip__arena_slabs_on() ? 0 : 1);
}


/* The most mappings one more coroutine can cost: its stack's and a frame
 * data chunk of its own. */
static long mappings_per_stack_worst(void) {
  return (atomic_load(&guard_markers) ? 1 : 2) + 1;
}


static long max_map_count(void) {
  static atomic_long cached;
  long v = atomic_load(&cached);
  if (v > 0)
    return v;
  v = 65530; /* Linux's default, if /proc cannot tell */
  int fd = ip__real.open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[32];
    ssize_t n = ip__real.read(fd, buf, sizeof(buf) - 1);
    if (n > 0) {
      buf[n] = '\0';
      long parsed = strtol(buf, NULL, 10);
      if (parsed > 0)
        v = parsed;
    }
    ip__real.close(fd);
  }
  atomic_store(&cached, v);
  return v;
}


/* The process's mappings now (one line of /proc/self/maps each), or -1.
 * The buffer is small: spawn may run on a coroutine whose whole stack is
 * the 16 KiB minimum. */
static long count_mappings(void) {
  int fd = ip__real.open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char buf[2048];
  long lines = 0;
  ssize_t n;
  while ((n = ip__real.read(fd, buf, sizeof(buf))) > 0)
    for (ssize_t i = 0; i < n; i++)
      lines += buf[i] == '\n';
  ip__real.close(fd);
  return n < 0 ? -1 : lines;
}


/* Whether one more stack leaves MAPPING_HEADROOM mappings to the rest of
 * the process.  After a count, the stacks that fit even at the worst case
 * each are allowed without counting again, so the counts near the limit
 * are a handful (each leaves a fraction of the gap), not one per spawn.
 * The state is shared by every thread; a race between two counts only
 * makes one of them count again. */
static int mappings_left_for_stack(void) {
  static atomic_long allowed_until; /* stacks_mapped allowed without a count */
  long limit = max_map_count();
  long stacks = atomic_load(&stacks_mapped) + 1;
  /* While stacks take at most half the limit, the rest of the process
   * (libraries, heaps, arenas: a few hundred mappings) would need the
   * other half to reach it: nothing to read. */
  if (mappings_per_stack() * stacks <= limit / 2 ||
      stacks <= atomic_load(&allowed_until))
    return 1;
  long counted = count_mappings();
  if (counted < 0)
    return 0;
  long fit = (limit - MAPPING_HEADROOM - counted) / mappings_per_stack_worst();
  atomic_store(&allowed_until, stacks - 1 + (fit > 0 ? fit : 0));
  return fit > 0;
}


/* ---- stack slabs --------------------------------------------------------
 * Facts (measured, docs/performance.md, "Round 2"): with guard markers a
 * fresh stack cost an mmap and a madvise, and the mmap (finding room,
 * merging the new VMA with its neighbour) was the larger part, about
 * 0.9 us of a spawn+join.  Part of a mapping can be unmapped on its own,
 * and stacks cut from one mapping are adjacent, as the stacks the kernel
 * maps one after another are.
 * Consequence: stacks of one size can come from one mmap of many, and
 * everything that frees a stack (the pool, the runs of doomed stacks, the
 * fork child's unmapping of dead coroutines' stacks) works on them
 * unchanged: a stack, once cut, is a mapping range of its own like any
 * other.
 * Solution: default-size stacks are cut, top down, from a per-thread slab
 * of SLAB_STACKS stacks mapped at once; the part not cut yet is unmapped
 * when the thread's scheduler ends, or when the default size changes.
 * When the slab cannot be mapped (RLIMIT_AS, say), the stack is mapped on
 * its own as before, so that spawn fails only when one stack does not
 * fit.  The uncut part is address space only (MAP_NORESERVE, untouched)
 * and at most one mapping.
 *
 * Under ASan there are no slabs.  Measured: with slabs under ASan,
 * tests/test_stress.py's RSS grew by 2 MiB a cycle after 18 flat cycles
 * of 2,000 coroutines, and stayed flat without them.  ASan keeps the
 * shadow pages of an unmapped range resident, so stacks placed at fresh
 * addresses add up there (which ranges went fresh was not pinned down).
 * The real build stays flat: 40 such cycles held 34.0-34.5 MiB RSS and
 * 174-175 mappings. */
#ifdef IP_SANITIZE
#define SLAB_STACKS 1
#else
#define SLAB_STACKS 32
#endif
static __thread char *slab_low;  /* the uncut part is [slab_low, slab_cut) */
static __thread char *slab_cut;
static __thread size_t slab_stride;


static void slab_drop(void) {
  if (slab_cut != slab_low)
    munmap(slab_low, (size_t) (slab_cut - slab_low));
  slab_low = slab_cut = NULL;
}


/* A range of size bytes cut from this thread's slab, or NULL. */
static char *slab_take(size_t size) {
  if (slab_cut == slab_low || slab_stride != size) {
    slab_drop();
    if (size > SIZE_MAX / SLAB_STACKS)
      return NULL;
    char *p = mmap(NULL, size * SLAB_STACKS, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                   -1, 0);
    if (p == MAP_FAILED)
      return NULL;
    slab_low = p;
    slab_cut = p + size * SLAB_STACKS;
    slab_stride = size;
  }
  slab_cut -= size;
  return slab_cut;
}


static int map_stack(ip_stack_t *st, size_t usable) {
  if (!mappings_left_for_stack())
    return -ENOMEM;
  size_t guard = page();
  size_t size = usable + guard;
  char *p = SLAB_STACKS > 1 && usable == ip__stack_default_size()
                ? slab_take(size)
                : NULL;
  if (p == NULL) {
    p = mmap(NULL, size, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
      return -errno;
  }
  int err = install_guard(p, guard);
  if (err != 0) {
    munmap(p, size);
    return err;
  }
  st->base = p;
  st->size = size;
  st->guard = guard;
  atomic_fetch_add(&stacks_mapped, 1);
  return 0;
}


/* Every stack a coroutine ran on is unmapped through here: under ASan the
 * dead frames' redzones would otherwise stay poisoned in the shadow of an
 * address range that a later mapping (even a heap one) reuses. */
void ip__stack_unmap(ip_stack_t *st) {
#ifdef IP_SANITIZE
  __asan_unpoison_memory_region(st->base + st->guard, st->size - st->guard);
#endif
  munmap(st->base, st->size);
  st->base = NULL;
  atomic_fetch_sub(&stacks_mapped, 1);
}


int ip__stack_acquire(ip_stack_t *st, size_t usable) {
  if (usable > SIZE_MAX / 4)
    return -ENOMEM; /* rounding and the guard page would overflow size_t */
  usable = usable ? ip__stack_round(usable) : ip__stack_default_size();
  if (usable == ip__stack_default_size() && pool_len > 0) {
    *st = pool[--pool_len];
#ifdef IP_SANITIZE
    /* The previous coroutine died inside its frames: their redzones are
     * still poisoned in ASan's shadow of this stack. */
    __asan_unpoison_memory_region(st->base + st->guard, st->size - st->guard);
#endif
    return 0;
  }
  return map_stack(st, usable);
}


/* Facts (measured on a 2-core VM, docs/performance.md): unmapping a stack
 * cost about 7 µs of CPU, half of a spawn+join when 20,000 coroutines end
 * together and the pool keeps only POOL_MAX of them; most of it is the TLB
 * shootdown every munmap of touched pages pays (an inter-processor
 * interrupt, dear under virtualisation, once the process has a second
 * thread such as the preemption monitor), not the freeing.  Stacks mapped
 * one after another are adjacent (the kernel maps top-down).
 * Consequence: unmapping stacks one by one pays the shootdown per stack.
 * Solution: a stack the pool cannot take waits on a per-thread list of
 * DOOMED_MAX; the list is sorted by address and unmapped in runs of
 * adjacent stacks, one munmap (and one shootdown) per run, when it is
 * full and when the hub ends a round, so that dead stacks' pages never
 * outlive the round that freed them. */
#define DOOMED_MAX 256
static __thread ip_stack_t *doomed;
static __thread size_t doomed_len;


static int by_base(const void *a, const void *b) {
  const char *x = ((const ip_stack_t *) a)->base;
  const char *y = ((const ip_stack_t *) b)->base;
  return (x > y) - (x < y);
}


void ip__stack_unmap_released(void) {
  if (doomed_len == 0)
    return;
  qsort(doomed, doomed_len, sizeof(*doomed), by_base);
  size_t run = 0;
  for (size_t i = 0; i < doomed_len; i++) {
#ifdef IP_SANITIZE
    ip_stack_t *st = &doomed[i];
    __asan_unpoison_memory_region(st->base + st->guard, st->size - st->guard);
#endif
    int last = i + 1 == doomed_len ||
               doomed[i].base + doomed[i].size != doomed[i + 1].base;
    if (last) {
      char *start = doomed[run].base;
      munmap(start, (size_t) (doomed[i].base + doomed[i].size - start));
      atomic_fetch_sub(&stacks_mapped, (long) (i + 1 - run));
      run = i + 1;
    }
  }
  doomed_len = 0;
}


void ip__stack_release(ip_stack_t *st) {
  if (st->base == NULL)
    return;
  if (st->size - st->guard == ip__stack_default_size() && pool_len < POOL_MAX) {
    if (pool == NULL)
      pool = malloc(POOL_MAX * sizeof(*pool));
    if (pool != NULL) {
      pool[pool_len++] = *st;
      st->base = NULL;
      return;
    }
  }
  if (doomed == NULL)
    doomed = malloc(DOOMED_MAX * sizeof(*doomed));
  if (doomed == NULL) {
    IP_SAVE_ERRNO(ip__stack_unmap(st));
    return;
  }
  doomed[doomed_len++] = *st;
  st->base = NULL;
  if (doomed_len == DOOMED_MAX)
    IP_SAVE_ERRNO(ip__stack_unmap_released());
}


/* ---- the guard-page handler ------------------------------------------- */

/* The raw system call, never the hooked write (see the top comment). */
static void put(const char *s) {
  long IP_UNUSED n = syscall(SYS_write, 2, s, strlen(s));
}


static void put_u64(uint64_t v, int base) {
  char buf[24];
  char *p = buf + sizeof(buf) - 1;
  *p = '\0';
  do {
    *--p = "0123456789abcdef"[v % base];
    v /= base;
  } while (v);
  put(p);
}


static int in_guard(const ip_stack_t *st, const char *addr) {
  if (st->base == NULL)
    return 0;
  return addr >= st->base - GUARD_SLACK && addr < st->base + st->guard;
}


static void report_overflow(const ip_coro_t *co, const ip_stack_t *st,
                            const char *addr) {
  if (co != NULL) {
    put("interpose: coroutine ");
    put_u64(co->id, 10);
    put(" '");
    put(co->name);
    put("'");
  } else {
    put("interpose: the scheduler hub");
  }
  put(" overflowed its C stack of ");
  put_u64(st->size - st->guard, 10);
  put(" bytes (guard page hit at 0x");
  put_u64((uint64_t) (uintptr_t) addr, 16);
  put(").\ninterpose: give it a larger stack: spawn(..., stack_size=N) or "
      "INTERPOSE_STACK_SIZE=N; ordinary Python code needs about 512 KiB.\n");
}


/* Whether the lowest usable page of st has been touched.  A handler
 * installed after ours (faulthandler.enable() once coroutines run) sees
 * the fault first and re-raises it with raise(), which carries no fault
 * address; a coroutine whose last page is in use has overflowed.  mincore
 * is a plain system call, safe in a signal handler. */
static int lowest_page_touched(const ip_stack_t *st) {
  unsigned char resident = 0;
  if (st->base == NULL)
    return 0;
  return mincore(st->base + st->guard, page(), &resident) == 0 &&
         (resident & 1);
}


static void guard_handler(int sig, siginfo_t *si, void *uctx) {
  int saved_errno = errno;
  ip_sched_t *s = ip__sched_of_tid((pid_t) syscall(SYS_gettid));
  const char *addr = si->si_addr;
  if (s != NULL) {
    ip_coro_t *co = s->current;
    const ip_stack_t *st = co ? &co->stack : &s->hub_stack;
    int hit = si->si_code > 0 ? in_guard(st, addr)
                              : si->si_code == SI_TKILL && lowest_page_touched(st);
    if (hit) {
      report_overflow(co, st, si->si_code > 0 ? addr : st->base);
      abort();
    }
  }
  errno = saved_errno;
  if (previous_segv.sa_flags & SA_SIGINFO) {
    previous_segv.sa_sigaction(sig, si, uctx);
    return;
  }
  if (previous_segv.sa_handler != SIG_DFL &&
      previous_segv.sa_handler != SIG_IGN) {
    previous_segv.sa_handler(sig);
    return;
  }
  /* Returning re-executes the faulting instruction with the default action
   * in place, so the process dies of the original SIGSEGV. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGSEGV, &dfl, NULL);
  errno = saved_errno;
}


static void install_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = guard_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &previous_segv) != 0)
    handler_error = -errno;
}


int ip__stack_install_guard_handler(void) {
  pthread_once(&handler_once, install_handler);
  if (handler_error)
    return handler_error;
  if (altstack_installed)
    return 0;
  stack_t old;
  if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE)) {
    altstack_installed = 1; /* someone (faulthandler) already has one */
    return 0;
  }
  stack_t ss;
  ss.ss_sp = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ss.ss_sp == MAP_FAILED)
    return -errno;
  ss.ss_size = ALTSTACK_SIZE;
  ss.ss_flags = 0;
  if (sigaltstack(&ss, NULL) != 0) {
    int err = -errno;
    munmap(ss.ss_sp, ALTSTACK_SIZE);
    return err;
  }
  altstack_installed = 1;
  altstack_ours = ss.ss_sp;
  return 0;
}


void ip__stack_thread_exit(void) {
  slab_drop();
  while (pool_len > 0) {
    pool_len--;
    ip__stack_unmap(&pool[pool_len]);
  }
  free(pool);
  pool = NULL;
  ip__stack_unmap_released();
  free(doomed);
  doomed = NULL;
  if (altstack_ours != NULL) {
    stack_t off = {.ss_flags = SS_DISABLE};
    if (sigaltstack(&off, NULL) == 0)
      munmap(altstack_ours, ALTSTACK_SIZE);
    altstack_ours = NULL;
    altstack_installed = 0;
  }
}

