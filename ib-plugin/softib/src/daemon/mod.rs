//! The per-node service (`softib daemon`): the HCAs themselves.
//!
//! Programs' device contexts connect to a Unix `SOCK_SEQPACKET` socket and
//! speak [`crate::proto`]; every resource they make (PDs, MRs, CQs, QPs,
//! SRQs, AHs, completion channels) lives here, as on a real adapter, so a
//! checkpoint of a program holds none of it. The service moves data with
//! `process_vm_readv`/`process_vm_writev` on the programs' memory (its
//! "DMA"), writes completions into rings shared with the programs, and
//! reaches the services of other nodes over TCP, finding them through the
//! fabric directory ([`fabric`]).
//!
//! Layout:
//! - `state`: the device state behind one mutex, and resource counts;
//! - `client`: one thread per context connection, the control verbs;
//! - `datapath`: work requests, responder, acks, errors and flushes;
//! - `peer`: TCP links between services;
//! - [`fabric`]: LID registration;
//! - `os`: the few system calls `crate::sys` does not have.
//!
//! Threads: the accept loop (the caller's thread in [`run`]), one per
//! context connection, a writer and a reader per peer link (each way), and
//! a timer thread for RNR and retry deadlines. All share one
//! `Mutex<State>`; none blocks on a socket while
//! holding it.

mod client;
mod datapath;
pub mod fabric;
mod os;
mod peer;
mod state;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::DevInfo;
use state::{Shared, State};

pub use state::Counts;

