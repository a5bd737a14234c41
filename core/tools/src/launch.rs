//! `dmtcp_launch` (and its old name `dmtcp_checkpoint`): run a program under
//! checkpoint control.

use crate::cli;
use crate::client::{self, CoordMode};
use clap::{Arg, ArgAction, Command, ValueHint};
use dmtcp_common::env as E;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The internal plugins `--disable-<name>-plugin` turns off, with DMTCP's
/// names for them where they differ.
const PLUGINS: [(&str, &str, &[&str]); 7] = [
    (
        "process",
        "processes, pids, signals, process groups",
        &["pid"],
    ),
    ("event", "epoll, eventfd, timerfd, signalfd, inotify", &[]),
    ("pty", "pseudo-terminals", &[]),
    ("file", "open files, pipes, fifos", &[]),
    ("socket", "sockets", &[]),
    ("sysv", "System V and POSIX IPC", &["svipc"]),
    ("timers", "interval and POSIX timers", &["timer"]),
];

/// The command line of `dmtcp_launch` (or of its old name `name`).
pub fn command(name: &'static str) -> Command {
    let cmd = cli::tool(name, "Start a process under DMTCP control.")
        .override_usage(format!("{name} [OPTIONS] <command> [args...]"));
    let cmd = cli::coord_args(
        cmd,
        "Port of the coordinator (env DMTCP_COORD_PORT, default 7779; 0 = any free port)",
        "Checkpoint every SECS seconds (env DMTCP_CHECKPOINT_INTERVAL, 0 = manual)",
    )
    .next_help_heading("Checkpoint images")
    .arg(cli::ckptdir(
        "Where to write images (env DMTCP_CHECKPOINT_DIR, default: current directory)",
    ))
    .arg(
        cli::flag(
            "gzip",
            "gzip",
            "Compress images (env DMTCP_GZIP, default: compress, with zstd)",
        )
        .overrides_with("no_gzip"),
    )
    .arg(cli::flag("no_gzip", "no-gzip", "Do not compress images").overrides_with("gzip"))
    .arg(
        Arg::new("ckpt_signal")
            .long("ckpt-signal")
            .value_name("N")
            .value_parser(ckpt_signal)
            .value_hint(ValueHint::Other)
            .help("Signal used to suspend threads (env DMTCP_CKPT_SIGNAL, default 12, SIGUSR2)"),
    )
    .arg(
        cli::flag(
            "ckpt_open_files",
            "ckpt-open-files",
            "Save the contents of open regular files in the images and put them back at \
             restart (env DMTCP_CKPT_OPEN_FILES; also --checkpoint-open-files)",
        )
        .alias("checkpoint-open-files"),
    )
    .arg(
        cli::flag(
            "forked_ckpt",
            "forked-ckpt",
            "Forked checkpointing always: the program is suspended only while its state is \
             captured and its address space duplicated; a forked child writes the image. \
             Without this option it is done when the node has the memory for it (env \
             DMTCP_FORKED_CKPT=1; also --forked-checkpointing)",
        )
        .alias("forked-checkpointing")
        .overrides_with("no_forked_ckpt"),
    )
    .arg(
        cli::flag(
            "no_forked_ckpt",
            "no-forked-ckpt",
            "Never forked checkpointing: every image is written with the program suspended \
             (env DMTCP_FORKED_CKPT=0)",
        )
        .overrides_with("forked_ckpt"),
    )
    .arg(
        cli::flag(
            "incremental",
            "incremental",
            "Incremental images (the default): an image holds only the chunks that changed \
             since the process's previous generation and refers to the earlier images for \
             the rest; every 8th (--full-every) is full (env DMTCP_INCREMENTAL)",
        )
        .overrides_with("no_incremental"),
    )
    .arg(
        cli::flag(
            "no_incremental",
            "no-incremental",
            "Every image full (env DMTCP_INCREMENTAL=0; as --full-every 1)",
        )
        .overrides_with("incremental")
        .conflicts_with("full_every"),
    )
    .arg(
        Arg::new("full_every")
            .long("full-every")
            .value_name("N")
            .value_parser(clap::value_parser!(u32))
            .help(
                "With incremental images: every Nth image of a process is full (env \
                 DMTCP_FULL_EVERY, default 8; 0 = full only after a start or restart; \
                 1 = every image full, incremental images off)",
            ),
    )
    .arg(cli::keep_generations().help(
        "Keep the N newest committed checkpoint generations (env DMTCP_KEEP_GENERATIONS, \
         default 2; 0 = all; for a coordinator started here)",
    ))
    .next_help_heading("Plugins")
    .arg(
        Arg::new("with_plugin")
            .long("with-plugin")
            .value_name("A.so[:B.so]")
            .action(ArgAction::Append)
            .value_hint(ValueHint::FilePath)
            .help("Load plugins (absolute paths; env DMTCP_PLUGIN)"),
    )
    .arg(
        cli::flag(
            "ib",
            "ib",
            "Load the InfiniBand plugin (libdmtcp_ib.so): verbs programs survive a \
             checkpoint and restart",
        )
        .alias("infiniband"),
    )
    .arg(cli::flag(
        "kvm",
        "kvm",
        "Load the KVM plugin (libdmtcp_kvm.so): programs that run virtual machines \
         through /dev/kvm (their own hosts, QEMU) survive a checkpoint and restart",
    ))
    .arg(cli::flag(
        "disable_ssh_plugin",
        "disable-ssh-plugin",
        "Leave ssh alone (by default, ssh sessions started by the program are part of the \
         computation: libdmtcp_ssh.so)",
    ))
    .arg(cli::flag(
        "disable_tun_plugin",
        "disable-tun-plugin",
        "Leave tun/tap devices alone (by default, the program's /dev/net/tun devices come back \
         at restart with their name, settings, addresses and routes: libdmtcp_tun.so, see \
         docs/tun.md)",
    ))
    .arg(cli::flag(
        "disable_batch_plugin",
        "disable-batch-plugin",
        "Run `srun` as any program (by default `dmtcp_launch srun ...`, and an srun run by a \
         process of the computation, run srun outside the computation and its tasks in it: \
         libdmtcp_batch.so, dmtcp_srun, see docs/batch.md)",
    ));
    let cmd = PLUGINS
        .iter()
        .fold(cmd, |cmd, (p, what, dmtcp)| {
            let id = format!("disable_{p}_plugin");
            let help = format!("Disable the internal {p} plugin ({what})");
            cmd.arg(
                Arg::new(id)
                    .long(format!("disable-{p}-plugin"))
                    .aliases(dmtcp.iter().map(|d| format!("disable-{d}-plugin")))
                    .action(ArgAction::SetTrue)
                    .help(help),
            )
        })
        // Other names of --disable-<name>-plugin (see `respell`).
        .arg(
            Arg::new("disable_plugin")
                .long("disable-plugin")
                .value_name("NAME")
                .action(ArgAction::Append)
                .hide(true),
        )
        .next_help_heading(cli::OTHER)
        .arg(cli::tmpdir(
            "Directory for temporary files (env DMTCP_TMPDIR)",
        ))
        .arg(cli::quiet(
            "Less output (twice: only errors; env DMTCP_QUIET)",
        ))
        .arg(cli::verbose())
        .arg(cli::secret_from_stdin())
        .arg(
            Arg::new("command")
                .value_name("command")
                .help("The program to run, and its arguments (options after it are its own)")
                .required(true)
                .num_args(1..)
                .trailing_var_arg(true)
                .value_hint(ValueHint::CommandWithArguments)
                .help_heading(None),
        );
    cli::finish(cmd)
}

