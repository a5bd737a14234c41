/* Memory that changes a known fraction at a time, for incremental images.
 * incrmem CTL [MIB] [PERCENT]: MIB MiB (default 32) of pseudo-random pages;
 * whenever the file CTL holds a number above the current phase, it moves
 * to the next phase: PERCENT % (default 10) of its 256 KiB regions
 * (chosen by the phase) get new contents. Every page's contents follow
 * from its index and its version, so all of memory is verified every
 * 50 ms: a wrong byte prints BAD and exits 1. "end" in CTL: a last check,
 * "OK", exit 0. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096
#define REGION_PAGES 64

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}

static void fill(uint64_t *p, size_t page, uint32_t ver) {
  uint64_t s = mix(page * 1000003ULL + ver + 1);
  for (size_t i = 0; i < PAGE / 8; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; p[i] = s; }
}

static int check(const uint64_t *p, size_t page, uint32_t ver) {
  uint64_t want[PAGE / 8];
  fill(want, page, ver);
  return memcmp(p, want, PAGE) == 0;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: incrmem CTL [MIB] [PERCENT]\n"); return 2; }
  size_t mib = argc > 2 ? strtoul(argv[2], 0, 10) : 32;
  unsigned pct = argc > 3 ? (unsigned)atoi(argv[3]) : 10;
  size_t pages = mib << 8, regions = pages / REGION_PAGES;
  uint64_t *mem = aligned_alloc(PAGE, pages * PAGE);
  uint32_t *ver = calloc(pages, sizeof *ver);
  if (!mem || !ver) { perror("alloc"); return 2; }
  for (size_t i = 0; i < pages; i++) fill(mem + i * (PAGE / 8), i, 0);
  unsigned phase = 0;
  printf("phase 0 done\n"); fflush(stdout);
  for (;;) {
    for (size_t i = 0; i < pages; i++)
      if (!check(mem + i * (PAGE / 8), i, ver[i])) { printf("BAD page %zu phase %u\n", i, phase); fflush(stdout); return 1; }
    char buf[32] = {0};
    FILE *f = fopen(argv[1], "r");
    if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
    if (!strncmp(buf, "end", 3)) { printf("OK phase %u\n", phase); return 0; }
    if (buf[0] && (unsigned)atoi(buf) > phase) {
      phase++;
      size_t changed = 0;
      for (size_t r = 0; r < regions; r++) {
        if (mix(r * 7919 + phase) % 100 >= pct) continue;
        changed++;
        for (size_t i = r * REGION_PAGES; i < (r + 1) * REGION_PAGES; i++) fill(mem + i * (PAGE / 8), i, ++ver[i]);
      }
      printf("phase %u done (%zu of %zu regions changed)\n", phase, changed, regions); fflush(stdout);
      continue;
    }
    usleep(50000);
  }
}
