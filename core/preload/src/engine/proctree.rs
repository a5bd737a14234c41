//! The process's place in the job's tree, recorded at checkpoint time:
//! parent, process group, session, thread ids, and children that exited
//! but were not yet waited for (zombies), with their wait status.
//!
//! Runs on the checkpoint thread while user threads are suspended; it reads
//! /proc and uses `waitid(WNOWAIT)`, which leaves the zombies in place for
//! the program to reap.

use core::sync::atomic::{AtomicI32, Ordering::SeqCst};
use dmtcp_common::image::Tree;

/// Children of every thread of this process (from /proc/self/task/*/children).
pub(super) fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
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

/// The fields of one /proc/PID/stat from the state on.
pub(super) struct Stat<'a>(Vec<&'a str>);

impl<'a> Stat<'a> {
    /// Field `n` as `proc(5)` numbers them (3: the state; 1 and 2, the
    /// pid and name, are not kept).
    pub(super) fn field(&self, n: usize) -> Option<&'a str> {
        n.checked_sub(3).and_then(|i| self.0.get(i).copied())
    }
}

/// What `f` makes of the stat of process `pid`, if it is there.
pub(super) fn with_stat<T>(pid: i32, f: impl FnOnce(Stat<'_>) -> Option<T>) -> Option<T> {
    // A real pid: the double slash keeps the library's own /proc path
    // wrappers (procpath) from reading it as one the program knows.
    let stat = std::fs::read_to_string(format!("/proc//{pid}/stat")).ok()?;
    f(Stat(stat.rsplit_once(')')?.1.split_whitespace().collect()))
}

/// The wait status a zombie child would report, without reaping it.
fn zombie_status(pid: i32) -> Option<i32> {
    with_stat(pid, |st| (st.field(3)? == "Z").then_some(()))?;
    // SAFETY: a zeroed siginfo_t for waitid to fill.
    let mut si: libc::siginfo_t = unsafe { core::mem::zeroed() };
    // The raw call, not the library's own waitid wrapper (which would
    // translate the pid for the program).
    // SAFETY: waitid with WNOWAIT only reads the child's state; null rusage.
    let r = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PID,
            pid as libc::id_t,
            &mut si as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            0usize,
        )
    } as i32;
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

/// The parent the program saw at the last checkpoint.
static SAVED_PPID: AtomicI32 = AtomicI32::new(0);
/// After a restart as a root of the job (its parent was outside the job,
/// and is the namespace's init now): the parent it had before.
static ROOT_PPID: AtomicI32 = AtomicI32::new(0);

fn real_getppid() -> i32 {
    // SAFETY: getppid has no arguments.
    unsafe { dmtcp_sys::syscall3(dmtcp_sys::nr::GETPPID, 0, 0, 0) as i32 }
}

/// After a restart: a root process (parent outside the job, now the pid
/// namespace's init) keeps showing the parent it had, as under DMTCP
/// (where the restarted root's parent is dmtcp_restart).
pub fn after_restart() {
    let saved = SAVED_PPID.load(SeqCst);
    // The parent is the namespace's init, or (without a namespace) the
    // stand-in init of dmtcp_restart: no process of the job.
    let real = real_getppid();
    let outside = real == 1 || ROOT_CANDIDATE.load(SeqCst);
    ROOT_PPID.store(if outside && saved > 1 { saved } else { 0 }, SeqCst);
}

/// Set at a restart without a pid namespace when this process's parent is
/// not a process of the job (the restart info says so).
pub static ROOT_CANDIDATE: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// In a forked child: its parent is in the job.
pub fn after_fork_child() {
    ROOT_PPID.store(0, SeqCst);
}

/// `getppid(2)`, with the parent a restarted root had before.
#[no_mangle]
pub extern "C" fn getppid() -> libc::pid_t {
    let real = real_getppid();
    match ROOT_PPID.load(SeqCst) {
        v if v > 0 && (real == 1 || ROOT_CANDIDATE.load(SeqCst)) => v,
        _ => super::vpid::to_virt(real),
    }
}

/// Record the tree (`tids`: every thread the restart will re-create).
pub fn capture(tids: Vec<i32>) -> Tree {
    let ppid = getppid();
    SAVED_PPID.store(ppid, SeqCst);
    // SAFETY: these calls only read the calling process's ids.
    let (pgid, sid) = unsafe { (libc::getpgid(0), libc::getsid(0)) };
    // Pids as the program sees them (getpgid and getsid are our wrappers).
    let zombies = children()
        .into_iter()
        .filter_map(|c| zombie_status(c).map(|s| (super::vpid::to_virt(c), s)))
        .collect();
    let mut tree = Tree {
        ppid,
        pgid,
        sid,
        tids,
        zombies,
        ..Default::default()
    };
    // Pipes, sockets, event fds, shared files and ptys: the plugins' records.
    super::plugin::records(&mut tree);
    tree
}
