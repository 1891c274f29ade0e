/* Closed-loop echo load generator for scripts/bench_suite.py.
 *
 * N TCP connections to one echo server, each sending a SIZE-byte message,
 * reading the whole echo back, checking every byte, then sending the next:
 * one message in flight per connection, driven by one epoll loop on one
 * thread (so it can be pinned to one core).
 *
 *   loadgen --port P [--host 127.0.0.1] [--conns N] [--size BYTES]
 *           [--duration S] [--warmup S] [--warmup-max S]
 *           [--connect-window K] [--connect-timeout S] [--idle]
 *
 * Phases:
 *   connect   connections are opened gradually: at most K of them may be
 *             "unconfirmed" (opened, but their first echo not yet back).  A
 *             confirmed connection has been accepted by the server and is
 *             being served, so the server's listen backlog never holds more
 *             than K connections from us and cannot overflow.  Confirmed
 *             connections then stay silent until all are open: otherwise,
 *             with thousands of them in a closed loop, each new one's first
 *             echo queues behind all their traffic and opening 10,000 takes
 *             minutes instead of seconds.
 *   warmup    every connection does round trips for at least --warmup s
 *             and until each has completed one (at most --warmup-max s),
 *             so that the window opens on a steady state with every
 *             connection taking part, not on the ramp-up of 10,000.
 *   measure   --duration s; only round trips that complete in this window
 *             count, with their latency (send of the first byte to receipt
 *             of the last).
 *
 * Output on stdout, one JSON object per line:
 *   {"event":"start"} when the measurement window opens, {"event":"end"}
 *   when it closes (the runner samples the server's CPU time and RSS
 *   there), then the result object.  With --idle there is no warmup or
 *   measurement: after every connection has done one round trip it prints
 *   {"event":"idle",...} and holds the connections open, silent, until its
 *   stdin is closed; then it prints the result.
 *
 * "errors" counts connections that failed: an echoed byte that differs from
 * the byte sent (also reported separately as "mismatches"), an EOF or an
 * error on an established connection, or a connection that could not be
 * opened.  "stalled" counts connections that completed no round trip in the
 * whole measurement window.  The exit status is 0 when the run finished
 * (errors are data, not a failure of the tool) and 2 on bad usage or when
 * the tool itself cannot run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum conn_state { C_CLOSED, C_CONNECTING, C_ACTIVE, C_FAILED };

typedef struct {
  int fd;
  enum conn_state state;
  int confirmed;          /* its first echo came back */
  uint32_t seq;           /* message number, part of the byte pattern */
  size_t sent, received;  /* of the current message */
  uint64_t sent_at_ns;    /* when the current message's first byte went */
  uint64_t window_trips;  /* round trips completed in the window */
  int looped;             /* completed a round trip in the closed loop */
  int want_out;           /* EPOLLOUT is in its registration */
} conn_t;

typedef struct {
  const char *host;
  int port;
  int conns;
  size_t size;
  double duration_s, warmup_s, warmup_max_s, connect_timeout_s;
  int connect_window;
  int idle;
} options_t;

static options_t opt = {"127.0.0.1", 0, 10, 64, 5.0, 1.0, 10.0, 120.0, 128, 0};
static int epfd;
static conn_t *conns;
static unsigned char *scratch;  /* receive buffer */
static unsigned char *message;  /* send buffer, refilled per message */
static struct sockaddr_in server_addr;

/* Counters. */
static int opened, unconfirmed, confirmed_total, looped_total;
static long errors, mismatches, disconnects, connect_failures;
static int measuring;
static int looping; /* confirmed connections send their next message */
static uint64_t window_trips;
static uint64_t *latencies_ns;
static size_t latencies_len, latencies_cap;


static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


static void die(const char *what) {
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(2);
}


/* The byte at offset i of message seq on connection id.  It depends on all
 * three, so a byte echoed to the wrong connection, out of order or from an
 * older message is caught, not only a flipped one. */
static unsigned char pattern(int id, uint32_t seq, size_t i) {
  return (unsigned char)((uint32_t)id * 2654435761u + seq * 40503u +
                         (uint32_t)i * 31u + (uint32_t)(i >> 8));
}


static void record_latency(uint64_t ns) {
  if (latencies_len == latencies_cap) {
    latencies_cap = latencies_cap ? latencies_cap * 2 : 65536;
    latencies_ns = realloc(latencies_ns, latencies_cap * sizeof *latencies_ns);
    if (!latencies_ns) die("realloc");
  }
  latencies_ns[latencies_len++] = ns;
}


static void set_interest(int id, int want_out) {
  conn_t *c = &conns[id];
  if (c->want_out == want_out) return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                           .data.u32 = (uint32_t)id};
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl MOD");
  c->want_out = want_out;
}


