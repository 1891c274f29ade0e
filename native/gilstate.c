/* gilstate.c: keeps CPython's gilstate binding on the running coroutine, so
 * that C code calling back into Python finds that coroutine's thread state.
 *
 * Facts.  PyGILState_Ensure, PyGILState_GetThisThreadState and
 * PyGILState_Check find "this thread's" thread state in a thread-specific
 * slot, CPython's autoTSSkey, which is a pthread key on 3.11 to 3.13.
 * ctypes CFUNCTYPE callbacks, sqlite3 user functions, ssl's callbacks and
 * C libraries' callbacks (libcurl, libpq) enter Python through
 * PyGILState_Ensure, which attaches the slot's thread state if it is not
 * attached yet.  3.11 fills the slot once per OS thread, with the thread's
 * first thread state (_PyGILState_NoteThreadState), and empties it when
 * that thread state is deleted.  3.12 and 3.13 rebind the slot whenever a
 * thread state that is not bound attaches (tstate_activate ->
 * bind_gilstate_tstate) and flag the bound one (_status.bound_gilstate);
 * deleting a flagged thread state empties the slot of the *calling* thread
 * (tstate_delete_common -> unbind_gilstate_tstate).  After fork, CPython
 * deletes the key and creates it again (_PyGILState_Reinit on 3.11,
 * tstate_tss_reinit on 3.12+), keeping the slot's value.
 *
 * Consequences.  The coroutines of an OS thread share one slot.  On 3.11 a
 * callback in any coroutine ran on the thread's root thread state, while
 * the root was parked with its own frames on it: two interleaved frame
 * stacks on one thread state, a segfault (ssl's
 * test_get_server_certificate_timeout, qsort with a Python comparison that
 * sleeps), and "-X dev" aborted at once (PyGILState_Check failed in the
 * debug allocator).  On 3.12+ a coroutine resumed inside a hook returns
 * into C code without attaching (SSL_do_handshake -> read -> park), so its
 * next PyGILState_Ensure found whichever coroutine attached last and ran
 * the callback on that coroutine's thread state.
 *
 * Solution.  Invariant: while a coroutine runs, the gilstate slot of its OS
 * thread holds that coroutine's own thread state, and on 3.12+ exactly that
 * thread state carries the bound_gilstate flag among this thread's
 * coroutines.  The hub establishes it on every switch into a coroutine
 * (ip__gilstate_bind, called by run_coroutine): it moves the flag from the
 * slot's previous holder to the incoming thread state and stores that in
 * the slot.  CPython's own logic then agrees with ours: attaching a bound
 * thread state rebinds nothing, deleting a parked coroutine's thread state
 * (finalization, fork) leaves the slot alone, and a coroutine's thread state
 * is deleted on its own stack while bound, so CPython empties the slot and
 * it never dangles.  The hub itself runs no Python.
 *
 * The key is found once, at start-up, with the GIL held: the key whose value
 * on this thread is PyGILState_GetThisThreadState(), confirmed by storing a
 * sentinel and reading it back through PyGILState_GetThisThreadState.
 *
 * CPython 3.15 has no key: the slot is a C thread-local variable of
 * libpython's (_Py_tss_gilstate in Python/pystate.c, static).  Then the slot
 * is found the same way among the thread-local storage blocks of the loaded
 * modules (dl_iterate_phdr gives this thread's block of each and its
 * PT_TLS size): the pointer-sized word that holds the bound thread state
 * and that PyGILState_GetThisThreadState reads back as the sentinel.  The
 * word's module and offset in that module's block are the same on every
 * thread; each thread caches its own address on first use.  The offset
 * survives fork (the child's thread keeps its TLS), so nothing is searched
 * again there.
 * Nothing depends on the thread's ident (pthread_self may be hooked).  In a
 * forked child it is found again, by the same test, at the first switch:
 * switches happen only after CPython's after-fork code has run, since a
 * park needs Python code to run first. */
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Invariant: gil_key is CPython's gilstate key whenever gil_ready is set
 * and tls_modid is 0. */
static pthread_key_t gil_key;
static int gil_ready;
/* 3.15+: the slot is the word at tls_offset in the TLS block of module
 * tls_modid (dlpi_tls_modid, never 0 for a module with TLS); 0 with a key. */
static size_t tls_modid;
static size_t tls_offset;
/* This thread's address of that word, once looked up (NULL before, or when
 * the module has no TLS block on this thread: then nothing is bound). */
static __thread void **tls_slot;
static __thread int tls_slot_known;
/* Set in a forked child until the key is found again; fork_value is the
 * slot's value at the fork, which CPython copies into the new key. */
static int gil_stale;
static void *fork_value;
/* 3.12+: where the bound_gilstate flag lives (0, 0 on 3.11). */
static size_t flag_offset;
static unsigned flag_mask;
/* A stand-in thread state for the probe: zeroed, so a reader that follows
 * it during the few instructions it is in the slot (a fatal-signal
 * traceback) finds no interpreter and no frame. */
static void *sentinel[64];


static unsigned *flag_word(void *tstate) {
  return (unsigned *) ((char *) tstate + flag_offset);
}


/* Whether key k is the gilstate key; leaves k's value as it found it. */
static int key_is_gilstate(pthread_key_t k) {
  void *value = pthread_getspecific(k);
  if (pthread_setspecific(k, sentinel) != 0)
    return 0; /* not a live key */
  int ours = ip__py.PyGILState_GetThisThreadState() == (void *) sentinel;
  pthread_setspecific(k, value);
  return ours;
}


