/* A private mapping of a file, written to, must behave after a restart as
 * it did before: its written pages hold what the program wrote, and the
 * pages it never wrote the file's bytes; madvise(MADV_DONTNEED) of a
 * written page brings back the file's bytes (the program's copy is
 * dropped), and mremap growing the mapping brings in the file's next
 * pages. The file ($1, made here: 8 MiB) is mapped 4 MiB at first.
 * Waits for the file "go1" (created after the restart), checks, prints
 * "privfile ok", or BAD and exits 1. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define FILE_LEN (8 << 20)
#define MAP_LEN (4 << 20)

static unsigned char in_file(size_t off) { return (unsigned char)(off * 7 + (off >> 12) * 13 + 1); }

/* Pages the program writes: every 8th page of the first MiB, whole. */
static int written(size_t off) { return off < (1 << 20) && (off / PAGE) % 8 == 0; }
static unsigned char mine(size_t off) { return (unsigned char)(0xc3 ^ off); }

static int check(const unsigned char *m, size_t len, int dropped, const char *what) {
  for (size_t i = 0; i < len; i++) {
    unsigned char want = written(i) && !dropped ? mine(i) : in_file(i);
    if (m[i] != want) {
      printf("BAD %s: offset %zu holds %d, not %d\n", what, i, m[i], want);
      fflush(stdout);
      return 0;
    }
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) { perror("open"); return 1; }
  static unsigned char buf[FILE_LEN];
  for (size_t i = 0; i < FILE_LEN; i++) buf[i] = in_file(i);
  if (write(fd, buf, FILE_LEN) != FILE_LEN) { perror("write"); return 1; }
  unsigned char *m = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) { perror("mmap"); return 1; }
  close(fd);
  for (size_t i = 0; i < MAP_LEN; i++)
    if (written(i)) m[i] = mine(i);
  if (!check(m, MAP_LEN, 0, "before the checkpoint")) return 1;
  printf("waiting for go1\n");
  fflush(stdout);
  while (access("go1", F_OK) != 0) usleep(20000);
  if (!check(m, MAP_LEN, 0, "after the restart")) return 1;
  /* The program's copies of the written pages dropped: the file's bytes. */
  if (madvise(m, 1 << 20, MADV_DONTNEED) != 0) { printf("BAD madvise\n"); return 1; }
  if (!check(m, MAP_LEN, 1, "after MADV_DONTNEED")) return 1;
  for (size_t i = 0; i < MAP_LEN; i++)
    if (written(i)) m[i] = mine(i);
  /* Grown: the file's next 4 MiB come in. */
  unsigned char *g = mremap(m, MAP_LEN, FILE_LEN, MREMAP_MAYMOVE);
  if (g == MAP_FAILED) { printf("BAD mremap\n"); return 1; }
  if (!check(g, FILE_LEN, 0, "after mremap")) return 1;
  printf("privfile ok\n");
  return 0;
}
