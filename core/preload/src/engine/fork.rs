//! fork: a child of a checkpointed process joins the computation as a
//! process of its own before its parent goes on.

use super::start::{join_coordinator, start_ckpt_thread, COORD_ADDRS, ENABLED, IDENT, UNIQ};
use super::{capi, coord, log, memory, plugin, proctree, sigevthread, threads, writer};
use core::cell::Cell;
use core::sync::atomic::{AtomicI32, Ordering::SeqCst};

/// The pid this library was set up for (differs from getpid() in a vfork child).
pub(super) static MY_PID: AtomicI32 = AtomicI32::new(0);

/// How long a checkpoint waits for a child's new program to join.
const NEWCOMER_WAIT_MS: u128 = 10_000;

/// Checkpoint thread, every thread of this process suspended, before it
/// says so: a child that runs a program under checkpoint control (the
/// library is mapped in it) but has not joined the coordinator yet is
/// waited for, until it has joined (it then takes part in this round: no
/// process is reported suspended yet, so the round still takes
/// newcomers) or is gone, at most [`NEWCOMER_WAIT_MS`].
///
/// Such a child comes from vfork/posix_spawn/system/popen and an exec:
/// its parent goes on as soon as the exec is done, and the new program
/// joins a moment later as a process of its own. A round whose processes
/// were all suspended before that would hold the parent but not the
/// child, and a restart would lose the child and its exit status (the
/// parent's `waitpid` would find no such child). Children of `fork` have
/// joined before `fork` returned (see [`parent`]).
pub(super) fn wait_newcomers(host: &str, port: u16) {
    // A real pid: "//" keeps the library's /proc wrappers off. Fields
    // after ")" start at field 3 (state); exit_signal is field 38: 0 for
    // this process's forked image writers, which are no processes of the
    // job; starttime is field 22. None: gone, or exited (a zombie the
    // capture records with its status), or a writer, or one of our tools
    // (they load the library but never join), or a child given up on in
    // an earlier round; else its start time.
    let given_up = GIVEN_UP.lock().map(|g| g.clone()).unwrap_or_default();
    let running_child = |c: i32| {
        let started = proctree::with_stat(c, |st| {
            let gone = matches!(st.field(3), None | Some("Z" | "X" | "x"));
            if gone || st.field(38) == Some("0") {
                return None;
            }
            st.field(22)?.parse::<u64>().ok()
        })?;
        if given_up.contains(&(c, started)) {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc//{c}/exe")).ok()?;
        if exe
            .file_name()
            .is_some_and(|n| super::start::never_joins(&n.to_string_lossy()))
        {
            return None;
        }
        Some(started)
    };
    // Children running a program that maps the library.
    let mut left: Vec<i32> = proctree::children()
        .into_iter()
        .filter(|&c| {
            running_child(c).is_some()
                && std::fs::read_to_string(format!("/proc//{c}/maps"))
                    .is_ok_and(|m| m.contains("libdmtcp.so"))
        })
        .collect();
    if left.is_empty() {
        return;
    }
    let me = dmtcp_common::hostname();
    let start = std::time::Instant::now();
    loop {
        let listed = capi::query_peers(host, port).unwrap_or_default();
        left.retain(|&c| {
            let v = super::vpid::to_virt(c);
            running_child(c).is_some()
                && !listed
                    .iter()
                    .any(|p| (p.pid == c || p.pid == v) && p.hostname == me)
        });
        if left.is_empty() {
            return;
        }
        if start.elapsed().as_millis() >= NEWCOMER_WAIT_MS {
            log::warn(format_args!(
                "children {left:?} run under checkpoint control but did not join the coordinator \
                 within {} s; this checkpoint goes on without them, and later ones do not wait \
                 for them",
                NEWCOMER_WAIT_MS / 1000
            ));
            if let Ok(mut g) = GIVEN_UP.lock() {
                // (Those of them still running: a pid is only the same
                // process with the same start time.)
                g.retain(|&(p, t)| running_child_started(p) == Some(t));
                g.extend(
                    left.iter()
                        .filter_map(|&c| running_child_started(c).map(|t| (c, t))),
                );
            }
            return;
        }
        dmtcp_sys::sleep_ms(5);
    }
}

/// Children a checkpoint waited for in vain (pid, start time): later
/// rounds do not wait for them again. Only the checkpoint thread uses it.
static GIVEN_UP: std::sync::Mutex<Vec<(i32, u64)>> = std::sync::Mutex::new(Vec::new());

/// The start time of process `c` (field 22 of its stat), if it is there.
fn running_child_started(c: i32) -> Option<u64> {
    proctree::with_stat(c, |st| st.field(22)?.parse().ok())
}

/// Is this a vfork child (sharing its parent's memory, not yet exec'd)?
pub(crate) fn in_vfork_child() -> bool {
    let me = MY_PID.load(SeqCst);
    me != 0 && me != dmtcp_sys::getpid()
}

thread_local! {
    /// The fork under way on this thread, if it is under checkpoint
    /// control: the pipe on which the child tells its parent it has joined
    /// (read end, write end). Per thread, as several threads may fork at
    /// once; the child runs on its copy of the forking thread, so it finds
    /// its own pipe here too.
    static FORK_PIPE: Cell<Option<(i32, i32)>> = const { Cell::new(None) };
}

/// How long a parent waits for its child to join the coordinator before it
/// goes on (the child then runs without checkpointing, and says so).
const JOIN_WAIT_MS: i32 = 60_000;

/// Before `fork`: no checkpoint may start until the child has joined (so
/// no image shows the fork without the child), and the library's locks are
/// held so the child inherits its state whole.
pub(super) extern "C" fn prepare() {
    FORK_PIPE.with(|f| f.set(None));
    if !in_vfork_child() {
        // The child gets a copy of this memory: every page a lazy restore
        // has still to fill must be in first.
        super::lazymem::fill_all();
    }
    if ENABLED.load(SeqCst) && !in_vfork_child() {
        let mut p = [0i32; 2];
        // SAFETY: a fresh pipe of our own.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
            capi::dmtcp_disable_ckpt();
            FORK_PIPE.with(|f| f.set(Some((p[0], p[1]))));
        }
    }
    IDENT.fork_prepare();
    UNIQ.fork_prepare();
    memory::EXCLUDED.fork_prepare();
    memory::SKIPPED.fork_prepare();
    coord::LINK.fork_prepare();
    COORD_ADDRS.fork_prepare();
    crate::GLOBAL.0.fork_prepare();
}

