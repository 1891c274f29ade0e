/* arena.c: a small cache in front of CPython's arena allocator.
 *
 * Facts: every thread state gets its frame "data stack" lazily, in 16 KiB
 * chunks that CPython takes from the pymalloc arena allocator
 * (_PyObject_VirtualAlloc), which is mmap/munmap by default.  A coroutine has
 * its own thread state, created at spawn and destroyed at exit, so each
 * spawn costs an mmap, an munmap and the page faults of a fresh chunk:
 * measured, about half of spawn+join time on 3.11.
 * Consequence: short-lived coroutines pay system calls for memory that the
 * previous coroutine just returned.
 * Solution: wrap the allocator installed before us (PyObject_SetArenaAllocator
 * is public API) and keep up to CACHE_MAX freed blocks of each small
 * power-of-two size (4 KiB to 64 KiB: data stack chunks; pymalloc's own
 * arenas are larger and pass straight through).  Calls arrive with the GIL
 * held, which serialises them.  Installed by the first scheduler
 * (ip__sched_ensure), never by binding the library: a process that only
 * imports interpose keeps CPython's allocator. */
#include <string.h>

#include "internal.h"

#define MIN_SHIFT 12 /* 4 KiB */
#define MAX_SHIFT 16 /* 64 KiB */
#define CACHE_MAX 256

typedef struct {
  void *ctx;
  void *(*alloc)(void *ctx, size_t size);
  void (*free)(void *ctx, void *ptr, size_t size);
} ip_arena_allocator_t; /* PyObjectArenaAllocator */

typedef struct free_block {
  struct free_block *next;
} free_block_t;

static ip_arena_allocator_t previous;
static free_block_t *cache[MAX_SHIFT - MIN_SHIFT + 1];
static size_t cache_len[MAX_SHIFT - MIN_SHIFT + 1];


/* The cache slot for size, or -1 when the size is not cached. */
static int slot_of(size_t size) {
  for (int shift = MIN_SHIFT; shift <= MAX_SHIFT; shift++)
    if (size == (size_t) 1 << shift)
      return shift - MIN_SHIFT;
  return -1;
}


static void *cached_alloc(void *ctx, size_t size) {
  (void) ctx;
  int slot = slot_of(size);
  if (slot >= 0 && cache[slot] != NULL) {
    free_block_t *b = cache[slot];
    cache[slot] = b->next;
    cache_len[slot]--;
    return b;
  }
  return previous.alloc(previous.ctx, size);
}


static void cached_free(void *ctx, void *ptr, size_t size) {
  (void) ctx;
  int slot = slot_of(size);
  if (ptr != NULL && slot >= 0 && cache_len[slot] < CACHE_MAX) {
    free_block_t *b = ptr;
    b->next = cache[slot];
    cache[slot] = b;
    cache_len[slot]++;
    return;
  }
  previous.free(previous.ctx, ptr, size);
}


void ip__arena_install(void) {
  static int installed;
  if (installed)
    return;
  ip_arena_allocator_t ours = {NULL, cached_alloc, cached_free};
  ip__py.PyObject_GetArenaAllocator(&previous);
  ip__py.PyObject_SetArenaAllocator(&ours);
  installed = 1;
}
