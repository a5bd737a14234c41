/* A plugin whose resume hook meets the other processes at a global
 * barrier, the process with RANK=1 only after a second: a checkpoint
 * requested meanwhile reaches the others while they wait there. */
#include <stdlib.h>
#include <unistd.h>
#include <dmtcp.h>

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event != DMTCP_EVENT_RESUME) return;
  const char *r = getenv("RANK");
  if (r && atoi(r) == 1) sleep(1);
  dmtcp_global_barrier("slow-resume");
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "slow-resume", "DMTCP-rs", "", "waits at a barrier on resume", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
