/* A named pipe in a directory of the program's own, held open for reading
 * and watched with poll (as mpirun watches the debugger-attach pipe in its
 * session directory); nobody writes to it. The test removes the directory
 * while the job is down; at the end the program writes a line into the
 * pipe by its path and reads it back through the fd it held all along.
 * Usage: fifogone STEPS */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    mkdir("sess", 0700);
    mkdir("sess/0", 0700);
    unlink("sess/0/attach.fifo");
    if (mkfifo("sess/0/attach.fifo", 0600)) { perror("mkfifo"); return 1; }
    int fd = open("sess/0/attach.fifo", O_RDONLY | O_NONBLOCK);
    if (fd < 0) { perror("open"); return 1; }
    for (int i = 1; i <= steps; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, 0);
        if (n != 0) {
            printf("step %d: poll says %d, revents %#x (the pipe fd is not what it was)\n",
                   i, n, p.revents);
            return 1;
        }
        printf("step %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    int w = open("sess/0/attach.fifo", O_WRONLY | O_NONBLOCK);
    if (w < 0) { printf("open for writing: %s\n", strerror(errno)); return 1; }
    const char msg[] = "through the pipe\n";
    if (write(w, msg, sizeof msg - 1) != (ssize_t)(sizeof msg - 1)) { perror("write"); return 1; }
    char buf[64] = {0};
    ssize_t r = read(fd, buf, sizeof buf - 1);
    if (r != (ssize_t)(sizeof msg - 1) || strcmp(buf, msg)) {
        printf("read back %zd bytes: '%s'\n", r, buf);
        return 1;
    }
    printf("read back: %s", buf);
    close(w);
    close(fd);
    unlink("sess/0/attach.fifo");
    rmdir("sess/0");
    rmdir("sess");
    return 0;
}
