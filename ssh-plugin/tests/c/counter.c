/* Prints "<prefix> <i>" for i in 1..=n, one line every `ms` milliseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
  const char *prefix = argc > 1 ? argv[1] : "line";
  int n = argc > 2 ? atoi(argv[2]) : 100;
  int ms = argc > 3 ? atoi(argv[3]) : 10;
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  for (int i = 1; i <= n; i++) {
    printf("%s %d\n", prefix, i);
    fflush(stdout);
    nanosleep(&t, NULL);
  }
  return 0;
}
