/*
 * dmtcp.h -- the program interface of DMTCP-rs (DMTCP's names and values).
 *
 * Every function is a weak symbol: a program that uses them compiles and
 * runs without the checkpointer, where each call reports "not present".
 * Under dmtcp_launch the preloaded libdmtcp.so provides them.
 *
 *   #include <dmtcp.h>
 *   if (dmtcp_is_enabled()) {
 *     int r = dmtcp_checkpoint();   // DMTCP_AFTER_CHECKPOINT or DMTCP_AFTER_RESTART
 *   }
 */
#ifndef DMTCP_RS_DMTCP_H
#define DMTCP_RS_DMTCP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return values of dmtcp_checkpoint(). */
#define DMTCP_AFTER_CHECKPOINT 1
#define DMTCP_AFTER_RESTART 2
/* Returned by every call when the program runs without the checkpointer. */
#define DMTCP_NOT_PRESENT 3

/* 1 under the checkpointer, 0 otherwise. */
int dmtcp_is_enabled(void) __attribute__((weak));
#define dmtcp_is_enabled() (dmtcp_is_enabled ? dmtcp_is_enabled() : 0)

/*
 * Checkpoint the whole computation and return once it is done:
 * DMTCP_AFTER_CHECKPOINT in the process that goes on, DMTCP_AFTER_RESTART
 * when the process was restarted from that checkpoint; <= 0 on error.
 * Do not call it between dmtcp_disable_ckpt() and dmtcp_enable_ckpt().
 */
int dmtcp_checkpoint(void) __attribute__((weak));
#define dmtcp_checkpoint() (dmtcp_checkpoint ? dmtcp_checkpoint() : DMTCP_NOT_PRESENT)

/*
 * Hold off checkpoints until the matching dmtcp_enable_ckpt(): a checkpoint
 * requested meanwhile waits, then happens. Nests; any thread may use it.
 * Returns 1 on success.
 */
int dmtcp_disable_ckpt(void) __attribute__((weak));
#define dmtcp_disable_ckpt() (dmtcp_disable_ckpt ? dmtcp_disable_ckpt() : DMTCP_NOT_PRESENT)
int dmtcp_enable_ckpt(void) __attribute__((weak));
#define dmtcp_enable_ckpt() (dmtcp_enable_ckpt ? dmtcp_enable_ckpt() : DMTCP_NOT_PRESENT)

/* The directory this process's next image goes to (NULL when not present). */
const char *dmtcp_get_ckpt_dir(void) __attribute__((weak));
#define dmtcp_get_ckpt_dir() (dmtcp_get_ckpt_dir ? dmtcp_get_ckpt_dir() : (const char *)0)
/* Change it; returns 1 on success. */
int dmtcp_set_ckpt_dir(const char *dir) __attribute__((weak));
#define dmtcp_set_ckpt_dir(d) (dmtcp_set_ckpt_dir ? dmtcp_set_ckpt_dir(d) : DMTCP_NOT_PRESENT)

/* Checkpoint generation of the computation (0 before the first), or -1. */
int dmtcp_get_generation(void) __attribute__((weak));
#define dmtcp_get_generation() (dmtcp_get_generation ? dmtcp_get_generation() : -1)

/* Ask the coordinator: processes connected, and 1 if all are running.
 * Returns 1 on success, <= 0 on error. */
int dmtcp_get_coordinator_status(int *num_peers, int *running) __attribute__((weak));
#define dmtcp_get_coordinator_status(n, r) \
  (dmtcp_get_coordinator_status ? dmtcp_get_coordinator_status(n, r) : DMTCP_NOT_PRESENT)

/* ---- Plugins ------------------------------------------------------------
 *
 * A plugin is a shared library loaded with
 *   dmtcp_launch --with-plugin /abs/path/libmyplugin.so[:...] prog
 * (or DMTCP_PLUGIN=...). It declares itself with DMTCP_DECL_PLUGIN and gets
 * its event hook called. Events before a checkpoint reach user plugins
 * first (in load order), then the internal ones; events after it run in
 * reverse, so files are back before a plugin's RESUME/RESTART hook.
 *
 * DMTCP_EVENT_PRECHECKPOINT runs while the program's threads are
 * suspended: do not call malloc or take locks the program may hold there;
 * do such work in DMTCP_EVENT_PRESUSPEND.
 *
 * DMTCP_EVENT_THREAD_RESUME runs on every user thread inside the
 * checkpoint signal handler: only async-signal-safe calls there.
 *
 * A plugin's own memory (its statics, what it allocated) is part of the
 * image like the program's: state saved in PRECHECKPOINT is there again in
 * RESTART. Memory it must not save (device memory it re-creates) it keeps
 * out with dmtcp_exclude_memory.
 */
