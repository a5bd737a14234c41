//! `dmtcp_launch` (and its old name `dmtcp_checkpoint`): run a program under
//! checkpoint control.

use crate::client::{self, CoordAddr, CoordMode};
use dmtcp_common::env as E;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

const USAGE: &str = "Usage: dmtcp_launch [OPTIONS] <command> [args...]
Start a process under DMTCP control.

Connecting to the coordinator:
  -h, --coord-host HOST   Hostname of the coordinator (env DMTCP_COORD_HOST, default localhost)
  -p, --coord-port PORT   Port of the coordinator (env DMTCP_COORD_PORT, default 7779; 0 = any free port)
  --port-file FILE        File to write the port number to (with --new-coordinator and -p 0)
  -j, --join-coordinator  Join an existing coordinator; fail if there is none
  --new-coordinator       Start a new coordinator, fail if one runs on the port
  --any-coordinator       Join a running coordinator, or start one (default)
  --allow-other-user-coordinator
                          Join a coordinator that another user runs on this machine
                          (refused by default)
  -i, --interval SECS     Checkpoint every SECS seconds (env DMTCP_CHECKPOINT_INTERVAL, 0 = manual)

Checkpoint images:
  -c, --ckptdir DIR       Where to write images (env DMTCP_CHECKPOINT_DIR, default: current directory)
  --gzip, --no-gzip       Compress images (env DMTCP_GZIP, default: compress, with zstd)
  --ckpt-signal N         Signal used to suspend threads (default 12, SIGUSR2)
  --ckpt-open-files       Save the contents of open regular files in the images and
                          put them back at restart (env DMTCP_CKPT_OPEN_FILES)

Plugins:
  --with-plugin A.so[:B.so] Load plugins (absolute paths; env DMTCP_PLUGIN)
  --ib                    Load the InfiniBand plugin (libdmtcp_ib.so): verbs programs
                          survive a checkpoint and restart
  --disable-<name>-plugin Disable an internal plugin (process, event, pty, file,
                          socket, sysv, timers)
  --disable-ssh-plugin    Leave ssh alone (by default, ssh sessions started by the
                          program are part of the computation: libdmtcp_ssh.so)

Other:
  -t, --tmpdir DIR        Directory for temporary files (env DMTCP_TMPDIR)
  -q, --quiet             Less output (twice: only errors; env DMTCP_QUIET)
  --help                  Print this message and exit
  --version               Print the version and exit";

