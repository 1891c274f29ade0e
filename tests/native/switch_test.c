/* switch_test.c: checks native/switch_<arch>.S on its own, linked straight
 * to the assembly file without the rest of the library.  Two contexts made
 * by ip__context_init (one on an mmap'd stack with a guard page, one on a
 * deliberately misaligned top of a malloc'd buffer) ping-pong through
 * ip__switch, and every resumption checks that:
 *  - every callee-saved register holds what it held before the switch
 *    (x86-64: rbx, rbp, r12-r15; AArch64: x19-x29 and d8-d15), set and
 *    compared in assembly so that the compiler cannot hide a loss;
 *  - values the compiler keeps live across the switch (integer and floating
 *    point) and volatile locals on each stack come out as computed without
 *    switching;
 *  - the floating-point rounding mode set in one context does not leak into
 *    the other (x86-64: both MXCSR and the x87 control word; AArch64: FPCR),
 *    and a fresh context starts with the default mode whatever its creator
 *    had set;
 *  - the stack is 16-byte aligned at entry, as the ABI requires.
 * It then times a ping-pong and prints "switch_test: ok <arch> <ns>"
 * (nanoseconds per ip__switch call), exiting 0; on any failure it prints a
 * message to stderr and exits 1.
 *
 *   switch_test            the checks above
 *   switch_test --bench    only the median ns per switch of 5 timed runs
 *
 * Build: cc -std=gnu11 -O2 -Wall -Wextra -Werror switch_test.c
 *        ../../native/switch_<arch>.S -lm */
#define _GNU_SOURCE
#include <fenv.h>
#include <signal.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The two routines under test, hidden symbols of switch_<arch>.S. */
void ip__switch(void **save_sp, void *new_sp);
void *ip__context_init(void *stack_top, void (*fn)(void *), void *arg);

/* Fills every callee-saved register with values derived from seed, calls
 * ip__switch(save_sp, new_sp) and, once resumed, returns 0 if every one of
 * them still holds its value and 1 otherwise.  Defined in assembly below. */
int checked_switch(void **save_sp, void *new_sp, uint64_t seed);

#if defined(__x86_64__)
#define ARCH "x86_64"
/* Callee-saved (SysV): rbx, rbp, r12-r15.  The seed stays at 0(%rsp); seven
 * pushes after the call leave %rsp 16-byte aligned for the inner call. */
__asm__(
    "  .text\n"
    "  .globl checked_switch\n"
    "  .hidden checked_switch\n"
    "  .type checked_switch, @function\n"
    "checked_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  pushq %rdx\n"
    "  movq  %rdx, %rbx\n"
    "  leaq  1(%rdx), %rbp\n"
    "  leaq  2(%rdx), %r12\n"
    "  leaq  3(%rdx), %r13\n"
    "  leaq  4(%rdx), %r14\n"
    "  leaq  5(%rdx), %r15\n"
    "  call  ip__switch\n"
    "  movq  (%rsp), %rax\n"
    "  cmpq  %rax, %rbx\n"
    "  jne   1f\n"
    "  leaq  1(%rax), %rcx\n"
    "  cmpq  %rcx, %rbp\n"
    "  jne   1f\n"
    "  leaq  2(%rax), %rcx\n"
    "  cmpq  %rcx, %r12\n"
    "  jne   1f\n"
    "  leaq  3(%rax), %rcx\n"
    "  cmpq  %rcx, %r13\n"
    "  jne   1f\n"
    "  leaq  4(%rax), %rcx\n"
    "  cmpq  %rcx, %r14\n"
    "  jne   1f\n"
    "  leaq  5(%rax), %rcx\n"
    "  cmpq  %rcx, %r15\n"
    "  jne   1f\n"
    "  xorl  %eax, %eax\n"
    "  jmp   2f\n"
    "1:\n"
    "  movl  $1, %eax\n"
    "2:\n"
    "  addq  $8, %rsp\n"
    "  popq  %r15\n"
    "  popq  %r14\n"
    "  popq  %r13\n"
    "  popq  %r12\n"
    "  popq  %rbx\n"
    "  popq  %rbp\n"
    "  ret\n"
    "  .size checked_switch, .-checked_switch\n");

#elif defined(__aarch64__)
#define ARCH "aarch64"
/* Callee-saved (AAPCS64): x19-x29 and the low halves d8-d15 of v8-v15.
 * Frame: x29/x30 at +0, x19-x28 at +16, d8-d15 at +96, the seed at +160. */
