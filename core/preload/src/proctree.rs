//! The process's place in the job's tree, recorded at checkpoint time:
//! parent, process group, session, thread ids, and children that exited
//! but were not yet waited for (zombies), with their wait status.
//!
//! Runs on the checkpoint thread while user threads are suspended; it reads
//! /proc and uses `waitid(WNOWAIT)`, which leaves the zombies in place for
//! the program to reap.

use dmtcp_common::image::Tree;

/// Children of every thread of this process (from /proc/self/task/*/children).
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in rd.flatten() {
        let p = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The wait status a zombie child would report, without reaping it.
fn zombie_status(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state != "Z" {
        return None;
    }
    // SAFETY: a zeroed siginfo_t for waitid to fill.
    let mut si: libc::siginfo_t = unsafe { core::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only reads the child's state.
    let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut si, libc::WEXITED | libc::WNOWAIT | libc::WNOHANG) };
    // SAFETY: si_pid/si_status are valid for a SIGCHLD siginfo filled by waitid.
    let (spid, status) = unsafe { (si.si_pid(), si.si_status()) };
    if r != 0 || spid != pid {
        return None;
    }
    Some(match si.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => status | 0x80,
        _ => status & 0x7f,
    })
}

/// Record the tree (`tids`: every thread the restart will re-create).
pub fn capture(tids: Vec<i32>) -> Tree {
    // SAFETY: these calls only read the calling process's ids.
    let (ppid, pgid, sid) = unsafe { (libc::getppid(), libc::getpgid(0), libc::getsid(0)) };
    let zombies = children().into_iter().filter_map(|c| zombie_status(c).map(|s| (c, s))).collect();
    let pipes = crate::procstate::PIPES.with(|p| p.clone());
    let socks = crate::sockets::records();
    let evfds = crate::eventfds::records();
    let files = crate::procstate::FILES.with(|f| f.clone());
    let (ptys, ctty) = crate::procstate::PTYS.with(|p| p.clone());
    Tree { ppid, pgid, sid, tids, zombies, pipes, socks, evfds, files, ptys, ctty }
}
