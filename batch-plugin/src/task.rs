//! `dmtcp_srun --task -- PROG ARGS`: the parent of one task of a step that
//! a process of the computation started with srun. It runs on the task's
//! node under `dmtcp_launch --join-coordinator` (so it is a process of the
//! computation, checkpointed and restarted with the task), connects to
//! the relay (`DMTCP_SRUN_RELAY`, `DMTCP_SRUN_TOKEN` from srun's
//! environment, both taken out of the task's), starts the task as its
//! child, delivers the signals the relay sends, and reports the task's
//! exit status to the relay before it exits with the same status.
//!
//! Signals sent to this process itself (SIGINT, SIGTERM, SIGHUP, SIGUSR1,
//! SIGUSR2) are not forwarded: SLURM signals every process of the step,
//! the task included; this process only outlives them to report.

use crate::fork::spawn_forked;
use crate::step::{self, Frame, Reader};
use crate::sys;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

extern "C" fn ignore(_: libc::c_int) {}

fn env_u32(names: &[&str]) -> Option<u32> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.parse().ok())
}

/// Connect to the relay at `addr` (`host:port`), else at srun's node
/// address SLURM gives the task with the same port; retried for 10 s.
fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let port = addr.rsplit(':').next().unwrap_or("");
    let alt = std::env::var("SLURM_LAUNCH_NODE_IPADDR")
        .ok()
        .map(|ip| format!("{ip}:{port}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = TcpStream::connect(addr).or_else(|e| match &alt {
            Some(a) => TcpStream::connect(a.as_str()),
            None => Err(e),
        });
        match r {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn run(prog: &[String]) -> ! {
    let (Ok(addr), Ok(token)) = (
        std::env::var(step::ENV_RELAY),
        std::env::var(step::ENV_TOKEN),
    ) else {
        dmtcp_common::log_error!(
            "--task needs {} and {} (it is started by dmtcp_srun --relay through srun)",
            step::ENV_RELAY,
            step::ENV_TOKEN
        );
        std::process::exit(2);
    };
    if token.len() != step::TOKEN_LEN || prog.is_empty() {
        dmtcp_common::log_error!("--task: bad token or no program");
        std::process::exit(2);
    }
    sys::ignore_sigpipe();
    sys::catch_signals(
        &[
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ],
        ignore,
    );
    // No image may show this process before its link and its child exist.
    crate::capi::disable_ckpt();
    let mut link = match connect(&addr) {
        Ok(s) => s,
        Err(e) => {
            dmtcp_common::log_error!("cannot reach srun's stand-in at {addr}: {e}");
            std::process::exit(255);
        }
    };
    let mut t = [0u8; step::TOKEN_LEN];
    t.copy_from_slice(token.as_bytes());
    let hello = Frame::Hello {
        token: t,
        rank: env_u32(&["SLURM_PROCID"]).unwrap_or(0),
        ntasks: env_u32(&["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"]).unwrap_or(1),
    };
    if let Err(e) = link.write_all(&hello.encode()) {
        dmtcp_common::log_error!("cannot reach srun's stand-in at {addr}: {e}");
        std::process::exit(255);
    }
    let mut cmd = Command::new(&prog[0]);
    cmd.args(&prog[1..])
        .env_remove(step::ENV_RELAY)
        .env_remove(step::ENV_TOKEN);
    let child = match spawn_forked(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            dmtcp_common::log_error!("cannot run {}: {e}", prog[0]);
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let _ = link.write_all(&Frame::Exit(code).encode());
            std::process::exit(code);
        }
    };
    crate::capi::enable_ckpt();
    let pid = child.id() as i32;
    let fd = link.as_raw_fd();
    let mut frames = Reader::default();
    let mut link_open = true;
    let status = loop {
        match sys::wait_child(pid, true) {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                dmtcp_common::log_error!("the task {pid} is lost: {e}");
                break Ok(255);
            }
        }
        if !link_open {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut p = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        if sys::poll(&mut p, 100).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        match link.read(&mut buf) {
            Ok(0) | Err(_) => link_open = false,
            Ok(n) => {
                frames.push(&buf[..n]);
                while let Some(f) = frames.next_frame() {
                    match f {
                        Ok(Frame::Signal(s)) => sys::kill(pid, s),
                        _ => link_open = false,
                    }
                }
            }
        }
    };
    let report = match status {
        Ok(c) => Frame::Exit(c),
        Err(s) => Frame::Killed(s),
    };
    if link_open {
        let _ = link.write_all(&report.encode());
    }
    match status {
        Ok(c) => std::process::exit(c),
        Err(s) => sys::die_of(s),
    }
}
