/* sharedring TOKENS [LOG]: four processes pass a token around a ring
 * that uses a pipe, a UNIX stream socketpair, a TCP connection over
 * loopback and a second pipe; each paces itself with a periodic timerfd
 * (1 ms) and records the last token it handled in a shared memory page.
 * Every process keeps every descriptor made before the forks, so the
 * socketpair and the pipes are shared by all four (one open file
 * description each).
 *
 *   P0 --pipe--> P1 --socketpair--> P2 --tcp--> P3 --pipe--> P0
 *
 * Each process adds its own term to the token's sum; when P0 gets token n
 * back it checks the sum and that every slot of the shared page says n.
 * Every 200 tokens P0 writes "tokens N"; after TOKENS tokens (0: never)
 * "done N sum X", and it ends the others and exits 0. On a wrong token it
 * writes "MISMATCH ...", on a failed call "ERROR ...", and exits non-zero.
 * Lines go to stdout, or appended to LOG (opened for each line).
 * Used by the tests (tests/sockets.rs) and by `bench soak`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

struct token {
  uint64_t n;
  uint64_t sum;
};

static volatile uint64_t *slots;
static const char *logpath;
static int myid;

static void logline(const char *msg) {
  if (!logpath) {
    printf("%s\n", msg);
    fflush(stdout);
    return;
  }
  FILE *f = fopen(logpath, "a");
  if (!f) exit(3);
  fprintf(f, "%s\n", msg);
  fclose(f);
}

static void die(const char *what) {
  if (slots[4]) exit(0); /* P0 is ending the ring */
  char b[256];
  snprintf(b, sizeof b, "ERROR process %d: %s: %s", myid, what, strerror(errno));
  logline(b);
  exit(2);
}

static void full(int fd, void *p, size_t n, int wr) {
  char *c = p;
  while (n > 0) {
    ssize_t r = wr ? write(fd, c, n) : read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) errno = 0;
    if (r <= 0) die(wr ? "write" : r == 0 ? "read: end of stream" : "read");
    c += r;
    n -= (size_t)r;
  }
}

static uint64_t term(int id, uint64_t n) { return (n * 2654435761u) ^ (uint64_t)(id + 1) * 0x9e3779b97f4a7c15ull; }

/* Wait for one tick of this process's timer (1 ms period). */
static void tick(int tfd) {
  uint64_t t;
  full(tfd, &t, sizeof t, 0);
}

static void stage(int id, int in, int out, int tfd) {
  for (;;) {
    struct token t;
    full(in, &t, sizeof t, 0);
    tick(tfd);
    t.sum += term(id, t.n);
    slots[id] = t.n;
    full(out, &t, sizeof t, 1);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: sharedring TOKENS [LOG]\n");
    return 1;
  }
  uint64_t total = strtoull(argv[1], NULL, 10);
  logpath = argc > 2 ? argv[2] : NULL;
  slots = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slots == MAP_FAILED) die("mmap");
  int p01[2], p30[2], sp12[2];
  if (pipe(p01) || pipe(p30) || socketpair(AF_UNIX, SOCK_STREAM, 0, sp12)) die("pipe");
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (ls < 0 || bind(ls, (void *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (void *)&a, &al)) die("listen");
  pid_t kids[3];
  for (int id = 1; id <= 3; id++) {
    pid_t p = fork();
    if (p < 0) die("fork");
    if (p == 0) {
      myid = id;
      int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
      struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
      if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL)) die("timerfd");
      if (id == 1) {
        stage(1, p01[0], sp12[0], tfd);
      } else if (id == 2) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (void *)&a, sizeof a)) die("connect");
        stage(2, sp12[1], c, tfd);
      } else {
        int c = accept(ls, NULL, NULL);
        if (c < 0) die("accept");
        stage(3, c, p30[1], tfd);
      }
      _exit(0);
    }
    kids[id - 1] = p;
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
  struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
  if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL)) die("timerfd");
  logline("started");
  uint64_t all = 0;
  for (uint64_t n = 1;; n++) {
    struct token t = {n, 0};
    tick(tfd);
    t.sum = term(0, n);
    slots[0] = n;
    full(p01[1], &t, sizeof t, 1);
    full(p30[0], &t, sizeof t, 0);
    uint64_t want = term(0, n) + term(1, n) + term(2, n) + term(3, n);
    int bad = t.n != n || t.sum != want;
    for (int i = 0; i < 4; i++) bad |= slots[i] != n;
    if (bad) {
      char b[256];
      snprintf(b, sizeof b, "MISMATCH token %llu: got n=%llu sum=%llx want %llx; slots %llu %llu %llu %llu",
               (unsigned long long)n, (unsigned long long)t.n, (unsigned long long)t.sum,
               (unsigned long long)want, (unsigned long long)slots[0], (unsigned long long)slots[1],
               (unsigned long long)slots[2], (unsigned long long)slots[3]);
      logline(b);
      for (int i = 0; i < 3; i++) kill(kids[i], SIGKILL);
      return 1;
    }
    all += t.sum;
    if (n % 200 == 0) {
      char b[64];
      snprintf(b, sizeof b, "tokens %llu", (unsigned long long)n);
      logline(b);
    }
    if (n == total) {
      char b[64];
      snprintf(b, sizeof b, "done %llu sum %llx", (unsigned long long)n, (unsigned long long)all);
      logline(b);
      slots[4] = 1;
      for (int i = 0; i < 3; i++) kill(kids[i], SIGKILL);
      for (int i = 0; i < 3; i++) waitpid(kids[i], NULL, 0);
      return 0;
    }
  }
}
