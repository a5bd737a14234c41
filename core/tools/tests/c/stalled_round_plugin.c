/* A plugin that notes its pre-suspend and resume events in
 * events<RANK>.txt (in the working directory), and makes the process with
 * RANK=1 wait in its pre-suspend hook of the first checkpoint until the
 * file "release" exists (at most a minute): the test takes the
 * coordinator away while that round is under way. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dmtcp.h>

static void note(const char *what) {
  char path[64];
  const char *r = getenv("RANK");
  snprintf(path, sizeof path, "events%s.txt", r ? r : "");
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  ssize_t n = write(fd, what, strlen(what));
  (void)n;
  close(fd);
}

static void hook(DmtcpEvent_t event, void *data) {
  if (event == DMTCP_EVENT_PRESUSPEND) {
    note("presuspend\n");
    const char *r = getenv("RANK");
    if (r && atoi(r) == 1 && ((DmtcpEventData_t *)data)->ckptInfo.generation == 1) {
      for (int i = 0; i < 600 && access("release", F_OK) != 0; i++) usleep(100000);
    }
  } else if (event == DMTCP_EVENT_RESUME) {
    note("resume\n");
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "stalled-round", "DMTCP-rs", "", "holds one process in a checkpoint's pre-suspend", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
