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
mod log;
mod memory;
mod plugin;
mod procstate;
mod sigwrap;
mod threads;
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
    let stream = match std::net::TcpStream::connect((cfg.host.as_str(), cfg.port)) {
        Ok(s) => s,
        Err(e) => {
            log::error(format_args!("Coordinator not found at {}:{} ({e}); exiting", cfg.host, cfg.port));
            // DMTCP's behaviour: a process that cannot reach its coordinator does not run unprotected.
            std::process::exit(1);
        }
    };
    let _ = stream.set_nodelay(true);
    let mut coord = coord::Coord::adopt(stream.into_raw_fd());
    let argv = program_argv();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(exe_name);
    let pid = std::process::id() as i32;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // SAFETY: gethostid has no preconditions.
    let hostid = unsafe { libc::gethostid() } as u32;
    let uniq_id = format!("{hostid:x}-{pid}-{now:x}");
    let hello = ToCoord::Hello {
        role: Role::Worker,
        pid,
        hostname: dmtcp_common::hostname(),
        program: program.clone(),
        uniq_id: uniq_id.clone(),
        restarting: false,
        comp_id: None,
        generation: 0,
        num_peers: 0,
    };
    let (comp_id, generation) = match coord.send(&hello).and_then(|_| coord.recv()) {
        Ok(Some(FromCoord::Welcome { comp_id, generation, .. })) => (comp_id, generation),
        Ok(Some(FromCoord::Refused { reason })) => {
            log::error(format_args!("the coordinator refused this process: {reason}"));
            std::process::exit(1);
        }
        other => {
            log::error(format_args!("no welcome from the coordinator ({other:?}); exiting"));
            std::process::exit(1);
        }
    };
    if let Err(e) = threads::install_handler(cfg.signal) {
        log::error(format_args!("cannot install the checkpoint signal handler: {e}"));
        std::process::exit(1);
    }
    plugin::init(
        vec![Box::new(procstate::ProcessPlugin::new()), Box::new(procstate::FilePlugin::new())],
        &cfg.disabled,
    );
    plugin::run(plugin::Event::Init);
    if std::env::var_os(EXEC_MARK).is_some() {
        plugin::POST_EXEC.store(true, SeqCst);
        plugin::run(plugin::Event::PostExec);
    }
    // SAFETY: registering fork and exit handlers with no preconditions.
    unsafe {
        libc::pthread_atfork(None, Some(after_fork_parent), Some(after_fork_child));
        libc::atexit(at_exit);
    }
    coord::install(coord);
    writer::start(cfg.writers);
    api::set_dir(&cfg.ckpt_dir.display().to_string());
    api::set_coordinator(&cfg.host, cfg.port);
    api::open_wake_fd();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("dmtcp:ckpt".into()).stack_size(1 << 20).spawn(move || {
        threads::block_all_signals();
        let slot = threads::claim_own(threads::KIND_CKPT);
        threads::record_own_stack(slot);
        let _ = tx.send(());
        drop(tx);
        let mut ctl = Ctl { cfg, program, argv, uniq_id, comp_id, generation, num_peers: 1, slot };
        ctl.run();
    });
    match spawned {
        Ok(h) => {
            let _ = rx.recv();
            std::mem::forget(h);
            ENABLED.store(true, SeqCst);
            LOADED.store(true, SeqCst);
        }
        Err(e) => log::error(format_args!("cannot start the checkpoint thread: {e}")),
    }
}

extern "C" fn at_exit() {
    if ENABLED.load(SeqCst) {
        plugin::run(plugin::Event::Exit);
    }
}

extern "C" fn after_fork_parent() {
    if ENABLED.load(SeqCst) {
        plugin::run_user(plugin::Event::AtforkParent);
    }
}