static void fail(int id, int mismatch) {
  conn_t *c = &conns[id];
  if (c->state == C_CONNECTING) connect_failures++;
  else if (mismatch) mismatches++;
  else disconnects++;
  errors++;
  if (!c->confirmed) unconfirmed--;
  close(c->fd);  /* also removes it from the epoll set */
  c->fd = -1;
  c->state = C_FAILED;
}


/* Sends what is left of the current message; 0, or -1 after fail(). */
static int pump_send(int id) {
  conn_t *c = &conns[id];
  while (c->sent < opt.size) {
    for (size_t i = c->sent; i < opt.size; i++)
      message[i] = pattern(id, c->seq, i);
    ssize_t n = send(c->fd, message + c->sent, opt.size - c->sent,
                     MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        set_interest(id, 1);
        return 0;
      }
      fail(id, 0);
      return -1;
    }
    c->sent += (size_t)n;
  }
  set_interest(id, 0);
  return 0;
}


static void start_message(int id) {
  conn_t *c = &conns[id];
  c->sent = c->received = 0;
  c->sent_at_ns = now_ns();
  pump_send(id);
}


static void complete_trip(int id) {
  conn_t *c = &conns[id];
  if (measuring) {
    record_latency(now_ns() - c->sent_at_ns);
    c->window_trips++;
    window_trips++;
  }
  if (!c->confirmed) {
    c->confirmed = 1;
    unconfirmed--;
    confirmed_total++;
  }
  c->seq++;
  if (looping && !c->looped) {
    c->looped = 1;
    looped_total++;
  }
  if (looping) start_message(id);
}


static void on_readable(int id) {
  conn_t *c = &conns[id];
  for (;;) {
    size_t want = opt.size - c->received;
    if (want == 0) {
      /* Anything the server sends beyond the message is an error. */
      ssize_t n = recv(c->fd, scratch, 1, MSG_DONTWAIT);
      if (n > 0 || n == 0 || (errno != EAGAIN && errno != EINTR))
        fail(id, n > 0);
      return;
    }
    ssize_t n = recv(c->fd, scratch, want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) fail(id, 0);
      return;
    }
    if (n == 0) {
      fail(id, 0);
      return;
    }
    if ((size_t)n + c->received > c->sent) {
      /* Echo ahead of what we sent: the server invented bytes. */
      fail(id, 1);
      return;
    }
    for (ssize_t i = 0; i < n; i++) {
      if (scratch[i] != pattern(id, c->seq, c->received + (size_t)i)) {
        fail(id, 1);
        return;
      }
    }
    c->received += (size_t)n;
    if (c->received == opt.size) {
      complete_trip(id);
      if (c->state != C_ACTIVE || !looping) return;
    }
  }
}


static void open_conn(int id) {
  conn_t *c = &conns[id];
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->state = C_CONNECTING;
  opened++;
  unconfirmed++;
  if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
      errno != EINPROGRESS) {
    fail(id, 0);
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)id};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl ADD");
  c->want_out = 1;
}


static void on_event(int id, uint32_t events) {
  conn_t *c = &conns[id];
  if (c->state == C_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      fail(id, 0);
      return;
    }
    c->state = C_ACTIVE;
    start_message(id);
    return;
  }
  if (c->state != C_ACTIVE) return;
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(id);
  if (c->state == C_ACTIVE && (events & EPOLLOUT) && c->sent < opt.size)
    pump_send(id);
}


static void poll_once(int timeout_ms) {
  struct epoll_event evs[512];
  int n = epoll_wait(epfd, evs, 512, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return;
    die("epoll_wait");
  }
  for (int i = 0; i < n; i++) on_event((int)evs[i].data.u32, evs[i].events);
}


/* Opens connections within the window until all are confirmed, failed, or
 * the connect timeout passes. */
static void connect_phase(void) {
  uint64_t deadline = now_ns() + (uint64_t)(opt.connect_timeout_s * 1e9);
  while (opened < opt.conns || unconfirmed > 0) {
    while (opened < opt.conns && unconfirmed < opt.connect_window)
      open_conn(opened);
    if (now_ns() > deadline) break;
    poll_once(10);
  }
}


static void run_for(double seconds) {
  uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
  for (uint64_t t = now_ns(); t < end; t = now_ns()) {
    uint64_t left_ms = (end - t + 999999) / 1000000;
    poll_once(left_ms > 100 ? 100 : (int)left_ms);
  }
}


/* At least --warmup s, then until every open connection has done a round
 * trip in the loop, or --warmup-max s in all. */
static void warmup_phase(void) {
  uint64_t cap = now_ns() + (uint64_t)(opt.warmup_max_s * 1e9);
  run_for(opt.warmup_s);
  while (looped_total < confirmed_total - (int)(disconnects + mismatches) &&
         now_ns() < cap)
    poll_once(10);
}


static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}


static double percentile_us(double p) {
  if (latencies_len == 0) return 0;
  size_t i = (size_t)(p * (double)(latencies_len - 1) + 0.5);
  return (double)latencies_ns[i] / 1000.0;
}


