#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* Uses little stack before the checkpoint, a lot (8 MiB limit: ~6 MiB) after. */
static long deep(int n) { char buf[4096]; memset(buf, n, sizeof buf); return n == 0 ? buf[0] : deep(n - 1) + buf[n % 4096]; }
int main(void) { for (int i = 0; i < 20; i++) { printf("step %d\n", i); fflush(stdout); usleep(100000); } printf("RESULT %ld\n", deep(1500)); return 0; }