#define CHECK_X(reg, k)                                                       \
  "  add  x9, x2, #" #k "\n"                                                  \
  "  cmp  " #reg ", x9\n"                                                     \
  "  b.ne 1f\n"
#define CHECK_D(reg, k)                                                       \
  "  add  x9, x2, #" #k "\n"                                                  \
  "  fmov x10, " #reg "\n"                                                    \
  "  cmp  x10, x9\n"                                                          \
  "  b.ne 1f\n"
#define SET_D(reg, k)                                                         \
  "  add  x9, x2, #" #k "\n"                                                  \
  "  fmov " #reg ", x9\n"
__asm__(
    "  .text\n"
    "  .globl checked_switch\n"
    "  .hidden checked_switch\n"
    "  .type checked_switch, %function\n"
    "  .p2align 2\n"
    "checked_switch:\n"
    "  stp  x29, x30, [sp, #-176]!\n"
    "  stp  x19, x20, [sp, #16]\n"
    "  stp  x21, x22, [sp, #32]\n"
    "  stp  x23, x24, [sp, #48]\n"
    "  stp  x25, x26, [sp, #64]\n"
    "  stp  x27, x28, [sp, #80]\n"
    "  stp  d8, d9, [sp, #96]\n"
    "  stp  d10, d11, [sp, #112]\n"
    "  stp  d12, d13, [sp, #128]\n"
    "  stp  d14, d15, [sp, #144]\n"
    "  str  x2, [sp, #160]\n"
    "  mov  x19, x2\n"
    "  add  x20, x2, #1\n"
    "  add  x21, x2, #2\n"
    "  add  x22, x2, #3\n"
    "  add  x23, x2, #4\n"
    "  add  x24, x2, #5\n"
    "  add  x25, x2, #6\n"
    "  add  x26, x2, #7\n"
    "  add  x27, x2, #8\n"
    "  add  x28, x2, #9\n"
    "  add  x29, x2, #10\n"
    SET_D(d8, 11) SET_D(d9, 12) SET_D(d10, 13) SET_D(d11, 14)
    SET_D(d12, 15) SET_D(d13, 16) SET_D(d14, 17) SET_D(d15, 18)
    "  bl   ip__switch\n"
    "  ldr  x2, [sp, #160]\n"
    CHECK_X(x19, 0) CHECK_X(x20, 1) CHECK_X(x21, 2) CHECK_X(x22, 3)
    CHECK_X(x23, 4) CHECK_X(x24, 5) CHECK_X(x25, 6) CHECK_X(x26, 7)
    CHECK_X(x27, 8) CHECK_X(x28, 9) CHECK_X(x29, 10)
    CHECK_D(d8, 11) CHECK_D(d9, 12) CHECK_D(d10, 13) CHECK_D(d11, 14)
    CHECK_D(d12, 15) CHECK_D(d13, 16) CHECK_D(d14, 17) CHECK_D(d15, 18)
    "  mov  w0, #0\n"
    "  b    2f\n"
    "1:\n"
    "  mov  w0, #1\n"
    "2:\n"
    "  ldp  d14, d15, [sp, #144]\n"
    "  ldp  d12, d13, [sp, #128]\n"
    "  ldp  d10, d11, [sp, #112]\n"
    "  ldp  d8, d9, [sp, #96]\n"
    "  ldp  x27, x28, [sp, #80]\n"
    "  ldp  x25, x26, [sp, #64]\n"
    "  ldp  x23, x24, [sp, #48]\n"
    "  ldp  x21, x22, [sp, #32]\n"
    "  ldp  x19, x20, [sp, #16]\n"
    "  ldp  x29, x30, [sp], #176\n"
    "  ret\n"
    "  .size checked_switch, .-checked_switch\n");

#else
#error "switch_test: no switch_<arch>.S for this architecture"
#endif

#define STACK_SIZE (256 * 1024)
#define ITERATIONS 20000
#define CANARY 0xA5
#define CANARY_LEN 64
#define BENCH_ROUND_TRIPS 5000000L
#define BENCH_RUNS 5
#define CHECK_ROUND_TRIPS 200000L

static const int modes[4] = {FE_TONEAREST, FE_UPWARD, FE_DOWNWARD,
                             FE_TOWARDZERO};
