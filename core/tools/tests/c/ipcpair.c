/* A parent and a child that talk over a pipe, a socketpair and shared
 * memory, and wait for each other only with wait() (no pid): a job that
 * must come back whole after a restart without a pid namespace. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 200;
  int p[2], s[2];
  if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, s)) return 2;
  volatile long *shared = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (fork() == 0) {
    close(p[1]);
    close(s[0]);
    long v;
    while (read(p[0], &v, sizeof v) == sizeof v && v >= 0) {
      *shared += v;
      long r = v * v;
      if (write(s[1], &r, sizeof r) != sizeof r) _exit(3);
    }
    _exit(7);
  }
  close(p[0]);
  close(s[1]);
  long sum = 0;
  for (long i = 1; i <= rounds; i++) {
    if (write(p[1], &i, sizeof i) != sizeof i) return 4;
    long r;
    if (read(s[0], &r, sizeof r) != sizeof r) return 5;
    sum += r;
    if (i % 10 == 0) printf("round %ld sum %ld shared %ld\n", i, sum, *shared);
    usleep(20000);
  }
  long quit = -1;
  if (write(p[1], &quit, sizeof quit) != sizeof quit) return 6;
  int st = 0;
  wait(&st);
  printf("child exit %d\nRESULT %ld %ld\n", WEXITSTATUS(st), sum, *shared);
  return 0;
}
