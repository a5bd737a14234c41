/* vfork then exec of /bin/true in a tight loop until told to stop; the
 * parent checks each exit status. While a file "pause" exists the loop
 * waits (no child alive) and a file "paused" says so.
 * Usage: hard_vfork MAX_SECS execl|execve
 * Output: "started", then RESULT (deterministic). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include "hard_common.h"

extern char **environ;

int main(int argc, char **argv) {
  double max = argc > 1 ? atof(argv[1]) : 2;
  const char *mode = argc > 2 ? argv[2] : "execl";
  int use_execve = !strcmp(mode, "execve");
  printf("started\n");
  fflush(stdout);
  long rounds = 0, bad = 0;
  int last = 0, last_errno = 0;
  pid_t last_r = 0, last_c = 0;
  double t0 = hard_now();
  while (hard_now() - t0 < max) {
    if ((rounds & 7) == 0) {
      if (access("stop", F_OK) == 0) break;
      if (access("pause", F_OK) == 0) {
        close(open("paused", O_CREAT | O_WRONLY, 0600));
        while (access("pause", F_OK) == 0 && access("stop", F_OK) != 0) hard_msleep(20);
        unlink("paused");
        continue;
      }
    }
    pid_t c = vfork();
    if (c < 0) { perror("vfork"); return 1; }
    if (c == 0) {
      if (use_execve) {
        char *args[] = {"true", NULL};
        execve("/bin/true", args, environ);
      } else {
        execl("/bin/true", "true", (char *)NULL);
      }
      _exit(127);
    }
    int st;
    pid_t r;
    while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR) {}
    if (r != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      bad++;
      last = r == c ? st : 0;
      last_errno = r == c ? 0 : errno;
      last_r = r;
      last_c = c;
    }
    rounds++;
  }
  if (bad)
    printf("%ld bad of %ld, last: waitpid(%d) = %d (%s), status %#x\n", bad, rounds, (int)last_c, (int)last_r,
           last_errno ? strerror(last_errno) : "-", last);
  printf("RESULT vfork %s %s\n", mode, bad == 0 && rounds > 0 ? "ok" : "BAD");
  return 0;
}