static void print_result(double elapsed_s) {
  long stalled = 0, unconnected = 0;
  for (int i = 0; i < opt.conns; i++) {
    if (conns[i].state == C_ACTIVE && conns[i].window_trips == 0) stalled++;
    if (conns[i].state == C_CLOSED || conns[i].state == C_CONNECTING)
      unconnected++;
  }
  if (opt.idle) stalled = 0;
  qsort(latencies_ns, latencies_len, sizeof *latencies_ns, cmp_u64);
  printf("{\"conns\":%d,\"size\":%zu,\"duration_s\":%.6f,\"round_trips\":%llu,"
         "\"rps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
         "\"connected\":%d,\"unconnected\":%ld,\"stalled\":%ld,"
         "\"errors\":%ld,\"mismatches\":%ld,\"disconnects\":%ld,"
         "\"connect_failures\":%ld}\n",
         opt.conns, opt.size, elapsed_s, (unsigned long long)window_trips,
         elapsed_s > 0 ? (double)window_trips / elapsed_s : 0.0,
         percentile_us(0.50), percentile_us(0.99), percentile_us(1.0),
         confirmed_total, unconnected, stalled, errors, mismatches,
         disconnects, connect_failures);
  fflush(stdout);
}


/* 10,000 connections need more descriptors than the usual soft limit. */
static void raise_nofile(rlim_t need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit");
  if (rl.rlim_cur >= need) return;
  if (rl.rlim_max < need) rl.rlim_max = need;  /* works as root only */
  rl.rlim_cur = need;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
    fprintf(stderr, "loadgen: %llu connections need RLIMIT_NOFILE >= %llu: %s\n",
            (unsigned long long)opt.conns, (unsigned long long)need,
            strerror(errno));
    exit(2);
  }
}


static void usage(void) {
  fprintf(stderr,
          "usage: loadgen --port P [--host 127.0.0.1] [--conns N] [--size BYTES]\n"
          "               [--duration S] [--warmup S] [--warmup-max S]\n"
          "               [--connect-window K] [--connect-timeout S] [--idle]\n");
  exit(2);
}


static void parse(int argc, char **argv) {
  static const struct option longs[] = {
      {"host", 1, 0, 'h'},          {"port", 1, 0, 'p'},
      {"conns", 1, 0, 'c'},         {"size", 1, 0, 's'},
      {"duration", 1, 0, 'd'},      {"warmup", 1, 0, 'w'},
      {"connect-window", 1, 0, 'k'}, {"connect-timeout", 1, 0, 't'},
      {"idle", 0, 0, 'i'},          {"warmup-max", 1, 0, 'm'},
      {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
    switch (ch) {
      case 'h': opt.host = optarg; break;
      case 'p': opt.port = atoi(optarg); break;
      case 'c': opt.conns = atoi(optarg); break;
      case 's': opt.size = (size_t)strtoul(optarg, NULL, 10); break;
      case 'd': opt.duration_s = atof(optarg); break;
      case 'w': opt.warmup_s = atof(optarg); break;
      case 'k': opt.connect_window = atoi(optarg); break;
      case 't': opt.connect_timeout_s = atof(optarg); break;
      case 'i': opt.idle = 1; break;
      case 'm': opt.warmup_max_s = atof(optarg); break;
      default: usage();
    }
  }
  if (optind != argc || opt.port <= 0 || opt.port > 65535 || opt.conns <= 0 ||
      opt.size == 0 || opt.duration_s <= 0 || opt.warmup_s < 0 ||
      opt.warmup_max_s < opt.warmup_s ||
      opt.connect_window <= 0 || opt.connect_timeout_s <= 0)
    usage();
  memset(&server_addr, 0, sizeof server_addr);
  server_addr.sin_family = AF_INET;
  server_addr.sin_port = htons((uint16_t)opt.port);
  if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) usage();
}


int main(int argc, char **argv) {
  parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile((rlim_t)opt.conns + 64);
  conns = calloc((size_t)opt.conns, sizeof *conns);
  scratch = malloc(opt.size);
  message = malloc(opt.size);
  if (!conns || !scratch || !message) die("malloc");
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1");

  connect_phase();
  if (opt.idle) {
    printf("{\"event\":\"idle\",\"connected\":%d}\n", confirmed_total);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    print_result(0);
    return 0;
  }
  looping = 1;
  for (int i = 0; i < opt.conns; i++)
    if (conns[i].state == C_ACTIVE && conns[i].confirmed) start_message(i);
  warmup_phase();
  printf("{\"event\":\"start\"}\n");
  fflush(stdout);
  measuring = 1;
  uint64_t t0 = now_ns();
  run_for(opt.duration_s);
  double elapsed_s = (double)(now_ns() - t0) / 1e9;
  measuring = 0;
  printf("{\"event\":\"end\"}\n");
  fflush(stdout);
  print_result(elapsed_s);
  return 0;
}
