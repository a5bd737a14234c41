//! `dmtcp_srun --relay --srun SRUN -- ARGS`: srun's stand-in, exec'd by
//! the plugin in place of an srun that a process of the computation runs
//! (a batch script, OpenMPI's mpirun starting its orted daemons, hydra's
//! slurm launcher). It stays in the computation as that process's child,
//! so a restored parent finds its child alive, and runs the real srun
//! outside the computation with every task wrapped:
//!
//!     SRUN [srun options] dmtcp_launch --join-coordinator ... dmtcp_srun --task -- PROG ARGS
//!
//! Each task's parent (`--task`) connects back (a TCP connection between
//! processes of the computation, which the engine restores) and reports
//! the task's status. Until every task of the step has said hello (or
//! srun has ended), checkpoints are held off: no image shows a step that
//! was half started.
//!
//! Before a restart the stand-in waits for srun and exits with its status
//! (or dies of its signal); signals it gets (SIGINT, SIGTERM, SIGHUP,
//! SIGUSR1, SIGUSR2) go to srun, which passes them to the tasks. After a
//! restart srun is gone (the tasks were restored by the restart script's
//! per-node `dmtcp_restart`, not by an srun of ours): the stand-in learns
//! that from `waitpid` (its old child is no child of the restored
//! process) and then waits for the tasks' reports over the restored
//! connections, sends signals to them over the same connections, and
//! exits with the highest exit code (128+N for a task killed by signal N,
//! 255 for a task whose connection ended without a report).

use crate::step::{self, Frame, Reader};
use crate::sys;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Signals received and not yet forwarded (bit N: signal N).
static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if (1..64).contains(&sig) {
        PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
}

const FORWARDED: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

struct Task {
    link: TcpStream,
    frames: Reader,
    hello: bool,
    open: bool,
    status: Option<Result<i32, i32>>,
}

/// The coordinator's secret for the tasks (their library reads
/// DMTCP_SECRET_FILE): the one named already, else written 0600 into the
/// checkpoint directory as `dmtcp_launch srun` does (docs/batch.md).
fn secret_file() -> Option<(String, String)> {
    const VAR: &str = "DMTCP_SECRET_FILE";
    if std::env::var_os(VAR).is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let (Ok(dir), Ok(port)) = (
        std::env::var("DMTCP_CHECKPOINT_DIR"),
        std::env::var("DMTCP_COORD_PORT"),
    ) else {
        dmtcp_common::log_warn!(
            "no DMTCP_CHECKPOINT_DIR or DMTCP_COORD_PORT: srun's tasks on other nodes get no secret"
        );
        return None;
    };
    let host = std::env::var("DMTCP_COORD_HOST").unwrap_or_else(|_| "localhost".into());
    // The library's, else this user's file of the coordinator on this
    // host (where dmtcp_launch started it).
    let secret = match crate::capi::coordinator_secret() {
        Some(s) => dmtcp_common::auth::Secret(s),
        None => match port
            .parse()
            .ok()
            .and_then(|p| dmtcp_common::auth::find(None, &host, p).ok().flatten())
        {
            Some(s) => s,
            None => {
                dmtcp_common::log_warn!(
                    "no secret of the coordinator at {host}:{port}: srun's tasks on other nodes get none"
                );
                return None;
            }
        },
    };
    let f = Path::new(&dir).join(format!(".dmtcp-secret-{host}-{port}"));
    match dmtcp_common::auth::write_file(&f, &secret) {
        Ok(()) => Some((VAR.into(), f.display().to_string())),
        Err(e) => {
            dmtcp_common::log_warn!(
                "cannot write the coordinator's secret for srun's tasks to {}: {e}",
                f.display()
            );
            None
        }
    }
}

fn exit_with(st: Result<i32, i32>) -> ! {
    match st {
        Ok(c) => std::process::exit(c),
        Err(s) => sys::die_of(s),
    }
}

