//! A limit on the image write streams of one node, shared by every
//! process of the user on it (`DMTCP_NODE_STREAMS`).
//!
//! Each writer thread (of a process, or of its forked writer) takes one of
//! K slots before its first work item and gives it back after its last.
//! A slot is a `flock` on one of K files `dmtcp-streams-<uid>.<i>` in
//! `/dev/shm` (`/tmp` where there is none; `DMTCP_NODE_STREAMS_DIR`
//! chooses another directory): the kernel releases the lock of
//! a writer that dies, so a killed checkpoint leaves no slot taken, and
//! processes of different jobs of the user share the same K. A writer that
//! finds every slot taken tries again every 2 ms (its checkpoint thread
//! keeps telling the coordinator it is alive meanwhile), for at most
//! [`MAX_WAIT_TRIES`] x 2 ms (2 minutes): a process stopped (SIGSTOP)
//! while its writers hold slots must not hold back the checkpoints of
//! every other job of the user on the node for ever; after that wait the
//! writer goes on without a slot.
//!
//! The paths are made at start-up; taking and giving back a slot are raw
//! system calls on them (open, flock, close, nanosleep): nothing allocates
//! and no lock the program could hold is touched, as the writers run while
//! the program is suspended.

use std::ffi::CString;
use std::sync::OnceLock;

/// The slots' paths; unset: no limit.
static SLOTS: OnceLock<Vec<CString>> = OnceLock::new();

/// How many times a writer looks for a free slot, 2 ms apart.
const MAX_WAIT_TRIES: u32 = 60_000;

/// A slot held by a writer thread (its locked fd), or none.
pub struct Held(i32);

/// The default limit: twice the node's cores, at least 4.
pub fn default_limit(ncpu: usize) -> usize {
    (2 * ncpu).max(4)
}

/// At start-up: `limit` streams per node (0: no limit).
pub fn configure(limit: usize) {
    if limit == 0 {
        return;
    }
    let dir = node_dir();
    let uid = dmtcp_sys::geteuid();
    let paths = (0..limit)
        .filter_map(|i| CString::new(format!("{dir}/dmtcp-streams-{uid}.{i}")).ok())
        .collect();
    let _ = SLOTS.set(paths);
}

/// The node's directory for the slots (and for [`super::forkmem`]'s
/// reservations): `DMTCP_NODE_STREAMS_DIR`, else /dev/shm, else /tmp.
pub fn node_dir() -> String {
    match std::env::var(dmtcp_common::env::NODE_STREAMS_DIR) {
        Ok(d) if !d.is_empty() => d,
        _ if std::path::Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        _ => "/tmp".into(),
    }
}

/// Take a slot, waiting while every one is taken (at most about 2
/// minutes, see the module's text). A slot file that cannot
/// be opened (a full or read-only /dev/shm, one owned by someone else)
/// does not hold the image back: the writer goes on without a slot.
pub fn take() -> Held {
    let Some(paths) = SLOTS.get() else {
        return Held(-1);
    };
    let k = paths.len();
    let first = dmtcp_sys::gettid() as usize % k;
    for _ in 0..MAX_WAIT_TRIES {
        let mut openable = 0;
        for j in 0..k {
            let p = &paths[(first + j) % k];
            // SAFETY: p is a NUL-terminated path that lives as long as SLOTS.
            let fd = unsafe {
                dmtcp_sys::syscall3(
                    dmtcp_sys::nr::OPEN,
                    p.as_ptr() as usize,
                    dmtcp_sys::nr::O_RDWR | dmtcp_sys::nr::O_CLOEXEC | dmtcp_sys::nr::O_CREAT,
                    0o600,
                )
            };
            if dmtcp_sys::is_err(fd) {
                continue;
            }
            openable += 1;
            // SAFETY: flock on the fd just opened.
            let r = unsafe {
                dmtcp_sys::syscall3(
                    dmtcp_sys::nr::FLOCK,
                    fd as usize,
                    dmtcp_sys::nr::LOCK_EX | dmtcp_sys::nr::LOCK_NB,
                    0,
                )
            };
            if r == 0 {
                return Held(fd as i32);
            }
            // SAFETY: closing the fd just opened.
            unsafe { dmtcp_sys::syscall3(dmtcp_sys::nr::CLOSE, fd as usize, 0, 0) };
        }
        if openable == 0 {
            return Held(-1);
        }
        dmtcp_sys::sleep_ms(2);
    }
    Held(-1)
}

/// Give the slot back (closing the fd releases the lock).
pub fn give(h: Held) {
    if h.0 >= 0 {
        // SAFETY: h.0 is the fd take() opened; nothing else uses it.
        unsafe { dmtcp_sys::syscall3(dmtcp_sys::nr::CLOSE, h.0 as usize, 0, 0) };
    }
}
