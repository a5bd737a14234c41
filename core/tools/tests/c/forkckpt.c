/* Forked checkpointing: two threads keep rewriting their own memory, the
 * main thread writes a MAP_SHARED region that a forked child (one every
 * few steps) updates too, a SIGCHLD handler counts children, and the main
 * loop polls waitpid(-1, WNOHANG): any pid it did not fork itself (a
 * checkpoint's image writer) is reported. Deterministic output: step
 * lines, then the checksums and counts.
 * argv[1]: steps (default 600); argv[2]: MiB per thread (default 8);
 * argv[3] "dontfork": mark 1 MiB of a thread's memory MADV_DONTFORK. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHM_WORDS (1 << 17) /* 1 MiB */
static volatile sig_atomic_t sigchld_count;
static uint64_t *shm;
static uint64_t *buf[2];
static size_t words;
static int steps;
static pthread_barrier_t bar;
static volatile int cur_step;
static int unexpected;

static void on_chld(int s) { (void)s; sigchld_count++; }

static void *worker(void *a) {
  long id = (long)a;
  uint64_t *b = buf[id];
  for (int s = 0; s < steps; s++) {
    pthread_barrier_wait(&bar);
    for (size_t i = 0; i < words; i++)
      b[i] = b[i] * 6364136223846793005ULL + (uint64_t)s + i + (uint64_t)id;
    pthread_barrier_wait(&bar);
  }
  return NULL;
}

static uint64_t sum(const uint64_t *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static void poll_children(pid_t mine) {
  int st;
  pid_t p;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
    if (p != mine) { unexpected++; printf("UNEXPECTED CHILD %d\n", p); fflush(stdout); }
  }
}

int main(int argc, char **argv) {
  steps = argc > 1 ? atoi(argv[1]) : 600;
  size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 8;
  words = mib * (1 << 20) / 8;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_chld;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGCHLD, &sa, NULL);
  shm = mmap(NULL, SHM_WORDS * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED) return 2;
  for (int t = 0; t < 2; t++) {
    buf[t] = malloc(words * 8);
    if (!buf[t]) return 2;
    for (size_t i = 0; i < words; i++) buf[t][i] = i * (t + 1);
  }
  if (argc > 3 && strcmp(argv[3], "dontfork") == 0) {
    /* Memory a forked child would not have (as verbs libraries may mark
     * registered memory): the checkpointer must not fork its writer. */
    uintptr_t a = ((uintptr_t)buf[0] + 4095) & ~(uintptr_t)4095;
    if (madvise((void *)a, 1 << 20, MADV_DONTFORK) != 0) return 2;
  }
  pthread_barrier_init(&bar, NULL, 3);
  pthread_t th[2];
  for (long t = 0; t < 2; t++) pthread_create(&th[t], NULL, worker, (void *)t);
  int forked = 0;
  for (int s = 0; s < steps; s++) {
    cur_step = s;
    pthread_barrier_wait(&bar);
    for (int k = 0; k < 64; k++) shm[(s * 64 + k) % SHM_WORDS] += (uint64_t)s * 31 + k;
    pthread_barrier_wait(&bar);
    if (s % 10 == 5) {
      pid_t c = fork();
      if (c == 0) {
        for (int k = 0; k < 256; k++) shm[(s * 7 + k * 13) % SHM_WORDS] ^= (uint64_t)s << 8 | k;
        _exit(s % 7);
      }
      forked++;
      int st = 0;
      pid_t w;
      while ((w = waitpid(-1, &st, 0)) != c) {
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) { printf("waitpid: %s\n", strerror(errno)); return 3; }
        unexpected++;
        printf("UNEXPECTED CHILD %d\n", w);
      }
      if (!WIFEXITED(st) || WEXITSTATUS(st) != s % 7) { printf("child status %d\n", st); return 3; }
    }
    poll_children(0);
    printf("step %d\n", s);
    fflush(stdout);
    struct timespec ts = {0, 5 * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
  }
  for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
  poll_children(0);
  /* No child left: the checkpointer's writers are not ours to see. */
  int st;
  pid_t last = waitpid(-1, &st, WNOHANG);
  printf("after all: %s\n", last < 0 && errno == ECHILD ? "ECHILD" : "a child is left");
  printf("threads %016llx %016llx\n", (unsigned long long)sum(buf[0], words),
         (unsigned long long)sum(buf[1], words));
  printf("shared %016llx\n", (unsigned long long)sum(shm, SHM_WORDS));
  printf("children %d sigchld %s unexpected %d\n", forked,
         sigchld_count >= forked && sigchld_count <= forked ? "exact" : "wrong", unexpected);
  if (sigchld_count != forked) printf("sigchld %d\n", (int)sigchld_count);
  return 0;
}
