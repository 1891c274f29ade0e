/* timer.c: the timer heap, a binary min-heap ordered by deadline, then by
 * insertion order, so that equal deadlines fire first-in first-out.  Insert
 * and remove are O(log n); each timer knows its own index, which makes
 * cancellation O(log n) too.  There is no upper bound on a deadline. */
#include <stdlib.h>
#include <time.h>

#include "internal.h"


int64_t ip__now_ns(void) {
  return ip__clock_ns(CLOCK_MONOTONIC);
}


int64_t interpose_clock_ns(void) {
  return ip__now_ns();
}


static int timer_less_than(const ip_timer_t *a, const ip_timer_t *b) {
  if (a->deadline_ns != b->deadline_ns)
    return a->deadline_ns < b->deadline_ns;
  return a->seq < b->seq;
}


static void heap_set(ip_heap_t *h, size_t i, ip_timer_t *t) {
  h->items[i] = t;
  t->index = i;
}


static void sift_up(ip_heap_t *h, size_t i) {
  ip_timer_t *t = h->items[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!timer_less_than(t, h->items[parent]))
      break;
    heap_set(h, i, h->items[parent]);
    i = parent;
  }
  heap_set(h, i, t);
}


static void sift_down(ip_heap_t *h, size_t i) {
  ip_timer_t *t = h->items[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= h->len)
      break;
    if (child + 1 < h->len &&
        timer_less_than(h->items[child + 1], h->items[child]))
      child++;
    if (!timer_less_than(h->items[child], t))
      break;
    heap_set(h, i, h->items[child]);
    i = child;
  }
  heap_set(h, i, t);
}


void ip__heap_init(ip_heap_t *h) {
  h->items = NULL;
  h->len = 0;
  h->cap = 0;
  h->next_seq = 0;
}


void ip__heap_free(ip_heap_t *h) {
  free(h->items);
  ip__heap_init(h);
}


int ip__heap_insert(ip_heap_t *h, ip_timer_t *t) {
  IP_CHECK(!ip__timer_armed(t));
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    ip_timer_t **items = realloc(h->items, cap * sizeof(*items));
    if (items == NULL)
      return -ENOMEM;
    h->items = items;
    h->cap = cap;
  }
  t->seq = h->next_seq++;
  h->items[h->len] = t;
  t->index = h->len++;
  sift_up(h, t->index);
  return 0;
}


void ip__heap_remove(ip_heap_t *h, ip_timer_t *t) {
  size_t i = t->index;
  IP_CHECK(i < h->len && h->items[i] == t);
  t->index = SIZE_MAX;
  h->len--;
  if (i == h->len)
    return;
  ip_timer_t *moved = h->items[h->len];
  heap_set(h, i, moved);
  sift_down(h, i);
  if (moved->index == i)
    sift_up(h, i);
}


ip_timer_t *ip__heap_min(const ip_heap_t *h) {
  return h->len ? h->items[0] : NULL;
}
