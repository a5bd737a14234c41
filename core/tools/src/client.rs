//! Finding, joining and starting coordinators (shared by launch, restart
//! and command).

use dmtcp_common::env as E;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to find the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    /// Join one if running, else start one (the default).
    Any,
    /// Only join a running one.
    Join,
    /// Always start a new one.
    New,
}

/// Coordinator address and how to reach it.
#[derive(Clone, Debug)]
pub struct CoordAddr {
    pub host: String,
    pub port: u16,
    pub mode: CoordMode,
    pub port_file: Option<PathBuf>,
    pub interval: Option<u32>,
    /// Join a coordinator run by another user (`--allow-other-user-coordinator`).
    pub allow_other_user: bool,
}

impl CoordAddr {
    /// Defaults from the environment.
    pub fn from_env() -> CoordAddr {
        CoordAddr {
            host: std::env::var(E::COORD_HOST)
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".into()),
            port: std::env::var(E::COORD_PORT)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(E::DEFAULT_PORT),
            mode: CoordMode::Any,
            port_file: None,
            interval: std::env::var(E::CKPT_INTERVAL)
                .ok()
                .and_then(|p| p.parse().ok()),
            allow_other_user: false,
        }
    }
}

/// Directory holding our programs (the running executable's).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory of the preload library, the plugins and the restorer:
/// `<prefix>/lib/dmtcp` when the tools run from an installed `<prefix>/bin`
/// (scripts/install.sh), else the tools' own directory (a build tree).
pub fn lib_dir() -> PathBuf {
    let bin = bin_dir();
    match bin.parent().map(|p| p.join("lib/dmtcp")) {
        Some(l) if l.join("libdmtcp.so").is_file() => l,
        _ => bin,
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0")
        || host == dmtcp_common::hostname()
}

/// A TCP endpoint as the kernel's tables in /proc/net/tcp{,6} print it:
/// the address as 32-bit words in the machine's byte order, then the port.
fn proc_net_addr(a: &SocketAddr) -> String {
    let words: String = match a.ip() {
        IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{words}:{:04X}", a.port())
}

/// The same endpoint with an IPv4-mapped IPv6 address as plain IPv4.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The uid that owns the other end of `s`, when that end is on this
/// machine: the kernel's TCP tables show the owner of every local socket,
/// and the coordinator's end of our connection is the row whose local
/// address is our peer's and remote address ours (the kernel lists it from
/// the moment our SYN arrived, so it is there once connect returned). As a
/// fallback (SYN cookies), a socket listening on the loopback port.
/// None when the other end is on another machine or unknown.
pub fn local_peer_uid(s: &TcpStream) -> Option<u32> {
    let (me, peer) = (
        unmapped(s.local_addr().ok()?),
        unmapped(s.peer_addr().ok()?),
    );
    // One exact question to the kernel first: the table below has a row
    // for every socket of the machine (thousands after many short
    // connections, 10 ms to read).
    match crate::sockdiag::established_peer_uid(s) {
        Ok(Some(uid)) => return Some(uid),
        Ok(None) if !peer.ip().is_loopback() => return None,
        _ => {}
    }
    let (want_local, want_rem) = (proc_net_addr(&peer), proc_net_addr(&me));
    let port = format!(":{:04X}", peer.port());
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    let mut listener = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let uid = f[7].parse::<u32>().ok();
        if f[1] == want_local && f[2] == want_rem {
            return uid;
        }
        let wildcard =
            f[1].trim_end_matches(&port).bytes().all(|b| b == b'0') && f[1].ends_with(&port);
        if f[3] == "0A" && (f[1] == want_local || wildcard && peer.ip().is_loopback()) {
            listener = listener.or(uid);
        }
    }
    listener
}

/// The name of user `uid` from /etc/passwd, if it has one.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// Refuse the coordinator at the other end of `s` if another user runs it
/// on this machine (unless `--allow-other-user-coordinator`): it would be
/// able to checkpoint, kill and restart our processes, and tell them where
/// to write their images. DMTCP has no authentication; this only keeps a
/// user from joining someone else's coordinator by accident (the default
/// port is shared by everyone on the machine).
fn check_owner(s: &TcpStream, a: &CoordAddr) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match local_peer_uid(s) {
        Some(uid) if uid != me && !a.allow_other_user => {
            let who = user_name(uid)
                .map(|n| format!("{n}, uid {uid}"))
                .unwrap_or_else(|| format!("uid {uid}"));
            let mine = user_name(me)
                .map(|n| format!("{n}, uid {me}"))
                .unwrap_or_else(|| format!("uid {me}"));
            Err(format!(
                "the coordinator at {}:{} belongs to another user ({who}); you are {mine}. \
                 Start your own on another port (-p 0 picks a free one), \
                 or pass --allow-other-user-coordinator to join it anyway.",
                a.host, a.port
            ))
        }
        _ => Ok(()),
    }
}

