//! Start-up: settings from the environment `dmtcp_launch` prepared, the
//! restorer window, the coordinator handshake, the plugins, the writers and
//! the checkpoint thread.

use super::ckpt::Ctl;
use super::{capi, coord, flock, log, memory, plugin, sigwrap, threads, writer};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering::*};
use dmtcp_common::env as E;
use dmtcp_common::proto::{FromCoord, Role, ToCoord};
use std::os::fd::IntoRawFd;
use std::path::PathBuf;

// Not in the library's own unit-test binary, which has no coordinator.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = dmtcp_init;

/// Set once the library is active in this process.
pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);
/// Set once the library started up in this program (stays set in forked
/// children, which are not checkpointed but still get plugin events).
pub(super) static LOADED: AtomicBool = AtomicBool::new(false);
/// The pid the process had when it was checkpointed (finds the main thread).
pub(super) static OLD_PID: AtomicI32 = AtomicI32::new(0);
pub(super) static RESTART_INFO_FD: AtomicI32 = AtomicI32::new(-1);
pub(super) static RESTART_FLAGS: AtomicU32 = AtomicU32::new(0);
/// Set when the restorer window could not be reserved at start-up: this
/// process cannot be restored, so its checkpoints fail.
pub(super) static NO_WINDOW: AtomicBool = AtomicBool::new(false);

/// The processor's instruction-set features, read once at start-up.
static CPU_FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The features recorded in every image of this process.
pub(super) fn cpu_flags() -> Vec<String> {
    CPU_FLAGS.get_or_init(dmtcp_common::cpu::isa_flags).clone()
}

/// Is the checkpointer active in this process?
pub(crate) fn is_enabled() -> bool {
    ENABLED.load(SeqCst)
}

/// Settings read from the environment dmtcp_launch prepared.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) ckpt_dir: PathBuf,
    pub(super) gzip: bool,
    pub(super) signal: i32,
    pub(super) writers: usize,
    /// Write streams per node (`DMTCP_NODE_STREAMS`; 0: no limit).
    pub(super) node_streams: usize,
    pub(super) disabled: Vec<String>,
    /// Forked checkpointing: off, when safe (the default), always
    /// (`--forked-ckpt`).
    pub(super) forked: super::forkmem::Mode,
    /// Every Nth image full (`--full-every`, [`E::FULL_EVERY`], default
    /// [`E::DEFAULT_FULL_EVERY`]); 1 (`--full-every 1`, `--no-incremental`):
    /// incremental images off.
    pub(super) full_every: u32,
}

