/* Real-time signals queued for the process stay queued through the run
 * (blocked): five of one signal with values, two of another sent with
 * kill. At the end every instance is taken, in order, with its value.
 * Usage: rtqueue STEPS */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    int a = SIGRTMIN + 2, b = SIGRTMIN + 3;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, a);
    sigaddset(&set, b);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (int i = 0; i < 5; i++) {
        union sigval v = {.sival_int = 100 + i};
        sigqueue(getpid(), a, v);
    }
    kill(getpid(), b);
    kill(getpid(), b);
    for (int i = 0; i < steps; i++) {
        printf("step %d\n", i);
        fflush(stdout);
        usleep(30000);
    }
    struct timespec zero = {0, 0};
    siginfo_t si;
    int got;
    while ((got = sigtimedwait(&set, &si, &zero)) > 0)
        printf("%s value %d %s\n", got == a ? "A" : "B", got == a ? si.si_value.sival_int : 0, si.si_code == SI_QUEUE ? "queued" : "kill");
    printf("done\n");
    return 0;
}
