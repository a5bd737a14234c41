/* Real-time signals queued for the process stay queued through the run
 * (blocked): five of one signal with values, two of another sent with
 * kill; and, for one thread alone, three with values (pthread_sigqueue)
 * and two with pthread_kill. At the end every instance is taken, in
 * order, with its value.
 * Usage: rtqueue STEPS */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile int go;

static void *waiter(void *arg) {
    (void)arg;
    while (!go) usleep(10000);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 4);
    sigaddset(&set, SIGRTMIN + 5);
    struct timespec zero = {0, 0};
    siginfo_t si;
    int got;
    while ((got = sigtimedwait(&set, &si, &zero)) > 0)
        printf("thread %s value %d %s\n", got == SIGRTMIN + 4 ? "C" : "D", got == SIGRTMIN + 4 ? si.si_value.sival_int : 0,
               si.si_code == SI_QUEUE ? "queued" : "tkill");
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    int a = SIGRTMIN + 2, b = SIGRTMIN + 3;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, a);
    sigaddset(&set, b);
    sigaddset(&set, SIGRTMIN + 4);
    sigaddset(&set, SIGRTMIN + 5);
    sigprocmask(SIG_BLOCK, &set, NULL); /* the thread inherits the mask */
    pthread_t th;
    pthread_create(&th, NULL, waiter, NULL);
    for (int i = 0; i < 3; i++) {
        union sigval v = {.sival_int = 200 + i};
        pthread_sigqueue(th, SIGRTMIN + 4, v);
    }
    pthread_kill(th, SIGRTMIN + 5);
    pthread_kill(th, SIGRTMIN + 5);
    sigdelset(&set, SIGRTMIN + 4);
    sigdelset(&set, SIGRTMIN + 5);
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
    go = 1;
    pthread_join(th, NULL);
    struct timespec zero = {0, 0};
    siginfo_t si;
    int got;
    while ((got = sigtimedwait(&set, &si, &zero)) > 0)
        printf("%s value %d %s\n", got == a ? "A" : "B", got == a ? si.si_value.sival_int : 0, si.si_code == SI_QUEUE ? "queued" : "kill");
    printf("done\n");
    return 0;
}
