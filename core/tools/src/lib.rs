//! The DMTCP-compatible command-line tools. Each binary in `src/bin` is a
//! thin wrapper around one module here.

pub mod client;
pub mod command;
pub mod coordinator;
pub mod launch;
pub mod restart;
pub mod script;
pub mod tree;

use coordinator::CoordOpts;

const COORD_USAGE: &str = "Usage: dmtcp_coordinator [OPTIONS] [port]
Coordinates checkpoints between multiple processes.

Options:
  -p, --coord-port PORT  Port to listen on (env DMTCP_COORD_PORT, default 7779; 0 = any free port)
  --port-file FILE       Write the port number to FILE once listening
  -c, --ckptdir DIR      Directory for all checkpoint images (default: each process's own)
  -i, --interval SECS    Checkpoint every SECS seconds (env DMTCP_CHECKPOINT_INTERVAL, 0 = manual)
  --exit-on-last         Exit when the last process disconnects
  --kill-after-ckpt      Kill the processes after the first checkpoint
  --timeout SECS         Kill the processes and exit after SECS seconds
  --daemon               Run in the background
  -q, --quiet            Less output
  --help, --version

Commands on standard input (when not a daemon):
  l: list processes   s: status   c: checkpoint   k: kill all   q: kill all and quit   ?: help";

/// Entry point of `dmtcp_coordinator`.
pub fn coordinator_main(args: Vec<String>) -> i32 {
    use dmtcp_common::env as E;
    let mut o = CoordOpts {
        port: std::env::var(E::COORD_PORT).ok().and_then(|p| p.parse().ok()).unwrap_or(E::DEFAULT_PORT),
        interval: std::env::var(E::CKPT_INTERVAL).ok().and_then(|p| p.parse().ok()).unwrap_or(0),
        ..Default::default()
    };
    let mut daemon = false;
    let mut it = args.into_iter().skip(1);
    let bad = |m: String| {
        eprintln!("dmtcp_coordinator: {m}\n\n{COORD_USAGE}");
        1
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("option {name} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("bad number '{v}'"));
        let r: Result<(), String> = match arg.as_str() {
            "--help" => {
                println!("{COORD_USAGE}");
                return 0;
            }
            "--version" => {
                println!("dmtcp_coordinator (DMTCP-rs) {}", dmtcp_common::VERSION);
                return 0;
            }
            "-p" | "--coord-port" | "--port" => value(&arg).and_then(num).map(|p| o.port = p as u16),
            s if s.starts_with("-p") && s.len() > 2 && s[2..].chars().all(|c| c.is_ascii_digit()) => {
                o.port = s[2..].parse().unwrap_or(0);
                Ok(())
            }
            "--port-file" => value(&arg).map(|v| o.port_file = Some(v.into())),
            "-c" | "--ckptdir" => value(&arg).map(|v| o.ckpt_dir = Some(std::path::absolute(&v).unwrap_or_else(|_| v.into()))),
            "-i" | "--interval" => value(&arg).and_then(num).map(|n| o.interval = n as u32),
            "--exit-on-last" => {
                o.exit_on_last = true;
                Ok(())
            }
            "--kill-after-ckpt" => {
                o.kill_after_ckpt = true;
                Ok(())
            }
            "--timeout" => value(&arg).and_then(num).map(|n| o.timeout = Some(n)),
            "--daemon" => {
                daemon = true;
                Ok(())
            }
            "-q" | "--quiet" => {
                o.quiet += 1;
                Ok(())
            }
            s if !s.starts_with('-') && s.parse::<u16>().is_ok() => {
                o.port = s.parse().unwrap_or(0);
                Ok(())
            }
            other => Err(format!("unknown option '{other}'")),
        };
        if let Err(m) = r {
            return bad(m);
        }
    }
    if let Some(d) = &o.ckpt_dir {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("dmtcp_coordinator: cannot create --ckptdir {}: {e}", d.display());
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
            eprintln!("dmtcp_coordinator: cannot listen on port {}: {e}", o.port);
            return 1;
        }
    };
    o.port = listener_port;
    if daemon {
        // SAFETY: fork in a single-threaded program; the parent exits at once.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            eprintln!("dmtcp_coordinator: fork: {}", std::io::Error::last_os_error());
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
            eprintln!("dmtcp_coordinator: {e}");
            1
        }
    }
}
