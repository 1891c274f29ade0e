/* hooks_names.c: getaddrinfo, getnameinfo, gethostbyname, gethostbyname2,
 * gethostbyname_r, gethostbyname2_r, gethostbyaddr, gethostbyaddr_r.
 *
 * Facts: glibc's resolver talks to the network through internal calls that
 * no hook sees (__socket, __poll, __recvfrom), so a lookup in a coroutine
 * would block the whole thread.  Solution: the real call runs on a small
 * pool of worker threads while the coroutine is parked; the worker wakes
 * it through the scheduler's cross-thread wake-up.  A job lives on the heap
 * and is owned jointly by the coroutine and the worker: a coroutine that is
 * cancelled or passes its deadline abandons the job (the lookup fails with
 * EAI_SYSTEM and errno ECANCELED / ETIMEDOUT, or NULL with h_errno
 * TRY_AGAIN) and the worker frees it, and any result, when it finishes.
 * Workers start on demand, at most POOL_MAX, and exit after IDLE_SECONDS
 * without work, so an idle process keeps no extra threads.  h_errno is
 * per thread: the worker's is carried back to the caller's. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Everything below that is not static is a libc name this library
 * interposes: export it. */
#pragma GCC visibility push(default)

#define POOL_MAX 4
#define IDLE_SECONDS 2

typedef struct job job_t;
typedef void (*job_fn)(job_t *);

/* What a job's presult holds, so that a job its coroutine gave up on can
 * free what the lookup allocated. */
enum job_result_kind {
  JOB_RESULT_BORROWED = 0, /* nothing to free (a caller's buffer, a hostent
                              in glibc's static storage) */
  JOB_RESULT_ADDRINFO,     /* a getaddrinfo list: freeaddrinfo */
};

struct job {
  job_t *next;
  job_fn run;
  ip_coro_t *co;
  _Atomic uint64_t gen; /* the park generation the worker must wake */
  atomic_int done;      /* set by the worker before it reads gen */
  atomic_int owners; /* 2 while both the coroutine and the worker hold it */
  int herrno;
  int err;           /* errno after the call */
  /* arguments and results */
  const void *a1, *a2, *a3;
  int i1, i2;
  void *p1;
  enum job_result_kind result_kind;
  size_t n1, n2;
  long result;
  void *presult;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static job_t *queue_head, *queue_tail; /* guarded by pool_lock */
static int workers, idle;              /* guarded by pool_lock */


static void job_release(job_t *j) {
  if (atomic_fetch_sub(&j->owners, 1) != 1)
    return;
  /* The coroutine gave up: free what the lookup allocated. */
  if (j->run != NULL && j->presult != NULL &&
      j->result_kind == JOB_RESULT_ADDRINFO)
    freeaddrinfo(j->presult);
  free(j);
}


static void *worker_main(void *arg) {
  (void) arg;
  pthread_mutex_lock(&pool_lock);
  for (;;) {
    while (queue_head == NULL) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += IDLE_SECONDS;
      idle++;
      int r = pthread_cond_timedwait(&pool_cond, &pool_lock, &until);
      idle--;
      if (r == ETIMEDOUT && queue_head == NULL) {
        workers--;
        pthread_mutex_unlock(&pool_lock);
        return NULL;
      }
    }
    job_t *j = queue_head;
    queue_head = j->next;
    if (queue_head == NULL)
      queue_tail = NULL;
    pthread_mutex_unlock(&pool_lock);
    j->run(j);
    j->herrno = h_errno;
    atomic_store(&j->done, 1);
    ip__wake(j->co, atomic_load(&j->gen), 0, 0);
    job_release(j);
    pthread_mutex_lock(&pool_lock);
  }
}


/* 0, or -errno when no worker can be started. */
static int submit(job_t *j) {
  int r = 0;
  pthread_mutex_lock(&pool_lock);
  j->next = NULL;
  if (queue_tail)
    queue_tail->next = j;
  else
    queue_head = j;
  queue_tail = j;
  if (idle == 0 && workers < POOL_MAX) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Workers must not take signals meant for the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = -pthread_create(&t, &attr, worker_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0)
      workers++;
    else if (workers > 0)
      r = 0; /* a busy worker will get to it */
  }
  if (r == 0)
    pthread_cond_signal(&pool_cond);
  else
    queue_head = queue_tail = NULL; /* j was the only job: no workers */
  pthread_mutex_unlock(&pool_lock);
  return r;
}


/* Runs j on a worker while the calling coroutine is parked; 0 when it ran
 * to the end, or -errno when the coroutine gave up (the job is then the
 * worker's to free).  EINTR does not end the wait: the blocking lookup is
 * not interrupted by signals either. */
