/* A periodic timerfd read only now and then, so an expiration is almost
 * always pending unread: each blocking read must still return (a timer
 * that a restart left disarmed would hang here).
 * Usage: timerfd ITERATIONS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    int t = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timerfd_settime(t, 0, &its, NULL);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        usleep(40000);
        uint64_t v;
        if (read(t, &v, 8) != 8) { printf("read failed\n"); return 1; }
        total += v;
        printf("iter %d\n", i);
        fflush(stdout);
    }
    printf("done %s\n", total >= (uint64_t)n ? "ticking" : "STOPPED");
    return 0;
}
