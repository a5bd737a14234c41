//! Restarting a whole process tree with its original ids.
//!
//! DMTCP hides changed pids behind wrappers and translation tables. We go
//! the way CRIU does instead: `dmtcp_restart` enters a fresh pid namespace
//! (with a user namespace when not run as root), where every pid is free,
//! and re-creates each process with `clone3(set_tid)` at the pid it had.
//! So getpid, getppid, kill, waitpid, /proc/<pid>, si_pid and process
//! groups and sessions are exactly what the program saw, with no wrapper on
//! any of those calls; threads get their tids back the same way (in the
//! restart entry of the library).
//!
//! Layout after `dmtcp_restart a.dmtcp b.dmtcp ...`:
//!
//! ```text
//! dmtcp_restart (outside; waits, forwards signals, exits with the job's status)
//!  └─ init (pid 1 of the namespace: mounts its /proc, reaps orphans)
//!      └─ root process of the job (its original pid; parent outside the job)
//!          ├─ children, re-created by their parent's stub (same pid, same parent)
//!          └─ zombies (exited, not yet waited for): re-created and exited again
//! ```
//!
//! Each stub recreates its session (setsid) or group (setpgid) if it led
//! one, creates its children and zombies, waits until every process of the
//! job exists, joins its process group, then replaces itself with the
//! restorer for its image. If init dies (SIGKILL of dmtcp_restart takes it
//! along), the kernel kills the whole namespace, as a crash kills a job.

use dmtcp_common::image::Image;
use std::collections::{BTreeMap, BTreeSet};

/// Shared anonymous memory of the job: one memfd per shared object (by the
/// inode the images recorded), made before the processes and mapped by
/// each restorer, so what was shared is shared again.
static SHM: std::sync::OnceLock<BTreeMap<u64, i32>> = std::sync::OnceLock::new();

/// The fd holding shared object `shm` (-1: none; the area is mapped fresh).
pub fn shm_fd(shm: u64) -> i32 {
    if shm == 0 {
        return -1;
    }
    SHM.get().and_then(|m| m.get(&shm).copied()).unwrap_or(-1)
}

/// Make the memfds for the shared objects of several images (an object
/// only one image maps needs none), at or above `base`.
fn make_shm(images: &[Image], base: i32) -> Result<BTreeMap<u64, i32>, String> {
    let mut users: BTreeMap<u64, (BTreeSet<i32>, u64)> = BTreeMap::new();
    for img in images {
        for a in img
            .meta
            .areas
            .iter()
            .filter(|a| a.kind == dmtcp_sys::restore::KIND_ANON_SHARED && a.shm != 0)
        {
            let u = users.entry(a.shm).or_default();
            u.0.insert(img.meta.pid);
            u.1 = u.1.max(a.offset + a.len);
        }
    }
    let mut out = BTreeMap::new();
    for (shm, (pids, size)) in users {
        if pids.len() < 2 {
            continue;
        }
        // SAFETY: a new memfd of the object's size, moved above `base`.
        let fd = unsafe {
            let m = libc::memfd_create(c"dmtcp-shared".as_ptr(), libc::MFD_CLOEXEC);
            if m < 0 || libc::ftruncate(m, size as libc::off_t) != 0 {
                return Err(format!(
                    "cannot re-create shared memory of {size} bytes: {}",
                    errno()
                ));
            }
            let n = libc::fcntl(m, libc::F_DUPFD_CLOEXEC, base);
            close(m);
            n
        };
        if fd < 0 {
            return Err(format!("cannot re-create shared memory: {}", errno()));
        }
        out.insert(shm, fd);
    }
    Ok(out)
}

/// Open files shared by processes of the job: one open file description
/// per key (see [`dmtcp_common::image::FileRec`]), opened by
/// `dmtcp_restart` at the saved offset and handed to every sharer.
static FILES: std::sync::OnceLock<BTreeMap<String, i32>> = std::sync::OnceLock::new();

/// The fds of `img` that the restart put in place already (shared files
/// and pty ends): the file plugin keeps them.
pub fn shared_files(img: &Image) -> Vec<i32> {
    let mut out = Vec::new();
    if let Some(m) = FILES.get() {
        out.extend(
            img.meta
                .tree
                .files
                .iter()
                .filter(|f| m.contains_key(&f.key))
                .map(|f| f.fd),
        );
    }
    if let Some(m) = PTYS.get() {
        out.extend(
            img.meta
                .tree
                .ptys
                .iter()
                .filter(|p| m.contains_key(&p.key))
                .map(|p| p.fd),
        );
    }
    out
}

/// Pseudo-terminals of the job (master held in it): key -> (master,
/// slave, foreground group), made by `dmtcp_restart`.
static PTYS: std::sync::OnceLock<BTreeMap<String, (i32, i32, i32)>> = std::sync::OnceLock::new();

