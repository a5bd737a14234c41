/* A client of a server outside the job. It reads the greeting, leaves the
 * rest of what the server sent unread while it ticks, then reads it and
 * looks at what the connection does next: "timeout" while the server is
 * still there (a bare run), "reset" or "eof" once the connection was cut.
 * Usage: extclient PORT TICKS */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    char g[6];
    for (int off = 0; off < 6;) {
        ssize_t n = read(fd, g + off, 6 - off);
        if (n <= 0) { perror("greeting"); return 1; }
        off += n;
    }
    printf("greeted %.5s\n", g);
    fflush(stdout);
    for (int i = 0; i < atoi(argv[2]); i++) {
        printf("tick %d\n", i);
        fflush(stdout);
        usleep(50000);
    }
    char buf[1000];
    int got = 0;
    while (got < 1000) {
        ssize_t n = read(fd, buf + got, 1000 - got);
        if (n <= 0) { printf("pending bytes lost after %d: %s\n", got, n ? strerror(errno) : "eof"); return 1; }
        got += n;
    }
    for (int k = 0; k < 1000; k++)
        if (buf[k] != (char)('A' + k % 23)) { printf("pending bytes differ at %d\n", k); return 1; }
    printf("pending 1000 bytes ok\n");
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r == 0) {
        printf("connection: timeout\n");
        return 0;
    }
    ssize_t n = read(fd, buf, 1);
    printf("connection: %s\n", n == 0 ? "eof" : n < 0 && errno == ECONNRESET ? "reset" : n < 0 ? strerror(errno) : "data");
    n = write(fd, "x", 1);
    printf("write after: %s\n", n < 0 ? strerror(errno) : "ok");
    return 0;
}
