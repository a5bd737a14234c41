//! Calls the kernel never restarts after a signal handler ran (poll,
//! select, epoll_wait, nanosleep, ...), made to go on across a checkpoint.
//!
//! The checkpoint signal has a handler, so a thread blocked in one of
//! these calls returns `EINTR` when a checkpoint suspends it, even if the
//! program blocks every signal it knows (as `script` does, using
//! signalfd) and treats `EINTR` as impossible. These wrappers call again,
//! with the time that is left, when the call failed with `EINTR` and a
//! checkpoint (or a restart) happened meanwhile. A genuine `EINTR` from
//! the program's own signal is passed on, unless a checkpoint happened in
//! the same call. The masks `ppoll`, `pselect` and `epoll_pwait` install
//! while they wait never block the checkpoint signal.

use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn now_ns() -> i128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes our struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

fn checkpoints() -> u32 {
    super::capi::EVENTS.load(SeqCst)
}

/// Call until the call did not fail with `EINTR` because of a checkpoint.
pub(crate) fn again<T: PartialOrd + Default>(mut call: impl FnMut() -> T) -> T {
    loop {
        let ev = checkpoints();
        let r = call();
        if r < T::default() && errno() == libc::EINTR && checkpoints() != ev {
            continue;
        }
        return r;
    }
}

/// Call `call` with what is left of the caller's timeout `t` (null: none),
/// again after a checkpoint interrupted it.
///
/// # Safety
/// `t` is null or points to a readable timespec.
pub(crate) unsafe fn again_timed<T: PartialOrd + Default>(
    t: *const libc::timespec,
    mut call: impl FnMut(*const libc::timespec) -> T,
) -> T {
    let start = now_ns();
    // SAFETY: the caller's timeout, if any, is readable (our contract).
    let total = (!t.is_null()).then(|| unsafe { *t });
    again(|| {
        let left = ts_left(total, start);
        call(
            left.as_ref()
                .map_or(core::ptr::null(), |l| l as *const libc::timespec),
        )
    })
}

/// Milliseconds left of `ms` since `start` (negative `ms`: no limit).
fn ms_left(ms: i32, start: i128) -> i32 {
    if ms < 0 {
        return ms;
    }
    let left = ms as i128 - (now_ns() - start) / 1_000_000;
    left.clamp(0, ms as i128) as i32
}

/// A timespec's time left since `start` (None: no limit).
fn ts_left(t: Option<libc::timespec>, start: i128) -> Option<libc::timespec> {
    let t = t?;
    let total = t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    let left = (total - (now_ns() - start)).max(0);
    Some(libc::timespec {
        tv_sec: (left / 1_000_000_000) as libc::time_t,
        tv_nsec: (left % 1_000_000_000) as libc::c_long,
    })
}

type PollFn = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, libc::c_int) -> libc::c_int;
type PpollFn = unsafe extern "C" fn(
    *mut libc::pollfd,
    libc::nfds_t,
    *const libc::timespec,
    *const libc::sigset_t,
) -> libc::c_int;
type SelectFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::timeval,
) -> libc::c_int;
type PselectFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *const libc::timespec,
    *const libc::sigset_t,
) -> libc::c_int;
type EpollWaitFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::epoll_event,
    libc::c_int,
    libc::c_int,
) -> libc::c_int;
type EpollPwaitFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::epoll_event,
    libc::c_int,
    libc::c_int,
    *const libc::sigset_t,
) -> libc::c_int;
type NanosleepFn = unsafe extern "C" fn(*const libc::timespec, *mut libc::timespec) -> libc::c_int;
type ClockNanosleepFn = unsafe extern "C" fn(
    libc::clockid_t,
    libc::c_int,
    *const libc::timespec,
    *mut libc::timespec,
) -> libc::c_int;

/// `poll(2)`, going on across a checkpoint.
///
/// # Safety
/// As `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn poll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ms: libc::c_int,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"poll", PollFn);
    let start = now_ns();
    // SAFETY: forwarding the caller's arguments.
    again(|| unsafe { f(fds, n, ms_left(ms, start)) })
}

/// `ppoll(2)`, going on across a checkpoint.
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"ppoll", PpollFn);
    let mut copy = super::sigwrap::empty_set();
    let mask = super::sigwrap::without_ckpt(mask, &mut copy);
    // SAFETY: the caller's timeout is null or readable (ppoll contract);
    // forwarding the caller's arguments with our copy of the timeout.
    unsafe { again_timed(t, |lp| f(fds, n, lp, mask)) }
}

/// `select(2)`, going on across a checkpoint (the kernel leaves the sets
/// alone and counts the timeout down when it is interrupted).
///
/// # Safety
/// As `select(2)`.
#[no_mangle]
pub unsafe extern "C" fn select(
    n: libc::c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    t: *mut libc::timeval,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"select", SelectFn);
    // SAFETY: forwarding the caller's arguments.
    again(|| unsafe { f(n, r, w, e, t) })
}

