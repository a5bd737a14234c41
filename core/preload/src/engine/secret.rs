//! The coordinator's secret (docs/security.md), kept in a page of its own
//! that images leave out (restored as zeroes): `dmtcp_launch` hands it
//! over through an inherited pipe (`DMTCP_SECRET_FD`), the exec wrappers
//! hand it on the same way, `dmtcp_restart` puts it in the restart info.
//! Without one, the file `DMTCP_SECRET_FILE` names or this user's file of
//! the coordinator on this machine is read when the coordinator asks.

use dmtcp_common::auth::{Secret, LEN};
use std::sync::atomic::{AtomicPtr, Ordering::SeqCst};

/// The page: byte 0 is 1 when a secret is held, bytes 1..=LEN the secret.
static PAGE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// The page, mapped (and left out of images) on first use; null if the
/// mapping failed.
fn page() -> *mut u8 {
    let p = PAGE.load(SeqCst);
    if !p.is_null() {
        return p;
    }
    // SAFETY: a fresh private anonymous page of our own.
    let m = unsafe {
        super::unmap::sys_mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        return core::ptr::null_mut();
    }
    super::memory::exclude(m as u64, 4096);
    // SAFETY: our page is never written to disk by a checkpoint; keep it
    // out of core dumps too (best effort).
    unsafe { libc::madvise(m, 4096, libc::MADV_DONTDUMP) };
    PAGE.store(m as *mut u8, SeqCst);
    m as *mut u8
}

/// Keep `s` as the secret.
pub fn set(s: &Secret) {
    let p = page();
    if p.is_null() {
        return;
    }
    // SAFETY: the page is ours, 4096 bytes long.
    unsafe {
        core::ptr::copy_nonoverlapping(s.0.as_ptr(), p.add(1), LEN);
        core::ptr::write_volatile(p, 1);
    }
}

/// The secret held, if any.
pub fn get() -> Option<Secret> {
    let p = PAGE.load(SeqCst);
    if p.is_null() {
        return None;
    }
    // SAFETY: the page is ours, 4096 bytes long (zeroes after a restart
    // until the restart info gives the secret again).
    unsafe {
        if core::ptr::read_volatile(p) != 1 {
            return None;
        }
        let mut s = Secret([0; LEN]);
        core::ptr::copy_nonoverlapping(p.add(1), s.0.as_mut_ptr(), LEN);
        Some(s)
    }
}

/// At start-up: read the secret from the pipe `DMTCP_SECRET_FD` names,
/// `<fd>,<pid>` (then closed, the variable removed).
pub fn take_from_env() {
    let Ok(v) = std::env::var(dmtcp_common::env::SECRET_FD) else {
        return;
    };
    std::env::remove_var(dmtcp_common::env::SECRET_FD);
    // "<fd>,<pid>": only the process named takes the pipe (a child that
    // inherited the variable, not the descriptor, leaves its fds alone).
    let Some((fd, pid)) = v.split_once(',') else {
        return;
    };
    let (Ok(fd), Ok(pid)) = (fd.parse::<i32>(), pid.parse::<i32>()) else {
        return;
    };
    if pid != dmtcp_sys::getpid() {
        return;
    }
    // SAFETY: a zeroed stat struct is a valid value.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat into our struct; fails cleanly if fd is closed.
    let is_pipe = fd >= 3 && unsafe { libc::fstat(fd, &mut st) } == 0;
    if !is_pipe || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return;
    }
    let mut s = Secret([0; LEN]);
    let mut got = 0;
    while got < LEN {
        // SAFETY: reading into our array, within its length.
        let n = unsafe { libc::read(fd, s.0[got..].as_mut_ptr() as *mut libc::c_void, LEN - got) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: closing the pipe handed to us.
    unsafe { libc::close(fd) };
    if got == LEN {
        set(&s);
    }
}

/// Answer the coordinator's challenge on `fd` (the `auth` of the Hello).
pub fn answer(fd: i32, host: &str, port: u16) -> Result<String, String> {
    let r = answer_with(fd, host, port);
    scrub_stack();
    r
}

/// Overwrite the stack below the caller: the HMAC's state (as good as the
/// secret) was there, and this thread's stack is in images.
#[inline(never)]
fn scrub_stack() {
    let mut z = [0u8; 16384];
    core::hint::black_box(&mut z);
}

fn answer_with(fd: i32, host: &str, port: u16) -> Result<String, String> {
    dmtcp_common::auth::answer_challenge(fd, &format!("{host}:{port}"), || match get() {
        Some(s) => Ok(Some(s)),
        None => {
            let s = dmtcp_common::auth::find(None, host, port)?;
            if let Some(s) = &s {
                set(s);
            }
            Ok(s)
        }
    })
}

/// Before an exec: a pipe holding the secret for the new program (its
/// read end, inherited), or -1.
pub fn pipe_for_exec() -> i32 {
    let Some(s) = get() else {
        return -1;
    };
    let mut p = [-1i32; 2];
    // SAFETY: pipe2 writes two fds into our array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return -1;
    }
    let ok = dmtcp_sys::write_all(p[1], &s.0) == 0;
    // SAFETY: closing our write end; the read end keeps the bytes.
    unsafe { libc::close(p[1]) };
    if !ok {
        // SAFETY: closing our read end.
        unsafe { libc::close(p[0]) };
        return -1;
    }
    // SAFETY: the read end is inherited by the new program.
    unsafe { libc::fcntl(p[0], libc::F_SETFD, 0) };
    p[0]
}
