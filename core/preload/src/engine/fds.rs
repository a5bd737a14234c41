//! The fd table as the engine and the plugins see it: the numbers the
//! library keeps for itself, helpers to list and inspect the program's
//! fds, and what `dmtcp_restart` already put in place at restart.
//!
//! Which plugin saves and restores which kind of fd is decided through the
//! plugin manager ([`super::plugin::Plugin::claims_fd`]): the file plugin
//! handles every fd no other plugin claims.

use std::ffi::CString;

/// First fd number the library keeps for itself.
pub const PROTECTED_FD_BASE: i32 = 820;
/// How many fd numbers from [`PROTECTED_FD_BASE`] on are the library's.
pub const PROTECTED_FD_COUNT: i32 = 10;

/// Is `fd` one of the library's own numbers?
pub fn is_protected(fd: i32) -> bool {
    (PROTECTED_FD_BASE..PROTECTED_FD_BASE + PROTECTED_FD_COUNT).contains(&fd)
}

/// An fd as the file plugin found it at checkpoint time, for the plugins
/// to decide whether it is of their kind.
pub struct FdDesc<'a> {
    pub fd: i32,
    /// What /proc/self/fd/N leads to ("socket:[123]", "/path", ...).
    pub target: &'a str,
    /// The file type bits of st_mode (`S_IFSOCK`, `S_IFREG`, ...).
    pub fmt: u32,
    /// The status flags (F_GETFL).
    pub flags: i32,
}

/// Every open fd of the process, the library's own included.
pub fn list_fds() -> Vec<i32> {
    let mut out = Vec::new();
    // SAFETY: open of a literal path.
    let d = unsafe { libc::open(c"/proc/self/fd".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if d < 0 {
        return out;
    }
    let mut buf = vec![0u8; 8192];
    dmtcp_sys::for_each_dirent(d, &mut buf, |name| {
        if let Some(fd) = dmtcp_sys::parse_decimal(name) {
            if fd != d {
                out.push(fd);
            }
        }
    });
    // SAFETY: closing our fd.
    unsafe { libc::close(d) };
    out
}

/// The program's fds with what they lead to (library fds left out).
pub fn fds_with_targets() -> Vec<(i32, String)> {
    list_fds().into_iter().filter(|&fd| !is_protected(fd)).map(|fd| (fd, fd_target(fd))).collect()
}

/// The process's sockets: (fd, "socket:[inode]").
pub fn socket_fds() -> Vec<(i32, String)> {
    fds_with_targets().into_iter().filter(|(_, t)| t.starts_with("socket:[")).collect()
}

/// What `fd` leads to ("" if it is closed).
pub fn fd_target(fd: i32) -> String {
    let p = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    let mut buf = vec![0u8; 4096];
    // SAFETY: readlink writes at most buf.len() bytes.
    let n = unsafe { libc::readlink(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n <= 0 {
        return String::new();
    }
    buf.truncate(n as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Is `fd` open and of file type `fmt` (`S_IFSOCK`, `S_IFIFO`, ...)?
pub fn fd_is(fd: i32, fmt: u32) -> bool {
    // SAFETY: fstat into a zeroed struct; fails cleanly on a closed fd.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == fmt }
}

/// Set or clear O_NONBLOCK; the flags before.
pub fn set_nonblock(fd: i32, on: bool) -> i32 {
    // SAFETY: fcntl flag manipulation on an fd of ours.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK });
        fl
    }
}

/// Put `nfd` at number `target` (closing `nfd`), with the given close-on-exec flag.
///
/// # Safety
/// Both must be fds this process may replace.
pub unsafe fn move_fd(nfd: i32, target: i32, cloexec: bool) {
    // SAFETY: forwarded contract.
    unsafe {
        if nfd != target {
            libc::dup2(nfd, target);
            libc::close(nfd);
        }
        libc::fcntl(target, libc::F_SETFD, if cloexec { libc::FD_CLOEXEC } else { 0 });
    }
}

/// Fds of objects shared with other processes that `dmtcp_restart` made
/// once and put in place (from the restart info) before this process ran.
static RESTART_INSTALLED: super::flock::FLock<Vec<i32>> = super::flock::FLock::new(Vec::new());

/// Record what the restart info says `dmtcp_restart` put in place.
pub fn set_installed_by_restart(fds: Vec<i32>) {
    RESTART_INSTALLED.with(|v| *v = fds);
}

/// Did `dmtcp_restart` put `fd` in place for this restart?
pub fn installed_by_restart(fd: i32) -> bool {
    RESTART_INSTALLED.with(|v| v.contains(&fd))
}
