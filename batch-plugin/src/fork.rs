//! Starting a task as a forked child (the one `unsafe` of dmtcp_srun).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Spawn `cmd` with fork and exec, never posix_spawn: the engine's fork
/// handlers then make the child a process of the computation before this
/// returns (the parent waits for the child's join), so no image shows this
/// process without its child.
pub fn spawn_forked(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: the closure runs in the forked child and does nothing; its
    // presence only makes std fork and exec instead of posix_spawn.
    unsafe { cmd.pre_exec(|| Ok(())) };
    cmd.spawn()
}
