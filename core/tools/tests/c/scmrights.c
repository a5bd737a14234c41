/* An open file passed to another process with SCM_RIGHTS (not inherited):
 * both read fixed-size records from it in turns, so with one shared
 * offset every record is read exactly once. The receiver reports its
 * records through a pipe; only the parent prints.
 * Usage: scmrights RECORDS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define REC 16

static int recv_fd(int s) {
    char b;
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec io = {&b, 1};
    struct msghdr m = {0};
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    if (recvmsg(s, &m, 0) != 1) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

static void send_fd(int s, int fd) {
    char b = 'f';
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec io = {&b, 1};
    struct msghdr m = {0};
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fd);
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(s, &m, 0) != 1) exit(3);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    int sv[2], rep[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(rep)) return 1;
    pid_t kid = fork();
    if (kid == 0) {
        close(sv[0]);
        close(rep[0]);
        int fd = recv_fd(sv[1]);
        if (fd < 0) _exit(10);
        char r[REC];
        while (read(fd, r, REC) == REC) {
            if (write(rep[1], r, REC) != REC) _exit(11);
            usleep(3000);
        }
        _exit(0);
    }
    close(sv[1]);
    close(rep[1]);
    int f = open("records.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    for (int i = 0; i < n; i++) {
        char r[REC + 8];
        snprintf(r, sizeof r, "record %08d\n", i);
        if (write(f, r, REC) != REC) return 1;
    }
    close(f);
    int fd = open("records.dat", O_RDONLY); /* opened after the fork: only passed */
    send_fd(sv[0], fd);
    char *seen = calloc(n, 1);
    int mine = 0;
    char r[REC];
    while (read(fd, r, REC) == REC) {
        int k = atoi(r + 7);
        if (k >= 0 && k < n) seen[k]++;
        if (++mine % 50 == 0) { printf("read %d\n", mine); fflush(stdout); }
        usleep(3000);
    }
    int theirs = 0;
    while (read(rep[0], r, REC) == REC) {
        int k = atoi(r + 7);
        if (k >= 0 && k < n) seen[k]++;
        theirs++;
    }
    int st;
    waitpid(kid, &st, 0);
    int once = 0, twice = 0;
    for (int i = 0; i < n; i++) once += seen[i] == 1, twice += seen[i] > 1;
    printf("records %d read once %d more than once %d both read %d child exit %d\n", n, once, twice, mine > 0 && theirs > 0, WEXITSTATUS(st));
    return 0;
}
