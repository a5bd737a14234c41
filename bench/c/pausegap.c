/* The application's pause, seen from inside: fills MIB MiB with random
 * data, then for SECS seconds keeps writing its memory (a word in one page
 * after the other) and records the longest gap between two iterations of
 * its loop (a checkpoint that suspends it shows as such a gap). Prints
 * "ready" when its memory is filled, then at the end "maxgap_ms G" and the
 * time that gap started ("gapat_s T", seconds since ready). With PCT
 * (default 100) it writes only PCT pages of every 100 (0: it runs its loop
 * without writing its memory).
 * Usage: pausegap MIB SECS [PCT] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
  double secs = argc > 2 ? atof(argv[2]) : 20;
  size_t pct = argc > 3 ? (size_t)atol(argv[3]) : 100;
  size_t words = mib << 17;
  uint64_t *m = malloc(words * 8);
  if (!m) return 2;
  uint64_t x = 88172645463325252ULL;
  for (size_t i = 0; i < words; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    m[i] = x;
  }
  double t0 = now(), last = t0, maxgap = 0, at = 0;
  printf("ready\n");
  fflush(stdout);
  size_t page = 0;
  while (last - t0 < secs) {
    if (page % 100 < pct) m[page * 512] += 1;
    page = (page + 1) % (words / 512);
    double t = now();
    if (t - last > maxgap) { maxgap = t - last; at = last - t0; }
    last = t;
  }
  printf("maxgap_ms %.1f\ngapat_s %.2f\n", maxgap * 1e3, at);
  return 0;
}