fn ckpt_signal(v: &str) -> Result<i32, String> {
    match v.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) && n != 9 && n != 19 => Ok(n),
        _ => Err("a signal number from 1 to 64, not 9 (SIGKILL) or 19 (SIGSTOP)".into()),
    }
}

/// `--disable-<name>-plugin` for a name without an option of its own
/// becomes `--disable-plugin=<name>`.
pub(crate) fn respell(cmd: &Command, w: &str) -> Option<String> {
    let name = w.strip_prefix("--disable-")?.strip_suffix("-plugin")?;
    let known = cli::long_option(cmd, &w[2..]).is_some();
    (!name.is_empty() && !known).then(|| format!("--disable-plugin={name}"))
}

/// Entry point; `alias` is the name it was called by.
pub fn main(args: Vec<String>, alias: &'static str) -> i32 {
    if alias == "dmtcp_checkpoint" {
        eprintln!("dmtcp_checkpoint: this name is deprecated since DMTCP 2.0; use dmtcp_launch (same options).");
    }
    let mut cmd = command(alias);
    let args = cli::respell(&cmd, args, true, |w| respell(&cmd, w));
    let m = match cli::parse(&mut cmd, args) {
        Ok(m) => m,
        Err(code) => return code,
    };
    dmtcp_common::log::init_tool(
        alias,
        &format!("{alias}: "),
        m.get_count("verbose"),
        m.get_count("quiet"),
    );
    if let Err(e) = crate::client::secret_options(&m) {
        dmtcp_common::log_error!("{e}");
        return 1;
    }
    let mut a = cli::coord_addr(&m);
    let ckpt_dir: Option<PathBuf> = m.get_one::<PathBuf>("ckptdir").cloned().or_else(|| {
        std::env::var(E::CKPT_DIR)
            .ok()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    let gzip = if m.get_flag("gzip") {
        Some(true)
    } else if m.get_flag("no_gzip") {
        Some(false)
    } else {
        None
    };
    let signal = m.get_one::<i32>("ckpt_signal").copied();
    let quiet: u32 = std::env::var(E::QUIET)
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0)
        + u32::from(m.get_count("quiet"));
    let mut disabled: Vec<String> = PLUGINS
        .iter()
        .filter(|(p, ..)| m.get_flag(&format!("disable_{p}_plugin")))
        .map(|(p, ..)| p.to_string())
        .collect();
    disabled.extend(
        m.get_many::<String>("disable_plugin")
            .into_iter()
            .flatten()
            .cloned(),
    );
    let ssh_plugin = !m.get_flag("disable_ssh_plugin");
    let batch_plugin = !m.get_flag("disable_batch_plugin");
    let tun_plugin = !m.get_flag("disable_tun_plugin");
    let tmpdir = m.get_one::<String>("tmpdir").cloned();
    let mut plugins: Vec<String> = std::env::var(E::PLUGIN)
        .ok()
        .into_iter()
        .chain(
            m.get_many::<String>("with_plugin")
                .into_iter()
                .flatten()
                .cloned(),
        )
        .flat_map(|v| {
            v.split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if m.get_flag("ckpt_open_files") {
        std::env::set_var(E::CKPT_OPEN_FILES, "1");
    }
    // Checkpoint generations: for the coordinator started here (it
    // inherits the environment).
    if let Some(n) = m.get_one::<u32>("keep_generations") {
        std::env::set_var(E::KEEP_GENERATIONS, n.to_string());
    }
    let ib = m.get_flag("ib");
    let kvm = m.get_flag("kvm");
    let prog: Vec<String> = m
        .get_many::<String>("command")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let lib = client::lib_dir().join("libdmtcp.so");
    if !lib.exists() {
        dmtcp_common::log_error!(
            "{} not found (build the whole workspace: cargo build --release)",
            lib.display()
        );
        return 1;
    }
    let dir = match ckpt_dir.map(|d| std::path::absolute(&d)) {
        Some(Ok(d)) => d,
        Some(Err(e)) => return cli::usage_error(&mut cmd, format!("bad --ckptdir: {e}")),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    if !dir.is_dir() {
        dmtcp_common::log_error!("checkpoint directory {} does not exist", dir.display());
        return 1;
    }
    // Everything that can refuse the launch is looked at before a
    // coordinator is started for it (one started for nothing would stay).
    if ib {
        let p = client::lib_dir().join("libdmtcp_ib.so");
        if !p.exists() {
            dmtcp_common::log_error!(
                "--ib: {} not found (build the workspace: cargo build --release)",
                p.display()
            );
            return 1;
        }
        plugins.insert(0, p.display().to_string());
    }
    if kvm {
        let p = client::lib_dir().join("libdmtcp_kvm.so");
        if !p.exists() {
            dmtcp_common::log_error!(
                "--kvm: {} not found (build the workspace: cargo build --release)",
                p.display()
            );
            return 1;
        }
        plugins.insert(0, p.display().to_string());
    }
    for p in &plugins {
        let path = std::path::Path::new(p);
        if !path.is_absolute() || !path.is_file() {
            dmtcp_common::log_error!("plugin {p} must be an absolute path to an existing file");
            return 1;
        }
    }
    if let Err(e) = find_program(&prog[0]) {
        dmtcp_common::log_error!("cannot run {}: {e}", prog[0]);
        return if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
    }
    let interval_given = a.interval;
    let (port, started) = match client::ensure(&mut a, alias) {
        Ok(c) => (c.port, c.started),
        Err(m) => {
            dmtcp_common::log_error!("{m}");
            return 1;
        }
    };
    dmtcp_common::log_debug!(
        "{} the coordinator at {}:{port}; running {:?}",
        if started { "started" } else { "joined" },
        a.host,
        prog
    );
    if let (Some(i), CoordMode::Join | CoordMode::Any) = (interval_given, a.mode) {
        let _ = crate::command::send_command(&a.host, port, dmtcp_common::proto::Cmd::Interval(i));
    }
    // The ssh plugin comes right after the engine: the engine's exec
    // wrappers reach its execve/execvpe (dlsym RTLD_NEXT).
    // The batch plugin (srun run by a process of the computation becomes
    // dmtcp_srun --relay: docs/batch.md) after it, for the same reason.
    let ssh = client::lib_dir().join("libdmtcp_ssh.so");
    let ssh = (ssh_plugin && ssh.exists()).then(|| ssh.display().to_string());
    let batch = client::lib_dir().join("libdmtcp_batch.so");
    let batch = (batch_plugin && batch.exists()).then(|| batch.display().to_string());
    // The tun plugin interposes only ioctl, and costs nothing until a
    // checkpoint finds a /dev/net/tun fd (docs/tun.md).
    let tun = client::lib_dir().join("libdmtcp_tun.so");
    let tun = (tun_plugin && tun.exists()).then(|| tun.display().to_string());
    let mut preload = std::iter::once(lib.display().to_string())
        .chain(ssh)
        .chain(batch)
        .chain(tun)
        .chain(plugins.iter().cloned())
        .collect::<Vec<_>>()
        .join(":");
    if let Ok(p) = std::env::var("LD_PRELOAD") {
        if !p.is_empty() {
            preload = format!("{preload}:{p}");
        }
    }
    if quiet < 2 {
        for m in kernel_gaps() {
            dmtcp_common::log_warn!("warning: {m}");
        }
    }
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:glibc.pthread.rseq=0"),
        _ => "glibc.pthread.rseq=0".to_string(),
    };
    // `srun ...`: srun runs outside the computation, its tasks in it.
    let srun_helper = client::bin_dir().join("dmtcp_srun");
    let srun = batch_plugin && prog[0].rsplit('/').next() == Some("srun") && srun_helper.exists();
    let mut cmd = if srun {
        let mut c = std::process::Command::new(&srun_helper);
        c.arg("--srun").arg(&prog[0]).arg("--").args(&prog[1..]);
        c
    } else {
        let mut c = std::process::Command::new(&prog[0]);
        c.args(&prog[1..]).env("LD_PRELOAD", preload);
        c
    };
    cmd.env("GLIBC_TUNABLES", tunables)
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
    if m.get_flag("forked_ckpt") {
        cmd.env(E::FORKED_CKPT, "1");
    } else if m.get_flag("no_forked_ckpt") {
        cmd.env(E::FORKED_CKPT, "0");
    }
    // Said on the command line, it wins over an inherited DMTCP_INCREMENTAL.
    if m.get_flag("no_incremental") {
        cmd.env(E::INCREMENTAL, "0");
    } else if m.get_flag("incremental") || m.get_one::<u32>("full_every").is_some() {
        cmd.env(E::INCREMENTAL, "1");
    }
    if let Some(n) = m.get_one::<u32>("full_every") {
        cmd.env(E::FULL_EVERY, n.to_string());
    }
    if !disabled.is_empty() {
        cmd.env(E::DISABLED_PLUGINS, disabled.join(","));
    }
    if let Some(t) = tmpdir {
        cmd.env(E::TMPDIR, t);
    }
    // The coordinator's secret goes to the library through an inherited
    // pipe (not the environment, not the command line: docs/security.md).
    cmd.env_remove(E::SECRET_FD);
    let secret = crate::client::secret_for(&a.host, port);
    match secret {
        // srun's tasks run on other nodes: they read DMTCP_SECRET_FILE
        // (docs/batch.md). Unless the user named one, the secret goes into
        // the checkpoint directory, which every node must see anyway
        // (0600, under a name of this coordinator).
        Ok(Some(_)) if srun && std::env::var_os(E::SECRET_FILE).is_some() => {}
        Ok(Some(s)) if srun => {
            let f = dir.join(format!(".dmtcp-secret-{}-{port}", a.host));
            if let Err(e) = dmtcp_common::auth::write_file(&f, &s) {
                dmtcp_common::log_error!(
                    "cannot write the coordinator's secret for srun's tasks to {}: {e}",
                    f.display()
                );
                return 1;
            }
            cmd.env(E::SECRET_FILE, &f);
        }
        Ok(Some(s)) => match secret_pipe(&s) {
            Ok(fd) => {
                // The program is this process after the exec: the library
                // takes the pipe only in the process whose pid is named.
                cmd.env(E::SECRET_FD, format!("{fd},{}", std::process::id()));
            }
            Err(e) => {
                dmtcp_common::log_error!("cannot pass the coordinator's secret on: {e}");
                return 1;
            }
        },
        // The program's library reports the coordinator's challenge.
        Ok(None) => {}
        Err(e) => {
            dmtcp_common::log_error!("the secret of the coordinator at {}:{port}: {e}", a.host);
            return 1;
        }
    }
    let e = cmd.exec();
    dmtcp_common::log_error!("cannot run {}: {e}", prog[0]);
    // A coordinator started for this launch would wait for ever.
    if started {
        let _ = crate::command::send_command(&a.host, port, dmtcp_common::proto::Cmd::Quit);
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// A pipe holding the secret, whose read end (returned) the program
/// inherits; the write end is closed.
fn secret_pipe(s: &dmtcp_common::auth::Secret) -> std::io::Result<i32> {
    let (r, w) = crate::restart::pipe()?;
    let n = dmtcp_sys::write_all(w, &s.0);
    // SAFETY: closing our write end.
    unsafe { libc::close(w) };
    if n != 0 {
        // SAFETY: closing our read end.
        unsafe { libc::close(r) };
        return Err(std::io::Error::from_raw_os_error(-n as i32));
    }
    // SAFETY: clearing close-on-exec on our read end.
    unsafe { libc::fcntl(r, libc::F_SETFD, 0) };
    Ok(r)
}

/// Would execvp find `prog`? An error when it is nowhere on PATH, or is
/// not an executable file.
fn find_program(prog: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| -> std::io::Result<()> {
        let m = std::fs::metadata(p)?;
        if m.is_file() && m.permissions().mode() & 0o111 != 0 {
            Ok(())
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }
    };
    if prog.contains('/') {
        return runnable(std::path::Path::new(prog));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for d in path.split(':') {
        let p = std::path::Path::new(if d.is_empty() { "." } else { d }).join(prog);
        match runnable(&p) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied = Some(e),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
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
    if unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
    {
        out.push("this kernel has no kcmp (CONFIG_CHECKPOINT_RESTORE): fds duplicated in one process are told apart by a weaker test".into());
    }
    out
}
