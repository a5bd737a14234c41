/* Files in odd states across restarts: /dev/null, /dev/zero,
 * /dev/urandom, a /proc file read part way, a file opened with O_TRUNC
 * (a restart must not truncate it again), and a file truncated under the
 * program's offset. Each step uses all of them.
 * Usage: oddfiles STEPS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    int null = open("/dev/null", O_WRONLY), zero = open("/dev/zero", O_RDONLY), urnd = open("/dev/urandom", O_RDONLY);
    int proc = open("/proc/self/status", O_RDONLY);
    char head[16];
    if (read(proc, head, 5) != 5) return 1; /* "Name:" */
    int trunc = open("trunc.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int shrink = open("shrink.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (null < 0 || zero < 0 || urnd < 0 || proc < 0 || trunc < 0 || shrink < 0) { perror("open"); return 1; }
    for (int i = 0; i < steps; i++) {
        char b[64];
        if (write(null, "x", 1) != 1) { printf("null failed\n"); return 1; }
        memset(b, 1, sizeof b);
        if (read(zero, b, sizeof b) != sizeof b || b[0] || b[63]) { printf("zero failed\n"); return 1; }
        if (read(urnd, b, 16) != 16) { printf("urandom failed\n"); return 1; }
        int n = snprintf(b, sizeof b, "line %d\n", i);
        if (write(trunc, b, n) != n) return 1;
        /* shrink.txt: write 100 bytes, then cut the file to 10 under our offset */
        char big[100];
        memset(big, 'a' + i % 26, sizeof big);
        if (write(shrink, big, sizeof big) != sizeof big) return 1;
        if (ftruncate(shrink, 10)) return 1;
        printf("step %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    char rest[64] = "";
    lseek(proc, 0, SEEK_SET);
    if (read(proc, rest, 5) != 5 || strncmp(rest, "Name:", 5)) { printf("proc failed\n"); return 1; }
    off_t where = lseek(shrink, 0, SEEK_CUR);
    close(trunc);
    FILE *f = fopen("trunc.txt", "r");
    int lines = 0;
    char l[64];
    while (fgets(l, sizeof l, f)) {
        char want[64];
        snprintf(want, sizeof want, "line %d\n", lines);
        if (strcmp(l, want)) { printf("trunc.txt line %d is '%s'\n", lines, l); return 1; }
        lines++;
    }
    printf("trunc lines %d shrink offset %ld\n", lines, (long)where);
    return 0;
}
