/* Output waiting on a pty master across checkpoint/restart. The program
 * opens a pty, writes two lines into its slave end (the terminal's output
 * processing turns "\n" into "\r\n") and leaves them unread on the master
 * while it ticks; then it reads the master and prints what was waiting,
 * with "\r" shown as "\\r". Usage: ptypending TICKS */
#define _XOPEN_SOURCE 600
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) || unlockpt(m)) { perror("pty"); return 1; }
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    if (s < 0) { perror("slave"); return 1; }
    const char *msg = "first waiting line\nsecond one\n";
    if (write(s, msg, strlen(msg)) != (ssize_t)strlen(msg)) { perror("write"); return 1; }
    for (int i = 0; i < atoi(argv[1]); i++) {
        printf("tick %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    char buf[256];
    int got = 0;
    struct pollfd p = {m, POLLIN, 0};
    while (got < (int)sizeof buf && poll(&p, 1, 500) == 1) {
        ssize_t n = read(m, buf + got, sizeof buf - got);
        if (n <= 0) break;
        got += n;
    }
    printf("waiting output (%d bytes): ", got);
    for (int k = 0; k < got; k++) {
        if (buf[k] == '\r') printf("\\r");
        else putchar(buf[k]);
    }
    printf("end\n");
    return 0;
}
