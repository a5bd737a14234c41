/* Helpers of the test programs: each defines `die` (print what failed,
 * exit 1) before including this. */
#include <stddef.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what);

/* Reads or writes exactly n bytes of fd (a socketpair to the other process). */
static void io(int fd, void *b, size_t n, int wr) {
  char *p = b;
  while (n) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k <= 0) die("socketpair i/o");
    p += k;
    n -= (size_t)k;
  }
}

/* Monotonic seconds. */
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
