/* Per-call cost of calls a checkpointer may wrap. Prints one line per
 * metric: "<name> <ns per op>". Usage: overhead [SCALE] (1 = default counts). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void *noop(void *a) { return a; }
static volatile long sink;

int main(int argc, char **argv) {
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    long n;
    double t;

    n = (long)(200000 * scale) + 1;
    t = now();
    for (long i = 0; i < n; i++) {
        int fd = open("/dev/null", O_RDONLY);
        close(fd);
    }
    printf("open_close %.1f\n", (now() - t) / n);

    n = (long)(2000000 * scale) + 1;
    t = now();
    for (long i = 0; i < n; i++) sink += getpid();
    printf("getpid %.1f\n", (now() - t) / n);

    n = (long)(2000000 * scale) + 1;
    t = now();
    for (long i = 0; i < n; i++) {
        void *p = malloc(16 + (i % 64) * 32);
        sink += (long)p & 1;
        free(p);
    }
    printf("malloc_free %.1f\n", (now() - t) / n);

    n = (long)(5000 * scale) + 1;
    t = now();
    for (long i = 0; i < n; i++) {
        pthread_t th;
        pthread_create(&th, NULL, noop, NULL);
        pthread_join(th, NULL);
    }
    printf("pthread_create_join %.1f\n", (now() - t) / n);

    n = (long)(300 * scale) + 1;
    t = now();
    for (long i = 0; i < n; i++) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        waitpid(c, NULL, 0);
    }
    printf("fork_exit_wait %.1f\n", (now() - t) / n);
    return 0;
}