/// Run the step: `argv` are srun's arguments with the tasks wrapped.
pub fn run(srun: &Path, argv: &[String], env: Vec<(std::ffi::OsString, std::ffi::OsString)>) -> ! {
    sys::ignore_sigpipe();
    let mut listener = match TcpListener::bind("0.0.0.0:0").and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            dmtcp_common::log_error!("cannot listen for srun's tasks: {e}");
            std::process::exit(255);
        }
    };
    let port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or(0, |a| a.port());
    let token = dmtcp_common::auth::hex(&dmtcp_common::auth::random::<16>().unwrap_or_else(|e| {
        dmtcp_common::log_error!("no random token: {e}");
        std::process::exit(255)
    }));
    sys::catch_signals(&FORWARDED, on_signal);
    crate::capi::disable_ckpt();
    let mut cmd = Command::new(srun);
    cmd.args(argv)
        .env_clear()
        .envs(env)
        .env(step::ENV_RELAY, format!("{}:{port}", sys::hostname()))
        .env(step::ENV_TOKEN, &token);
    if let Some((k, v)) = secret_file() {
        cmd.env(k, v);
    }
    // Outside the computation: its environment does not preload us.
    let mut srun_pid = match cmd.spawn() {
        Ok(c) => Some(c.id() as i32),
        Err(e) => {
            crate::capi::enable_ckpt();
            dmtcp_common::log_error!("cannot run {}: {e}", srun.display());
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let mut launching = true;
    let mut ntasks: Option<u32> = None;
    let mut tasks: Vec<Task> = Vec::new();
    loop {
        let sigs = PENDING.swap(0, Ordering::SeqCst);
        for s in (1..64).filter(|s| sigs & (1 << s) != 0) {
            match srun_pid {
                Some(p) => sys::kill(p, s),
                None => {
                    for t in tasks.iter_mut().filter(|t| t.open) {
                        let _ = t.link.write_all(&Frame::Signal(s).encode());
                    }
                }
            }
        }
        if let Some(p) = srun_pid {
            match sys::wait_child(p, true) {
                Ok(None) => {}
                Ok(Some(st)) => {
                    if launching {
                        crate::capi::enable_ckpt();
                    }
                    exit_with(st);
                }
                // Restarted: our srun was not restored (it was never in
                // the computation); the tasks were.
                Err(_) => srun_pid = None,
            }
        }
        let hellos = tasks.iter().filter(|t| t.hello).count() as u32;
        if launching && (srun_pid.is_none() || ntasks.is_some_and(|n| hellos >= n)) {
            launching = false;
            // No more tasks will come: the port is closed before any
            // checkpoint, so no image holds a listener that a restart
            // would have to bind again (its port may be taken by then).
            listener = None;
            crate::capi::enable_ckpt();
        }
        if srun_pid.is_none() && !launching && tasks.iter().all(|t| !t.open) {
            let code = tasks
                .iter()
                .map(|t| match t.status {
                    Some(Ok(c)) => c,
                    Some(Err(s)) => 128 + s,
                    None => 255,
                })
                .max()
                .unwrap_or(0);
            std::process::exit(code);
        }
        let mut p: Vec<libc::pollfd> = listener
            .as_ref()
            .map(|l| l.as_raw_fd())
            .into_iter()
            .chain(tasks.iter().filter(|t| t.open).map(|t| t.link.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if sys::poll(&mut p, 100).unwrap_or(0) == 0 {
            continue;
        }
        while let Some(Ok((s, _))) = listener.as_ref().map(|l| l.accept()) {
            let _ = s.set_nonblocking(false);
            tasks.push(Task {
                link: s,
                frames: Reader::default(),
                hello: false,
                open: true,
                status: None,
            });
        }
        for t in tasks.iter_mut().filter(|t| t.open) {
            let fd = t.link.as_raw_fd();
            if !p.iter().any(|q| q.fd == fd && q.revents != 0) {
                continue;
            }
            let mut buf = [0u8; 256];
            match t.link.read(&mut buf) {
                Ok(0) | Err(_) => {
                    t.open = false;
                    if t.status.is_none() && t.hello {
                        dmtcp_common::log_warn!(
                            "the link to a task of the step ended without its status"
                        );
                    }
                    continue;
                }
                Ok(n) => t.frames.push(&buf[..n]),
            }
            while let Some(f) = t.frames.next_frame() {
                match f {
                    Ok(Frame::Hello {
                        token: tk,
                        ntasks: n,
                        ..
                    }) if !t.hello && tk == token.as_bytes() => {
                        t.hello = true;
                        ntasks = Some(n);
                    }
                    Ok(Frame::Exit(c)) if t.hello => t.status = Some(Ok(c)),
                    Ok(Frame::Killed(s)) if t.hello => t.status = Some(Err(s)),
                    // Not a task of this step.
                    _ => {
                        t.open = false;
                        break;
                    }
                }
            }
        }
        // Connections that were never ours go.
        tasks.retain(|t| t.open || t.hello);
    }
}
