/* A plugin that logs every event it receives, one line per event, to the
 * file named by $EVENT_LOG. It uses open/write only (no malloc, no stdio),
 * since DMTCP_EVENT_PRECHECKPOINT runs while the program is suspended.
 * Build: cc -shared -fPIC -I include -o libplugin_events.so examples/plugin_events.c
 * Use:   EVENT_LOG=/tmp/ev.txt dmtcp_launch --with-plugin $PWD/libplugin_events.so prog */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dmtcp.h>

static void log_event(const char *what) {
  const char *path = getenv("EVENT_LOG");
  if (!path) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t n = write(fd, what, strlen(what));
  n += write(fd, "\n", 1);
  (void)n;
  close(fd);
}

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  switch (event) {
    case DMTCP_EVENT_INIT: log_event("init"); break;
    case DMTCP_EVENT_EXIT: log_event("exit"); break;
    case DMTCP_EVENT_PRESUSPEND: log_event("presuspend"); break;
    case DMTCP_EVENT_PRECHECKPOINT: log_event("precheckpoint"); break;
    case DMTCP_EVENT_RESUME: log_event("resume"); break;
    case DMTCP_EVENT_RESTART: log_event("restart"); break;
    case DMTCP_EVENT_PRE_EXEC: log_event("pre-exec"); break;
    case DMTCP_EVENT_POST_EXEC: log_event("post-exec"); break;
    case DMTCP_EVENT_ATFORK_PARENT: log_event("atfork-parent"); break;
    case DMTCP_EVENT_ATFORK_CHILD: log_event("atfork-child"); break;
    case DMTCP_EVENT_THREAD_RESUME: log_event("thread-resume"); break;
  }
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "event-logger", "DMTCP-rs", "", "logs every event", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
