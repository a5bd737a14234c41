//! The two things the plugin reaches at run time: the real verbs (the next
//! `libibverbs.so.1` in the lookup order, through `dlvsym(RTLD_NEXT, name,
//! version)`, never by linking: our own exports would bind back to us) and
//! the engine's public C interface (`dmtcp_*` of the preloaded
//! `libdmtcp.so`, through `dlsym`).

use crate::ffi::*;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

macro_rules! table {
    ($name:ident, $lookup:ident; $( $f:ident : $sym:literal @ $ver:literal : fn($($a:ty),*) -> $r:ty ),* $(,)?) => {
        #[allow(non_snake_case)]
        pub(crate) struct $name {
            $( pub(crate) $f: unsafe extern "C" fn($($a),*) -> $r, )*
        }
        impl $name {
            fn load() -> Option<$name> {
                Some($name {
                    $( $f: {
                        let p = $lookup(concat!($sym, "\0"), concat!($ver, "\0"));
                        if p.is_null() {
                            crate::say(concat!("cannot find the real ", $sym, "@", $ver));
                            return None;
                        }
                        // SAFETY: the symbol has this C signature (verbs.h).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($a),*) -> $r>(p) }
                    }, )*
                })
            }
        }
    };
}

fn next_versioned(name: &str, ver: &str) -> *mut c_void {
    // SAFETY: both strings are NUL-terminated literals.
    unsafe { libc::dlvsym(libc::RTLD_NEXT, name.as_ptr().cast(), ver.as_ptr().cast()) }
}

