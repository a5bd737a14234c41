/* Many kinds of memory: a large anonymous array (partly untouched, partly
 * zero), a PROT_NONE reservation, a huge MAP_NORESERVE reservation, a
 * private writable file mapping, heap growth with brk after the
 * checkpoint, and a checksum over all of it at the end.
 * bigmem [MIB [FILE [STEPS]]] (32, bigmem.data, 30 steps of 100 ms). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
  return h;
}

int main(int argc, char **argv) {
  size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 32;
  const char *file = argc > 2 ? argv[2] : "bigmem.data";
  int steps = argc > 3 ? atoi(argv[3]) : 30;
  size_t n = mb << 20;
  unsigned char *a = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char *none = mmap(0, 16 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  unsigned char *huge = mmap(0, (size_t)64 << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (a == MAP_FAILED || none == MAP_FAILED || huge == MAP_FAILED) { perror("mmap"); return 2; }
  int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ftruncate(fd, 1 << 20) != 0) { perror("file"); return 2; }
  for (int i = 0; i < (1 << 20); i += 4096) { char c = (char)(i >> 12); if (pwrite(fd, &c, 1, i) != 1) return 2; }
  unsigned char *fm = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (fm == MAP_FAILED) { perror("mmap file"); return 2; }
  /* Fill the first 3/4 of the array; leave the last quarter untouched; a zero band in the middle. */
  for (size_t i = 0; i < n * 3 / 4; i++) a[i] = (unsigned char)(i * 2654435761u >> 13);
  memset(a + n / 4, 0, n / 16);
  for (size_t g = 0; g < 8; g++) huge[g << 30] = (unsigned char)(g + 1);
  for (int step = 0; step < steps; step++) {
    for (size_t i = step * 4096; i < n * 3 / 4; i += 65536) a[i] ^= (unsigned char)step;
    fm[(step * 8192) % (1 << 20)] = (unsigned char)(step * 3);
    char *grow = sbrk(4096 * (step + 1));
    if (grow == (void *)-1) { perror("sbrk"); return 2; }
    memset(grow, step, 4096 * (step + 1));
    printf("step %d\n", step); fflush(stdout);
    usleep(100000);
  }
  mprotect(none, 4096, PROT_READ | PROT_WRITE); none[0] = 42; uint64_t h = fnv(none, 4096, 14695981039346656037ULL);
  h = fnv(a, n, h);
  for (size_t g = 0; g < 8; g++) h = fnv(huge + (g << 30), 4096, h);
  h = fnv(fm, 1 << 20, h);
  printf("RESULT %016llx\n", (unsigned long long)h);
  unlink(file);
  return 0;
}
