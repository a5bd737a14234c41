/* Signal handlers (with SA_ONSTACK on per-thread alternate stacks, and a
 * blocked-signal mask) must work the same after a restart. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t hits[2], on_alt[2];
static char *alt[2];
static __thread int who = -1;

static void handler(int sig) {
  (void)sig;
  char probe;
  int w = who < 0 ? 0 : who;
  hits[w]++;
  if (&probe >= alt[w] && &probe < alt[w] + SIGSTKSZ * 4) on_alt[w]++;
}

static void setup_altstack(int w) {
  alt[w] = malloc(SIGSTKSZ * 4);
  stack_t ss = {.ss_sp = alt[w], .ss_size = SIGSTKSZ * 4, .ss_flags = 0};
  if (sigaltstack(&ss, 0) != 0) { perror("sigaltstack"); exit(2); }
  who = w;
}

static void *thread(void *a) {
  (void)a;
  setup_altstack(1);
  sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR1);
  pthread_sigmask(SIG_UNBLOCK, &s, 0);
  for (int i = 0; i < 30; i++) { raise(SIGUSR1); usleep(100000); }
  return 0;
}

int main(void) {
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler; sa.sa_flags = SA_ONSTACK | SA_RESTART; sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, 0);
  signal(SIGHUP, SIG_IGN);
  setup_altstack(0);
  /* SIGPROF stays blocked in the main thread the whole time. */
  sigset_t block; sigemptyset(&block); sigaddset(&block, SIGPROF);
  sigprocmask(SIG_BLOCK, &block, 0);
  pthread_t t; pthread_create(&t, 0, thread, 0);
  for (int i = 0; i < 25; i++) {
    raise(SIGUSR1);
    kill(getpid(), SIGHUP);           /* ignored: must stay ignored */
    sigset_t cur; sigprocmask(SIG_BLOCK, 0, &cur);
    printf("step %d mask_ok=%d\n", i, sigismember(&cur, SIGPROF)); fflush(stdout);
    usleep(100000);
  }
  pthread_join(t, 0);
  printf("RESULT main=%d/%d thread=%d/%d\n", (int)hits[0], (int)on_alt[0], (int)hits[1], (int)on_alt[1]);
  return 0;
}