static const char *const mode_names[4] = {"to-nearest", "upward",
                                          "downward", "toward-zero"};

/* 1/3 under each rounding mode, computed by main without any switch. */
static double third[4];
#if defined(__x86_64__)
static long double third_x87[4];
#endif
static volatile double one = 1.0, three = 3.0;
#if defined(__x86_64__)
static volatile long double one_x87 = 1.0L, three_x87 = 3.0L;
#endif

struct side {
  const char *name;
  uint64_t salt;
  int mode_shift;    /* this side uses modes[(i + mode_shift) % 4] */
  void *sp;          /* saved stack pointer while switched away */
  void **peer_sp;    /* the other side's saved stack pointer */
  int entered;
  int finished;
  uint64_t hash;     /* accumulated integer result */
  double sum;        /* accumulated floating-point result */
  uint64_t visits;   /* a volatile counter kept on this side's stack */
};

static void *main_sp;
static struct side side_a, side_b;


static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("switch_test: FAIL: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}


/* A broken switch usually crashes rather than returning wrong values; say
 * so instead of dying silently.  Runs on its own stack, since the faulting
 * one may be unusable. */
static void on_crash(int sig) {
  char msg[] = "switch_test: FAIL: crashed with signal ..\n";
  char *digits = strchr(msg, '.');
  digits[0] = (char) ('0' + sig / 10 % 10);
  digits[1] = (char) ('0' + sig % 10);
  ssize_t n = write(2, msg, strlen(msg));
  (void) n;
  _exit(1);
}


static void install_crash_handler(void) {
  static char altstack[64 * 1024];
  stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
  if (sigaltstack(&ss, NULL) != 0)
    fail("sigaltstack failed");
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_crash;
  sa.sa_flags = SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE};
  for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
    if (sigaction(sigs[i], &sa, NULL) != 0)
      fail("sigaction failed");
}


/* Hides the value from the optimiser, which would otherwise fold alignment
 * checks of objects it knows to be aligned. */
static uintptr_t opaque(const void *p) {
  uintptr_t v = (uintptr_t) p;
  __asm__ volatile("" : "+r"(v));
  return v;
}


static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}


static uint64_t seed_for(const struct side *s, long i) {
  /* Far apart, so the register patterns of the two sides never overlap. */
  return mix(s->salt, (uint64_t) i) & ~(uint64_t) 0xff;
}


static int mode_index(void) {
  int m = fegetround();
  for (int i = 0; i < 4; i++)
    if (modes[i] == m)
      return i;
  return -1;
}


/* Checks that the rounding mode in force is modes[want], through fegetround,
 * the raw control registers and an actual division. */
static void __attribute__((noinline)) check_mode(const char *who, int want) {
  int got = mode_index();
  if (got != want)
    fail("%s: rounding mode is %s, expected %s", who,
         got < 0 ? "unknown" : mode_names[got], mode_names[want]);
  volatile double q = one / three;
  if (q != third[want])
    fail("%s: 1/3 rounded as if not %s", who, mode_names[want]);
#if defined(__x86_64__)
  /* fegetround reads the x87 control word only; check MXCSR on its own. */
  uint32_t mxcsr;
  uint16_t cw;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(cw));
  if ((int) (mxcsr & 0x6000) >> 3 != modes[want])
    fail("%s: MXCSR rounding bits %#x, expected %s", who,
         (unsigned) (mxcsr & 0x6000), mode_names[want]);
  if ((int) (cw & 0x0c00) != modes[want])
    fail("%s: x87 rounding bits %#x, expected %s", who,
         (unsigned) (cw & 0x0c00), mode_names[want]);
  volatile long double qx = one_x87 / three_x87;
  if (qx != third_x87[want])
    fail("%s: x87 1/3 rounded as if not %s", who, mode_names[want]);
#endif
}


/* Reports through write(2) alone: with a misaligned stack, stdio's aligned
 * vector stores would fault before printing anything. */
static void fail_raw(const char *msg) {
  static const char prefix[] = "switch_test: FAIL: ";
  ssize_t n = write(2, prefix, sizeof(prefix) - 1);
  n += write(2, msg, strlen(msg));
  n += write(2, "\n", 1);
  (void) n;
  _exit(1);
}


