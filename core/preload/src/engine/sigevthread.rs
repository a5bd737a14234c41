//! POSIX timers that call a function on a thread (`SIGEV_THREAD`).
//!
//! glibc runs those callbacks from a helper thread that blocks every
//! signal, the checkpoint signal included, so a process with such a timer
//! could never be suspended. The `timer_create` wrapper handles
//! `SIGEV_THREAD` itself instead: the kernel timer notifies our own helper
//! thread (`SIGEV_THREAD_ID` with signal 32, which glibc keeps for itself
//! and no program uses), which blocks every signal but the checkpoint one,
//! waits for expirations and starts a thread for each that calls the
//! program's function with its value. The `timer_t` handed back is the
//! kernel's timer id, which glibc's `timer_settime`, `timer_gettime`,
//! `timer_getoverrun` and `timer_delete` take as they are. The helper is a
//! thread like the program's: checkpointed, and re-created at restart with
//! its tid, so the re-created kernel timers reach it again.
//!
//! Limits: the callback threads get default attributes
//! (`sigev_notify_attributes` is not used); the few bytes naming a
//! timer's callback stay allocated after `timer_delete`.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};

/// The signal expirations arrive with (glibc's internal SIGCANCEL/SIGTIMER).
const SIG: i32 = 32;

/// The kernel's struct sigevent, with the SIGEV_THREAD fields named.
#[repr(C)]
struct Sigevent {
    value: u64,
    signo: i32,
    notify: i32,
    /// SIGEV_THREAD: the function; SIGEV_THREAD_ID: the tid (low 32 bits).
    function: u64,
    attributes: u64,
    _pad: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<Sigevent>() == 64);
const _: () = assert!(core::mem::offset_of!(Sigevent, function) == 16);

/// What an expiration calls: the program's function and value.
struct Call {
    function: extern "C" fn(u64),
    value: u64,
}

/// The helper's tid once it runs (0 before); a futex its starters wait on.
static HELPER_TID: AtomicU32 = AtomicU32::new(0);
static STARTING: AtomicUsize = AtomicUsize::new(0);

/// In a forked child: the helper thread stayed in the parent.
pub fn after_fork_child() {
    HELPER_TID.store(0, SeqCst);
    STARTING.store(0, SeqCst);
}

extern "C" fn run_call(p: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `p` is a leaked `Call` that lives as long as its timer.
    let c = unsafe { &*(p as *const Call) };
    (c.function)(c.value);
    core::ptr::null_mut()
}

/// The helper: wait for expirations, run each callback on a new thread.
fn helper() {
    let ckpt = super::threads::CKPT_SIGNAL.load(SeqCst);
    let mask: u64 = !(1u64 << (ckpt - 1));
    // SAFETY: setting this thread's own signal mask.
    unsafe {
        dmtcp_sys::syscall6(
            dmtcp_sys::nr::RT_SIGPROCMASK,
            libc::SIG_SETMASK as usize,
            &mask as *const u64 as usize,
            0,
            8,
            0,
            0,
        )
    };
    HELPER_TID.store(dmtcp_sys::gettid() as u32, SeqCst);
    dmtcp_sys::futex_wake(&HELPER_TID, i32::MAX as u32);
    let set: u64 = 1u64 << (SIG - 1);
    loop {
        let mut info = [0u64; 16];
        // SAFETY: rt_sigtimedwait reads our set and writes the 128-byte siginfo.
        let r = unsafe {
            dmtcp_sys::syscall6(
                dmtcp_sys::nr::RT_SIGTIMEDWAIT,
                &set as *const u64 as usize,
                info.as_mut_ptr() as usize,
                0,
                8,
                0,
                0,
            )
        };
        if r != SIG as isize {
            continue; // interrupted (a checkpoint)
        }
        // si_value sits at byte 24 of siginfo for timer signals.
        let call = info[3] as *mut libc::c_void;
        if call.is_null() {
            continue;
        }
        // SAFETY: starting a detached thread on our callback trampoline.
        unsafe {
            let mut th: libc::pthread_t = 0;
            if libc::pthread_create(&mut th, core::ptr::null(), run_call, call) == 0 {
                libc::pthread_detach(th);
            }
        }
    }
}

