/* A thread waits long on a pipe with ppoll, pselect or epoll_pwait and a
 * signal mask that blocks every signal (timeout 20 s, in a loop); the main
 * thread computes and sends it one byte per step, then 'q'. The waiter sums
 * what it reads.
 * Usage: hard_pmask ppoll|pselect|epoll_pwait
 * Output: "step N" lines, then RESULT (deterministic). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

static const char *mode;
static int pfd[2];
static long sum, nbytes, wakeups_timeout;

static int wait_readable(int ep) {
  sigset_t all;
  sigfillset(&all);
  if (!strcmp(mode, "ppoll")) {
    struct pollfd p = {pfd[0], POLLIN, 0};
    struct timespec t = {20, 0};
    return ppoll(&p, 1, &t, &all);
  } else if (!strcmp(mode, "pselect")) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(pfd[0], &r);
    struct timespec t = {20, 0};
    return pselect(pfd[0] + 1, &r, NULL, NULL, &t, &all);
  } else {
    struct epoll_event ev;
    return epoll_pwait(ep, &ev, 1, 20000, &all);
  }
}

static void *waiter(void *a) {
  (void)a;
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = pfd[0]};
  epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev);
  for (;;) {
    int n = wait_readable(ep);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { perror(mode); exit(1); }
    if (n == 0) { wakeups_timeout++; continue; }
    char c;
    if (read(pfd[0], &c, 1) != 1) { perror("read"); exit(1); }
    if (c == 'q') break;
    sum += c;
    nbytes++;
  }
  close(ep);
  return NULL;
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "ppoll";
  if (pipe(pfd) != 0) return 2;
  pthread_t w;
  pthread_create(&w, NULL, waiter, NULL);
  unsigned long long h = 1469598103934665603ULL;
  for (int step = 0; step < 30; step++) {
    for (int i = 0; i < 200000; i++) h = (h ^ (unsigned)(i + step)) * 1099511628211ULL;
    char c = 'A' + step % 26;
    if (write(pfd[1], &c, 1) != 1) return 3;
    printf("step %d\n", step);
    fflush(stdout);
    struct timespec t = {0, 100 * 1000000L};
    while (nanosleep(&t, &t) != 0) {}
  }
  if (write(pfd[1], "q", 1) != 1) return 3;
  pthread_join(w, NULL);
  printf("RESULT %s hash %llx bytes %ld sum %ld\n", mode, h, nbytes, sum);
  return 0;
}
