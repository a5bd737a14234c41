/* A program that manages its fds the way daemons and shells do: it opens
 * many files (past fd 830), closes every fd above 2 with close(), then
 * with closefrom() and close_range(), and opens files again; between those
 * it is checkpointed. Every file it holds must still be open after a
 * restart, and its results must match a bare run. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N 900
static int fds[N];

static int open_all(void) {
  for (int i = 0; i < N; i++) {
    fds[i] = open("/dev/null", O_RDONLY);
    if (fds[i] < 0) return -1;
  }
  return 0;
}

static int check_all(void) {
  int bad = 0;
  char c;
  for (int i = 0; i < N; i++)
    if (fcntl(fds[i], F_GETFD) < 0 || read(fds[i], &c, 1) != 0) bad++;
  return bad;
}

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 40;
  setvbuf(stdout, NULL, _IOLBF, 0);
  unsigned long sum = 0;
  for (int round = 0; round < 3; round++) {
    if (open_all() != 0) { perror("open"); return 2; }
    for (int s = 0; s < steps; s++) {
      sum = sum * 31 + (unsigned)(round * 1000 + s);
      printf("round %d step %d bad %d\n", round, s, check_all());
      usleep(50000);
    }
    if (round == 0)
      for (int fd = 3; fd < 1024; fd++) close(fd);
    else if (round == 1)
      closefrom(3);
    else
      close_range(3, ~0U, 0);
    printf("round %d closed\n", round);
  }
  printf("RESULT %lu\n", sum);
  return 0;
}
