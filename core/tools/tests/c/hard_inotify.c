/* THREADS threads call inotify_add_watch, each on a file of its own, over
 * and over (alternating masks: the watch descriptors stay the same) until
 * told to stop; then the first file is written and the events must arrive
 * on its watch, with the mask the last call set.
 * Usage: hard_inotify MAX_SECS THREADS
 * Output: "started", then RESULT (deterministic). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include "hard_common.h"

#define MAXT 16
static int fd, wd[MAXT];
static volatile int stop;
static long calls[MAXT], bad[MAXT];

static void *adder(void *a) {
  long i = (long)a;
  char path[64];
  snprintf(path, sizeof path, "watched/f%ld", i);
  while (!stop) {
    uint32_t mask = (calls[i] & 1) ? IN_MODIFY | IN_ATTRIB : IN_MODIFY;
    int w = inotify_add_watch(fd, path, mask);
    if (w != wd[i]) bad[i]++;
    calls[i]++;
  }
  /* End with the same mask in every run. */
  if (inotify_add_watch(fd, path, IN_MODIFY | IN_CLOSE_WRITE) != wd[i]) bad[i]++;
  return NULL;
}

int main(int argc, char **argv) {
  double max = argc > 1 ? atof(argv[1]) : 2;
  int n = argc > 2 ? atoi(argv[2]) : 2;
  if (n < 1 || n > MAXT) n = 2;
  mkdir("watched", 0700);
  fd = inotify_init1(IN_NONBLOCK);
  if (fd < 0) { perror("inotify_init1"); return 1; }
  for (int i = 0; i < n; i++) {
    char path[64];
    snprintf(path, sizeof path, "watched/f%d", i);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    wd[i] = inotify_add_watch(fd, path, IN_MODIFY);
    if (wd[i] < 0) { perror("inotify_add_watch"); return 1; }
  }
  pthread_t t[MAXT];
  for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, adder, (void *)i);
  printf("started\n");
  fflush(stdout);
  hard_wait_stop(max);
  stop = 1;
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  /* Drain what the loop left (nothing is written meanwhile), then write. */
  char buf[4096];
  while (read(fd, buf, sizeof buf) > 0) {}
  int f = open("watched/f0", O_WRONLY);
  if (write(f, "x", 1) != 1) return 3;
  close(f);
  hard_msleep(50);
  int modify = 0, close_write = 0, other = 0;
  ssize_t r;
  while ((r = read(fd, buf, sizeof buf)) > 0) {
    for (char *p = buf; p < buf + r;) {
      struct inotify_event *e = (struct inotify_event *)p;
      if (e->wd == wd[0] && (e->mask & IN_MODIFY)) modify++;
      else if (e->wd == wd[0] && (e->mask & IN_CLOSE_WRITE)) close_write++;
      else other++;
      p += sizeof *e + e->len;
    }
  }
  long nbad = 0;
  for (int i = 0; i < n; i++) {
    nbad += bad[i];
    if (bad[i]) printf("thread %d: %ld wrong wds of %ld calls\n", i, bad[i], calls[i]);
  }
  printf("RESULT inotify watches %d modify %d close_write %d other %d wrong wds %s\n", n, modify, close_write, other,
         nbad ? "yes" : "no");
  return 0;
}
