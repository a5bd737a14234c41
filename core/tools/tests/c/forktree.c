/* A process tree across checkpoint/restart: a parent forks three children,
 * one of which exits at once and stays a zombie until the end, one that
 * computes and exits with a checksum, and one that waits for a signal. The
 * parent checks its own and its children's ids before and after, signals,
 * and waits for each. Every process checks getpid/getppid/getpgrp/getsid
 * stay what they were. Usage: forktree STEPS [setsid [notid]]
 * (with setsid the tree starts its own session, so every id it checks
 * belongs to a process of the job). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static int check_tid = 1;
static void on_usr1(int s) { (void)s; got_usr1++; }

static int ids_same(pid_t pid, pid_t ppid, pid_t pgrp, pid_t sid) {
    return getpid() == pid && getppid() == ppid && getpgrp() == pgrp && getsid(0) == sid &&
           (!check_tid || syscall(SYS_gettid) == pid);
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    if (argc > 2 && strcmp(argv[2], "setsid") == 0 && setsid() < 0) { perror("setsid"); return 1; }
    /* "notid": thread ids are not checked (a raw gettid sees the kernel's
     * tid, which only a restart in a pid namespace can give back). */
    if (argc > 3 && strcmp(argv[3], "notid") == 0) check_tid = 0;
    pid_t me = getpid(), pp = getppid(), pg = getpgrp(), sid = getsid(0);
    signal(SIGUSR1, on_usr1);
    pid_t zombie = fork();
    if (zombie == 0) _exit(42);
    pid_t worker = fork();
    if (worker == 0) {
        pid_t w = getpid();
        long sum = 0;
        for (int i = 0; i < steps * 2; i++) {
            sum = (sum * 31 + i) % 1000003;
            usleep(50000);
        }
        int ok = ids_same(w, me, pg, sid);
        _exit(ok ? (int)(sum % 200) : 255);
    }
    pid_t waiter = fork();
    if (waiter == 0) {
        pid_t w = getpid();
        setpgid(0, 0); /* a group of its own */
        while (!got_usr1) pause();
        int ok = ids_same(w, me, w, sid);
        _exit(ok ? 7 : 255);
    }
    setpgid(waiter, waiter);
    for (int i = 0; i < steps; i++) {
        printf("step %d\n", i);
        fflush(stdout);
        usleep(100000);
    }
    int st;
    if (waitpid(worker, &st, 0) != worker) { perror("waitpid worker"); return 1; }
    printf("worker exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    if (getpgid(waiter) != waiter) printf("waiter pgid changed: %d\n", getpgid(waiter));
    if (kill(waiter, SIGUSR1) != 0) { perror("kill waiter"); return 1; }
    if (waitpid(waiter, &st, 0) != waiter) { perror("waitpid waiter"); return 1; }
    printf("waiter exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    if (waitpid(zombie, &st, 0) != zombie) { perror("waitpid zombie"); return 1; }
    printf("zombie exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    printf("parent ids %s\n", ids_same(me, pp, pg, sid) ? "same" : "CHANGED");
    printf("done\n");
    return 0;
}