static int run_parked(ip_sched_t *s, job_t *j) {
  j->co = s->current;
  atomic_store(&j->gen, ip__prepare(j->co));
  atomic_store(&j->done, 0);
  atomic_store(&j->owners, 2);
  int r = submit(j);
  if (r < 0)
    return r; /* not submitted: still ours alone */
  s->ext_waits++;
  for (;;) {
    ip__wait_note(j->co, IP_WAIT_RESOLVE, -1, 0, NULL);
    r = ip__park(s, -1);
    s = j->co->sched;
    if (r != -EINTR)
      break;
    /* Park again for a new generation.  The worker sets done before it
     * reads gen, and this side stores gen before it reads done: either the
     * worker's wake carries the new gen, or done is seen here. */
    atomic_store(&j->gen, ip__prepare(j->co));
    if (atomic_load(&j->done)) {
      r = 0;
      break;
    }
  }
  s->ext_waits--;
  if (r != 0) {
    job_release(j); /* abandoned: the worker frees it */
    return r;
  }
  while (atomic_load(&j->owners) != 1)
    sched_yield(); /* woken just before the worker let go */
  return 0;
}

/* ---- getaddrinfo ------------------------------------------------------ */

static void run_getaddrinfo(job_t *j) {
  struct addrinfo *res = NULL;
  j->result = ip__real.getaddrinfo(j->a1, j->a2, j->a3, &res);
  j->err = errno;
  j->presult = res;
}


int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.getaddrinfo(node, service, hints, res);
  job_t *j = calloc(1, sizeof(*j));
  if (j == NULL)
    return EAI_MEMORY;
  j->run = run_getaddrinfo;
  j->a1 = node;
  j->a2 = service;
  j->a3 = hints;
  j->result_kind = JOB_RESULT_ADDRINFO;
  int r = run_parked(s, j);
  if (r < 0) {
    if (r == -EAGAIN || r == -ENOMEM) { /* no worker: do it here */
      free(j);
      return ip__real.getaddrinfo(node, service, hints, res);
    }
    ip__set_errno(r);
    return EAI_SYSTEM;
  }
  int result = (int) j->result;
  *res = j->presult;
  errno = j->err;
  free(j);
  return result;
}

/* ---- getnameinfo ------------------------------------------------------ */

static void run_getnameinfo(job_t *j) {
  j->result = ip__real.getnameinfo(j->a1, (socklen_t) j->i1, j->p1,
                                   (socklen_t) j->n1, j->presult,
                                   (socklen_t) j->n2, j->i2);
  j->err = errno;
}


int getnameinfo(const struct sockaddr *addr, socklen_t addrlen, char *host,
                socklen_t hostlen, char *serv, socklen_t servlen, int flags) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.getnameinfo(addr, addrlen, host, hostlen, serv, servlen,
                                flags);
  /* The worker writes into copies, so an abandoned job never touches the
   * caller's buffers. */
  job_t *j = calloc(1, sizeof(*j) + (size_t) hostlen + (size_t) servlen +
                           (size_t) addrlen);
  if (j == NULL)
    return EAI_MEMORY;
  char *space = (char *) (j + 1);
  memcpy(space + hostlen + servlen, addr, addrlen);
  j->run = run_getnameinfo;
  j->a1 = space + hostlen + servlen;
  j->i1 = (int) addrlen;
  j->p1 = host ? space : NULL;
  j->n1 = hostlen;
  j->presult = serv ? space + hostlen : NULL;
  j->n2 = servlen;
  j->i2 = flags;
  int r = run_parked(s, j);
  if (r < 0) {
    if (r == -EAGAIN || r == -ENOMEM) {
      free(j);
      return ip__real.getnameinfo(addr, addrlen, host, hostlen, serv,
                                  servlen, flags);
    }
    ip__set_errno(r);
    return EAI_SYSTEM;
  }
  if (host && hostlen)
    memcpy(host, space, hostlen);
  if (serv && servlen)
    memcpy(serv, space + hostlen, servlen);
  int result = (int) j->result;
  errno = j->err;
  free(j);
  return result;
}

/* ---- gethostby* ------------------------------------------------------- */

enum { H_NAME, H_NAME2, H_ADDR };


/* The non-reentrant calls return glibc's static storage; running them on
 * a worker keeps that: the storage is process-wide, not per thread. */
static void run_gethostby(job_t *j) {
  switch (j->i1) {
  case H_NAME:
    j->presult = ip__real.gethostbyname(j->a1);
    break;
  case H_NAME2:
    j->presult = ip__real.gethostbyname2(j->a1, j->i2);
    break;
  default:
    j->presult = ip__real.gethostbyaddr(j->a1, (socklen_t) j->n1, j->i2);
  }
  j->err = errno;
}


static struct hostent *gethostby(ip_sched_t *s, int which, const void *key,
                                 size_t keylen, int af) {
  job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) {
    h_errno = NETDB_INTERNAL;
    ip__set_errno(-ENOMEM);
    return NULL;
  }
  j->run = run_gethostby;
  j->i1 = which;
  j->a1 = key;
  j->n1 = keylen;
  j->i2 = af;
  int r = run_parked(s, j);
  if (r < 0) {
    if (r != -EAGAIN && r != -ENOMEM) {
      h_errno = TRY_AGAIN;
      ip__set_errno(r);
      return NULL;
    }
    free(j);
    run_gethostby(j = &(job_t){.i1 = which, .a1 = key, .n1 = keylen,
                               .i2 = af});
    return j->presult;
  }
  struct hostent *h = j->presult;
  h_errno = j->herrno;
  errno = j->err;
  free(j);
  return h;
}


