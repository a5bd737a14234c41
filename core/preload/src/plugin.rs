//! The internal event mechanism every feature of the library is built on.
//!
//! Plugins run in load order for events before a checkpoint (init,
//! pre-suspend, pre-checkpoint) and in reverse order for events after it
//! (resume, restart), as in DMTCP. A plugin can be disabled with
//! `dmtcp_launch --disable-<name>-plugin`.

use std::sync::OnceLock;

/// Events delivered to plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Library start-up, before the program's main.
    Init,
    /// A checkpoint was requested; user threads still run.
    PreSuspend,
    /// User threads are suspended; save state now.
    PreCheckpoint,
    /// The image is written; the same process goes on.
    Resume,
    /// The process was re-created from an image.
    Restart,
    /// The process is exiting.
    Exit,
}

impl Event {
    fn reversed(self) -> bool {
        matches!(self, Event::Resume | Event::Restart | Event::Exit)
    }
}

/// One plugin.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn event(&self, ev: Event);
}

static PLUGINS: OnceLock<Vec<Box<dyn Plugin>>> = OnceLock::new();

/// Register the plugins (once, at start-up), minus the disabled ones.
pub fn init(all: Vec<Box<dyn Plugin>>, disabled: &[String]) {
    let list = all.into_iter().filter(|p| !disabled.iter().any(|d| d == p.name())).collect();
    let _ = PLUGINS.set(list);
}

/// Deliver `ev` to every plugin in the documented order.
pub fn run(ev: Event) {
    let Some(list) = PLUGINS.get() else { return };
    if ev.reversed() {
        list.iter().rev().for_each(|p| p.event(ev));
    } else {
        list.iter().for_each(|p| p.event(ev));
    }
}
