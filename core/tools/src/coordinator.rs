//! `dmtcp_coordinator`: tracks the processes of a computation, runs global
//! barriers, starts checkpoints (on command or on an interval) and writes
//! `dmtcp_restart_script.sh` after each complete checkpoint.
//!
//! One thread per connection reads that client's messages and handles
//! them under the global state lock. Nothing ever blocks on a client while
//! holding that lock: messages go out through the client's [`Outbox`],
//! which sends what the socket takes at once and leaves the rest to the
//! flusher thread, and a client that does not read what it is sent is
//! dropped (with the reason in the log) instead of stalling everyone. The
//! number of connections is bounded by the fd limit (see
//! [`max_connections`]).

use dmtcp_common::auth;
use dmtcp_common::proto::{self, Cmd, FromCoord, PeerInfo, Reply, Role, ToCoord};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Bytes that may wait for one client (two of the longest messages). A
/// client that lets more pile up is not reading and is dropped.
const MAX_QUEUED: usize = 2 * proto::MAX_LINE;
/// A client with bytes waiting that takes none of them for this long is
/// dropped. Processes of the job read their messages as they come (their
/// checkpoint thread waits on the coordinator), and the few small
/// messages a stopped process gets fit in the socket's buffer, so only a
/// client that asks for a lot and never reads gets here.
const STUCK_AFTER: Duration = Duration::from_secs(60);
/// Upper bound on connections, whatever the fd limit allows.
const MAX_CONNECTIONS: usize = 16384;
/// Descriptors kept for everything but connections (stdio, the listener,
/// the flusher's pipe, restart scripts being written).
const RESERVED_FDS: u64 = 32;
/// Stack of a connection's thread (it parses JSON and runs the handlers).
const CONN_STACK: usize = 512 << 10;

/// Problems worth reporting even with one `-q` (a dropped client).
fn warn(msg: std::fmt::Arguments) {
    dmtcp_common::log_warn!("{msg}");
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `send(2)` without blocking: the bytes the socket took (0 when full).
fn send_nowait(s: &TcpStream, b: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: sends from a live buffer of b.len() bytes on a socket
        // `s` keeps open; MSG_NOSIGNAL: no SIGPIPE.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                b.as_ptr().cast(),
                b.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// The sending side of one connection. Sending never blocks: what the
/// socket cannot take at once waits here and goes out from the flusher
/// thread as the client reads. A client that lets more than [`MAX_QUEUED`]
/// bytes pile up, or takes none of them for [`STUCK_AFTER`], is dropped:
/// its socket is shut down, so its reader sees the end and it leaves as
/// if it had disconnected.
struct Outbox {
    sock: Arc<TcpStream>,
    q: Mutex<OutQ>,
}

struct OutQ {
    buf: VecDeque<u8>,
    /// When bytes last went out while some were waiting.
    progress: Instant,
    /// The flusher has this outbox in its list.
    flushing: bool,
    /// Nothing is sent any more (dropped, or the client left).
    dead: bool,
    /// Who the client is, for the log.
    who: String,
}

impl Outbox {
    fn new(sock: Arc<TcpStream>, who: String) -> Arc<Outbox> {
        let q = OutQ {
            buf: VecDeque::new(),
            progress: Instant::now(),
            flushing: false,
            dead: false,
            who,
        };
        Arc::new(Outbox {
            sock,
            q: Mutex::new(q),
        })
    }

    fn set_who(&self, who: String) {
        lock(&self.q).who = who;
    }

    /// Send `m`, now or later; never blocks.
    fn send(self: &Arc<Self>, m: &FromCoord) {
        let line = match proto::encode(m) {
            Ok(l) => l,
            Err(e) => {
                let who = lock(&self.q).who.clone();
                warn(format_args!("not sending a message to {who}: {e}"));
                return;
            }
        };
        let mut q = lock(&self.q);
        if q.dead {
            return;
        }
        let mut rest = &line[..];
        if q.buf.is_empty() {
            match send_nowait(&self.sock, rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) => return self.drop_locked(&mut q, &format!("cannot send to it: {e}")),
            }
            if rest.is_empty() {
                return;
            }
            q.progress = Instant::now();
        }
        q.buf.extend(rest);
        if q.buf.len() > MAX_QUEUED {
            let n = q.buf.len();
            return self.drop_locked(
                &mut q,
                &format!("it does not read what it is sent ({n} bytes waiting)"),
            );
        }
        if !q.flushing {
            q.flushing = true;
            flusher().add(self.clone());
        }
    }

    /// Send what waits, as far as the socket takes it. True when nothing
    /// is left to send (all sent, or the client is gone).
    fn flush_locked(&self, q: &mut OutQ) -> bool {
        while !q.dead && !q.buf.is_empty() {
            let (a, _) = q.buf.as_slices();
            match send_nowait(&self.sock, a) {
                Ok(0) => break,
                Ok(n) => {
                    q.buf.drain(..n);
                    q.progress = Instant::now();
                }
                Err(e) => self.drop_locked(q, &format!("cannot send to it: {e}")),
            }
        }
        q.dead || q.buf.is_empty()
    }

    fn drop_locked(&self, q: &mut OutQ, why: &str) {
        if !q.dead {
            warn(format_args!("dropping {}: {why}", q.who));
        }
        q.dead = true;
        q.buf = VecDeque::new();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Drop the client, saying why in the log.
    fn drop_client(&self, why: &str) {
        let mut q = lock(&self.q);
        self.drop_locked(&mut q, why);
    }

    /// The client left: nothing more is sent.
    fn close(&self) {
        let mut q = lock(&self.q);
        q.dead = true;
        q.buf = VecDeque::new();
    }

    /// Wait until what waits is sent, or until `until` (before exiting).
    fn drain(&self, until: Instant) {
        loop {
            if self.flush_locked(&mut lock(&self.q)) {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: polls one live pollfd on a socket we keep open.
            unsafe { libc::poll(&mut p, 1, left.as_millis().clamp(1, 1000) as i32) };
        }
    }
}

/// Sends what outboxes could not send at once, as their clients read,
/// and drops the clients that stay stuck.
struct Flusher {
    new: Mutex<Vec<Arc<Outbox>>>,
    /// Pipe that wakes the flusher's poll when an outbox is added (-1: none,
    /// the flusher then looks every 50 ms).
    wake: [i32; 2],
}

fn flusher() -> &'static Flusher {
    static F: OnceLock<Flusher> = OnceLock::new();
    F.get_or_init(|| {
        let mut wake = [-1i32; 2];
        // SAFETY: pipe2 fills the two-int array.
        if unsafe { libc::pipe2(wake.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            wake = [-1, -1];
        }
        let r = std::thread::Builder::new()
            .name("dmtcp-flusher".into())
            .spawn(|| flusher().run());
        if let Err(e) = r {
            warn(format_args!(
                "cannot start the flusher thread: {e}; clients that read slowly will be dropped"
            ));
        }
        Flusher {
            new: Mutex::new(Vec::new()),
            wake,
        }
    })
}

impl Flusher {
    fn add(&self, o: Arc<Outbox>) {
        lock(&self.new).push(o);
        if self.wake[1] >= 0 {
            // SAFETY: writes one byte from a live buffer to our pipe (non-blocking: a full pipe already wakes the poll).
            unsafe { libc::write(self.wake[1], [1u8].as_ptr().cast(), 1) };
        }
    }

    fn run(&self) {
        let mut active: Vec<Arc<Outbox>> = Vec::new();
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        loop {
            active.append(&mut lock(&self.new));
            pfds.clear();
            pfds.push(libc::pollfd {
                fd: self.wake[0],
                events: libc::POLLIN,
                revents: 0,
            });
            pfds.extend(active.iter().map(|o| libc::pollfd {
                fd: o.sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            }));
            let timeout = if self.wake[0] >= 0 { 1000 } else { 50 };
            // SAFETY: polls a live array of pfds.len() pollfds (fd -1 is ignored).
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if pfds[0].revents != 0 {
                let mut sink = [0u8; 256];
                // SAFETY: reads into a live buffer from our non-blocking pipe.
                while unsafe { libc::read(self.wake[0], sink.as_mut_ptr().cast(), sink.len()) } > 0
                {
                }
            }
            active.retain(|o| {
                let mut q = lock(&o.q);
                if !o.flush_locked(&mut q) && q.progress.elapsed() >= STUCK_AFTER {
                    let why = format!(
                        "it has read nothing for {} s ({} bytes waiting)",
                        STUCK_AFTER.as_secs(),
                        q.buf.len()
                    );
                    o.drop_locked(&mut q, &why);
                }
                let keep = !q.dead && !q.buf.is_empty();
                q.flushing = keep;
                keep
            });
        }
    }
}

/// Reads a connection shared with its [`Outbox`] (one descriptor).
struct SockRead(Arc<TcpStream>);

impl Read for SockRead {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(b)
    }
}

/// How many connections this coordinator serves at once: what the fd
/// limit allows (its soft value raised to the hard one), minus
/// [`RESERVED_FDS`], at most [`MAX_CONNECTIONS`]. Each connection holds one
/// descriptor and one thread; one more is refused with a reason.
fn max_connections() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024 - RESERVED_FDS as usize;
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: setrlimit reads a live struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl = raised;
        }
    }
    let fds = if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    };
    (fds.saturating_sub(RESERVED_FDS).min(MAX_CONNECTIONS as u64) as usize).max(1)
}