impl Config {
    fn from_env() -> Config {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Config {
            host: get(E::COORD_HOST).unwrap_or_else(|| "localhost".into()),
            port: get(E::COORD_PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(E::DEFAULT_PORT),
            ckpt_dir: get(E::CKPT_DIR)
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from(".")),
            gzip: get(E::GZIP).map(|v| E::truthy(&v)).unwrap_or(true),
            signal: get(E::CKPT_SIGNAL)
                .and_then(|s| s.parse().ok())
                .unwrap_or(E::DEFAULT_CKPT_SIGNAL),
            writers: get(E::WRITERS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(ncpu.clamp(2, 4)),
            node_streams: get(E::NODE_STREAMS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(super::streams::default_limit(ncpu)),
            disabled: get(E::DISABLED_PLUGINS)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            forked: super::forkmem::Mode::parse(
                get(E::FORKED_CKPT)
                    .or_else(|| get(E::FORKED_CKPT_DMTCP))
                    .as_deref(),
            ),
            // On by default; DMTCP_INCREMENTAL=0 (`--no-incremental`) or
            // DMTCP_FULL_EVERY=1: off, every image full.
            full_every: match get(E::INCREMENTAL) {
                Some(v) if !E::truthy(&v) => 1,
                _ => get(E::FULL_EVERY)
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(E::DEFAULT_FULL_EVERY),
            },
        }
    }
}
fn program_argv() -> Vec<String> {
    std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn exe_name() -> String {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default()
}
/// Is the program `exe` (a file name) one of our own tools, which load
/// the library (inherited `LD_PRELOAD`) but never join the computation?
/// The ssh plugin's relays (dmtcp_ssh, dmtcp_sshd) and the batch
/// plugin's srun stand-in and task parent (dmtcp_srun --relay, --task)
/// are processes of the computation.
pub(super) fn never_joins(exe: &str) -> bool {
    exe.starts_with("dmtcp_") && !matches!(exe, "dmtcp_ssh" | "dmtcp_sshd" | "dmtcp_srun")
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn dmtcp_init() {
    // Our own tools are never checkpointed, even when a checkpointed program
    // runs them (never_joins).
    // First: the auxiliary vector is found after the environment's NULL
    // until something changes the environment (taking the secret does).
    super::vdso::find_auxv();
    let exe = exe_name();
    super::secret::take_from_env();
    if never_joins(&exe) {
        if take_inherited_coord().is_some() {
            // The connection of the program this tool replaced: closing it
            // tells the coordinator that process is gone.
            super::fdguard::close_own(coord::COORD_FD);
        }
        return;
    }
    let cfg = Config::from_env();
    memory::init_self_ranges();
    sigwrap::init();
    threads::init_rseq();
    let _ = cpu_flags();
    log::init(
        &exe,
        std::env::var(E::QUIET)
            .ok()
            .and_then(|q| q.parse().ok())
            .unwrap_or(0),
    );
    // SAFETY: reserving an address range with NOREPLACE never disturbs an existing mapping.
    let r = unsafe {
        super::unmap::sys_mmap(
            dmtcp_sys::RESTORER_BASE as *mut libc::c_void,
            dmtcp_sys::RESTORER_SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r as usize != dmtcp_sys::RESTORER_BASE {
        // The process still joins the computation, so the job's checkpoints
        // fail with this reason instead of leaving it out of the images.
        log::error(format_args!(
            "cannot reserve the restorer window at {:#x} ({}); checkpoints of this job will fail",
            dmtcp_sys::RESTORER_BASE,
            std::io::Error::last_os_error()
        ));
        if r != libc::MAP_FAILED {
            // SAFETY: a mapping the kernel placed elsewhere for us: ours to drop.
            unsafe { super::unmap::sys_munmap(r, dmtcp_sys::RESTORER_SIZE) };
        }
        NO_WINDOW.store(true, SeqCst);
    }
    if let Err(m) = super::fdguard::ensure_room() {
        log::error(format_args!("{m}; exiting"));
        std::process::exit(1);
    }
    let inherited = take_inherited_coord();
    let argv = program_argv();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(exe_name);
    let ident = Ident {
        cfg,
        program,
        argv,
        comp_id: String::new(),
    };
    resolve_coordinator(&ident.cfg.host, ident.cfg.port);
    let (coord, comp_id, generation) = match join_coordinator(&ident, inherited) {
        Ok(j) => j,
        Err(m) => {
            log::error(format_args!("{m}; exiting"));
            // DMTCP's behaviour: a process that cannot reach its coordinator does not run unprotected.
            std::process::exit(1);
        }
    };
    let ident = Ident { comp_id, ..ident };
    if let Err(e) = threads::install_handler(ident.cfg.signal) {
        log::error(format_args!(
            "cannot install the checkpoint signal handler: {e}"
        ));
        std::process::exit(1);
    }
    plugin::init(crate::plugins::all(), &ident.cfg.disabled);
    plugin::run(plugin::Event::Init);
    if std::env::var_os(super::exec::EXEC_MARK).is_some() {
        plugin::POST_EXEC.store(true, SeqCst);
        plugin::run(plugin::Event::PostExec);
    }
    // SAFETY: registering fork and exit handlers with no preconditions.
    unsafe {
        libc::pthread_atfork(
            Some(super::fork::prepare),
            Some(super::fork::parent),
            Some(super::fork::child),
        );
        libc::atexit(at_exit);
    }
    coord::install(coord);
    super::streams::configure(ident.cfg.node_streams);
    writer::start(ident.cfg.writers);
    super::fdguard::fill_placeholders();
    capi::set_dir(&ident.cfg.ckpt_dir.display().to_string());
    capi::set_coordinator(&ident.cfg.host, ident.cfg.port);
    capi::open_wake_fd();
    capi::init_sections();
    super::fork::MY_PID.store(dmtcp_sys::getpid(), SeqCst);
    if start_ckpt_thread(ident, generation) {
        ENABLED.store(true, SeqCst);
        LOADED.store(true, SeqCst);
    }
}

/// Who this process is, for the coordinator (kept for forked children).
#[derive(Clone)]
pub(super) struct Ident {
    pub(super) cfg: Config,
    pub(super) program: String,
    pub(super) argv: Vec<String>,
    pub(super) comp_id: String,
}

pub(super) static IDENT: flock::FLock<Option<Ident>> = flock::FLock::new(None);

/// Environment variable naming the pid that exec'd with its coordinator
/// connection left open, for the new program to carry on with it.
pub(super) const INHERIT_VAR: &str = "DMTCP_COORD_INHERIT";

/// The coordinator connection our own exec left open, if this is that process.
pub(super) fn take_inherited_coord() -> Option<i32> {
    let v = std::env::var(INHERIT_VAR).ok()?;
    std::env::remove_var(INHERIT_VAR);
    if v.parse::<i32>().ok()? != dmtcp_sys::getpid() {
        return None;
    }
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat on a fixed fd number; fails cleanly if it is closed.
    let ok = unsafe { libc::fstat(coord::COORD_FD, &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    ok.then_some(coord::COORD_FD)
}

/// Connect (or carry on with `inherited`) and say hello; (link, comp_id, generation).
/// The coordinator's addresses, resolved once at start-up (a forked child
/// of a multi-threaded program must not resolve names: another thread may
/// have held the resolver's locks at the fork), with the host:port they
/// were resolved for.
pub(super) static COORD_ADDRS: flock::FLock<Option<(String, u16, Vec<std::net::SocketAddr>)>> =
    flock::FLock::new(None);
/// This host's id (gethostid may resolve the host name: once, at start-up).
static HOSTID: AtomicU32 = AtomicU32::new(0);

/// Resolve the coordinator's address now (start-up, restart).
pub(super) fn resolve_coordinator(host: &str, port: u16) {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    COORD_ADDRS.with(|c| *c = Some((host.to_string(), port, addrs)));
}

/// Connect to the coordinator at its resolved addresses (resolving only if
/// it was never resolved for this host and port).
pub(super) fn connect_coordinator(host: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    let Some(addrs) = known_addrs(host, port) else {
        return std::net::TcpStream::connect((host, port));
    };
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(30)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The coordinator's addresses resolved at start-up for `host`:`port`.
fn known_addrs(host: &str, port: u16) -> Option<Vec<std::net::SocketAddr>> {
    COORD_ADDRS.with(|c| {
        c.as_ref()
            .filter(|(h, p, a)| h == host && *p == port && !a.is_empty())
            .map(|(_, _, a)| a.clone())
    })
}

/// As [`connect_coordinator`], but the socket is moved to the library's
/// number `fd` before it is connected: the program runs meanwhile, and
/// may still use the number the socket is first given as one of its own
/// (a restarted program's fd that could not be put back). For the few
/// instructions until the move it finds an unconnected socket there,
/// never bytes meant for the library. A connect takes at most 30 s.
pub(super) fn connect_coordinator_at(host: &str, port: u16, fd: i32) -> std::io::Result<()> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let addrs = match known_addrs(host, port) {
        Some(a) => a,
        None => (host, port).to_socket_addrs()?.collect(),
    };
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for a in addrs {
        let (sa, len): (libc::sockaddr_storage, libc::socklen_t) = sockaddr_of(&a);
        let family = if matches!(a, SocketAddr::V4(_)) {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: a new socket of ours.
        let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            last = std::io::Error::last_os_error();
            continue;
        }
        let moved = super::fdguard::dup_own(raw, fd);
        let dup_err = std::io::Error::last_os_error();
        if raw != fd {
            super::fdguard::close_own(raw);
        }
        if moved < 0 {
            return Err(dup_err);
        }
        let limit = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        let none = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: setsockopt/connect on our socket with a timeval and an
        // address of the sizes given (a connect gives up at the send
        // timeout; the timeout is taken off again afterwards).
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &limit as *const _ as *const libc::c_void,
                tv_len,
            );
            let r = libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len);
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &none as *const _ as *const libc::c_void,
                tv_len,
            );
            r
        };
        if r == 0 {
            let one: libc::c_int = 1;
            // SAFETY: as above, an int option.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            return Ok(());
        }
        last = std::io::Error::last_os_error();
        super::fdguard::close_own(fd);
    }
    Err(last)
}

/// `a` as a C socket address and its length.
fn sockaddr_of(a: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and
            // suitably aligned for it.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

pub(super) fn join_coordinator(
    id: &Ident,
    inherited: Option<i32>,
) -> Result<(coord::Coord, String, u32), String> {
    let fd = match inherited {
        Some(fd) => fd,
        None => {
            let stream = connect_coordinator(&id.cfg.host, id.cfg.port).map_err(|e| {
                format!(
                    "Coordinator not found at {}:{} ({e})",
                    id.cfg.host, id.cfg.port
                )
            })?;
            let _ = stream.set_nodelay(true);
            stream.into_raw_fd()
        }
    };
    // A new connection starts with the coordinator's challenge (an
    // inherited one was answered by the program before the exec).
    let auth = match inherited {
        Some(_) => None,
        None => match super::secret::answer(fd, &id.cfg.host, id.cfg.port) {
            Ok(a) => Some(a),
            Err(e) => {
                // SAFETY: closing the socket we connected.
                unsafe { libc::close(fd) };
                return Err(e);
            }
        },
    };
    let mut coord = coord::Coord::adopt(fd);
    let pid = dmtcp_sys::getpid();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    if HOSTID.load(SeqCst) == 0 {
        // SAFETY: gethostid has no preconditions.
        HOSTID.store(unsafe { libc::gethostid() } as u32, SeqCst);
    }
    let hostid = HOSTID.load(SeqCst);
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
        auth,
    };
    coord
        .send(&hello)
        .map_err(|e| format!("cannot talk to the coordinator: {e}"))?;
    loop {
        match coord.recv() {
            Ok(Some(FromCoord::Welcome {
                comp_id,
                generation,
                ..
            })) => return Ok((coord, comp_id, generation)),
            Ok(Some(FromCoord::Refused { reason })) => {
                return Err(format!("the coordinator refused this process: {reason}"))
            }
            // What the program we replaced left unread on an inherited connection.
            Ok(Some(_)) if inherited.is_some() => continue,
            other => return Err(format!("no welcome from the coordinator ({other:?})")),
        }
    }
}

pub(super) static UNIQ: flock::FLock<String> = flock::FLock::new(String::new());

/// Start the checkpoint thread; false if it could not be started.
pub(super) fn start_ckpt_thread(ident: Ident, generation: u32) -> bool {
    // Once the thread runs it may be told to checkpoint at once (a forked
    // child is a member of the round its parent is about to take), while
    // this thread still frees what starting it took from the library's
    // heap: held off until then, or this thread would be suspended with
    // the heap locked and the writers would wait for it for ever.
    capi::dmtcp_disable_ckpt();
    let ok = spawn_ckpt_thread(ident, generation);
    capi::dmtcp_enable_ckpt();
    ok
}

fn spawn_ckpt_thread(ident: Ident, generation: u32) -> bool {
    IDENT.with(|i| *i = Some(ident.clone()));
    let uniq_id = UNIQ.with(|u| u.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("dmtcp:ckpt".into())
        .stack_size(1 << 20)
        .spawn(move || {
            threads::block_all_signals();
            let slot = threads::claim_own(threads::KIND_CKPT);
            threads::record_own_stack(slot);
            let _ = tx.send(());
            drop(tx);
            let Ident {
                cfg,
                program,
                argv,
                comp_id,
            } = ident;
            let mut ctl = Ctl {
                cfg,
                program,
                argv,
                uniq_id,
                comp_id,
                generation,
                num_peers: 1,
                slot,
                writer_pid: None,
                last_image: None,
            };
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
extern "C" fn at_exit() {
    if ENABLED.load(SeqCst) {
        plugin::run(plugin::Event::Exit);
    }
}
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
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "boot".into())
}
