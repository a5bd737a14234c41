/* Messages of many sizes over a SOCK_SEQPACKET socketpair from a forked
 * sender to a slow receiver: every message must come back whole, with its
 * own boundaries, in order. Only the receiver prints.
 * Usage: seqpacket MESSAGES */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int size_of(int i) { return 8 + (i * 37) % 1500; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv)) { perror("socketpair"); return 1; }
    pid_t kid = fork();
    if (kid == 0) {
        close(sv[0]);
        char m[2048];
        for (int i = 0; i < n; i++) {
            int len = size_of(i);
            memset(m, 'a' + i % 26, len);
            memcpy(m, &i, sizeof i);
            if (send(sv[1], m, len, 0) != len) _exit(1);
        }
        _exit(0);
    }
    close(sv[1]);
    char m[4096];
    int i = 0;
    for (;;) {
        ssize_t r = recv(sv[0], m, sizeof m, 0);
        if (r == 0) break;
        if (r < 0) { perror("recv"); return 1; }
        int len = size_of(i);
        int id = -1;
        if (r >= (ssize_t)sizeof id) memcpy(&id, m, sizeof id);
        if (r != len || id != i || m[r - 1] != 'a' + i % 26) {
            printf("message %d: %zd bytes, expected %d\n", i, r, len);
            return 1;
        }
        i++;
        if (i % 500 == 0) { printf("got %d\n", i); fflush(stdout); }
        usleep(300);
    }
    int st;
    waitpid(kid, &st, 0);
    printf("messages %d sender exit %d\n", i, WEXITSTATUS(st));
    return 0;
}
