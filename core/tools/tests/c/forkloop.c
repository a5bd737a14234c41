/* Fork, exec and exit in a tight loop while checkpoints are taken: each
 * round forks a child that execs `sh -c 'exit N'` (or, every third round,
 * just _exits), waits for it and adds its exit status to a running sum.
 * Usage: forkloop ROUNDS. Prints "round R sum S" now and then. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    long sum = 0;
    for (int r = 0; r < rounds; r++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 1; }
        if (c == 0) {
            if (r % 3 == 2) _exit(r % 7);
            char code[16];
            snprintf(code, sizeof code, "exit %d", r % 5);
            execl("/bin/sh", "sh", "-c", code, (char *)0);
            _exit(99);
        }
        int st;
        if (waitpid(c, &st, 0) != c) { perror("waitpid"); return 1; }
        if (!WIFEXITED(st)) { printf("child %d died by signal %d\n", r, WTERMSIG(st)); return 1; }
        sum += WEXITSTATUS(st);
        if (r % 10 == 0) { printf("round %d sum %ld\n", r, sum); fflush(stdout); }
        usleep(20000);
    }
    printf("RESULT sum %ld\n", sum);
    return 0;
}
