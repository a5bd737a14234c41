/* Memory that changes between checkpoints in the ways dirty-page tracking
 * must not miss. dirtymem MODE CTL: 16 slots of 1 MiB at fixed places in
 * one reservation, each holding a "block" of 256 pages whose contents
 * follow from (block, page, version); a version is a count of single-byte
 * changes (each at a place and value that follow from the page and the
 * version), or ZAPPED (the page reads as zero). Whenever the file CTL
 * holds a number above the current phase, the next phase's change is
 * made (MODE says which) and "phase N done" printed. All memory is checked
 * against the model every 20 ms: a wrong byte prints BAD and exits 1.
 * "end" in CTL: a last check, "OK phase N", exit 0.
 *
 * Every phase also changes single bytes of a few pages spread over the
 * slots (most chunks stay clean). The MODE's own change:
 *   bytes     nothing more
 *   read      read(2) of new page contents from a file into slot 3
 *   dontneed  MADV_DONTNEED of every 5th page of slot 4 (then, in the
 *             second phase, pages of it read again: the zero page)
 *   remap     munmap + mmap of slot 5 with a new block; mremap of slot 6
 *             over slot 7 (slot 6 is then mapped anew with a new block)
 *   fork      phase 1 forks a child that changes and checks its own copy
 *             (prefixed "child"); the parent waits for it at the end
 *   uffd      phase 1 registers slot 8 with a userfaultfd of its own
 *             (missing-page mode; the pages are there, so no fault comes);
 *             phase 2 unregisters it
 *   pvw       another process writes 32 pages of slot 8: the program
 *             prints "pvw PID SRC DST LEN" (new contents at SRC) and waits
 *             until CTL says "written N"; the test copies SRC to DST with
 *             process_vm_readv and process_vm_writev
 *   poke      (with DMTCP_TEST_DIRTY_POKE at byte 123 of page 5 of slot
 *             8) the library sets that byte to 0x5a while it writes an
 *             image in which the page is clean: either value while it
 *             runs, 0x5a in the last check after phase 1
 *   aio       a Linux AIO context is set up at start (io_setup; no
 *             request is ever submitted): the tracking must not be used
 * The slots are at a fixed address, BASE (0x300000000000). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define SLOT (1 << 20)
#define SLOT_PAGES (SLOT / PAGE)
#define NSLOT 16
#define ZAPPED 0xffffffffu
#define UNMAPPED 0xffffffffu

static char *base;
/* Per slot: the block it holds (UNMAPPED: none); per slot and page: version. */
static uint32_t block_of[NSLOT];
static uint32_t ver[NSLOT][SLOT_PAGES];
static uint32_t next_block = NSLOT;
static const char *who = "";

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}

/* The contents of page `pg` of block `blk` at version `v`. */
static void content(unsigned char *p, uint32_t blk, size_t pg, uint32_t v) {
  if (v == ZAPPED) { memset(p, 0, PAGE); return; }
  uint64_t s = mix(((uint64_t)blk << 20) + pg + 1);
  uint64_t *q = (uint64_t *)p;
  for (size_t i = 0; i < PAGE / 8; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; q[i] = s; }
  for (uint32_t k = 1; k <= v; k++) {
    uint64_t m = mix(((uint64_t)blk << 40) ^ (pg << 20) ^ k);
    p[m % PAGE] = (unsigned char)(m >> 32) | 1;
  }
}

static char *page_at(int slot, size_t pg) { return base + (size_t)slot * SLOT + pg * PAGE; }

static void fill_slot(int slot) {
  for (size_t pg = 0; pg < SLOT_PAGES; pg++) content((unsigned char *)page_at(slot, pg), block_of[slot], pg, ver[slot][pg]);
}

static int poke;