/// Answer the challenge the coordinator at `host:port` starts the
/// connection `s` with (docs/security.md): the `auth` of our `Hello`. The
/// secret is the file `--secret-file`/`DMTCP_SECRET_FILE` names, else the
/// one the coordinator wrote for this user on this machine.
pub fn authenticate(s: &TcpStream, host: &str, port: u16) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let who = format!("{host}:{port}");
    dmtcp_common::auth::answer_challenge(s.as_raw_fd(), &who, || {
        secret_for(host, port)
            .map_err(|e| format!("the coordinator at {who} asked for its secret: {e}"))
    })
}

/// The secret `--secret-from-stdin` read.
static STDIN_SECRET: std::sync::Mutex<Option<dmtcp_common::auth::Secret>> =
    std::sync::Mutex::new(None);

/// The secret of the coordinator at `host:port`: the one read from
/// standard input (`--secret-from-stdin`), else [`dmtcp_common::auth::find`].
pub fn secret_for(host: &str, port: u16) -> Result<Option<dmtcp_common::auth::Secret>, String> {
    if let Some(s) = STDIN_SECRET.lock().ok().and_then(|s| s.clone()) {
        return Ok(Some(s));
    }
    dmtcp_common::auth::find(None, host, port)
}

/// `--secret-from-stdin` (dmtcp_launch, dmtcp_restart): the first line of
/// standard input is the coordinator's secret (64 hex digits), as the ssh
/// plugin's `dmtcp_ssh` and the restart script send it over ssh. Read
/// byte by byte: the rest of standard input is the program's.
pub fn secret_from_stdin() -> Result<(), String> {
    let mut line = Vec::with_capacity(130);
    loop {
        let mut b = 0u8;
        // SAFETY: reading one byte into our variable.
        let n = unsafe { libc::read(0, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        if n == 0 || b == b'\n' || line.len() > 128 {
            break;
        }
        line.push(b);
    }
    let s = std::str::from_utf8(&line)
        .ok()
        .and_then(dmtcp_common::auth::Secret::from_hex);
    line.fill(0);
    let s = s.ok_or("no secret (64 hex digits) on the first line of standard input")?;
    if let Ok(mut g) = STDIN_SECRET.lock() {
        *g = Some(s);
    }
    Ok(())
}

/// The secret options of a tool that joins a coordinator: `--secret-file`
/// (see [`use_secret_file`]) and, when given, `--secret-from-stdin`.
pub fn secret_options(m: &clap::ArgMatches) -> Result<(), String> {
    use_secret_file(m);
    if m.get_flag("secret_from_stdin") {
        secret_from_stdin().map_err(|e| format!("--secret-from-stdin: {e}"))?;
    }
    Ok(())
}

/// A tool's `--secret-file`: made the process's `DMTCP_SECRET_FILE`
/// (absolute), which every connection of the tool and the programs it
/// starts (a coordinator, dmtcp_restart) then use. Call before threads
/// are started.
pub fn use_secret_file(m: &clap::ArgMatches) {
    if let Some(p) = m.get_one::<PathBuf>("secret_file") {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        std::env::set_var(E::SECRET_FILE, p);
    }
}

/// The coordinator [`ensure`] found or started.
pub struct Ensured {
    pub port: u16,
    /// Started by this call (it waits for processes, and exits with the
    /// last one).
    pub started: bool,
}

/// Make sure a coordinator is reachable as `a` asks; may start one (which
/// exits with the last process). Returns the port in use. A coordinator of
/// another user on this machine is not joined (see [`check_owner`]).
pub fn ensure(a: &mut CoordAddr, tool: &str) -> Result<Ensured, String> {
    let found = |port| Ensured {
        port,
        started: false,
    };
    let reachable = |h: &str, p: u16| TcpStream::connect((h, p)).ok();
    match a.mode {
        CoordMode::Join => {
            if let Some(s) = reachable(&a.host, a.port) {
                check_owner(&s, a)?;
                return Ok(found(a.port));
            }
            return Err(format!(
                "Coordinator not found at {}:{} (--join-coordinator)",
                a.host, a.port
            ));
        }
        CoordMode::Any if a.port != 0 => {
            if let Some(s) = reachable(&a.host, a.port) {
                check_owner(&s, a)?;
                return Ok(found(a.port));
            }
        }
        _ => {}
    }
    if !is_local(&a.host) {
        return Err(format!(
            "Coordinator not found at {}:{}, and it cannot be started on another host",
            a.host, a.port
        ));
    }
    let port_file = a.port_file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "dmtcp-port-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ))
    });
    let _ = std::fs::remove_file(&port_file);
    let mut cmd = std::process::Command::new(bin_dir().join("dmtcp_coordinator"));
    cmd.arg("--exit-on-last")
        .arg("-q")
        .arg("--daemon")
        .arg("-p")
        .arg(a.port.to_string())
        .arg("--port-file")
        .arg(&port_file);
    if let Some(i) = a.interval {
        cmd.arg("-i").arg(i.to_string());
    }
    cmd.stdin(std::process::Stdio::null());
    let st = cmd
        .status()
        .map_err(|e| format!("{tool}: cannot start dmtcp_coordinator: {e}"))?;
    if !st.success() {
        // Another launcher may have just started one on the same port.
        if let Some(s) = reachable(&a.host, a.port).filter(|_| a.port != 0) {
            check_owner(&s, a)?;
            return Ok(found(a.port));
        }
        return Err(format!("cannot start a coordinator on port {}", a.port));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(&port_file) {
            if let Ok(p) = s.trim().parse::<u16>() {
                if a.port_file.is_none() {
                    let _ = std::fs::remove_file(&port_file);
                }
                a.port = p;
                a.host = if is_local(&a.host) {
                    a.host.clone()
                } else {
                    "localhost".into()
                };
                return Ok(Ensured {
                    port: p,
                    started: true,
                });
            }
        }
        if Instant::now() > deadline {
            return Err("the coordinator did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        let v4: SocketAddr = "127.0.0.1:7779".parse().unwrap();
        let want = if cfg!(target_endian = "little") {
            "0100007F:1E63"
        } else {
            "7F000001:1E63"
        };
        assert_eq!(proc_net_addr(&v4), want);
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let one = if cfg!(target_endian = "little") {
            "01000000"
        } else {
            "00000001"
        };
        assert_eq!(
            proc_net_addr(&v6),
            format!("000000000000000000000000{one}:0050")
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(
            unmapped(mapped),
            "127.0.0.1:1".parse::<SocketAddr>().unwrap()
        );
    }

    /// Our own listener, found through the kernel's table, is ours.
    #[test]
    fn peer_uid_of_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(local_peer_uid(&s), Some(unsafe { libc::geteuid() }));
    }
}
