/* A POSIX timer with SIGEV_THREAD (glibc runs the callback on a helper
 * thread): it must keep firing after restarts. At the end the program
 * waits for ten more callbacks and reports whether they came.
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
    for (int i = 0; i < steps; i++) {
        usleep(50000);
        printf("step %d\n", i);
        fflush(stdout);
    }
    /* After every restart the timer must still fire: ten more callbacks,
     * waited for up to 5 s (no timing assumption about how soon after a
     * restart, under whatever load, the first one comes). */
    long base = atomic_load(&fired);
    for (int k = 0; k < 500 && atomic_load(&fired) - base < 10; k++) usleep(10000);
    printf("timer %s\n", atomic_load(&fired) - base >= 10 ? "kept firing" : "STALLED");
    return 0;
}