static int check_all(unsigned phase, int last) {
  static unsigned char want[PAGE];
  for (int s = 0; s < NSLOT; s++) {
    if (block_of[s] == UNMAPPED) continue;
    for (size_t pg = 0; pg < SLOT_PAGES; pg++) {
      content(want, block_of[s], pg, ver[s][pg]);
      if (poke && s == 8 && pg == 5 && ((last && phase >= 1) || page_at(s, pg)[123] == 0x5a)) want[123] = 0x5a;
      if (memcmp(page_at(s, pg), want, PAGE)) {
        printf("%sBAD slot %d page %zu phase %u\n", who, s, pg, phase); fflush(stdout);
        return 0;
      }
    }
  }
  return 1;
}

/* One more single-byte change of the page (it is written in place). */
static void touch(int slot, size_t pg) {
  uint32_t v = ++ver[slot][pg];
  uint64_t m = mix(((uint64_t)block_of[slot] << 40) ^ (pg << 20) ^ v);
  page_at(slot, pg)[m % PAGE] = (char)((unsigned char)(m >> 32) | 1);
}

static void map_slot(int slot, uint32_t blk) {
  void *p = mmap(page_at(slot, 0), SLOT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(2); }
  block_of[slot] = blk;
  memset(ver[slot], 0, sizeof ver[slot]);
  fill_slot(slot);
}

static int uffd = -1;

/* Wait until CTL says "written PHASE". */
static void wait_written(const char *ctl, unsigned phase) {
  for (;;) {
    char buf[32] = {0};
    FILE *f = fopen(ctl, "r");
    if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
    if (!strncmp(buf, "written ", 8) && (unsigned)atoi(buf + 8) == phase) return;
    usleep(5000);
  }
}

static const char *ctl_path;

