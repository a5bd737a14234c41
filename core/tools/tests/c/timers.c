/* Timers and pending signals across checkpoint/restart: an interval timer
 * (setitimer), two POSIX timers (timer_create, ids with a gap between them),
 * a signal that stays pending (blocked) the whole run, and a thread-directed
 * one. The program runs until each timer has fired enough times: timers not
 * re-armed after a restart make it hang; a lost pending signal shows. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alrm, rt1, rt2, usr1, usr2th;
static volatile int printed = -1; /* the last step main printed */
static void on_alrm(int s) { (void)s; alrm++; }
static void on_rt(int s, siginfo_t *si, void *c) { (void)s; (void)c; if (si->si_value.sival_int == 1) rt1++; else rt2++; }
static void on_usr1(int s) { (void)s; usr1++; }
static void on_hup(int s) { (void)s; usr2th++; }

static timer_t make_timer(int val, long ms) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 1;
    ev.sigev_value.sival_int = val;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) { perror("timer_create"); exit(1); }
    struct itimerspec its = {{0, ms * 1000000}, {0, ms * 1000000}};
    if (ms) timer_settime(t, 0, &its, NULL);
    return t;
}

static void *blocked_thread(void *a) {
    (void)a;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGHUP); /* pending for this thread only */
    while (printed < 6) usleep(10000); /* after main's "step 6": one output order */
    sigset_t p;
    sigpending(&p);
    printf("thread hup pending %s\n", sigismember(&p, SIGHUP) ? "yes" : "no");
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    printf("thread hup handled %d\n", (int)usr2th);
    return NULL;
}

int main(void) {
    signal(SIGALRM, on_alrm);
    signal(SIGUSR1, on_usr1);
    signal(SIGHUP, on_hup);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    sigset_t blk;
    sigemptyset(&blk);
    sigaddset(&blk, SIGUSR1);
    sigaddset(&blk, SIGHUP);
    sigprocmask(SIG_BLOCK, &blk, NULL);
    kill(getpid(), SIGUSR1); /* pending for the process until the end */
    sigemptyset(&blk);
    sigaddset(&blk, SIGHUP);
    sigprocmask(SIG_UNBLOCK, &blk, NULL); /* the main thread takes SIGHUP normally */
    pthread_t th;
    pthread_create(&th, NULL, blocked_thread, NULL);
    timer_t a = make_timer(1, 40);
    timer_t gap = make_timer(0, 0);
    timer_t b = make_timer(2, 25);
    timer_delete(gap);
    struct itimerval it = {{0, 50000}, {0, 50000}};
    setitimer(ITIMER_REAL, &it, NULL);
    int shown = -1;
    while (alrm < 60 || rt1 < 70 || rt2 < 110) {
        usleep(5000);
        if (alrm / 10 != shown) {
            shown = alrm / 10;
            printf("step %d\n", shown);
            fflush(stdout);
            printed = shown;
        }
    }
    pthread_join(th, NULL);
    sigset_t p;
    sigpending(&p);
    printf("usr1 pending %s\n", sigismember(&p, SIGUSR1) ? "yes" : "no");
    sigemptyset(&blk);
    sigaddset(&blk, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &blk, NULL);
    printf("usr1 handled %d\n", (int)usr1);
    printf("timer ids %ld %ld\n", (long)(intptr_t)a, (long)(intptr_t)b);
    printf("RESULT timers fired\n");
    return 0;
}
