//! Virtual pids: after a restart without a pid namespace (dmtcp_restart's
//! `Mode::NewPids`) every process of the job has a new pid; the program
//! keeps seeing the pids it had. dmtcp_restart hands each process the
//! job's table (the pid each process had, the pid it has now); the
//! wrappers below translate what the program passes in and what it gets
//! back. Images record the pids the program sees, so a later restart in a
//! namespace gives each process its pid back for real (and the table is
//! emptied).
//!
//! The table is a fixed array of atomics written only by the checkpoint
//! thread at restart (user threads suspended) and read lock-free by the
//! wrappers: async-signal-safe, no allocation.
//!
//! Thread ids are in the same table: each process adds its own threads'
//! (tid the program knows, tid now) pairs at restart (see
//! `threads::changed_tids`), so `gettid`, `tgkill`, `tkill`, the same
//! calls made through `syscall(2)`, `sched_{set,get}affinity` and /proc
//! paths (`procpath`) keep working with the ids the program learnt.
//!
//! Limits: a process or thread created after such a restart gets whatever
//! id the kernel gives; if that id is one the table names as the old id of
//! another, translations of it are wrong. Ids inside siginfo (other than
//! waitid's), inside /proc files' contents and in /proc directory
//! listings are the real ones.

use core::sync::atomic::{AtomicI32, AtomicUsize, Ordering::*};

const MAX: usize = 4096;
static VIRT: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static REAL: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static N: AtomicUsize = AtomicUsize::new(0);

/// Install the table (restart, checkpoint thread); pairs (virtual, real).
pub fn set(pairs: &[(i32, i32)]) {
    N.store(0, SeqCst);
    let mut n = 0;
    for &(v, r) in pairs
        .iter()
        .filter(|(v, r)| *v > 0 && *r > 0 && v != r)
        .take(MAX)
    {
        VIRT[n].store(v, SeqCst);
        REAL[n].store(r, SeqCst);
        n += 1;
    }
    N.store(n, SeqCst);
}

/// Forget the table (restart at the pids the program sees).
pub fn clear() {
    N.store(0, SeqCst);
}

/// Add pairs (virtual, real) to the table (restart, checkpoint thread:
/// this process's threads whose tids changed).
pub fn add(pairs: &[(i32, i32)]) {
    let mut n = N.load(SeqCst);
    for &(v, r) in pairs.iter().filter(|(v, r)| *v > 0 && *r > 0 && v != r) {
        if n >= MAX {
            break;
        }
        VIRT[n].store(v, SeqCst);
        REAL[n].store(r, SeqCst);
        n += 1;
    }
    N.store(n, SeqCst);
}

/// Is the table in use (a restart without a pid namespace)?
pub fn active() -> bool {
    entries() > 0
}

fn entries() -> usize {
    N.load(Acquire).min(MAX)
}

/// The real pid behind a pid the program uses.
pub fn to_real(v: i32) -> i32 {
    (0..entries())
        .find(|&i| VIRT[i].load(Relaxed) == v)
        .map_or(v, |i| REAL[i].load(Relaxed))
}

/// The pid the program knows for a real one.
pub fn to_virt(r: i32) -> i32 {
    (0..entries())
        .find(|&i| REAL[i].load(Relaxed) == r)
        .map_or(r, |i| VIRT[i].load(Relaxed))
}

/// A pid argument of kill/waitpid/setpgid: `p` > 0 a process, `p` < -1 a
/// group (its leader's pid, negated); 0 and -1 stay.
fn arg_to_real(p: i32) -> i32 {
    match p {
        p if p > 0 => to_real(p),
        p if p < -1 => -to_real(-p),
        p => p,
    }
}

/// A system call with up to four arguments (the fifth, for waitid's
/// rusage, is null).
fn real_syscall(
    nr: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
) -> libc::c_long {
    // SAFETY: forwarding the caller's arguments to the kernel; the unused
    // trailing arguments are zero. Straight to the kernel, not through
    // libc's `syscall`, which is our wrapper below (it would translate
    // once more).
    let r = unsafe {
        dmtcp_sys::syscall6(
            nr as usize,
            a as usize,
            b as usize,
            c as usize,
            d as usize,
            0,
            0,
        )
    };
    errno_result(r)
}