/// Make a new pty for each one the images' masters had, with the slave's
/// termios and the window size, at or above `base`.
fn make_ptys(images: &[Image], base: i32) -> Result<BTreeMap<String, (i32, i32, i32)>, String> {
    let recs: Vec<&dmtcp_common::image::PtyRec> = images
        .iter()
        .flat_map(|i| i.meta.tree.ptys.iter())
        .collect();
    let mut out = BTreeMap::new();
    for m in recs.iter().filter(|r| r.master) {
        if out.contains_key(&m.key) {
            continue;
        }
        let up = |fd: i32| {
            // SAFETY: moving our own fd above `base`, close-on-exec.
            let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
            close(fd);
            n
        };
        // SAFETY: opening a new pty pair; ptsname_r writes into our buffer.
        let (master, slave) = unsafe {
            let mf = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if mf < 0 || libc::grantpt(mf) != 0 || libc::unlockpt(mf) != 0 {
                return Err(format!("cannot make a pseudo-terminal: {}", errno()));
            }
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(mf, name.as_mut_ptr(), name.len()) != 0 {
                return Err(format!("cannot make a pseudo-terminal: {}", errno()));
            }
            let sf = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if sf < 0 {
                return Err(format!("cannot open a new pseudo-terminal: {}", errno()));
            }
            (up(mf), up(sf))
        };
        if let Some(s) = recs
            .iter()
            .find(|r| r.key == m.key && r.termios.len() == core::mem::size_of::<libc::termios>())
        {
            // SAFETY: the saved bytes are a termios from tcgetattr on this machine.
            unsafe {
                let mut t: libc::termios = core::mem::zeroed();
                core::ptr::copy_nonoverlapping(
                    s.termios.as_ptr(),
                    &mut t as *mut libc::termios as *mut u8,
                    s.termios.len(),
                );
                libc::tcsetattr(slave, libc::TCSANOW, &t);
            }
        }
        let w = m.winsize;
        let ws = libc::winsize {
            ws_row: w[0],
            ws_col: w[1],
            ws_xpixel: w[2],
            ws_ypixel: w[3],
        };
        // SAFETY: TIOCSWINSZ reads our struct.
        unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
        out.insert(m.key.clone(), (master, slave, m.fg));
    }
    Ok(out)
}

/// Open each file that several images share (same key) once, at or above
/// `base`. A file that cannot be opened is left to each process (which
/// reports it).
fn make_files(images: &[Image], base: i32) -> BTreeMap<String, i32> {
    // Users of each key: (pid, fd) pairs (several fds of one process: dups).
    type Users<'a> = BTreeMap<&'a str, (BTreeSet<(i32, i32)>, &'a dmtcp_common::image::FileRec)>;
    let mut users: Users = BTreeMap::new();
    for img in images {
        for f in &img.meta.tree.files {
            users
                .entry(f.key.as_str())
                .or_insert_with(|| (BTreeSet::new(), f))
                .0
                .insert((img.meta.pid, f.fd));
        }
    }
    let mut out = BTreeMap::new();
    for (key, (fds, f)) in users {
        if fds.len() < 2 {
            continue;
        }
        let Ok(p) = std::ffi::CString::new(f.path.as_bytes()) else {
            continue;
        };
        let flags = f.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) | libc::O_CLOEXEC;
        // SAFETY: open/lseek/fcntl of our own fd; the path is NUL-terminated.
        let fd = unsafe {
            let o = libc::open(p.as_ptr(), flags);
            if o < 0 {
                continue;
            }
            libc::lseek(o, f.offset, libc::SEEK_SET);
            let n = libc::fcntl(o, libc::F_DUPFD_CLOEXEC, base);
            close(o);
            n
        };
        if fd >= 0 {
            out.insert(key.to_string(), fd);
        }
    }
    out
}

/// Root processes (for forwarding signals from init's handler).
static ROOTS: [core::sync::atomic::AtomicI32; 64] =
    [const { core::sync::atomic::AtomicI32::new(0) }; 64];
static INIT: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// Signals a job gets when its `dmtcp_restart` gets them.
const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGCONT,
];

/// Is restart in a pid namespace wanted (DMTCP_RESTART_PIDNS=0 turns it off)?
pub fn wanted() -> bool {
    !std::env::var("DMTCP_RESTART_PIDNS").is_ok_and(|v| !dmtcp_common::env::truthy(&v))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// How the processes of a job are re-created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In a pid namespace of their own, each at the pid it had.
    SamePids,
    /// Without a namespace (unprivileged user namespaces off, no clone3
    /// with set_tid, a /proc that cannot be mounted): the same tree,
    /// sessions and groups, pipes, sockets and shared memory, under new
    /// pids.
    NewPids,
}

