//! The fd table as the engine and the plugins see it: the numbers the
//! library keeps for itself, helpers to list and inspect the program's
//! fds, and what `dmtcp_restart` already put in place at restart.
//!
//! Which plugin saves and restores which kind of fd is decided through the
//! plugin manager ([`super::plugin::Plugin::claims_fd`]): the file plugin
//! handles every fd no other plugin claims.

use std::ffi::CString;

pub use dmtcp_common::fdnums::{PROTECTED_FD_BASE, PROTECTED_FD_COUNT};

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
    let d = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
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

/// The program's fds with what they lead to (library fds and fds user
/// plugins claimed left out).
pub fn fds_with_targets() -> Vec<(i32, String)> {
    list_fds()
        .into_iter()
        .filter(|&fd| !is_protected(fd) && !is_claimed(fd))
        .map(|fd| (fd, fd_target(fd)))
        .collect()
}

/// The process's sockets: (fd, "socket:[inode]").
pub fn socket_fds() -> Vec<(i32, String)> {
    fds_with_targets()
        .into_iter()
        .filter(|(_, t)| t.starts_with("socket:["))
        .collect()
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
        libc::fcntl(
            fd,
            libc::F_SETFL,
            if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            },
        );
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
        libc::fcntl(
            target,
            libc::F_SETFD,
            if cloexec { libc::FD_CLOEXEC } else { 0 },
        );
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

/// Fds user plugins own (`dmtcp_claim_fd`): (fd, st_dev, st_ino) of the
/// object the fd led to when it was claimed. A claim whose fd now leads
/// elsewhere (the program closed it and the number was reused) is stale
/// and ignored. In the library's heap, so claims are in the image.
static CLAIMED: super::flock::FLock<Vec<(i32, u64, u64)>> = super::flock::FLock::new(Vec::new());

/// st_dev and st_ino of what `fd` leads to.
fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat into a zeroed struct; fails cleanly on a closed fd.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// Claim `fd` for a user plugin (see `dmtcp_claim_fd`); false if closed.
/// Callers on user threads hold checkpoints off.
pub fn claim(fd: i32) -> bool {
    let Some((dev, ino)) = identity(fd) else {
        return false;
    };
    CLAIMED.with(|v| {
        v.retain(|c| c.0 != fd);
        v.push((fd, dev, ino));
    });
    true
}

/// End the claim on `fd`; false if there was none.
pub fn release(fd: i32) -> bool {
    CLAIMED.with(|v| {
        let n = v.len();
        v.retain(|c| c.0 != fd);
        v.len() != n
    })
}

/// Does a user plugin own `fd` (a claim that is not stale)?
pub fn is_claimed(fd: i32) -> bool {
    let Some(id) = identity(fd) else { return false };
    CLAIMED.with(|v| v.iter().any(|c| c.0 == fd && (c.1, c.2) == id))
}

/// Checkpoint: forget stale claims, so the image holds only live ones.
pub fn prune_claims() {
    CLAIMED.with(|v| v.retain(|c| identity(c.0) == Some((c.1, c.2))));
}

/// Restart: hold every claimed number with /dev/null (an fd the program
/// does not get by accident) until the owning plugin's restart hook puts
/// the new object there and claims it again.
pub fn hold_claimed_numbers() {
    let fds: Vec<i32> = CLAIMED.with(|v| v.iter().map(|c| c.0).collect());
    for fd in fds {
        // SAFETY: open of a literal path; the new fd goes to the claimed
        // number, which nothing else holds after the file plugin's restart.
        let n = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if n >= 0 {
            // SAFETY: as above.
            unsafe { move_fd(n, fd, true) };
            claim(fd);
        }
    }
}