/// Start the helper once; its tid (0 if it cannot be started).
fn helper_tid() -> i32 {
    if STARTING.swap(1, SeqCst) == 0 {
        let ok = std::thread::Builder::new()
            .name("dmtcp:sigev".into())
            .stack_size(256 << 10)
            .spawn(helper)
            .is_ok();
        if !ok {
            STARTING.store(0, SeqCst);
            return 0;
        }
    }
    // The thread exists (spawned here or by an earlier caller) and cannot
    // be suspended before it says its tid (the caller holds checkpoints
    // off): wait for it, however busy the machine is. (A bounded spin of
    // sched_yield here once gave up under load, and timer_create failed
    // with EAGAIN.)
    loop {
        let t = HELPER_TID.load(SeqCst);
        if t != 0 {
            return t as i32;
        }
        dmtcp_sys::futex_wait(&HELPER_TID, 0, 0);
    }
}

type TimerCreateFn =
    unsafe extern "C" fn(libc::clockid_t, *mut libc::sigevent, *mut libc::timer_t) -> libc::c_int;

/// `timer_create(2)`: `SIGEV_THREAD` timers notify our helper thread.
///
/// # Safety
/// As `timer_create(2)`.
#[no_mangle]
pub unsafe extern "C" fn timer_create(
    clock: libc::clockid_t,
    sev: *mut libc::sigevent,
    out: *mut libc::timer_t,
) -> libc::c_int {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: the caller's sigevent, if any, is readable (64 bytes).
    let thread =
        !sev.is_null() && unsafe { (*(sev as *const Sigevent)).notify } == libc::SIGEV_THREAD;
    if !thread {
        let f = super::start::libc_fn(&REAL, c"timer_create");
        if f == 0 {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            return -1;
        }
        // SAFETY: libc's timer_create with the caller's arguments.
        return unsafe { core::mem::transmute::<usize, TimerCreateFn>(f)(clock, sev, out) };
    }
    // SAFETY: as above.
    let user = unsafe { &*(sev as *const Sigevent) };
    if user.function == 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    // helper_tid may start the helper thread, and the call is allocated in
    // the library's heap: no checkpoint may suspend this thread meanwhile.
    let _hold = super::capi::CkptHold::new();
    let tid = helper_tid();
    if tid == 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::EAGAIN };
        return -1;
    }
    // SAFETY: a non-null function pointer the program gave for this purpose.
    let function: extern "C" fn(u64) =
        unsafe { core::mem::transmute::<usize, extern "C" fn(u64)>(user.function as usize) };
    let call = Box::into_raw(Box::new(Call {
        function,
        value: user.value,
    }));
    let k = Sigevent {
        value: call as u64,
        signo: SIG,
        notify: libc::SIGEV_THREAD_ID,
        function: tid as u32 as u64,
        attributes: 0,
        _pad: [0; 4],
    };
    let mut id: i32 = -1;
    // SAFETY: the kernel reads our sigevent and writes the new id.
    let r = unsafe {
        dmtcp_sys::syscall3(
            dmtcp_sys::nr::TIMER_CREATE,
            clock as usize,
            &k as *const Sigevent as usize,
            &mut id as *mut i32 as usize,
        )
    };
    if r < 0 {
        // SAFETY: the Call was never handed out.
        drop(unsafe { Box::from_raw(call) });
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = -r as i32 };
        return -1;
    }
    // SAFETY: the caller's timer_t slot; glibc takes a kernel id as a timer_t.
    unsafe { *out = id as isize as libc::timer_t };
    0
}
