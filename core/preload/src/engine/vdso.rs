//! The vDSO at checkpoint time.
//!
//! - The image records the functions the running `[vdso]` exports (name and
//!   offset): a restart on a kernel whose vDSO differs builds a proxy at the
//!   old address from them (see `dmtcp_sys::vdso` and the restorer).
//! - A thread is never left suspended inside the vDSO's code: after a
//!   restart on another vDSO, the code it was running would be gone. The
//!   checkpoint signal handler declines to suspend a thread interrupted
//!   there ([`defer`]); the checkpoint thread signals it again a moment
//!   later ([`take_deferred`], [`pause_if`]), when it has left the vDSO.
//!   A thread still there after [`ROUND_BUDGET`] tries is suspended there
//!   anyway, and the image then records no entry points (it restarts only
//!   on a vDSO of the same layout, which keeps the code it was running).
//! - After a restart through the proxy, the program's auxiliary vector
//!   (what `getauxval(AT_SYSINFO_EHDR)` reads) names the running vDSO,
//!   not the proxy, which has no ELF headers ([`find_auxv`],
//!   [`auxv_after_restart`]).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// The functions of the `[vdso]` mapped at `vdso` = (start, len): (name,
/// offset from the start). Empty (with a warning) if it cannot be read.
pub(crate) fn entry_points(vdso: (u64, u64)) -> Vec<(String, u64)> {
    if vdso.0 == 0 || vdso.1 == 0 {
        return Vec::new();
    }
    // SAFETY: `vdso` is the kernel's [vdso] mapping as /proc/self/maps
    // showed it a moment ago: readable, never written, and nothing unmaps
    // it while user threads are suspended.
    let image = unsafe { core::slice::from_raw_parts(vdso.0 as *const u8, vdso.1 as usize) };
    let mut out = Vec::new();
    let r = dmtcp_sys::vdso::for_each_function(image, |name, off| {
        if name.len() <= dmtcp_sys::vdso::SYM_NAME_MAX {
            out.push((String::from_utf8_lossy(name).into_owned(), off));
        }
    });
    if let Err(e) = r {
        super::log::warn(format_args!(
            "{e}: the image will restart only on a kernel with the same vDSO"
        ));
        out.clear();
    }
    if STUCK.load(SeqCst) {
        super::log::warn(format_args!(
            "a thread stayed inside the vDSO: the image will restart only on a kernel with the same vDSO"
        ));
        out.clear();
    }
    out
}

/// The running `[vdso]`: start and end (0, 0 when unknown).
static LO: AtomicU64 = AtomicU64::new(0);
static HI: AtomicU64 = AtomicU64::new(0);
/// Deferrals left in this round: a thread that stays in the vDSO through
/// all of them is suspended there anyway.
static BUDGET: AtomicU32 = AtomicU32::new(0);
/// Most deferrals in one checkpoint round (each costs the round a pause
/// of [`PAUSE_NS`]).
pub(crate) const ROUND_BUDGET: u32 = 1000;
const PAUSE_NS: u64 = 1_000_000;
/// Set when a thread was suspended inside the vDSO this round.
static STUCK: AtomicBool = AtomicBool::new(false);
/// Threads that declined to suspend (0: free entry).
static DEFERRED: [AtomicI32; 256] = [const { AtomicI32::new(0) }; 256];

/// The running `[vdso]` as /proc/self/maps shows it: start and end.
fn running() -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find(|l| l.ends_with(" [vdso]")).and_then(|l| {
        let (s, e) = l.split_whitespace().next()?.split_once('-')?;
        Some((
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        ))
    })
}

/// Where the program's auxiliary vector keeps the value of its
/// `AT_SYSINFO_EHDR` entry (0: not found).
static AUXV_EHDR: AtomicUsize = AtomicUsize::new(0);