table! { Real, next_versioned;
    get_device_list: "ibv_get_device_list" @ "IBVERBS_1.1" : fn(*mut c_int) -> *mut *mut ibv_device,
    free_device_list: "ibv_free_device_list" @ "IBVERBS_1.1" : fn(*mut *mut ibv_device) -> (),
    get_device_name: "ibv_get_device_name" @ "IBVERBS_1.1" : fn(*mut ibv_device) -> *const c_char,
    open_device: "ibv_open_device" @ "IBVERBS_1.1" : fn(*mut ibv_device) -> *mut ibv_context,
    close_device: "ibv_close_device" @ "IBVERBS_1.1" : fn(*mut ibv_context) -> c_int,
    query_device: "ibv_query_device" @ "IBVERBS_1.1" : fn(*mut ibv_context, *mut ibv_device_attr) -> c_int,
    query_port: "ibv_query_port" @ "IBVERBS_1.1" : fn(*mut ibv_context, u8, *mut _compat_ibv_port_attr) -> c_int,
    query_gid: "ibv_query_gid" @ "IBVERBS_1.1" : fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int,
    query_pkey: "ibv_query_pkey" @ "IBVERBS_1.1" : fn(*mut ibv_context, u8, c_int, *mut u16) -> c_int,
    get_pkey_index: "ibv_get_pkey_index" @ "IBVERBS_1.5" : fn(*mut ibv_context, u8, u16) -> c_int,
    alloc_pd: "ibv_alloc_pd" @ "IBVERBS_1.1" : fn(*mut ibv_context) -> *mut ibv_pd,
    dealloc_pd: "ibv_dealloc_pd" @ "IBVERBS_1.1" : fn(*mut ibv_pd) -> c_int,
    reg_mr_iova2: "ibv_reg_mr_iova2" @ "IBVERBS_1.8" : fn(*mut ibv_pd, *mut c_void, usize, u64, c_uint) -> *mut ibv_mr,
    dereg_mr: "ibv_dereg_mr" @ "IBVERBS_1.1" : fn(*mut ibv_mr) -> c_int,
    create_comp_channel: "ibv_create_comp_channel" @ "IBVERBS_1.0" : fn(*mut ibv_context) -> *mut ibv_comp_channel,
    destroy_comp_channel: "ibv_destroy_comp_channel" @ "IBVERBS_1.0" : fn(*mut ibv_comp_channel) -> c_int,
    create_cq: "ibv_create_cq" @ "IBVERBS_1.1" : fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq,
    destroy_cq: "ibv_destroy_cq" @ "IBVERBS_1.1" : fn(*mut ibv_cq) -> c_int,
    resize_cq: "ibv_resize_cq" @ "IBVERBS_1.1" : fn(*mut ibv_cq, c_int) -> c_int,
    get_cq_event: "ibv_get_cq_event" @ "IBVERBS_1.1" : fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int,
    ack_cq_events: "ibv_ack_cq_events" @ "IBVERBS_1.1" : fn(*mut ibv_cq, c_uint) -> (),
    get_async_event: "ibv_get_async_event" @ "IBVERBS_1.1" : fn(*mut ibv_context, *mut ibv_async_event) -> c_int,
    ack_async_event: "ibv_ack_async_event" @ "IBVERBS_1.1" : fn(*mut ibv_async_event) -> (),
    create_srq: "ibv_create_srq" @ "IBVERBS_1.1" : fn(*mut ibv_pd, *mut ibv_srq_init_attr) -> *mut ibv_srq,
    modify_srq: "ibv_modify_srq" @ "IBVERBS_1.1" : fn(*mut ibv_srq, *mut ibv_srq_attr, c_int) -> c_int,
    query_srq: "ibv_query_srq" @ "IBVERBS_1.1" : fn(*mut ibv_srq, *mut ibv_srq_attr) -> c_int,
    destroy_srq: "ibv_destroy_srq" @ "IBVERBS_1.1" : fn(*mut ibv_srq) -> c_int,
    create_qp: "ibv_create_qp" @ "IBVERBS_1.1" : fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp,
    modify_qp: "ibv_modify_qp" @ "IBVERBS_1.1" : fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int,
    query_qp: "ibv_query_qp" @ "IBVERBS_1.1" : fn(*mut ibv_qp, *mut ibv_qp_attr, c_int, *mut ibv_qp_init_attr) -> c_int,
    destroy_qp: "ibv_destroy_qp" @ "IBVERBS_1.1" : fn(*mut ibv_qp) -> c_int,
    create_ah: "ibv_create_ah" @ "IBVERBS_1.1" : fn(*mut ibv_pd, *mut ibv_ah_attr) -> *mut ibv_ah,
    destroy_ah: "ibv_destroy_ah" @ "IBVERBS_1.1" : fn(*mut ibv_ah) -> c_int,
    init_ah_from_wc: "ibv_init_ah_from_wc" @ "IBVERBS_1.1" : fn(*mut ibv_context, u8, *mut ibv_wc, *mut ibv_grh, *mut ibv_ah_attr) -> c_int,
}

static REAL: OnceLock<Option<Real>> = OnceLock::new();

/// The real verbs, or None when no libibverbs is loaded after us.
pub(crate) fn real() -> Option<&'static Real> {
    REAL.get_or_init(Real::load).as_ref()
}

fn global(name: &str, _ver: &str) -> *mut c_void {
    // SAFETY: a NUL-terminated literal.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast()) }
}

table! { Engine, global;
    register_plugin: "dmtcp_register_plugin" @ "" : fn(*const crate::PluginDescriptor) -> (),
    disable_ckpt: "dmtcp_disable_ckpt" @ "" : fn() -> c_int,
    enable_ckpt: "dmtcp_enable_ckpt" @ "" : fn() -> c_int,
    claim_fd: "dmtcp_claim_fd" @ "" : fn(c_int) -> c_int,
    exclude_memory: "dmtcp_exclude_memory" @ "" : fn(*const c_void, usize, c_int) -> c_int,
    send_kv: "dmtcp_send_key_val_pair_to_coordinator" @ "" : fn(*const c_char, *const c_void, u32, *const c_void, u32) -> c_int,
    query_kv: "dmtcp_send_query_to_coordinator" @ "" : fn(*const c_char, *const c_void, u32, *mut c_void, *mut u32) -> c_int,
    list_kv: "dmtcp_send_list_query_to_coordinator" @ "" : fn(*const c_char, *const c_void, u32, *const c_void, u32, *mut c_void, *mut u32) -> c_int,
    barrier: "dmtcp_global_barrier" @ "" : fn(*const c_char) -> c_int,
}

