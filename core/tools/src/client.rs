//! Finding, joining and starting coordinators (shared by launch, restart
//! and command).

use dmtcp_common::env as E;
use std::net::TcpStream;
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
}

impl CoordAddr {
    /// Defaults from the environment.
    pub fn from_env() -> CoordAddr {
        CoordAddr {
            host: std::env::var(E::COORD_HOST).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "localhost".into()),
            port: std::env::var(E::COORD_PORT).ok().and_then(|p| p.parse().ok()).unwrap_or(E::DEFAULT_PORT),
            mode: CoordMode::Any,
            port_file: None,
            interval: std::env::var(E::CKPT_INTERVAL).ok().and_then(|p| p.parse().ok()),
        }
    }
}

/// Directory holding our programs (the running executable's).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("."))
}

fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0") || host == dmtcp_common::hostname()
}

/// Make sure a coordinator is reachable as `a` asks; may start one (which
/// exits with the last process). Returns the port in use.
pub fn ensure(a: &mut CoordAddr, tool: &str) -> Result<u16, String> {
    let reachable = |h: &str, p: u16| TcpStream::connect((h, p)).is_ok();
    match a.mode {
        CoordMode::Join => {
            if reachable(&a.host, a.port) {
                return Ok(a.port);
            }
            return Err(format!("Coordinator not found at {}:{} (--join-coordinator)", a.host, a.port));
        }
        CoordMode::Any if a.port != 0 && reachable(&a.host, a.port) => return Ok(a.port),
        _ => {}
    }
    if !is_local(&a.host) {
        return Err(format!("Coordinator not found at {}:{}, and it cannot be started on another host", a.host, a.port));
    }
    let port_file = a.port_file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dmtcp-port-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos()))
    });
    let _ = std::fs::remove_file(&port_file);
    let mut cmd = std::process::Command::new(bin_dir().join("dmtcp_coordinator"));
    cmd.arg("--exit-on-last").arg("-q").arg("--daemon").arg("-p").arg(a.port.to_string()).arg("--port-file").arg(&port_file);
    if let Some(i) = a.interval {
        cmd.arg("-i").arg(i.to_string());
    }
    cmd.stdin(std::process::Stdio::null());
    let st = cmd.status().map_err(|e| format!("{tool}: cannot start dmtcp_coordinator: {e}"))?;
    if !st.success() {
        // Another launcher may have just started one on the same port.
        if a.port != 0 && reachable(&a.host, a.port) {
            return Ok(a.port);
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
                a.host = if is_local(&a.host) { a.host.clone() } else { "localhost".into() };
                return Ok(p);
            }
        }
        if Instant::now() > deadline {
            return Err("the coordinator did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Parse one coordinator option shared by dmtcp_launch and dmtcp_restart
/// (`-h`, `-p`/`-pN`, `--port-file`, `-j`, `--new-coordinator`,
/// `--any-coordinator`, `-i`). Returns None when `arg` is not one of them.
pub fn coord_option(arg: &str, next: &mut dyn FnMut() -> Option<String>, a: &mut CoordAddr) -> Option<Result<(), String>> {
    let mut value = |name: &str| next().ok_or_else(|| format!("option {name} needs a value"));
    let r = match arg {
        "-h" | "--coord-host" | "--host" => value(arg).map(|v| a.host = v),
        "-p" | "--coord-port" | "--port" => value(arg).and_then(|v| v.parse().map(|p| a.port = p).map_err(|_| format!("bad port '{v}'"))),
        s if s.starts_with("-p") && s.len() > 2 && s[2..].chars().all(|c| c.is_ascii_digit()) => {
            a.port = s[2..].parse().unwrap_or(0);
            Ok(())
        }
        "--port-file" => value(arg).map(|v| a.port_file = Some(PathBuf::from(v))),
        "-j" | "--join-coordinator" | "--join" => {
            a.mode = CoordMode::Join;
            Ok(())
        }
        "--new-coordinator" => {
            a.mode = CoordMode::New;
            Ok(())
        }
        "--any-coordinator" => {
            a.mode = CoordMode::Any;
            Ok(())
        }
        "-i" | "--interval" => value(arg).and_then(|v| v.parse().map(|n| a.interval = Some(n)).map_err(|_| format!("bad interval '{v}'"))),
        _ => return None,
    };
    Some(r)
}
