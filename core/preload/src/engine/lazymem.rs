//! The restored process's side of a lazy restore through userfaultfd:
//! the socket to `dmtcp_restart`'s page server, asking it for every page
//! still missing before a fork or a checkpoint, and stopping with the
//! reason if it went away first.
//!
//! (Until 2026-12-06 a restart also mapped raw chunks of private file
//! mappings from the image, and this module's `realloc` moved blocks that
//! lay there instead of letting glibc grow them in place with `mremap`,
//! which would have shown the image's next bytes. Nothing is mapped from
//! the image any more: the restorer reads those chunks into place.)

use core::sync::atomic::{AtomicI32, Ordering::*};

/// The number of the socket to the page server of a lazy restore of
/// compressed chunks (`dmtcp_restart`'s `lazy` module), while it has pages
/// to fill.
pub const LAZY_FD_NUM: i32 = super::fds::PROTECTED_FD_BASE + 5;
/// [`LAZY_FD_NUM`] while the page server has pages to fill, else -1.
pub static LAZY_FD: AtomicI32 = AtomicI32::new(-1);
static LAZY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Have the page server fill every page still missing, and wait until it
/// has (and let go of the process). Before a fork (the child would see
/// zero pages where the parent had pages still to come) and a checkpoint
/// (the image is written from this memory, maybe by a forked writer).
/// Not for code that runs while user threads are suspended (a lock).
pub fn fill_all() {
    if LAZY_FD.load(SeqCst) < 0 {
        return;
    }
    let _g = LAZY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fd = LAZY_FD.load(SeqCst);
    if fd < 0 {
        return;
    }
    let ask = [b'F'];
    // SAFETY: one byte to our socket (no SIGPIPE if the server is done
    // and gone: its answer is waiting all the same).
    unsafe { libc::send(fd, ask.as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: reading one byte from our socket into our buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        // SAFETY: errno is thread-local.
        if n >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            break n;
        }
    };
    if n != 1 || b[0] != b'D' {
        server_lost();
    }
    release(fd);
}

/// The server is done: let go of its socket.
fn release(fd: i32) {
    LAZY_FD.store(-1, SeqCst);
    super::fdguard::close_own(fd);
    super::fdguard::fill_placeholders();
}

/// The checkpoint thread saw the page server's socket readable: the
/// server is done (its byte `D`; the socket is closed) or gone. Gone
/// before it filled every page means the kernel now answers the program's
/// next touch of a missing page with a zero page: rather than let it run on
/// wrong memory, the process stops here with the reason (the server
/// ignores the terminal's signals and is not part of the job, so only a
/// SIGKILL of it, e.g. the OOM killer's, gets here).
pub fn server_spoke() {
    let _g = LAZY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fd = LAZY_FD.load(SeqCst);
    if fd < 0 {
        return;
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our socket into our buffer, without
    // blocking (poll said it is readable).
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    if n == 1 && b[0] == b'D' {
        release(fd);
        return;
    }
    if n < 0 {
        // SAFETY: errno is thread-local.
        let e = unsafe { *libc::__errno_location() };
        if e == libc::EAGAIN || e == libc::EINTR {
            return;
        }
    }
    server_lost();
}

/// The page server is gone with pages still missing: stop with the reason.
fn server_lost() -> ! {
    super::log::error(format_args!(
        "the page server of the lazy restore ended before it had restored all of this \
         process's memory; stopping rather than running on zero pages \
         (DMTCP_RESTART_NO_UFFD=1 restores everything before the program resumes)"
    ));
    dmtcp_sys::exit_group(1)
}
