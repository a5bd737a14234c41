/* Shared by the hard_* programs: run until a file named "stop" appears in
 * the current directory, or until MAX seconds have passed (bare runs). */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static inline double hard_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static inline void hard_msleep(int ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0) {}
}

/* Wait (polling every 20 ms) until "stop" exists or max_secs passed. */
static inline void hard_wait_stop(double max_secs) {
  double t0 = hard_now();
  while (access("stop", F_OK) != 0 && hard_now() - t0 < max_secs) hard_msleep(20);
}