/// A raw system call's result as libc returns it: -1 with errno set.
fn errno_result(r: isize) -> libc::c_long {
    if (-4095..0).contains(&r) {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = -r as i32 };
        -1
    } else {
        r as libc::c_long
    }
}

/// `gettid(2)`: the tid the program knows.
#[no_mangle]
pub extern "C" fn gettid() -> libc::pid_t {
    to_virt(dmtcp_sys::gettid())
}

/// `tgkill(2)` to the thread the program means.
#[no_mangle]
pub extern "C" fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    real_syscall(
        libc::SYS_tgkill,
        to_real(tgid) as libc::c_long,
        to_real(tid) as libc::c_long,
        sig as libc::c_long,
        0,
    ) as libc::c_int
}

/// `tkill(2)` to the thread the program means (glibc has no wrapper; only
/// through `syscall`).
fn tkill(tid: libc::pid_t, sig: libc::c_int) -> libc::c_long {
    real_syscall(
        libc::SYS_tkill,
        to_real(tid) as libc::c_long,
        sig as libc::c_long,
        0,
        0,
    )
}

/// `syscall(2)`, for the calls that name processes and threads: getpid,
/// gettid, kill, tgkill, tkill (how programs written before glibc 2.30
/// ask for their tid); everything else goes to the kernel as given.
/// Declared with six fixed arguments: on x86_64 a variadic caller passes
/// them in the same registers (and the sixth on the stack), and unused
/// ones are passed on as the kernel ignores them, as glibc's does.
///
/// # Safety
/// The contract of the system call `n`.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
    e: libc::c_long,
    f: libc::c_long,
) -> libc::c_long {
    if entries() > 0 {
        match n {
            libc::SYS_getpid => return getpid() as libc::c_long,
            libc::SYS_gettid => return gettid() as libc::c_long,
            libc::SYS_kill => return kill(a as i32, b as i32) as libc::c_long,
            libc::SYS_tgkill => return tgkill(a as i32, b as i32, c as i32) as libc::c_long,
            libc::SYS_tkill => return tkill(a as i32, b as i32),
            _ => {}
        }
    }
    // SAFETY: the caller's system call, as glibc's syscall(2) makes it.
    let r = unsafe {
        dmtcp_sys::syscall6(
            n as usize, a as usize, b as usize, c as usize, d as usize, e as usize, f as usize,
        )
    };
    errno_result(r)
}

/// `sched_setaffinity(2)` of the thread the program means.
///
/// # Safety
/// The `sched_setaffinity(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sched_setaffinity(
    pid: libc::pid_t,
    size: libc::size_t,
    set: *const libc::cpu_set_t,
) -> libc::c_int {
    let r = real_syscall(
        libc::SYS_sched_setaffinity,
        if pid > 0 { to_real(pid) } else { pid } as libc::c_long,
        size as libc::c_long,
        set as libc::c_long,
        0,
    );
    r as libc::c_int
}

/// `sched_getaffinity(2)` of the thread the program means (glibc's
/// contract: 0 on success, the unused tail of the set zeroed).
///
/// # Safety
/// The `sched_getaffinity(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn sched_getaffinity(
    pid: libc::pid_t,
    size: libc::size_t,
    set: *mut libc::cpu_set_t,
) -> libc::c_int {
    let r = real_syscall(
        libc::SYS_sched_getaffinity,
        if pid > 0 { to_real(pid) } else { pid } as libc::c_long,
        size as libc::c_long,
        set as libc::c_long,
        0,
    );
    if r < 0 {
        return -1;
    }
    if (r as usize) < size {
        // SAFETY: `set` holds `size` bytes (the caller's contract).
        unsafe { core::ptr::write_bytes((set as *mut u8).add(r as usize), 0, size - r as usize) };
    }
    0
}

/// `getpid(2)`: the pid the program knows.
#[no_mangle]
pub extern "C" fn getpid() -> libc::pid_t {
    to_virt(dmtcp_sys::getpid())
}

/// `kill(2)` of the process or group the program means.
#[no_mangle]
pub extern "C" fn kill(pid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    real_syscall(
        libc::SYS_kill,
        arg_to_real(pid) as libc::c_long,
        sig as libc::c_long,
        0,
        0,
    ) as libc::c_int
}

