/* arena.c: where CPython's thread states get their frame data stacks.
 *
 * Facts: every thread state gets its frame "data stack" lazily, in 16 KiB
 * chunks that CPython takes from the pymalloc arena allocator
 * (_PyObject_VirtualAlloc), which is mmap/munmap by default.  A coroutine has
 * its own thread state, created at spawn and destroyed at exit, so each
 * coroutine that runs costs an mmap and an munmap, and a memory mapping of
 * its own while it lives: mapped between two coroutine stacks, a chunk
 * rarely merges with another, and a thread-per-connection server then
 * needs three mappings per connection (measured, docs/performance.md).
 * Consequences: short-lived coroutines pay system calls for memory that the
 * previous coroutine just returned, and the chunks take a third of the
 * process's vm.max_map_count budget.
 * Solution: wrap the allocator installed before us (PyObject_SetArenaAllocator
 * is public API) and keep up to CACHE_MAX freed blocks of each small
 * power-of-two size (4 KiB to 64 KiB: data stack chunks; pymalloc's own
 * arenas are larger and pass straight through).  16 KiB chunks, the size
 * CPython 3.11 to 3.15 asks for, come from slabs of SLAB_BLOCKS chunks
 * mapped at once: one mmap per SLAB_BLOCKS coroutines, and one mapping per
 * slab (neighbouring slabs merge).  A slab chunk freed while the cache is
 * full gives its pages back (MADV_DONTNEED) and waits, unmapped from RAM
 * but still in the slab, for the next thread state; slabs are never
 * unmapped.
 *
 * Giving pages back.  Facts (measured, docs/performance.md, "Round 2"):
 * when 20,000 coroutines end together, all but CACHE_MAX of their chunks
 * were given back one madvise each, and each madvise of touched pages
 * pays a TLB shootdown (an inter-processor interrupt once the process has
 * a second thread), as munmap does; the free list was linked through the
 * chunks themselves, so listing a chunk wrote to the page just given back
 * and faulted it in again.  Chunks handed out one after another from a
 * slab are adjacent, and so, mostly, are the chunks of coroutines that end
 * together.  Solution: a freed chunk waits on a short list of DIRTY_MAX;
 * when it is full the list is sorted and given back in runs of adjacent
 * chunks, one madvise per run, and the chunks go to the clean list, an
 * array beside the slabs that never touches a chunk's pages (so a slab's
 * unused chunks cost no RAM either).  At most DIRTY_MAX chunks' pages wait
 * to go back.  (Taking chunks from malloc instead was measured too: no
 * mapping and no system call, but 1.2 KiB more RSS per idle connection,
 * because the heap's free-block bookkeeping around the chunks touches
 * pages.)
 *
 * Invariant: a slab chunk starts SLAB_OFFSET bytes into a page, and a block
 * from the wrapped allocator starts on a page boundary (it maps whole pages:
 * install() checks that, and keeps the slabs off otherwise).  That is how a
 * free tells them apart, including chunks allocated before we were
 * installed.  The lists are guarded by arena_lock, not by the GIL: from
 * 3.12 a subinterpreter may have a GIL of its own, and CPython calls the
 * process-wide arena allocator from each interpreter under its own GIL.
 * The wrapped allocator is called outside the lock (it is thread-safe).
 * Installed by the first scheduler (ip__sched_ensure), never by binding the
 * library: a process that only imports interpose keeps CPython's
 * allocator. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define MIN_SHIFT 12 /* 4 KiB */
#define MAX_SHIFT 16 /* 64 KiB */
#define CACHE_MAX 256
#define CHUNK_SIZE (16 * 1024) /* DATA_STACK_CHUNK_SIZE, 3.11 to 3.15 */
#define SLAB_BLOCKS 64
/* Off the page boundary (see the invariant above), and a multiple of 16
 * so that the chunk keeps malloc's alignment.  Each chunk has pages of its
 * own (a stride of CHUNK_SIZE plus a page), so that giving a free chunk's
 * pages back never touches a neighbour. */
#define SLAB_OFFSET 64
#define SLAB_STRIDE (CHUNK_SIZE + page_size)

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
/* Slab chunks whose pages were given back (or never touched), kept out of
 * the chunks.  Invariant: clean_cap >= the chunks of every slab mapped, so
 * listing a chunk never needs memory. */
static void **clean;
static size_t clean_len, clean_cap;
/* Freed slab chunks whose pages have not been given back yet. */
#define DIRTY_MAX 64
static void *dirty[DIRTY_MAX];
static size_t dirty_len;
static size_t slab_chunks; /* chunks in every slab mapped */
static size_t page_size;
static int slabs_on; /* 1: 16 KiB chunks come from slabs (see the top) */
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;


/* The cache slot for size, or -1 when the size is not cached. */
static int slot_of(size_t size) {
  for (int shift = MIN_SHIFT; shift <= MAX_SHIFT; shift++)
    if (size == (size_t) 1 << shift)
      return shift - MIN_SHIFT;
  return -1;
}


static int from_slab(const void *ptr) {
  return ((uintptr_t) ptr & (page_size - 1)) == SLAB_OFFSET;
}


/* Maps a slab and lists all but one of its chunks as clean; returns that
 * one, or NULL when the mapping (or the room to list its chunks) fails.
 * Called with arena_lock held. */