/// Entry point; `alias` is the name it was called by.
pub fn main(args: Vec<String>, alias: &str) -> i32 {
    if alias == "dmtcp_checkpoint" {
        eprintln!("dmtcp_checkpoint: this name is deprecated since DMTCP 2.0; use dmtcp_launch (same options).");
    }
    let mut a = CoordAddr::from_env();
    let mut ckpt_dir: Option<PathBuf> = std::env::var(E::CKPT_DIR).ok().filter(|s| !s.is_empty()).map(PathBuf::from);
    let mut gzip: Option<bool> = None;
    let mut signal: Option<i32> = None;
    let mut quiet: u32 = std::env::var(E::QUIET).ok().and_then(|q| q.parse().ok()).unwrap_or(0);
    let mut disabled: Vec<String> = Vec::new();
    let mut ssh_plugin = true;
    let mut tmpdir: Option<String> = None;
    let mut plugins: Vec<String> = std::env::var(E::PLUGIN)
        .ok()
        .map(|v| v.split(':').filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let mut it = args.into_iter().skip(1).peekable();
    let bad = |m: String| {
        eprintln!("{alias}: {m}\n\n{USAGE}");
        1
    };
    let mut prog: Vec<String> = Vec::new();
    let mut ib = false;
    while let Some(arg) = it.next() {
        if let Some(r) = client::coord_option(&arg, &mut || it.next(), &mut a) {
            if let Err(m) = r {
                return bad(m);
            }
            continue;
        }
        let mut value = |name: &str| it.next().ok_or_else(|| format!("option {name} needs a value"));
        let r: Result<(), String> = match arg.as_str() {
            "--help" => {
                println!("{USAGE}");
                return 0;
            }
            "--version" => {
                println!("dmtcp_launch (DMTCP-rs) {}", dmtcp_common::VERSION);
                return 0;
            }
            "--" => {
                prog.extend(it.by_ref());
                break;
            }
            "-c" | "--ckptdir" => value(&arg).map(|v| ckpt_dir = Some(PathBuf::from(v))),
            "--gzip" => {
                gzip = Some(true);
                Ok(())
            }
            "--no-gzip" => {
                gzip = Some(false);
                Ok(())
            }
            "--ckpt-signal" => value(&arg).and_then(|v| match v.parse::<i32>() {
                Ok(n) if (1..=64).contains(&n) && n != 9 && n != 19 => {
                    signal = Some(n);
                    Ok(())
                }
                _ => Err(format!("bad signal number '{v}'")),
            }),
            "-t" | "--tmpdir" => value(&arg).map(|v| tmpdir = Some(v)),
            "--ckpt-open-files" => {
                std::env::set_var(E::CKPT_OPEN_FILES, "1");
                Ok(())
            }
            "--with-plugin" => value(&arg).map(|v| plugins.extend(v.split(':').filter(|s| !s.is_empty()).map(str::to_string))),
            "--ib" | "--infiniband" => {
                ib = true;
                Ok(())
            }
            "-q" | "--quiet" => {
                quiet += 1;
                Ok(())
            }
            "--disable-ssh-plugin" => {
                ssh_plugin = false;
                Ok(())
            }
            s if s.starts_with("--disable-") && s.ends_with("-plugin") && s.len() > 17 => {
                disabled.push(s["--disable-".len()..s.len() - "-plugin".len()].to_string());
                Ok(())
            }
            s if s.starts_with('-') => Err(format!("unknown option '{s}'")),
            _ => {
                prog.push(arg);
                prog.extend(it.by_ref());
                break;
            }
        };
        if let Err(m) = r {
            return bad(m);
        }
    }
    if prog.is_empty() {
        return bad("no program to launch".into());
    }
    let lib = client::bin_dir().join("libdmtcp.so");
    if !lib.exists() {
        eprintln!("{alias}: {} not found (build the whole workspace: cargo build --release)", lib.display());
        return 1;
    }
    let dir = match ckpt_dir.map(|d| std::path::absolute(&d)) {
        Some(Ok(d)) => d,
        Some(Err(e)) => return bad(format!("bad --ckptdir: {e}")),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    if !dir.is_dir() {
        eprintln!("{alias}: checkpoint directory {} does not exist", dir.display());
        return 1;
    }
    let interval_given = a.interval;
    let port = match client::ensure(&mut a, alias) {
        Ok(p) => p,
        Err(m) => {
            eprintln!("{alias}: {m}");
            return 1;
        }
    };
    if let (Some(i), CoordMode::Join | CoordMode::Any) = (interval_given, a.mode) {
        let _ = crate::command::send_command(&a.host, port, dmtcp_common::proto::Cmd::Interval(i));
    }
    if ib {
        let p = client::bin_dir().join("libdmtcp_ib.so");
        if !p.exists() {
            eprintln!("{alias}: --ib: {} not found (build the workspace: cargo build --release)", p.display());
            return 1;
        }
        plugins.insert(0, p.display().to_string());
    }
    for p in &plugins {
        let path = std::path::Path::new(p);
        if !path.is_absolute() || !path.is_file() {
            eprintln!("{alias}: plugin {p} must be an absolute path to an existing file");
            return 1;
        }
    }
    // The ssh plugin comes right after the engine: the engine's exec
    // wrappers reach its execve/execvpe (dlsym RTLD_NEXT).
    let ssh = client::bin_dir().join("libdmtcp_ssh.so");
    let ssh = (ssh_plugin && ssh.exists()).then(|| ssh.display().to_string());
    let mut preload = std::iter::once(lib.display().to_string()).chain(ssh).chain(plugins.iter().cloned()).collect::<Vec<_>>().join(":");
    if let Ok(p) = std::env::var("LD_PRELOAD") {
        if !p.is_empty() {
            preload = format!("{preload}:{p}");
        }
    }
    if quiet < 2 {
        for m in kernel_gaps() {
            eprintln!("{alias}: warning: {m}");
        }
    }
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:glibc.pthread.rseq=0"),
        _ => "glibc.pthread.rseq=0".to_string(),
    };
    let mut cmd = std::process::Command::new(&prog[0]);
    cmd.args(&prog[1..])
        .env("LD_PRELOAD", preload)
        .env("GLIBC_TUNABLES", tunables)
        .env(E::COORD_HOST, &a.host)
        .env(E::COORD_PORT, port.to_string())
        .env(E::CKPT_DIR, &dir)
        .env(E::QUIET, quiet.to_string());
    if let Some(g) = gzip {
        cmd.env(E::GZIP, if g { "1" } else { "0" });
    }
    if let Some(s) = signal {
        cmd.env(E::CKPT_SIGNAL, s.to_string());
    }
    if !disabled.is_empty() {
        cmd.env(E::DISABLED_PLUGINS, disabled.join(","));
    }
    if let Some(t) = tmpdir {
        cmd.env(E::TMPDIR, t);
    }
    let e = cmd.exec();
    eprintln!("{alias}: cannot run {}: {e}", prog[0]);
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// What this kernel lacks of CONFIG_CHECKPOINT_RESTORE, and what that costs
/// a restart (each probe changes nothing).
pub fn kernel_gaps() -> Vec<String> {
    let mut out = Vec::new();
    let mut addr: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer into `addr`.
    if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut addr as *mut u64) } != 0 {
        out.push(format!(
            "this kernel lacks CONFIG_CHECKPOINT_RESTORE (prctl PR_GET_TID_ADDRESS: {}): after a restart, threads \
             cannot be joined (pthread_join waits for ever) and the heap cannot grow in place",
            std::io::Error::last_os_error()
        ));
    }
    let pid = std::process::id() as libc::c_long;
    // SAFETY: kcmp compares our own stdin with itself; it changes nothing.
    if unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 0 as libc::c_long, 0 as libc::c_long, 0 as libc::c_long) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
    {
        out.push("this kernel has no kcmp (CONFIG_CHECKPOINT_RESTORE): fds duplicated in one process are told apart by a weaker test".into());
    }
    out
}