struct hostent *gethostbyname(const char *name) {
  ip_sched_t *s = ip__hook_sched();
  return s ? gethostby(s, H_NAME, name, 0, 0) : ip__real.gethostbyname(name);
}


struct hostent *gethostbyname2(const char *name, int af) {
  ip_sched_t *s = ip__hook_sched();
  return s ? gethostby(s, H_NAME2, name, 0, af)
           : ip__real.gethostbyname2(name, af);
}


struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type) {
  ip_sched_t *s = ip__hook_sched();
  return s ? gethostby(s, H_ADDR, addr, len, type)
           : ip__real.gethostbyaddr(addr, len, type);
}

/* ---- gethostby*_r ----------------------------------------------------- */

typedef struct rjob {
  job_t job;
  int which;
  const void *key;
  socklen_t keylen;
  int af;
  struct hostent *ret;
  char *buf;
  size_t buflen;
  struct hostent **result;
  int *herr;
} rjob_t;


static void run_gethostby_r(job_t *j) {
  rjob_t *r = (rjob_t *) j;
  switch (r->which) {
  case H_NAME:
    j->result = ip__real.gethostbyname_r(r->key, r->ret, r->buf, r->buflen,
                                         r->result, r->herr);
    break;
  case H_NAME2:
    j->result = ip__real.gethostbyname2_r(r->key, r->af, r->ret, r->buf,
                                          r->buflen, r->result, r->herr);
    break;
  default:
    j->result = ip__real.gethostbyaddr_r(r->key, r->keylen, r->af, r->ret,
                                         r->buf, r->buflen, r->result,
                                         r->herr);
  }
  j->err = errno;
}


/* The reentrant calls write into the caller's buffers, so they cannot be
 * abandoned: the wait is shielded from cancellation and deadlines (like a
 * blocking call, it finishes; the resolver's own timeouts bound it). */
static int gethostby_r(ip_sched_t *s, rjob_t *r) {
  r->job.run = run_gethostby_r;
  ip_coro_t *co = s->current;
  co->shield++;
  int rc = run_parked(s, &r->job);
  co->shield--;
  if (rc < 0) {
    run_gethostby_r(&r->job);
    return (int) r->job.result;
  }
  errno = r->job.err;
  return (int) r->job.result;
}


int gethostbyname_r(const char *name, struct hostent *ret, char *buf,
                    size_t buflen, struct hostent **result, int *herr) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.gethostbyname_r(name, ret, buf, buflen, result, herr);
  rjob_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return ENOMEM;
  *r = (rjob_t){.which = H_NAME, .key = name, .ret = ret, .buf = buf,
                .buflen = buflen, .result = result, .herr = herr};
  int rc = gethostby_r(s, r);
  free(r);
  return rc;
}


int gethostbyname2_r(const char *name, int af, struct hostent *ret,
                     char *buf, size_t buflen, struct hostent **result,
                     int *herr) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.gethostbyname2_r(name, af, ret, buf, buflen, result,
                                     herr);
  rjob_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return ENOMEM;
  *r = (rjob_t){.which = H_NAME2, .key = name, .af = af, .ret = ret,
                .buf = buf, .buflen = buflen, .result = result, .herr = herr};
  int rc = gethostby_r(s, r);
  free(r);
  return rc;
}


int gethostbyaddr_r(const void *addr, socklen_t len, int type,
                    struct hostent *ret, char *buf, size_t buflen,
                    struct hostent **result, int *herr) {
  ip_sched_t *s = ip__hook_sched();
  if (s == NULL)
    return ip__real.gethostbyaddr_r(addr, len, type, ret, buf, buflen, result,
                                    herr);
  rjob_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return ENOMEM;
  *r = (rjob_t){.which = H_ADDR, .key = addr, .keylen = len, .af = type,
                .ret = ret, .buf = buf, .buflen = buflen, .result = result,
                .herr = herr};
  int rc = gethostby_r(s, r);
  free(r);
  return rc;
}


void ip__names_after_fork_child(void) {
  /* The workers did not survive the fork; their jobs' coroutines did not
   * either (only the forking coroutine did, and it is running). */
  pthread_mutex_init(&pool_lock, NULL);
  pthread_cond_init(&pool_cond, NULL);
  queue_head = queue_tail = NULL;
  workers = idle = 0;
}

#pragma GCC visibility pop


int ip__names_workers(void) {
  pthread_mutex_lock(&pool_lock);
  int n = workers;
  pthread_mutex_unlock(&pool_lock);
  return n;
}