/// Can this machine restart in a pid namespace? Tried in a throw-away
/// child: make the namespaces, start an init that mounts /proc and creates
/// a process at a chosen pid with clone3(set_tid). Err says what failed.
pub fn probe() -> Result<(), String> {
    let (r, w) = crate::restart::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: fork of this single-threaded program; the child only probes and exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", errno()));
    }
    if child == 0 {
        close(r);
        let report = |m: &str| {
            // SAFETY: writing our message to the pipe.
            unsafe { libc::write(w, m.as_ptr() as *const libc::c_void, m.len()) };
            exit_now(1)
        };
        if let Err(e) = enter() {
            report(&e);
        }
        let init = clone_with_pid(0);
        if init < 0 {
            report(&format!("cannot start a pid namespace's init: {}", errno()));
        }
        if init == 0 {
            if let Err(e) = mount_proc() {
                report(&e);
            }
            let c = clone_with_pid(7);
            if c == 0 {
                exit_now(0);
            }
            if c < 0 {
                report(&format!("clone3 cannot choose pids here: {}", errno()));
            }
            let mut st = 0;
            // SAFETY: reaping our probe child.
            unsafe { libc::waitpid(c, &mut st, 0) };
            exit_now(0);
        }
        let mut st = 0;
        // SAFETY: waiting for the probe's init.
        unsafe { libc::waitpid(init, &mut st, 0) };
        exit_now(status_code(st));
    }
    close(w);
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading the probe's message into our buffer.
        let n = unsafe { libc::read(r, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n > 0 {
            msg.extend_from_slice(&buf[..n as usize]);
        } else if n == 0 || errno().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    close(r);
    let mut st = 0;
    // SAFETY: reaping the probe.
    unsafe { libc::waitpid(child, &mut st, 0) };
    if status_code(st) == 0 {
        return Ok(());
    }
    let m = String::from_utf8_lossy(&msg).into_owned();
    Err(if m.is_empty() {
        format!(
            "the pid namespace probe failed (status {})",
            status_code(st)
        )
    } else {
        m
    })
}

/// Enter a new pid and mount namespace (and a user namespace mapping our
/// own ids when not root). The next child of this process is its init.
pub fn enter() -> Result<(), String> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare affects only this (single-threaded) process.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(format!("cannot create a pid namespace: {}", errno()));
    }
    if uid != 0 {
        let w = |f: &str, s: String| std::fs::write(f, s).map_err(|e| format!("writing {f}: {e}"));
        w("/proc/self/setgroups", "deny".into())?;
        w("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        w("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    Ok(())
}

/// Create a process with pid `pid` (0: any). Returns like fork.
fn clone_with_pid(pid: i32) -> i32 {
    let want = pid;
    let args = dmtcp_sys::restore::CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid > 0 {
            &want as *const i32 as u64
        } else {
            0
        },
        set_tid_size: (pid > 0) as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the args struct is valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const _,
            core::mem::size_of_val(&args),
        ) as i32
    };
    if r < 0 && pid == 0 {
        // No clone3 (older kernels): any pid will do.
        // SAFETY: fork of this single-threaded program.
        return unsafe { libc::fork() };
    }
    r
}

fn close(fd: i32) {
    // SAFETY: closing an fd this process owns.
    unsafe { libc::close(fd) };
}

fn exit_now(code: i32) -> ! {
    // SAFETY: leave without running atexit handlers (we are a forked copy).
    unsafe { libc::_exit(code) }
}

/// What every process needs to find its place.
struct Plan<'a> {
    images: &'a [Image],
    by_pid: BTreeMap<i32, usize>,
    children: BTreeMap<i32, Vec<usize>>,
    /// created (write end), go (read end)
    created_w: i32,
    go_r: i32,
    /// One pipe per pipe inode of the images: (read end, write end).
    pipes: BTreeMap<u64, (i32, i32)>,
    /// Sockets made for the images, by [`dmtcp_common::sock::key`].
    socks: BTreeMap<String, i32>,
    /// Eventfds made for the images, by [`evfd_key`].
    evfds: BTreeMap<String, i32>,
    mode: Mode,
    /// [`Mode::NewPids`]: each process's new pid, by image index, then
    /// each re-made zombie's (by `zombie_slot`), in memory shared by all of
    /// them (filled before the "created" pipe counts them).
    new_pids: *mut i32,
    zombie_slot: BTreeMap<i32, usize>,
}

/// What this process tells its restored self about pids (NewPids): the
/// job's (old, new) pids, and whether its parent is outside the job.
static PID_MAP: std::sync::OnceLock<(Vec<(i32, i32)>, bool)> = std::sync::OnceLock::new();

/// The pid table and root flag for the restart info (None in a namespace).
pub fn pid_map() -> Option<&'static (Vec<(i32, i32)>, bool)> {
    PID_MAP.get()
}

impl Plan<'_> {
    /// Create a process for pid `pid` of the images (any pid without a
    /// namespace). Returns like fork.
    fn clone_for(&self, pid: i32) -> i32 {
        clone_with_pid(if self.mode == Mode::SamePids { pid } else { 0 })
    }

    /// The pid that process `old` of the images has now.
    fn now(&self, old: i32) -> i32 {
        match (self.mode, self.by_pid.get(&old)) {
            // SAFETY: the shared table has one slot per image; filled by
            // every process before the "go" barrier, read after it.
            (Mode::NewPids, Some(&i)) => unsafe { core::ptr::read_volatile(self.new_pids.add(i)) },
            _ => old,
        }
    }
}

