/* asan.h: stack switches as AddressSanitizer must see them.
 *
 * Facts: ASan keeps the bounds of the stack it believes is running;
 * interceptors such as vfork's clear shadow memory up to that stack's top,
 * and its fake stacks (detect_stack_use_after_return) belong to one stack.
 * Consequence: a switch ASan does not hear about makes it poison or clear
 * the wrong memory.  Solution: under SANITIZE=1 (IP_SANITIZE) every switch
 * in sched.c is announced with the sanitizer fiber API, san_leave just
 * before ip__switch and san_arrive just after it; otherwise these are
 * empty and cost nothing.  sched.c, which makes every switch, and
 * sched_life.c, which records a root's stack, include this header. */
#ifndef IP_ASAN_H
#define IP_ASAN_H

#include "internal.h"

#ifdef IP_SANITIZE
#include <sanitizer/common_interface_defs.h>

/* The usable bounds of the stack that co (NULL: the hub) runs on. */
static inline void stack_bounds(ip_sched_t *s, ip_coro_t *co,
                                const void **bottom, size_t *size) {
  const ip_stack_t *st = co ? &co->stack : &s->hub_stack;
  if (co == &s->root) {
    *bottom = s->root_stack_bottom;
    *size = s->root_stack_size;
  } else {
    *bottom = st->base + st->guard;
    *size = st->size - st->guard;
  }
}


/* About to switch to to (NULL: the hub); fake: where ASan keeps the
 * leaving context's fake stack, NULL when it will never be resumed. */
static inline void san_leave(ip_sched_t *s, void **fake, ip_coro_t *to) {
  const void *bottom;
  size_t size;
  stack_bounds(s, to, &bottom, &size);
  __sanitizer_start_switch_fiber(fake, bottom, size);
}


/* Switched in; fake: what san_leave stored for this context, NULL on a
 * fresh stack. */
static inline void san_arrive(void *fake) {
  __sanitizer_finish_switch_fiber(fake, NULL, NULL);
}


/* Records the calling thread's own stack, on which its root runs. */
static inline void root_stack_bounds(ip_sched_t *s) {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void *addr;
    pthread_attr_getstack(&attr, &addr, &s->root_stack_size);
    s->root_stack_bottom = addr;
    pthread_attr_destroy(&attr);
  }
}
#else  /* !IP_SANITIZE */
#define san_leave(s, fake, to) ((void) (fake))
#define san_arrive(fake) ((void) (fake))
#define root_stack_bounds(s) ((void) (s))
#endif /* IP_SANITIZE */

#endif /* IP_ASAN_H */