static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();

/// The engine's interface, or None when not running under dmtcp_launch.
pub(crate) fn engine() -> Option<&'static Engine> {
    ENGINE.get_or_init(Engine::load).as_ref()
}

/// Holds checkpoints off while a verb runs, so a checkpoint never finds a
/// thread inside the plugin or the real library (their locks free, their
/// queues consistent): the drain can then run while threads are suspended.
pub(crate) struct NoCkpt(bool);

impl NoCkpt {
    #[inline]
    pub(crate) fn new() -> NoCkpt {
        match engine() {
            Some(e) => {
                // SAFETY: the engine's C function, no arguments.
                unsafe { (e.disable_ckpt)() };
                NoCkpt(true)
            }
            None => NoCkpt(false),
        }
    }
}

impl Drop for NoCkpt {
    #[inline]
    fn drop(&mut self) {
        if let (true, Some(e)) = (self.0, engine()) {
            // SAFETY: pairs the disable above.
            unsafe { (e.enable_ckpt)() };
        }
    }
}

pub(crate) fn claim(fd: c_int) {
    if let Some(e) = engine() {
        if fd >= 0 {
            // SAFETY: plain C call on an fd number.
            unsafe { (e.claim_fd)(fd) };
        }
    }
}

const DB: &CStr = c"ib";

pub(crate) fn publish(key: &[u8], val: &[u8]) -> bool {
    let Some(e) = engine() else { return false };
    // SAFETY: pointers and lengths of our own buffers.
    unsafe {
        (e.send_kv)(
            DB.as_ptr(),
            key.as_ptr().cast(),
            key.len() as u32,
            val.as_ptr().cast(),
            val.len() as u32,
        ) == 1
    }
}

pub(crate) fn query(key: &[u8]) -> Option<Vec<u8>> {
    let e = engine()?;
    let mut buf = vec![0u8; 4 << 20];
    let mut len = buf.len() as u32;
    // SAFETY: our buffer and its length.
    let r = unsafe {
        (e.query_kv)(
            DB.as_ptr(),
            key.as_ptr().cast(),
            key.len() as u32,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 1 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

/// One page of the plugin's db entries whose key begins with `prefix`,
/// after `after`, as records `[u32 key_len][key][u32 val_len][val]` into
/// `buf`: the number of records and the bytes written, or None (an error,
/// or the next record alone does not fit: then `Err` its size). Allocates
/// nothing in the plugin (the drain uses it with threads suspended).
pub(crate) fn list_page(
    prefix: &[u8],
    after: Option<&[u8]>,
    buf: &mut [u8],
) -> Result<(usize, usize), usize> {
    let Some(e) = engine() else { return Err(0) };
    let mut len = buf.len() as u32;
    let (ap, al) = after.map_or((std::ptr::null(), 0), |a| (a.as_ptr(), a.len() as u32));
    // SAFETY: our buffers and their lengths.
    let n = unsafe {
        (e.list_kv)(
            DB.as_ptr(),
            prefix.as_ptr().cast(),
            prefix.len() as u32,
            ap.cast(),
            al,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(if len as usize > buf.len() {
            len as usize
        } else {
            0
        });
    }
    Ok((n as usize, len as usize))
}

/// The records of a page (`list_page`): (key, value) slices.
pub(crate) fn records(page: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let kl = u32::from_le_bytes(page.get(at..at + 4)?.try_into().ok()?) as usize;
        let k = page.get(at + 4..at + 4 + kl)?;
        let vs = at + 4 + kl;
        let vl = u32::from_le_bytes(page.get(vs..vs + 4)?.try_into().ok()?) as usize;
        let v = page.get(vs + 4..vs + 4 + vl)?;
        at = vs + 4 + vl;
        Some((k, v))
    })
}

/// Every entry of the plugin's db whose key begins with `prefix`, in key
/// order: one round trip to the coordinator per 3 MiB of entries.
pub(crate) fn list(prefix: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut buf = vec![0u8; 3 << 20];
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.as_slice());
        match list_page(prefix, after, &mut buf) {
            // One entry larger than the buffer: make room for it.
            Err(need) if need > buf.len() => buf.resize(need, 0),
            Err(_) => return None,
            Ok((0, _)) => return Some(out),
            Ok((_, len)) => out.extend(records(&buf[..len]).map(|(k, v)| (k.to_vec(), v.to_vec()))),
        }
    }
}