extern "C" fn after_fork_child() {
    if ENABLED.load(SeqCst) {
        plugin::run_user(plugin::Event::AtforkChild);
    }
    // The child has no checkpoint thread; keep it off the parent's connection.
    if ENABLED.swap(false, SeqCst) {
        // SAFETY: closing the copies of our fds in the child.
        unsafe {
            libc::close(coord::COORD_FD);
            libc::close(api::WAKE_FD_NUM);
        }
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
        };
        match writer::write_image(&dir, &name, &plan, &mut meta, self.cfg.gzip, self.slot) {
            writer::Outcome::Written { path, bytes } => {
                coord::send(&ToCoord::CkptDone { image: path.display().to_string(), bytes, error: None });
                self.barrier("checkpointed");
                plugin::run(plugin::Event::Resume);
                api::end_checkpoint(true, false, self.generation);
                threads::resume_all();
            }
            writer::Outcome::Failed(msg) => {
                log::error(format_args!("checkpoint failed: {msg}"));
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
        plugin::run(plugin::Event::Restart);
        self.barrier("restarted");
        api::end_checkpoint(true, true, self.generation);
        threads::resume_all();
    }
}

/// Environment marker telling an exec'd program's library that it comes
/// from an exec (for the post-exec event).
const EXEC_MARK: &str = "DMTCP_EXEC_MARK";

type ExecveFn = unsafe extern "C" fn(*const libc::c_char, *const *const libc::c_char, *const *const libc::c_char) -> libc::c_int;

/// Run the pre-exec event; for exec calls that pass on `environ`, mark it
/// for the post-exec event.
fn before_exec(mark_environ: bool) {
    if LOADED.load(SeqCst) {
        plugin::run_user(plugin::Event::PreExec);
        if mark_environ {
            // SAFETY: setenv on the program's environment, as the program could do itself.
            unsafe { libc::setenv(c"DMTCP_EXEC_MARK".as_ptr(), c"1".as_ptr(), 1) };
        }
    }
}

type ExecvFn = unsafe extern "C" fn(*const libc::c_char, *const *const libc::c_char) -> libc::c_int;

fn next_fn(name: &core::ffi::CStr) -> *mut libc::c_void {
    // SAFETY: dlsym with RTLD_NEXT finds libc's definition after ours.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// `execv` with the pre-/post-exec events.
///
/// # Safety
/// The `execv(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const libc::c_char, argv: *const *const libc::c_char) -> libc::c_int {
    before_exec(true);
    let f = next_fn(c"execv");
    // SAFETY: libc's execv, forwarded contract.
    unsafe { core::mem::transmute::<*mut libc::c_void, ExecvFn>(f)(path, argv) }
}

/// `execvp` with the pre-/post-exec events.
///
/// # Safety
/// The `execvp(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const libc::c_char, argv: *const *const libc::c_char) -> libc::c_int {
    before_exec(true);
    let f = next_fn(c"execvp");
    // SAFETY: libc's execvp, forwarded contract.
    unsafe { core::mem::transmute::<*mut libc::c_void, ExecvFn>(f)(file, argv) }
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
    before_exec(false);
    let Some(real) = next_execve() else { return -1 };
    if !LOADED.load(SeqCst) || envp.is_null() {
        // SAFETY: forwarded contract.
        return unsafe { real(path, argv, envp) };
    }
    // Copy the environment with the marker added (inside a disabled section:
    // this allocates in the library's heap).
    api::dmtcp_disable_ckpt();
    let mut env: Vec<*const libc::c_char> = Vec::new();
    let mut i = 0;
    // SAFETY: envp is a null-terminated array (execve contract).
    unsafe {
        while !(*envp.add(i)).is_null() {
            env.push(*envp.add(i));
            i += 1;
        }
    }
    env.push(c"DMTCP_EXEC_MARK=1".as_ptr());
    env.push(core::ptr::null());
    api::dmtcp_enable_ckpt();
    // SAFETY: forwarded contract with our copy of the environment.
    unsafe { real(path, argv, env.as_ptr()) }
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
        // SAFETY: the slot's context was saved by save_and_call in this very
        // address space (now restored), its stack and TLS are mapped again.
        let r = unsafe { arch::clone_into(flags, slot.fs.load(SeqCst), tid_addr as *mut i32, slot.ctx.get()) };
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
