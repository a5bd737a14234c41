/* A POSIX timer with SIGEV_THREAD (glibc runs the callback on a helper
 * thread): it must keep firing after restarts. The program counts the
 * callbacks during a second run phase and reports whether they came.
 * Usage: evthread STEPS */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_long fired;

static void tick(union sigval v) {
    (void)v;
    atomic_fetch_add(&fired, 1);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = tick;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t)) { perror("timer_create"); return 1; }
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timer_settime(t, 0, &its, NULL);
    int stalled = 0;
    for (int i = 0; i < steps; i++) {
        long before = atomic_load(&fired);
        usleep(50000);
        if (atomic_load(&fired) == before) stalled++;
        printf("step %d\n", i);
        fflush(stdout);
    }
    printf("timer %s\n", stalled <= 2 ? "kept firing" : "STALLED");
    return 0;
}
