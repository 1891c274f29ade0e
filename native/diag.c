/* diag.c: what the diagnostics read from the engine: snapshots of every
 * coroutine (with its wait reason, timer, statistics and Python frame) and
 * of every scheduler, a socket's peer name, the owners of CPython locks,
 * and the notification a stuck hub sends to the deadlock watcher.
 *
 * Nothing here is on a hot path except ip__diag_took/ip__diag_gave (one
 * per CPython lock acquire/release while a scheduler exists: a TLS load
 * and at most four compares) and ip__diag_stuck (only when a hub is about
 * to sleep with no timer and no fd wait, which a working program rarely
 * does).
 *
 * The snapshots run with the GIL held and under the registry lock of
 * sched.c.  A coroutine's thread state is deleted only with the GIL held,
 * so the frame read here belongs to a live thread state; the coroutine
 * structs are type-stable, so a racy read of a coroutine running on
 * another OS thread yields a stale value, never a fault. */
#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "internal.h"

static atomic_int notify_fd = -1;
static atomic_int notify_armed;


/* ---- lock owners ------------------------------------------------------ */

/* A coroutine's held[] is a tiny most-recent-first list: a lock released
 * by another coroutine than its taker (legal for threading.Lock) leaves a
 * stale entry, which ages out; the deadlock report only trusts an entry
 * for a semaphore whose value is 0 and which one coroutine claims. */
void ip__diag_took(const void *sem) {
  ip_sched_t *s = ip__tls_sched;
  if (s == NULL || s->current == NULL)
    return;
  const void **held = s->current->held;
  memmove(held + 1, held, (IP_HELD_LOCKS - 1) * sizeof(*held));
  held[0] = sem;
}


void ip__diag_gave(const void *sem) {
  ip_sched_t *s = ip__tls_sched;
  if (s == NULL || s->current == NULL)
    return;
  const void **held = s->current->held;
  for (int i = 0; i < IP_HELD_LOCKS; i++) {
    if (held[i] == sem) {
      memmove(held + i, held + i + 1,
              (IP_HELD_LOCKS - 1 - i) * sizeof(*held));
      held[IP_HELD_LOCKS - 1] = NULL;
      return;
    }
  }
}


/* ---- the stuck notification ------------------------------------------- */

void ip__diag_stuck(ip_sched_t *s) {
  atomic_store(&s->stuck, 1);
  /* The watcher arms, then reads every stuck flag; the hub sets its flag,
   * then disarms: with sequentially consistent atomics one of the two
   * always sees the other, so no stuck scheduler goes unnoticed. */
  int fd = atomic_load(&notify_fd);
  if (fd >= 0 && atomic_exchange(&notify_armed, 0)) {
    uint64_t one = 1;
    ssize_t IP_UNUSED n = ip__real.write(fd, &one, sizeof(one));
  }
}


int interpose_diag_set_notify_fd(int fd) {
  atomic_store(&notify_fd, fd < 0 ? -1 : fd);
  return 0;
}


int interpose_diag_arm(void) {
  atomic_store(&notify_armed, 1);
  return 0;
}


int interpose_diag_resolver_threads(void) { return ip__names_workers(); }


/* ---- the diagnostics thread ------------------------------------------- */

/* The thread's body: a fresh OS thread has no thread state, so
 * PyGILState_Ensure makes one (the 3.11 first-tstate quirk of DESIGN.md
 * cannot bite: the thread never has another), calls body, which returns
 * only if it fails. */
static void *diag_thread_main(void *body) {
  int g = ip__py.PyGILState_Ensure();
  void *r = ip__py.PyObject_CallNoArgs(body);
  if (r != NULL)
    ip__py.Py_DecRef(r);
  else
    ip__py.PyErr_WriteUnraisable(body);
  ip__py.Py_DecRef(body);
  ip__py.PyGILState_Release(g);
  return NULL;
}


int interpose_diag_start_thread(void *body, const char *name) {
  if (!ip__py_ready() || body == NULL)
    return -EINVAL;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* signals stay the program's */
  ip__py.Py_IncRef(body);
  pthread_t t;
  int r = pthread_create(&t, &attr, diag_thread_main, body);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    ip__py.Py_DecRef(body);
    return -r;
  }
  if (name != NULL)
    pthread_setname_np(t, name);
  return 0;
}


/* ---- snapshots -------------------------------------------------------- */

typedef struct walk {
  interpose_coro_info_t *coros;
  interpose_sched_info_t *scheds;
  size_t cap;
  long n;
} walk_t;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)


static void skip_sched(ip_sched_t *s, void *arg) {
  (void) s;
  (void) arg;
}


static void skip_coro(ip_coro_t *co, void *arg) {
  (void) co;
  (void) arg;
}


static void fill_coro(interpose_coro_info_t *o, ip_coro_t *co) {
  ip_sched_t *s = co->sched;
  memset(o, 0, sizeof(*o));
  o->handle = co;
  o->sched = s;
  o->id = LOAD(co->id);
  o->tid = atomic_load(&s->tid);
  o->state = LOAD(co->state);
  o->wait_kind = LOAD(co->wait_kind);
  o->wait_fd = LOAD(co->wait_fd);
  o->wait_events = LOAD(co->wait_events);
  o->wait_obj = LOAD(co->wait_obj);
  o->wait_key = LOAD(co->wait_key);
  o->cancelled = atomic_load(&co->cancelled);
  o->shield = LOAD(co->shield);
  o->is_main = co == LOAD(s->main);
  o->timer_ns = -1;
  if (o->state == IP_CORO_PARKED && LOAD(co->timer.index) != SIZE_MAX)
    o->timer_ns = LOAD(co->timer.deadline_ns);
  o->deadline_ns = LOAD(co->deadline_ns);
  o->run_ns = LOAD(co->run_ns);
  o->max_turn_ns = LOAD(co->max_turn_ns);
  o->turns = LOAD(co->turns);
  for (int i = 0; i < IP_HELD_LOCKS; i++)
    o->held[i] = LOAD(co->held[i]);
  memcpy(o->name, co->name, sizeof(o->name));
  o->name[sizeof(o->name) - 1] = '\0';
  o->frame = LOAD(co->tstate); /* replaced by its frame after the walk */
}


