/* Files of the job in a temporary directory: the parent maps DIR/seg
 * shared and writable and counts in it; its child maps the same file and
 * follows the count (it must never go back, and each step's slot must hold
 * the step's value), and both map DIR/ro (written once) read-only. The
 * parent also listens on the Unix socket DIR/sock; at the end the child
 * connects to it again and reads "bye". Only the parent prints: its steps,
 * the child's exit code and what the files hold at the end.
 * Usage: tmpmap DIR STEPS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SLOTS 500

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *dir = argv[1];
    int steps = atoi(argv[2]);
    char seg[400], ro[400];
    struct sockaddr_un sk = {0};
    sk.sun_family = AF_UNIX;
    mkdir(dir, 0700);
    snprintf(seg, sizeof seg, "%s/seg", dir);
    snprintf(ro, sizeof ro, "%s/ro", dir);
    snprintf(sk.sun_path, sizeof sk.sun_path, "%s/sock", dir);
    int fd = open(seg, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 4 * 4096)) { perror(seg); return 1; }
    long *m = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    int rfd = open(ro, O_RDWR | O_CREAT | O_TRUNC, 0600);
    char pat[8192];
    for (int k = 0; k < (int)sizeof pat; k++) pat[k] = (char)('a' + k % 26);
    if (rfd < 0 || write(rfd, pat, sizeof pat) != (ssize_t)sizeof pat) { perror(ro); return 1; }
    const char *r = mmap(NULL, sizeof pat, PROT_READ, MAP_SHARED, rfd, 0);
    close(rfd);
    if (m == MAP_FAILED || r == MAP_FAILED) { perror("mmap"); return 1; }
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    unlink(sk.sun_path);
    if (bind(l, (struct sockaddr *)&sk, sizeof sk) || listen(l, 4)) { perror("listen"); return 1; }
    pid_t c = fork();
    if (c == 0) {
        long seen = 0;
        for (;;) {
            long v = __atomic_load_n(&m[0], __ATOMIC_ACQUIRE);
            if (v < seen) _exit(10);
            if (v > 0 && m[1 + v % SLOTS] != v * 7) _exit(11);
            seen = v;
            if (v >= steps) break;
            usleep(1000);
        }
        if (memcmp(r, pat, sizeof pat)) _exit(12);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sk, sizeof sk)) _exit(13);
        char b[3];
        if (read(s, b, 3) != 3 || memcmp(b, "bye", 3)) _exit(14);
        _exit(0);
    }
    for (int i = 1; i <= steps; i++) {
        m[1 + i % SLOTS] = (long)i * 7;
        __atomic_store_n(&m[0], (long)i, __ATOMIC_RELEASE);
        if (i % 10 == 0) {
            printf("step %d\n", i);
            fflush(stdout);
        }
        usleep(20000);
    }
    int a = accept(l, NULL, NULL);
    if (a < 0 || write(a, "bye", 3) != 3) { perror("accept"); return 1; }
    close(a);
    int st = 0;
    waitpid(c, &st, 0);
    printf("child exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    printf("seg %ld ro %.5s\n", m[0], r);
    return 0;
}
