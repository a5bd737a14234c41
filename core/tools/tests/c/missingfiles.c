/* Files that may be gone at restart. Usage: missingfiles DIR TMPDIR STEPS
 * DIR/in.txt (made by the test: 8-byte records) is read, one record per
 * step, through a read-only fd; DIR/out/out.log gets a line per step
 * (O_WRONLY|O_APPEND); TMPDIR/session.dat (made here, 4 KiB) is re-read
 * each step through an O_RDWR fd and summed.
 * Output per step: "step N rec <record> sum S" (deterministic). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  char p[4096];
  snprintf(p, sizeof p, "%s/in.txt", argv[1]);
  int in = open(p, O_RDONLY);
  if (in < 0) { perror(p); return 1; }
  snprintf(p, sizeof p, "%s/out", argv[1]);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/out/out.log", argv[1]);
  int out = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (out < 0) { perror(p); return 1; }
  mkdir(argv[2], 0700);
  snprintf(p, sizeof p, "%s/session.dat", argv[2]);
  int ses = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (ses < 0) { perror(p); return 1; }
  unsigned char buf[4096];
  for (int i = 0; i < 4096; i++) buf[i] = (unsigned char)(i * 7 + 3);
  if (write(ses, buf, sizeof buf) != sizeof buf) { perror("write"); return 1; }
  int steps = atoi(argv[3]);
  for (int s = 1; s <= steps; s++) {
    char rec[9] = {0};
    ssize_t n = read(in, rec, 8);
    if (n != 8) { printf("step %d: read in.txt: %zd\n", s, n); return 1; }
    rec[7] = 0;
    memset(buf, 0, sizeof buf);
    n = pread(ses, buf, sizeof buf, 0);
    if (n != (ssize_t)sizeof buf) { printf("step %d: read session.dat: %zd\n", s, n); return 1; }
    unsigned long sum = 0;
    for (int i = 0; i < 4096; i++) sum = sum * 31 + buf[i];
    char line[64];
    int k = snprintf(line, sizeof line, "step %d\n", s);
    if (write(out, line, k) != k) { printf("step %d: write out.log failed\n", s); return 1; }
    printf("step %d rec %s sum %lu\n", s, rec, sum);
    fflush(stdout);
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}
