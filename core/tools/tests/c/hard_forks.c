/* THREADS threads fork in a loop at the same time until told to stop: each
 * child exits at once with a code made of its thread and round numbers,
 * the parent thread waits for it and checks the code.
 * Usage: hard_forks MAX_SECS THREADS
 * Output: "started", then RESULT (deterministic). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include "hard_common.h"

#define MAXT 8
static volatile int stop;
static long rounds[MAXT], bad[MAXT];
static int last_bad_status[MAXT];

static void *forker(void *a) {
  long i = (long)a;
  while (!stop) {
    int code = (int)((i * 31 + rounds[i]) % 200);
    pid_t c = fork();
    if (c < 0) { perror("fork"); bad[i]++; hard_msleep(10); continue; }
    if (c == 0) _exit(code);
    int st;
    pid_t r;
    while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR) {}
    if (r != c || !WIFEXITED(st) || WEXITSTATUS(st) != code) {
      bad[i]++;
      last_bad_status[i] = r != c ? -1 : st;
    }
    rounds[i]++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  double max = argc > 1 ? atof(argv[1]) : 2;
  int n = argc > 2 ? atoi(argv[2]) : 2;
  if (n > MAXT) n = MAXT;
  pthread_t t[MAXT];
  for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, forker, (void *)i);
  printf("started\n");
  fflush(stdout);
  hard_wait_stop(max);
  stop = 1;
  long total = 0, nbad = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    total += rounds[i];
    nbad += bad[i];
    if (bad[i]) {
      int st = last_bad_status[i];
      printf("thread %d: %ld bad of %ld forks, last: %s %d\n", i, bad[i], rounds[i],
             st < 0 ? "waitpid failed" : WIFSIGNALED(st) ? "killed by signal" : "exit code",
             st < 0 ? 0 : WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
  }
  printf("RESULT forks %s\n", nbad == 0 && total >= n ? "ok" : "BAD");
  return 0;
}
