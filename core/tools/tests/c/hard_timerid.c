/* A POSIX timer made after many others were made and deleted (so its id
 * is large: the kernel hands ids out in increasing order), firing
 * SIGRTMIN every 20 ms, must keep firing after a restart and be deletable.
 * Usage: hard_timerid BEFORE
 * Output: "step N" lines, then RESULT (deterministic). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "hard_common.h"

static volatile sig_atomic_t fired;
static void on_rt(int s) { (void)s; fired++; }

int main(int argc, char **argv) {
  long before = argc > 1 ? atol(argv[1]) : 120000;
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGRTMIN;
  for (long i = 0; i < before; i++) {
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) { perror("timer_create"); return 1; }
    timer_delete(t);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_rt;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGRTMIN, &sa, NULL);
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) { perror("timer_create"); return 1; }
  struct itimerspec its = {{0, 20000000}, {0, 20000000}};
  timer_settime(t, 0, &its, NULL);
  int last_fired = 0, late_ok = 1;
  for (int step = 0; step < 20; step++) {
    hard_msleep(100);
    printf("step %d\n", step);
    fflush(stdout);
    /* In the last steps (after any restart) the timer must still fire. */
    if (step >= 12) {
      if (fired == last_fired) late_ok = 0;
    }
    last_fired = fired;
  }
  struct itimerspec cur;
  int get_ok = timer_gettime(t, &cur) == 0 && (cur.it_interval.tv_nsec == 20000000);
  int del_ok = timer_delete(t) == 0;
  printf("RESULT timer %s fires-late %s gettime %s delete %s\n", (long)t > 1000 ? "id-large" : "id-small", late_ok ? "yes" : "NO",
         get_ok ? "ok" : "BAD", del_ok ? "ok" : "BAD");
  return 0;
}
