//! The internal plugins, one folder each. Each uses the engine only
//! through [`crate::engine::iface`] and never another plugin.
//!
//! Order matters: before a checkpoint plugins run in this order, after it
//! (resume, restart) in the reverse one. The file plugin handles every fd
//! that no plugin listed before it claims; the pty plugin comes before it
//! so that at restart it opens terminals after the file plugin closed what
//! the process inherited.

mod event;
mod file;
mod ipc;
mod process;
mod pty;
mod socket;
mod timer;

use crate::engine::iface::Plugin;

/// Every internal plugin, in load order (`dmtcp_launch
/// --disable-<name>-plugin` removes one).
pub fn all() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(process::ProcessPlugin::new()),
        Box::new(event::EventPlugin),
        Box::new(pty::PtyPlugin),
        Box::new(file::FilePlugin::new()),
        Box::new(socket::SocketPlugin),
        Box::new(ipc::SysvPlugin),
        Box::new(timer::TimerPlugin::new()),
    ]
}
