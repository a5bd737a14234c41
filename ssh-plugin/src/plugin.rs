//! `libdmtcp_ssh.so`: the ssh plugin, on the public C interface only.
//!
//! - Its `execve`/`execvpe` come after libdmtcp.so's in LD_PRELOAD, so the
//!   engine's exec wrappers hand every exec of the computation to them: an
//!   exec of `ssh` (by name or a path ending in `/ssh`) whose environment
//!   keeps the plugin becomes an exec of `dmtcp_ssh --ssh <prog> -- <the
//!   ssh arguments>` (the program next to this library).
//! - Its event hook passes checkpoint phases to the relay running in this
//!   process (dmtcp_ssh or dmtcp_sshd register with `dmtcp_ssh_set_role`),
//!   and at every restart meets the whole computation at the global barrier
//!   `ssh:restart`: relays publish their new host before it and look their
//!   peer up after it.
//!
//! Exec rewriting may run in a vfork child (sharing its parent's heap):
//! it never allocates; the new argument vector lives in pages of its own.

mod capi;
mod execrelay;

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

/// `<dir of this library>/dmtcp_ssh`, NUL-terminated, set once at load.
struct PathBuf4k(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: written once by the constructor before any other thread or exec
// can read it, then only read.
unsafe impl Sync for PathBuf4k {}
static DMTCP_SSH: PathBuf4k = PathBuf4k(core::cell::UnsafeCell::new([0; 4096]));

/// The relay's phase hook (0: none).
static ROLE: AtomicUsize = AtomicUsize::new(0);

#[repr(C)]
struct Descriptor {
    api: *const c_char,
    version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    hook: extern "C" fn(c_int, *mut c_void),
}
// SAFETY: only pointers to static C strings and a function.
unsafe impl Sync for Descriptor {}

static DESCRIPTOR: Descriptor = Descriptor {
    api: c"1".as_ptr(),
    version: c"DMTCP-rs".as_ptr(),
    name: c"ssh".as_ptr(),
    author: c"DMTCP-rs".as_ptr(),
    email: c"".as_ptr(),
    description:
        c"ssh sessions of the computation: remote processes are checkpointed and reconnected"
            .as_ptr(),
    hook: event_hook,
};

const EVENT_PRESUSPEND: c_int = 3;
const EVENT_RESUME: c_int = 5;
const EVENT_RESTART: c_int = 6;

fn role(phase: c_int) {
    let p = ROLE.load(Ordering::Acquire);
    if p != 0 {
        // SAFETY: set by dmtcp_ssh_set_role from a function of this type.
        let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(p) };
        f(phase);
    }
}

extern "C" fn event_hook(event: c_int, _data: *mut c_void) {
    match event {
        EVENT_PRESUSPEND => role(capi::PHASE_PRESUSPEND),
        EVENT_RESUME => role(capi::PHASE_RESUME),
        EVENT_RESTART => {
            role(capi::PHASE_RESTART_PUBLISH);
            capi::barrier(c"ssh:restart");
            role(capi::PHASE_RESTART_LOOKUP);
        }
        _ => {}
    }
}

/// Called by the relay programs: their phase hook.
#[no_mangle]
pub extern "C" fn dmtcp_ssh_set_role(hook: extern "C" fn(c_int)) {
    ROLE.store(hook as usize, Ordering::Release);
}

extern "C" fn init() {
    let mut info: libc::Dl_info = Dl_info_zeroed();
    // SAFETY: dladdr on a function of this library fills `info`.
    let ok =
        unsafe { libc::dladdr(init as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null();
    if ok {
        // SAFETY: dli_fname is a C string owned by the dynamic loader.
        let lib = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
        let dir = match lib.iter().rposition(|&c| c == b'/') {
            Some(i) => &lib[..=i],
            None => b"./".as_slice(),
        };
        // SAFETY: only the constructor writes, before anything reads.
        let buf = unsafe { &mut *DMTCP_SSH.0.get() };
        // Beside the library (a build tree), or in the bin/ of an
        // installed prefix whose lib/dmtcp/ holds the library.
        for name in [
            b"dmtcp_ssh\0".as_slice(),
            b"../../bin/dmtcp_ssh\0".as_slice(),
        ] {
            if dir.len() + name.len() > buf.len() {
                break;
            }
            buf[..dir.len()].copy_from_slice(dir);
            buf[dir.len()..dir.len() + name.len()].copy_from_slice(name);
            // SAFETY: access() of the NUL-terminated path just written.
            if unsafe { libc::access(buf.as_ptr() as *const c_char, libc::X_OK) } == 0 {
                break;
            }
        }
    }
    // SAFETY: looking up the engine's registration function.
    let reg = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dmtcp_register_plugin".as_ptr()) };
    if !reg.is_null() {
        // SAFETY: `void dmtcp_register_plugin(const DmtcpPluginDescriptor_t *)`.
        let f: extern "C" fn(*const Descriptor) = unsafe { core::mem::transmute(reg) };
        f(&DESCRIPTOR);
    }
}

#[allow(non_snake_case)]
fn Dl_info_zeroed() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// ssh, relayed through dmtcp_ssh (found by the constructor).
fn relay() -> execrelay::Relay<'static> {
    execrelay::Relay {
        // SAFETY: the constructor wrote it before any exec.
        relay: unsafe { &*DMTCP_SSH.0.get() },
        program: b"ssh",
        lib: b"libdmtcp_ssh.",
        options: &[c"--ssh"],
    }
}

/// `execve`: ssh becomes dmtcp_ssh.
///
/// # Safety
/// The `execve(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { execrelay::exec_or_relay(c"execve", &relay(), path, argv, envp) }
}

/// `execvpe`: ssh (found in PATH by dmtcp_ssh) becomes dmtcp_ssh.
///
/// # Safety
/// The `execvpe(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { execrelay::exec_or_relay(c"execvpe", &relay(), file, argv, envp) }
}
