/* Fault injection: a plugin that makes the process whose $RANK equals
 * $FAULT_RANK exit in the pre-checkpoint event of checkpoint generation
 * $FAULT_GEN, after its threads are suspended: the round loses a process
 * half way. */
#include <stdlib.h>
#include <unistd.h>
#include <dmtcp.h>

static void hook(DmtcpEvent_t event, void *data) {
  if (event != DMTCP_EVENT_PRECHECKPOINT) return;
  const char *r = getenv("RANK"), *fr = getenv("FAULT_RANK"), *fg = getenv("FAULT_GEN");
  if (!r || !fr || !fg || atoi(r) != atoi(fr)) return;
  if (((DmtcpEventData_t *)data)->ckptInfo.generation == atoi(fg)) _exit(3);
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "fault-exit", "DMTCP-rs", "", "exits during a chosen checkpoint", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
