/* Test plugin for sections.c: at DMTCP_EVENT_PRECHECKPOINT (every thread
 * of the program suspended) it reads the program's sections_inside[] and
 * appends "clear" or "INSIDE <thread>" to the file named by $EVENT_LOG.
 * open/write only: the program is suspended. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dmtcp.h>

static void note(const char *what, int t) {
  const char *path = getenv("EVENT_LOG");
  if (!path) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  char line[32];
  size_t n = strlen(what);
  memcpy(line, what, n);
  if (t >= 0) {
    line[n++] = ' ';
    line[n++] = (char)('0' + t);
  }
  line[n++] = '\n';
  ssize_t w = write(fd, line, n);
  (void)w;
  close(fd);
}

static void hook(DmtcpEvent_t event, void *data) {
  (void)data;
  if (event != DMTCP_EVENT_PRECHECKPOINT) return;
  atomic_int *inside = dlsym(RTLD_DEFAULT, "sections_inside");
  if (!inside) {
    note("NO-SYMBOL", -1);
    return;
  }
  for (int t = 0; t < 4; t++)
    if (atomic_load(&inside[t])) {
      note("INSIDE", t);
      return;
    }
  note("clear", -1);
}

static DmtcpPluginDescriptor_t descriptor = {
  DMTCP_PLUGIN_API_VERSION, "0.1.0", "sections-check", "DMTCP-rs", "", "checks no thread is inside a disabled section at checkpoint", hook,
};

DMTCP_DECL_PLUGIN(descriptor)
