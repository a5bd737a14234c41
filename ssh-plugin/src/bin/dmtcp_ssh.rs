//! `dmtcp_ssh`: the local side of an ssh session of the computation.
//!
//! The plugin turns `ssh [opts] host cmd...` into `dmtcp_ssh --ssh <ssh>
//! -- [opts] host cmd...`. This process (checkpointed) starts the real ssh
//! outside the checkpoint, with `dmtcp_launch ... dmtcp_sshd --session ID
//! -- 'cmd...'` as the remote command, relays stdin/stdout/stderr in
//! frames, and exits with the remote command's status. After a restart it
//! runs a fresh ssh to the host where dmtcp_sshd now lives, whose remote
//! side (`dmtcp_sshd --reconnect ID`) hands the new connection over.

#[path = "../capi.rs"]
mod capi;
#[path = "../link.rs"]
mod link;
#[path = "../sshargs.rs"]
mod sshargs;
#[path = "../sys.rs"]
mod sys;

use link::{Dest, Out, Relay, Role, Source};
use sshargs::{shell_quote, SshArgs};
use std::ffi::OsString;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The host the restarted dmtcp_sshd published (RESTART hook → main thread).
static NEW_HOST: Mutex<link::Name> = Mutex::new(link::Name::new());
/// This session's id (for the hook).
static SESSION: Mutex<link::Name> = Mutex::new(link::Name::new());

extern "C" fn phase(p: libc::c_int) {
    match p {
        capi::PHASE_PRESUSPEND => link::CTL.presuspend(),
        capi::PHASE_RESUME => link::CTL.resume(false),
        capi::PHASE_RESTART_LOOKUP => {
            // Threads suspended: nothing here allocates.
            if let (Ok(session), Ok(mut host)) = (SESSION.lock(), NEW_HOST.lock()) {
                host.fill(|b| capi::kv_get(c"ssh", session.as_bytes(), b).unwrap_or(0));
            }
            link::CTL.resume(true);
        }
        _ => {}
    }
}

/// The fds of a running real ssh, at fixed numbers in this process.
struct SshFds {
    to_ssh: RawFd,
    from_ssh: RawFd,
    err: RawFd,
}

/// Directory of our programs.
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `prog` as a path: itself if it has a slash, else found in PATH.
fn find_program(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The environment of a program outside the computation: LD_PRELOAD
/// without our libraries.
fn outside_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            if k == "LD_PRELOAD" {
                let kept: Vec<&str> = v
                    .to_str()
                    .unwrap_or("")
                    .split([':', ' '])
                    .filter(|p| !p.is_empty() && !p.contains("libdmtcp"))
                    .collect();
                return (!kept.is_empty()).then(|| (k, OsString::from(kept.join(":"))));
            }
            Some((k, v))
        })
        .collect()
}

