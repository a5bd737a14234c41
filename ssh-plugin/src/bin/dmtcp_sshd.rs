//! `dmtcp_sshd`: the remote side of an ssh session of the computation.
//!
//! `dmtcp_sshd --session ID -- 'cmd'` runs under dmtcp_launch (a process
//! of the computation): it runs `$SHELL -c 'cmd'` as its child, relays the
//! child's stdio to and from its own stdin/stdout (which lead to sshd:
//! claimed, never in an image) in frames, and sends the child's exit
//! status back. After a restart it listens on the abstract unix socket
//! `dmtcp-ssh-ID` of its host; `dmtcp_sshd --reconnect ID` (run by a fresh
//! ssh, outside the computation) hands it that ssh session's stdin, stdout
//! and stderr, and stays until the restored side is gone.

#[path = "../capi.rs"]
mod capi;
#[path = "../link.rs"]
mod link;
#[path = "../sys.rs"]
mod sys;

use link::{Dest, Out, Relay, Role, Source};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

static SESSION: Mutex<link::Name> = Mutex::new(link::Name::new());
/// The listener made at restart for the reconnecting ssh.
static LISTENER: AtomicI32 = AtomicI32::new(-1);
/// How long a restored side waits for its peer's new ssh.
const RECONNECT_WAIT_MS: i32 = 120_000;

extern "C" fn phase(p: libc::c_int) {
    match p {
        capi::PHASE_PRESUSPEND => link::CTL.presuspend(),
        capi::PHASE_RESUME => link::CTL.resume(false),
        capi::PHASE_RESTART_PUBLISH => {
            // Threads suspended: nothing here allocates.
            let Ok(session) = SESSION.lock() else { return };
            if let Ok(fd) = sys::listen_abstract(link::socket_name(session.as_bytes()).as_bytes()) {
                LISTENER.store(fd, Ordering::SeqCst);
                let mut host = link::Name::new();
                host.fill(sys::hostname_into);
                capi::kv_put(c"ssh", session.as_bytes(), host.as_bytes());
            }
        }
        capi::PHASE_RESTART_LOOKUP => link::CTL.resume(true),
        _ => {}
    }
}

struct Remote {
    child: i32,
    /// Child's stdout and stderr still open.
    open_outputs: u32,
    /// The unix connection to the throw-away reconnect helper.
    helper: RawFd,
}

impl Remote {
    /// When the command's outputs are closed and it has exited: send its status.
    fn reap(&mut self, r: &mut Relay) {
        if self.open_outputs > 0 || self.child <= 0 {
            return;
        }
        match sys::wait_child(self.child, true) {
            Ok(Some(Ok(code))) => r.send_i32(link::EXIT, code),
            Ok(Some(Err(sig))) => r.send_i32(link::KILLED, sig),
            Ok(None) => return,
            Err(_) => r.send_i32(link::EXIT, 255),
        }
        self.child = 0;
        r.closing = true;
    }
}

impl Role for Remote {
    fn frame(&mut self, r: &mut Relay, ty: u8, data: &[u8]) {
        match ty {
            link::STDIN => r.outs[0].send(data),
            link::EOF if data.first() == Some(&0) => r.outs[0].close_when_empty = true,
            link::SIGNAL => {
                let sig = i32::from_le_bytes(
                    data.get(..4)
                        .and_then(|d| d.try_into().ok())
                        .unwrap_or([0; 4]),
                );
                if self.child > 0 && sig > 0 {
                    sys::kill(self.child, sig);
                }
            }
            _ => {}
        }
    }
    fn source_eof(&mut self, r: &mut Relay, _idx: usize) {
        self.open_outputs = self.open_outputs.saturating_sub(1);
        self.reap(r);
    }
    fn wake(&mut self, r: &mut Relay) {
        link::take_signals();
        self.reap(r);
    }
    fn link_lost(&mut self, r: &mut Relay) {
        // The ssh client went away, as when plain ssh is killed: the
        // command loses its stdin and gets a hangup.
        r.outs[0].close_when_empty = true;
        r.outs[0].q = link::Queue::default();
        if self.child > 0 {
            sys::kill(self.child, libc::SIGHUP);
        }
        r.out_dead = true;
    }
    fn reconnect(&mut self, r: &mut Relay) -> std::io::Result<()> {
        let l = LISTENER.swap(-1, Ordering::SeqCst);
        if l < 0 {
            return Err(std::io::Error::other(
                "could not listen for the reconnecting ssh",
            ));
        }
        let mut p = [libc::pollfd {
            fd: l,
            events: libc::POLLIN,
            revents: 0,
        }];
        let ready = sys::poll(&mut p, RECONNECT_WAIT_MS);
        if !matches!(ready, Ok(1..)) {
            sys::close(l);
            return Err(std::io::Error::other("no ssh came back for this session"));
        }
        let conn = sys::accept(l);
        sys::close(l);
        let conn = conn?;
        let fds = sys::recv_fds(conn)?;
        for (k, fd) in fds.into_iter().enumerate() {
            let to = k as RawFd;
            sys::dup2(fd, to)?;
            sys::close(fd);
            capi::claim_fd(to);
        }
        if self.helper >= 0 {
            sys::close(self.helper);
        }
        capi::claim_fd(conn);
        self.helper = conn;
        r.relinked();
        Ok(())
    }
}

