/* Prints its cwd (relative to where it started), umask, a resource limit
 * and an environment variable at every step: a restart from another
 * directory, with another umask and environment, must not change them. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
  char start[PATH_MAX];
  if (!getcwd(start, sizeof start)) return 2;
  mkdir("inner", 0755);
  if (chdir("inner") != 0) return 2;
  umask(027);
  struct rlimit rl = {100, 4096};
  getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = 100; setrlimit(RLIMIT_NOFILE, &rl);
  setenv("DEMO_VAR", "set-before-checkpoint", 1);
  for (int i = 0; i < 25; i++) {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return 3;
    mode_t m = umask(0); umask(m);
    getrlimit(RLIMIT_NOFILE, &rl);
    const char *rel = strncmp(cwd, start, strlen(start)) == 0 ? cwd + strlen(start) : cwd;
    printf("step %d cwd=%s umask=%03o nofile=%ld env=%s\n", i, rel, (unsigned)m, (long)rl.rlim_cur, getenv("DEMO_VAR"));
    fflush(stdout);
    usleep(100000);
  }
  printf("RESULT ok\n");
  return 0;
}
