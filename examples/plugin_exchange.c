/* A plugin that, after a restart, publishes this process's new pid under
 * its rank, waits at a global barrier, and reads every rank's pid back:
 * how peers exchange ids that change across a restart; then lists every
 * rank's entry without knowing how many there are. Each process writes
 * what it learned to $EXCHANGE_LOG.<rank>: the queries' line, the
 * listing's line, and whether a too small buffer was refused. Needs RANK
 * and NPROC set. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dmtcp.h>

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event != DMTCP_EVENT_RESTART) return;
  const char *r = getenv("RANK"), *n = getenv("NPROC"), *log = getenv("EXCHANGE_LOG");
  if (!r || !n || !log) return;
  int rank = atoi(r), nproc = atoi(n);
  char key[32], val[64], line[1024], path[512];
  snprintf(key, sizeof key, "rank%d", rank);
  int vl = snprintf(val, sizeof val, "pid=%d", (int)getpid());
  dmtcp_send_key_val_pair_to_coordinator("exchange", key, (uint32_t)strlen(key), val, (uint32_t)vl);
  dmtcp_global_barrier("exchange");
  int len = 0;
  for (int i = 0; i < nproc; i++) {
    char got[64]; uint32_t gl = sizeof got - 1;
    snprintf(key, sizeof key, "rank%d", i);
    int ok = dmtcp_send_query_to_coordinator("exchange", key, (uint32_t)strlen(key), got, &gl);
    got[ok == 1 ? gl : 0] = 0;
    len += snprintf(line + len, sizeof line - len, "%s%s=%s", i ? " " : "", key, ok == 1 ? got : "?");
  }
  /* The same by a listing of every key that begins with "rank", with a
   * buffer for about one record: one call per entry. */
  len += snprintf(line + len, sizeof line - len, "\n");
  char buf[40], after[32];
  uint32_t after_len = 0;
  int first = 1, small = 0;
  for (;;) {
    uint32_t bl = sizeof buf;
    int n = dmtcp_send_list_query_to_coordinator("exchange", "rank", 4, first ? NULL : after,
                                                 after_len, buf, &bl);
    if (n <= 0) break;
    for (uint32_t at = 0; n-- > 0;) {
      uint32_t kl, vl2;
      memcpy(&kl, buf + at, 4);
      memcpy(&vl2, buf + at + 4 + kl, 4);
      len += snprintf(line + len, sizeof line - len, "%s%.*s=%.*s", first ? "" : " ", (int)kl,
                      buf + at + 4, (int)vl2, buf + at + 8 + kl);
      memcpy(after, buf + at + 4, kl);
      after_len = kl;
      first = 0;
      at += 8 + kl + vl2;
    }
  }
  /* A buffer too small for one record: -1, and the size it needs. */
  uint32_t tiny = 4;
  if (dmtcp_send_list_query_to_coordinator("exchange", "rank", 4, NULL, 0, buf, &tiny) == -1 &&
      tiny > 4)
    small = 1;
  len += snprintf(line + len, sizeof line - len, "\nsmall buffer: %s", small ? "ok" : "wrong");
  snprintf(path, sizeof path, "%s.%d", log, rank);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) { ssize_t w = write(fd, line, len); (void)w; close(fd); }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "exchange", "DMTCP-rs", "", "exchanges pids after restart", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
