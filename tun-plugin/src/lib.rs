//! `libdmtcp_tun.so`: the tun/tap plugin of DMTCP-rs.
//!
//! `dmtcp_launch` loads it by default (`--disable-tun-plugin` leaves it
//! out). Until a checkpoint it only interposes `ioctl`, passing every
//! request through except the tun ones, which it records after the kernel
//! accepted them (`wrap`), and vhost-net's backend, which it refuses. At a
//! checkpoint it finds the program's /dev/net/tun fds, describes their
//! devices (name, flags, settings, addresses, routes, bridge) and claims
//! the fds from the engine; at a restart it makes the devices again and
//! puts the fds back at their numbers (`state`, `netlink`). It uses the
//! engine only through the public interface (include/dmtcp.h).
//!
//! See docs/tun.md. All `unsafe` is in `sys` and `wrap`.

mod netlink;
mod state;
mod sys;
mod wrap;

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// `DmtcpPluginDescriptor_t` of include/dmtcp.h.
#[repr(C)]
struct PluginDescriptor {
    api_version: *const c_char,
    dmtcp_version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    event_hook: extern "C" fn(c_int, *mut c_void),
}

// Layout of the C struct: seven pointers.
const _: () = assert!(std::mem::size_of::<PluginDescriptor>() == 7 * 8);
const _: () = assert!(std::mem::offset_of!(PluginDescriptor, event_hook) == 6 * 8);

struct SyncDescr(PluginDescriptor);
// SAFETY: immutable static data (string literals and a function pointer).
unsafe impl Sync for SyncDescr {}

static DESCR: SyncDescr = SyncDescr(PluginDescriptor {
    api_version: c"1".as_ptr(),
    dmtcp_version: c"DMTCP-rs".as_ptr(),
    name: c"tun".as_ptr(),
    author: c"DMTCP-rs".as_ptr(),
    email: c"".as_ptr(),
    description: c"tun/tap devices: described at checkpoint, made again at restart".as_ptr(),
    event_hook,
});

// Event numbers of DmtcpEvent_t.
const EV_PRESUSPEND: c_int = 3;
const EV_RESTART: c_int = 6;

extern "C" fn event_hook(ev: c_int, _data: *mut c_void) {
    match ev {
        EV_PRESUSPEND => state::presuspend(),
        EV_RESTART => state::restart(),
        _ => {}
    }
}

extern "C" fn register() {
    sys::init();
    sys::register_plugin((&DESCR.0 as *const PluginDescriptor).cast());
}

#[used]
#[link_section = ".init_array"]
static REGISTER: extern "C" fn() = register;

/// A line to stderr when DMTCP_TUN_DEBUG is set.
pub(crate) fn debug(f: impl FnOnce() -> String) {
    if std::env::var_os("DMTCP_TUN_DEBUG").is_some_and(|v| !v.is_empty() && v != "0") {
        say(&f());
    }
}

/// One line to stderr, prefixed.
pub(crate) fn say(msg: &str) {
    let line = format!("dmtcp_tun: {msg}\n");
    sys::write_err(line.as_bytes());
}

/// `msg` once per process (flag `said`).
pub(crate) fn say_once(said: &AtomicBool, msg: &str) {
    if !said.swap(true, Ordering::Relaxed) {
        say(msg);
    }
}