pub(super) extern "C" fn parent() {
    crate::GLOBAL.0.fork_parent();
    COORD_ADDRS.fork_parent();
    coord::LINK.fork_parent();
    memory::EXCLUDED.fork_parent();
    memory::SKIPPED.fork_parent();
    UNIQ.fork_parent();
    IDENT.fork_parent();
    if let Some((r, w)) = FORK_PIPE.with(|f| f.take()) {
        // SAFETY: our pipe: wait until the child joined (a byte) or is gone
        // (EOF), or the time is up.
        unsafe {
            libc::close(w);
            let mut pfd = libc::pollfd {
                fd: r,
                events: libc::POLLIN,
                revents: 0,
            };
            let start = std::time::Instant::now();
            loop {
                let left =
                    JOIN_WAIT_MS - start.elapsed().as_millis().min(JOIN_WAIT_MS as u128) as i32;
                let n = libc::poll(&mut pfd, 1, left);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    if n == 0 {
                        log::warn(format_args!(
                            "a forked child did not join the coordinator within {} s; going on",
                            JOIN_WAIT_MS / 1000
                        ));
                    }
                    break;
                }
            }
            libc::close(r);
        }
        capi::dmtcp_enable_ckpt();
    }
    if ENABLED.load(SeqCst) {
        plugin::run_user(plugin::Event::AtforkParent);
    }
}

/// In the child: it has no checkpoint thread, no writers and a copy of its
/// parent's coordinator connection. It joins the computation as a process
/// of its own, then lets the parent go on.
pub(super) extern "C" fn child() {
    sigevthread::after_fork_child();
    proctree::after_fork_child();
    crate::GLOBAL.0.fork_child();
    COORD_ADDRS.fork_child();
    coord::LINK.fork_child();
    memory::EXCLUDED.fork_child();
    memory::SKIPPED.fork_child();
    UNIQ.fork_child();
    IDENT.fork_child();
    let pipe = FORK_PIPE.with(|f| f.take());
    if !ENABLED.swap(false, SeqCst) {
        return;
    }
    MY_PID.store(dmtcp_sys::getpid(), SeqCst);
    threads::reset_after_fork();
    capi::reset_after_fork();
    // The child's copies of the parent's connection and wake-up fd.
    super::fdguard::close_own(coord::COORD_FD);
    super::fdguard::close_own(capi::WAKE_FD_NUM);
    // A forked image writer's link, if a round is about to fork one.
    super::fdguard::close_own(writer::WRITER_FD);
    // The dirty-page tracking's userfaultfd works on the parent's memory.
    super::dirty::forked_child();
    if let Some((r, _)) = pipe {
        // SAFETY: the child's copy of the parent's read end.
        unsafe { libc::close(r) };
    }
    let notify = || {
        if let Some((_, w)) = pipe {
            // SAFETY: one byte to the parent, then our end is closed.
            unsafe {
                libc::write(w, b"j".as_ptr() as *const libc::c_void, 1);
                libc::close(w);
            }
        }
    };
    let Some(ident) = IDENT.with(|i| i.clone()) else {
        notify();
        return;
    };
    let (coord, generation) = match join_coordinator(&ident, None) {
        Ok((c, _, g)) => (c, g),
        Err(m) => {
            notify();
            log::warn(format_args!("forked child runs without checkpointing: {m}"));
            return;
        }
    };
    notify();
    coord::install(coord);
    capi::open_wake_fd();
    super::fdguard::fill_placeholders();
    writer::respawn();
    if start_ckpt_thread(ident, generation) {
        ENABLED.store(true, SeqCst);
        plugin::run_user(plugin::Event::AtforkChild);
    }
}
