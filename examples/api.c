/* Uses the program interface of include/dmtcp.h: requests its own
 * checkpoint, learns whether it resumed or was restarted, and holds
 * checkpoints off during a critical section. Runs with or without the
 * checkpointer. Build: cc -I include -o api examples/api.c */
#include <stdio.h>
#include <unistd.h>
#include <dmtcp.h>

static const char *name(int r) {
  switch (r) {
    case DMTCP_AFTER_CHECKPOINT: return "after-checkpoint";
    case DMTCP_AFTER_RESTART: return "after-restart";
    case DMTCP_NOT_PRESENT: return "not-present";
    default: return "error";
  }
}

int main(void) {
  printf("enabled=%d generation=%d\n", dmtcp_is_enabled(), dmtcp_get_generation());
  fflush(stdout);
  long sum = 0;
  for (int step = 0; step < 14; step++) {
    sum += step * step;
    printf("step %d\n", step);
    fflush(stdout);
    if (step == 3) {
      int r = dmtcp_checkpoint();
      printf("checkpoint returned %s generation=%d\n", name(r), dmtcp_get_generation());
      fflush(stdout);
    }
    if (step == 7) {
      int peers = -1, running = -1;
      int ok = dmtcp_get_coordinator_status(&peers, &running);
      printf("status %s peers=%d\n", ok == 1 ? "ok" : name(ok), peers);
      dmtcp_disable_ckpt();
      printf("section begin\n");
      fflush(stdout);
      usleep(1500000);
      printf("section end\n");
      fflush(stdout);
      dmtcp_enable_ckpt();
    }
    usleep(150000);
  }
  printf("RESULT %ld\n", sum);
  return 0;
}
