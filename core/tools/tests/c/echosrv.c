/* An echo server (one poll loop) with clients forked one after another,
 * alternating between its TCP listener and its Unix path listener. Each
 * client sends ROUNDS messages of varying length and checks every echo.
 * Only the server prints: one line per accepted connection and a summary
 * with each client's exit code.
 * Usage: echosrv CLIENTS ROUNDS */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in tcp_addr;
static struct sockaddr_un unix_addr;

static int client(int id, int rounds) {
    int fd;
    if (id % 2 == 0) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&tcp_addr, sizeof tcp_addr)) return 20;
    } else {
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&unix_addr, sizeof unix_addr)) return 21;
    }
    char msg[8192], back[8192];
    for (int r = 0; r < rounds; r++) {
        int len = 16 + (id * 977 + r * 131) % 8000;
        for (int k = 0; k < len; k++) msg[k] = (char)('a' + (id + r + k) % 26);
        snprintf(msg, 16, "c%d r%d", id, r);
        for (int off = 0; off < len;) {
            ssize_t w = write(fd, msg + off, len - off);
            if (w <= 0) { if (errno == EINTR) continue; return 22; }
            off += w;
        }
        for (int off = 0; off < len;) {
            ssize_t n = read(fd, back + off, len - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return 23;
            off += n;
        }
        if (memcmp(msg, back, len)) return 24;
        usleep(20000);
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int nclients = atoi(argv[1]), rounds = atoi(argv[2]);
    int lt = socket(AF_INET, SOCK_STREAM, 0), lu = socket(AF_UNIX, SOCK_STREAM, 0);
    tcp_addr.sin_family = AF_INET;
    tcp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof tcp_addr;
    unix_addr.sun_family = AF_UNIX;
    strcpy(unix_addr.sun_path, "echo.sock");
    unlink(unix_addr.sun_path);
    if (bind(lt, (struct sockaddr *)&tcp_addr, sl) || listen(lt, 8) || getsockname(lt, (struct sockaddr *)&tcp_addr, &sl)) { perror("tcp"); return 1; }
    if (bind(lu, (struct sockaddr *)&unix_addr, sizeof unix_addr) || listen(lu, 8)) { perror("unix"); return 1; }
    pid_t spawner = fork();
    if (spawner == 0) {
        close(lt);
        close(lu);
        pid_t kids[64];
        for (int i = 0; i < nclients; i++) {
            kids[i] = fork();
            if (kids[i] == 0) _exit(client(i, rounds));
            usleep(250000);
        }
        int codes = 0;
        for (int i = 0; i < nclients; i++) {
            int st;
            waitpid(kids[i], &st, 0);
            codes = codes * 2 + !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
            if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) fprintf(stderr, "client %d: status %x\n", i, st);
        }
        _exit(codes);
    }
    struct pollfd p[66];
    int n = 2, accepted = 0, closed = 0;
    long bytes = 0;
    p[0] = (struct pollfd){lt, POLLIN, 0};
    p[1] = (struct pollfd){lu, POLLIN, 0};
    char buf[8192];
    while (closed < nclients) {
        if (poll(p, n, -1) < 0) continue;
        for (int i = 0; i < n; i++) {
            if (!p[i].revents) continue;
            if (i < 2) {
                int c = accept(p[i].fd, NULL, NULL);
                if (c < 0) continue;
                printf("accepted %d (%s)\n", ++accepted, i == 0 ? "tcp" : "unix");
                fflush(stdout);
                p[n++] = (struct pollfd){c, POLLIN, 0};
                continue;
            }
            ssize_t r = read(p[i].fd, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                close(p[i].fd);
                p[i] = p[--n];
                closed++;
                i--;
                continue;
            }
            bytes += r;
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(p[i].fd, buf + off, r - off);
                if (w <= 0) { if (errno == EINTR) continue; perror("echo"); return 1; }
                off += w;
            }
        }
    }
    int st;
    waitpid(spawner, &st, 0);
    printf("server connections %d bytes %ld clients-failed-mask %d\n", accepted, bytes, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    unlink("echo.sock");
    return 0;
}