/// Counts a connection while it lives.
struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        OPEN_CONNS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections open now (joined processes, tools, and connections still
/// in their challenge or `Hello`, such as a restarted process's while its
/// image is read back): with --exit-on-last, none may be open when the
/// coordinator exits.
static OPEN_CONNS: AtomicUsize = AtomicUsize::new(0);

/// With --exit-on-last: how long the coordinator stays after its last
/// process left. A tool that found it (`dmtcp_restart` right after the job
/// was killed, `dmtcp_launch`) connects for real a moment later; exiting
/// at once would refuse that connection (seen: the install test's restart
/// got "Coordinator not found ... Connection refused" from a coordinator
/// it had found alive).
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Turn a connection away with a reason (best effort, never blocks).
fn refuse(conn: TcpStream, reason: &str) {
    if let Ok(line) = proto::encode(&FromCoord::Refused {
        reason: reason.into(),
    }) {
        let _ = send_nowait(&conn, &line);
    }
    let _ = conn.shutdown(Shutdown::Write);
    // Whatever the client already sent is read away, so that closing sends
    // an orderly end (after the reason) rather than a reset.
    let _ = conn.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!((&conn).read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

fn accept_loop(sh: Shared, listener: TcpListener, secret: Arc<auth::Secret>) {
    let active = Arc::new(AtomicUsize::new(0));
    let max = max_connections();
    let mut refusing = false;
    let mut starved = false;
    loop {
        let (conn, addr) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: the connection stays in the
                // backlog; wait instead of spinning on it.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    if !starved {
                        warn(format_args!("cannot accept connections: {e}"));
                        starved = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        starved = false;
        if active.load(Ordering::SeqCst) >= max {
            if !refusing {
                warn(format_args!("too many connections ({max}, from the fd limit): refusing new ones until some close"));
                refusing = true;
            }
            refuse(
                conn,
                &format!("too many connections to this coordinator ({max})"),
            );
            continue;
        }
        refusing = false;
        let _ = conn.set_nodelay(true);
        active.fetch_add(1, Ordering::SeqCst);
        OPEN_CONNS.fetch_add(1, Ordering::SeqCst);
        let slot = ConnSlot(active.clone());
        let sh = sh.clone();
        let secret = secret.clone();
        let spawned = std::thread::Builder::new()
            .name("dmtcp-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _slot = slot;
                handle(sh, conn, addr, &secret)
            });
        // On failure the closure, with the connection, is dropped: closed.
        if let Err(e) = spawned {
            warn(format_args!(
                "cannot serve a connection from {addr}: no thread: {e}"
            ));
        }
    }
}

/// Coordinator settings.
#[derive(Clone, Debug, Default)]
pub struct CoordOpts {
    pub port: u16,
    pub port_file: Option<PathBuf>,
    pub ckpt_dir: Option<PathBuf>,
    pub exit_on_last: bool,
    pub kill_after_ckpt: bool,
    pub timeout: Option<u64>,
    pub interval: u32,
    pub quiet: u32,
    pub interactive: bool,
    /// Committed generations to keep (None: the default, 2; 0: all).
    pub keep_generations: Option<u32>,
    /// Seconds a round waits for every process to suspend (None: the
    /// default, [`DEFAULT_SUSPEND_TIMEOUT`]).
    pub suspend_timeout: Option<u64>,
    /// The secret file to use (`--secret-file`, `DMTCP_SECRET_FILE`):
    /// its secret when it exists, else a new one written to it.
    pub secret_file: Option<PathBuf>,
}

/// How long a round waits for its processes to suspend by default.
pub const DEFAULT_SUSPEND_TIMEOUT: u64 = 120;

struct Peer {
    info: PeerInfo,
    out: Arc<Outbox>,
    restarting: bool,
    /// Rounds given up before this process suspended (it was stopped, or
    /// slow): it still has their `DoCheckpoint` to read, and its barriers
    /// up to the "suspended" of each are answered `RoundFailed`.
    stale_rounds: u32,
    /// When this process last said anything (a message of any kind; while
    /// it writes its image, a `Writing` line every second).
    last_heard: Instant,
}

struct Round {
    participants: BTreeSet<u64>,
    started: Instant,
    /// Every participant is suspended: processes that connect from now on
    /// wait for the next round (before that, they join this one).
    suspended_done: bool,
    /// A participant disconnected before the round completed.
    lost: bool,
    done: BTreeMap<u64, Done>,
    /// Bytes of the images written so far.
    bytes: u64,
    kill_after: bool,
    waiters: Vec<Arc<Outbox>>,
    /// Set at the "checkpointed" barrier: the images replace the previous
    /// generation (true) or are thrown away.
    committing: Option<bool>,
    /// Set when a process stopped answering after the round's processes
    /// had suspended (see `give_up_stalled`): the round can no longer
    /// commit, and its waiters were already told why.
    stalled: Option<String>,
    /// The generation this round writes.
    generation: u32,
    /// Forked writers (forked checkpointing: a child of the process writes
    /// its image on a connection of its own), by the process they write for.
    writers: BTreeMap<u64, WriterLink>,
    /// Every participant reached "checkpointed": its state is captured
    /// (its image written, or its writer forked).
    captured: bool,
    /// Participants that wrote their image themselves and wait at
    /// "checkpointed" for the verdict while forked writers still write.
    await_verdict: BTreeSet<u64>,
}

/// A forked writer's connection.
struct WriterLink {
    out: Arc<Outbox>,
    /// Still connected.
    open: bool,
    /// The process it writes for, as it was when the round started (the
    /// process may exit before the generation is committed).
    info: PeerInfo,
    last_heard: Instant,
}

/// Are forked writers of the round's processes still at work?
fn writers_pending(r: &Round) -> bool {
    r.participants
        .iter()
        .any(|id| r.writers.get(id).is_some_and(|w| w.open) && !r.done.contains_key(id))
}

/// A participant whose forked writer went away without reporting its
/// image (killed, crashed) fails the round, named. Only once every
/// participant captured its state: before that, a process that could not
/// fork closes its writer's connection and reports its image itself.
fn note_dead_writers(r: &mut Round) {
    if !r.captured {
        return;
    }
    let dead: Vec<(u64, String)> = r
        .participants
        .iter()
        .filter(|id| !r.done.contains_key(id))
        .filter_map(|id| {
            let w = r.writers.get(id).filter(|w| !w.open)?;
            Some((
                *id,
                format!(
                    "the forked image writer of {} (pid {} on {}) exited before its image was written",
                    w.info.program, w.info.pid, w.info.hostname
                ),
            ))
        })
        .collect();
    for (id, msg) in dead {
        r.done.insert(
            id,
            Done {
                image: String::new(),
                bytes: 0,
                error: Some(msg),
                crc32: 0,
                header_crc: 0,
                via_writer: true,
                who: None,
            },
        );
    }
}

/// What a process reported at the end of its write.
struct Done {
    image: String,
    bytes: u64,
    error: Option<String>,
    crc32: u32,
    header_crc: u32,
    /// Reported by a forked writer (not on the process's connection).
    via_writer: bool,
    /// The process, as its writer's connection recorded it.
    who: Option<PeerInfo>,
}

struct State {
    peers: BTreeMap<u64, Peer>,
    next_id: u64,
    comp_id: Option<String>,
    generation: u32,
    interval: u32,
    round: Option<Round>,
    barriers: HashMap<String, BTreeSet<u64>>,
    expected_restart: u32,
    last_ckpt: Instant,
    /// With --exit-on-last: when the last process left (see EXIT_GRACE).
    last_gone: Option<Instant>,
    last_images: Vec<String>,
    /// Checkpoint directories images of this computation went to (and
    /// the coordinator's own): new generations are numbered above what
    /// they hold, and a failed round's leftovers are removed from them.
    known_dirs: BTreeSet<PathBuf>,
    /// Why the commit of the round under way failed.
    commit_error: Option<String>,
    /// The round's generation is committed; its names users know and the
    /// pruning of old generations are left for after the processes run
    /// again (commit::publish).
    unpublished: Option<crate::commit::Names>,
    ever_had_peers: bool,
    opts: CoordOpts,
    host: String,
    port: u16,
    quit: bool,
    /// The computation's name service: (db, key) -> value, in key order
    /// (`KvList` reads a range of it).
    kv: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    /// The last round's participants, from "committed" until each has
    /// run its resume hooks ("resumed"): their barriers are theirs alone
    /// (a process that joined meanwhile is not in them).
    resuming: Option<BTreeSet<u64>>,
    /// Checkpoint requests made while a round was resuming or its forked
    /// writers were still writing: (kill after, blocking waiters); the
    /// next round starts when both are over.
    deferred: Option<(bool, Vec<Arc<Outbox>>)>,
    /// A round whose processes went on while their forked writers write:
    /// it commits (or fails) when the last writer reports.
    pending: Option<Round>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn say(_st: &State, msg: std::fmt::Arguments) {
    dmtcp_common::log_info!("{msg}");
}

fn send_to(out: &Arc<Outbox>, m: &FromCoord) {
    out.send(m);
}

/// Run the coordinator until it is told to quit (or the last peer leaves with --exit-on-last).
pub fn run(opts: CoordOpts) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", opts.port))?;
    let port = listener.local_addr()?.port();
    // The secret is in its files before the port file says we listen.
    let (secret, own_file) = make_secret(&opts, port)?;
    let secret = Arc::new(secret);
    if let Some(f) = &opts.port_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{port}\n"))?;
        std::fs::rename(&tmp, f)?;
    }
    let st = State {
        peers: BTreeMap::new(),
        next_id: 1,
        comp_id: None,
        generation: 0,
        interval: opts.interval,
        round: None,
        barriers: HashMap::new(),
        expected_restart: 0,
        last_ckpt: Instant::now(),
        last_gone: None,
        last_images: Vec::new(),
        unpublished: None,
        known_dirs: opts.ckpt_dir.iter().cloned().collect(),
        commit_error: None,
        ever_had_peers: false,
        host: dmtcp_common::hostname(),
        port,
        opts: opts.clone(),
        quit: false,
        kv: BTreeMap::new(),
        resuming: None,
        deferred: None,
        pending: None,
    };
    say(&st, format_args!("listening on port {port}"));
    let shared: Shared = Arc::new((Mutex::new(st), Condvar::new()));
    {
        let sh = shared.clone();
        std::thread::spawn(move || ticker(sh));
    }
    if opts.interactive {
        let sh = shared.clone();
        std::thread::spawn(move || interactive(sh));
    }
    {
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("dmtcp-accept".into())
            .spawn(move || accept_loop(sh, listener, secret))?;
    }
    let (m, cv) = &*shared;
    let mut g = m.lock().unwrap();
    while !g.quit {
        g = cv.wait(g).unwrap();
    }
    // Let the last messages (Kill, replies) go out, within bounds.
    let outs: Vec<Arc<Outbox>> = g.peers.values().map(|p| p.out.clone()).collect();
    drop(g);
    let until = Instant::now() + Duration::from_secs(2);
    for o in outs {
        o.drain(until);
    }
    if let Some(f) = own_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

/// The computation's secret (docs/security.md): the one in
/// `--secret-file` when that file exists, else a new one (written to it).
/// It is also written to this user's file for the port,
/// [`auth::default_path`], which the tools of the same user on this
/// machine read; that file's path is returned (removed at exit).
fn make_secret(opts: &CoordOpts, port: u16) -> std::io::Result<(auth::Secret, Option<PathBuf>)> {
    let err = |m: String| std::io::Error::other(m);
    let secret = match &opts.secret_file {
        Some(f) if f.exists() => auth::read_file(f).map_err(err)?,
        Some(f) => {
            let s = auth::Secret::generate()?;
            auth::write_file(f, &s)
                .map_err(|e| err(format!("cannot write the secret file {}: {e}", f.display())))?;
            s
        }
        None => auth::Secret::generate()?,
    };
    let own = match auth::make_user_dir() {
        Ok(_) => {
            let p = auth::default_path(&dmtcp_common::hostname(), port);
            match auth::write_file(&p, &secret) {
                Ok(()) => Some(p),
                Err(e) => {
                    warn(format_args!(
                        "cannot write the secret file {}: {e}; clients need --secret-file",
                        p.display()
                    ));
                    None
                }
            }
        }
        Err(m) => {
            warn(format_args!("{m}; clients need --secret-file"));
            None
        }
    };
    Ok((secret, own))
}

/// Processes as a round's failure names them: "prog (pid P on host), ...".
fn named<'a>(peers: impl Iterator<Item = &'a Peer>) -> String {
    peers
        .map(|p| {
            format!(
                "{} (pid {} on {})",
                p.info.program, p.info.pid, p.info.hostname
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A round whose processes did not all suspend in time (one stopped with
/// SIGSTOP, or stuck before its checkpoint): give it up, naming them. No
/// process has written anything yet; those waiting at a barrier are told
/// to resume, the late ones are answered so when they get there, and the
/// computation goes on with its previous generation.
fn give_up_unsuspended(g: &mut State, secs: u64) {
    let Some(round) = g.round.take() else { return };
    let arrived = g.barriers.get("suspended").cloned().unwrap_or_default();
    let late: Vec<u64> = round
        .participants
        .iter()
        .filter(|id| !arrived.contains(id) && g.peers.contains_key(id))
        .copied()
        .collect();
    let msg = format!(
        "checkpoint failed: {} process(es) did not suspend within {secs} s (stopped, or stuck before the checkpoint): {}; the previous generation is kept and the computation goes on",
        late.len(),
        named(late.iter().filter_map(|id| g.peers.get(id)))
    );
    warn(format_args!("{msg}"));
    abandon_round(g, &round);
    // During a round every pending barrier is one of the round's.
    let waiting: BTreeSet<u64> = g.barriers.values().flatten().copied().collect();
    g.barriers.clear();
    for id in &round.participants {
        let Some(p) = g.peers.get_mut(id) else {
            continue;
        };
        if waiting.contains(id) {
            send_to(
                &p.out,
                &FromCoord::RoundFailed {
                    reason: msg.clone(),
                },
            );
        }
        if !arrived.contains(id) {
            p.stale_rounds += 1;
        }
    }
    let mut r = reply(g, false);
    r.message = Some(msg);
    for w in &round.waiters {
        send_to(w, &FromCoord::Reply(r.clone()));
    }
}

/// After every process of the round suspended: one that said nothing for
/// `secs` seconds while others wait at a barrier (stopped with SIGSTOP
/// while checkpointing, or stuck) makes the round fail, naming it. The
/// round's barriers go on (the others cannot go on without it: their
/// connections to it must be refilled, which needs its part), but the
/// round will not commit, and whoever waits for it is told now; when the
/// process goes on, the round ends as a failed one and the previous
/// generation stays.
fn give_up_stalled(g: &mut State, secs: u64) {
    let Some(round) = g.round.as_ref() else {
        return;
    };
    // The barrier some of the round's processes wait at.
    let Some((at, arrived)) = g.barriers.iter().find(|(_, a)| !a.is_empty()) else {
        return;
    };
    let limit = Duration::from_secs(secs);
    let late: Vec<&Peer> = round
        .participants
        .iter()
        .filter(|id| !arrived.contains(id) && !round.await_verdict.contains(id))
        .filter_map(|id| g.peers.get(id))
        .filter(|p| p.last_heard.elapsed() >= limit)
        .collect();
    if late.is_empty() {
        return;
    }
    let msg = format!(
        "checkpoint failed: {} process(es) stopped answering for {secs} s while the others waited at barrier {at} (stopped, or stuck while checkpointing): {}; the previous generation is kept; the computation waits for them (continue them with SIGCONT, or kill the job)",
        late.len(),
        named(late.iter().copied())
    );
    warn(format_args!("{msg}"));
    let mut r = reply(g, false);
    r.message = Some(msg.clone());
    if let Some(round) = g.round.as_mut() {
        round.stalled = Some(msg);
        for w in round.waiters.drain(..) {
            send_to(&w, &FromCoord::Reply(r.clone()));
        }
    }
}

/// Interval checkpoints, --timeout, suspend timeouts, and nothing else.
fn ticker(sh: Shared) {
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let (m, cv) = &*sh;
        let mut g = m.lock().unwrap();
        if let Some(t) = g.opts.timeout {
            if start.elapsed() >= Duration::from_secs(t) {
                say(&g, format_args!("timeout reached; quitting"));
                kill_all(&mut g);
                g.quit = true;
                cv.notify_all();
                return;
            }
        }
        if g.opts.exit_on_last {
            if !g.peers.is_empty() || g.round.is_some() || g.pending.is_some() {
                g.last_gone = None;
            } else if g.last_gone.is_some_and(|t| t.elapsed() >= EXIT_GRACE)
                && OPEN_CONNS.load(Ordering::SeqCst) == 0
            {
                say(
                    &g,
                    format_args!("last process gone; exiting (--exit-on-last)"),
                );
                g.quit = true;
                cv.notify_all();
                return;
            }
        }
        let limit = g.opts.suspend_timeout.unwrap_or(DEFAULT_SUSPEND_TIMEOUT);
        if g.round
            .as_ref()
            .is_some_and(|r| !r.suspended_done && r.started.elapsed() >= Duration::from_secs(limit))
        {
            give_up_unsuspended(&mut g, limit);
            cv.notify_all();
        }
        if g.round
            .as_ref()
            .is_some_and(|r| r.suspended_done && r.stalled.is_none())
        {
            give_up_stalled(&mut g, limit);
        }
        give_up_stalled_writers(&mut g, limit);
        let due = g.interval > 0 && g.last_ckpt.elapsed() >= Duration::from_secs(g.interval as u64);
        if due
            && g.round.is_none()
            && g.pending.is_none()
            && !g.peers.is_empty()
            && g.peers.values().all(|p| !p.restarting)
        {
            start_round(&mut g, false, None);
        }
    }
}

fn interactive(sh: Shared) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (m, cv) = &*sh;
        let mut g = m.lock().unwrap();
        match line.trim() {
            "c" => {
                if !start_round(&mut g, false, None) {
                    eprintln!("nothing to checkpoint");
                }
            }
            "s" => eprintln!("{}", status_text(&g)),
            "l" => eprintln!("{}", list_text(&g)),
            "k" => kill_all(&mut g),
            "q" => {
                kill_all(&mut g);
                g.quit = true;
                cv.notify_all();
            }
            "?" | "h" => eprintln!("Commands: l (list), s (status), c (checkpoint), k (kill all), q (kill all and quit), ? (help)"),
            "" => {}
            other => eprintln!("unknown command '{other}' (try ?)"),
        }
    }
}

/// The status text `dmtcp_command -s` prints.
fn status_text(g: &State) -> String {
    let r = reply(g, true);
    crate::command::status_text(&g.host, g.port, &r)
}

fn list_text(g: &State) -> String {
    crate::command::list_text(&reply(g, true))
}

fn running(g: &State) -> bool {
    !g.peers.is_empty() && g.round.is_none() && g.peers.values().all(|p| !p.restarting)
}

fn reply(g: &State, ok: bool) -> Reply {
    Reply {
        ok,
        status: if ok {
            "DMT_COORD_SUCCESS"
        } else {
            "DMT_COORD_ERROR"
        }
        .into(),
        num_peers: g.peers.len() as u32,
        running: running(g),
        interval: g.interval,
        comp_id: g.comp_id.clone().unwrap_or_default(),
        generation: g.generation,
        peers: g
            .peers
            .iter()
            .map(|(id, p)| {
                let mut i = p.info.clone();
                i.id = *id;
                i.state = if g
                    .round
                    .as_ref()
                    .is_some_and(|r| r.participants.contains(id))
                {
                    "CHECKPOINTING".into()
                } else if p.restarting {
                    "RESTARTING".into()
                } else {
                    "RUNNING".into()
                };
                i
            })
            .collect(),
        message: None,
        images: g.last_images.clone(),
    }
}

/// A process of the restart in progress ended before the restart was
/// complete (its restore failed, or its page server found its image
/// damaged and stopped it): the restart can never complete, and its other
/// processes would wait at its barriers for ever. Those that joined are
/// killed, with the reason. (One that joins later begins a restart of its
/// own, which waits for the rest; on the host of the damaged image the
/// page server stops them all: `lazy::stop_computation`.) Also when the
/// computation is killed during its restart. `what` happened, for the log.
fn abandon_restart(g: &mut State, what: &str) {
    let comp_id = g.comp_id.clone().unwrap_or_default();
    let why = format!(
        "{what} before the restart of computation {comp_id} (generation {}) was complete: \
         the restart is abandoned and its processes are stopped",
        g.generation
    );
    warn(format_args!("{why}"));
    g.expected_restart = 0;
    g.barriers.clear();
    for p in g.peers.values_mut() {
        p.restarting = false;
    }
    kill_all(g);
}

fn kill_all(g: &mut State) {
    for p in g.peers.values() {
        send_to(&p.out, &FromCoord::Kill);
    }
}

/// The library's own name-service entries (databases named `dmtcp:...`,
/// e.g. socket peers and restart addresses) are only good for one
/// checkpoint or one restart: forget them when a round starts and when the
/// computation empties (before a restart).
fn clear_internal_kv(g: &mut State) {
    g.kv.retain(|(db, _), _| !db.starts_with("dmtcp:"));
}

/// A name-service request (`KvPut`, `KvGet`, `KvList`) of a process or a
/// tool: its answer, None for a put (and for any other message).
fn name_service(kv: &mut BTreeMap<(String, Vec<u8>), Vec<u8>>, req: ToCoord) -> Option<FromCoord> {
    match req {
        ToCoord::KvPut { db, key, val } => {
            kv.insert((db, key), val);
            None
        }
        ToCoord::KvGet { db, key } => Some(FromCoord::KvValue {
            val: kv.get(&(db, key)).cloned(),
        }),
        ToCoord::KvList {
            db,
            prefix,
            after,
            max,
        } => Some(kv_list(kv, db, prefix, after, max)),
        _ => None,
    }
}

/// The answer to `KvList`: `db`'s entries whose key begins with `prefix`,
/// in key order, from the first after `after`, as many as make up `max`
/// bytes of records (8 bytes each besides key and value) and at most
/// `KV_LIST_MAX`, but at least one when any is left.
fn kv_list(
    kv: &BTreeMap<(String, Vec<u8>), Vec<u8>>,
    db: String,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    max: u32,
) -> FromCoord {
    use std::ops::Bound;
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded((db.clone(), a)),
        _ => Bound::Included((db.clone(), prefix.clone())),
    };
    let cap = (max as usize).min(proto::KV_LIST_MAX);
    let mut size = 0;
    let mut entries = Vec::new();
    for ((d, k), v) in kv.range((start, Bound::Unbounded)) {
        if *d != db || !k.starts_with(&prefix) {
            break;
        }
        let rec = 8 + k.len() + v.len();
        if !entries.is_empty() && size + rec > cap {
            break;
        }
        size += rec;
        entries.push((k.clone(), v.clone()));
    }
    FromCoord::KvEntries { entries }
}

/// Start a checkpoint round; false if there is nothing to checkpoint or one runs.
fn start_round(g: &mut State, kill_after: bool, waiter: Option<Arc<Outbox>>) -> bool {
    if g.resuming.is_some() || g.pending.is_some() {
        let d = g.deferred.get_or_insert((false, Vec::new()));
        d.0 |= kill_after;
        d.1.extend(waiter);
        return true;
    }
    if let Some(why) = g.round.as_ref().and_then(|r| r.stalled.clone()) {
        // This round cannot commit; say so now rather than at its end.
        if let Some(w) = waiter {
            let mut r = reply(g, false);
            r.message = Some(why);
            send_to(&w, &FromCoord::Reply(r));
        }
        return true;
    }
    if g.round.is_some() {
        if let (Some(w), Some(r)) = (waiter, g.round.as_mut()) {
            r.waiters.push(w);
            r.kill_after |= kill_after;
            return true;
        }
        return false;
    }
    if g.peers.is_empty() || g.peers.values().any(|p| p.restarting) {
        return false;
    }
    // Above every generation of this computation already in its
    // checkpoint directories (it may have been restarted from an older one).
    let comp = g.comp_id.clone().unwrap_or_default();
    let there = g
        .known_dirs
        .iter()
        .map(|d| dmtcp_common::generation::highest(d, &comp))
        .max()
        .unwrap_or(0);
    g.generation = g.generation.max(there) + 1;
    g.commit_error = None;
    g.last_ckpt = Instant::now();
    clear_internal_kv(g);
    let participants: BTreeSet<u64> = g.peers.keys().copied().collect();
    let n = participants.len() as u32;
    let gen = g.generation;
    let dir = g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string());
    say(
        g,
        format_args!("checkpoint generation {gen} of {n} process(es)"),
    );
    for p in g.peers.values() {
        send_to(
            &p.out,
            &FromCoord::DoCheckpoint {
                generation: gen,
                ckpt_dir: dir.clone(),
                num_peers: n,
                fork: true,
            },
        );
    }
    g.round = Some(Round {
        participants,
        started: Instant::now(),
        suspended_done: false,
        lost: false,
        done: BTreeMap::new(),
        bytes: 0,
        kill_after: kill_after || g.opts.kill_after_ckpt,
        waiters: waiter.into_iter().collect(),
        committing: None,
        stalled: None,
        generation: gen,
        writers: BTreeMap::new(),
        captured: false,
        await_verdict: BTreeSet::new(),
    });
    true
}

/// Who must reach a barrier: the round's participants, or every peer when restarting.
fn barrier_members(g: &State) -> (BTreeSet<u64>, u32) {
    match (&g.round, &g.resuming) {
        (Some(r), _) => (r.participants.clone(), r.participants.len() as u32),
        (None, Some(set)) => (set.clone(), set.len() as u32),
        (None, None) => (
            g.peers.keys().copied().collect(),
            g.expected_restart.max(g.peers.len() as u32),
        ),
    }
}

/// How many must reach a barrier ([`barrier_members`]' count, without
/// building the set: this is asked at every arrival).
fn barrier_need(g: &State) -> u32 {
    match (&g.round, &g.resuming) {
        (Some(r), _) => r.participants.len() as u32,
        (None, Some(set)) => set.len() as u32,
        (None, None) => g.expected_restart.max(g.peers.len() as u32),
    }
}

fn check_barriers(g: &mut State) {
    // Only barriers with enough arrivals are looked at member by member
    // (doing that at every arrival cost O(n^2) a barrier: 0.3 s for 4,096
    // processes, bench scale).
    let need = barrier_need(g);
    let names: Vec<String> = g
        .barriers
        .iter()
        .filter(|(_, reached)| reached.len() as u32 >= need)
        .map(|(name, _)| name.clone())
        .collect();
    for name in names {
        let (members, need) = barrier_members(g);
        let Some(reached) = g.barriers.get(&name) else {
            continue;
        };
        let reached_n = reached.len() as u32;
        if reached_n < need || !members.iter().all(|m| reached.contains(m)) {
            continue;
        }
        g.barriers.remove(&name);
        if name == "checkpointed" {
            decide_round(g, members);
            continue;
        }
        if name == "committed" {
            finish_round(g, members);
            continue;
        }
        if name == "suspended" {
            if let Some(r) = g.round.as_mut() {
                r.suspended_done = true;
            }
        }
        if name == "restarted" {
            g.expected_restart = 0;
            for p in g.peers.values_mut() {
                p.restarting = false;
            }
            say(
                g,
                format_args!("restart complete: {} process(es) running", g.peers.len()),
            );
        }
        for id in members {
            if let Some(p) = g.peers.get(&id) {
                send_to(
                    &p.out,
                    &FromCoord::BarrierDone {
                        name: name.clone(),
                        count: need.max(reached_n),
                        commit: false,
                    },
                );
            }
        }
        if name == "resumed" {
            end_resuming(g);
        }
    }
}

/// The last round's participants have all run their resume hooks (or
/// are gone): start the round requested meanwhile, if any.
fn end_resuming(g: &mut State) {
    g.resuming = None;
    start_deferred(g);
}

/// Start the round requested while the last one resumed or wrote, once
/// neither is the case any more.
fn start_deferred(g: &mut State) {
    if g.resuming.is_some() || g.pending.is_some() || g.round.is_some() {
        return;
    }
    let Some((kill, waiters)) = g.deferred.take() else {
        return;
    };
    if start_round(g, kill, None) {
        if let Some(r) = g.round.as_mut() {
            r.waiters.extend(waiters);
        }
    } else {
        let mut r = reply(g, false);
        r.message = Some("no processes to checkpoint".into());
        for w in &waiters {
            send_to(w, &FromCoord::Reply(r.clone()));
        }
    }
}

/// Did every participant of the round write its image?
fn round_ok(r: &Round) -> bool {
    let errors = r.done.values().any(|d| d.error.is_some());
    let images = r.done.values().any(|d| !d.image.is_empty());
    !errors && !r.lost && r.participants.len() == r.done.len() && images && r.stalled.is_none()
}

/// Every process of the round is past writing ("checkpointed"): tell them
/// whether their images replace the previous generation (all written) or
/// are thrown away, so a failed round never leaves a mixed set. The round
/// ends at the next barrier, "committed", when the renames are done.
///
/// With forked writers still at work the verdict has to wait: processes
/// whose writer was forked are answered now (their state is captured,
/// they go on), those that wrote their image themselves wait at this
/// barrier for it.
fn decide_round(g: &mut State, members: BTreeSet<u64>) {
    let Some(mut round) = g.round.take() else {
        return;
    };
    round.captured = true;
    note_dead_writers(&mut round);
    if writers_pending(&round) {
        for id in members {
            let forked =
                round.writers.contains_key(&id) && round.done.get(&id).is_none_or(|d| d.via_writer);
            if !forked {
                round.await_verdict.insert(id);
            } else if let Some(p) = g.peers.get(&id) {
                send_to(
                    &p.out,
                    &FromCoord::BarrierDone {
                        name: "checkpointed".into(),
                        count: 0,
                        commit: false,
                    },
                );
            }
        }
        g.round = Some(round);
        return;
    }
    round.await_verdict.extend(members);
    settle(g, &mut round);
    g.round = Some(round);
}

/// Every image of the round is in (written, or failed): commit the
/// generation or abandon the round, and give the verdict to the forked
/// writers and to the processes waiting for it at "checkpointed".
fn settle(g: &mut State, round: &mut Round) -> bool {
    let mut ok = round_ok(round);
    if ok {
        ok = commit_round(g, round);
    }
    if !ok {
        abandon_round(g, round);
    }
    round.committing = Some(ok);
    let verdict = FromCoord::BarrierDone {
        name: "checkpointed".into(),
        count: 0,
        commit: ok,
    };
    for w in round.writers.values().filter(|w| w.open) {
        send_to(&w.out, &verdict);
    }
    for id in std::mem::take(&mut round.await_verdict) {
        if let Some(p) = g.peers.get(&id) {
            send_to(&p.out, &verdict);
        }
    }
    ok
}

/// A forked writer reported or went away: settle the round it writes
/// for if that was the last image, and end it if its processes are
/// already back at work.
fn try_settle(g: &mut State) {
    if let Some(mut round) = g.round.take() {
        note_dead_writers(&mut round);
        if round.captured && round.committing.is_none() && !writers_pending(&round) {
            settle(g, &mut round);
        }
        g.round = Some(round);
    }
    if let Some(mut round) = g.pending.take() {
        note_dead_writers(&mut round);
        if round.committing.is_none() && !writers_pending(&round) {
            settle(g, &mut round);
        }
        if round.committing.is_some() {
            // (The committed generation's names published first.)
            let r = round_reply(g, &round);
            tell_settled(g, &round);
            for w in round.waiters.iter() {
                send_to(w, &FromCoord::Reply(r.clone()));
            }
            start_deferred(g);
        } else {
            g.pending = Some(round);
        }
    }
}

/// The round of `generation` a forked writer writes for (running, or
/// waiting for its writers).
fn writer_round(g: &mut State, generation: u32) -> Option<&mut Round> {
    if g.round.as_ref().is_some_and(|r| r.generation == generation) {
        g.round.as_mut()
    } else {
        g.pending.as_mut().filter(|r| r.generation == generation)
    }
}

/// The committed generation's names users know, and old generations
/// removed (commit::publish), with what the log says of it.
fn publish(g: &mut State) {
    let Some(names) = g.unpublished.take() else {
        return;
    };
    let gen = g.generation;
    let c = crate::commit::publish(names);
    for n in &c.notes {
        say(g, format_args!("generation {gen}: {n}"));
    }
    g.last_images = c.images;
    match c.script {
        Some(p) => say(
            g,
            format_args!(
                "checkpoint complete: generation {gen} committed; restart script {}",
                p.display()
            ),
        ),
        None => say(g, format_args!("checkpoint complete: generation {gen}")),
    }
}

/// Did the round commit, with every process still there at its end?
fn round_verdict(round: &Round) -> bool {
    round.committing.unwrap_or(false) && !round_lost(round)
}

/// Did a process of the round leave before it ended?
fn round_lost(round: &Round) -> bool {
    round.lost || round.participants.len() != round.done.len()
}

/// The answer to the round's waiters (`-bc`), said in the log too when
/// the round failed. The committed generation's names are published
/// first (the processes run again by now), so whoever asked finds them.
fn round_reply(g: &mut State, round: &Round) -> Reply {
    publish(g);
    let errors: Vec<String> = round
        .done
        .values()
        .filter_map(|d| d.error.clone())
        .chain(g.commit_error.clone())
        .collect();
    // The verdict given at "checkpointed" (a process lost after it spoils
    // the reply, not the generation already committed).
    let committed = round.committing.unwrap_or(false);
    let ok = round_verdict(round);
    let mut r = reply(g, ok);
    if committed {
        r.images = g.last_images.clone();
    }
    if !ok {
        r.message = Some(if committed {
            format!(
                "generation {} was committed, but a process exited before the round ended",
                round.generation
            )
        } else if round_lost(round) {
            "checkpoint failed: a process exited during the checkpoint; the previous generation is kept".into()
        } else {
            format!(
                "checkpoint failed: {}; the previous generation is kept",
                errors.join("; ")
            )
        });
        say(g, format_args!("{}", r.message.clone().unwrap_or_default()));
    }
    r
}

/// The round's processes go on past "committed" (told whether their
/// generation was committed: `commit`), or are killed for `-kc`.
fn release_members(g: &mut State, round: &Round, members: BTreeSet<u64>, commit: bool) {
    if !round.kill_after && !members.is_empty() {
        g.resuming = Some(members.clone());
    }
    for id in members {
        if let Some(p) = g.peers.get(&id) {
            let m = if round.kill_after {
                FromCoord::Kill
            } else {
                FromCoord::BarrierDone {
                    name: "committed".into(),
                    count: 0,
                    commit,
                }
            };
            send_to(&p.out, &m);
        }
    }
}

fn finish_round(g: &mut State, members: BTreeSet<u64>) {
    let Some(round) = g.round.take() else { return };
    if round.committing.is_none() && writers_pending(&round) && !members.is_empty() {
        // Forked writers still write: the processes go on (or, for -kc,
        // end), the round commits when its last writer reports.
        release_members(g, &round, members, false);
        g.pending = Some(round);
        return;
    }
    if round.committing.is_none() {
        // Every participant left before the round was decided.
        abandon_round(g, &round);
        let no = FromCoord::BarrierDone {
            name: "checkpointed".into(),
            count: 0,
            commit: false,
        };
        for w in round.writers.values().filter(|w| w.open) {
            send_to(&w.out, &no);
        }
    }
    // The processes run again first; then the names users know and the
    // pruning (serial file operations, many at scale: docs/storage.md)
    // and the answer to whoever asked for the checkpoint.
    let ok = round_verdict(&round);
    release_members(g, &round, members, ok);
    let r = round_reply(g, &round);
    if !round.writers.is_empty() {
        tell_settled(g, &round);
    }
    for w in round.waiters.iter() {
        send_to(w, &FromCoord::Reply(r.clone()));
    }
}

/// A round with forked writers is decided and its names published: tell
/// its processes how it ended (their forked rounds went on at "committed"
/// without knowing; a program waits in dmtcp_checkpoint() for this).
fn tell_settled(g: &State, round: &Round) {
    let settled = FromCoord::Settled {
        generation: round.generation,
        commit: round.committing == Some(true),
    };
    for id in &round.participants {
        if let Some(p) = g.peers.get(id) {
            send_to(&p.out, &settled);
        }
    }
}

/// Every process of the round wrote its image: commit the generation
/// (manifest, restart script, one rename; the top-level names and the old
/// generations come with the answer to the round's waiters, after the
/// processes run again: round_reply). False, with the reason kept for
/// the reply, if that fails.
fn commit_round(g: &mut State, round: &Round) -> bool {
    // In the order the processes first started (the time in their unique
    // id, kept across restarts), not the order they joined this
    // coordinator: after a restart the hosts' processes join in any order,
    // and the restart script's "i-th original host" must stay the same
    // (the launch host first).
    let mut keyed: Vec<((u64, String), crate::commit::Image)> = round
        .done
        .iter()
        .filter(|(_, d)| !d.image.is_empty())
        .map(|(id, d)| {
            // The process as its writer recorded it (it may be gone by now).
            let p = d.who.as_ref().or_else(|| g.peers.get(id).map(|p| &p.info));
            let uniq = p.map(|p| p.uniq_id.clone()).unwrap_or_default();
            let born = uniq
                .rsplit('-')
                .next()
                .and_then(|t| u64::from_str_radix(t, 16).ok())
                .unwrap_or(u64::MAX);
            let host = p
                .map(|p| p.hostname.clone())
                .unwrap_or_else(|| g.host.clone());
            let program = p.map(|p| p.program.clone()).unwrap_or_default();
            let im = crate::commit::Image {
                path: d.image.clone(),
                host,
                program,
                bytes: d.bytes,
                crc32: d.crc32,
                header_crc: d.header_crc,
            };
            ((born, uniq), im)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let images: Vec<crate::commit::Image> = keyed.into_iter().map(|(_, im)| im).collect();
    let comp = g.comp_id.clone().unwrap_or_default();
    let params = crate::commit::ScriptParams {
        coord_host: g.host.clone(),
        coord_port: g.port,
        interval: g.interval,
    };
    let keep = g
        .opts
        .keep_generations
        .unwrap_or(dmtcp_common::generation::DEFAULT_KEEP);
    let gen = g.generation;
    match crate::commit::commit_generation(&comp, gen, keep, &params, &images) {
        Ok(names) => {
            g.unpublished = Some(names);
            true
        }
        Err(e) => {
            let msg = format!("cannot commit generation {gen}: {e}");
            say(g, format_args!("{msg}"));
            g.commit_error = Some(msg);
            false
        }
    }
}

/// A round failed: what it wrote goes, the previous generation stays.
fn abandon_round(g: &State, round: &Round) {
    let comp = g.comp_id.clone().unwrap_or_default();
    let from_images = round.done.values().filter_map(|d| {
        Path::new(&d.image)
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
    });
    let dirs: BTreeSet<PathBuf> = g.known_dirs.iter().cloned().chain(from_images).collect();
    crate::commit::abandon(&comp, g.generation, dirs.iter().map(PathBuf::as_path));
}

/// What a worker said in its `Hello`.
struct Joiner {
    pid: i32,
    hostname: String,
    program: String,
    uniq_id: String,
    restarting: bool,
    comp_id: Option<String>,
    generation: u32,
    num_peers: u32,
}

/// Welcome a worker (a new one, or with `reuse` one that exec'd a new
/// program on its connection). A worker that arrives while a round waits for
/// its processes to suspend joins that round. None if it was refused.
fn join(g: &mut State, h: Joiner, out: Arc<Outbox>, reuse: Option<u64>) -> Option<u64> {
    if h.restarting {
        let cid = h.comp_id.clone().unwrap_or_default();
        let live_other = g.comp_id.as_ref().is_some_and(|c| c != &cid) && !g.peers.is_empty();
        if live_other {
            send_to(
                &out,
                &FromCoord::Refused {
                    reason: "this coordinator runs another computation".into(),
                },
            );
            return None;
        }
        if g.peers.is_empty() {
            g.comp_id = Some(cid);
            g.generation = h.generation;
            g.expected_restart = h.num_peers.max(1);
        }
    } else if g.comp_id.is_none() || g.peers.is_empty() && !g.ever_had_peers {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        g.comp_id = Some(format!("{:x}-{}-{now:x}", std::process::id(), g.port));
    }
    let id = reuse.unwrap_or_else(|| {
        g.next_id += 1;
        g.next_id - 1
    });
    g.ever_had_peers = true;
    let welcome = FromCoord::Welcome {
        comp_id: g.comp_id.clone().unwrap_or_default(),
        generation: g.generation,
        interval: g.interval,
        ckpt_dir: g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string()),
    };
    send_to(&out, &welcome);
    let Joiner {
        pid,
        hostname,
        program,
        uniq_id,
        restarting,
        ..
    } = h;
    let info = PeerInfo {
        id,
        program,
        pid,
        hostname,
        uniq_id,
        state: String::new(),
    };
    let dir = g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string());
    let gen = g.generation;
    if let Some(r) = g
        .round
        .as_mut()
        .filter(|r| !restarting && !r.suspended_done)
    {
        r.participants.insert(id);
        let n = r.participants.len() as u32;
        send_to(
            &out,
            &FromCoord::DoCheckpoint {
                generation: gen,
                ckpt_dir: dir,
                num_peers: n,
                fork: true,
            },
        );
    }
    let what = match (reuse.is_some(), restarting) {
        (true, _) => "exec'd",
        (false, true) => "restarted",
        (false, false) => "new",
    };
    say(g, format_args!("{what} process {id} (pid {pid}) connected"));
    out.set_who(format!("process {id} (pid {pid}, {})", info.program));
    g.peers.insert(
        id,
        Peer {
            info,
            out,
            restarting,
            stale_rounds: 0,
            last_heard: Instant::now(),
        },
    );
    Some(id)
}

/// Read one message; a protocol error (a line too long, not JSON) drops
/// the client with the reason in the log and reads as the end.
fn recv_or_drop(reader: &mut BufReader<SockRead>, out: &Outbox) -> Option<ToCoord> {
    match proto::recv(reader) {
        Ok(m) => m,
        Err(e) => {
            if proto::proto_error(&e).is_some() {
                out.drop_client(&e.to_string());
            }
            None
        }
    }
}

fn handle(sh: Shared, conn: TcpStream, addr: SocketAddr, secret: &auth::Secret) {
    // A connection from this machine is taken only from the coordinator's
    // own user (or root): another user could otherwise checkpoint, kill
    // or feed a forged restart to the job (docs/security.md).
    match crate::sockdiag::peer_owner(&conn) {
        crate::sockdiag::Owner::Elsewhere => {}
        crate::sockdiag::Owner::User(uid) => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if uid != me && uid != 0 {
                let who = crate::client::user_name(uid)
                    .map(|n| format!("{n}, uid {uid}"))
                    .unwrap_or_else(|| format!("uid {uid}"));
                warn(format_args!(
                    "refusing a connection from {addr} of another user ({who})"
                ));
                refuse(
                    conn,
                    &format!(
                        "this coordinator belongs to another user; connections from {who} are refused"
                    ),
                );
                return;
            }
        }
        crate::sockdiag::Owner::Unknown => {
            // Its messages are not read: a closed socket of another user
            // would read as root's. A probe that sent nothing (the tools
            // look for a coordinator that way) is not worth a log line.
            let _ = conn.set_nonblocking(true);
            if !matches!(conn.peek(&mut [0u8; 1]), Ok(0)) {
                warn(format_args!(
                    "refusing a connection from {addr}: it was closed before its user could be told"
                ));
            }
            return;
        }
    }
    // The challenge (docs/security.md): a fresh nonce, answered in the
    // Hello with HMAC-SHA256(secret, nonce).
    let nonce = match auth::random::<{ auth::LEN }>() {
        Ok(n) => n,
        Err(e) => {
            warn(format_args!(
                "refusing a connection from {addr}: no random bytes for its challenge: {e}"
            ));
            return;
        }
    };
    let challenge = FromCoord::Challenge {
        nonce: auth::hex(&nonce),
    };
    match proto::encode(&challenge) {
        Ok(line) if (&conn).write_all(&line).is_ok() => {}
        _ => return,
    }
    let sock = Arc::new(conn);
    let out = Outbox::new(sock.clone(), format!("client {addr}"));
    let mut reader = BufReader::new(SockRead(sock.clone()));
    let first = recv_or_drop(&mut reader, &out);
    let Some(ToCoord::Hello {
        role,
        pid,
        hostname,
        program,
        uniq_id,
        restarting,
        comp_id,
        generation,
        num_peers,
        auth: answer,
    }) = first
    else {
        return;
    };
    if !answer.as_deref().is_some_and(|a| secret.check(&nonce, a)) {
        // Nothing is said to the client: the connection is closed.
        warn(format_args!(
            "refusing a connection from {addr} ({program}, pid {pid}, host {hostname}): {} to the challenge",
            if answer.is_none() { "no answer" } else { "a wrong answer" }
        ));
        let _ = sock.shutdown(Shutdown::Both);
        return;
    }
    if role == Role::Command {
        out.set_who(format!("{program} (pid {pid}) from {addr}"));
        return handle_command(sh, reader, out);
    }
    if role == Role::Writer {
        out.set_who(format!(
            "forked image writer of {program} (pid {pid}) from {addr}"
        ));
        return handle_writer(sh, reader, out, &uniq_id, generation);
    }
    let (m, cv) = &*sh;
    let hello = Joiner {
        pid,
        hostname,
        program,
        uniq_id,
        restarting,
        comp_id,
        generation,
        num_peers,
    };
    let mut g = m.lock().unwrap();
    // A process that connects after every participant of a running round is
    // suspended waits for the round to end (it is not in that checkpoint).
    while !restarting && g.round.as_ref().is_some_and(|r| r.suspended_done) {
        g = cv
            .wait_timeout(g, std::time::Duration::from_millis(20))
            .unwrap()
            .0;
    }
    let Some(id) = join(&mut g, hello, out.clone(), None) else {
        return;
    };
    drop(g);
    loop {
        let msg = recv_or_drop(&mut reader, &out);
        let mut g = m.lock().unwrap();
        if let Some(p) = g.peers.get_mut(&id) {
            p.last_heard = Instant::now();
        }
        match msg {
            // Only a sign of life (see give_up_stalled).
            Some(ToCoord::Writing { .. }) => {}
            Some(ToCoord::Barrier { name }) => {
                if let Some(p) = g.peers.get_mut(&id).filter(|p| p.stale_rounds > 0) {
                    // A barrier of a round given up before this process
                    // suspended (see give_up_unsuspended).
                    if name == "suspended" {
                        p.stale_rounds -= 1;
                    }
                    send_to(
                        &p.out,
                        &FromCoord::RoundFailed {
                            reason:
                                "this checkpoint round was given up before the process suspended"
                                    .into(),
                        },
                    );
                    continue;
                }
                g.barriers.entry(name).or_default().insert(id);
                check_barriers(&mut g);
            }
            Some(ToCoord::CkptDone {
                image,
                bytes,
                error,
                crc32,
                header_crc,
            }) => {
                if let Some(top) = Path::new(&image).parent().and_then(Path::parent) {
                    g.known_dirs.insert(top.to_path_buf());
                }
                if let Some(r) = g.round.as_mut() {
                    let d = Done {
                        image,
                        bytes,
                        error,
                        crc32,
                        header_crc,
                        via_writer: false,
                        who: None,
                    };
                    if r.done.insert(id, d).is_none() {
                        r.bytes += bytes;
                    }
                    let p = FromCoord::Progress {
                        written: r.done.len() as u32,
                        total: r.participants.len() as u32,
                        bytes: r.bytes,
                    };
                    for w in &r.waiters {
                        send_to(w, &p);
                    }
                }
            }
            Some(ToCoord::RequestCkpt) => {
                start_round(&mut g, false, None);
            }
            Some(ToCoord::Hello {
                pid,
                hostname,
                program,
                uniq_id,
                restarting,
                comp_id,
                generation,
                num_peers,
                ..
            }) => {
                // The process exec'd a new program over the same connection.
                let hello = Joiner {
                    pid,
                    hostname,
                    program,
                    uniq_id,
                    restarting,
                    comp_id,
                    generation,
                    num_peers,
                };
                join(&mut g, hello, out.clone(), Some(id));
            }
            Some(
                req @ (ToCoord::KvPut { .. } | ToCoord::KvGet { .. } | ToCoord::KvList { .. }),
            ) => {
                if let Some(answer) = name_service(&mut g.kv, req) {
                    if let Some(p) = g.peers.get(&id) {
                        send_to(&p.out, &answer);
                    }
                }
            }
            Some(_) => {}
            None => {
                out.close();
                let gone = g.peers.remove(&id);
                if let Some(p) = gone.filter(|p| p.restarting && g.expected_restart > 0) {
                    let what = format!(
                        "process {} (pid {} on {}) ended",
                        p.info.program, p.info.pid, p.info.hostname
                    );
                    abandon_restart(&mut g, &what);
                }
                if g.peers.is_empty() {
                    clear_internal_kv(&mut g);
                }
                let suspended = g.barriers.get("suspended").is_some_and(|b| b.contains(&id));
                if let Some(set) = g.resuming.as_mut() {
                    set.remove(&id);
                    if set.is_empty() {
                        end_resuming(&mut g);
                    }
                }
                if let Some(r) = g.round.as_mut() {
                    // A process that exits before it is suspended is simply
                    // not part of this checkpoint; one lost later spoils it.
                    if r.participants.remove(&id) && (r.suspended_done || suspended) {
                        r.lost = true;
                    }
                }
                for set in g.barriers.values_mut() {
                    set.remove(&id);
                }
                say(&g, format_args!("process {id} disconnected"));
                if g.round.as_ref().is_some_and(|r| r.participants.is_empty()) {
                    let members = BTreeSet::new();
                    finish_round(&mut g, members);
                }
                check_barriers(&mut g);
                if g.peers.is_empty() && g.opts.exit_on_last && g.round.is_none() {
                    // The ticker exits once nobody came back (EXIT_GRACE).
                    g.last_gone = Some(Instant::now());
                }
                return;
            }
        }
    }
}