static void __attribute__((noinline)) check_alignment(const void *cfa) {
  alignas(max_align_t) unsigned char probe[32];
  if (opaque(cfa) % 16 != 0)
    fail_raw("stack pointer at a context's entry is not 16-byte aligned");
  if (opaque(probe) % alignof(max_align_t) != 0)
    fail_raw("an alignas(max_align_t) local in a fresh context is "
             "misaligned");
}


/* The reference for what a side computes across its switches. */
static void expected(const struct side *s, uint64_t *hash, double *sum) {
  uint64_t h1 = s->salt, h2 = ~s->salt, h3 = s->salt * 3;
  double f1 = 0.5, f2 = 0.25;
  fesetround(FE_TONEAREST);
  for (long i = 0; i < ITERATIONS; i++) {
    h1 = mix(h1, (uint64_t) i);
    h2 = mix(h2, h1);
    h3 = mix(h3, h2 ^ (uint64_t) i);
    f1 = f1 * 1.0000001 + (double) (i & 7);
    f2 = f2 + f1 * 0.5;
  }
  *hash = h1 ^ h2 ^ h3;
  *sum = f1 + f2;
}


/* The body of each side: ITERATIONS checked switches to the peer, with a
 * computation kept live across each one.  Side A then hands over once more
 * without a check so that B's last switch returns; B, done last, goes back
 * to main.  Neither is resumed after that. */
static void side_main(void *arg) {
  struct side *s = arg;
  check_alignment(__builtin_dwarf_cfa());
  if (s != &side_a && s != &side_b)
    fail("entry function got arg %p, not its side", arg);
  s->entered = 1;
  /* A fresh context starts with the default rounding mode, whatever its
   * creator (main, or for B the side A) had set. */
  check_mode(s->name, 0);

  volatile uint64_t visits = 0;
  uint64_t h1 = s->salt, h2 = ~s->salt, h3 = s->salt * 3;
  double f1 = 0.5, f2 = 0.25;
  for (long i = 0; i < ITERATIONS; i++) {
    int mode = (int) ((i + s->mode_shift) % 4);
    if (fesetround(modes[mode]) != 0)
      fail("%s: fesetround(%s) failed", s->name, mode_names[mode]);
    h1 = mix(h1, (uint64_t) i);
    h2 = mix(h2, h1);
    if (checked_switch(&s->sp, *s->peer_sp, seed_for(s, i)) != 0)
      fail("%s: a callee-saved register changed across switch %ld", s->name,
           i);
    check_mode(s->name, mode);
    fesetround(FE_TONEAREST);
    h3 = mix(h3, h2 ^ (uint64_t) i);
    f1 = f1 * 1.0000001 + (double) (i & 7);
    f2 = f2 + f1 * 0.5;
    visits = visits + 1;
  }
  s->hash = h1 ^ h2 ^ h3;
  s->sum = f1 + f2;
  s->visits = visits;
  s->finished = 1;
  if (s == &side_a)
    ip__switch(&s->sp, side_b.sp);
  else
    ip__switch(&s->sp, main_sp);
  fail("%s: resumed after it finished", s->name);
}


