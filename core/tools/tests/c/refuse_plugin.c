/* A plugin that cannot save its state at the first checkpoint: it fails
 * that round with dmtcp_fail_checkpoint (from its pre-checkpoint hook),
 * and lets later rounds through. Outside a round's hooks the call is
 * refused (-1): tried from the INIT event. What it saw goes to stderr. */
#include <stdio.h>
#include <dmtcp.h>

static int rounds;

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event == DMTCP_EVENT_INIT)
    fprintf(stderr, "refuse-plugin: outside a round: %d\n",
            dmtcp_fail_checkpoint("not now"));
  if (event != DMTCP_EVENT_PRECHECKPOINT) return;
  if (rounds++ == 0) {
    int r = dmtcp_fail_checkpoint("the test plugin's device is busy");
    /* Nothing printed here: pre-checkpoint hooks run with the program's
     * threads suspended (stdio's lock may be held). */
    if (r != 1) *(volatile int *)0 = 0;
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "refuse", "DMTCP-rs", "", "fails the first checkpoint", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
