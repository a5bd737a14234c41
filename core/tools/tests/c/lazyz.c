/* Compressible memory in regions of its own, checked after a restart in
 * ways that reach pages a lazy restore has not filled yet: through system
 * calls (write(2) from them, read(2) into them), after madvise(DONTNEED),
 * munmap and mremap of them, after mprotect of a page in their middle,
 * from several threads at once, and from a forked child. Phase 1 waits
 * for the file "go1" (created after the first restart), phase 2 for "go2"
 * (after the restart from the checkpoint taken in between); both check
 * everything and print "phase N ok", or BAD and exit 1. Region size in
 * MiB: $REGION_MB (default 8); with $LAZYZ_SHOW_REGIONS set, the regions'
 * addresses are printed first. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NREG 8
static size_t rlen;
static unsigned char *reg[NREG];
/* What each region should hold: 0 the pattern, 1 zeros. */
static int zeroed[NREG];
/* Region 1 got 100 bytes by read(2) at offset 5000 (phase 1 on). */
static int patched;
/* Region 6: its second half unmapped in phase 1. */
static int halved;

static unsigned char pattern(int r, size_t off) {
  /* Compressible: runs of equal bytes, changing every 64 bytes. */
  return (unsigned char)(r * 37 + (off >> 6) * 11);
}

static unsigned char want(int r, size_t off) {
  if (zeroed[r]) return 0;
  if (r == 1 && patched && off >= 5000 && off < 5100) return (unsigned char)(0xa5 ^ (off - 5000));
  return pattern(r, off);
}

static int check(int r, const char *what) {
  size_t n = (r == 6 && halved) ? rlen / 2 : rlen;
  for (size_t i = 0; i < n; i++)
    if (reg[r][i] != want(r, i)) {
      printf("BAD %s: region %d offset %zu holds %d, not %d\n", what, r, i, reg[r][i], want(r, i));
      fflush(stdout);
      return 0;
    }
  return 1;
}

static void wait_file(const char *f) {
  while (access(f, F_OK) != 0) usleep(20000);
}

static void *toucher(void *arg) {
  (void)arg;
  /* Every thread reads all of region 3 at once (faults on the same pages). */
  uint64_t s = 0;
  for (size_t i = 0; i < rlen; i += 512) s += reg[3][i] == want(3, i) ? 0 : 1;
  return (void *)(uintptr_t)s;
}

static int phase1(void) {
  int ok = 1, p[2];
  /* write(2) from pages not filled yet. */
  if (pipe(p) != 0) return 0;
  unsigned char buf[8192];
  if (write(p[1], reg[0] + 3 * 4096 + 100, sizeof buf) != (ssize_t)sizeof buf) { printf("BAD write from region 0\n"); return 0; }
  if (read(p[0], buf, sizeof buf) != (ssize_t)sizeof buf) return 0;
  for (size_t i = 0; i < sizeof buf; i++)
    if (buf[i] != pattern(0, 3 * 4096 + 100 + i)) { printf("BAD pipe byte %zu\n", i); return 0; }
  /* read(2) into the middle of a page not filled yet. */
  unsigned char in[100];
  for (int i = 0; i < 100; i++) in[i] = (unsigned char)(0xa5 ^ i);
  if (write(p[1], in, 100) != 100) return 0;
  if (read(p[0], reg[1] + 5000, 100) != 100) { printf("BAD read into region 1\n"); return 0; }
  patched = 1;
  close(p[0]);
  close(p[1]);
  ok &= check(1, "read(2) into it");
  /* DONTNEED: anonymous private memory reads back as zeros. */
  if (madvise(reg[4], rlen, MADV_DONTNEED) != 0) { printf("BAD madvise\n"); return 0; }
  zeroed[4] = 1;
  ok &= check(4, "after MADV_DONTNEED");
  /* munmap of half a region; the other half keeps its bytes. */
  if (munmap(reg[6] + rlen / 2, rlen / 2) != 0) { printf("BAD munmap\n"); return 0; }
  halved = 1;
  ok &= check(6, "after munmap of its other half");
  /* mremap: the region moves elsewhere, with its bytes. */
  void *to = mmap(NULL, rlen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  void *moved = mremap(reg[5], rlen, rlen, MREMAP_MAYMOVE | MREMAP_FIXED, to);
  if (moved == MAP_FAILED) { printf("BAD mremap\n"); return 0; }
  reg[5] = moved;
  ok &= check(5, "after mremap");
  /* Threads reading the same pages at once. */
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, toucher, NULL);
  for (int i = 0; i < 4; i++) {
    void *bad;
    pthread_join(t[i], &bad);
    if (bad) { printf("BAD thread %d saw %lu wrong bytes\n", i, (unsigned long)(uintptr_t)bad); ok = 0; }
  }
  /* mprotect of one page inside a chunk still to fill splits its mapping
   * (no event tells the page server): region 2 is then read at once (its
   * pages come on faults), region 7 is filled for the fork below. */
  for (int r = 2; r <= 7; r += 5)
    if (mprotect(reg[r] + rlen / 2 + 5 * 4096, 4096, PROT_READ) != 0) { printf("BAD mprotect\n"); return 0; }
  ok &= check(2, "after mprotect of one of its pages");
  /* A fork right away: the child checks memory its parent never touched. */
  pid_t c = fork();
  if (c == 0) _exit(check(7, "in a forked child") && check(2, "in a forked child") ? 0 : 1);
  int st = 0;
  waitpid(c, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("BAD forked child (status %d)\n", st); ok = 0; }
  for (int r = 0; r < NREG; r++) ok &= check(r, "at the end of phase 1");
  return ok;
}

int main(void) {
  rlen = (size_t)(getenv("REGION_MB") ? atoi(getenv("REGION_MB")) : 8) << 20;
  for (int r = 0; r < NREG; r++) {
    reg[r] = mmap(NULL, rlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (reg[r] == MAP_FAILED) { printf("BAD mmap\n"); return 1; }
    for (size_t i = 0; i < rlen; i++) reg[r][i] = pattern(r, i);
  }
  /* For a test that damages one region's bytes in the image. */
  if (getenv("LAZYZ_SHOW_REGIONS"))
    for (int r = 0; r < NREG; r++) printf("pid %d region %d at %p\n", (int)getpid(), r, (void *)reg[r]);
  printf("waiting for go1\n");
  fflush(stdout);
  wait_file("go1");
  if (!phase1()) { printf("BAD phase 1\n"); return 1; }
  printf("phase 1 ok\nwaiting for go2\n");
  fflush(stdout);
  wait_file("go2");
  for (int r = 0; r < NREG; r++)
    if (!check(r, "in phase 2")) return 1;
  printf("phase 2 ok\n");
  return 0;
}