/* The key whose value on this thread is value (non-NULL) and which
 * PyGILState_GetThisThreadState reads; 0 or -ENOENT. */
static int find_key(void *value) {
  for (pthread_key_t k = 0; k < PTHREAD_KEYS_MAX; k++) {
    if (pthread_getspecific(k) == value && key_is_gilstate(k)) {
      gil_key = k;
      return 0;
    }
  }
  return -ENOENT;
}


/* Whether the thread-local word w is the gilstate slot; leaves it as it
 * found it. */
static int word_is_gilstate(void **w) {
  void *value = *w;
  *w = sentinel;
  int ours = ip__py.PyGILState_GetThisThreadState() == (void *) sentinel;
  *w = value;
  return ours;
}


static size_t tls_size(const struct dl_phdr_info *info) {
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_TLS)
      return info->dlpi_phdr[i].p_memsz;
  return 0;
}


/* dl_iterate_phdr callback: finds the word of *value in a TLS block. */
static int scan_tls(struct dl_phdr_info *info, size_t size, void *value) {
  (void) size;
  void **block = info->dlpi_tls_data;
  if (info->dlpi_tls_modid == 0 || block == NULL)
    return 0;
  size_t words = tls_size(info) / sizeof(void *);
  for (size_t i = 0; i < words; i++) {
    if (block[i] == value && word_is_gilstate(&block[i])) {
      tls_modid = info->dlpi_tls_modid;
      tls_offset = i * sizeof(void *);
      return 1;
    }
  }
  return 0;
}


static int find_tls_word(void *value) {
  return dl_iterate_phdr(scan_tls, value) ? 0 : -ENOENT;
}


static int lookup_slot(struct dl_phdr_info *info, size_t size, void *out) {
  (void) size;
  if (info->dlpi_tls_modid != tls_modid)
    return 0;
  if (info->dlpi_tls_data != NULL)
    *(void ***) out = (void **) ((char *) info->dlpi_tls_data + tls_offset);
  return 1;
}


/* This thread's slot word (3.15+), or NULL. */
static void **this_thread_word(void) {
  if (!tls_slot_known) {
    tls_slot_known = 1;
    dl_iterate_phdr(lookup_slot, &tls_slot);
  }
  return tls_slot;
}


static void *slot_get(void) {
  if (tls_modid != 0) {
    void **w = this_thread_word();
    return w ? *w : NULL;
  } else {
    return pthread_getspecific(gil_key);
  }
}


/* 0, or -ENOENT when this thread has no slot to write. */
static int slot_set(void *tstate) {
  if (tls_modid != 0) {
    void **w = this_thread_word();
    if (w == NULL)
      return -ENOENT;
    *w = tstate;
    return 0;
  } else {
    return pthread_setspecific(gil_key, tstate) == 0 ? 0 : -1;
  }
}


int ip__gilstate_init(void) {
  void *bound = ip__py.PyGILState_GetThisThreadState();
  if (bound == NULL)
    return -ENOENT;
  int r = find_key(bound);
  if (r < 0)
    r = find_tls_word(bound); /* 3.15+ */
  if (r < 0)
    return r;
  ip__pyver_gilstate_flag(&flag_offset, &flag_mask);
  /* The bound thread state must carry the flag where pyver.c says it is:
   * a wrong layout would flip some other bit of CPython's. */
  if (flag_mask != 0 && (*flag_word(bound) & flag_mask) == 0)
    return -ENOTSUP;
  gil_ready = 1;
  return 0;
}


/* The first switch in a forked child finds the key again.  If it cannot,
 * the binding stops following coroutines (it must never write a key that
 * may belong to someone else) and the process says so once. */
static void rediscover(void) {
  gil_stale = 0;
  if (tls_modid != 0)
    return; /* a thread-local word: the child's thread still has it */
  if (fork_value == NULL && key_is_gilstate(gil_key))
    return; /* nothing was bound at the fork: the key was kept */
  if (fork_value != NULL && find_key(fork_value) == 0)
    return;
  gil_ready = 0;
  static const char msg[] =
      "interpose: lost CPython's gilstate key after fork; C callbacks into"
      " Python from coroutines may run on another coroutine's thread state\n";
  ssize_t IP_UNUSED w = ip__real.write(2, msg, sizeof(msg) - 1);
}


void ip__gilstate_bind(void *tstate) {
  if (!gil_ready || tstate == NULL)
    return;
  if (gil_stale)
    rediscover();
  void *prev = slot_get();
  if (prev == tstate)
    return;
  if (tls_modid != 0 && this_thread_word() == NULL)
    return; /* no slot on this thread: CPython binds nothing here either */
  if (flag_mask != 0) {
    if (prev != NULL)
      *flag_word(prev) &= ~flag_mask;
    *flag_word(tstate) |= flag_mask;
  }
  slot_set(tstate);
}


int ip__gilstate_foreign(ip_sched_t *s) {
  if (!gil_ready || gil_stale)
    return 0;
  void *bound = slot_get();
  return bound != NULL && bound != s->current->tstate;
}


void ip__gilstate_after_fork_child(void) {
  if (!gil_ready)
    return;
  fork_value = slot_get();
  gil_stale = 1;
}