/// Start the real ssh with `argv`; its stdin/stdout/stderr are pipes whose
/// other ends are returned (claimed: the engine leaves them to us).
fn spawn_ssh(ssh: &Path, argv: &[String]) -> std::io::Result<(i32, SshFds)> {
    let mut cmd = Command::new(ssh);
    cmd.args(argv)
        .env_clear()
        .envs(outside_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let to_ssh = child.stdin.take().map(IntoRawFd::into_raw_fd).unwrap_or(-1);
    let from_ssh = child
        .stdout
        .take()
        .map(IntoRawFd::into_raw_fd)
        .unwrap_or(-1);
    let err = child
        .stderr
        .take()
        .map(IntoRawFd::into_raw_fd)
        .unwrap_or(-1);
    for fd in [to_ssh, from_ssh, err] {
        sys::set_cloexec(fd);
        capi::claim_fd(fd);
    }
    Ok((
        child.id() as i32,
        SshFds {
            to_ssh,
            from_ssh,
            err,
        },
    ))
}

fn is_loopback(host: &str) -> bool {
    matches!(
        host,
        "localhost" | "localhost.localdomain" | "ip6-localhost"
    ) || host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
}

/// Where the remote side finds the coordinator: DMTCP_COORD_HOST unless it
/// is a loopback name, else our address on the way to `dest`, else our name.
fn coord_host_for(dest: &str) -> String {
    let h = std::env::var("DMTCP_COORD_HOST").unwrap_or_default();
    if !h.is_empty() && !is_loopback(&h) {
        return h;
    }
    use std::net::ToSocketAddrs;
    if let Ok(addrs) = (dest, 22).to_socket_addrs() {
        for a in addrs {
            let Ok(s) = std::net::UdpSocket::bind(if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
            else {
                continue;
            };
            if s.connect(a).is_ok() {
                if let Ok(l) = s.local_addr() {
                    if !l.ip().is_loopback() && !l.ip().is_unspecified() {
                        return l.ip().to_string();
                    }
                }
            }
        }
    }
    sys::hostname()
}

/// Is the InfiniBand plugin among the preloaded libraries (the local side
/// was launched with `--ib`)? The remote side then gets `--ib` too, or its
/// processes' verbs state would not survive a restart.
fn ib_preloaded(preload: &str) -> bool {
    preloaded(preload, "libdmtcp_ib.so")
}

/// Is the library `name` among the preloaded ones?
fn preloaded(preload: &str, name: &str) -> bool {
    preload
        .split([':', ' '])
        .any(|p| p.rsplit('/').next() == Some(name))
}

/// The `dmtcp_launch` options that give the remote side's processes the
/// checkpoint settings this side's have (from their environment, as
/// `get` reads it; the remote command does not inherit it): compression,
/// forked checkpointing, incremental images, open files' contents, the
/// suspend signal.
fn image_options(get: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let truthy = |v: &str| !matches!(v.trim(), "" | "0" | "no" | "false");
    let mut w: Vec<String> = Vec::new();
    if let Some(v) = get("DMTCP_GZIP") {
        w.push(if truthy(&v) { "--gzip" } else { "--no-gzip" }.into());
    }
    let forked = get("DMTCP_FORKED_CKPT").or_else(|| get("DMTCP_FORKED_CHECKPOINT"));
    // Unset or "auto": the remote side decides by its own memory too.
    match forked {
        Some(v) if v.trim().eq_ignore_ascii_case("auto") => {}
        Some(v) if truthy(&v) => w.push("--forked-ckpt".into()),
        Some(_) => w.push("--no-forked-ckpt".into()),
        None => {}
    }
    match get("DMTCP_INCREMENTAL") {
        Some(v) if !truthy(&v) => w.push("--no-incremental".into()),
        _ => {
            if let Some(n) = get("DMTCP_FULL_EVERY").filter(|n| n.parse::<u32>().is_ok()) {
                w.extend(["--full-every".into(), n]);
            }
        }
    }
    if get("DMTCP_CKPT_OPEN_FILES").is_some_and(|v| truthy(&v)) {
        w.push("--ckpt-open-files".into());
    }
    if let Some(n) = get("DMTCP_CKPT_SIGNAL").filter(|n| n.parse::<u32>().is_ok()) {
        w.extend(["--ckpt-signal".into(), n]);
    }
    w
}

/// The remote command: dmtcp_sshd under dmtcp_launch, joined to our coordinator.
/// With `secret`, dmtcp_launch reads the coordinator's secret from the
/// first line of the session's stream (`--secret-from-stdin`), never from
/// the command line.
fn remote_command(session: &str, host: &str, command: &str, secret: bool) -> String {
    let bin = bin_dir();
    let mut w: Vec<String> = vec![
        bin.join("dmtcp_launch").display().to_string(),
        "--join-coordinator".into(),
    ];
    if secret {
        w.push("--secret-from-stdin".into());
    }
    w.extend(["--coord-host".into(), coord_host_for(host)]);
    if let Ok(p) = std::env::var("DMTCP_COORD_PORT") {
        w.extend(["--coord-port".into(), p]);
    }
    if let Ok(d) = std::env::var("DMTCP_CHECKPOINT_DIR") {
        w.extend(["--ckptdir".into(), d]);
    }
    w.extend(image_options(|k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    }));
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    if ib_preloaded(&preload) {
        w.push("--ib".into());
    }
    // Likewise the KVM plugin (`--kvm`).
    if preloaded(&preload, "libdmtcp_kvm.so") {
        w.push("--kvm".into());
    }
    let quiet: u32 = std::env::var("DMTCP_QUIET")
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    w.extend((0..quiet.min(2)).map(|_| "-q".to_string()));
    w.extend([
        bin.join("dmtcp_sshd").display().to_string(),
        "--session".into(),
        session.into(),
        "--".into(),
        command.into(),
    ]);
    w.iter()
        .map(|s| shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Local {
    args: SshArgs,
    ssh: PathBuf,
    session: String,
    pid: i32,
    fds: SshFds,
    hello: bool,
    /// Exit status from the remote side: Ok(code) or Err(signal).
    status: Option<Result<i32, i32>>,
    /// Signals forwarded (to die of the same one).
    forwarded: Vec<i32>,
}

impl Local {
    fn hello(&mut self) {
        if !self.hello {
            self.hello = true;
            capi::enable_ckpt();
        }
    }
}

impl Role for Local {
    fn frame(&mut self, r: &mut Relay, ty: u8, data: &[u8]) {
        let v = || {
            i32::from_le_bytes(
                data.get(..4)
                    .and_then(|d| d.try_into().ok())
                    .unwrap_or([0; 4]),
            )
        };
        match ty {
            link::HELLO => self.hello(),
            link::STDOUT => r.outs[0].send(data),
            link::STDERR => r.outs[1].send(data),
            link::EXIT => {
                self.status = Some(Ok(v()));
                r.done = true;
            }
            link::KILLED => {
                self.status = Some(Err(v()));
                r.done = true;
            }
            _ => {}
        }
    }
    fn source_eof(&mut self, r: &mut Relay, idx: usize) {
        if idx == 0 && self.stdin_is_source() {
            r.send(link::EOF, &[0]);
        }
    }
    fn wake(&mut self, r: &mut Relay) {
        for s in link::take_signals() {
            if self.hello {
                r.send_i32(link::SIGNAL, s);
                self.forwarded.push(s);
            } else {
                sys::kill(self.pid, s);
            }
        }
    }
    fn link_lost(&mut self, r: &mut Relay) {
        r.done = true;
    }
    fn reconnect(&mut self, r: &mut Relay) -> std::io::Result<()> {
        let found = NEW_HOST
            .lock()
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        let host = if found.is_empty() {
            self.args.host()
        } else {
            found
        };
        let dest = self.args.dest_on(&host);
        let cmd = format!(
            "{} --reconnect {}",
            shell_quote(&bin_dir().join("dmtcp_sshd").display().to_string()),
            shell_quote(&self.session)
        );
        let (pid, fds) = spawn_ssh(&self.ssh, &self.args.argv_for(&dest, &cmd))?;
        // The new pipes go where the old ones were (held by /dev/null since the restart).
        for (new, old) in [
            (fds.to_ssh, self.fds.to_ssh),
            (fds.from_ssh, self.fds.from_ssh),
            (fds.err, self.fds.err),
        ] {
            sys::dup2(new, old)?;
            sys::close(new);
            sys::set_cloexec(old);
            capi::claim_fd(old);
        }
        self.pid = pid;
        r.relinked();
        let err_src = r.srcs.len() - 1;
        r.srcs[err_src] = Source::new(self.fds.err, Dest::Local(1));
        Ok(())
    }
}

impl Local {
    fn stdin_is_source(&self) -> bool {
        !self.args.no_stdin
    }
}

fn parse_cli() -> (PathBuf, Vec<String>) {
    let m = clap::Command::new("dmtcp_ssh")
        .about("Local side of an ssh session under DMTCP (run by the ssh plugin in place of ssh)")
        .arg(
            clap::Arg::new("ssh")
                .long("ssh")
                .value_name("PROGRAM")
                .default_value("ssh")
                .help("The ssh client to run"),
        )
        .arg(
            clap::Arg::new("args")
                .num_args(0..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .value_name("SSH ARGS")
                .help("ssh's arguments"),
        )
        .get_matches();
    let ssh = m
        .get_one::<String>("ssh")
        .cloned()
        .unwrap_or_else(|| "ssh".into());
    let args: Vec<String> = m
        .get_many::<String>("args")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let Some(path) = find_program(&ssh) else {
        eprintln!("dmtcp_ssh: {ssh}: command not found");
        std::process::exit(127);
    };
    (path, args)
}

/// Run plain ssh as asked (no relay possible): its status is ours.
fn exec_plain(ssh: &Path, args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let e = Command::new(ssh)
        .args(args)
        .env_clear()
        .envs(outside_env())
        .exec();
    eprintln!("dmtcp_ssh: cannot run {}: {e}", ssh.display());
    std::process::exit(255)
}

fn main() {
    let (ssh, raw) = parse_cli();
    let args = match SshArgs::parse(&raw) {
        Ok(a) => a,
        // Not a session we can relay (no host, -V, ...): plain ssh says why.
        Err(_) => exec_plain(&ssh, &raw),
    };
    if !capi::enabled() || !capi::set_role(phase) {
        exec_plain(&ssh, &raw);
    }
    sys::ignore_sigpipe();
    let session = format!(
        "{}-{}-{:x}",
        sys::hostname(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    if let Ok(mut s) = SESSION.lock() {
        s.push(session.as_bytes());
    }
    // No checkpoint until the remote side is up (or the session failed):
    // before that, bytes may sit where no image holds them.
    capi::disable_ckpt();
    let mut secret = capi::coordinator_secret();
    let remote = remote_command(
        &session,
        &args.host(),
        &args.command_string(),
        secret.is_some(),
    );
    let (pid, fds) = match spawn_ssh(&ssh, &args.argv_for(&args.dest, &remote)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dmtcp_ssh: cannot run {}: {e}", ssh.display());
            std::process::exit(255);
        }
    };
    // The secret goes first in the session's stream, before any frame.
    if let Some(s) = secret.as_mut() {
        let mut line = [b'\n'; 65];
        const D: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in s.iter().enumerate() {
            line[2 * i] = D[(b >> 4) as usize];
            line[2 * i + 1] = D[(b & 15) as usize];
        }
        let sent = sys::write_all(fds.to_ssh, &line);
        line.fill(0);
        s.fill(0);
        if let Err(e) = sent {
            eprintln!("dmtcp_ssh: cannot start the session: {e}");
            std::process::exit(255);
        }
    }
    let mut r = match Relay::new(fds.from_ssh, fds.to_ssh) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmtcp_ssh: {e}");
            std::process::exit(255);
        }
    };
    if args.no_stdin {
        r.send(link::EOF, &[0]);
        r.srcs.push(Source {
            fd: -1,
            dest: Dest::Link(link::STDIN),
            open: false,
        });
    } else {
        r.srcs.push(Source::new(0, Dest::Link(link::STDIN)));
    }
    r.outs.push(Out::new(1));
    r.outs.push(Out::new(2));
    r.srcs.push(Source::new(fds.err, Dest::Local(1)));
    sys::catch_signals(
        &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP],
        link::on_signal,
    );
    let mut local = Local {
        args,
        ssh,
        session,
        pid,
        fds,
        hello: false,
        status: None,
        forwarded: Vec::new(),
    };
    r.run(&mut local);
    // Once dmtcp_sshd said HELLO, only its EXIT or KILLED gives the
    // command's status: the real ssh's own status is dmtcp_sshd's (or,
    // after a restart, the reconnect helper's, 0 whatever became of the
    // command).
    let session_up = local.hello;
    local.hello();
    // ssh's own messages (it cannot connect, ...) after the relayed output.
    let err = local.fds.err;
    sys::set_nonblock(err, false);
    let mut buf = [0u8; 4096];
    if local.status.is_none() {
        while let Ok(n @ 1..) = sys::read(err, &mut buf) {
            r.outs[1].send(&buf[..n]);
        }
    }
    r.flush_outputs();
    // Our stdio is shared with the program that ran ssh: leave it blocking
    // as we found it.
    for fd in 0..3 {
        sys::set_nonblock(fd, false);
    }
    sys::close(local.fds.to_ssh);
    let ssh_status = sys::wait_child(local.pid, false).ok().flatten();
    // A session that was up and ended without the command's status lost
    // its remote side: 255, as ssh exits when its connection is lost.
    let status = if session_up {
        local.status
    } else {
        local.status.or(ssh_status)
    };
    match status {
        Some(Ok(code)) => std::process::exit(code),
        Some(Err(sig)) if local.forwarded.contains(&sig) => sys::die_of(sig),
        _ => std::process::exit(255),
    }
}

#[cfg(test)]
mod tests {
    use super::{ib_preloaded, image_options};

    fn opts(env: &[(&str, &str)]) -> Vec<String> {
        image_options(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_checkpoint_settings_go_to_the_remote_side() {
        assert!(opts(&[]).is_empty());
        assert_eq!(opts(&[("DMTCP_GZIP", "0")]), ["--no-gzip"]);
        assert_eq!(opts(&[("DMTCP_GZIP", "1")]), ["--gzip"]);
        assert_eq!(opts(&[("DMTCP_FORKED_CKPT", "1")]), ["--forked-ckpt"]);
        assert_eq!(
            opts(&[("DMTCP_FORKED_CHECKPOINT", "yes")]),
            ["--forked-ckpt"]
        );
        assert_eq!(opts(&[("DMTCP_FORKED_CKPT", "0")]), ["--no-forked-ckpt"]);
        assert!(opts(&[("DMTCP_FORKED_CKPT", "auto")]).is_empty());
        assert_eq!(
            opts(&[("DMTCP_INCREMENTAL", "0"), ("DMTCP_FULL_EVERY", "3")]),
            ["--no-incremental"]
        );
        assert_eq!(opts(&[("DMTCP_FULL_EVERY", "3")]), ["--full-every", "3"]);
        assert!(opts(&[("DMTCP_FULL_EVERY", "x")]).is_empty());
        assert_eq!(
            opts(&[("DMTCP_CKPT_OPEN_FILES", "1"), ("DMTCP_CKPT_SIGNAL", "10")]),
            ["--ckpt-open-files", "--ckpt-signal", "10"]
        );
    }

    #[test]
    fn the_ib_plugin_goes_to_the_remote_side() {
        assert!(ib_preloaded(
            "/x/libdmtcp.so:/x/libdmtcp_ssh.so:/x/libdmtcp_ib.so"
        ));
        assert!(ib_preloaded("/x/libdmtcp.so /x/libdmtcp_ib.so"));
        assert!(!ib_preloaded("/x/libdmtcp.so:/x/libdmtcp_ssh.so"));
        assert!(!ib_preloaded("/x/libdmtcp_ib.so.bak"));
        assert!(!ib_preloaded(""));
    }
}
