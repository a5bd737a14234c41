//! Keep the checkpoint signal ours: a program may install its own handler
//! for it or block it, and must not notice the difference.
//!
//! `sigaction` and `signal` for the checkpoint signal record the program's
//! action instead of installing it; our handler forwards the signal to that
//! action when no checkpoint is under way. `sigprocmask` and
//! `pthread_sigmask` never block the checkpoint signal, and neither do the
//! masks given to `sigsuspend`, `ppoll`, `pselect` and `epoll_pwait`.
//! `sigwait`, `sigwaitinfo` and `sigtimedwait` never take the checkpoint
//! signal out of the queue (a thread waiting on every signal would eat it,
//! and the checkpoint would wait for that thread for ever): it is left out
//! of the set they wait on, so it reaches our handler, and the wait goes
//! on after the checkpoint. (Other signals go straight to libc.)

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::ffi::c_int;

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);
/// Set once our handler owns the checkpoint signal.
static ACTIVE: AtomicBool = AtomicBool::new(false);

struct UserAction(UnsafeCell<libc::sigaction>);
// SAFETY: replaced with a single struct copy by the program's calls (as the
// kernel's own table would be); read by the handler.
unsafe impl Sync for UserAction {}
// SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
static USER: UserAction = UserAction(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Resolve libc's functions (at start-up, before any wrapper is needed).
pub fn init() {
    super::start::libc_fn(&REAL_SIGACTION, c"sigaction");
    super::start::libc_fn(&REAL_SIGPROCMASK, c"sigprocmask");
    super::start::libc_fn(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
}

/// Install `sa` for `sig` with libc's sigaction (bypassing our wrapper).
pub fn real_sigaction(sig: c_int, sa: &libc::sigaction) -> c_int {
    let f = super::start::libc_fn(&REAL_SIGACTION, c"sigaction");
    if f == 0 {
        return -1;
    }
    // SAFETY: f is libc's sigaction.
    unsafe { core::mem::transmute::<usize, SigactionFn>(f)(sig, sa, core::ptr::null_mut()) }
}

/// Our handler now owns the checkpoint signal.
pub fn activate() {
    ACTIVE.store(true, SeqCst);
}

fn ckpt_sig() -> c_int {
    super::threads::CKPT_SIGNAL.load(Relaxed)
}

/// Called by our handler for a checkpoint signal that is not ours: do what
/// the program asked for.
pub fn forward(sig: c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: a plain copy of the recorded action.
    let a = unsafe { *USER.0.get() };
    match a.sa_sigaction {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // The default action of SIGUSR1/2 and friends ends the process.
            if !matches!(
                sig,
                libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
            ) {
                // SAFETY: restore the default action and re-raise: the
                // process terminates by this signal, as without us.
                unsafe {
                    let mut d: libc::sigaction = core::mem::zeroed();
                    d.sa_sigaction = libc::SIG_DFL;
                    real_sigaction(sig, &d);
                    let mut set: libc::sigset_t = core::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    dmtcp_sys::syscall6(
                        dmtcp_sys::nr::RT_SIGPROCMASK,
                        libc::SIG_UNBLOCK as usize,
                        &set as *const _ as usize,
                        0,
                        8,
                        0,
                        0,
                    );
                    dmtcp_sys::tgkill(dmtcp_sys::getpid(), dmtcp_sys::gettid(), sig);
                }
            }
        }
        h if a.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the program installed this three-argument handler.
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { core::mem::transmute(h) };
            f(sig, info, uc);
        }
        h => {
            // SAFETY: the program installed this one-argument handler.
            let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(h) };
            f(sig);
        }
    }
}

/// # Safety
/// The `sigaction(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if ACTIVE.load(Relaxed) && sig == ckpt_sig() {
        // SAFETY: the caller's pointers follow the sigaction contract.
        unsafe {
            if !old.is_null() {
                *old = *USER.0.get();
            }
            if !act.is_null() {
                *USER.0.get() = *act;
            }
        }
        return 0;
    }
    let f = super::start::libc_fn(&REAL_SIGACTION, c"sigaction");
    // SAFETY: forwarding to libc's sigaction.
    unsafe { core::mem::transmute::<usize, SigactionFn>(f)(sig, act, old) }
}

