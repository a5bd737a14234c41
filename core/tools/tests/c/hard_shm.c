/* Shared memory whose pages this process never touched through its own
 * mapping before the checkpoint:
 *  memfd:  a memfd filled with write(2), mapped MAP_SHARED, fd closed;
 *  memfd-fd: the same with the fd kept open;
 *  child:  a MAP_SHARED anonymous region written by a forked child that
 *          exited before the first step.
 * The contents are read (checksummed) only after the last step.
 * Usage: hard_shm memfd|memfd-fd|child
 * Output: "step N" lines, then RESULT (deterministic). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "hard_common.h"

#define SIZE (8u << 20)

static uint64_t word(uint64_t i) { return (i + 1) * 0x9e3779b97f4a7c15ull ^ (i >> 7); }

static void fill(uint64_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = word(i);
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "memfd";
  uint64_t *region;
  int fd = -1;
  if (!strncmp(mode, "memfd", 5)) {
    fd = memfd_create("hard_shm", 0);
    if (fd < 0) { perror("memfd_create"); return 1; }
    uint64_t *buf = malloc(1 << 20);
    for (size_t off = 0; off < SIZE; off += 1 << 20) {
      for (size_t i = 0; i < (1 << 20) / 8; i++) buf[i] = word(off / 8 + i);
      if (write(fd, buf, 1 << 20) != 1 << 20) { perror("write"); return 1; }
    }
    free(buf);
    region = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (region == MAP_FAILED) { perror("mmap"); return 1; }
    if (!strcmp(mode, "memfd")) { close(fd); fd = -1; }
  } else {
    region = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) { perror("mmap"); return 1; }
    pid_t c = fork();
    if (c < 0) { perror("fork"); return 1; }
    if (c == 0) {
      fill(region, SIZE / 8);
      _exit(0);
    }
    int st;
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("writer child failed\n"); return 1; }
  }
  for (int step = 0; step < 15; step++) {
    printf("step %d\n", step);
    fflush(stdout);
    hard_msleep(100);
  }
  size_t wrong = 0, zero = 0, first_wrong = (size_t)-1;
  for (size_t i = 0; i < SIZE / 8; i++) {
    if (region[i] != word(i)) {
      if (first_wrong == (size_t)-1) first_wrong = i;
      wrong++;
      if (region[i] == 0) zero++;
    }
  }
  if (fd >= 0) {
    uint64_t v = 0;
    if (pread(fd, &v, 8, SIZE - 8) != 8 || v != word(SIZE / 8 - 1)) printf("fd read differs\n");
  }
  if (wrong) printf("%zu of %u words wrong (%zu zero), first at byte %zu\n", wrong, SIZE / 8, zero, first_wrong * 8);
  printf("RESULT shm %s %s\n", mode, wrong ? "BAD" : "ok");
  return 0;
}
