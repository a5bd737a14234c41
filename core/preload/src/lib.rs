//! `libdmtcp.so`, the library `dmtcp_launch` preloads into every process of
//! a job.
//!
//! At load time it reserves the restorer window, connects to the
//! coordinator, installs the checkpoint signal handler, starts its writer
//! threads and its checkpoint thread. The checkpoint thread waits for the
//! coordinator; on a checkpoint request it suspends the user threads, runs
//! the plugins, writes the image with the writers, and resumes. After a
//! restart the same checkpoint thread wakes up inside the restored process
//! (see [`dmtcp_restart_entry`]) and brings the process back.
//!
//! Unsafe code lives in `arch` (assembly), `threads` (signal handler and
//! raw thread state), `writer` (raw memory reads), `procstate` and the
//! restart entry below; each block says why it is sound.

mod alloc;
mod api;
mod arch;
mod coord;
mod eventfds;
mod flock;
mod log;
mod memory;
mod plugin;
mod posixmq;
mod procstate;
mod proctree;
mod restartable;
mod ptys;
mod sigevthread;
mod sigwrap;
mod sockets;
mod sysv;
mod sysvshm;
mod threads;
mod timers;
mod writer;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering::*};
use dmtcp_common::env as E;
use dmtcp_common::image::Meta;
use dmtcp_common::proto::{FromCoord, Role, ToCoord};
use dmtcp_sys::restore::{RestartArgs, RESTART_BRK_SET};
use dmtcp_sys::{nr, syscall3, syscall6};
use std::io::Read;
use std::os::fd::IntoRawFd;
use std::path::PathBuf;

/// The library's own allocator: its state is never touched by user threads,
/// so the checkpoint thread may allocate while they are suspended.
#[global_allocator]
static GLOBAL: alloc::Heap = alloc::Heap::new();

// Not in the library's own unit-test binary, which has no coordinator.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = dmtcp_init;

/// Set once the library is active in this process.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Set once the library started up in this program (stays set in forked
/// children, which are not checkpointed but still get plugin events).
static LOADED: AtomicBool = AtomicBool::new(false);
/// The pid the process had when it was checkpointed (finds the main thread).
static OLD_PID: AtomicI32 = AtomicI32::new(0);
static RESTART_INFO_FD: AtomicI32 = AtomicI32::new(-1);
static RESTART_FLAGS: AtomicU32 = AtomicU32::new(0);

const RESTART_STACK_SIZE: usize = 256 << 10;
#[repr(C, align(64))]
struct EntryStack(UnsafeCell<[u8; RESTART_STACK_SIZE]>);
// SAFETY: used only by the single thread running the restart entry.
unsafe impl Sync for EntryStack {}
static ENTRY_STACK: EntryStack = EntryStack(UnsafeCell::new([0; RESTART_STACK_SIZE]));

/// Is the checkpointer active in this process?
pub(crate) fn is_enabled() -> bool {
    ENABLED.load(SeqCst)
}

/// Settings read from the environment dmtcp_launch prepared.
#[derive(Clone)]
struct Config {
    host: String,
    port: u16,
    ckpt_dir: PathBuf,
    gzip: bool,
    signal: i32,
    writers: usize,
    disabled: Vec<String>,
}

impl Config {
    fn from_env() -> Config {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Config {
            host: get(E::COORD_HOST).unwrap_or_else(|| "localhost".into()),
            port: get(E::COORD_PORT).and_then(|p| p.parse().ok()).unwrap_or(E::DEFAULT_PORT),
            ckpt_dir: get(E::CKPT_DIR)
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from(".")),
            gzip: get(E::GZIP).map(|v| E::truthy(&v)).unwrap_or(true),
            signal: get(E::CKPT_SIGNAL).and_then(|s| s.parse().ok()).unwrap_or(E::DEFAULT_CKPT_SIGNAL),
            writers: get(E::WRITERS).and_then(|s| s.parse().ok()).unwrap_or(ncpu.clamp(2, 4)),
            disabled: get(E::DISABLED_PLUGINS)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }
}

/// State of the checkpoint thread (lives on its stack, so it is restored
/// along with everything else).
struct Ctl {
    cfg: Config,
    program: String,
    argv: Vec<String>,
    uniq_id: String,
    comp_id: String,
    generation: u32,
    num_peers: u32,
    slot: &'static threads::Slot,
}

