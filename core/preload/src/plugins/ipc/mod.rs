//! The "sysv" plugin: inter-process communication objects that live in
//! the kernel, not in any fd or mapping of one process: System V message
//! queues, semaphore sets and shared memory segments (`sysv`, `sysvshm`,
//! ids virtualized) and POSIX message queues (`posixmq`, whose fds it
//! claims). DMTCP users disable it with `--disable-sysv-plugin`.

mod posixmq;
mod sysv;
mod sysvshm;

use crate::engine::iface::{Event, FdDesc, Plugin};

/// The plugin.
pub struct SysvPlugin;

impl Plugin for SysvPlugin {
    fn name(&self) -> &'static str {
        "sysv"
    }
    fn event(&self, ev: Event) {
        match ev {
            Event::PreCheckpoint => sysv::checkpoint(),
            Event::Resume => sysv::resume(),
            Event::Restart => sysv::restart(),
            _ => {}
        }
    }
    fn claims_fd(&self, d: &FdDesc) -> bool {
        d.fmt == libc::S_IFREG && posixmq::is_mqueue(d.fd)
    }
    fn keeps_fd(&self, fd: i32) -> bool {
        posixmq::is_mqueue(fd)
    }
}
