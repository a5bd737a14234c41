/* Every way a program starts processes, in a loop, while checkpoints and
 * restarts happen: vfork+exec, posix_spawn, system(), popen(), and a
 * daemon (double fork, setsid) that reports through a file. Statuses and
 * outputs add up to a sum that must equal a bare run's.
 * Usage: spawnkinds ROUNDS */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Rounds whose daemon reported (a round run again after a restart may
 * report twice: the file is outside the job and keeps what was written
 * after the checkpoint). */
static int lines(const char *p) {
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    static char seen[100000];
    memset(seen, 0, sizeof seen);
    int n = 0, r;
    while (fscanf(f, "daemon %d\n", &r) == 1)
        if (r >= 0 && r < (int)sizeof seen && !seen[r]++) n++;
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int rounds = atoi(argv[1]);
    unlink("daemon.txt");
    long sum = 0;
    for (int r = 0; r < rounds; r++) {
        int st;
        char code[32];
        snprintf(code, sizeof code, "exit %d", r % 5);
        pid_t v = vfork();
        if (v == 0) { execl("/bin/sh", "sh", "-c", code, (char *)0); _exit(99); }
        waitpid(v, &st, 0);
        sum += WEXITSTATUS(st);
        pid_t s;
        char *args[] = {"sh", "-c", code, NULL};
        if (posix_spawn(&s, "/bin/sh", NULL, NULL, args, environ) != 0) return 1;
        waitpid(s, &st, 0);
        sum += 2 * WEXITSTATUS(st);
        st = system(code);
        sum += 3 * WEXITSTATUS(st);
        char cmd[32], buf[32] = "";
        snprintf(cmd, sizeof cmd, "echo %d", r * 7);
        FILE *p = popen(cmd, "r");
        if (!p || !fgets(buf, sizeof buf, p)) return 1;
        pclose(p);
        sum += atol(buf);
        pid_t d = fork();
        if (d == 0) {
            if (fork() != 0) _exit(0);
            setsid();
            usleep(50000);
            int f = open("daemon.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
            char l[32];
            int n = snprintf(l, sizeof l, "daemon %d\n", r);
            if (write(f, l, n) != n) _exit(1);
            _exit(0);
        }
        waitpid(d, &st, 0);
        printf("round %d sum %ld\n", r, sum);
        fflush(stdout);
        usleep(30000);
    }
    for (int i = 0; i < 200 && lines("daemon.txt") < rounds; i++) usleep(20000);
    printf("RESULT sum %ld daemons %d\n", sum, lines("daemon.txt"));
    return 0;
}
