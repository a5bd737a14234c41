/* A producer (child) streams MB megabytes of a known pattern to a slow
 * consumer (parent) over one connection: a Unix socketpair, a Unix path
 * socket, TCP over IPv4 or IPv6. The consumer checks every byte and sends
 * small acks back, so both directions have bytes in flight at any moment.
 * Only the consumer prints; the producer reports through its exit code.
 * Usage: sockstream unix|unixpath|unixabs|tcp4|tcp6 MB [CHILD_ENV=VALUE]
 * (the optional setting goes into the producer's environment only). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char pat(long i) { return (unsigned char)(((unsigned long)i * 2654435761u >> 13) ^ (i >> 20)); }

static int geti(int fd, int level, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, level, opt, &v, &l);
    return v;
}

static int producer(int fd, long total, int tcp) {
    int one = 1, sb = 65536;
    if (tcp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    int sndbuf = geti(fd, SOL_SOCKET, SO_SNDBUF);
    unsigned char buf[65536];
    long sent = 0, acks = 0, acksum = 0;
    int chunk = 1000;
    while (sent < total) {
        int n = chunk;
        if (n > total - sent) n = total - sent;
        for (int k = 0; k < n; k++) buf[k] = pat(sent + k);
        int off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) { perror("producer write"); return 10; }
            off += w;
        }
        sent += n;
        chunk = chunk * 7 % 60000 + 100;
    }
    shutdown(fd, SHUT_WR);
    long v;
    for (;;) {
        ssize_t r = read(fd, &v, sizeof v);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) break;
        if (r != sizeof v) { fprintf(stderr, "producer: short ack %zd\n", r); return 11; }
        acks++;
        acksum += v;
    }
    if (acks != total / 65536) { fprintf(stderr, "producer: %ld acks\n", acks); return 12; }
    if (acksum != acks * (acks + 1) / 2) { fprintf(stderr, "producer: ack sum %ld\n", acksum); return 13; }
    if (tcp && geti(fd, IPPROTO_TCP, TCP_NODELAY) != 1) return 14;
    if (geti(fd, SOL_SOCKET, SO_KEEPALIVE) != 1) return 15;
    if (geti(fd, SOL_SOCKET, SO_SNDBUF) != sndbuf) { fprintf(stderr, "producer: sndbuf %d, was %d\n", geti(fd, SOL_SOCKET, SO_SNDBUF), sndbuf); return 16; }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    long total = atol(argv[2]) << 20;
    int tcp = strncmp(mode, "tcp", 3) == 0;
    int sv[2] = {-1, -1}, lfd = -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (!strcmp(mode, "unix")) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
    } else {
        int dom = !strcmp(mode, "tcp6") ? AF_INET6 : !strcmp(mode, "tcp4") ? AF_INET : AF_UNIX;
        lfd = socket(dom, SOCK_STREAM, 0);
        if (dom == AF_UNIX && !strcmp(mode, "unixabs")) {
            /* An abstract name: no file, a leading NUL byte. */
            struct sockaddr_un *u = (struct sockaddr_un *)&ss;
            u->sun_family = AF_UNIX;
            int n = snprintf(u->sun_path + 1, sizeof u->sun_path - 1, "dmtcp-sockstream-%d", getpid());
            sl = offsetof(struct sockaddr_un, sun_path) + 1 + n;
        } else if (dom == AF_UNIX) {
            struct sockaddr_un *u = (struct sockaddr_un *)&ss;
            u->sun_family = AF_UNIX;
            strcpy(u->sun_path, "stream.sock");
            unlink(u->sun_path);
            sl = sizeof *u;
        } else if (dom == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            sl = sizeof *a;
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_loopback;
            sl = sizeof *a;
        }
        if (bind(lfd, (struct sockaddr *)&ss, sl) || listen(lfd, 4) || getsockname(lfd, (struct sockaddr *)&ss, &sl)) { perror("listen"); return 1; }
    }
    pid_t child = fork();
    if (child == 0) {
        int fd = sv[1];
        if (argc > 3) putenv(argv[3]);
        if (lfd >= 0) {
            close(lfd);
            fd = socket(ss.ss_family, SOCK_STREAM, 0);
            if (connect(fd, (struct sockaddr *)&ss, sl)) { perror("connect"); _exit(20); }
        } else {
            close(sv[0]);
        }
        _exit(producer(fd, total, tcp));
    }
    int fd = sv[0];
    if (lfd >= 0) {
        fd = accept(lfd, NULL, NULL);
        if (fd < 0) { perror("accept"); return 1; }
    } else {
        close(sv[1]);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    unsigned char buf[16384];
    long got = 0, acks = 0, mb = 0;
    /* Acks not yet written (the producer reads them only at the end, so
     * the socket may be full): written when the socket takes them. */
    long pend[1024];
    int npend = 0, eof = 0;
    for (;;) {
        if (eof && npend == 0) break;
        struct pollfd p = {fd, (short)((eof ? 0 : POLLIN) | (npend ? POLLOUT : 0)), 0};
        if (poll(&p, 1, -1) < 0) continue;
        while (npend > 0) {
            ssize_t w = write(fd, pend, npend * sizeof(long));
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;
            if (w < 0 || w % sizeof(long)) { perror("ack"); return 1; }
            int k = w / sizeof(long);
            memmove(pend, pend + k, (npend - k) * sizeof(long));
            npend -= k;
        }
        if (eof) continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) { perror("consumer read"); return 1; }
        if (n == 0) { eof = 1; continue; }
        for (ssize_t k = 0; k < n; k++)
            if (buf[k] != pat(got + k)) { printf("MISMATCH at byte %ld\n", got + k); fflush(stdout); return 1; }
        long before = got;
        got += n;
        for (long a = before / 65536 + 1; a <= got / 65536; a++) {
            if (npend == 1024) { printf("too many acks pending\n"); return 1; }
            pend[npend++] = ++acks;
        }
        if (got >> 20 > mb) {
            mb = got >> 20;
            printf("got %ld MB\n", mb);
            fflush(stdout);
        }
        usleep(1500);
    }
    int nb = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    shutdown(fd, SHUT_WR);
    int st = 0;
    waitpid(child, &st, 0);
    printf("consumer total %ld nonblock %d acks %ld\n", got, nb, acks);
    printf("producer exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    if (!strcmp(mode, "unixpath")) unlink("stream.sock");
    return 0;
}