/// `pselect(2)`, going on across a checkpoint.
///
/// # Safety
/// As `pselect(2)`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: libc::c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    t: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"pselect", PselectFn);
    let mut copy = super::sigwrap::empty_set();
    let mask = super::sigwrap::without_ckpt(mask, &mut copy);
    // SAFETY: the caller's timeout is null or readable (pselect contract);
    // forwarding the caller's arguments with our copy of the timeout.
    unsafe { again_timed(t, |lp| f(n, r, w, e, lp, mask)) }
}

/// `epoll_wait(2)`, going on across a checkpoint.
///
/// # Safety
/// As `epoll_wait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    ep: libc::c_int,
    evs: *mut libc::epoll_event,
    max: libc::c_int,
    ms: libc::c_int,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"epoll_wait", EpollWaitFn);
    let start = now_ns();
    // SAFETY: forwarding the caller's arguments.
    again(|| unsafe { f(ep, evs, max, ms_left(ms, start)) })
}

/// `epoll_pwait(2)`, going on across a checkpoint.
///
/// # Safety
/// As `epoll_pwait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: libc::c_int,
    evs: *mut libc::epoll_event,
    max: libc::c_int,
    ms: libc::c_int,
    mask: *const libc::sigset_t,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"epoll_pwait", EpollPwaitFn);
    let mut copy = super::sigwrap::empty_set();
    let mask = super::sigwrap::without_ckpt(mask, &mut copy);
    let start = now_ns();
    // SAFETY: forwarding the caller's arguments.
    again(|| unsafe { f(ep, evs, max, ms_left(ms, start), mask) })
}

/// `nanosleep(2)`: sleeps the whole time across a checkpoint.
///
/// # Safety
/// As `nanosleep(2)`.
#[no_mangle]
pub unsafe extern "C" fn nanosleep(
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> libc::c_int {
    let f = super::iface::next_libc!(c"nanosleep", NanosleepFn);
    if req.is_null() {
        // SAFETY: forwarding (libc reports EFAULT).
        return unsafe { f(req, rem) };
    }
    // SAFETY: the caller's request is readable.
    let mut cur = unsafe { *req };
    loop {
        let ev = checkpoints();
        let mut left = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: our copies of the request and the time left.
        let r = unsafe { f(&cur, &mut left) };
        if r < 0 && errno() == libc::EINTR {
            if checkpoints() != ev {
                cur = left;
                continue;
            }
            if !rem.is_null() {
                // SAFETY: the caller's buffer for the time left.
                unsafe { *rem = left };
            }
        }
        return r;
    }
}

/// `clock_nanosleep(2)`: sleeps the whole time across a checkpoint.
///
/// # Safety
/// As `clock_nanosleep(2)`.
#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: libc::c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> libc::c_int {
    static CLOCK_NANOSLEEP: AtomicUsize = AtomicUsize::new(0);
    let f = super::start::libc_fn(&CLOCK_NANOSLEEP, c"clock_nanosleep");
    if f == 0 || req.is_null() {
        return libc::ENOSYS;
    }
    // SAFETY: libc's clock_nanosleep.
    let f = unsafe { core::mem::transmute::<usize, ClockNanosleepFn>(f) };
    // SAFETY: the caller's request is readable.
    let mut cur = unsafe { *req };
    loop {
        let ev = checkpoints();
        let mut left = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: our copies of the request and the time left.
        let r = unsafe { f(clock, flags, &cur, &mut left) };
        if r == libc::EINTR {
            if checkpoints() != ev {
                if flags & libc::TIMER_ABSTIME == 0 {
                    cur = left;
                }
                continue;
            }
            if !rem.is_null() && flags & libc::TIMER_ABSTIME == 0 {
                // SAFETY: the caller's buffer for the time left.
                unsafe { *rem = left };
            }
        }
        return r;
    }
}

/// `usleep(3)` (libc's calls its own nanosleep, past our wrapper).
///
/// # Safety
/// None beyond `usleep(3)`'s.
#[no_mangle]
pub unsafe extern "C" fn usleep(us: libc::useconds_t) -> libc::c_int {
    let t = libc::timespec {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_nsec: (us % 1_000_000) as libc::c_long * 1000,
    };
    // SAFETY: our request, no time-left buffer.
    unsafe { nanosleep(&t, core::ptr::null_mut()) }
}

/// `sleep(3)` (libc's calls its own nanosleep, past our wrapper).
///
/// # Safety
/// None beyond `sleep(3)`'s.
#[no_mangle]
pub unsafe extern "C" fn sleep(s: libc::c_uint) -> libc::c_uint {
    let t = libc::timespec {
        tv_sec: s as libc::time_t,
        tv_nsec: 0,
    };
    let mut left = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: our request and time-left buffer.
    if unsafe { nanosleep(&t, &mut left) } == 0 {
        0
    } else {
        (left.tv_sec + (left.tv_nsec > 0) as libc::time_t) as libc::c_uint
    }
}
