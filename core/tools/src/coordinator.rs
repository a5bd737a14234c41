//! `dmtcp_coordinator`: tracks the processes of a computation, runs global
//! barriers, starts checkpoints (on command or on an interval) and writes
//! `dmtcp_restart_script.sh` after each complete checkpoint.

use dmtcp_common::proto::{self, Cmd, FromCoord, PeerInfo, Reply, Role, ToCoord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
}

struct Peer {
    info: PeerInfo,
    out: TcpStream,
    restarting: bool,
}

struct Round {
    participants: BTreeSet<u64>,
    /// Every participant is suspended: processes that connect from now on
    /// wait for the next round (before that, they join this one).
    suspended_done: bool,
    /// A participant disconnected before the round completed.
    lost: bool,
    done: BTreeMap<u64, (String, u64, Option<String>)>,
    kill_after: bool,
    waiters: Vec<TcpStream>,
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
    last_images: Vec<String>,
    ever_had_peers: bool,
    opts: CoordOpts,
    host: String,
    port: u16,
    quit: bool,
    /// The computation's name service: (db, key) -> value.
    kv: HashMap<(String, Vec<u8>), Vec<u8>>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn say(st: &State, msg: std::fmt::Arguments) {
    if st.opts.quiet == 0 {
        eprintln!("[dmtcp_coordinator] {msg}");
    }
}

fn send_to(out: &mut TcpStream, m: &FromCoord) {
    let _ = proto::send(out, m);
}

/// Run the coordinator until it is told to quit (or the last peer leaves with --exit-on-last).
pub fn run(opts: CoordOpts) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", opts.port))?;
    let port = listener.local_addr()?.port();
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
        last_images: Vec::new(),
        ever_had_peers: false,
        host: dmtcp_common::hostname(),
        port,
        opts: opts.clone(),
        quit: false,
        kv: HashMap::new(),
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
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let sh = sh.clone();
                std::thread::spawn(move || handle(sh, conn));
            }
        });
    }
    let (m, cv) = &*shared;
    let mut g = m.lock().unwrap();
    while !g.quit {
        g = cv.wait(g).unwrap();
    }
    Ok(())
}

