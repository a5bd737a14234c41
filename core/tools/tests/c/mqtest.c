/* A POSIX message queue between a forked producer and its parent, the
 * name unlinked once both have it open; messages of three priorities,
 * the queue full most of the time. The parent checks each priority's
 * sequence. Only the parent prints.
 * Usage: mqtest MESSAGES */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[1]);
    char name[64];
    snprintf(name, sizeof name, "/dmtcp-mqtest-%d", getpid());
    struct mq_attr a = {0, 8, 64, 0};
    mq_unlink(name);
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a);
    if (q < 0) { perror("mq_open"); return 1; }
    pid_t kid = fork();
    if (kid == 0) {
        for (int i = 0; i < n; i++) {
            char m[64];
            int len = snprintf(m, sizeof m, "msg %d", i);
            while (mq_send(q, m, len + 1, i % 3) != 0)
                if (errno != EINTR) _exit(10);
        }
        _exit(0);
    }
    mq_unlink(name); /* both have it open: the queue lives on without a name */
    int next[3] = {0, 1, 2};
    for (int i = 0; i < n; i++) {
        char m[64];
        unsigned prio;
        ssize_t r;
        while ((r = mq_receive(q, m, sizeof m, &prio)) < 0)
            if (errno != EINTR) { perror("mq_receive"); return 1; }
        int k;
        if (prio > 2 || sscanf(m, "msg %d", &k) != 1 || k != next[prio]) { printf("prio %u got '%s', expected msg %d\n", prio, m, next[prio]); return 1; }
        next[prio] += 3;
        if ((i + 1) % 100 == 0) { printf("got %d\n", i + 1); fflush(stdout); }
        usleep(2000);
    }
    int st;
    waitpid(kid, &st, 0);
    printf("received %d child exit %d\n", n, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}
