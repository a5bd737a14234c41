//! POSIX message queues (`mq_open`) across a restart, run by the sysv
//! plugin between its barriers.
//!
//! A queue outlives a killed job (in its state after the checkpoint), so
//! its contents are saved: each process publishes the queues it has open
//! (by name) before the barrier `sysv:elect`; the last writer is the
//! queue's leader, which takes every message out (highest priority first,
//! as the kernel hands them) and sends them straight back, keeping a copy
//! for the image. At restart the leader removes the stale queue, creates
//! it again with the same size limits and mode and refills it before the
//! barrier `sysv:made`; then every process opens it at its fd number, and
//! a queue that had been unlinked while open is unlinked again after the
//! barrier `sysv:opened`.

use crate::engine::iface as dmtcp;

const DB: &str = "dmtcp:mq";
/// `MQUEUE_MAGIC`: the file system of message queue fds.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

#[derive(Clone, Debug, Default)]
pub struct Mq {
    fd: i32,
    name: String,
    oflags: i32,
    cloexec: bool,
    mode: u32,
    maxmsg: i64,
    msgsize: i64,
    nonblock: bool,
    unlinked: bool,
    leader: bool,
    msgs: Vec<(u32, Vec<u8>)>,
}

static SAVED: dmtcp::FLock<Vec<Mq>> = dmtcp::FLock::new(Vec::new());

/// Is `fd` a message queue?
pub fn is_mqueue(fd: i32) -> bool {
    // SAFETY: a zeroed statfs for fstatfs to fill.
    let mut s: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: fstatfs writes our struct; fails cleanly on a closed fd.
    unsafe { libc::fstatfs(fd, &mut s) == 0 && s.f_type == MQUEUE_MAGIC }
}

fn cname(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name).unwrap_or_default()
}

fn attr(fd: i32) -> Option<libc::mq_attr> {
    // SAFETY: a zeroed mq_attr for mq_getattr to fill.
    let mut a: libc::mq_attr = unsafe { core::mem::zeroed() };
    // SAFETY: mq_getattr on a queue fd writes our struct.
    (unsafe { libc::mq_getattr(fd, &mut a) } == 0).then_some(a)
}

fn ino(fd: i32) -> u64 {
    // SAFETY: a zeroed stat for fstat to fill.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes our struct.
    unsafe { libc::fstat(fd, &mut st) };
    st.st_ino
}

/// Before the barrier `sysv:elect`: find the process's queues and publish them.
pub fn publish(pid: i32) -> Vec<Mq> {
    let mut out = Vec::new();
    for (fd, target) in dmtcp::fds::fds_with_targets() {
        if !target.starts_with('/') || !is_mqueue(fd) {
            continue;
        }
        let Some(a) = attr(fd) else { continue };
        // SAFETY: fcntl/fstat queries of a live fd.
        let (oflags, fdflags, mode) = unsafe {
            let mut st: libc::stat = core::mem::zeroed();
            libc::fstat(fd, &mut st);
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
                st.st_mode & 0o777,
            )
        };
        // Still reachable by its name (the same queue)?
        // SAFETY: mq_open/close of the name, read-only, closed at once.
        let unlinked = unsafe {
            let q = libc::mq_open(cname(&target).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            let same = q >= 0 && ino(q) == ino(fd);
            if q >= 0 {
                libc::close(q);
            }
            !same
        };
        let key = format!("{target}:{}", ino(fd));
        dmtcp::kv_put(DB, key.into_bytes(), pid.to_ne_bytes().to_vec());
        out.push(Mq {
            fd,
            name: target,
            oflags,
            cloexec: fdflags & libc::FD_CLOEXEC != 0,
            mode,
            maxmsg: a.mq_maxmsg,
            msgsize: a.mq_msgsize,
            nonblock: a.mq_flags & libc::O_NONBLOCK as i64 != 0,
            unlinked,
            ..Default::default()
        });
    }
    out
}