/// # Safety
/// The `signal(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction, then the fields signal() sets (BSD semantics).
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: our own sigaction (which routes the checkpoint signal).
    if unsafe { sigaction(sig, &sa, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

fn filtered(
    how: c_int,
    set: *const libc::sigset_t,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    if set.is_null() || !ACTIVE.load(Relaxed) || how == libc::SIG_UNBLOCK {
        return set;
    }
    // SAFETY: `set` is a valid sigset from the caller; `copy` is ours.
    unsafe {
        *copy = *set;
        libc::sigdelset(copy, ckpt_sig());
    }
    copy
}

/// An empty signal set, to copy a program's set into.
pub(crate) fn empty_set() -> libc::sigset_t {
    // SAFETY: a zeroed sigset is a valid empty set.
    unsafe { core::mem::zeroed() }
}

/// `mask` without the checkpoint signal, in `copy` (null stays null): for
/// the masks a call installs while it waits, and the sets `sigwait` and its
/// kin dequeue from.
pub(crate) fn without_ckpt(
    mask: *const libc::sigset_t,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    filtered(libc::SIG_SETMASK, mask, copy)
}

type SigsuspendFn = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;
type SigwaitFn = unsafe extern "C" fn(*const libc::sigset_t, *mut c_int) -> c_int;
type SigwaitinfoFn = unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t) -> c_int;
type SigtimedwaitFn = unsafe extern "C" fn(
    *const libc::sigset_t,
    *mut libc::siginfo_t,
    *const libc::timespec,
) -> c_int;

/// `sigsuspend(2)`, never blocking the checkpoint signal, and waiting on
/// when a checkpoint woke it.
///
/// # Safety
/// The `sigsuspend(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const libc::sigset_t) -> c_int {
    let f = super::iface::next_libc!(c"sigsuspend", SigsuspendFn, -1);
    let mut copy = empty_set();
    let m = without_ckpt(mask, &mut copy);
    // SAFETY: forwarding to libc with our copy of the mask.
    super::restartable::again(|| unsafe { f(m) })
}

/// `sigwait(3)` on the set without the checkpoint signal.
///
/// # Safety
/// The `sigwait(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    let f = super::iface::next_libc!(c"sigwait", SigwaitFn, libc::ENOSYS);
    let mut copy = empty_set();
    let s = without_ckpt(set, &mut copy);
    // SAFETY: forwarding to libc with our copy of the set (libc's sigwait
    // itself waits on after a handler ran).
    unsafe { f(s, sig) }
}

/// `sigwaitinfo(2)` on the set without the checkpoint signal, waiting on
/// when a checkpoint interrupted it.
///
/// # Safety
/// The `sigwaitinfo(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigwaitinfo(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
) -> c_int {
    let f = super::iface::next_libc!(c"sigwaitinfo", SigwaitinfoFn, -1);
    let mut copy = empty_set();
    let s = without_ckpt(set, &mut copy);
    // SAFETY: forwarding to libc with our copy of the set.
    super::restartable::again(|| unsafe { f(s, info) })
}

/// `sigtimedwait(2)` on the set without the checkpoint signal, waiting on
/// for the time left when a checkpoint interrupted it.
///
/// # Safety
/// The `sigtimedwait(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
    t: *const libc::timespec,
) -> c_int {
    let f = super::iface::next_libc!(c"sigtimedwait", SigtimedwaitFn, -1);
    let mut copy = empty_set();
    let s = without_ckpt(set, &mut copy);
    // SAFETY: the caller's timeout is null or readable (sigtimedwait
    // contract); forwarding to libc with our copies of the set and timeout.
    unsafe { super::restartable::again_timed(t, |lp| f(s, info, lp)) }
}

/// # Safety
/// The `sigprocmask(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: a zeroed sigset is a valid empty set.
    let mut copy: libc::sigset_t = unsafe { core::mem::zeroed() };
    let s = filtered(how, set, &mut copy);
    let f = super::start::libc_fn(&REAL_SIGPROCMASK, c"sigprocmask");
    // SAFETY: forwarding to libc's sigprocmask.
    unsafe { core::mem::transmute::<usize, MaskFn>(f)(how, s, old) }
}

/// # Safety
/// The `pthread_sigmask(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: a zeroed sigset is a valid empty set.
    let mut copy: libc::sigset_t = unsafe { core::mem::zeroed() };
    let s = filtered(how, set, &mut copy);
    let f = super::start::libc_fn(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
    // SAFETY: forwarding to libc's pthread_sigmask.
    unsafe { core::mem::transmute::<usize, MaskFn>(f)(how, s, old) }
}
