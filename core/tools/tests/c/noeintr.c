/* Blocks every signal and never expects EINTR: waits in poll, ppoll,
 * select, epoll_wait and nanosleep in turn, and stops at the first call
 * that fails. Checkpoints and restarts must not show.
 * Usage: noeintr ROUNDS */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what) {
    printf("%s failed: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int rounds = atoi(argv[1]);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    int p[2];
    if (pipe(p)) return 1;
    int ep = epoll_create1(0);
    struct epoll_event e = {EPOLLIN, {.fd = p[0]}};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
    for (int i = 0; i < rounds; i++) {
        struct pollfd pf = {p[0], POLLIN, 0};
        if (poll(&pf, 1, 10) != 0) fail("poll");
        struct timespec ts = {0, 10000000};
        if (ppoll(&pf, 1, &ts, NULL) != 0) fail("ppoll");
        fd_set r;
        FD_ZERO(&r);
        FD_SET(p[0], &r);
        struct timeval tv = {0, 10000};
        if (select(p[0] + 1, &r, NULL, NULL, &tv) != 0) fail("select");
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, 10) != 0) fail("epoll_wait");
        if (nanosleep(&ts, NULL) != 0) fail("nanosleep");
        if (i % 10 == 9) { printf("round %d\n", i + 1); fflush(stdout); }
    }
    printf("done\n");
    return 0;
}
