/* A plugin that virtualizes the process id: the program keeps seeing the
 * pid it had at launch, although a restarted process gets a new kernel pid.
 * It wraps getpid() (calling the next definition with DMTCP_NEXT_FNC) and
 * keeps virtual -> real in a virtual-id table updated at restart. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/types.h>
#include <unistd.h>
#include <dmtcp.h>

static uint64_t vpid;

static pid_t real_getpid(void) {
  static pid_t (*next)(void);
  if (!next) next = DMTCP_NEXT_FNC(getpid);
  return next();
}

pid_t getpid(void) {
  pid_t r = real_getpid();
  if (!vpid || !dmtcp_vid_to_virtual) return r;
  uint64_t v = dmtcp_vid_to_virtual("pid", (uint64_t)r);
  return v ? (pid_t)v : r;
}

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event == DMTCP_EVENT_INIT) {
    vpid = (uint64_t)real_getpid();
    dmtcp_vid_set("pid", vpid, vpid);
  } else if (event == DMTCP_EVENT_RESTART) {
    dmtcp_vid_set("pid", vpid, (uint64_t)real_getpid());
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "vpid", "DMTCP-rs", "", "keeps getpid() stable across restarts", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
