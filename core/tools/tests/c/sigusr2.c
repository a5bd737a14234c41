/* A program that uses SIGUSR2 itself (sigaction and signal()), and a
 * thread that blocks every signal: checkpoints must still work, and the
 * program's own signals must still reach its handlers. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t usr2, usr1;
static void on_usr2(int s) { (void)s; usr2++; }
static void on_usr1(int s) { (void)s; usr1++; }

static void *blocker(void *a) {
  (void)a;
  sigset_t all; sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, 0);
  volatile unsigned long spin = 0;
  for (int i = 0; i < 40; i++) { for (int j = 0; j < 1000000; j++) spin += j; usleep(50000); }
  return (void *)(spin & 1);
}

int main(void) {
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr2; sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR2, &sa, 0);
  signal(SIGUSR1, on_usr1);
  sigset_t all; sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, 0);     /* block everything ... */
  sigset_t some; sigemptyset(&some); sigaddset(&some, SIGUSR2); sigaddset(&some, SIGUSR1);
  sigprocmask(SIG_UNBLOCK, &some, 0);  /* ... but the two we use */
  pthread_t t; pthread_create(&t, 0, blocker, 0);
  for (int i = 0; i < 25; i++) {
    raise(SIGUSR2);
    if (i % 2) kill(getpid(), SIGUSR1);
    struct sigaction cur; sigaction(SIGUSR2, 0, &cur);
    printf("step %d own_handler=%d\n", i, cur.sa_handler == on_usr2); fflush(stdout);
    usleep(100000);
  }
  pthread_join(t, 0);
  printf("RESULT usr2=%d usr1=%d\n", (int)usr2, (int)usr1);
  return 0;
}
