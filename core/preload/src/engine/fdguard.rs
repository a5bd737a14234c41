//! The library's fds stay the library's. The program's `close`, `dup2`,
//! `dup3`, `close_range` and `closefrom` never close or replace them (a
//! daemon that closes every fd above 2, or `closefrom(3)` before an exec,
//! would otherwise cut the coordinator link), and the numbers of the
//! protected range the library does not use hold placeholders, so the
//! kernel never hands one of them to the program. The library's own calls
//! on its fds use the raw system calls ([`close_own`], [`dup_own`]).

use super::fds::{is_protected, PROTECTED_FD_BASE, PROTECTED_FD_COUNT};
use core::sync::atomic::Ordering::SeqCst;
use std::ffi::c_int;

fn guarded(fd: c_int) -> bool {
    is_protected(fd) && super::start::LOADED.load(SeqCst)
}

fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

/// Close one of the library's own fds (bypassing the guard).
pub fn close_own(fd: c_int) {
    // SAFETY: a raw close of an fd the library owns.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Wait for one byte on the library's own `fd` (a pipe or socket whose
/// other end says "done" with a byte): true if it came, false at the end
/// of the file (the other side is gone) or on an error.
pub fn read_byte(fd: c_int) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into our buffer.
        let r = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return r == 1;
        }
    }
}

/// Put `old` at the library's number `new` with close-on-exec (bypassing
/// the guard); -1 on failure.
pub fn dup_own(old: c_int, new: c_int) -> c_int {
    // SAFETY: a raw dup3 onto a number the library owns.
    unsafe { libc::syscall(libc::SYS_dup3, old, new, libc::O_CLOEXEC) as c_int }
}

/// Make sure the fd limit leaves room for the protected range (raising the
/// soft limit if it must); an error names the limit otherwise.
pub fn ensure_room() -> Result<(), String> {
    let need = (PROTECTED_FD_BASE + PROTECTED_FD_COUNT) as libc::rlim_t;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes our struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 || l.rlim_cur >= need {
        return Ok(());
    }
    if l.rlim_max >= need {
        let raised = libc::rlimit {
            rlim_cur: need,
            rlim_max: l.rlim_max,
        };
        // SAFETY: setrlimit reads our struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(format!(
        "the open-file limit ({} soft, {} hard) is below {need}: the checkpointer keeps fds {PROTECTED_FD_BASE}-{} for itself (raise it with ulimit -n)",
        l.rlim_cur,
        l.rlim_max,
        need - 1
    ))
}

/// Fill the unused numbers of the protected range with placeholders
/// (start-up and restart; a number already open is left alone).
///
/// The kernel gives `open` the lowest free number: when the program holds
/// every number below a free protected one (a program with hundreds of fds,
/// after the library let go of one of its own), that is the protected
/// number itself, and the `/dev/null` opened here is already the
/// placeholder there: it stays open (closing it, as the other copy is,
/// would leave the number free for the program's next `open`, an fd that
/// the library then neither saves nor leaves alone).
pub fn fill_placeholders() {
    // SAFETY: open of a literal path.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if null < 0 {
        return;
    }
    for fd in PROTECTED_FD_BASE..PROTECTED_FD_BASE + PROTECTED_FD_COUNT {
        // SAFETY: F_GETFD only asks whether the number is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            dup_own(null, fd);
        }
    }
    if !is_protected(null) {
        close_own(null);
    }
}

/// `close(2)`: the library's fds read as not open.
///
/// # Safety
/// The `close(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if guarded(fd) {
        set_errno(libc::EBADF);
        return -1;
    }
    let f = super::iface::next_libc!(c"close", unsafe extern "C" fn(c_int) -> c_int);
    // SAFETY: forwarding to libc.
    unsafe { f(fd) }
}

/// `dup2(2)`: the library's numbers are out of the program's range.
///
/// # Safety
/// The `dup2(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if guarded(new) {
        set_errno(libc::EBADF);
        return -1;
    }
    let f = super::iface::next_libc!(c"dup2", unsafe extern "C" fn(c_int, c_int) -> c_int);
    // SAFETY: forwarding to libc.
    unsafe { f(old, new) }
}

/// `dup3(2)`: as `dup2`.
///
/// # Safety
/// The `dup3(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if guarded(new) {
        set_errno(libc::EBADF);
        return -1;
    }
    let f = super::iface::next_libc!(c"dup3", unsafe extern "C" fn(c_int, c_int, c_int) -> c_int);
    // SAFETY: forwarding to libc.
    unsafe { f(old, new, flags) }
}

