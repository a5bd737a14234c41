/* One end of a stream connection between two separately launched
 * programs. `streampeer listen KIND FILE BLOCKS` listens (KIND tcp: on
 * 127.0.0.1, port written to FILE; KIND unix: at the path FILE) and takes
 * one connection; `streampeer connect KIND FILE BLOCKS` connects to it.
 * Then both ends send BLOCKS blocks of 4096 bytes, up to 16 ahead of what
 * they have read, and check every byte of the other end's blocks (each
 * block's bytes follow from the sender and the block number). Every 100
 * blocks: "step N"; at the end "DONE blocks N checksum C" (a sum over all
 * bytes received), or the first difference and exit 1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BLK 4096
#define AHEAD 16

static void fill(unsigned char *b, int who, int i) {
    unsigned x = (unsigned)(who * 7919 + i * 104729 + 1);
    for (int k = 0; k < BLK; k++) {
        x = x * 1103515245u + 12345u;
        b[k] = (unsigned char)(x >> 16);
    }
}

static int write_all(int fd, const unsigned char *b, int n) {
    for (int off = 0; off < n;) {
        ssize_t w = write(fd, b + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        off += w;
    }
    return 0;
}

static int read_all(int fd, unsigned char *b, int n) {
    for (int off = 0; off < n;) {
        ssize_t r = read(fd, b + off, n - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        off += r;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    int listener = strcmp(argv[1], "listen") == 0, tcp = strcmp(argv[2], "tcp") == 0;
    const char *file = argv[3];
    int blocks = atoi(argv[4]);
    int fd;
    struct sockaddr_in in = {0};
    struct sockaddr_un un = {0};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    un.sun_family = AF_UNIX;
    snprintf(un.sun_path, sizeof un.sun_path, "%s", file);
    struct sockaddr *sa = tcp ? (struct sockaddr *)&in : (struct sockaddr *)&un;
    socklen_t sl = tcp ? sizeof in : sizeof un;
    if (listener) {
        int l = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
        /* A Unix socket's path appears at bind(), before listen(): bound
         * under a temporary name and renamed once listening, so that a
         * peer that sees the path can connect. */
        char utmp[sizeof un.sun_path];
        if (!tcp) {
            snprintf(utmp, sizeof utmp, "%s.t", file);
            unlink(file);
            unlink(utmp);
            snprintf(un.sun_path, sizeof un.sun_path, "%s", utmp);
        }
        if (bind(l, sa, sl) || listen(l, 1)) { perror("listen"); return 1; }
        if (!tcp && rename(utmp, file)) { perror("rename"); return 1; }
        if (tcp) {
            getsockname(l, sa, &sl);
            char tmp[4096];
            snprintf(tmp, sizeof tmp, "%s.tmp", file);
            FILE *f = fopen(tmp, "w");
            fprintf(f, "%d\n", ntohs(in.sin_port));
            fclose(f);
            rename(tmp, file);
        }
        fd = accept(l, NULL, NULL);
        close(l);
        if (fd < 0) { perror("accept"); return 1; }
    } else {
        if (tcp) {
            FILE *f = fopen(file, "r");
            int port = 0;
            if (!f || fscanf(f, "%d", &port) != 1) { fprintf(stderr, "no port in %s\n", file); return 1; }
            fclose(f);
            in.sin_port = htons(port);
        }
        fd = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, sa, sl)) { perror("connect"); return 1; }
    }
    int me = listener, other = !listener;
    unsigned char out[BLK], got[BLK], want[BLK];
    unsigned long long sum = 0;
    int sent = 0;
    for (int i = 0; i < blocks; i++) {
        while (sent < blocks && sent < i + AHEAD) {
            fill(out, me, sent);
            if (write_all(fd, out, BLK)) { printf("write of block %d failed: %s\n", sent, strerror(errno)); return 1; }
            sent++;
        }
        if (read_all(fd, got, BLK)) { printf("read of block %d failed: %s\n", i, errno ? strerror(errno) : "eof"); return 1; }
        fill(want, other, i);
        if (memcmp(got, want, BLK)) {
            int k = 0;
            while (got[k] == want[k]) k++;
            printf("block %d differs at byte %d\n", i, k);
            return 1;
        }
        for (int k = 0; k < BLK; k++) sum = sum * 31 + got[k];
        if (i % 100 == 0) {
            printf("step %d\n", i);
            fflush(stdout);
        }
        usleep(1000);
    }
    printf("DONE blocks %d checksum %llu\n", blocks, sum);
    return 0;
}