static void *map_stack(size_t size, size_t *mapped) {
  size_t page = (size_t) sysconf(_SC_PAGESIZE);
  *mapped = size + page;
  char *p = mmap(NULL, *mapped, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (p == MAP_FAILED)
    fail("mmap of a stack failed");
  if (mprotect(p, page, PROT_NONE) != 0)
    fail("mprotect of the guard page failed");
  return p;
}


static void check_sp(const char *who, void *sp, const char *lo,
                     const char *top) {
  if ((const char *) sp < lo || (const char *) sp >= top)
    fail("%s: ip__context_init returned %p outside its stack [%p, %p)", who,
         sp, (const void *) lo, (const void *) top);
  if ((uintptr_t) sp % 16 != 0)
    fail("%s: ip__context_init returned a misaligned stack pointer %p", who,
         sp);
}


static void check_canary(const unsigned char *p) {
  for (int i = 0; i < CANARY_LEN; i++)
    if (p[i] != CANARY)
      fail("B: a byte at or above the given stack top was overwritten");
}


static void compute_thirds(void) {
  for (int m = 0; m < 4; m++) {
    fesetround(modes[m]);
    third[m] = one / three;
#if defined(__x86_64__)
    third_x87[m] = one_x87 / three_x87;
#endif
  }
  fesetround(FE_TONEAREST);
  if (third[1] == third[2])
    fail("1/3 rounds the same upward and downward: fesetround has no effect");
}


static void run_checks(void) {
  compute_thirds();
  check_mode("main", 0);

  size_t mapped_a;
  char *stack_a = map_stack(STACK_SIZE, &mapped_a);
  char *top_a = stack_a + mapped_a;
  /* B's top is deliberately misaligned; ip__context_init must align it
   * down and never touch the bytes at or above it. */
  unsigned char *buf_b = malloc(STACK_SIZE + CANARY_LEN + 16);
  if (buf_b == NULL)
    fail("malloc of a stack failed");
  unsigned char *top_b = buf_b + STACK_SIZE + 5;
  memset(top_b, CANARY, CANARY_LEN);

  side_a = (struct side){.name = "A", .salt = 0x1234567890abcdefull,
                         .mode_shift = 1, .peer_sp = &side_b.sp};
  side_b = (struct side){.name = "B", .salt = 0xfedcba0987654321ull,
                         .mode_shift = 2, .peer_sp = &side_a.sp};
  side_a.sp = ip__context_init(top_a, side_main, &side_a);
  side_b.sp = ip__context_init(top_b, side_main, &side_b);
  check_sp("A", side_a.sp, stack_a, top_a);
  check_sp("B", side_b.sp, (char *) buf_b, (char *) top_b);
  check_canary(top_b);

  /* main's own mode must come back to it, and must not reach A. */
  fesetround(FE_TOWARDZERO);
  ip__switch(&main_sp, side_a.sp);
  check_mode("main after the ping-pong", 3);
  fesetround(FE_TONEAREST);

  check_canary(top_b);
  const struct side *sides[2] = {&side_a, &side_b};
  for (int k = 0; k < 2; k++) {
    const struct side *s = sides[k];
    uint64_t hash;
    double sum;
    expected(s, &hash, &sum);
    if (!s->entered || !s->finished)
      fail("%s did not run to the end", s->name);
    if (s->visits != ITERATIONS)
      fail("%s: volatile counter is %llu, expected %d", s->name,
           (unsigned long long) s->visits, ITERATIONS);
    if (s->hash != hash)
      fail("%s: integer values kept across switches changed", s->name);
    if (s->sum != sum)
      fail("%s: floating-point values kept across switches changed (%.17g "
           "!= %.17g)", s->name, s->sum, sum);
  }
  munmap(stack_a, mapped_a);
  free(buf_b);
}


/* ---- timing ----------------------------------------------------------- */

static void *bench_main_sp, *bench_co_sp;


static void bench_body(void *arg) {
  (void) arg;
  for (;;)
    ip__switch(&bench_co_sp, bench_main_sp);
}


static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}


/* Nanoseconds per ip__switch call over round_trips main -> coroutine ->
 * main round trips (two switches each). */
static double time_switches(long round_trips) {
  size_t mapped;
  char *stack = map_stack(64 * 1024, &mapped);
  bench_co_sp = ip__context_init(stack + mapped, bench_body, NULL);
  ip__switch(&bench_main_sp, bench_co_sp); /* warm up, enter the body */
  int64_t t0 = now_ns();
  for (long i = 0; i < round_trips; i++)
    ip__switch(&bench_main_sp, bench_co_sp);
  int64_t t1 = now_ns();
  munmap(stack, mapped);
  return (double) (t1 - t0) / (2.0 * (double) round_trips);
}


static int cmp_double(const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}


static double median_switch_ns(long round_trips) {
  double runs[BENCH_RUNS];
  for (int i = 0; i < BENCH_RUNS; i++)
    runs[i] = time_switches(round_trips);
  qsort(runs, BENCH_RUNS, sizeof(runs[0]), cmp_double);
  return runs[BENCH_RUNS / 2];
}


int main(int argc, char **argv) {
  install_crash_handler();
  if (argc == 2 && strcmp(argv[1], "--bench") == 0) {
    printf("%.2f\n", median_switch_ns(BENCH_ROUND_TRIPS));
    return 0;
  }
  if (argc != 1) {
    fprintf(stderr, "usage: %s [--bench]\n", argv[0]);
    return 2;
  }
  run_checks();
  printf("switch_test: ok %s %.2f\n", ARCH, time_switches(CHECK_ROUND_TRIPS));
  return 0;
}