/// `wait4(2)` with translated pids.
///
/// # Safety
/// The `wait4(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
    ru: *mut libc::rusage,
) -> libc::pid_t {
    let r = super::restartable::again(|| {
        real_syscall(
            libc::SYS_wait4,
            arg_to_real(pid) as libc::c_long,
            status as libc::c_long,
            options as libc::c_long,
            ru as libc::c_long,
        )
    });
    if r > 0 {
        to_virt(r as i32)
    } else {
        r as libc::pid_t
    }
}

/// `waitpid(2)` with translated pids.
///
/// # Safety
/// The `waitpid(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
) -> libc::pid_t {
    // SAFETY: forwarded contract.
    unsafe { wait4(pid, status, options, core::ptr::null_mut()) }
}

/// `wait(2)` with the pid it returns translated.
///
/// # Safety
/// The `wait(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut libc::c_int) -> libc::pid_t {
    // SAFETY: forwarded contract.
    unsafe { wait4(-1, status, 0, core::ptr::null_mut()) }
}

/// `wait3(2)` with the pid it returns translated (glibc's calls its own
/// wait4, past ours; shells wait with it).
///
/// # Safety
/// The `wait3(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn wait3(
    status: *mut libc::c_int,
    options: libc::c_int,
    ru: *mut libc::rusage,
) -> libc::pid_t {
    // SAFETY: forwarded contract.
    unsafe { wait4(-1, status, options, ru) }
}

/// `waitid(2)` with translated pids (the id waited for, and the pid in
/// the returned siginfo).
///
/// # Safety
/// The `waitid(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: libc::c_int,
) -> libc::c_int {
    let id = match idtype {
        libc::P_PID | libc::P_PGID if id > 0 => to_real(id as i32) as libc::id_t,
        _ => id,
    };
    let r = super::restartable::again(|| {
        real_syscall(
            libc::SYS_waitid,
            idtype as libc::c_long,
            id as libc::c_long,
            info as libc::c_long,
            options as libc::c_long,
        )
    });
    if r == 0 && !info.is_null() && entries() > 0 {
        // si_pid sits at offset 16 of a SIGCHLD siginfo on x86_64.
        // SAFETY: the caller's siginfo, just filled by the kernel.
        unsafe {
            let p = (info as *mut u8).add(16) as *mut i32;
            let v = to_virt(core::ptr::read(p));
            core::ptr::write(p, v);
        }
    }
    r as libc::c_int
}

/// A query about process `pid` (0: the caller) that answers with a pid:
/// both translated.
fn pid_query(nr: libc::c_long, pid: libc::pid_t) -> libc::pid_t {
    let r = real_syscall(
        nr,
        if pid > 0 { to_real(pid) } else { pid } as libc::c_long,
        0,
        0,
        0,
    ) as i32;
    if r > 0 {
        to_virt(r)
    } else {
        r
    }
}

/// `getpgid(2)` with translated pids.
#[no_mangle]
pub extern "C" fn getpgid(pid: libc::pid_t) -> libc::pid_t {
    pid_query(libc::SYS_getpgid, pid)
}

/// `getpgrp(2)` translated.
#[no_mangle]
pub extern "C" fn getpgrp() -> libc::pid_t {
    getpgid(0)
}

/// `getsid(2)` with translated pids.
#[no_mangle]
pub extern "C" fn getsid(pid: libc::pid_t) -> libc::pid_t {
    pid_query(libc::SYS_getsid, pid)
}

/// `setpgid(2)` with translated pids.
#[no_mangle]
pub extern "C" fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> libc::c_int {
    let p = if pid > 0 { to_real(pid) } else { pid };
    let g = if pgid > 0 { to_real(pgid) } else { pgid };
    real_syscall(
        libc::SYS_setpgid,
        p as libc::c_long,
        g as libc::c_long,
        0,
        0,
    ) as libc::c_int
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translations_both_ways() {
        set(&[(100, 5000), (101, 5001), (7, 7)]);
        assert_eq!(to_real(100), 5000);
        assert_eq!(to_virt(5001), 101);
        assert_eq!(to_real(42), 42, "unknown pids stay");
        assert_eq!(to_virt(42), 42);
        assert_eq!(arg_to_real(-100), -5000, "a group by its leader");
        assert_eq!(arg_to_real(-1), -1);
        assert_eq!(arg_to_real(0), 0);
        clear();
        assert_eq!(to_real(100), 100);
    }
}