static void change(const char *mode, unsigned phase, const char *dir) {
  /* A few single bytes everywhere (one page in 32 of the slots 0-2, 9-15). */
  for (int s = 0; s < NSLOT; s++) {
    if ((s >= 3 && s <= 8) || block_of[s] == UNMAPPED) continue;
    for (size_t pg = (phase * 7 + s) % 32; pg < SLOT_PAGES; pg += 32) touch(s, pg);
  }
  if (!strcmp(mode, "read")) {
    /* New contents for 64 pages of slot 3, written by the kernel. */
    char path[4096];
    snprintf(path, sizeof path, "%s/readsrc.%d", dir, getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror("open"); exit(2); }
    static unsigned char buf[PAGE];
    for (size_t pg = phase * 64; pg < phase * 64 + 64; pg++) {
      uint32_t v = ver[3][pg] + 1;
      content(buf, block_of[3], pg, v);
      if (write(fd, buf, PAGE) != PAGE) { perror("write"); exit(2); }
    }
    lseek(fd, 0, SEEK_SET);
    char *dst = page_at(3, phase * 64);
    size_t got = 0;
    while (got < 64 * PAGE) {
      ssize_t r = read(fd, dst + got, 64 * PAGE - got);
      if (r <= 0) { perror("read"); exit(2); }
      got += r;
    }
    for (size_t pg = phase * 64; pg < phase * 64 + 64; pg++) ver[3][pg]++;
    close(fd);
    unlink(path);
  } else if (!strcmp(mode, "dontneed")) {
    for (size_t pg = phase; pg < SLOT_PAGES; pg += 5) {
      if (madvise(page_at(4, pg), PAGE, MADV_DONTNEED)) { perror("madvise"); exit(2); }
      ver[4][pg] = ZAPPED;
    }
    if (phase == 2) {
      /* Pages zapped in phase 1 read again: the zero page. */
      volatile char sum = 0;
      for (size_t pg = 1; pg < SLOT_PAGES; pg += 5) sum += *(volatile char *)page_at(4, pg);
      (void)sum;
    }
  } else if (!strcmp(mode, "remap")) {
    /* Slot 5: unmapped and mapped again at the same place, new contents. */
    if (munmap(page_at(5, 0), SLOT)) { perror("munmap"); exit(2); }
    map_slot(5, next_block++);
    /* Slot 6 moves over slot 7 (whose old contents go); slot 6 anew. */
    void *p = mremap(page_at(6, 0), SLOT, SLOT, MREMAP_MAYMOVE | MREMAP_FIXED, page_at(7, 0));
    if (p == MAP_FAILED) { perror("mremap"); exit(2); }
    block_of[7] = block_of[6];
    memcpy(ver[7], ver[6], sizeof ver[6]);
    map_slot(6, next_block++);
  } else if (!strcmp(mode, "uffd")) {
    if (phase == 1) {
      uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
      if (uffd < 0) { perror("userfaultfd"); exit(2); }
      struct uffdio_api api = {.api = UFFD_API};
      if (ioctl(uffd, UFFDIO_API, &api)) { perror("UFFDIO_API"); exit(2); }
      struct uffdio_register reg = {.range = {(uintptr_t)page_at(8, 0), SLOT}, .mode = UFFDIO_REGISTER_MODE_MISSING};
      if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("UFFDIO_REGISTER"); exit(2); }
      printf("registered\n");
    } else if (phase == 2) {
      struct uffdio_range r = {(uintptr_t)page_at(8, 0), SLOT};
      if (ioctl(uffd, UFFDIO_UNREGISTER, &r)) { perror("UFFDIO_UNREGISTER"); exit(2); }
      printf("unregistered\n");
    }
    /* Its pages change too (they are all present: no fault). */
    for (size_t pg = phase; pg < SLOT_PAGES; pg += 16) touch(8, pg);
  } else if (!strcmp(mode, "pvw")) {
    size_t first = phase * 32, n = 32;
    unsigned char *src = malloc(n * PAGE);
    if (!src) { perror("malloc"); exit(2); }
    for (size_t i = 0; i < n; i++) content(src + i * PAGE, block_of[8], first + i, ver[8][first + i] + 1);
    printf("pvw %d %lu %lu %zu\n", getpid(), (unsigned long)src, (unsigned long)page_at(8, first), n * PAGE);
    fflush(stdout);
    wait_written(ctl_path, phase);
    for (size_t i = 0; i < n; i++) ver[8][first + i]++;
    free(src);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: dirtymem MODE CTL\n"); return 2; }
  const char *mode = argv[1], *ctl = argv[2];
  ctl_path = ctl;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", ctl);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0; else strcpy(dir, ".");
  poke = !strcmp(mode, "poke");
  if (!strcmp(mode, "aio")) {
    unsigned long aio_ctx = 0;
    if (syscall(SYS_io_setup, 1, &aio_ctx)) { perror("io_setup"); return 2; }
  }
  base = mmap((void *)0x300000000000UL, (size_t)NSLOT * SLOT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (base == MAP_FAILED) { perror("mmap"); return 2; }
  for (int s = 0; s < NSLOT; s++) { block_of[s] = s; fill_slot(s); }
  unsigned phase = 0;
  pid_t child = 0;
  printf("phase 0 done\n"); fflush(stdout);
  for (;;) {
    if (!check_all(phase, 0)) return 1;
    char buf[32] = {0};
    FILE *f = fopen(ctl, "r");
    if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
    if (!strncmp(buf, "end", 3)) {
      if (!check_all(phase, 1)) return 1;
      if (child > 0) {
        int st;
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st)) {
          printf("BAD child %d status %d\n", child, st); fflush(stdout);
          return 1;
        }
      }
      printf("%sOK phase %u\n", who, phase); fflush(stdout);
      return 0;
    }
    if (buf[0] && (unsigned)atoi(buf) > phase) {
      phase++;
      if (!strcmp(mode, "fork") && phase == 1) {
        fflush(stdout);
        child = fork();
        if (child < 0) { perror("fork"); return 2; }
        if (child == 0) { who = "child "; child = -1; }
      }
      change(mode, phase, dir);
      /* The child's own change, so that its memory differs from its parent's. */
      if (child == -1) for (size_t pg = 3; pg < SLOT_PAGES; pg += 64) touch(10, pg);
      printf("%sphase %u done\n", who, phase); fflush(stdout);
      continue;
    }
    usleep(20000);
  }
}
