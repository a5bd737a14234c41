/* Threads entering and leaving disabled sections (dmtcp_disable_ckpt /
 * dmtcp_enable_ckpt) as fast as they can, as a plugin's wrappers do around
 * every verb. Each thread marks itself inside a section in
 * sections_inside[], which the test's plugin (sections_plugin.c) reads
 * while the threads are suspended for a checkpoint: it must find every
 * mark clear. Runs until the file named by argv[1] exists, then checks
 * that the sections' shared count equals the sum of the threads' own and
 * prints both. */
#include <dmtcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#define THREADS 4

atomic_int sections_inside[THREADS];
static atomic_long shared_count;
static long own_count[THREADS];
static atomic_int stop;

static void *run(void *arg) {
  long t = (long)arg, n = 0;
  while (!atomic_load(&stop)) {
    if (dmtcp_disable_ckpt() != 1) {
      printf("dmtcp_disable_ckpt failed\n");
      return NULL;
    }
    atomic_store(&sections_inside[t], 1);
    for (volatile int k = 0; k < 20; k++) {
    }
    atomic_fetch_add(&shared_count, 1);
    n++;
    atomic_store(&sections_inside[t], 0);
    dmtcp_enable_ckpt();
  }
  own_count[t] = n;
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  pthread_t th[THREADS];
  for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, run, (void *)t);
  printf("ready\n");
  fflush(stdout);
  while (access(argv[1], F_OK) != 0) usleep(10000);
  atomic_store(&stop, 1);
  long sum = 0;
  for (int t = 0; t < THREADS; t++) {
    pthread_join(th[t], NULL);
    sum += own_count[t];
  }
  printf("sections %ld shared %ld %s\n", sum, atomic_load(&shared_count),
         sum == atomic_load(&shared_count) && sum > 0 ? "OK" : "MISMATCH");
  return 0;
}
