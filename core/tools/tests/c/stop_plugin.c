/* A plugin that stops its process (SIGSTOP, all threads) in the
 * pre-checkpoint hook, after it suspended, when the file "stop-pid" in
 * the working directory names its pid (the file is removed first, so it
 * stops once): the test's stand-in for a process stopped by a user or a
 * debugger while the images are written. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <dmtcp.h>

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event != DMTCP_EVENT_PRECHECKPOINT) return;
  FILE *f = fopen("stop-pid", "r");
  if (!f) return;
  int pid = 0;
  int ok = fscanf(f, "%d", &pid) == 1;
  fclose(f);
  if (ok && pid == getpid()) {
    unlink("stop-pid");
    raise(SIGSTOP);
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "stop", "DMTCP-rs", "", "stops one process after it suspended", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
