/* ctor_main.c: the program that links ctor_lib.c; by the time main runs,
 * the library's constructor has made its calls. */
#include <stdio.h>

int main(void) {
  puts("main");
  return 3;
}