fn program_argv() -> Vec<String> {
    std::fs::read("/proc/self/cmdline")
        .map(|b| b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

fn exe_name() -> String {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn dmtcp_init() {
    // Our own tools are never checkpointed, even when a checkpointed program runs them.
    if exe_name().starts_with("dmtcp_") {
        if take_inherited_coord().is_some() {
            // SAFETY: the connection of the program this tool replaced: closing it
            // tells the coordinator that process is gone.
            unsafe { libc::close(coord::COORD_FD) };
        }
        return;
    }
    let cfg = Config::from_env();
    memory::init_self_ranges();
    sigwrap::init();
    log::QUIET.store(std::env::var(E::QUIET).ok().and_then(|q| q.parse().ok()).unwrap_or(0), Relaxed);
    // SAFETY: reserving an address range with NOREPLACE never disturbs an existing mapping.
    let r = unsafe {
        libc::mmap(
            dmtcp_sys::RESTORER_BASE as *mut libc::c_void,
            dmtcp_sys::RESTORER_SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r as usize != dmtcp_sys::RESTORER_BASE {
        log::error(format_args!("cannot reserve the restorer window; this process will not be checkpointed"));
        return;
    }
    let inherited = take_inherited_coord();
    let argv = program_argv();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(exe_name);
    let ident = Ident { cfg, program, argv, comp_id: String::new() };
    let (coord, comp_id, generation) = match join_coordinator(&ident, inherited) {
        Ok(j) => j,
        Err(m) => {
            log::error(format_args!("{m}; exiting"));
            // DMTCP's behaviour: a process that cannot reach its coordinator does not run unprotected.
            std::process::exit(1);
        }
    };
    let ident = Ident { comp_id, ..ident };
    if std::env::var(dmtcp_common::env::CKPT_OPEN_FILES).is_ok_and(|v| dmtcp_common::env::truthy(&v)) {
        procstate::SAVE_OPEN_FILES.store(true, SeqCst);
    }
    if let Err(e) = threads::install_handler(ident.cfg.signal) {
        log::error(format_args!("cannot install the checkpoint signal handler: {e}"));
        std::process::exit(1);
    }
    plugin::init(
        vec![
            Box::new(procstate::ProcessPlugin::new()),
            Box::new(eventfds::EventPlugin),
            Box::new(procstate::FilePlugin::new()),
            Box::new(sockets::SocketPlugin),
            Box::new(sysv::SysvPlugin),
            Box::new(timers::TimerPlugin::new()),
        ],
        &ident.cfg.disabled,
    );
    plugin::run(plugin::Event::Init);
    if std::env::var_os(EXEC_MARK).is_some() {
        plugin::POST_EXEC.store(true, SeqCst);
        plugin::run(plugin::Event::PostExec);
    }
    // SAFETY: registering fork and exit handlers with no preconditions.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        libc::atexit(at_exit);
    }
    coord::install(coord);
    writer::start(ident.cfg.writers);
    api::set_dir(&ident.cfg.ckpt_dir.display().to_string());
    api::set_coordinator(&ident.cfg.host, ident.cfg.port);
    api::open_wake_fd();
    MY_PID.store(dmtcp_sys::getpid(), SeqCst);
    if start_ckpt_thread(ident, generation) {
        ENABLED.store(true, SeqCst);
        LOADED.store(true, SeqCst);
    }
}

/// Who this process is, for the coordinator (kept for forked children).
#[derive(Clone)]
struct Ident {
    cfg: Config,
    program: String,
    argv: Vec<String>,
    comp_id: String,
}

static IDENT: flock::FLock<Option<Ident>> = flock::FLock::new(None);

/// Environment variable naming the pid that exec'd with its coordinator
/// connection left open, for the new program to carry on with it.
const INHERIT_VAR: &str = "DMTCP_COORD_INHERIT";

/// The coordinator connection our own exec left open, if this is that process.
fn take_inherited_coord() -> Option<i32> {
    let v = std::env::var(INHERIT_VAR).ok()?;
    std::env::remove_var(INHERIT_VAR);
    if v.parse::<i32>().ok()? != dmtcp_sys::getpid() {
        return None;
    }
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat on a fixed fd number; fails cleanly if it is closed.
    let ok = unsafe { libc::fstat(coord::COORD_FD, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    ok.then_some(coord::COORD_FD)
}

/// Connect (or carry on with `inherited`) and say hello; (link, comp_id, generation).
fn join_coordinator(id: &Ident, inherited: Option<i32>) -> Result<(coord::Coord, String, u32), String> {
    let fd = match inherited {
        Some(fd) => fd,
        None => {
            let stream = std::net::TcpStream::connect((id.cfg.host.as_str(), id.cfg.port))
                .map_err(|e| format!("Coordinator not found at {}:{} ({e})", id.cfg.host, id.cfg.port))?;
            let _ = stream.set_nodelay(true);
            stream.into_raw_fd()
        }
    };
    let mut coord = coord::Coord::adopt(fd);
    let pid = dmtcp_sys::getpid();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // SAFETY: gethostid has no preconditions.
    let hostid = unsafe { libc::gethostid() } as u32;
    let uniq_id = format!("{hostid:x}-{pid}-{:x}", (now / 1_000_000) as u64);
    UNIQ.with(|u| *u = uniq_id.clone());
    let hello = ToCoord::Hello {
        role: Role::Worker,
        pid,
        hostname: dmtcp_common::hostname(),
        program: id.program.clone(),
        uniq_id,
        restarting: false,
        comp_id: (!id.comp_id.is_empty()).then(|| id.comp_id.clone()),
        generation: 0,
        num_peers: 0,
    };
    coord.send(&hello).map_err(|e| format!("cannot talk to the coordinator: {e}"))?;
    loop {
        match coord.recv() {
            Ok(Some(FromCoord::Welcome { comp_id, generation, .. })) => return Ok((coord, comp_id, generation)),
            Ok(Some(FromCoord::Refused { reason })) => return Err(format!("the coordinator refused this process: {reason}")),
            // What the program we replaced left unread on an inherited connection.
            Ok(Some(_)) if inherited.is_some() => continue,
            other => return Err(format!("no welcome from the coordinator ({other:?})")),
        }
    }
}

static UNIQ: flock::FLock<String> = flock::FLock::new(String::new());

/// Start the checkpoint thread; false if it could not be started.
fn start_ckpt_thread(ident: Ident, generation: u32) -> bool {
    IDENT.with(|i| *i = Some(ident.clone()));
    let uniq_id = UNIQ.with(|u| u.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("dmtcp:ckpt".into()).stack_size(1 << 20).spawn(move || {
        threads::block_all_signals();
        let slot = threads::claim_own(threads::KIND_CKPT);
        threads::record_own_stack(slot);
        let _ = tx.send(());
        drop(tx);
        let Ident { cfg, program, argv, comp_id } = ident;
        let mut ctl = Ctl { cfg, program, argv, uniq_id, comp_id, generation, num_peers: 1, slot };
        ctl.run();
    });
    match spawned {
        Ok(h) => {
            let _ = rx.recv();
            std::mem::forget(h);
            true
        }
        Err(e) => {
            log::error(format_args!("cannot start the checkpoint thread: {e}"));
            false
        }
    }
}

/// Pipe on which a forked child tells its parent it has joined the
/// coordinator (read end, write end), at fixed protected numbers.
const FORK_PIPE: (i32, i32) = (procstate::PROTECTED_FD_BASE + 6, procstate::PROTECTED_FD_BASE + 7);
/// The pid this library was set up for (differs from getpid() in a vfork child).
static MY_PID: AtomicI32 = AtomicI32::new(0);
/// Set by the prepare handler when the fork is under checkpoint control.
static FORKING: AtomicBool = AtomicBool::new(false);

/// Before `fork`: no checkpoint may start until the child has joined (so
/// no image shows the fork without the child), and the library's locks are
/// held so the child inherits its state whole.
extern "C" fn fork_prepare() {
    let on = ENABLED.load(SeqCst);
    FORKING.store(on, SeqCst);
    if on {
        api::dmtcp_disable_ckpt();
        let mut p = [0i32; 2];
        // SAFETY: a pipe moved to our protected fd numbers.
        unsafe {
            if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) == 0 {
                libc::dup3(p[0], FORK_PIPE.0, libc::O_CLOEXEC);
                libc::dup3(p[1], FORK_PIPE.1, libc::O_CLOEXEC);
                libc::close(p[0]);
                libc::close(p[1]);
            }
        }
    }
    IDENT.fork_prepare();
    UNIQ.fork_prepare();
    memory::EXCLUDED.fork_prepare();
    coord::LINK.fork_prepare();
    GLOBAL.0.fork_prepare();
}

extern "C" fn fork_parent() {
    GLOBAL.0.fork_parent();
    coord::LINK.fork_parent();
    memory::EXCLUDED.fork_parent();
    UNIQ.fork_parent();
    IDENT.fork_parent();
    if FORKING.swap(false, SeqCst) {
        let mut b = 0u8;
        // SAFETY: our pipe: wait until the child joined (a byte) or is gone (EOF).
        unsafe {
            libc::close(FORK_PIPE.1);
            while libc::read(FORK_PIPE.0, &mut b as *mut u8 as *mut libc::c_void, 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::close(FORK_PIPE.0);
        }
        api::dmtcp_enable_ckpt();
    }
    if ENABLED.load(SeqCst) {
        plugin::run_user(plugin::Event::AtforkParent);
    }
}

/// In the child: it has no checkpoint thread, no writers and a copy of its
/// parent's coordinator connection. It joins the computation as a process
/// of its own, then lets the parent go on.
extern "C" fn fork_child() {
    sigevthread::after_fork_child();
    proctree::after_fork_child();
    GLOBAL.0.fork_child();
    coord::LINK.fork_child();
    memory::EXCLUDED.fork_child();
    UNIQ.fork_child();
    IDENT.fork_child();
    let forking = FORKING.swap(false, SeqCst);
    if !ENABLED.swap(false, SeqCst) {
        return;
    }
    MY_PID.store(dmtcp_sys::getpid(), SeqCst);
    threads::reset_after_fork();
    api::reset_after_fork();
    // SAFETY: closing the child's copies of the parent's fds.
    unsafe {
        libc::close(coord::COORD_FD);
        libc::close(api::WAKE_FD_NUM);
        libc::close(FORK_PIPE.0);
    }
    let notify = || {
        if forking {
            // SAFETY: one byte to the parent, then our end is closed.
            unsafe {
                libc::write(FORK_PIPE.1, b"j".as_ptr() as *const libc::c_void, 1);
                libc::close(FORK_PIPE.1);
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
    api::open_wake_fd();
    writer::respawn();
    if start_ckpt_thread(ident, generation) {
        ENABLED.store(true, SeqCst);
        plugin::run_user(plugin::Event::AtforkChild);
    }
}

extern "C" fn at_exit() {
    if ENABLED.load(SeqCst) {
        plugin::run(plugin::Event::Exit);
    }
}

impl Ctl {
    fn run(&mut self) {
        loop {
            if !coord::with(|c| c.buffered()).unwrap_or(false) {
                let mut fds = [
                    libc::pollfd { fd: coord::COORD_FD, events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: api::WAKE_FD.load(SeqCst), events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: poll on our two fds.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    continue;
                }
                if fds[1].revents & libc::POLLIN != 0 && api::take_request() {
                    coord::send(&ToCoord::RequestCkpt);
                }
                if fds[0].revents == 0 {
                    continue;
                }
            }
            match coord::recv() {
                Ok(Some(FromCoord::DoCheckpoint { generation, ckpt_dir, num_peers })) => {
                    self.generation = generation;
                    self.num_peers = num_peers;
                    self.checkpoint(ckpt_dir.map(PathBuf::from));
                }
                Ok(Some(FromCoord::Kill)) => dmtcp_sys::exit_group(0),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    log::warn(format_args!("lost the connection to the coordinator; no more checkpoints"));
                    return;
                }
            }
        }
    }

    /// Wait for a barrier; Kill ends the process.
    fn barrier(&mut self, name: &str) -> bool {
        coord::barrier(name)
    }

    fn checkpoint(&mut self, dir_override: Option<PathBuf>) {
        api::begin_checkpoint();
        plugin::run(plugin::Event::PreSuspend);
        threads::suspend_all();
        if threads::OVERFLOW.load(SeqCst) {
            log::error(format_args!("more than {} threads: checkpoint skipped", threads::MAX_THREADS));
            coord::send(&ToCoord::CkptDone { image: String::new(), bytes: 0, error: Some("too many threads".into()) });
            api::end_checkpoint(false, false, self.generation);
            threads::resume_all();
            return;
        }
        if !self.barrier("suspended") {
            api::end_checkpoint(false, false, self.generation);
            threads::resume_all();
            return;
        }
        // Who really took part: processes that joined the round late (forked
        // children) count, processes that exited before suspending do not.
        let n = coord::LAST_COUNT.load(SeqCst);
        if n > 0 {
            self.num_peers = n;
        }
        plugin::run(plugin::Event::PreCheckpoint);
        OLD_PID.store(dmtcp_sys::getpid(), SeqCst);
        let mut planned = memory::plan();
        for _ in 0..3 {
            match &planned {
                Ok(p) if writer::prepare(p.items.len()) => planned = memory::plan(),
                _ => break,
            }
        }
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                log::error(format_args!("cannot read the memory map: {e}"));
                procstate::refill_drained();
                coord::send(&ToCoord::CkptDone { image: String::new(), bytes: 0, error: Some(e.to_string()) });
                self.barrier("checkpointed");
                plugin::run(plugin::Event::Resume);
                api::end_checkpoint(false, false, self.generation);
                threads::resume_all();
                return;
            }
        };
        let dir = dir_override.unwrap_or_else(|| PathBuf::from(api::dir()));
        let name = dmtcp_common::image::image_name(&self.program, &self.uniq_id);
        let mut meta = Meta {
            program: self.program.clone(),
            argv: self.argv.clone(),
            hostname: dmtcp_common::hostname(),
            pid: dmtcp_sys::getpid(),
            uniq_id: self.uniq_id.clone(),
            comp_id: self.comp_id.clone(),
            generation: self.generation,
            num_peers: self.num_peers,
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            dmtcp_version: dmtcp_common::VERSION.into(),
            entry: dmtcp_restart_entry as *const () as usize as u64,
            entry_stack_top: ENTRY_STACK.0.get() as u64 + RESTART_STACK_SIZE as u64,
            special: plan.special,
            mm: memory::mm_layout(),
            areas: Vec::new(),
            coord_host: self.cfg.host.clone(),
            coord_port: self.cfg.port,
            ckpt_dir: dir.display().to_string(),
            tree: proctree::capture(threads::slot_tids()),
        };
        match writer::write_image(&dir, &name, &plan, &mut meta, self.cfg.gzip, self.slot) {
            writer::Outcome::Written { path, bytes } => {
                procstate::refill_drained();
                coord::send(&ToCoord::CkptDone { image: path.display().to_string(), bytes, error: None });
                self.barrier("checkpointed");
                plugin::run(plugin::Event::Resume);
                api::end_checkpoint(true, false, self.generation);
                threads::resume_all();
            }
            writer::Outcome::Failed(msg) => {
                log::error(format_args!("checkpoint failed: {msg}"));
                procstate::refill_drained();
                coord::send(&ToCoord::CkptDone { image: String::new(), bytes: 0, error: Some(msg) });
                self.barrier("checkpointed");
                plugin::run(plugin::Event::Resume);
                api::end_checkpoint(false, false, self.generation);
                threads::resume_all();
            }
            writer::Outcome::Restarted => self.after_restart(),
        }
    }

    fn after_restart(&mut self) {
        coord::with(|c| c.reset());
        let info_fd = RESTART_INFO_FD.load(SeqCst);
        if info_fd >= 0 {
            let mut s = String::new();
            let _ = coord::Fd(info_fd).read_to_string(&mut s);
            // SAFETY: closing the info fd we were handed.
            unsafe { libc::close(info_fd) };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                if let Some(h) = v["coord_host"].as_str() {
                    self.cfg.host = h.into();
                }
                if let Some(p) = v["coord_port"].as_u64() {
                    self.cfg.port = p as u16;
                }
                if let Some(a) = v["shared_files"].as_array() {
                    let fds: Vec<i32> = a.iter().filter_map(|x| x.as_i64().map(|n| n as i32)).collect();
                    procstate::SHARED_INSTALLED.with(|s| *s = fds);
                }
                if let Some(d) = v["ckpt_dir"].as_str() {
                    self.cfg.ckpt_dir = PathBuf::from(d);
                    api::set_dir(d);
                }
            }
        }
        if RESTART_FLAGS.load(SeqCst) & RESTART_BRK_SET == 0 {
            log::warn(format_args!("the kernel refused PR_SET_MM_MAP: the heap cannot grow in place after restart (malloc falls back to mmap)"));
        }
        let hello = ToCoord::Hello {
            role: Role::Worker,
            pid: dmtcp_sys::getpid(),
            hostname: dmtcp_common::hostname(),
            program: self.program.clone(),
            uniq_id: self.uniq_id.clone(),
            restarting: true,
            comp_id: Some(self.comp_id.clone()),
            generation: self.generation,
            num_peers: self.num_peers,
        };
        let welcome = if coord::send(&hello) { coord::recv() } else { Ok(None) };
        match welcome {
            Ok(Some(FromCoord::Welcome { .. })) => {}
            Ok(Some(FromCoord::Refused { reason })) => {
                log::error(format_args!("the coordinator refused the restarted process: {reason}"));
                dmtcp_sys::exit_group(1);
            }
            other => {
                log::error(format_args!("no welcome from the coordinator after restart ({other:?})"));
                dmtcp_sys::exit_group(1);
            }
        }
        api::open_wake_fd();
        api::set_coordinator(&self.cfg.host, self.cfg.port);
        MY_PID.store(dmtcp_sys::getpid(), SeqCst);
        let cfg = self.cfg.clone();
        IDENT.with(|i| {
            if let Some(i) = i.as_mut() {
                i.cfg = cfg;
            }
        });
        proctree::after_restart();
        plugin::run(plugin::Event::Restart);
        self.barrier("restarted");
        sockets::after_restart();
        api::end_checkpoint(true, true, self.generation);
        threads::resume_all();
    }
}

/// Environment marker telling an exec'd program's library that it comes
/// from an exec (for the post-exec event).
const EXEC_MARK: &str = "DMTCP_EXEC_MARK";

type ExecveFn = unsafe extern "C" fn(*const libc::c_char, *const *const libc::c_char, *const *const libc::c_char) -> libc::c_int;

/// Before an exec: run the pre-exec event, hold checkpoints off, and leave
/// the coordinator connection open for the new program (it carries on as
/// the same process of the computation). For exec calls that pass on
/// `environ`, mark it for the post-exec event and the connection.
fn before_exec(mark_environ: bool) -> bool {
    if !LOADED.load(SeqCst) {
        return false;
    }
    plugin::run_user(plugin::Event::PreExec);
    // A vfork child shares our memory but not our connection: it must not
    // touch either.
    let on = ENABLED.load(SeqCst) && MY_PID.load(SeqCst) == dmtcp_sys::getpid();
    if on {
        api::dmtcp_disable_ckpt();
        // SAFETY: clearing close-on-exec on our own connection.
        unsafe { libc::fcntl(coord::COORD_FD, libc::F_SETFD, 0) };
    }
    if mark_environ {
        let pid = inherit_value();
        // SAFETY: setenv on the program's environment, as the program could do itself.
        unsafe {
            libc::setenv(c"DMTCP_EXEC_MARK".as_ptr(), c"1".as_ptr(), 1);
            if on {
                libc::setenv(c"DMTCP_COORD_INHERIT".as_ptr(), pid.as_ptr() as *const libc::c_char, 1);
            }
        }
    }
    on
}

/// This process's pid as a NUL-terminated decimal string.
fn inherit_value() -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut n = dmtcp_sys::getpid() as u32;
    let mut digits = [0u8; 10];
    let mut k = 0;
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..k {
        b[i] = digits[k - 1 - i];
    }
    b
}

/// The exec failed: the process goes on as it was.
fn exec_failed(was_on: bool) {
    if was_on {
        // SAFETY: restoring close-on-exec on our connection.
        unsafe { libc::fcntl(coord::COORD_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        std::env::remove_var(INHERIT_VAR);
        api::dmtcp_enable_ckpt();
    }
}

type ExecvFn = unsafe extern "C" fn(*const libc::c_char, *const *const libc::c_char) -> libc::c_int;

pub(crate) fn next_fn(name: &core::ffi::CStr) -> *mut libc::c_void {
    // SAFETY: dlsym with RTLD_NEXT finds libc's definition after ours.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// libc's function `name` (the definition after ours), looked up once
/// and kept in `slot`; 0 if there is none.
pub(crate) fn libc_fn(slot: &core::sync::atomic::AtomicUsize, name: &core::ffi::CStr) -> usize {
    let p = slot.load(core::sync::atomic::Ordering::Acquire);
    if p != 0 {
        return p;
    }
    let f = next_fn(name) as usize;
    slot.store(f, core::sync::atomic::Ordering::Release);
    f
}

/// This boot's id: socket, pty and IPC numbers are only unique within one
/// running kernel.
pub(crate) fn boot_id() -> String {
    // (No libc fallback such as gethostid: it may resolve the host name,
    // which takes locks a suspended thread could hold.)
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_else(|_| "boot".into())
}

/// `execv` with the pre-/post-exec events.
///
/// # Safety
/// The `execv(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const libc::c_char, argv: *const *const libc::c_char) -> libc::c_int {
    let on = before_exec(true);
    let f = next_fn(c"execv");
    // SAFETY: libc's execv, forwarded contract.
    let r = unsafe { core::mem::transmute::<*mut libc::c_void, ExecvFn>(f)(path, argv) };
    exec_failed(on);
    r
}

/// `execvp` with the pre-/post-exec events.
///
/// # Safety
/// The `execvp(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const libc::c_char, argv: *const *const libc::c_char) -> libc::c_int {
    let on = before_exec(true);
    let f = next_fn(c"execvp");
    // SAFETY: libc's execvp, forwarded contract.
    let r = unsafe { core::mem::transmute::<*mut libc::c_void, ExecvFn>(f)(file, argv) };
    exec_failed(on);
    r
}

fn next_execve() -> Option<ExecveFn> {
    // SAFETY: dlsym with RTLD_NEXT finds libc's execve after ours.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"execve".as_ptr()) };
    // SAFETY: execve has this signature.
    (!f.is_null()).then(|| unsafe { core::mem::transmute::<*mut libc::c_void, ExecveFn>(f) })
}

/// `execve` with the pre-exec event; the environment given gets the
/// post-exec marker when the process is checkpointed.
///
/// # Safety
/// The `execve(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> libc::c_int {
    let Some(real) = next_execve() else { return -1 };
    // SAFETY: forwarded contract.
    unsafe { exec_with_env(envp, |env| real(path, argv, env)) }
}

/// `execvpe` (glibc's reaches execve internally, out of our sight).
///
/// # Safety
/// The `execvpe(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> libc::c_int {
    let f = next_fn(c"execvpe");
    if f.is_null() {
        return -1;
    }
    // SAFETY: execvpe has execve's signature.
    let real = unsafe { core::mem::transmute::<*mut libc::c_void, ExecveFn>(f) };
    // SAFETY: forwarded contract.
    unsafe { exec_with_env(envp, |env| real(file, argv, env)) }
}

/// Run an exec call that takes an environment: hold checkpoints off, copy
/// the environment with our markers, and undo all that if it fails.
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings; `exec` is an
/// exec call taking such an array.
unsafe fn exec_with_env(envp: *const *const libc::c_char, exec: impl Fn(*const *const libc::c_char) -> libc::c_int) -> libc::c_int {
    if !LOADED.load(SeqCst) || envp.is_null() {
        return exec(envp);
    }
    let mut on = before_exec(false);
    // Copy the environment with the markers added (inside a disabled
    // section: this allocates in the library's heap).
    api::dmtcp_disable_ckpt();
    let mut env: Vec<*const libc::c_char> = Vec::new();
    let mut preloaded = false;
    let mut i = 0;
    // SAFETY: envp is a null-terminated array (exec contract).
    unsafe {
        while !(*envp.add(i)).is_null() {
            let e = *envp.add(i);
            let bytes = core::ffi::CStr::from_ptr(e).to_bytes();
            i += 1;
            if bytes.starts_with(INHERIT_VAR.as_bytes()) {
                continue;
            }
            preloaded |= bytes.starts_with(b"LD_PRELOAD=") && bytes.windows(9).any(|w| w == b"libdmtcp.");
            env.push(e);
        }
    }
    if on && !preloaded {
        // The new program will not be checkpointed: let the connection close.
        // SAFETY: restoring close-on-exec on our connection.
        unsafe { libc::fcntl(coord::COORD_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        api::dmtcp_enable_ckpt();
        on = false;
    }
    let var = std::ffi::CString::new(format!("{INHERIT_VAR}={}", dmtcp_sys::getpid())).unwrap_or_default();
    env.push(c"DMTCP_EXEC_MARK=1".as_ptr());
    if on {
        env.push(var.as_ptr());
    }
    env.push(core::ptr::null());
    api::dmtcp_enable_ckpt();
    let r = exec(env.as_ptr());
    exec_failed(on);
    r
}

/// Most arguments a variadic exec call may pass.
const EXEC_LIST_MAX: usize = 4096;

/// Body of execl (kind 0), execlp (1) and execle (2): `regs` holds the
/// first five list entries, `stack` the rest (see `arch`).
///
/// # Safety
/// Called only by the assembly in `arch` with the caller's arguments.
pub(crate) unsafe extern "C" fn exec_list(path: *const libc::c_char, regs: *const *const libc::c_char, stack: *const *const libc::c_char, kind: u32) -> libc::c_int {
    let arg = |i: usize| -> *const libc::c_char {
        // SAFETY: the caller passed at least i+1 list entries (the list is
        // NULL-terminated and we stop at the NULL).
        unsafe {
            if i < 5 {
                *regs.add(i)
            } else {
                *stack.add(i - 5)
            }
        }
    };
    let mut argv = [core::ptr::null::<libc::c_char>(); EXEC_LIST_MAX];
    let mut n = 0;
    loop {
        if n == EXEC_LIST_MAX {
            // SAFETY: setting errno.
            unsafe { *libc::__errno_location() = libc::E2BIG };
            return -1;
        }
        argv[n] = arg(n);
        if argv[n].is_null() {
            break;
        }
        n += 1;
    }
    // SAFETY: forwarding to our wrappers with a NULL-terminated argv.
    unsafe {
        match kind {
            0 => execv(path, argv.as_ptr()),
            1 => execvp(path, argv.as_ptr()),
            _ => execve(path, argv.as_ptr(), arg(n + 1) as *const *const libc::c_char),
        }
    }
}

fn entry_fail(msg: &[u8]) -> ! {
    let _ = dmtcp_sys::write_all(2, b"dmtcp_restart: ");
    let _ = dmtcp_sys::write_all(2, msg);
    let _ = dmtcp_sys::write_all(2, b"\n");
    dmtcp_sys::exit_group(1)
}

/// Where the restorer jumps once memory is back. Runs on [`ENTRY_STACK`]
/// with no thread pointer set: raw syscalls and atomics only, no TLS, no
/// allocation. Re-creates every thread of the image and becomes the main one.
///
/// # Safety
/// Only the restorer may call this, in a freshly restored address space,
/// with `args` pointing at a valid `RestartArgs`.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_restart_entry(args: *const RestartArgs) -> ! {
    // SAFETY: the restorer wrote a RestartArgs at this address on our stack.
    let a = unsafe { *args };
    let all: u64 = !0;
    // SAFETY: block every signal in this (only) thread; its clones inherit the mask.
    unsafe { syscall6(nr::RT_SIGPROCMASK, libc::SIG_SETMASK as usize, &all as *const u64 as usize, 0, 8, 0, 0) };
    RESTART_FLAGS.store(a.flags, SeqCst);
    // SAFETY: the restorer is done: replace it with the reservation the
    // program had, so the window stays free for the next restart.
    unsafe {
        syscall6(
            nr::MMAP,
            dmtcp_sys::RESTORER_BASE,
            dmtcp_sys::RESTORER_SIZE,
            nr::PROT_NONE,
            nr::MAP_PRIVATE | nr::MAP_ANONYMOUS | nr::MAP_NORESERVE | nr::MAP_FIXED,
            usize::MAX,
            0,
        )
    };
    procstate::restore_sigactions();
    if a.coord_fd >= 0 {
        // SAFETY: moving the fresh coordinator socket to its fixed number.
        unsafe {
            syscall3(nr::DUP2, a.coord_fd as usize, coord::COORD_FD as usize, 0);
            if a.coord_fd != coord::COORD_FD {
                syscall3(nr::CLOSE, a.coord_fd as usize, 0, 0);
            }
        }
    }
    if a.info_fd >= 0 {
        let target = procstate::PROTECTED_FD_BASE + 2;
        // SAFETY: as above, for the restart info fd.
        unsafe {
            syscall3(nr::DUP2, a.info_fd as usize, target as usize, 0);
            if a.info_fd != target {
                syscall3(nr::CLOSE, a.info_fd as usize, 0, 0);
            }
        }
        RESTART_INFO_FD.store(target, SeqCst);
    }
    let old_pid = OLD_PID.load(SeqCst);
    let n = threads::NSLOTS.load(SeqCst).min(threads::MAX_THREADS);
    let mut main: Option<&threads::Slot> = None;
    for slot in &threads::SLOTS[..n] {
        if slot.kind.load(SeqCst) == threads::KIND_FREE {
            continue;
        }
        if slot.tid.load(SeqCst) == old_pid {
            main = Some(slot);
            continue;
        }
        let tid_addr = slot.tid_addr.load(SeqCst);
        let mut flags = (nr::CLONE_VM
            | nr::CLONE_FS
            | nr::CLONE_FILES
            | nr::CLONE_SIGHAND
            | nr::CLONE_THREAD
            | nr::CLONE_SYSVSEM
            | nr::CLONE_SETTLS) as u64;
        if tid_addr != 0 {
            flags |= (nr::CLONE_PARENT_SETTID | nr::CLONE_CHILD_CLEARTID) as u64;
        }
        let mut r = -1;
        if a.flags & dmtcp_sys::restore::RESTART_SET_TID != 0 {
            // In a fresh pid namespace: ask for the thread's old tid.
            let want: i32 = slot.tid.load(SeqCst);
            // SAFETY: reading the saved stack pointer of the slot's context.
            let sp = unsafe { (*slot.ctx.get()).rsp };
            let ca = dmtcp_sys::restore::CloneArgs {
                flags,
                child_tid: tid_addr,
                parent_tid: tid_addr,
                stack: sp - 256,
                stack_size: 256,
                tls: slot.fs.load(SeqCst),
                set_tid: &want as *const i32 as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            // SAFETY: as below; the 256 bytes under the saved stack pointer
            // are free stack of that thread.
            r = unsafe { arch::clone3_into(&ca, slot.ctx.get()) };
        }
        if r < 0 {
            // SAFETY: the slot's context was saved by save_and_call in this very
            // address space (now restored), its stack and TLS are mapped again.
            r = unsafe { arch::clone_into(flags, slot.fs.load(SeqCst), tid_addr as *mut i32, slot.ctx.get()) };
        }
        if r < 0 {
            entry_fail(b"cannot re-create a thread (clone failed)");
        }
    }
    let Some(m) = main else {
        // The main thread had exited before the checkpoint: this thread goes too.
        loop {
            // SAFETY: exit of this thread only.
            unsafe { syscall3(nr::EXIT, 0, 0, 0) };
        }
    };
    let tid_addr = m.tid_addr.load(SeqCst);
    // SAFETY: glibc's struct pthread of the main thread is restored at the
    // same address; the kernel and glibc must agree on its tid.
    unsafe {
        if tid_addr != 0 {
            syscall3(nr::SET_TID_ADDRESS, tid_addr as usize, 0, 0);
            core::ptr::write_volatile(tid_addr as *mut i32, dmtcp_sys::gettid());
        }
        syscall3(nr::ARCH_PRCTL, nr::ARCH_SET_FS, m.fs.load(SeqCst) as usize, 0);
        arch::jump_context(m.ctx.get())
    }
}
