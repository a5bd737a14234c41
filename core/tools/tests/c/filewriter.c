/* Writes numbered records to a file and reads earlier ones back through a
 * second descriptor with its own offset: both offsets must survive. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "records.txt";
  int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int r = open(path, O_RDONLY);
  int dn = open("/dev/null", O_WRONLY);
  if (w < 0 || r < 0 || dn < 0) { perror("open"); return 2; }
  unsigned long sum = 0;
  for (int i = 0; i < 30; i++) {
    char rec[64]; int n = snprintf(rec, sizeof rec, "record %04d %08x\n", i, i * 2654435761u);
    if (write(w, rec, n) != n) return 3;
    if (write(dn, rec, n) != n) return 3;
    if (i % 2 == 1) {
      char buf[64]; ssize_t k = read(r, buf, n);
      for (ssize_t j = 0; j < k; j++) sum = sum * 31 + (unsigned char)buf[j];
    }
    printf("step %d\n", i); fflush(stdout);
    usleep(100000);
  }
  printf("RESULT sum=%lu wpos=%ld rpos=%ld\n", sum, (long)lseek(w, 0, SEEK_CUR), (long)lseek(r, 0, SEEK_CUR));
  unlink(path);
  return 0;
}