/// A forked writer's connection: it names the process it writes for (by
/// its unique id) and the round (by its generation), reports `Writing`
/// and `CkptDone` as that process would, and gets the round's verdict.
/// Its end without a report fails the round. It is not a process of the
/// job (no entry in the process table).
fn handle_writer(
    sh: Shared,
    mut reader: BufReader<SockRead>,
    out: Arc<Outbox>,
    uniq_id: &str,
    generation: u32,
) {
    let (m, _) = &*sh;
    let id = {
        let mut g = m.lock().unwrap();
        let peer = g
            .peers
            .iter()
            .find(|(_, p)| p.info.uniq_id == uniq_id)
            .map(|(id, p)| (*id, p.info.clone()));
        let welcome = FromCoord::Welcome {
            comp_id: g.comp_id.clone().unwrap_or_default(),
            generation: g.generation,
            interval: g.interval,
            ckpt_dir: g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string()),
        };
        let taken = match (peer, g.round.as_mut()) {
            (Some((id, info)), Some(r))
                if r.generation == generation && r.participants.contains(&id) && !r.captured =>
            {
                r.writers.insert(
                    id,
                    WriterLink {
                        out: out.clone(),
                        open: true,
                        info,
                        last_heard: Instant::now(),
                    },
                );
                Some(id)
            }
            _ => None,
        };
        match taken {
            Some(id) => {
                send_to(&out, &welcome);
                id
            }
            None => {
                send_to(
                    &out,
                    &FromCoord::Refused {
                        reason: format!(
                            "no checkpoint of generation {generation} is starting for this process"
                        ),
                    },
                );
                return;
            }
        }
    };
    loop {
        let msg = recv_or_drop(&mut reader, &out);
        let mut g = m.lock().unwrap();
        let g = &mut *g;
        let Some(round) = writer_round(g, generation) else {
            return;
        };
        let mine = round
            .writers
            .get(&id)
            .is_some_and(|w| Arc::ptr_eq(&w.out, &out));
        if !mine {
            return;
        }
        match msg {
            Some(ToCoord::Writing { .. }) => {
                if let Some(w) = round.writers.get_mut(&id) {
                    w.last_heard = Instant::now();
                }
            }
            Some(ToCoord::CkptDone {
                image,
                bytes,
                error,
                crc32,
                header_crc,
            }) => {
                let who = round.writers.get(&id).map(|w| w.info.clone());
                if round.done.contains_key(&id) {
                    continue;
                }
                round.done.insert(
                    id,
                    Done {
                        image: image.clone(),
                        bytes,
                        error,
                        crc32,
                        header_crc,
                        via_writer: true,
                        who,
                    },
                );
                round.bytes += bytes;
                let p = FromCoord::Progress {
                    written: round.done.len() as u32,
                    total: round.participants.len() as u32,
                    bytes: round.bytes,
                };
                for w in &round.waiters {
                    send_to(w, &p);
                }
                if let Some(top) = Path::new(&image).parent().and_then(Path::parent) {
                    g.known_dirs.insert(top.to_path_buf());
                }
                try_settle(g);
            }
            Some(_) => {}
            None => {
                if let Some(w) = round.writers.get_mut(&id) {
                    w.open = false;
                }
                try_settle(g);
                return;
            }
        }
    }
}

