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
    /// The process is about to exec another program.
    PreExec,
    /// Start-up of a program exec'd by a checkpointed process.
    PostExec,
    /// After fork, in the parent.
    AtforkParent,
    /// After fork, in the child.
    AtforkChild,
    /// A user thread goes on after a checkpoint or a restart (runs on it).
    ThreadResume,
}

impl Event {
    fn reversed(self) -> bool {
        matches!(self, Event::Resume | Event::Restart | Event::Exit | Event::PostExec | Event::AtforkParent | Event::AtforkChild | Event::ThreadResume)
    }
}

/// One plugin.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn event(&self, ev: Event);
}

static PLUGINS: OnceLock<Vec<Box<dyn Plugin>>> = OnceLock::new();

/// `DmtcpPluginDescriptor_t` of include/dmtcp.h.
#[repr(C)]
pub struct Descriptor {
    pub plugin_api_version: *const std::ffi::c_char,
    pub dmtcp_version: *const std::ffi::c_char,
    pub plugin_name: *const std::ffi::c_char,
    pub author_name: *const std::ffi::c_char,
    pub author_email: *const std::ffi::c_char,
    pub description: *const std::ffi::c_char,
    pub event_hook: Option<extern "C" fn(std::ffi::c_int, *mut std::ffi::c_void)>,
}

const _: () = {
    assert!(core::mem::size_of::<Descriptor>() == 56);
    assert!(core::mem::offset_of!(Descriptor, event_hook) == 48);
};

/// A user plugin: its descriptor lives in its library, loaded for good.
#[derive(Clone, Copy)]
struct UserPlugin(&'static Descriptor);
// SAFETY: descriptors are immutable statics of loaded libraries.
unsafe impl Send for UserPlugin {}
// SAFETY: as above.
unsafe impl Sync for UserPlugin {}

/// Most user plugins a process may load.
const MAX_USER: usize = 32;
/// User plugins, in registration (load) order: a fixed array read without
/// locks or allocation (events also run on user threads in the checkpoint
/// signal handler).
static USER: [std::sync::atomic::AtomicPtr<Descriptor>; MAX_USER] = [const { std::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_USER];
static N_USER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn event_code(ev: Event) -> std::ffi::c_int {
    match ev {
        Event::Init => 1,
        Event::Exit => 2,
        Event::PreSuspend => 3,
        Event::PreCheckpoint => 4,
        Event::Resume => 5,
        Event::Restart => 6,
        Event::PreExec => 7,
        Event::PostExec => 8,
        Event::AtforkParent => 9,
        Event::AtforkChild => 10,
        Event::ThreadResume => 11,
    }
}

/// The registered user plugins (no allocation, no lock).
fn user_plugins() -> impl DoubleEndedIterator<Item = UserPlugin> {
    let n = N_USER.load(std::sync::atomic::Ordering::Acquire).min(MAX_USER);
    USER[..n].iter().filter_map(|p| {
        let d = p.load(std::sync::atomic::Ordering::Acquire);
        // SAFETY: registered descriptors are statics of loaded libraries.
        (!d.is_null()).then(|| UserPlugin(unsafe { &*d }))
    })
}

/// `dmtcp_register_plugin` of include/dmtcp.h.
///
/// # Safety
/// `d` must point to a descriptor that stays valid for the life of the process.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_register_plugin(d: *const Descriptor) {
    if d.is_null() {
        return;
    }
    // SAFETY: the caller's descriptor is a static of its library.
    let p = UserPlugin(unsafe { &*d });
    let version = if p.0.plugin_api_version.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string of the plugin.
        unsafe { std::ffi::CStr::from_ptr(p.0.plugin_api_version) }.to_string_lossy().into_owned()
    };
    if version != "1" {
        crate::log::error(format_args!("a plugin declares API version {version:?}; this library speaks \"1\": not loaded"));
        return;
    }
    let i = N_USER.load(std::sync::atomic::Ordering::SeqCst);
    if i >= MAX_USER {
        crate::log::error(format_args!("more than {MAX_USER} plugins: not loaded"));
        return;
    }
    USER[i].store(p.0 as *const Descriptor as *mut Descriptor, std::sync::atomic::Ordering::SeqCst);
    N_USER.store(i + 1, std::sync::atomic::Ordering::Release);
    // Registered after our own start-up (libraries initialise in any order): init it now.
    if PLUGINS.get().is_some() {
        if let Some(h) = p.0.event_hook {
            h(event_code(Event::Init), core::ptr::null_mut());
            if POST_EXEC.load(std::sync::atomic::Ordering::SeqCst) {
                h(event_code(Event::PostExec), core::ptr::null_mut());
            }
        }
    }
}

/// Set at start-up when this program was exec'd by a checkpointed process.
pub static POST_EXEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Deliver `ev` to the user plugins only (events internal plugins ignore);
/// allocation-free, safe in the checkpoint signal handler.
pub fn run_user(ev: Event) {
    let code = event_code(ev);
    for u in user_plugins() {
        if let Some(h) = u.0.event_hook {
            h(code, core::ptr::null_mut());
        }
    }
}

/// Register the plugins (once, at start-up), minus the disabled ones.
pub fn init(all: Vec<Box<dyn Plugin>>, disabled: &[String]) {
    let list = all.into_iter().filter(|p| !disabled.iter().any(|d| d == p.name())).collect();
    let _ = PLUGINS.set(list);
}

/// Deliver `ev` to every plugin in the documented order. User plugins are
/// the outer layer (as in DMTCP, they come first in the preload order):
/// before a checkpoint they run first, in load order, then the internal
/// ones; after it everything runs in reverse, so files and other kernel
/// state are back before a user plugin's resume or restart hook runs.
pub fn run(ev: Event) {
    let Some(list) = PLUGINS.get() else { return };
    let code = event_code(ev);
    let call_user = |u: UserPlugin| {
        if let Some(h) = u.0.event_hook {
            h(code, core::ptr::null_mut());
        }
    };
    if ev.reversed() {
        list.iter().rev().for_each(|p| p.event(ev));
        user_plugins().rev().for_each(call_user);
    } else {
        user_plugins().for_each(call_user);
        list.iter().for_each(|p| p.event(ev));
    }
}