typedef enum {
  DMTCP_EVENT_INIT = 1,          /* the plugin is loaded (before main) */
  DMTCP_EVENT_EXIT = 2,          /* the process exits */
  DMTCP_EVENT_PRESUSPEND = 3,    /* a checkpoint starts; threads still run */
  DMTCP_EVENT_PRECHECKPOINT = 4, /* threads suspended, image about to be written */
  DMTCP_EVENT_RESUME = 5,        /* image written, the same process goes on */
  DMTCP_EVENT_RESTART = 6,       /* the process was restarted from an image */
  DMTCP_EVENT_PRE_EXEC = 7,      /* about to exec another program */
  DMTCP_EVENT_POST_EXEC = 8,     /* start-up of a program exec'd by a checkpointed one */
  DMTCP_EVENT_ATFORK_PARENT = 9, /* after fork, in the parent */
  DMTCP_EVENT_ATFORK_CHILD = 10, /* after fork, in the child */
  DMTCP_EVENT_THREAD_RESUME = 11 /* on each user thread, after a checkpoint or restart */
} DmtcpEvent_t;

/* The next definition of a function a plugin wraps (libc's, usually):
 *   pid_t getpid(void) { return DMTCP_NEXT_FNC(getpid)(); }
 * Needs _GNU_SOURCE and <dlfcn.h>. */
#define DMTCP_NEXT_FNC(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

/* What an event hook's `data` points to (never NULL for these events):
 * PRESUSPEND, PRECHECKPOINT, RESUME, RESTART: the checkpoint round
 * (ckptInfo: its generation and the checkpoint directory); RESUME, RESTART
 * and THREAD_RESUME: whether the process came back from an image
 * (isRestart, also under DMTCP's name resumeUserThreadInfo). For other
 * events only isRestart is meaningful. */
typedef union {
  struct {
    int isRestart;
  } resumeUserThreadInfo;
  struct {
    int isRestart;
    int generation;
    const char *ckptDir; /* NULL outside a checkpoint round */
  } ckptInfo;
} DmtcpEventData_t;

/* Keep memory out of images (page-aligned `addr`; `len` rounded up to
 * pages). DMTCP_MEM_SKIP: nothing is mapped there after a restart (the
 * plugin re-creates it: a device's queues, a GPU buffer); DMTCP_MEM_ZERO:
 * it comes back zero-filled (a cache rebuilt on demand); DMTCP_MEM_SAVE:
 * saved again. Returns 1, or -1 for a bad argument. Mappings of character
 * devices (other than /dev/zero) are never saved: they belong to the
 * device's plugin. A request holds for the memory mapped when it was
 * made: once the program unmaps, moves (mremap) or maps over (MAP_FIXED)
 * part of it, that part is saved again like any other memory. */
#define DMTCP_MEM_SAVE 0
#define DMTCP_MEM_SKIP 1
#define DMTCP_MEM_ZERO 2
int dmtcp_exclude_memory(const void *addr, size_t len, int how) __attribute__((weak));
#define dmtcp_exclude_memory(a, l, h) (dmtcp_exclude_memory ? dmtcp_exclude_memory(a, l, h) : DMTCP_NOT_PRESENT)

/* Own an fd: a device connection, or a link to a process outside the
 * computation. The engine then neither drains, saves nor restores it.
 * After a restart the number is held by /dev/null until the plugin's
 * RESTART hook puts the new object there (dup2) and claims it again. A
 * claim ends with dmtcp_release_fd, or when the fd no longer leads to
 * the object it was claimed for (closed, number reused). Any thread.
 * Returns 1, or -1 if fd is not open (release: 0 if it was not claimed). */