static void coro_out(ip_coro_t *co, void *arg) {
  walk_t *w = arg;
  if ((size_t) w->n < w->cap)
    fill_coro(&w->coros[w->n], co);
  w->n++;
}


static void sched_out(ip_sched_t *s, void *arg) {
  walk_t *w = arg;
  if ((size_t) w->n < w->cap) {
    interpose_sched_info_t *o = &w->scheds[w->n];
    memset(o, 0, sizeof(*o));
    o->sched = s;
    o->tid = atomic_load(&s->tid);
    o->is_main_thread = s->is_main_thread;
    /* A wake queued by another thread (which may have exited since) is on
     * its way, however late the hub runs: not stuck. */
    o->stuck = atomic_load(&s->stuck) && !atomic_load(&s->remote_pending);
    o->alive = (int32_t) LOAD(s->stats.alive);
    o->switches = LOAD(s->stats.switches);
    o->max_turn_ns = LOAD(s->max_turn_ns);
    for (int i = 0; i < IP_LATENCY_BUCKETS; i++)
      o->latency[i] = LOAD(s->latency_hist[i]);
  }
  w->n++;
}


static int ptr_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) *(void *const *) a;
  uintptr_t y = (uintptr_t) *(void *const *) b;
  return x < y ? -1 : x > y;
}


/* The interpreter's thread states, sorted, or NULL (*n = 0) when out of
 * memory.  A thread state recorded by the engine is read only if it is in
 * this list: a thread that exited with coroutines alive keeps its
 * scheduler, and its root's thread state pointer then dangles. */
static void **live_tstates(size_t *n) {
  size_t count = 0, cap = 256;
  void **all = malloc(cap * sizeof(*all));
  void *ts = all ? ip__py.PyInterpreterState_ThreadHead(ip__py.interp) : NULL;
  for (; ts != NULL; ts = ip__py.PyThreadState_Next(ts)) {
    if (count == cap) {
      void **bigger = realloc(all, 2 * cap * sizeof(*all));
      if (bigger == NULL)
        break;
      all = bigger;
      cap *= 2;
    }
    all[count++] = ts;
  }
  qsort(all, count, sizeof(*all), ptr_cmp);
  *n = count;
  return all;
}


static void take_frames(interpose_coro_info_t *out, long filled) {
  size_t n;
  void **live = live_tstates(&n);
  for (long i = 0; i < filled; i++) {
    void *tstate = out[i].frame;
    out[i].frame = NULL;
    if (tstate != NULL && live != NULL &&
        bsearch(&tstate, live, n, sizeof(*live), ptr_cmp) != NULL)
      out[i].frame = ip__py.PyThreadState_GetFrame(tstate);
  }
  free(live);
}


long interpose_diag_coros(interpose_coro_info_t *out, size_t cap,
                          int frames) {
  if (!ip__py_ready())
    return -EINVAL;
  walk_t w = {.coros = out, .cap = out == NULL ? 0 : cap};
  ip__sched_each(skip_sched, coro_out, &w);
  /* The frames are read after the registry lock is released: making a
   * frame object allocates, and an allocation must not run under a lock
   * that spawning takes.  The caller holds the GIL all along and this
   * runs no Python code, so no thread state can be deleted meanwhile
   * (the caller disables the garbage collector, whose finalizers could). */
  long filled = w.n < (long) w.cap ? w.n : (long) w.cap;
  if (frames) {
    take_frames(out, filled);
  } else {
    for (long i = 0; i < filled; i++)
      out[i].frame = NULL;
  }
  return w.n;
}


long interpose_diag_scheds(interpose_sched_info_t *out, size_t cap) {
  walk_t w = {.scheds = out, .cap = out == NULL ? 0 : cap};
  ip__sched_each(sched_out, skip_coro, &w);
  return w.n;
}


/* ---- peers ------------------------------------------------------------ */

int interpose_diag_fd_addr(int fd, int peer, char *buf, size_t len) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (buf == NULL || len == 0)
    return -EINVAL;
  buf[0] = '\0';
  int r = peer ? getpeername(fd, (struct sockaddr *) &ss, &sl)
               : getsockname(fd, (struct sockaddr *) &ss, &sl);
  if (r < 0)
    return -errno;
  char host[INET6_ADDRSTRLEN];
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *) &ss;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *) &ss;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
  } else if (ss.ss_family == AF_UNIX) {
    struct sockaddr_un *a = (struct sockaddr_un *) &ss;
    size_t n = sl > offsetof(struct sockaddr_un, sun_path)
                   ? sl - offsetof(struct sockaddr_un, sun_path) : 0;
    if (n == 0)
      snprintf(buf, len, "unix:(unnamed)");
    else if (a->sun_path[0] == '\0')
      snprintf(buf, len, "unix:@%.*s", (int) n - 1, a->sun_path + 1);
    else
      snprintf(buf, len, "unix:%.*s", (int) strnlen(a->sun_path, n),
               a->sun_path);
  } else {
    snprintf(buf, len, "family %d", ss.ss_family);
  }
  return 0;
}
