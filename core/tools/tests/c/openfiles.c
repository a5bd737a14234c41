/* Keeps a counter in a file (rewritten in place each step, checked
 * against the count in memory) and a log in a deleted scratch file it
 * reads back at the end. With --ckpt-open-files a restart puts the
 * counter file back as it was at checkpoint time; the deleted file comes
 * back from the image either way.
 * Usage: openfiles STEPS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    int cfd = open("counter.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int dfd = open("scratch.tmp", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (cfd < 0 || dfd < 0 || unlink("scratch.tmp")) { perror("open"); return 1; }
    long mem = 0;
    for (int i = 0; i < steps; i++) {
        char b[32] = "";
        pread(cfd, b, sizeof b - 1, 0);
        long v = atol(b);
        if (v != mem) { printf("counter file %ld, memory %ld\n", v, mem); return 1; }
        mem++;
        int n = snprintf(b, sizeof b, "%ld\n", mem);
        if (pwrite(cfd, b, n, 0) != n) return 1;
        char line[32];
        n = snprintf(line, sizeof line, "line %d\n", i);
        if (write(dfd, line, n) != n) return 1;
        printf("step %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    off_t size = lseek(dfd, 0, SEEK_CUR);
    char *all = malloc(size + 1);
    if (pread(dfd, all, size, 0) != size) { printf("scratch short\n"); return 1; }
    all[size] = 0;
    int lines = 0;
    for (char *p = all; *p; lines++) {
        char want[32];
        int n = snprintf(want, sizeof want, "line %d\n", lines);
        if (strncmp(p, want, n)) { printf("scratch line %d differs\n", lines); return 1; }
        p += n;
    }
    printf("counter %ld scratch lines %d\n", mem, lines);
    return 0;
}
