/* A program that keeps a TCP connection to a server outside the
 * computation and owns it with dmtcp_claim_fd: the checkpointer leaves it
 * alone, and after a restart the program's own plugin hook connects again
 * and puts the new connection at the old number. Each request runs with
 * checkpoints held off, so none is cut in half.
 * Usage: plugin_claimfd PORT COUNT. Prints "placeholder ok" from the
 * restart hook when the claimed number was held by /dev/null, then
 * "RESULT <sum of the echoed numbers>". */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <dmtcp.h>

static int port, conn = -1;

static int dial(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("connect");
    exit(2);
  }
  return s;
}

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event != DMTCP_EVENT_RESTART || conn < 0) return;
  struct stat st;
  if (fstat(conn, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3))
    printf("placeholder ok\n");
  else
    printf("placeholder WRONG\n");
  int s = dial();
  dup2(s, conn);
  close(s);
  if (dmtcp_claim_fd(conn) != 1) printf("reclaim failed\n");
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "claimfd", "DMTCP-rs", "", "reconnects an owned connection", hook,
};
DMTCP_DECL_PLUGIN(descriptor)

int main(int argc, char **argv) {
  if (argc < 3) return 1;
  port = atoi(argv[1]);
  int count = atoi(argv[2]);
  setvbuf(stdout, NULL, _IONBF, 0);
  conn = dial();
  int c = dmtcp_claim_fd(conn);
  printf("claim %s\n", c == 1 ? "ok" : c == DMTCP_NOT_PRESENT ? "not-present" : "failed");
  long sum = 0;
  for (int i = 1; i <= count; i++) {
    char out[16], in[16];
    snprintf(out, sizeof out, "%07d\n", i);
    dmtcp_disable_ckpt();
    size_t got = 0;
    if (write(conn, out, 8) != 8) { perror("write"); return 3; }
    while (got < 8) {
      ssize_t n = read(conn, in + got, 8 - got);
      if (n <= 0) { perror("read"); return 4; }
      got += (size_t)n;
    }
    dmtcp_enable_ckpt();
    if (memcmp(in, out, 8) != 0) { printf("bad echo at %d\n", i); return 5; }
    sum += atol(in);
    if (i % 10 == 0) printf("step %d\n", i);
    usleep(10000);
  }
  printf("RESULT %ld\n", sum);
  return 0;
}
