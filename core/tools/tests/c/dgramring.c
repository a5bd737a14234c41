/* A token goes round a ring of N processes over Unix datagram sockets
 * bound to paths; each process checks that the token came from its left
 * neighbour's address. Process 1 also sends a numbered datagram to
 * process 0 over a datagram socketpair for every token it forwards.
 * Datagrams are in flight at any moment. Only process 0 prints.
 * Usage: dgramring N ROUNDS */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

struct token { long round, hops; };

static struct sockaddr_un addr(int i) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "ring%d.sock", i);
    return a;
}

static int n;

static int recv_token(int fd, int me, struct token *t) {
    struct sockaddr_un from;
    socklen_t fl = sizeof from;
    for (;;) {
        ssize_t r = recvfrom(fd, t, sizeof *t, 0, (struct sockaddr *)&from, &fl);
        if (r < 0 && errno == EINTR) continue;
        if (r != sizeof *t) return 30;
        break;
    }
    struct sockaddr_un want = addr((me + n - 1) % n);
    if (strcmp(from.sun_path, want.sun_path)) {
        fprintf(stderr, "process %d: token from '%s', not '%s'\n", me, from.sun_path, want.sun_path);
        return 31;
    }
    return 0;
}

static int send_token(int fd, int me, struct token *t) {
    struct sockaddr_un to = addr((me + 1) % n);
    return sendto(fd, t, sizeof *t, 0, (struct sockaddr *)&to, sizeof to) == sizeof *t ? 0 : 32;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    n = atoi(argv[1]);
    long rounds = atol(argv[2]);
    int fds[16], side[2];
    for (int i = 0; i < n; i++) {
        struct sockaddr_un a = addr(i);
        unlink(a.sun_path);
        fds[i] = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (bind(fds[i], (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
    }
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, side)) { perror("socketpair"); return 1; }
    pid_t kids[16];
    for (int i = 1; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            int fd = fds[i];
            long forwarded = 0;
            for (;;) {
                struct token t;
                int e = recv_token(fd, i, &t);
                if (e) _exit(e);
                if (t.round >= 0) t.hops++;
                usleep(2000);
                if ((e = send_token(fd, i, &t))) _exit(e);
                if (t.round < 0) break;
                if (i == 1) {
                    forwarded++;
                    if (send(side[1], &forwarded, sizeof forwarded, 0) != sizeof forwarded) _exit(33);
                }
            }
            _exit(0);
        }
    }
    int fd = fds[0];
    close(side[1]);
    struct token t = {0, 0};
    if (send_token(fd, 0, &t)) return 1;
    long sides = 0;
    for (;;) {
        int e = recv_token(fd, 0, &t);
        if (e) { printf("ring broken: %d\n", e); return 1; }
        if (t.round < 0) break;
        t.round++;
        t.hops++;
        printf("round %ld hops %ld\n", t.round, t.hops);
        fflush(stdout);
        long k;
        while (recv(side[0], &k, sizeof k, MSG_DONTWAIT) == sizeof k) {
            if (k != ++sides) { printf("side message %ld, expected %ld\n", k, sides); return 1; }
        }
        if (t.round == rounds) t.round = -1;
        if (send_token(fd, 0, &t)) return 1;
    }
    for (int i = 1; i < n; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        printf("process %d exit %d\n", i, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    long k;
    while (recv(side[0], &k, sizeof k, MSG_DONTWAIT) == sizeof k) {
        if (k != ++sides) { printf("side message %ld, expected %ld\n", k, sides); return 1; }
    }
    printf("side messages %ld\n", sides);
    for (int i = 0; i < n; i++) {
        struct sockaddr_un a = addr(i);
        unlink(a.sun_path);
    }
    return 0;
}