/// After the barrier: leaders copy their queues' messages (taking them
/// and sending them straight back).
pub fn save(mut qs: Vec<Mq>, pid: i32, coordinated: bool) {
    let mut done: Vec<u64> = Vec::new();
    for q in qs.iter_mut() {
        let i = ino(q.fd);
        let key = format!("{}:{i}", q.name);
        let owner = if coordinated {
            dmtcp::kv_get(DB, key.as_bytes()).flatten()
        } else {
            None
        };
        q.leader = owner.is_none_or(|o| o == pid.to_ne_bytes()) && !done.contains(&i);
        if !q.leader {
            continue;
        }
        done.push(i);
        if q.oflags & libc::O_ACCMODE != libc::O_RDWR {
            dmtcp::warn(format_args!("message queue {} (fd {}) is not open for reading and writing: its messages are not saved", q.name, q.fd));
            continue;
        }
        let mut buf = vec![0u8; q.msgsize.max(1) as usize];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let mut prio: u32 = 0;
            // SAFETY: an immediate receive into our buffer (absolute timeout in the past).
            let n = unsafe {
                libc::mq_timedreceive(
                    q.fd,
                    buf.as_mut_ptr() as *mut libc::c_char,
                    buf.len(),
                    &mut prio,
                    &zero,
                )
            };
            if n < 0 {
                break;
            }
            q.msgs.push((prio, buf[..n as usize].to_vec()));
        }
        for (prio, m) in &q.msgs {
            // SAFETY: sending back what we took, in the order it came.
            unsafe {
                libc::mq_timedsend(
                    q.fd,
                    m.as_ptr() as *const libc::c_char,
                    m.len(),
                    *prio,
                    &zero,
                )
            };
        }
    }
    SAVED.with(|v| *v = qs);
}

/// Restart, before the barrier `sysv:made`: leaders make the queues again.
pub fn remake() {
    let saved = SAVED.with(|v| v.clone());
    for q in saved.iter().filter(|q| q.leader) {
        let n = cname(&q.name);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: removing the stale queue and making it again; sending our buffers.
        unsafe {
            libc::mq_unlink(n.as_ptr());
            let mut a: libc::mq_attr = core::mem::zeroed();
            a.mq_maxmsg = q.maxmsg;
            a.mq_msgsize = q.msgsize;
            let fd = libc::mq_open(
                n.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                q.mode,
                &a,
            );
            if fd < 0 {
                dmtcp::warn(format_args!(
                    "message queue {} cannot be re-created: {}",
                    q.name,
                    std::io::Error::last_os_error()
                ));
                continue;
            }
            for (prio, m) in &q.msgs {
                libc::mq_timedsend(fd, m.as_ptr() as *const libc::c_char, m.len(), *prio, &zero);
            }
            libc::close(fd);
        }
    }
}

/// After the barrier `sysv:made`: open each queue at its fd number.
pub fn reopen() {
    let saved = SAVED.with(|v| v.clone());
    for q in &saved {
        let n = cname(&q.name);
        // SAFETY: opening the queue by name and moving it to the program's fd.
        unsafe {
            let fd = libc::mq_open(n.as_ptr(), (q.oflags & libc::O_ACCMODE) | libc::O_CLOEXEC);
            if fd < 0 {
                dmtcp::warn(format_args!(
                    "message queue {} (fd {}) cannot be opened again: {}",
                    q.name,
                    q.fd,
                    std::io::Error::last_os_error()
                ));
                continue;
            }
            if fd != q.fd {
                libc::dup2(fd, q.fd);
                libc::close(fd);
            }
            libc::fcntl(
                q.fd,
                libc::F_SETFD,
                if q.cloexec { libc::FD_CLOEXEC } else { 0 },
            );
            if q.nonblock {
                let mut a: libc::mq_attr = core::mem::zeroed();
                a.mq_flags = libc::O_NONBLOCK as i64;
                libc::mq_setattr(q.fd, &a, core::ptr::null_mut());
            }
        }
    }
}

/// After the barrier `sysv:opened`: unlink queues that had been unlinked.
pub fn unlink_again() {
    let saved = SAVED.with(|v| v.clone());
    for q in saved.iter().filter(|q| q.leader && q.unlinked) {
        // SAFETY: unlinking a name we re-created.
        unsafe { libc::mq_unlink(cname(&q.name).as_ptr()) };
    }
}

/// After a checkpoint that was resumed: the copies are not needed.
pub fn forget() {
    SAVED.with(|v| v.iter_mut().for_each(|q| q.msgs = Vec::new()));
}