/// Run the job (in the namespace [`enter`] made, for [`Mode::SamePids`]);
/// returns the exit code.
pub fn run(images: &mut [Image], restore: &dyn Fn(&Image) -> String, mode: Mode) -> i32 {
    let by_pid: BTreeMap<i32, usize> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (img.meta.pid, i))
        .collect();
    if by_pid.len() != images.len() {
        dmtcp_common::log_error!("two images have the same pid: they are not of one computation");
        return 1;
    }
    let mut children: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let pp = img.meta.tree.ppid;
        if pp != img.meta.pid && by_pid.contains_key(&pp) {
            children.entry(pp).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let mut max_id = 1;
    for img in images.iter() {
        max_id = max_id.max(img.meta.pid);
        max_id = img
            .meta
            .tree
            .tids
            .iter()
            .chain(img.meta.tree.zombies.iter().map(|z| &z.0))
            .fold(max_id, |m, &t| m.max(t));
    }
    // Our own fds go above every number the program had for a pipe.
    let base = pipe_fd_base(images);
    for img in images.iter_mut() {
        if let Err(e) = img.move_fd_above(base) {
            return fail(&format!("{}: {e}", img.path.display()));
        }
    }
    let images: &[Image] = images;
    let pipes = match make_pipes(images, base + images.len() as i32) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let socks = make_socks(images, base + images.len() as i32);
    let evfds = match make_evfds(images, base + images.len() as i32) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let shm = match make_shm(images, base + images.len() as i32) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let shm_fds: Vec<i32> = shm.values().copied().collect();
    let _ = SHM.set(shm);
    let files = make_files(images, base + images.len() as i32);
    let mut file_fds: Vec<i32> = files.values().copied().collect();
    let _ = FILES.set(files);
    let ptys = match make_ptys(images, base + images.len() as i32) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    file_fds.extend(ptys.values().flat_map(|&(m, s, _)| [m, s]));
    let _ = PTYS.set(ptys);
    let (created_r, created_w) = match crate::restart::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    let (go_r, go_w) = match crate::restart::pipe() {
        Ok(p) => p,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    // The processes' new pids, shared between them (NewPids).
    let mut zombie_slot = BTreeMap::new();
    for img in images.iter() {
        for &(z, _) in &img.meta.tree.zombies {
            let n = images.len() + zombie_slot.len();
            zombie_slot.entry(z).or_insert(n);
        }
    }
    let slots = images.len() + zombie_slot.len();
    // SAFETY: a fresh shared anonymous mapping, one i32 per slot.
    let new_pids = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            (slots * 4).max(4),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if new_pids == libc::MAP_FAILED {
        return fail(&format!("mmap: {}", errno()));
    }
    // SAFETY: getpid has no preconditions.
    let outer = unsafe { libc::getpid() };
    let init = clone_with_pid(0);
    if init < 0 {
        return fail(&format!("cannot start the job's init: {}", errno()));
    }
    if init > 0 {
        for fd in [created_r, created_w, go_r, go_w]
            .into_iter()
            .chain(pipes.values().flat_map(|&(r, w)| [r, w]))
            .chain(socks.values().copied())
            .chain(evfds.values().copied())
            .chain(shm_fds.iter().copied())
            .chain(file_fds.iter().copied())
        {
            close(fd);
        }
        return outside(init);
    }
    // Init: pid 1 of the new namespace, or (NewPids) the job's reaper.
    REAPER.store(
        std::process::id() as i32,
        core::sync::atomic::Ordering::SeqCst,
    );
    // SIGPWR from a page server that found an image damaged (`stop_job`):
    // kill the job and end (a handler, so that it reaches pid 1 of a
    // namespace from inside it).
    // SAFETY: an async-signal-safe handler that sets a flag; without
    // SA_RESTART, so that init's wait returns to look at it.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGPWR, &sa, core::ptr::null_mut());
    }
    if mode == Mode::SamePids {
        // SAFETY: die with dmtcp_restart (which takes the whole namespace along).
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    } else {
        // Without a namespace nothing takes the job along: when
        // dmtcp_restart dies, init kills every process of the job itself
        // (SIGPWR, whose handler is set above).
        // SAFETY: prctl and getppid on this process.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGPWR);
            // It may have died before the death signal was set.
            if libc::getppid() != outer {
                STOP_JOB.store(true, core::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    if mode == Mode::SamePids {
        if let Err(e) = mount_proc() {
            // The probe mounted one: this should not happen. A /proc of the
            // outer namespace would make checkpoints signal the wrong threads.
            dmtcp_common::log_error!("{e}; restart with DMTCP_RESTART_PIDNS=0");
            exit_now(1);
        }
        // Processes created without a chosen pid (the image streamers) get ids
        // above every id the job needs.
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", max_id.to_string());
    } else {
        // Orphans of the job come to init, as in a namespace.
        // SAFETY: prctl on ourselves.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    }
    let plan = Plan {
        images,
        by_pid,
        children,
        created_w,
        go_r,
        pipes,
        socks,
        evfds,
        mode,
        new_pids: new_pids as *mut i32,
        zombie_slot,
    };
    let mut root_pids = Vec::new();
    for &r in &roots {
        let pid = images[r].meta.pid;
        let c = plan.clone_for(pid);
        if c == 0 {
            close(created_r);
            close(go_w);
            stub(&plan, r, restore);
        }
        if c < 0 {
            dmtcp_common::log_error!("cannot re-create process {pid}: {}", errno());
            exit_now(1);
        }
        if let Some(slot) = ROOTS.get(root_pids.len()) {
            slot.store(c, core::sync::atomic::Ordering::SeqCst);
        }
        root_pids.push(c);
    }
    close(created_w);
    close(go_r);
    // Every process (and only those) writes one byte once it exists.
    let mut got = 0;
    let mut buf = [0u8; 64];
    while got < images.len() {
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(created_r, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 && errno().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    close(created_r);
    close(go_w);
    // Only the processes hold the pipes now (a reader must see EOF when
    // its writers are gone).
    for &(r, w) in plan.pipes.values() {
        close(r);
        close(w);
    }
    for &s in plan.socks.values().chain(plan.evfds.values()) {
        close(s);
    }
    let shared = SHM
        .get()
        .into_iter()
        .flat_map(|m| m.values())
        .chain(FILES.get().into_iter().flat_map(|m| m.values()));
    for &s in shared {
        close(s);
    }
    for &(m, s, _) in PTYS.get().into_iter().flat_map(|p| p.values()) {
        close(m);
        close(s);
    }
    if got < images.len() {
        dmtcp_common::log_error!(
            "only {got} of {} processes could be re-created",
            images.len()
        );
    }
    forward_signals(init_forward);
    reap(&root_pids)
}

fn fail(m: &str) -> i32 {
    dmtcp_common::log_error!("{m}");
    1
}

/// Make our mounts private and mount a /proc that shows this namespace.
fn mount_proc() -> Result<(), String> {
    // SAFETY: mount(2) with valid NUL-terminated strings or nulls.
    unsafe {
        if libc::mount(
            core::ptr::null(),
            c"/".as_ptr(),
            core::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            core::ptr::null(),
        ) != 0
        {
            return Err(format!("cannot make mounts private: {}", errno()));
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            core::ptr::null(),
        ) != 0
        {
            return Err(format!("cannot mount /proc: {}", errno()));
        }
    }
    Ok(())
}

/// One process of the job, before it becomes its image.
fn stub(plan: &Plan, idx: usize, restore: &dyn Fn(&Image) -> String) -> ! {
    let img = &plan.images[idx];
    let t = &img.meta.tree;
    let pid = img.meta.pid;
    // SAFETY: our slot of the shared table (NewPids), written before we count as created.
    unsafe { core::ptr::write_volatile(plan.new_pids.add(idx), libc::getpid()) };
    for s in FORWARDED {
        // SAFETY: the default disposition for forwarded signals (init's handler is not ours).
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
    // SAFETY: session and group calls on ourselves.
    unsafe {
        if t.sid == pid {
            if libc::setsid() < 0 {
                dmtcp_common::log_error!("process {pid}: setsid: {}", errno());
            }
            // Its controlling terminal, if it is a pty of the job.
            if let Some(&(_, slave, _)) = t
                .ctty
                .as_ref()
                .and_then(|k| PTYS.get().and_then(|p| p.get(k)))
            {
                if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                    dmtcp_common::log_error!(
                        "process {pid}: cannot get its terminal back: {}",
                        errno()
                    );
                }
            }
        } else if t.pgid == pid && libc::setpgid(0, 0) != 0 {
            dmtcp_common::log_error!("process {pid}: setpgid: {}", errno());
        }
    }
    for &c in plan.children.get(&pid).map(|v| v.as_slice()).unwrap_or(&[]) {
        let cpid = plan.images[c].meta.pid;
        let r = plan.clone_for(cpid);
        if r == 0 {
            stub(plan, c, restore);
        }
        if r < 0 {
            dmtcp_common::log_error!("cannot re-create process {cpid}: {}", errno());
        }
    }
    for &(zpid, status) in &t.zombies {
        if plan.by_pid.contains_key(&zpid) {
            continue;
        }
        let r = plan.clone_for(zpid);
        if r == 0 {
            die_like(status);
        }
        if let (Some(&slot), true) = (plan.zombie_slot.get(&zpid), r > 0) {
            // SAFETY: this zombie's slot of the shared table.
            unsafe { core::ptr::write_volatile(plan.new_pids.add(slot), r) };
        }
        if r < 0 {
            dmtcp_common::log_error!("cannot re-create exited child {zpid}: {}", errno());
        }
    }
    // SAFETY: one byte on our pipe, then wait for everyone (EOF on go).
    unsafe {
        libc::write(plan.created_w, b"x".as_ptr() as *const libc::c_void, 1);
        close(plan.created_w);
        let mut b = 0u8;
        while libc::read(plan.go_r, &mut b as *mut u8 as *mut libc::c_void, 1) != 0
            && *libc::__errno_location() == libc::EINTR
        {}
        close(plan.go_r);
    }
    if plan.mode == Mode::NewPids {
        let mut pairs: Vec<(i32, i32)> = plan
            .images
            .iter()
            .map(|i| (i.meta.pid, plan.now(i.meta.pid)))
            .collect();
        for (&z, &slot) in &plan.zombie_slot {
            // SAFETY: slots are filled before the "go" barrier we passed.
            pairs.push((z, unsafe {
                core::ptr::read_volatile(plan.new_pids.add(slot))
            }));
        }
        let root = !plan.by_pid.contains_key(&t.ppid) || t.ppid == pid;
        let _ = PID_MAP.set((pairs, root));
    }
    // Join a group led by another process of the job (it exists by now).
    // SAFETY: setpgid on ourselves.
    unsafe {
        let pgid = plan.now(t.pgid);
        if t.pgid != pid
            && plan.by_pid.contains_key(&t.pgid)
            && libc::getpgrp() != pgid
            && libc::setpgid(0, pgid) != 0
        {
            dmtcp_common::log_error!(
                "process {pid}: cannot join process group {}: {}",
                t.pgid,
                errno()
            );
        }
    }
    // Pipe ends at the numbers the program had them (the restorer inherits
    // them; the originals are close-on-exec).
    for &(fd, ino, write) in &t.pipes {
        if let Some(&(r, w)) = plan.pipes.get(&ino) {
            // SAFETY: dup2 onto a number the program used for this pipe.
            if unsafe { libc::dup2(if write { w } else { r }, fd) } < 0 {
                dmtcp_common::log_error!(
                    "process {pid}: cannot put a pipe at fd {fd}: {}",
                    errno()
                );
            }
        }
    }
    // The session leader gives its terminal's foreground back to the group
    // that had it (all groups exist now); SIGTTOU would stop a background
    // leader, so it is blocked meanwhile (the restorer sets the real mask).
    if let Some(&(_, slave, fg)) = t
        .ctty
        .as_ref()
        .and_then(|k| PTYS.get().and_then(|p| p.get(k)))
    {
        let fg = plan.now(fg);
        if t.sid == pid && fg > 0 {
            // SAFETY: blocking a signal and setting the terminal's foreground group.
            unsafe {
                let mut set: libc::sigset_t = core::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTTOU);
                libc::sigprocmask(libc::SIG_BLOCK, &set, core::ptr::null_mut());
                if libc::ioctl(slave, libc::TIOCSPGRP, &fg) != 0 {
                    dmtcp_common::log_error!(
                        "process {pid}: cannot set the terminal's foreground group {fg}: {}",
                        errno()
                    );
                }
            }
        }
    }
    for p in &t.ptys {
        if let Some(&(m, s, _)) = PTYS.get().and_then(|x| x.get(&p.key)) {
            // SAFETY: dup2 onto a number the program used for this pty end.
            if unsafe { libc::dup2(if p.master { m } else { s }, p.fd) } < 0 {
                dmtcp_common::log_error!(
                    "process {pid}: cannot put a pty at fd {}: {}",
                    p.fd,
                    errno()
                );
            }
        }
    }
    // Shared files, eventfds and sockets likewise.
    let files = FILES.get();
    for f in &t.files {
        if let Some(&o) = files.and_then(|m| m.get(&f.key)) {
            // SAFETY: dup2 onto a number the program used for this file.
            if unsafe { libc::dup2(o, f.fd) } < 0 {
                dmtcp_common::log_error!(
                    "process {pid}: cannot put a file at fd {}: {}",
                    f.fd,
                    errno()
                );
            }
        }
    }
    for r in &t.evfds {
        if let Some(&e) = plan.evfds.get(&evfd_key(pid, r)) {
            // SAFETY: dup2 onto a number the program used for this eventfd.
            if unsafe { libc::dup2(e, r.fd) } < 0 {
                dmtcp_common::log_error!(
                    "process {pid}: cannot put an eventfd at fd {}: {}",
                    r.fd,
                    errno()
                );
            }
        }
    }
    for r in t
        .socks
        .iter()
        .filter(|r| dmtcp_common::sock::made_by_restart(r))
    {
        if let Some(&s) = plan.socks.get(&dmtcp_common::sock::key(r)) {
            // SAFETY: dup2 onto a number the program used for this socket.
            if unsafe { libc::dup2(s, r.fd) } < 0 {
                dmtcp_common::log_error!(
                    "process {pid}: cannot put a socket at fd {}: {}",
                    r.fd,
                    errno()
                );
            }
        }
    }
    // The restorer maps shared memory from these.
    for &s in SHM.get().into_iter().flat_map(|m| m.values()) {
        // SAFETY: clearing close-on-exec on our own fd.
        unsafe { libc::fcntl(s, libc::F_SETFD, 0) };
    }
    let e = restore(img);
    dmtcp_common::log_error!("{e}");
    exit_now(1)
}

/// Without a pid namespace, one image restored into this process: make
/// its sockets (the connections within it, its listeners) and put them at
/// their numbers. Pipes and connections to other processes cannot be made.
pub fn socks_for_single(img: &mut Image) -> Result<(), String> {
    let base = pipe_fd_base(std::slice::from_ref(img));
    img.move_fd_above(base)
        .map_err(|e| format!("{}: {e}", img.path.display()))?;
    let made = make_socks(std::slice::from_ref(img), base + 1);
    let evfds = make_evfds(std::slice::from_ref(img), base + 1)?;
    for r in &img.meta.tree.evfds {
        if let Some(&e) = evfds.get(&evfd_key(img.meta.pid, r)) {
            // SAFETY: dup2 onto a number the program used for this eventfd.
            unsafe { libc::dup2(e, r.fd) };
        }
    }
    for &e in evfds.values() {
        close(e);
    }
    for r in img
        .meta
        .tree
        .socks
        .iter()
        .filter(|r| dmtcp_common::sock::made_by_restart(r))
    {
        if let Some(&s) = made.get(&dmtcp_common::sock::key(r)) {
            // SAFETY: dup2 onto a number the program used for this socket.
            unsafe { libc::dup2(s, r.fd) };
        }
    }
    for &s in made.values() {
        close(s);
    }
    Ok(())
}

/// First fd number above every number the images use for pipes, sockets
/// and eventfds.
fn pipe_fd_base(images: &[Image]) -> i32 {
    let pipes = images
        .iter()
        .flat_map(|i| i.meta.tree.pipes.iter().map(|p| p.0 + 1));
    let socks = images
        .iter()
        .flat_map(|i| i.meta.tree.socks.iter().map(|s| s.fd + 1));
    let evfds = images
        .iter()
        .flat_map(|i| i.meta.tree.evfds.iter().map(|s| s.fd + 1));
    let files = images
        .iter()
        .flat_map(|i| i.meta.tree.files.iter().map(|s| s.fd + 1));
    let ptys = images
        .iter()
        .flat_map(|i| i.meta.tree.ptys.iter().map(|s| s.fd + 1));
    pipes
        .chain(socks)
        .chain(evfds)
        .chain(files)
        .chain(ptys)
        .max()
        .unwrap_or(0)
        .max(100)
}

/// One eventfd per kernel eventfd id (per process and fd if the kernel
/// showed no id).
fn evfd_key(pid: i32, r: &dmtcp_common::image::EvfdRec) -> String {
    if r.id >= 0 {
        format!("id:{}", r.id)
    } else {
        format!("fd:{pid}:{}", r.fd)
    }
}

/// Make the job's eventfds with their counters, at or above `base`.
fn make_evfds(images: &[Image], base: i32) -> Result<BTreeMap<String, i32>, String> {
    let mut out = BTreeMap::new();
    for img in images {
        for r in &img.meta.tree.evfds {
            let k = evfd_key(img.meta.pid, r);
            if out.contains_key(&k) {
                continue;
            }
            let flags = libc::EFD_CLOEXEC | if r.semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // SAFETY: a new eventfd, moved above `base`; its counter set by a write.
            let fd = unsafe {
                let e = libc::eventfd(0, flags);
                if e < 0 {
                    return Err(format!("cannot re-create an eventfd: {}", errno()));
                }
                let n = libc::fcntl(e, libc::F_DUPFD_CLOEXEC, base);
                close(e);
                if n < 0 {
                    return Err(format!("cannot re-create an eventfd: {}", errno()));
                }
                if r.count > 0 {
                    libc::write(n, &r.count as *const u64 as *const libc::c_void, 8);
                }
                n
            };
            out.insert(k, fd);
        }
    }
    Ok(out)
}

/// The coordinator `dmtcp_restart` uses (for connections re-made with
/// processes another `dmtcp_restart` restores).
pub static COORD: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();

/// Make the job's sockets (see [`dmtcp_common::sock`]), at or above `base`.
/// A socket that cannot be made is reported; its process finds the fd
/// closed and says so.
fn make_socks(images: &[Image], base: i32) -> BTreeMap<String, i32> {
    use dmtcp_common::image::SockState;
    use dmtcp_common::sock;
    let mut warn = |m: String| dmtcp_common::log_warn!("warning: {m}");
    let all: Vec<&dmtcp_common::image::SockRec> = images
        .iter()
        .flat_map(|i| i.meta.tree.socks.iter())
        .filter(|r| sock::made_by_restart(r))
        .collect();
    let mut out: BTreeMap<String, i32> = BTreeMap::new();
    let up = |fd: i32| {
        // SAFETY: moving our own fd above `base`, close-on-exec.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
        close(fd);
        n
    };
    let mut singles = Vec::new();
    let mut across = Vec::new();
    for r in &all {
        let k = sock::key(r);
        if out.contains_key(&k) {
            continue;
        }
        if r.state == SockState::Pair {
            let other = all
                .iter()
                .any(|o| o.state == SockState::Pair && o.pair == r.pair && o.side != r.side);
            if !other && (r.stype == libc::SOCK_STREAM || r.stype == libc::SOCK_SEQPACKET) {
                // Its other end is restored by another dmtcp_restart.
                if !across
                    .iter()
                    .any(|a: &&dmtcp_common::image::SockRec| a.pair == r.pair)
                {
                    across.push(*r);
                }
                continue;
            }
            if other {
                match sock::pair(r) {
                    Ok((a, b)) => {
                        let (a, b) = (up(a), up(b));
                        let mut r0 = (*r).clone();
                        r0.side = 0;
                        out.insert(sock::key(&r0), a);
                        r0.side = 1;
                        out.insert(sock::key(&r0), b);
                    }
                    Err(e) => warn(format!(
                        "cannot re-create a connection of the job ({}): {e}",
                        r.pair
                    )),
                }
                continue;
            }
        }
        match sock::single(r, &mut warn) {
            Ok(fd) => {
                let fd = up(fd);
                out.insert(k, fd);
                singles.push((fd, *r));
            }
            Err(e) => warn(format!("cannot re-create socket fd {}: {e}", r.fd)),
        }
    }
    if !across.is_empty() {
        let coord = COORD
            .get()
            .map(|(h, p)| (h.as_str(), *p))
            .unwrap_or(("localhost", dmtcp_common::env::DEFAULT_PORT));
        let mut made = crate::rejoin::connect_across(&across, coord, &mut warn);
        for r in across {
            let fd = match made.remove(&r.pair) {
                Some(fd) => fd,
                // Not re-made: the program finds the connection closed.
                None => match sock::pair(r) {
                    Ok((a, b)) => {
                        close(b);
                        a
                    }
                    Err(_) => continue,
                },
            };
            out.insert(sock::key(r), up(fd));
        }
    }
    for (fd, r) in singles {
        sock::reconnect(fd, r, &mut warn);
    }
    sock::refill_dgrams(&all, &out, &mut warn);
    out
}

/// Create one pipe per pipe inode found in the images, at or above `base`
/// (so placing ends at the program's numbers never hits another). A pipe
/// that led outside the job (no image has its other end) and was only at
/// fds 0-2 is not made: those fds keep what dmtcp_restart has there, as a
/// terminal does (a task's output pipe to SLURM's slurmstepd becomes the
/// new step's).
fn make_pipes(images: &[Image], base: i32) -> Result<BTreeMap<u64, (i32, i32)>, String> {
    let all: Vec<(i32, u64, bool)> = images
        .iter()
        .flat_map(|i| i.meta.tree.pipes.iter().copied())
        .collect();
    let mut out = BTreeMap::new();
    for &(_, ino, _) in &all {
        if out.contains_key(&ino) || outside_stdio_pipe(&all, ino) {
            continue;
        }
        let (r, w) = crate::restart::pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: moving our own fds above `base`, close-on-exec.
        let (r2, w2) = unsafe {
            (
                libc::fcntl(r, libc::F_DUPFD_CLOEXEC, base),
                libc::fcntl(w, libc::F_DUPFD_CLOEXEC, base),
            )
        };
        close(r);
        close(w);
        if r2 < 0 || w2 < 0 {
            return Err(format!("cannot re-create the job's pipes: {}", errno()));
        }
        // SAFETY: a bigger buffer, so drained bytes always fit back (best effort).
        unsafe { libc::fcntl(w2, libc::F_SETPIPE_SZ, 1 << 20) };
        out.insert(ino, (r2, w2));
    }
    Ok(out)
}

/// Whether pipe `ino` has only one end in `all` (fd, inode, write end)
/// and is used at fds 0-2 only.
fn outside_stdio_pipe(all: &[(i32, u64, bool)], ino: u64) -> bool {
    let uses = || all.iter().filter(|p| p.1 == ino);
    let reads = uses().any(|p| !p.2);
    let writes = uses().any(|p| p.2);
    reads != writes && uses().all(|p| (0..=2).contains(&p.0))
}

/// End this process the way a zombie child had ended (exit code or signal).
fn die_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: no core file, default action, unblocked: then the signal.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    exit_now(libc::WEXITSTATUS(status))
}

extern "C" fn init_forward(sig: i32) {
    for r in &ROOTS {
        let p = r.load(core::sync::atomic::Ordering::SeqCst);
        if p > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(p, sig) };
        }
    }
}

extern "C" fn outer_forward(sig: i32) {
    let p = INIT.load(core::sync::atomic::Ordering::SeqCst);
    if p > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(p, sig) };
    }
}

