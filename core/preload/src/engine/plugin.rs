//! The internal event mechanism every feature of the library is built on.
//!
//! Plugins run in load order for events before a checkpoint (init,
//! pre-suspend, pre-checkpoint) and in reverse order for events after it
//! (resume, restart), as in DMTCP. A plugin can be disabled with
//! `dmtcp_launch --disable-<name>-plugin`.

use super::fds::FdDesc;
use dmtcp_common::image::Tree;
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
    /// A user thread goes on after a checkpoint or a restart (runs on it,
    /// inside the checkpoint signal handler: async-signal-safe code only).
    ThreadResume,
    /// Internal: the image is written (or writing failed), before the
    /// "checkpointed" barrier lets any process of the job go on: put back
    /// what was drained from the kernel (pipes).
    Written,
    /// Internal: every process of the job ran its restart hooks (the
    /// "restarted" barrier); user threads do not run yet: refill
    /// connections between processes.
    Restarted,
}

impl Event {
    fn reversed(self) -> bool {
        matches!(
            self,
            Event::Resume
                | Event::Restart
                | Event::Exit
                | Event::PostExec
                | Event::AtforkParent
                | Event::AtforkChild
                | Event::ThreadResume
                | Event::Written
                | Event::Restarted
        )
    }
}

/// One internal plugin: its events, and the hooks through which the engine
/// and the file plugin reach it without knowing it.
pub trait Plugin: Send + Sync {
    /// Its name (`--disable-<name>-plugin`).
    fn name(&self) -> &'static str;
    /// An event, in the order the module documentation gives.
    fn event(&self, ev: Event);
    /// Checkpoint: is this fd of a kind this plugin saves and restores
    /// itself? The file plugin leaves claimed fds alone (the first plugin
    /// in load order that claims an fd owns it).
    fn claims_fd(&self, _fd: &FdDesc) -> bool {
        false
    }
    /// Restart, before the file plugin closes what this process inherited:
    /// is `fd`, claimed by this plugin at checkpoint time, already in
    /// place (made by `dmtcp_restart` or by this plugin's restart hook)?
    fn keeps_fd(&self, _fd: i32) -> bool {
        false
    }
    /// Checkpoint, after the pre-checkpoint event: this plugin's records
    /// for `dmtcp_restart` (objects it re-creates once and hands to every
    /// process that shares them) go into the image's process tree.
    fn records(&self, _tree: &mut Tree) {}
}

/// The active plugin that claims `d`, by name.
pub fn fd_owner(d: &FdDesc) -> Option<&'static str> {
    PLUGINS
        .get()?
        .iter()
        .find(|p| p.claims_fd(d))
        .map(|p| p.name())
}

/// Does plugin `owner` keep `fd` at restart (see [`Plugin::keeps_fd`])?
pub fn owner_keeps(owner: &str, fd: i32) -> bool {
    PLUGINS
        .get()
        .and_then(|l| l.iter().find(|p| p.name() == owner))
        .is_some_and(|p| p.keeps_fd(fd))
}

