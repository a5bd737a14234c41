/* THREADS threads create and delete POSIX timers that notify a thread
 * (SIGEV_THREAD) in a tight loop until told to stop (at most MAX_CREATES in
 * all); every 1000th timer is armed for 1 ms and must call back.
 * While a file "pause" exists the threads hold no timer and wait; the
 * main thread then creates a file "paused" (so a checkpoint can be taken
 * with no timer alive; see hard_timerid.c for timers that are).
 * Usage: hard_timers MAX_SECS MAX_CREATES THREADS
 * Output: "started", then RESULT (deterministic). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "hard_common.h"

#define MAXT 16
static volatile int stop, pause_req, paused[MAXT];
static long creates[MAXT], failures[MAXT], missed[MAXT];
static long max_creates;
static sem_t fired[MAXT];

static void callback(union sigval v) { sem_post(&fired[v.sival_int]); }

static void *looper(void *a) {
  long i = (long)a;
  while (!stop) {
    if (pause_req || creates[i] >= max_creates) {
      paused[i] = 1;
      hard_msleep(5);
      continue;
    }
    paused[i] = 0;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = callback;
    sev.sigev_value.sival_int = (int)i;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) { failures[i]++; continue; }
    creates[i]++;
    if (creates[i] % 1000 == 0) {
      struct itimerspec its = {{0, 0}, {0, 1000000}};
      timer_settime(t, 0, &its, NULL);
      struct timespec dl;
      clock_gettime(CLOCK_REALTIME, &dl);
      dl.tv_sec += 10;
      int r;
      while ((r = sem_timedwait(&fired[i], &dl)) != 0 && errno == EINTR) {}
      if (r != 0) missed[i]++;
    }
    if (timer_delete(t) != 0) failures[i]++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  double max = argc > 1 ? atof(argv[1]) : 2;
  long total = argc > 2 ? atol(argv[2]) : 400000;
  int n = argc > 3 ? atoi(argv[3]) : 2;
  if (n < 1 || n > MAXT) n = 2;
  max_creates = total / n;
  for (int i = 0; i < n; i++) sem_init(&fired[i], 0, 0);
  pthread_t t[MAXT];
  for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, looper, (void *)i);
  printf("started\n");
  fflush(stdout);
  double t0 = hard_now();
  while (access("stop", F_OK) != 0 && hard_now() - t0 < max) {
    pause_req = access("pause", F_OK) == 0;
    int all = pause_req;
    for (int i = 0; i < n && all; i++) all = paused[i];
    if (all && access("paused", F_OK) != 0) close(open("paused", O_CREAT | O_WRONLY, 0600));
    if (!pause_req) unlink("paused");
    hard_msleep(20);
  }
  stop = 1;
  long fails = 0, miss = 0, created = 0;
  int ran = 1;
  for (int i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    fails += failures[i];
    miss += missed[i];
    created += creates[i];
    ran &= creates[i] > 1000;
    if (failures[i] || missed[i]) printf("thread %d: creates %ld failures %ld missed callbacks %ld\n", i, creates[i], failures[i], missed[i]);
  }
  fprintf(stderr, "hard_timers: %ld timers created\n", created);
  printf("RESULT timers %s\n", fails == 0 && miss == 0 && ran ? "ok" : "BAD");
  return 0;
}
