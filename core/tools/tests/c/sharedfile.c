/* Three processes share two open files inherited across fork, neither in
 * append mode: they take turns reading fixed-size records from one shared
 * input offset and write what they read to one shared output offset. With
 * the offsets shared, every record is read exactly once and no line is
 * overwritten. Only the parent prints (a summary at the end).
 * Usage: sharedfile RECORDS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define REC 16

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    int in = open("in.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    for (int i = 0; i < n; i++) {
        char r[REC + 8];
        snprintf(r, sizeof r, "record %08d\n", i % 100000000);
        if (write(in, r, REC) != REC) return 1;
    }
    lseek(in, 0, SEEK_SET);
    int out = open("out.dat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int out2 = dup(out); /* the parent writes through both: one offset */
    /* Two separate opens of one file at the same offset: they must stay
     * separate (each reads the first record at the end). */
    int c1 = open("in.dat", O_RDONLY), c2 = open("in.dat", O_RDONLY);
    pid_t kids[2];
    int me = 0;
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) { me = k + 1; break; }
    }
    int turn = 0;
    for (;;) {
        char r[REC];
        ssize_t got = read(in, r, REC);
        if (got == 0) break;
        if (got != REC) { fprintf(stderr, "short read %zd\n", got); return 1; }
        char line[64];
        /* A different length per process: lines written over each other
         * (separate offsets) would not parse. */
        int len = snprintf(line, sizeof line, "p%d%.*s %.*s", me, me * 3, "------", REC, r);
        if (write(me == 0 && turn++ % 2 ? out2 : out, line, len) != len) return 1;
        usleep(3000);
    }
    if (me) _exit(0);
    for (int k = 0; k < 2; k++) waitpid(kids[k], NULL, 0);
    FILE *f = fopen("out.dat", "r");
    char *seen = calloc(n, 1);
    int lines = 0, by[3] = {0, 0, 0}, bad = 0, dup = 0;
    char line[128];
    while (fgets(line, sizeof line, f)) {
        int p, i;
        int dashes = (int)strspn(line + 2, "-");
        if (sscanf(line, "p%d", &p) != 1 || p < 0 || p > 2 || dashes != p * 3 || sscanf(line + 2 + dashes, " record %d", &i) != 1 || i < 0 || i >= n ||
            strlen(line) != (size_t)(2 + dashes + 1 + REC)) { bad++; continue; }
        lines++;
        by[p]++;
        if (seen[i]++) dup++;
    }
    int missing = 0;
    for (int i = 0; i < n; i++) missing += !seen[i];
    char r1[REC], r2[REC];
    int sep = read(c1, r1, REC) == REC && read(c2, r2, REC) == REC && !memcmp(r1, r2, REC) && !memcmp(r1, "record 00000000\n", REC);
    printf("records %d lines %d bad %d duplicates %d missing %d all-processes-read %d separate-opens %d\n", n, lines, bad, dup, missing,
           by[0] > 0 && by[1] > 0 && by[2] > 0, sep);
    return 0;
}
