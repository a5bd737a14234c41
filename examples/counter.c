/* Demo program: counts, keeping a running checksum in memory, and prints
 * one line per step. A restarted copy continues from where it was. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 20;
  unsigned long sum = 0;
  unsigned *data = malloc(1 << 24);
  for (int i = 0; i < (1 << 22); i++) data[i] = i * 2654435761u;
  for (int i = 1; i <= steps; i++) {
    for (int j = 0; j < (1 << 22); j += 1024) sum += data[j] ^ (unsigned)i;
    printf("step %2d of %d  checksum %lu\n", i, steps, sum);
    fflush(stdout);
    sleep(1);
  }
  printf("done: checksum %lu\n", sum);
  return 0;
}
