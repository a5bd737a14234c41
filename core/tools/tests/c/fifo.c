/* A named pipe (mkfifo) between a forked writer and a slow reader, with
 * bytes in the pipe at any moment; the reader checks every line.
 * Usage: fifo LINES */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    unlink("p.fifo");
    if (mkfifo("p.fifo", 0600)) { perror("mkfifo"); return 1; }
    pid_t kid = fork();
    if (kid == 0) {
        int w = open("p.fifo", O_WRONLY);
        for (int i = 0; i < n; i++) {
            char l[64];
            int len = snprintf(l, sizeof l, "fifo line %06d\n", i);
            if (write(w, l, len) != len) _exit(1);
            if (i % 50 == 0) usleep(1000);
        }
        _exit(0);
    }
    FILE *r = fopen("p.fifo", "r");
    char l[64];
    int i = 0;
    while (fgets(l, sizeof l, r)) {
        char want[64];
        snprintf(want, sizeof want, "fifo line %06d\n", i);
        if (strcmp(l, want)) { printf("line %d is '%s'\n", i, l); return 1; }
        i++;
        if (i % 1000 == 0) { printf("read %d\n", i); fflush(stdout); }
        usleep(200);
    }
    int st;
    waitpid(kid, &st, 0);
    printf("lines %d writer exit %d\n", i, WEXITSTATUS(st));
    unlink("p.fifo");
    return 0;
}
