//! The engine: everything a checkpoint needs whatever the program holds.
//!
//! | module | what |
//! | --- | --- |
//! | `start` | start-up: settings, the coordinator handshake, the checkpoint thread, plugin registration |
//! | `ckpt` | the checkpoint thread's loop: one checkpoint round, and the way back after a restart |
//! | `restart` | the restart entry the restorer jumps to (re-creates the threads) |
//! | `fork`, `exec` | fork handlers and exec wrappers: children and exec'd programs stay in the job |
//! | `threads`, `arch` | suspending user threads (signal handler, saved contexts, raw clone) |
//! | `vdso` | the vDSO's entry points recorded in the image; no thread suspended inside the vDSO |
//! | `signals`, `sigwrap`, `sigevthread` | signal actions saved for the restart entry; wrappers that keep the checkpoint signal the library's; SIGEV_THREAD timers on a suspendable thread |
//! | `restartable` | poll/select/sleep wrappers that hide the EINTR a checkpoint causes |
//! | `memory`, `writer` | the memory plan and the parallel image writers |
//! | `incr` | incremental images: the previous generation's chunks and content hashes |
//! | `dirty` | dirty-page tracking (userfaultfd write-protect, `PAGEMAP_SCAN`): chunks provably unchanged are not hashed |
//! | `streams` | the per-node limit on write streams (`DMTCP_NODE_STREAMS`) |
//! | `forkmem` | whether a forked writer's worst-case memory fits on the node (the default forked checkpointing), node-wide reservations |
//! | `unmap` | `munmap`, `mremap`, `mmap(MAP_FIXED)` wrappers: requested exclusions end with the memory they were asked for |
//! | `lazymem` | the socket to the page server of a lazy restore; every page filled before a fork or a checkpoint |
//! | `proctree` | the process's place in the job's tree, recorded in the image |
//! | `vpid` | virtual pids and tids after a restart without a pid namespace |
//! | `procpath` | /proc/<pid>/... paths with the ids the program knows (file-call wrappers) |
//! | `coord` | the link to the coordinator: barriers, the name service |
//! | `secret` | the coordinator's secret, in a page left out of images; the answer to its challenge |
//! | `fds` | the fd table: the library's protected fds, fd helpers, what dmtcp_restart put in place |
//! | `fdguard` | `close`, `dup2`, `dup3`, `close_range`, `closefrom` wrappers that keep the protected fds the library's |
//! | `plugin` | the plugin manager: internal plugins and user plugins (`--with-plugin`), events in order |
//! | `capi` | the program interface of include/dmtcp.h (`dmtcp_checkpoint`, barriers, name service, virtual ids) |
//! | `alloc`, `flock`, `log` | the library's own heap, its fork-safe lock, its messages |
//! | `iface` | the one door through which plugins use the engine |
//!
//! The engine imports no plugin: `start` takes the list from
//! [`crate::plugins::all`] and registers it, and everything else reaches
//! plugins through events and the hooks of [`plugin::Plugin`].

pub(crate) mod alloc;
pub(crate) mod arch;
pub(crate) mod capi;
pub(crate) mod ckpt;
pub(crate) mod coord;
pub(crate) mod dirty;
pub(crate) mod exec;
pub(crate) mod fdguard;
pub mod fds;
pub(crate) mod flock;
pub(crate) mod fork;
pub(crate) mod forkmem;
pub mod iface;
pub(crate) mod incr;
pub(crate) mod lazymem;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod plugin;
pub(crate) mod procpath;
pub(crate) mod proctree;
pub(crate) mod restart;
pub(crate) mod restartable;
pub(crate) mod secret;
pub(crate) mod sigevthread;
pub(crate) mod signals;
pub(crate) mod sigwrap;
pub(crate) mod start;
pub(crate) mod streams;
pub(crate) mod threads;
pub(crate) mod unmap;
pub(crate) mod vdso;
pub(crate) mod vpid;
pub(crate) mod writer;
pub(crate) mod xxh3;
