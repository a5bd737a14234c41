/* A process with N threads (64 KiB stacks) all blocked on a condition
 * variable, and (CHILD 1) a forked child of it waiting on a pipe. The
 * threads are released when a file "go" appears (or at once with "auto"),
 * joined, then the process computes in steps and tells the child to finish.
 * Usage: hard_manythreads N CHILD [auto]
 * Output: "ready N", "joined N", "step K" lines, RESULT (deterministic). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include "hard_common.h"

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER, all_ready = PTHREAD_COND_INITIALIZER;
static int ready, go, total;

static void *parked(void *a) {
  (void)a;
  pthread_mutex_lock(&m);
  if (++ready == total) pthread_cond_signal(&all_ready);
  while (!go) pthread_cond_wait(&cv, &m);
  pthread_mutex_unlock(&m);
  return NULL;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 4200;
  total = n;
  int with_child = argc > 2 && atoi(argv[2]) != 0;
  int automatic = argc > 3 && !strcmp(argv[3], "auto");
  int p[2];
  if (pipe(p) != 0) return 2;
  pid_t child = with_child ? fork() : 0;
  if (!with_child) child = -2;
  if (child == -1) { perror("fork"); return 1; }
  if (child == 0) {
    close(p[1]);
    char c = 0;
    ssize_t r;
    while ((r = read(p[0], &c, 1)) < 0 && errno == EINTR) {}
    _exit(r == 1 && c == 'q' ? 42 : 1);
  }
  close(p[0]);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setstacksize(&at, 64 << 10);
  pthread_t *t = calloc(n, sizeof *t);
  for (int i = 0; i < n; i++) {
    int e = pthread_create(&t[i], &at, parked, NULL);
    if (e) { fprintf(stderr, "pthread_create %d: %s\n", i, strerror(e)); return 1; }
  }
  pthread_mutex_lock(&m);
  while (ready < n) pthread_cond_wait(&all_ready, &m);
  pthread_mutex_unlock(&m);
  printf("ready %d\n", n);
  fflush(stdout);
  if (!automatic) {
    double t0 = hard_now();
    while (access("go", F_OK) != 0 && hard_now() - t0 < 120) hard_msleep(20);
  }
  pthread_mutex_lock(&m);
  go = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&m);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  printf("joined %d\n", n);
  fflush(stdout);
  unsigned long long h = 1469598103934665603ULL;
  for (int step = 0; step < 15; step++) {
    for (int i = 0; i < 100000; i++) h = (h ^ (unsigned)(i + step)) * 1099511628211ULL;
    printf("step %d\n", step);
    fflush(stdout);
    hard_msleep(100);
  }
  if (!with_child) {
    printf("RESULT hash %llx\n", h);
    return 0;
  }
  if (write(p[1], "q", 1) != 1) return 3;
  int st;
  while (waitpid(child, &st, 0) < 0 && errno == EINTR) {}
  printf("RESULT hash %llx child %s %d\n", h, WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
  return 0;
}