/// The parts of `[first, last]` outside the protected range.
fn outside(first: u32, last: u32) -> [Option<(u32, u32)>; 2] {
    let (b, e) = (
        PROTECTED_FD_BASE as u32,
        (PROTECTED_FD_BASE + PROTECTED_FD_COUNT - 1) as u32,
    );
    if last < b || first > e {
        return [Some((first, last)), None];
    }
    [
        (first < b).then(|| (first, b - 1)),
        (last > e).then(|| (e + 1, last)),
    ]
}

fn close_range_raw(first: u32, last: u32, flags: c_int) -> c_int {
    // SAFETY: the close_range system call on the program's numbers.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) as c_int }
}

/// `close_range(2)` around the protected range.
///
/// # Safety
/// The `close_range(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: u32, last: u32, flags: c_int) -> c_int {
    if !super::start::LOADED.load(SeqCst) || first > last {
        return close_range_raw(first, last, flags);
    }
    let mut r = 0;
    for (a, b) in outside(first, last).into_iter().flatten() {
        if close_range_raw(a, b, flags) != 0 && r == 0 {
            r = -1;
        }
    }
    r
}

/// `closefrom(3)` around the protected range.
///
/// # Safety
/// The `closefrom(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let low = low.max(0) as u32;
    // SAFETY: our close_range wrapper.
    if unsafe { close_range(low, u32::MAX, 0) } == 0 {
        return;
    }
    // No close_range (old kernel): close what is open, one by one.
    for fd in super::fds::list_fds() {
        if fd as u32 >= low && !guarded(fd) {
            // SAFETY: closing a program fd, as closefrom would.
            unsafe { libc::syscall(libc::SYS_close, fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::outside;
    use super::{fill_placeholders, PROTECTED_FD_BASE as BASE, PROTECTED_FD_COUNT as COUNT};

    fn is_open(fd: i32) -> bool {
        // SAFETY: F_GETFD only asks whether the number is open.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// A process holding every number below the protected range (so the
    /// `/dev/null` opened to fill it lands in the range itself) still has
    /// every protected number filled afterwards. In a forked child: the
    /// test harness's other threads open fds too.
    #[test]
    fn placeholders_fill_the_range_when_it_holds_the_lowest_free_number() {
        // SAFETY: the child only makes system calls (raw ones where this
        // library wraps the libc function) and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: system calls on fds of this (child) process only.
            let code = unsafe {
                let l = libc::rlimit {
                    rlim_cur: 4096,
                    rlim_max: 4096,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                for fd in 0..BASE {
                    if !is_open(fd) {
                        libc::syscall(libc::SYS_dup2, null, fd);
                    }
                }
                for fd in BASE..BASE + COUNT {
                    libc::syscall(libc::SYS_close, fd);
                }
                // The library let go of one of its numbers (the page
                // server's socket, the forked writer's link), the rest
                // of the range holding placeholders.
                fill_placeholders();
                libc::syscall(libc::SYS_close, BASE + 5);
                fill_placeholders();
                let filled = (BASE..BASE + COUNT).filter(|&fd| is_open(fd)).count() as i32;
                // Nothing of ours left open above the range either.
                let stray = (BASE + COUNT..BASE + COUNT + 16)
                    .filter(|&fd| is_open(fd))
                    .count() as i32;
                if filled == COUNT && stray == 0 {
                    0
                } else {
                    1 + filled
                }
            };
            // SAFETY: ending the child without running the harness's exit code.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st), "child status {st}");
        let code = libc::WEXITSTATUS(st);
        assert_eq!(code, 0, "{} of {COUNT} protected numbers filled", code - 1);
    }
    const B: u32 = super::PROTECTED_FD_BASE as u32;
    const E: u32 = B + super::PROTECTED_FD_COUNT as u32 - 1;

    #[test]
    fn ranges_around_the_protected_fds() {
        assert_eq!(outside(3, 100), [Some((3, 100)), None]);
        assert_eq!(
            outside(3, u32::MAX),
            [Some((3, B - 1)), Some((E + 1, u32::MAX))]
        );
        assert_eq!(outside(B, E), [None, None]);
        assert_eq!(outside(B + 2, E + 5), [None, Some((E + 1, E + 5))]);
        assert_eq!(outside(E + 1, E + 1), [Some((E + 1, E + 1)), None]);
    }
}
