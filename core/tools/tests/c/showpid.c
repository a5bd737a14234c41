/* Prints getppid() and getpid() at every step. */
#include <stdio.h>
#include <unistd.h>
int main(void) {
  for (int i = 0; i < 20; i++) { printf("step %d ppid=%d pid=%d\n", i, (int)getppid(), (int)getpid()); fflush(stdout); usleep(100000); }
  printf("RESULT done\n");
  return 0;
}
