/* A thread waits for signals on a set holding every signal while the main
 * thread computes; at the end the main thread sends SIGUSR1 to the waiter.
 * The waiter must see SIGUSR1 and nothing else (a checkpoint must not
 * leave or take any signal of its own).
 * Usage: hard_sigwait sigwait|sigwaitinfo|sigtimedwait|sigsuspend
 * sigwait, sigwaitinfo, sigtimedwait: the set is sigfillset (the process
 * blocks every signal first, as programs with a signal thread do).
 * sigsuspend: the waiter suspends with a mask that blocks every signal but
 * SIGUSR1 (whose handler sets a flag).
 * Output: "step N" lines, then RESULT (deterministic). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *mode;
static volatile sig_atomic_t got_usr1;
static int others;          /* signals other than SIGUSR1 the waiter saw */
static int other_sig[8];

static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static void *waiter(void *a) {
  (void)a;
  sigset_t all;
  sigfillset(&all);
  for (;;) {
    int sig = -1;
    if (!strcmp(mode, "sigwait")) {
      if (sigwait(&all, &sig) != 0) continue;
    } else if (!strcmp(mode, "sigwaitinfo")) {
      siginfo_t si;
      sig = sigwaitinfo(&all, &si);
      if (sig < 0) continue;
    } else if (!strcmp(mode, "sigtimedwait")) {
      siginfo_t si;
      struct timespec t = {1, 0};
      sig = sigtimedwait(&all, &si, &t);
      if (sig < 0) continue; /* EAGAIN (timeout) or EINTR: wait again */
    } else { /* sigsuspend */
      sigset_t m;
      sigfillset(&m);
      sigdelset(&m, SIGUSR1);
      while (!got_usr1) sigsuspend(&m);
      sig = SIGUSR1;
    }
    if (sig == SIGUSR1) break;
    if (others < 8) other_sig[others] = sig;
    others++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  mode = argc > 1 ? argv[1] : "sigwait";
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  /* Block everything in every thread (a signal-handling thread's usual setup). */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  pthread_t w;
  pthread_create(&w, NULL, waiter, NULL);
  unsigned long long h = 1469598103934665603ULL;
  for (int step = 0; step < 30; step++) {
    for (int i = 0; i < 200000; i++) h = (h ^ (unsigned)(i + step)) * 1099511628211ULL;
    printf("step %d\n", step);
    fflush(stdout);
    struct timespec t = {0, 100 * 1000000L};
    while (nanosleep(&t, &t) != 0) {}
  }
  pthread_kill(w, SIGUSR1);
  pthread_join(w, NULL);
  printf("RESULT %s hash %llx waiter saw SIGUSR1 after %d other signal(s)", mode, h, others);
  for (int i = 0; i < others && i < 8; i++) printf(" %d", other_sig[i]);
  printf("\n");
  return 0;
}