/// `--reconnect ID`: hand our stdin/stdout/stderr to the restored side,
/// then stay until it closes the connection (sshd keeps the session as
/// long as we run).
fn reconnect_helper(session: &str) -> i32 {
    let name = link::socket_name(session.as_bytes());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let conn = loop {
        match sys::connect_abstract(name.as_bytes()) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => {
                eprintln!("dmtcp_sshd: no restored session {session} on this host: {e}");
                return 1;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    if let Err(e) = sys::send_fds(conn, [0, 1, 2]) {
        eprintln!("dmtcp_sshd: cannot hand the session over: {e}");
        return 1;
    }
    if let Ok(null) = sys::open_devnull() {
        for fd in 0..3 {
            let _ = sys::dup2(null, fd);
        }
        sys::close(null);
    }
    let mut b = [0u8; 64];
    while let Ok(1..) = sys::read(conn, &mut b) {}
    0
}

fn main() {
    let m = clap::Command::new("dmtcp_sshd")
        .about("Remote side of an ssh session under DMTCP (started by dmtcp_ssh)")
        .arg(
            clap::Arg::new("session")
                .long("session")
                .value_name("ID")
                .help("Run the command for session ID"),
        )
        .arg(
            clap::Arg::new("reconnect")
                .long("reconnect")
                .value_name("ID")
                .conflicts_with("session")
                .help("Hand this ssh connection to the restored session ID"),
        )
        .arg(
            clap::Arg::new("command")
                .num_args(0..=1)
                .value_name("COMMAND")
                .help("The remote command (one shell string)"),
        )
        .get_matches();
    if let Some(id) = m.get_one::<String>("reconnect") {
        std::process::exit(reconnect_helper(id));
    }
    let Some(session) = m.get_one::<String>("session").cloned() else {
        eprintln!("dmtcp_sshd: --session or --reconnect is required");
        std::process::exit(2);
    };
    let command = m.get_one::<String>("command").cloned().unwrap_or_default();
    capi::disable_ckpt();
    for fd in 0..3 {
        capi::claim_fd(fd);
    }
    if let Ok(mut s) = SESSION.lock() {
        s.push(session.as_bytes());
    }
    capi::set_role(phase);
    sys::ignore_sigpipe();
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let mut cmd = Command::new(&shell);
    if command.is_empty() {
        let base = shell.rsplit('/').next().unwrap_or("sh");
        cmd.arg0(format!("-{base}"));
    } else {
        cmd.arg("-c").arg(&command);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: an empty pre-exec step: it only makes the child a fork (as
    // sshd's is), which the checkpointer follows into the computation.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("dmtcp_sshd: {shell}: {e}\n");
            let mut q = link::Queue::default();
            q.push_frame(link::STDERR, msg.as_bytes());
            q.push_frame(link::EXIT, &127i32.to_le_bytes());
            let mut r = Relay::new(0, 1).ok();
            if let Some(r) = r.as_mut() {
                r.linkq = q;
                r.closing = true;
                r.run(&mut Remote {
                    child: 0,
                    open_outputs: 0,
                    helper: -1,
                });
            }
            capi::enable_ckpt();
            std::process::exit(0);
        }
    };
    let cin = child.stdin.take().map(IntoRawFd::into_raw_fd).unwrap_or(-1);
    let cout = child
        .stdout
        .take()
        .map(IntoRawFd::into_raw_fd)
        .unwrap_or(-1);
    let cerr = child
        .stderr
        .take()
        .map(IntoRawFd::into_raw_fd)
        .unwrap_or(-1);
    let mut r = match Relay::new(0, 1) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmtcp_sshd: {e}");
            std::process::exit(255);
        }
    };
    r.outs.push(Out::new(cin));
    r.srcs.push(Source::new(cout, Dest::Link(link::STDOUT)));
    r.srcs.push(Source::new(cerr, Dest::Link(link::STDERR)));
    r.send(link::HELLO, &[]);
    sys::catch_signals(&[libc::SIGCHLD], link::on_signal);
    let mut remote = Remote {
        child: child.id() as i32,
        open_outputs: 2,
        helper: -1,
    };
    link::CTL.start();
    capi::enable_ckpt();
    r.run(&mut remote);
    r.flush_outputs();
}