/// How the service is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of HCAs (softib0, softib1, ...), each with one port.
    pub devices: u32,
    /// Where to listen ([`crate::paths::socket`]).
    pub socket: PathBuf,
    /// The fabric directory ([`crate::paths::fabric`]).
    pub fabric: PathBuf,
    /// Exit when no context has been connected for this long.
    pub idle_exit: Option<Duration>,
    /// TCP address for other nodes' services; `None`: the first
    /// non-loopback IPv4 address of this network namespace, else 127.0.0.1.
    pub addr: Option<Ipv4Addr>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            devices: 1,
            socket: crate::paths::socket(),
            fabric: crate::paths::fabric(),
            idle_exit: None,
            addr: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free LID could be registered in {0}")]
    NoLid(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// How often the accept loop looks at stop requests and idleness.
const TICK: Duration = Duration::from_millis(100);

/// Runs the service in the calling thread until SIGTERM, SIGINT or idle
/// exit; then removes its socket and fabric entries. Returns `Ok(())` at
/// once, silently, if another service already serves `opts.socket`.
pub fn run(opts: Options) -> Result<(), Error> {
    let signalled = os::install_stop_signals().map_err(io_err("installing signal handlers"))?;
    let Some(bound) = bind(&opts)? else {
        return Ok(());
    };
    serve(bound, Some(signalled));
    Ok(())
}

/// Starts the service on threads of this process (tests, embedding).
/// `Ok(None)` if another service already serves `opts.socket`. The service
/// stops on [`Daemon::stop`], on drop, or at idle exit.
pub fn start(opts: Options) -> Result<Option<Daemon>, Error> {
    let Some(bound) = bind(&opts)? else {
        return Ok(None);
    };
    let shared = bound.shared.clone();
    let thread = std::thread::Builder::new()
        .name("softibd".into())
        .spawn(move || serve(bound, None))
        .map_err(io_err("starting the service thread"))?;
    Ok(Some(Daemon {
        shared,
        thread: Some(thread),
    }))
}

/// A service started by [`start`].
pub struct Daemon {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    /// The devices it presents.
    pub fn devices(&self) -> Vec<DevInfo> {
        self.shared.lock().devices.clone()
    }

    /// Current resource counts.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts()
    }

    /// Whether it has stopped (idle exit or [`Daemon::stop`]).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops it: connections are shut down, its socket and fabric entries
    /// removed. Returns when that is done.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A service that holds its lock, sockets and LIDs, not yet serving.
struct Bound {
    shared: Arc<Shared>,
    _lock: File,
    unix: OwnedFd,
    tcp: TcpListener,
    socket: PathBuf,
    addr: SocketAddr,
    idle_exit: Option<Duration>,
}

/// Takes the lock, binds the sockets and registers the LIDs.
fn bind(opts: &Options) -> Result<Option<Bound>, Error> {
    let dir = opts
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let lock_path = dir.join("softibd.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    if !os::try_lock_exclusive(&lock).map_err(io_err(format!("locking {}", lock_path.display())))? {
        return Ok(None);
    }
    // The lock file names the service's pid (for `kill`, scripts, tests).
    {
        use std::io::{Seek, Write};
        let mut f = &lock;
        let _ = f
            .set_len(0)
            .and_then(|_| f.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| writeln!(f, "{}", std::process::id()));
    }
    // We hold the lock: a socket file left there is stale.
    let _ = std::fs::remove_file(&opts.socket);
    let unix = crate::sys::listen_seqpacket(&opts.socket)
        .map_err(io_err(format!("listening on {}", opts.socket.display())))?;
    crate::sys::set_nonblock(unix.as_raw_fd(), true)
        .map_err(io_err("setting the socket non-blocking"))?;
    let ip = opts
        .addr
        .or_else(os::first_ipv4)
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let tcp = TcpListener::bind((ip, 0)).map_err(io_err(format!("listening on {ip}")))?;
    tcp.set_nonblocking(true)
        .map_err(io_err("setting the TCP listener non-blocking"))?;
    let addr = tcp
        .local_addr()
        .map_err(io_err("reading the TCP address"))?;

    let mut devices: Vec<DevInfo> = Vec::new();
    for n in 0..opts.devices.max(1) {
        let taken: Vec<u16> = devices.iter().map(|d| d.lid).collect();
        let lid = match fabric::register(&opts.fabric, addr, &taken) {
            Ok(l) => l,
            Err(e) => {
                for d in &devices {
                    fabric::unregister(&opts.fabric, d.lid, addr);
                }
                let _ = std::fs::remove_file(&opts.socket);
                return Err(e);
            }
        };
        let guid = loop {
            let g = crate::sys::random_u64();
            if g != 0 {
                break g;
            }
        };
        let mut gid = [0u8; 16];
        gid[0] = 0xfe;
        gid[1] = 0x80;
        gid[8..].copy_from_slice(&guid.to_be_bytes());
        devices.push(DevInfo {
            name: format!("softib{n}"),
            guid,
            lid,
            gid,
        });
    }
    let shared = Arc::new_cyclic(|weak| Shared {
        state: Mutex::new(State::new(weak.clone(), devices)),
        timer_cv: Condvar::new(),
        stop: AtomicBool::new(false),
        fabric: opts.fabric.clone(),
    });
    Ok(Some(Bound {
        shared,
        _lock: lock,
        unix,
        tcp,
        socket: opts.socket.clone(),
        addr,
        idle_exit: opts.idle_exit,
    }))
}

/// The accept loop; returns after stop, signal or idle exit, cleaned up.
fn serve(b: Bound, signalled: Option<&'static AtomicBool>) {
    let shared = b.shared.clone();
    let timer = {
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("softib-timer".into())
            .spawn(move || timer_loop(&sh))
            .ok()
    };
    let fds = [b.unix.as_raw_fd(), b.tcp.as_raw_fd()];
    loop {
        if shared.stop.load(Ordering::SeqCst) || signalled.is_some_and(|s| s.load(Ordering::SeqCst))
        {
            break;
        }
        let idle = b.idle_exit.is_some_and(|idle| {
            let st = shared.lock();
            st.connections == 0 && st.idle_since.elapsed() >= idle
        });
        // Idle: leave unless a context is just connecting.
        let ready = match os::poll_readable(&fds, if idle { Duration::ZERO } else { TICK }) {
            Ok(r) => r,
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        if idle && !ready[0] {
            break;
        }
        if ready[0] {
            while let Ok(sock) = crate::sys::accept(b.unix.as_raw_fd()) {
                let id = {
                    let mut st = shared.lock();
                    st.connections += 1;
                    st.next_id()
                };
                let sh = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("softib-client".into())
                    .spawn(move || client::serve(sh, sock, id));
                if spawned.is_err() {
                    let mut st = shared.lock();
                    st.connections -= 1;
                }
            }
        }
        if ready[1] {
            while let Ok((stream, _)) = b.tcp.accept() {
                let _ = stream.set_nonblocking(false);
                let sh = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("softib-peer".into())
                    .spawn(move || peer::serve_inbound(sh, stream));
            }
        }
    }
    shutdown(&b);
    if let Some(t) = timer {
        let _ = t.join();
    }
}

/// Removes the socket and LID files, closes every connection and link.
fn shutdown(b: &Bound) {
    let shared = &b.shared;
    shared.stop.store(true, Ordering::SeqCst);
    let _ = std::fs::remove_file(&b.socket);
    let mut st = shared.lock();
    for d in &st.devices {
        fabric::unregister(&shared.fabric, d.lid, b.addr);
    }
    for c in st.conns.values() {
        c.shutdown();
    }
    st.links.clear();
    st.inbound.clear();
    shared.timer_cv.notify_all();
}

/// Runs the RNR and retry deadlines.
fn timer_loop(shared: &Shared) {
    let mut st = shared.lock();
    while !shared.stop.load(Ordering::SeqCst) {
        let next = datapath::expire_timers(&mut st);
        // New deadlines and stop notify the condvar; the cap is a safety net.
        let cap = Duration::from_secs(1);
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(cap)
            .min(cap);
        st = shared
            .timer_cv
            .wait_timeout(st, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}