/// At start-up, before anything changes the environment: find the
/// auxiliary vector the kernel put on the stack (it follows the
/// environment's terminating NULL, and glibc's `getauxval` reads it
/// there) and remember its `AT_SYSINFO_EHDR` entry. The vector found
/// must equal the kernel's copy (/proc/self/auxv) word for word, or
/// nothing is remembered.
pub(crate) fn find_auxv() {
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    let Ok(kernel) = std::fs::read("/proc/self/auxv") else {
        return;
    };
    let words = kernel.len() / 8;
    if words < 2 || kernel.len() % 16 != 0 {
        return;
    }
    // SAFETY: `environ` is glibc's pointer to the environment array,
    // NULL-terminated (the kernel's on the stack, unless a library
    // changed the environment before us); only its entries are read here.
    // The word after its NULL is only a candidate, checked to lie in the
    // stack and compared with the kernel's copy below.
    let at_environ = unsafe {
        let mut p = environ;
        let mut n = 0;
        while !p.is_null() && !(*p).is_null() && n < 1 << 20 {
            p = p.add(1);
            n += 1;
        }
        if p.is_null() || n >= 1 << 20 {
            None
        } else {
            Some(p.add(1) as usize)
        }
    };
    // Where the environment was changed before us (its NULL moved, or the
    // array was copied elsewhere), the vector is searched for in the top
    // MiB of the main stack instead.
    let words_of = |at: usize| -> bool {
        (0..words).all(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&kernel[i * 8..i * 8 + 8]);
            // SAFETY: `at` is 8-byte aligned and, with the kernel's copy's
            // length, inside the main stack mapping (checked by the callers).
            let v: u64 = unsafe { core::ptr::read((at as *const u64).add(i)) };
            v == u64::from_ne_bytes(w)
        })
    };
    let stack = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|m| {
            let l = m.lines().find(|l| l.ends_with(" [stack]"))?.to_string();
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        });
    let Some((lo, hi)) = stack else { return };
    let inside = |at: usize| at.is_multiple_of(8) && at >= lo && at + kernel.len() <= hi;
    let found = at_environ
        .filter(|&a| inside(a) && words_of(a))
        .or_else(|| {
            let from = hi.saturating_sub(1 << 20).max(lo);
            (from..hi)
                .step_by(8)
                .filter(|&a| inside(a))
                .find(|&a| words_of(a))
        });
    let Some(auxv) = found else { return };
    let at = (0..words)
        .step_by(2)
        .find(|&i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&kernel[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w) == libc::AT_SYSINFO_EHDR
        })
        .map_or(0, |i| auxv + (i + 1) * 8);
    AUXV_EHDR.store(at, SeqCst);
}

/// After a restart (user threads still suspended): if the running vDSO is
/// not where the program's auxiliary vector says (a proxy is there now),
/// point the vector's `AT_SYSINFO_EHDR` at the running one, so that code
/// that reads the vDSO's ELF headers (`getauxval`, language runtimes,
/// unwinders) finds them. Entry points resolved before keep going
/// through the proxy.
pub(crate) fn auxv_after_restart() {
    let at = AUXV_EHDR.load(SeqCst);
    let Some((lo, _)) = running() else {
        return;
    };
    if at == 0 {
        return;
    }
    // SAFETY: `at` is the value word of the AT_SYSINFO_EHDR entry of the
    // program's auxiliary vector found at start-up: stack memory of the
    // process, restored with it, writable, 8-byte aligned.
    unsafe {
        let p = at as *mut u64;
        if core::ptr::read_volatile(p) != lo {
            core::ptr::write_volatile(p, lo);
        }
    }
}

/// Learn where the vDSO is, before the checkpoint signals go out.
pub(crate) fn begin_round() {
    let (lo, hi) = running().unwrap_or((0, 0));
    LO.store(lo, SeqCst);
    HI.store(hi, SeqCst);
    BUDGET.store(ROUND_BUDGET, SeqCst);
    STUCK.store(false, SeqCst);
}

/// In the checkpoint signal handler (async-signal-safe): was the thread
/// interrupted inside the vDSO? Then it is noted as deferred and the
/// handler returns without suspending it.
pub(crate) fn defer(uc: *mut c_void) -> bool {
    let (lo, hi) = (LO.load(SeqCst), HI.load(SeqCst));
    if uc.is_null() || lo == 0 {
        return false;
    }
    // SAFETY: the kernel passes SA_SIGINFO handlers a valid ucontext_t.
    let rip =
        unsafe { (*(uc as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] }
            as u64;
    if rip < lo || rip >= hi {
        return false;
    }
    let tid = dmtcp_sys::gettid();
    if BUDGET
        .fetch_update(SeqCst, SeqCst, |b| b.checked_sub(1))
        .is_err()
        || !DEFERRED
            .iter()
            .any(|d| d.compare_exchange(0, tid, SeqCst, SeqCst).is_ok())
    {
        STUCK.store(true, SeqCst);
        return false;
    }
    // Wake the checkpoint thread, which waits on the suspended count.
    dmtcp_sys::futex_wake(&super::threads::SUSPENDED, 1);
    true
}

/// In the checkpoint thread: forget the deferred threads in `signalled`,
/// so they are signalled again. Returns how many there were.
pub(crate) fn take_deferred(signalled: &mut Vec<i32>) -> usize {
    let mut n = 0;
    for d in &DEFERRED {
        let tid = d.swap(0, SeqCst);
        if tid != 0 {
            signalled.retain(|&t| t != tid);
            n += 1;
        }
    }
    n
}

/// In the checkpoint thread, before signalling deferred threads again:
/// give them time to leave the vDSO (on one CPU, a signal sent at once
/// would be delivered before the thread ran a single instruction). Returns
/// whether there were any.
pub(crate) fn pause_if(deferred: usize) -> bool {
    if deferred == 0 {
        return false;
    }
    let never = AtomicU32::new(0);
    dmtcp_sys::futex_wait(&never, 0, PAUSE_NS);
    true
}
