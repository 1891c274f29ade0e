/* ctor_lib.c: a shared library whose constructor makes hooked calls before
 * libinterpose's own constructor has run (the shape of libcap-ng, issue
 * #12 item 1).  Linked into ctor_main.c by tests/test_preload_constructors.py;
 * it prints what each call returned so that the runs with and without the
 * preload can be compared byte for byte. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


static void show(const char *what, long r) {
  printf("%s %ld %s\n", what, r, r < 0 ? strerror(errno) : "");
}


__attribute__((constructor)) static void early(void) {
  char buf[64];
  int fd = open("/proc/self/stat", O_RDONLY);
  show("open", fd >= 0);
  show("read", read(fd, buf, 1));
  show("fcntl", fcntl(fd, F_GETFL) & O_ACCMODE);
  int copy = dup(fd);
  show("dup", copy >= 0);
  show("close", close(copy));
  show("close", close(fd));
  show("read_bad", read(-1, buf, 1));
  int sv[2];
  show("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
  show("send", send(sv[0], "ping", 4, 0));
  show("recv", recv(sv[1], buf, sizeof(buf), 0));
  struct pollfd p = {.fd = sv[1], .events = POLLIN};
  show("poll", poll(&p, 1, 0));
  close(sv[0]);
  close(sv[1]);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  show("socket", s >= 0);
  close(s);
  int pp[2];
  show("pipe", pipe(pp));
  show("write", write(pp[1], "x", 1));
  show("read", read(pp[0], buf, 1));
  close(pp[0]);
  close(pp[1]);
  struct timespec zero = {0, 0};
  show("nanosleep", nanosleep(&zero, NULL));
  fflush(stdout);
}
