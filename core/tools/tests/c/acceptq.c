/* A connection waiting in a listener's accept queue at checkpoint time.
 * The server (parent) listens on a TCP port of 127.0.0.1 (or a Unix path
 * with "unix") and does not accept until the file GO exists; its child,
 * the client, connects, sends N bytes (a pattern) and, with "shut", shuts
 * its write side, then waits for the server's answer. The test
 * checkpoints (and maybe kills and restarts) while the connection waits
 * unaccepted, then creates GO: the server waits for the listener to be
 * readable (poll), accepts, reads every byte and checks it, and answers.
 * Usage: acceptq GO N tcp|unix shut|open
 * Output: "pending", then "server got N ok", "client got answer ok". */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char pat(long i) { return (unsigned char)(i * 7 + i / 1000); }

int main(int argc, char **argv) {
  if (argc < 5) return 2;
  const char *go = argv[1];
  long n = atol(argv[2]);
  int unix_sock = !strcmp(argv[3], "unix");
  int shut = !strcmp(argv[4], "shut");
  struct sockaddr_storage ss;
  socklen_t len;
  memset(&ss, 0, sizeof ss);
  int l = socket(unix_sock ? AF_UNIX : AF_INET, SOCK_STREAM, 0);
  if (unix_sock) {
    struct sockaddr_un *u = (struct sockaddr_un *)&ss;
    u->sun_family = AF_UNIX;
    snprintf(u->sun_path, sizeof u->sun_path, "acceptq.sock");
    unlink(u->sun_path);
    len = sizeof *u;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  if (l < 0 || bind(l, (struct sockaddr *)&ss, len) || listen(l, 8)) { perror("listen"); return 1; }
  len = sizeof ss;
  getsockname(l, (struct sockaddr *)&ss, &len);
  int ready[2];
  if (pipe(ready)) return 1;
  pid_t c = fork();
  if (c == 0) {
    close(l);
    close(ready[0]);
    int s = socket(unix_sock ? AF_UNIX : AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&ss, len)) { perror("connect"); _exit(1); }
    unsigned char buf[4096];
    long sent = 0;
    while (sent < n) {
      int k = 0;
      for (; k < (int)sizeof buf && sent + k < n; k++) buf[k] = pat(sent + k);
      ssize_t w = write(s, buf, k);
      if (w <= 0) { perror("client write"); _exit(1); }
      sent += w;
    }
    if (shut) shutdown(s, SHUT_WR);
    if (write(ready[1], "r", 1) != 1) _exit(1);
    char ans[64];
    long got = 0;
    ssize_t r;
    while ((r = read(s, ans + got, sizeof ans - 1 - got)) > 0) got += r;
    ans[got] = 0;
    printf("client got answer %s\n", !strcmp(ans, "answer") ? "ok" : "BAD");
    fflush(stdout);
    _exit(!strcmp(ans, "answer") ? 0 : 1);
  }
  close(ready[1]);
  char b;
  if (read(ready[0], &b, 1) != 1) return 1;
  printf("pending\n");
  fflush(stdout);
  while (access(go, F_OK) != 0) usleep(20000);
  struct pollfd p = {.fd = l, .events = POLLIN};
  if (poll(&p, 1, 30000) != 1) { printf("listener not readable\n"); return 1; }
  int a = accept(l, NULL, NULL);
  if (a < 0) { perror("accept"); return 1; }
  long got = 0, bad = 0;
  unsigned char buf[4096];
  for (;;) {
    if (!shut && got == n) break;
    ssize_t r = read(a, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    for (ssize_t i = 0; i < r; i++) bad += buf[i] != pat(got + i);
    got += r;
  }
  printf("server got %ld %s\n", got, got == n && !bad ? "ok" : "BAD");
  fflush(stdout);
  if (write(a, "answer", 6) != 6) return 1;
  close(a);
  int st = 0;
  waitpid(c, &st, 0);
  printf("client exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return got == n && !bad && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
