//! `libdmtcp.so`, the library `dmtcp_launch` preloads into every process of
//! a job.
//!
//! It has two parts, one folder each (docs/architecture.md draws the map):
//!
//! - [`engine`]: what every checkpoint needs whatever the program holds:
//!   start-up and the coordinator link, the checkpoint thread, suspending
//!   and resuming user threads, the memory plan and the image writers,
//!   fork/exec, the restart entry the restorer jumps to, the plugin
//!   manager and the program interface of include/dmtcp.h.
//! - [`plugins`]: one folder per internal plugin (process state, files,
//!   ptys, event fds, sockets, System V and POSIX IPC, timers). A plugin
//!   reaches the engine only through [`engine::iface`], the same shape the
//!   public C interface has: events, global barriers, the name service,
//!   virtual ids and the fd table. Plugins never import each other.
//!
//! At load time the engine reserves the restorer window, connects to the
//! coordinator, installs the checkpoint signal handler, registers the
//! plugins ([`plugins::all`]), starts its writer threads and its checkpoint
//! thread. The checkpoint thread waits for the coordinator; on a checkpoint
//! request it suspends the user threads, runs the plugins, writes the image
//! with the writers, and resumes. After a restart the same checkpoint
//! thread wakes up inside the restored process (`engine::restart`) and
//! brings the process back.
//!
//! Unsafe code lives in the engine's `arch` (assembly), `threads` (signal
//! handler and raw thread state), `writer` (raw memory reads) and `restart`
//! (the restart entry), and in the plugins' system calls; each block says
//! why it is sound.

pub mod engine;
pub mod plugins;

/// The library's own allocator: its state is never touched by user threads,
/// so the checkpoint thread may allocate while they are suspended.
#[global_allocator]
pub(crate) static GLOBAL: engine::alloc::Heap = engine::alloc::Heap::new();
