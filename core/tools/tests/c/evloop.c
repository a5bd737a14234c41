/* An epoll event loop (edge- and level-triggered) over: an eventfd a
 * worker thread bumps, a semaphore eventfd shared with a forked child, a
 * periodic timerfd, a signalfd for SIGUSR1 (the child signals and waits
 * for an ack on a pipe), and a TCP listener with the child's ping/pong
 * connection. Only the loop prints; totals must match a bare run.
 * Usage: evloop */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define W 600
#define C 400

static int eva, evb;

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < W; i++) {
        uint64_t one = 1;
        if (write(eva, &one, 8) != 8) { perror("worker"); exit(1); }
        usleep(5000);
    }
    return NULL;
}

static int child(struct sockaddr_in *a, int ackr) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)a, sizeof *a)) return 20;
    for (int i = 0; i < C; i++) {
        uint64_t one = 1;
        if (write(evb, &one, 8) != 8) return 21;
        if (i % 4 == 0) {
            kill(getppid(), SIGUSR1);
            char b;
            while (read(ackr, &b, 1) != 1)
                if (errno != EINTR) return 22;
            char msg[32], back[32];
            int n = snprintf(msg, sizeof msg, "ping %d", i);
            if (write(s, msg, n) != n) return 23;
            int got = 0;
            while (got < n) {
                ssize_t r = read(s, back + got, n - got);
                if (r <= 0) { if (r < 0 && errno == EINTR) continue; return 24; }
                got += r;
            }
            back[1] = 'i';
            if (memcmp(msg, back, n)) return 25;
        }
        usleep(7000);
    }
    close(s);
    return 0;
}

int main(void) {
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &m, NULL);
    eva = eventfd(0, EFD_NONBLOCK);
    evb = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int ack[2];
    if (pipe(ack)) return 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, al) || listen(l, 4) || getsockname(l, (struct sockaddr *)&a, &al)) return 1;
    pid_t kid = fork();
    if (kid == 0) {
        close(ack[1]);
        _exit(child(&a, ack[0]));
    }
    close(ack[0]);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e;
    e.events = EPOLLIN | EPOLLET; e.data.u64 = 0xA; epoll_ctl(ep, EPOLL_CTL_ADD, eva, &e);
    e.events = EPOLLIN; e.data.u64 = 0xB; epoll_ctl(ep, EPOLL_CTL_ADD, evb, &e);
    e.events = EPOLLIN; e.data.u64 = 0xC; epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
    e.events = EPOLLIN; e.data.u64 = 0xD; epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &e);
    e.events = EPOLLIN; e.data.u64 = 0xE; epoll_ctl(ep, EPOLL_CTL_ADD, l, &e);
    long ta = 0, tb = 0, sigs = 0, pings = 0, ticks = 0, shown = 0;
    int conn = -1, conn_done = 0;
    while (ta < W || tb < C || sigs < C / 4 || !conn_done) {
        struct epoll_event out[8];
        int n = epoll_wait(ep, out, 8, 5000);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) { printf("stalled: a=%ld b=%ld sigs=%ld pings=%ld done=%d\n", ta, tb, sigs, pings, conn_done); return 1; }
        for (int i = 0; i < n; i++) {
            uint64_t v;
            switch (out[i].data.u64) {
            case 0xA:
                while (read(eva, &v, 8) == 8) ta += v;
                break;
            case 0xB:
                if (read(evb, &v, 8) == 8) tb += v;
                break;
            case 0xC:
                if (read(tfd, &v, 8) == 8) ticks += v;
                break;
            case 0xD: {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si) {
                    sigs++;
                    if (write(ack[1], "k", 1) != 1) return 1;
                }
                break;
            }
            case 0xE:
                conn = accept(l, NULL, NULL);
                e.events = EPOLLIN; e.data.u64 = 0xF; epoll_ctl(ep, EPOLL_CTL_ADD, conn, &e);
                break;
            case 0xF: {
                char buf[64];
                ssize_t r = read(conn, buf, sizeof buf);
                if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, conn, NULL); close(conn); conn_done = 1; break; }
                buf[1] = 'o';
                if (write(conn, buf, r) != r) return 1;
                pings++;
                break;
            }
            }
        }
        while (ta / 100 > shown) printf("a %ld\n", ++shown * 100), fflush(stdout);
    }
    pthread_join(th, NULL);
    int st;
    waitpid(kid, &st, 0);
    printf("a %ld b %ld signals %ld pings %ld timer %s child exit %d\n", ta, tb, sigs, pings, ticks >= 100 ? "ticking" : "STOPPED",
           WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 0;
}
