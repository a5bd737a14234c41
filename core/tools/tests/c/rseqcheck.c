/* Restored threads keep glibc's rseq registration. The program re-execs
 * itself with rseq turned on (as a process started by ssh or an MPI
 * launcher, without dmtcp_launch's GLIBC_TUNABLES, would run), then two
 * threads check, step after step, that their rseq area is registered with
 * the kernel: registering it again must fail with EBUSY. A thread restored
 * without its registration would find the call succeed. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

static int lost[2];
static volatile int done;

static int registered(void) {
  void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
  long r = syscall(SYS_rseq, area, 32, 0, 0x53053053);
  return r == -1 && errno == EBUSY;
}

static void *worker(void *arg) {
  int me = (int)(long)arg;
  while (!done) {
    if (!registered()) lost[me]++;
    usleep(20000);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (!getenv("RSEQ_CHILD")) {
    setenv("RSEQ_CHILD", "1", 1);
    setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=1", 1);
    execv("/proc/self/exe", argv);
    perror("execv");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("glibc registers rseq: %s\n", __rseq_size > 0 ? "yes" : "no");
  pthread_t t;
  pthread_create(&t, NULL, worker, (void *)1L);
  int steps = argc > 1 ? atoi(argv[1]) : 40;
  for (int i = 0; i < steps; i++) {
    if (!registered()) lost[0]++;
    printf("step %d\n", i);
    usleep(50000);
  }
  done = 1;
  pthread_join(t, NULL);
  printf("RESULT lost main %d thread %d\n", lost[0], lost[1]);
  return 0;
}