fn forward_signals(h: extern "C" fn(i32)) {
    for s in FORWARDED {
        // SAFETY: installing an async-signal-safe handler.
        unsafe { libc::signal(s, h as libc::sighandler_t) };
    }
}

/// Set when dmtcp_restart died (NewPids: init must take the job along), or
/// when a page server asked init to stop the job ([`stop_job`]).
static STOP_JOB: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The job's init (its pid as the job's processes see it), in the
/// processes of a restart it started; 0 elsewhere.
static REAPER: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// From a process of the job (a page server): have init kill every process
/// of the restart on this host, those that have not joined the coordinator
/// yet and those it still starts included, and end with status 137.
/// False if this process was not started by a restart's init.
pub fn stop_job() -> bool {
    let init = REAPER.load(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: signalling the job's init, alive as long as any process of
    // the job (this one included: init is its subreaper).
    init > 0 && unsafe { libc::kill(init, libc::SIGPWR) } == 0
}

extern "C" fn on_stop(_sig: i32) {
    STOP_JOB.store(true, core::sync::atomic::Ordering::SeqCst);
}

/// SIGKILL every descendant of this process (init is their subreaper, so
/// orphans of the job are among them), until none is left running.
fn kill_descendants() {
    loop {
        let mut found = Vec::new();
        let mut todo = vec![std::process::id() as i32];
        while let Some(p) = todo.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in kids
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok())
                {
                    found.push(c);
                    todo.push(c);
                }
            }
        }
        if found.is_empty() {
            return;
        }
        for &c in &found {
            // SAFETY: killing a process of the job (a descendant of ours).
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
        // Reap what died, so the next walk sees only what is left.
        // SAFETY: non-blocking waits for our own children.
        while unsafe { libc::waitpid(-1, core::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Init: reap everything; the job's status is the first failure of a root.
fn reap(roots: &[i32]) -> ! {
    let mut code = 0;
    let roots: BTreeSet<i32> = roots.iter().copied().collect();
    loop {
        if STOP_JOB.load(core::sync::atomic::Ordering::SeqCst) {
            kill_descendants();
            exit_now(137);
        }
        let mut st = 0;
        // SAFETY: waiting for any child.
        let p = unsafe { libc::waitpid(-1, &mut st, 0) };
        if p < 0 {
            if errno().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if roots.contains(&p) && code == 0 {
            code = status_code(st);
        }
    }
    exit_now(code)
}

fn status_code(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    }
}

/// Outside the namespace: wait for init and pass its status on.
fn outside(init: i32) -> i32 {
    INIT.store(init, core::sync::atomic::Ordering::SeqCst);
    forward_signals(outer_forward);
    loop {
        let mut st = 0;
        // SAFETY: waiting for our child.
        let p = unsafe { libc::waitpid(init, &mut st, 0) };
        if p == init {
            return status_code(st);
        }
        if errno().kind() != std::io::ErrorKind::Interrupted {
            return 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::outside_stdio_pipe;

    #[test]
    fn stdio_pipes_to_outside_are_left_to_dmtcp_restart() {
        // fd 1 of one process and fd 2 of another write into pipe 7, which
        // nobody in the job reads: it led outside.
        let all = [
            (1, 7, true),
            (2, 7, true),
            (0, 8, false),
            (5, 8, true),
            (4, 9, true),
            (1, 10, false),
        ];
        assert!(outside_stdio_pipe(&all, 7));
        // Both ends in the job.
        assert!(!outside_stdio_pipe(&all, 8));
        // Outside, but at fd 4: made as before.
        assert!(!outside_stdio_pipe(&all, 9));
        // A read end at fd 1 (stdin-like use of another number is still stdio).
        assert!(outside_stdio_pipe(&all, 10));
    }
}