static void *slab_alloc(void) {
  if (clean_cap < slab_chunks + SLAB_BLOCKS) {
    size_t cap = clean_cap ? 2 * clean_cap : 16 * SLAB_BLOCKS;
    void **grown = realloc(clean, cap * sizeof(*clean));
    if (grown == NULL)
      return NULL;
    clean = grown;
    clean_cap = cap;
  }
  size_t size = SLAB_BLOCKS * SLAB_STRIDE;
  char *slab = mmap(NULL, size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (slab == MAP_FAILED)
    return NULL;
  slab_chunks += SLAB_BLOCKS;
  char *first = slab + SLAB_OFFSET;
  /* Listed top down, so that they are handed out in address order. */
  for (int i = SLAB_BLOCKS - 1; i > 0; i--)
    clean[clean_len++] = first + (size_t) i * SLAB_STRIDE;
  return first;
}


/* A cached or slab block of size, or NULL; called with arena_lock held. */
static void *take_locked(int slot, size_t size) {
  if (slot >= 0 && cache[slot] != NULL) {
    free_block_t *b = cache[slot];
    cache[slot] = b->next;
    cache_len[slot]--;
    return b;
  }
  if (size == CHUNK_SIZE && slabs_on) {
    if (clean_len > 0)
      return clean[--clean_len];
    return slab_alloc();
  }
  return NULL;
}


static void *cached_alloc(void *ctx, size_t size) {
  (void) ctx;
  int slot = slot_of(size);
  if (slot >= 0) {
    pthread_mutex_lock(&arena_lock);
    void *b = take_locked(slot, size);
    pthread_mutex_unlock(&arena_lock);
    if (b != NULL)
      return b;
  }
  return previous.alloc(previous.ctx, size);
}


static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) *(void *const *) a;
  uintptr_t y = (uintptr_t) *(void *const *) b;
  return (x > y) - (x < y);
}


/* Gives back the pages of n slab chunks, one madvise per run of adjacent
 * ones, then lists them as clean.  Pages go back before a chunk is listed:
 * once listed, another interpreter's thread may take it and write to it. */
static void give_back(void **chunks, size_t n) {
  qsort(chunks, n, sizeof(*chunks), by_address);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    char *end = (char *) chunks[i] - SLAB_OFFSET + SLAB_STRIDE;
    if (i + 1 < n && end == (char *) chunks[i + 1] - SLAB_OFFSET)
      continue;
    char *start = (char *) chunks[run] - SLAB_OFFSET;
    IP_SAVE_ERRNO(madvise(start, (size_t) (end - start), MADV_DONTNEED));
    run = i + 1;
  }
  pthread_mutex_lock(&arena_lock);
  for (size_t i = 0; i < n; i++)
    clean[clean_len++] = chunks[i];
  pthread_mutex_unlock(&arena_lock);
}


static void cached_free(void *ctx, void *ptr, size_t size) {
  (void) ctx;
  int slot = slot_of(size);
  if (ptr != NULL && slot >= 0) {
    free_block_t *b = ptr;
    pthread_mutex_lock(&arena_lock);
    if (cache_len[slot] < CACHE_MAX) {
      b->next = cache[slot];
      cache[slot] = b;
      cache_len[slot]++;
      pthread_mutex_unlock(&arena_lock);
      return;
    }
    if (size == CHUNK_SIZE && from_slab(ptr)) {
      void *full[DIRTY_MAX];
      size_t n = 0;
      dirty[dirty_len++] = ptr;
      if (dirty_len == DIRTY_MAX) {
        n = dirty_len;
        memcpy(full, dirty, sizeof(full));
        dirty_len = 0;
      }
      pthread_mutex_unlock(&arena_lock);
      if (n > 0)
        give_back(full, n);
      return;
    }
    pthread_mutex_unlock(&arena_lock);
  }
  previous.free(previous.ctx, ptr, size);
}


/* In a forked child the lock may have been held by a thread that does not
 * exist there.  A list update it was making is at worst a block lost to
 * the child or a count off by one (each list update is one pointer store
 * after the block is no longer in use), never a block handed out twice. */
void ip__arena_after_fork_child(void) {
  pthread_mutex_init(&arena_lock, NULL);
}


/* Whether the wrapped allocator returns page-aligned blocks, as mmap
 * does: the invariant that tells slab chunks from its own. */
static int previous_maps_pages(void) {
  void *probe = previous.alloc(previous.ctx, page_size);
  if (probe == NULL)
    return 0;
  int aligned = ((uintptr_t) probe & (page_size - 1)) == 0;
  previous.free(previous.ctx, probe, page_size);
  return aligned;
}


int ip__arena_slabs_on(void) { return slabs_on; }


void ip__arena_install(void) {
  static int installed;
  if (installed)
    return;
  page_size = (size_t) sysconf(_SC_PAGESIZE);
  ip_arena_allocator_t ours = {NULL, cached_alloc, cached_free};
  ip__py.PyObject_GetArenaAllocator(&previous);
  slabs_on = previous_maps_pages() && page_size > SLAB_OFFSET;
  ip__py.PyObject_SetArenaAllocator(&ours);
  installed = 1;
}