/// Interval checkpoints, --timeout, and nothing else.
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
        let due = g.interval > 0 && g.last_ckpt.elapsed() >= Duration::from_secs(g.interval as u64);
        if due && g.round.is_none() && !g.peers.is_empty() && g.peers.values().all(|p| !p.restarting) {
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
        status: if ok { "DMT_COORD_SUCCESS" } else { "DMT_COORD_ERROR" }.into(),
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
                i.state = if g.round.as_ref().is_some_and(|r| r.participants.contains(id)) {
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

fn kill_all(g: &mut State) {
    for p in g.peers.values_mut() {
        send_to(&mut p.out, &FromCoord::Kill);
    }
}

/// The library's own name-service entries (databases named `dmtcp:...`,
/// e.g. socket peers and restart addresses) are only good for one
/// checkpoint or one restart: forget them when a round starts and when the
/// computation empties (before a restart).
fn clear_internal_kv(g: &mut State) {
    g.kv.retain(|(db, _), _| !db.starts_with("dmtcp:"));
}

/// Start a checkpoint round; false if there is nothing to checkpoint or one runs.
fn start_round(g: &mut State, kill_after: bool, waiter: Option<TcpStream>) -> bool {
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
    g.generation += 1;
    g.last_ckpt = Instant::now();
    clear_internal_kv(g);
    let participants: BTreeSet<u64> = g.peers.keys().copied().collect();
    let n = participants.len() as u32;
    let gen = g.generation;
    let dir = g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string());
    say(g, format_args!("checkpoint generation {gen} of {n} process(es)"));
    for p in g.peers.values_mut() {
        send_to(&mut p.out, &FromCoord::DoCheckpoint { generation: gen, ckpt_dir: dir.clone(), num_peers: n });
    }
    g.round = Some(Round {
        participants,
        suspended_done: false,
        lost: false,
        done: BTreeMap::new(),
        kill_after: kill_after || g.opts.kill_after_ckpt,
        waiters: waiter.into_iter().collect(),
    });
    true
}

/// Who must reach a barrier: the round's participants, or every peer when restarting.
fn barrier_members(g: &State) -> (BTreeSet<u64>, u32) {
    match &g.round {
        Some(r) => (r.participants.clone(), r.participants.len() as u32),
        None => (g.peers.keys().copied().collect(), g.expected_restart.max(g.peers.len() as u32)),
    }
}

fn check_barriers(g: &mut State) {
    let names: Vec<String> = g.barriers.keys().cloned().collect();
    for name in names {
        let (members, need) = barrier_members(g);
        let reached = &g.barriers[&name];
        let reached_n = reached.len() as u32;
        if reached_n < need || !members.iter().all(|m| reached.contains(m)) {
            continue;
        }
        g.barriers.remove(&name);
        if name == "checkpointed" {
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
            say(g, format_args!("restart complete: {} process(es) running", g.peers.len()));
        }
        for id in members {
            if let Some(p) = g.peers.get_mut(&id) {
                send_to(&mut p.out, &FromCoord::BarrierDone { name: name.clone(), count: need.max(reached_n) });
            }
        }
    }
}

fn finish_round(g: &mut State, members: BTreeSet<u64>) {
    let Some(mut round) = g.round.take() else { return };
    let errors: Vec<String> = round.done.values().filter_map(|d| d.2.clone()).collect();
    let images: Vec<String> = round.done.values().map(|d| d.0.clone()).filter(|s| !s.is_empty()).collect();
    let lost = round.lost || round.participants.len() != round.done.len();
    let ok = errors.is_empty() && !lost && !images.is_empty();
    let mut r = reply(g, ok);
    if ok {
        g.last_images = images.clone();
        r.images = images.clone();
        match write_restart_script(g, &images) {
            Ok(p) => say(g, format_args!("checkpoint complete; restart script {}", p.display())),
            Err(e) => say(g, format_args!("checkpoint complete, but the restart script failed: {e}")),
        }
    } else {
        r.message = Some(if lost {
            "a process exited during the checkpoint".into()
        } else {
            format!("checkpoint failed: {}", errors.join("; "))
        });
        say(g, format_args!("{}", r.message.clone().unwrap_or_default()));
    }
    for w in round.waiters.iter_mut() {
        send_to(w, &FromCoord::Reply(r.clone()));
    }
    for id in members {
        if let Some(p) = g.peers.get_mut(&id) {
            let m = if round.kill_after { FromCoord::Kill } else { FromCoord::BarrierDone { name: "checkpointed".into(), count: 0 } };
            send_to(&mut p.out, &m);
        }
    }
}

fn write_restart_script(g: &State, images: &[String]) -> std::io::Result<PathBuf> {
    let first = PathBuf::from(&images[0]);
    let dir = g
        .opts
        .ckpt_dir
        .clone()
        .or_else(|| first.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let comp = g.comp_id.clone().unwrap_or_default();
    let name = format!("dmtcp_restart_script_{comp}.sh");
    let restart_bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("dmtcp_restart")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "dmtcp_restart".into());
    let names: Vec<String> = images
        .iter()
        .map(|i| Path::new(i).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    let script = crate::script::render(&crate::script::ScriptInfo {
        comp_id: comp,
        generation: g.generation,
        coord_host: g.host.clone(),
        coord_port: g.port,
        interval: g.interval,
        restart_bin,
        ckpt_dir: dir.display().to_string(),
        images: names,
    });
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    let link = dir.join("dmtcp_restart_script.sh");
    let ltmp = dir.join(".dmtcp_restart_script.sh.tmp");
    let _ = std::fs::remove_file(&ltmp);
    std::os::unix::fs::symlink(&name, &ltmp)?;
    std::fs::rename(&ltmp, &link)?;
    Ok(path)
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
fn join(g: &mut State, h: Joiner, mut out: TcpStream, reuse: Option<u64>) -> Option<u64> {
    if h.restarting {
        let cid = h.comp_id.clone().unwrap_or_default();
        let live_other = g.comp_id.as_ref().is_some_and(|c| c != &cid) && !g.peers.is_empty();
        if live_other {
            send_to(&mut out, &FromCoord::Refused { reason: "this coordinator runs another computation".into() });
            return None;
        }
        if g.peers.is_empty() {
            g.comp_id = Some(cid);
            g.generation = h.generation;
            g.expected_restart = h.num_peers.max(1);
        }
    } else if g.comp_id.is_none() || g.peers.is_empty() && !g.ever_had_peers {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
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
    send_to(&mut out, &welcome);
    let Joiner { pid, hostname, program, uniq_id, restarting, .. } = h;
    let info = PeerInfo { id, program, pid, hostname, uniq_id, state: String::new() };
    let dir = g.opts.ckpt_dir.as_ref().map(|d| d.display().to_string());
    let gen = g.generation;
    if let Some(r) = g.round.as_mut().filter(|r| !restarting && !r.suspended_done) {
        r.participants.insert(id);
        let n = r.participants.len() as u32;
        send_to(&mut out, &FromCoord::DoCheckpoint { generation: gen, ckpt_dir: dir, num_peers: n });
    }
    let what = match (reuse.is_some(), restarting) {
        (true, _) => "exec'd",
        (false, true) => "restarted",
        (false, false) => "new",
    };
    say(g, format_args!("{what} process {id} (pid {pid}) connected"));
    g.peers.insert(id, Peer { info, out, restarting });
    Some(id)
}

fn handle(sh: Shared, conn: TcpStream) {
    let Ok(out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let first: Option<ToCoord> = proto::recv(&mut reader).ok().flatten();
    let Some(ToCoord::Hello { role, pid, hostname, program, uniq_id, restarting, comp_id, generation, num_peers }) = first else {
        return;
    };
    if role == Role::Command {
        return handle_command(sh, reader, out);
    }
    let (m, cv) = &*sh;
    let Ok(out2) = out.try_clone() else { return };
    let hello = Joiner { pid, hostname, program, uniq_id, restarting, comp_id, generation, num_peers };
    let mut g = m.lock().unwrap();
    // A process that connects after every participant of a running round is
    // suspended waits for the round to end (it is not in that checkpoint).
    while !restarting && g.round.as_ref().is_some_and(|r| r.suspended_done) {
        g = cv.wait_timeout(g, std::time::Duration::from_millis(20)).unwrap().0;
    }
    let Some(id) = join(&mut g, hello, out2, None) else { return };
    drop(g);
    loop {
        let msg: Option<ToCoord> = proto::recv(&mut reader).ok().flatten();
        let mut g = m.lock().unwrap();
        match msg {
            Some(ToCoord::Barrier { name }) => {
                g.barriers.entry(name).or_default().insert(id);
                check_barriers(&mut g);
            }
            Some(ToCoord::CkptDone { image, bytes, error }) => {
                if let Some(r) = g.round.as_mut() {
                    r.done.insert(id, (image, bytes, error));
                }
            }
            Some(ToCoord::RequestCkpt) => {
                start_round(&mut g, false, None);
            }
            Some(ToCoord::Hello { pid, hostname, program, uniq_id, restarting, comp_id, generation, num_peers, .. }) => {
                // The process exec'd a new program over the same connection.
                let Some(out2) = g.peers.get(&id).and_then(|p| p.out.try_clone().ok()) else { continue };
                let hello = Joiner { pid, hostname, program, uniq_id, restarting, comp_id, generation, num_peers };
                join(&mut g, hello, out2, Some(id));
            }
            Some(ToCoord::KvPut { db, key, val }) => {
                g.kv.insert((db, key), val);
            }
            Some(ToCoord::KvGet { db, key }) => {
                let val = g.kv.get(&(db, key)).cloned();
                if let Some(p) = g.peers.get_mut(&id) {
                    send_to(&mut p.out, &FromCoord::KvValue { val });
                }
            }
            Some(_) => {}
            None => {
                g.peers.remove(&id);
                if g.peers.is_empty() {
                    clear_internal_kv(&mut g);
                }
                let suspended = g.barriers.get("suspended").is_some_and(|b| b.contains(&id));
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
                    say(&g, format_args!("last process gone; exiting (--exit-on-last)"));
                    g.quit = true;
                    cv.notify_all();
                }
                return;
            }
        }
    }
}

fn handle_command(sh: Shared, mut reader: BufReader<TcpStream>, mut out: TcpStream) {
    let Some(ToCoord::Command { cmd }) = proto::recv(&mut reader).ok().flatten() else { return };
    let (m, cv) = &*sh;
    let mut g = m.lock().unwrap();
    let answer = |g: &State, ok: bool, msg: Option<&str>| {
        let mut r = reply(g, ok);
        r.message = msg.map(str::to_string);
        FromCoord::Reply(r)
    };
    match cmd {
        Cmd::Status | Cmd::List => send_to(&mut out, &answer(&g, true, None)),
        Cmd::Checkpoint => {
            let ok = start_round(&mut g, false, None);
            let r = answer(&g, ok, (!ok).then_some("no processes to checkpoint, or a checkpoint or restart is in progress"));
            send_to(&mut out, &r);
        }
        Cmd::BlockingCheckpoint | Cmd::KillAfterCheckpoint => {
            let kill = cmd == Cmd::KillAfterCheckpoint;
            let Ok(w) = out.try_clone() else { return };
            if !start_round(&mut g, kill, Some(w)) {
                let r = answer(&g, false, Some("no processes to checkpoint, or a restart is in progress"));
                send_to(&mut out, &r);
            }
        }
        Cmd::Kill => {
            kill_all(&mut g);
            let r = answer(&g, true, None);
            send_to(&mut out, &r);
        }
        Cmd::Quit => {
            kill_all(&mut g);
            let r = answer(&g, true, None);
            send_to(&mut out, &r);
            let _ = out.flush();
            g.quit = true;
            cv.notify_all();
        }
        Cmd::Interval(n) => {
            g.interval = n;
            g.last_ckpt = Instant::now();
            let r = answer(&g, true, None);
            send_to(&mut out, &r);
        }
    }
}