int dmtcp_claim_fd(int fd) __attribute__((weak));
#define dmtcp_claim_fd(fd) (dmtcp_claim_fd ? dmtcp_claim_fd(fd) : DMTCP_NOT_PRESENT)
int dmtcp_release_fd(int fd) __attribute__((weak));
#define dmtcp_release_fd(fd) (dmtcp_release_fd ? dmtcp_release_fd(fd) : DMTCP_NOT_PRESENT)

/* Fail this process's part of the checkpoint under way, from a PRESUSPEND
 * or PRECHECKPOINT hook, when the plugin cannot save what it owns (an
 * unsupported device, say): no image is written, the checkpoint reports
 * `reason` (dmtcp_command -bc prints it and exits non-zero), the previous
 * generation is kept and the process goes on (RESUME follows). Returns 1,
 * or -1 outside those hooks. */
int dmtcp_fail_checkpoint(const char *reason) __attribute__((weak));
#define dmtcp_fail_checkpoint(r) (dmtcp_fail_checkpoint ? dmtcp_fail_checkpoint(r) : DMTCP_NOT_PRESENT)

#define DMTCP_PLUGIN_API_VERSION "1"

typedef struct {
  const char *plugin_api_version; /* DMTCP_PLUGIN_API_VERSION */
  const char *dmtcp_version;      /* informational */
  const char *plugin_name;
  const char *author_name;
  const char *author_email;
  const char *description;
  void (*event_hook)(DmtcpEvent_t event, void *data); /* data: DmtcpEventData_t * */
} DmtcpPluginDescriptor_t;

/*
 * For event hooks only (they run on the checkpoint thread): a name service
 * shared by every process of the computation, and global barriers. The
 * usual exchange after a restart: publish your new id, barrier, query the
 * others'. Return 1 on success; the query returns 0 for an unknown key and
 * sets *val_len to the value's length (buffer size on entry).
 */
int dmtcp_send_key_val_pair_to_coordinator(const char *db, const void *key, uint32_t key_len,
                                           const void *val, uint32_t val_len) __attribute__((weak));
int dmtcp_send_query_to_coordinator(const char *db, const void *key, uint32_t key_len,
                                    void *val, uint32_t *val_len) __attribute__((weak));
/* Lists the entries of `db` whose key begins with `prefix` (prefix_len 0:
 * all), in key order, from the first key after `after` (NULL: from the
 * first), into buf as records [u32 key_len][key][u32 val_len][val]
 * (little-endian lengths): as many whole records as fit in *buf_len bytes
 * and in one answer (at most 3 MiB). Sets *buf_len to the bytes written and
 * returns the number of records (0: none left); -1 on error or when the
 * next record alone does not fit (*buf_len is then its size). Read the
 * rest by calling again with `after` = the last key returned. */
int dmtcp_send_list_query_to_coordinator(const char *db, const void *prefix, uint32_t prefix_len,
                                         const void *after, uint32_t after_len, void *buf,
                                         uint32_t *buf_len) __attribute__((weak));
int dmtcp_global_barrier(const char *name) __attribute__((weak));

/*
 * Virtual-id tables, saved with the image: hand the program a stable
 * virtual id for a real one that changes across a restart, and update the
 * real one in the RESTART event. Tables are created on first use.
 * The lookups return 0 for an unknown id.
 */
int dmtcp_vid_set(const char *table, uint64_t virt, uint64_t real) __attribute__((weak));
uint64_t dmtcp_vid_new(const char *table, uint64_t real) __attribute__((weak));
uint64_t dmtcp_vid_to_real(const char *table, uint64_t virt) __attribute__((weak));
uint64_t dmtcp_vid_to_virtual(const char *table, uint64_t real) __attribute__((weak));
int dmtcp_vid_erase(const char *table, uint64_t virt) __attribute__((weak));

/* Register a plugin (DMTCP_DECL_PLUGIN calls it from a constructor). */
void dmtcp_register_plugin(const DmtcpPluginDescriptor_t *descr) __attribute__((weak));

#define DMTCP_DECL_PLUGIN(descr)                                      \
  __attribute__((constructor)) static void dmtcp_plugin_register_(void) { \
    if (dmtcp_register_plugin) dmtcp_register_plugin(&(descr));      \
  }

#ifdef __cplusplus
}
#endif
#endif
