/* A program with a connection to a server outside the job (redis): its own
 * plugin (declared in the program itself) closes the connection before a
 * checkpoint and opens a new one on resume and on restart, so no socket to
 * the outside is ever in an image. Each INCR runs in a disabled section, so
 * a checkpoint never cuts a request in half. Works without the
 * checkpointer too. Needs REDIS_PORT; prints one line per INCR. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <dmtcp.h>

static int fd = -1, port, connections;
static const char *key = "dmtcp-example-counter";

static int connect_redis(void) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(2); }
  connections++;
  return s;
}

static long incr(void) {
  char cmd[128], buf[64];
  int n = snprintf(cmd, sizeof cmd, "*2\r\n$4\r\nINCR\r\n$%zu\r\n%s\r\n", strlen(key), key);
  if (write(fd, cmd, n) != n) { perror("write"); exit(3); }
  ssize_t k = read(fd, buf, sizeof buf - 1);
  if (k <= 0 || buf[0] != ':') { fprintf(stderr, "bad reply\n"); exit(4); }
  buf[k] = 0;
  return atol(buf + 1);
}

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event == DMTCP_EVENT_PRESUSPEND && fd >= 0) {
    close(fd);
    fd = -1;
  } else if (event == DMTCP_EVENT_RESUME || event == DMTCP_EVENT_RESTART) {
    fd = connect_redis();
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "redis-connection", "DMTCP-rs", "", "reconnects to redis around checkpoints", hook,
};
DMTCP_DECL_PLUGIN(descriptor)

int main(void) {
  const char *p = getenv("REDIS_PORT");
  if (!p) { fprintf(stderr, "set REDIS_PORT\n"); return 1; }
  port = atoi(p);
  fd = connect_redis();
  for (int i = 0; i < 30; i++) {
    dmtcp_disable_ckpt();
    if (fd < 0) fd = connect_redis();
    long v = incr();
    dmtcp_enable_ckpt();
    printf("step %d value %ld connections %d\n", i, v, connections);
    fflush(stdout);
    usleep(100000);
  }
  printf("RESULT done\n");
  return 0;
}