pub(crate) fn barrier(name: &CStr) -> bool {
    let Some(e) = engine() else { return false };
    // SAFETY: a NUL-terminated name.
    unsafe { (e.barrier)(name.as_ptr()) == 1 }
}

/// Ranges kept out of the current checkpoint's image.
static EXCLUDED: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// Keeps the device's memory (softib's completion rings, memfds shared
/// with the service) out of the image: it is re-created at restart. On a
/// real HCA these are mappings of /dev/infiniband/uverbs*, which the engine
/// never saves anyway. Called in PRESUSPEND; `include_again` undoes it
/// after the checkpoint, so memory mapped there later is saved.
pub(crate) fn exclude_device_memory() {
    let Some(e) = engine() else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let mut ex = EXCLUDED.lock().unwrap_or_else(|p| p.into_inner());
    for l in maps.lines() {
        if !l.contains("/memfd:softib-") {
            continue;
        }
        let Some((range, _)) = l.split_once(' ') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // SAFETY: an address range of our own mappings.
        unsafe { (e.exclude_memory)(a as *const c_void, b - a, 1) };
        ex.push((a, b - a));
    }
}

pub(crate) fn include_again() {
    let Some(e) = engine() else { return };
    let mut ex = EXCLUDED.lock().unwrap_or_else(|p| p.into_inner());
    for (a, l) in ex.drain(..) {
        // SAFETY: plain C call with an address range.
        unsafe { (e.exclude_memory)(a as *const c_void, l, 0) };
    }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) fn errno() -> c_int {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Writes bytes to stderr without allocating or locking.
pub(crate) fn write_err(b: &[u8]) {
    // SAFETY: our own buffer to fd 2.
    unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}

/// Moves `newfd` to the number `old` (the number the program knows, held by
/// /dev/null after a restart) and claims it.
pub(crate) fn move_fd(newfd: c_int, old: c_int) -> c_int {
    if newfd < 0 || old < 0 || newfd == old {
        claim(newfd);
        return newfd;
    }
    // SAFETY: plain fd syscalls on numbers we own.
    unsafe {
        libc::dup3(newfd, old, libc::O_CLOEXEC);
    }
    claim(old);
    old
}

pub(crate) fn poll_readable(fd: c_int) -> bool {
    wait_readable(fd, 0)
}

/// Waits up to `ms` for `fd` to be readable (false on timeout or EINTR).
pub(crate) fn wait_readable(fd: c_int, ms: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of ours.
    unsafe {
        libc::poll(&mut p, 1, ms) == 1
            && (p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP)) != 0
    }
}

pub(crate) fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub(crate) fn init_mutex_cond(m: *mut pthread_mutex_t, c: *mut pthread_cond_t) {
    // SAFETY: fields of a shadow object we just allocated.
    unsafe {
        libc::pthread_mutex_init(m.cast(), std::ptr::null());
        if !c.is_null() {
            libc::pthread_cond_init(c.cast(), std::ptr::null());
        }
    }
}
