/* A large malloc'ed block (glibc serves it with its own mmap) filled with
 * incompressible bytes, so a restart maps it straight from the image; at
 * every step it is grown with realloc far past the end of any image (glibc
 * grows such blocks with mremap), the new end is written and the old
 * contents are checked. Prints BAD and exits 1 on a wrong byte. */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t sum(const unsigned char *p, size_t n) { uint64_t h = 1469598103934665603ULL; for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; } return h; }

int main(void) {
  size_t base = 1 << 20, grow = 256 << 20;
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  unsigned char *buf = NULL;
  /* Blocks of 512 KiB and more get their own mapping (no dynamic threshold). */
  mallopt(M_MMAP_THRESHOLD, 512 << 10);
  uint64_t s = 0;
  for (int step = 0; step < 12; step++) {
    /* A fresh full block each step: the image holds it raw. */
    free(buf);
    buf = malloc(base);
    if (!buf) return 2;
    for (size_t i = 0; i < base; i += 8) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; memcpy(buf + i, &x, 8); }
    s = sum(buf, base);
    printf("step %d ok\n", step); fflush(stdout);
    usleep(150000);
    /* After the pause (a checkpoint or restart may fall in it): grow. */
    unsigned char *big = realloc(buf, base + grow);
    if (!big) return 2;
    big[base + grow - 1] = 1;
    big[base] = 1;
    if (sum(big, base) != s) { printf("BAD at step %d\n", step); return 1; }
    buf = realloc(big, base);
    if (!buf) return 2;
  }
  printf("RESULT %016llx\n", (unsigned long long)s);
  return 0;
}
