//! The checkpointer's public C interface (include/dmtcp.h), found at run
//! time: libdmtcp.so is loaded before this code, and without it every call
//! reports "not present" (false / None).
#![allow(dead_code)]

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The address of `name` in the process (libdmtcp.so's), cached in `slot`.
fn lookup(slot: &AtomicUsize, name: &CStr) -> usize {
    let v = slot.load(Ordering::Acquire);
    if v > 1 {
        return v;
    }
    if v == 1 {
        return 0;
    }
    // SAFETY: dlsym with a C string; the result is only compared and cast
    // to the documented signature by the callers.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
    slot.store(if p == 0 { 1 } else { p }, Ordering::Release);
    p
}

macro_rules! dmtcp_fn {
    ($vis:vis fn $name:ident($($a:ident: $t:ty),*) -> c_int as $sym:literal) => {
        $vis fn $name($($a: $t),*) -> Option<c_int> {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = lookup(&SLOT, $sym);
            if p == 0 {
                return None;
            }
            // SAFETY: the symbol is the include/dmtcp.h function of this signature.
            let f: unsafe extern "C" fn($($t),*) -> c_int = unsafe { core::mem::transmute(p) };
            // SAFETY: arguments as the C interface documents them.
            Some(unsafe { f($($a),*) })
        }
    };
}

dmtcp_fn!(fn raw_claim(fd: c_int) -> c_int as c"dmtcp_claim_fd");
dmtcp_fn!(fn raw_disable() -> c_int as c"dmtcp_disable_ckpt");
dmtcp_fn!(fn raw_enable() -> c_int as c"dmtcp_enable_ckpt");
dmtcp_fn!(fn raw_barrier(name: *const c_char) -> c_int as c"dmtcp_global_barrier");
dmtcp_fn!(fn raw_put(db: *const c_char, k: *const c_void, kl: u32, v: *const c_void, vl: u32) -> c_int as c"dmtcp_send_key_val_pair_to_coordinator");
dmtcp_fn!(fn raw_get(db: *const c_char, k: *const c_void, kl: u32, v: *mut c_void, vl: *mut u32) -> c_int as c"dmtcp_send_query_to_coordinator");
dmtcp_fn!(fn raw_enabled() -> c_int as c"dmtcp_is_enabled");
dmtcp_fn!(fn raw_secret(buf: *mut u8, len: usize) -> c_int as c"dmtcp_internal_coordinator_secret");

/// The coordinator's secret (32 bytes) the library holds, for the remote
/// side of a session (docs/security.md); None without one.
pub fn coordinator_secret() -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    (raw_secret(b.as_mut_ptr(), b.len()) == Some(1)).then_some(b)
}

/// Under the checkpointer?
pub fn enabled() -> bool {
    raw_enabled() == Some(1)
}

/// `dmtcp_claim_fd`: the engine leaves `fd` to us.
pub fn claim_fd(fd: c_int) -> bool {
    raw_claim(fd) == Some(1)
}

/// Hold checkpoints off until the matching `enable_ckpt`.
pub fn disable_ckpt() {
    let _ = raw_disable();
}

pub fn enable_ckpt() {
    let _ = raw_enable();
}

/// A global barrier (event hooks only).
pub fn barrier(name: &CStr) -> bool {
    raw_barrier(name.as_ptr()) == Some(1)
}

/// Publish `val` under (`db`, `key`) (event hooks only).
pub fn kv_put(db: &CStr, key: &[u8], val: &[u8]) -> bool {
    raw_put(
        db.as_ptr(),
        key.as_ptr().cast(),
        key.len() as u32,
        val.as_ptr().cast(),
        val.len() as u32,
    ) == Some(1)
}

/// Look (`db`, `key`) up into `buf`; the value's length (event hooks only).
pub fn kv_get(db: &CStr, key: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut len = buf.len() as u32;
    let r = raw_get(
        db.as_ptr(),
        key.as_ptr().cast(),
        key.len() as u32,
        buf.as_mut_ptr().cast(),
        &mut len,
    )?;
    (r == 1 && (len as usize) <= buf.len()).then_some(len as usize)
}

/// A checkpoint phase as the plugin hands it to the relay of this process
/// (`dmtcp_ssh_set_role`).
pub const PHASE_PRESUSPEND: c_int = 1;
pub const PHASE_RESUME: c_int = 2;
/// Restart, before the plugin's global barrier `ssh:restart` (publish).
pub const PHASE_RESTART_PUBLISH: c_int = 3;
/// Restart, after that barrier (look the peers up).
pub const PHASE_RESTART_LOOKUP: c_int = 4;

/// Name of the plugin's function that takes the relay's phase hook.
pub const SET_ROLE: &CStr = c"dmtcp_ssh_set_role";

/// Give the plugin (libdmtcp_ssh.so) this process's phase hook. False if
/// the plugin is not loaded.
pub fn set_role(hook: extern "C" fn(c_int)) -> bool {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = lookup(&SLOT, SET_ROLE);
    if p == 0 {
        return false;
    }
    // SAFETY: the plugin's `dmtcp_ssh_set_role(extern "C" fn(c_int))`.
    let f: extern "C" fn(extern "C" fn(c_int)) = unsafe { core::mem::transmute(p) };
    f(hook);
    true
}