/// Forked writers that said nothing for `secs` seconds (stopped, or
/// stuck) fail their round, named: it then settles without them.
fn give_up_stalled_writers(g: &mut State, secs: u64) {
    let limit = Duration::from_secs(secs);
    let mut any = false;
    for round in g.round.iter_mut().chain(g.pending.iter_mut()) {
        if !round.captured {
            continue;
        }
        let late: Vec<u64> = round
            .writers
            .iter()
            .filter(|(id, w)| {
                w.open && !round.done.contains_key(id) && w.last_heard.elapsed() >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(w) = round.writers.get_mut(&id) else {
                continue;
            };
            w.open = false;
            let msg = format!(
                "the forked image writer of {} (pid {} on {}) said nothing for {secs} s (stopped, or stuck)",
                w.info.program, w.info.pid, w.info.hostname
            );
            warn(format_args!("{msg}"));
            let no = FromCoord::BarrierDone {
                name: "checkpointed".into(),
                count: 0,
                commit: false,
            };
            send_to(&w.out, &no);
            round.done.insert(
                id,
                Done {
                    image: String::new(),
                    bytes: 0,
                    error: Some(msg),
                    crc32: 0,
                    header_crc: 0,
                    via_writer: true,
                    who: None,
                },
            );
            any = true;
        }
    }
    if any {
        try_settle(g);
    }
}

/// A tool's connection: name-service lookups and updates (`dmtcp_restart`
/// re-making connections between hosts), then at most one command.
fn handle_command(sh: Shared, mut reader: BufReader<SockRead>, out: Arc<Outbox>) {
    let (m, cv) = &*sh;
    let cmd = loop {
        match recv_or_drop(&mut reader, &out) {
            Some(ToCoord::Command { cmd }) => break cmd,
            Some(
                req @ (ToCoord::KvPut { .. } | ToCoord::KvGet { .. } | ToCoord::KvList { .. }),
            ) => {
                if let Some(answer) = name_service(&mut m.lock().unwrap().kv, req) {
                    send_to(&out, &answer);
                }
            }
            _ => return,
        }
    };
    let mut g = m.lock().unwrap();
    let answer = |g: &State, ok: bool, msg: Option<&str>| {
        let mut r = reply(g, ok);
        r.message = msg.map(str::to_string);
        FromCoord::Reply(r)
    };
    match cmd {
        Cmd::Status | Cmd::List => send_to(&out, &answer(&g, true, None)),
        Cmd::Checkpoint => {
            let ok = start_round(&mut g, false, None);
            let r = answer(
                &g,
                ok,
                (!ok).then_some(
                    "no processes to checkpoint, or a checkpoint or restart is in progress",
                ),
            );
            send_to(&out, &r);
        }
        Cmd::BlockingCheckpoint | Cmd::KillAfterCheckpoint => {
            let kill = cmd == Cmd::KillAfterCheckpoint;
            if !start_round(&mut g, kill, Some(out.clone())) {
                let r = answer(
                    &g,
                    false,
                    Some("no processes to checkpoint, or a restart is in progress"),
                );
                send_to(&out, &r);
            }
        }
        Cmd::Kill => {
            let who = lock(&out.q).who.clone();
            if g.expected_restart > 0 {
                abandon_restart(&mut g, &format!("{who} killed the computation"));
            } else {
                say(
                    &g,
                    format_args!("killing the computation's processes (asked by {who})"),
                );
                kill_all(&mut g);
            }
            let r = answer(&g, true, None);
            send_to(&out, &r);
        }
        Cmd::Quit => {
            kill_all(&mut g);
            let r = answer(&g, true, None);
            send_to(&out, &r);
            out.drain(Instant::now() + Duration::from_secs(2));
            g.quit = true;
            cv.notify_all();
        }
        Cmd::Interval(n) => {
            g.interval = n;
            g.last_ckpt = Instant::now();
            let r = answer(&g, true, None);
            send_to(&out, &r);
        }
    }
}
