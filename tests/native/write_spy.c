/* write_spy.c: preloaded ahead of libinterpose by tests/test_guard_handler.py.
 * It defines write() and says so on stderr when the guard-page overflow
 * report goes through it: the SIGSEGV handler must use the raw system
 * call, never an interposable write (libinterpose's own hook among them). */
#define _GNU_SOURCE
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

ssize_t write(int fd, const void *buf, size_t n) {
  static const char mark[] = "write_spy: the report went through write()\n";
  if (buf != NULL && memmem(buf, n, "overflowed", 10) != NULL)
    syscall(SYS_write, 2, mark, sizeof(mark) - 1);
  return syscall(SYS_write, fd, buf, n);
}