/// Every active plugin's records for the image.
pub fn records(tree: &mut Tree) {
    if let Some(list) = PLUGINS.get() {
        list.iter().for_each(|p| p.records(tree));
    }
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
static USER: [std::sync::atomic::AtomicPtr<Descriptor>; MAX_USER] =
    [const { std::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_USER];
static N_USER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `DmtcpEventData_t` of include/dmtcp.h: what an event hook is told.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CkptInfo {
    pub is_restart: std::ffi::c_int,
    pub generation: std::ffi::c_int,
    pub ckpt_dir: *const std::ffi::c_char,
}

/// `DmtcpEventData_t` (a union whose members all begin with `isRestart`).
#[repr(C)]
pub union EventData {
    pub resume_user_thread_info: std::ffi::c_int,
    pub ckpt_info: CkptInfo,
}

const _: () = {
    assert!(core::mem::size_of::<EventData>() == 16);
    assert!(core::mem::offset_of!(CkptInfo, generation) == 4);
    assert!(core::mem::offset_of!(CkptInfo, ckpt_dir) == 8);
};

/// The checkpoint round under way: its generation, and whether the
/// process came back from an image (for the events' data).
static ROUND_GENERATION: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static ROUND_RESTART: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set the round the next events belong to (checkpoint thread).
pub fn set_round(generation: u32, restart: bool) {
    ROUND_GENERATION.store(generation as i32, std::sync::atomic::Ordering::SeqCst);
    ROUND_RESTART.store(restart, std::sync::atomic::Ordering::SeqCst);
}

/// The data of event `ev` (allocation-free: also built in the checkpoint
/// signal handler for THREAD_RESUME).
fn event_data(ev: Event) -> EventData {
    let restart = match ev {
        Event::Restart => true,
        Event::Resume => false,
        _ => ROUND_RESTART.load(std::sync::atomic::Ordering::SeqCst),
    };
    let dir = matches!(
        ev,
        Event::PreSuspend | Event::PreCheckpoint | Event::Resume | Event::Restart
    );
    EventData {
        ckpt_info: CkptInfo {
            is_restart: restart as std::ffi::c_int,
            generation: ROUND_GENERATION.load(std::sync::atomic::Ordering::SeqCst),
            ckpt_dir: if dir {
                super::capi::dir_ptr()
            } else {
                core::ptr::null()
            },
        },
    }
}

/// The event's number in include/dmtcp.h; None for internal events.
fn event_code(ev: Event) -> Option<std::ffi::c_int> {
    Some(match ev {
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
        Event::Written | Event::Restarted => return None,
    })
}

/// The registered user plugins (no allocation, no lock).
fn user_plugins() -> impl DoubleEndedIterator<Item = UserPlugin> {
    let n = N_USER
        .load(std::sync::atomic::Ordering::Acquire)
        .min(MAX_USER);
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
        unsafe { std::ffi::CStr::from_ptr(p.0.plugin_api_version) }
            .to_string_lossy()
            .into_owned()
    };
    if version != "1" {
        super::log::error(format_args!(
            "a plugin declares API version {version:?}; this library speaks \"1\": not loaded"
        ));
        return;
    }
    let i = N_USER.load(std::sync::atomic::Ordering::SeqCst);
    if i >= MAX_USER {
        super::log::error(format_args!("more than {MAX_USER} plugins: not loaded"));
        return;
    }
    USER[i].store(
        p.0 as *const Descriptor as *mut Descriptor,
        std::sync::atomic::Ordering::SeqCst,
    );
    N_USER.store(i + 1, std::sync::atomic::Ordering::Release);
    // Registered after our own start-up (libraries initialise in any order): init it now.
    if PLUGINS.get().is_some() {
        if let Some(h) = p.0.event_hook {
            let call = |ev| event_code(ev).map(|c| h(c, core::ptr::null_mut()));
            call(Event::Init);
            if POST_EXEC.load(std::sync::atomic::Ordering::SeqCst) {
                call(Event::PostExec);
            }
        }
    }
}

/// Set at start-up when this program was exec'd by a checkpointed process.
pub static POST_EXEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Deliver `ev` to the user plugins only (events internal plugins ignore);
/// allocation-free, safe in the checkpoint signal handler.
pub fn run_user(ev: Event) {
    let Some(code) = event_code(ev) else { return };
    let mut data = event_data(ev);
    for u in user_plugins() {
        if let Some(h) = u.0.event_hook {
            h(code, &mut data as *mut EventData as *mut std::ffi::c_void);
        }
    }
}

/// Register the plugins (once, at start-up), minus the disabled ones.
pub fn init(all: Vec<Box<dyn Plugin>>, disabled: &[String]) {
    let list = all
        .into_iter()
        .filter(|p| !disabled.iter().any(|d| d == p.name()))
        .collect();
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
    let mut data = event_data(ev);
    let pdata = &mut data as *mut EventData as *mut std::ffi::c_void;
    let call_user = |u: UserPlugin| {
        if let (Some(h), Some(code)) = (u.0.event_hook, code) {
            h(code, pdata);
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
