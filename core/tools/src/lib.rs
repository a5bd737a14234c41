//! The DMTCP-compatible command-line tools. Each binary in `src/bin` is a
//! thin wrapper around one module here.

pub mod cli;
pub mod client;
pub mod command;
pub mod commit;
pub mod coordinator;
pub mod launch;
pub mod lazy;
pub mod rejoin;
pub mod restart;
pub mod script;
pub mod sockdiag;
pub mod tree;

use coordinator::CoordOpts;

/// The command line of `dmtcp_coordinator`.
pub fn coordinator_command() -> clap::Command {
    use clap::{value_parser, Arg, ValueHint};
    let cmd = cli::tool(
        "dmtcp_coordinator",
        "Coordinates checkpoints between multiple processes.",
    )
    .after_help(cli::wrap(
        "Commands on standard input (when not a daemon): l: list processes, s: status, \
         c: checkpoint, k: kill all, q: kill all and quit, ?: help",
        80,
    ))
    .next_help_heading("Options")
    .arg(
        Arg::new("port")
            .value_name("PORT")
            .value_parser(value_parser!(u16))
            .value_hint(ValueHint::Other)
            .help("Port to listen on (as -p)")
            .help_heading(None),
    )
    .arg(cli::coord_port(
        "Port to listen on (env DMTCP_COORD_PORT, default 7779; 0 = any free port)",
    ))
    .arg(
        Arg::new("port_file")
            .long("port-file")
            .value_name("FILE")
            .value_parser(value_parser!(std::path::PathBuf))
            .value_hint(ValueHint::FilePath)
            .help("Write the port number to FILE once listening"),
    )
    .arg(cli::ckptdir(
        "Directory for all checkpoint images (default: each process's own)",
    ))
    .arg(cli::interval(
        "Checkpoint every SECS seconds (env DMTCP_CHECKPOINT_INTERVAL, 0 = manual)",
    ))
    .arg(cli::flag(
        "exit_on_last",
        "exit-on-last",
        "Exit when the last process disconnects",
    ))
    .arg(cli::flag(
        "kill_after_ckpt",
        "kill-after-ckpt",
        "Kill the processes after the first checkpoint",
    ))
    .arg(
        Arg::new("timeout")
            .long("timeout")
            .value_name("SECS")
            .value_parser(value_parser!(u64))
            .value_hint(ValueHint::Other)
            .help("Kill the processes and exit after SECS seconds"),
    )
    .arg(cli::keep_generations())
    .arg(
        Arg::new("suspend_timeout")
            .long("suspend-timeout")
            .value_name("SECS")
            .value_parser(value_parser!(u64).range(1..))
            .value_hint(ValueHint::Other)
            .help(
                "Give a checkpoint up when a process has not suspended after SECS seconds \
                 (stopped, or stuck), naming it; the computation goes on \
                 (env DMTCP_SUSPEND_TIMEOUT, default 120)",
            ),
    )
    .arg(cli::secret_file(
        "Use the secret in FILE (made, 0600, when it does not exist) instead of a new one, \
         e.g. on a file system all hosts of a job share (env DMTCP_SECRET_FILE). \
         The secret is always also written to $TMPDIR/dmtcp-<uid>/coord-<host>-<port>.secret",
    ))
    .arg(cli::flag("daemon", "daemon", "Run in the background"))
    .arg(cli::quiet("Less output (twice: only errors)"))
    .arg(cli::verbose());
    // DMTCP's coordinator takes -h for help too (it has no host option).
    cli::finish(cmd).mut_arg("help", |a| a.short('h'))
}

/// Entry point of `dmtcp_coordinator`.
pub fn coordinator_main(args: Vec<String>) -> i32 {
    use dmtcp_common::env as E;
    let mut cmd = coordinator_command();
    let m = match cli::parse(&mut cmd, args) {
        Ok(m) => m,
        Err(code) => return code,
    };
    // The port given last, as an option or as the operand, counts.
    let port = ["port", "coord_port"]
        .into_iter()
        .filter_map(|id| Some((m.index_of(id)?, *m.get_one::<u16>(id)?)))
        .max()
        .map(|(_, p)| p);
    let mut o = CoordOpts {
        port: port.unwrap_or_else(|| {
            std::env::var(E::COORD_PORT)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(E::DEFAULT_PORT)
        }),
        interval: m.get_one::<u32>("interval").copied().unwrap_or_else(|| {
            std::env::var(E::CKPT_INTERVAL)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        }),
        port_file: m.get_one::<std::path::PathBuf>("port_file").cloned(),
        ckpt_dir: m
            .get_one::<std::path::PathBuf>("ckptdir")
            .map(|v| std::path::absolute(v).unwrap_or_else(|_| v.clone())),
        exit_on_last: m.get_flag("exit_on_last"),
        kill_after_ckpt: m.get_flag("kill_after_ckpt"),
        timeout: m.get_one::<u64>("timeout").copied(),
        keep_generations: cli::keep_generations_of(&m),
        suspend_timeout: m.get_one::<u64>("suspend_timeout").copied().or_else(|| {
            std::env::var(E::SUSPEND_TIMEOUT)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .filter(|&s| s > 0)
        }),
        quiet: u32::from(m.get_count("quiet")),
        secret_file: cli::secret_file_of(&m),
        ..Default::default()
    };
    dmtcp_common::log::init_tool(
        "dmtcp_coordinator",
        "[dmtcp_coordinator] ",
        m.get_count("verbose"),
        m.get_count("quiet"),
    );
    // A secret file given but unusable is reported before daemonizing.
    if let Some(f) = o.secret_file.as_ref().filter(|f| f.exists()) {
        if let Err(e) = dmtcp_common::auth::read_file(f) {
            dmtcp_common::log_error!("{e}");
            return 1;
        }
    }
    let daemon = m.get_flag("daemon");
    if let Some(d) = &o.ckpt_dir {
        if let Err(e) = std::fs::create_dir_all(d) {
            dmtcp_common::log_error!("cannot create --ckptdir {}: {e}", d.display());
            return 1;
        }
    }
    // Bind before daemonizing so a busy port is reported to the caller.
    let probe = std::net::TcpListener::bind(("0.0.0.0", o.port));
    let listener_port = match probe {
        Ok(l) => {
            let p = l.local_addr().map(|a| a.port()).unwrap_or(o.port);
            drop(l);
            p
        }
        Err(e) => {
            dmtcp_common::log_error!("cannot listen on port {}: {e}", o.port);
            return 1;
        }
    };
    o.port = listener_port;
    if daemon {
        // SAFETY: fork in a single-threaded program; the parent exits at once.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            dmtcp_common::log_error!("fork: {}", std::io::Error::last_os_error());
            return 1;
        }
        if pid > 0 {
            return 0;
        }
        // SAFETY: detach from the terminal session; redirect stdio to /dev/null.
        unsafe {
            libc::setsid();
            let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if n >= 0 {
                libc::dup2(n, 0);
                if o.quiet > 0 {
                    libc::dup2(n, 1);
                    libc::dup2(n, 2);
                }
                if n > 2 {
                    libc::close(n);
                }
            }
        }
    } else {
        o.interactive = true;
    }
    match coordinator::run(o) {
        Ok(()) => 0,
        Err(e) => {
            dmtcp_common::log_error!("{e}");
            1
        }
    }
}
