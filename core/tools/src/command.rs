//! `dmtcp_command`: talk to a running coordinator.

use crate::cli;
use crate::client::CoordAddr;
use clap::{value_parser, Arg, ArgAction, ArgGroup, Command, ValueHint};
use dmtcp_common::proto::{self, Cmd, FromCoord, Reply, Role, ToCoord};
use std::io::BufReader;
use std::net::TcpStream;

/// One of dmtcp_command's commands: its options, and DMTCP's other
/// spellings of it (the first is the documented one). DMTCP takes each
/// also as a bare word and with any number of leading dashes (`s`, `-s`,
/// `--s`, `bc`, `-bc`, `--bcheckpoint`).
struct Spelling {
    cmd: Cmd,
    short: Option<char>,
    long: &'static str,
    also: &'static [&'static str],
    help: &'static str,
}

const fn spelling(
    cmd: Cmd,
    short: Option<char>,
    long: &'static str,
    also: &'static [&'static str],
    help: &'static str,
) -> Spelling {
    Spelling {
        cmd,
        short,
        long,
        also,
        help,
    }
}

const COMMANDS: [Spelling; 8] = [
    spelling(
        Cmd::Status,
        Some('s'),
        "status",
        &["s"],
        "Print the status of all nodes",
    ),
    spelling(
        Cmd::List,
        Some('l'),
        "list",
        &["l", "t"],
        "List the connected processes",
    ),
    spelling(
        Cmd::Checkpoint,
        Some('c'),
        "checkpoint",
        &["c"],
        "Checkpoint all nodes",
    ),
    spelling(
        Cmd::BlockingCheckpoint,
        None,
        "bcheckpoint",
        &["bc"],
        "Checkpoint all nodes, return when the images are written",
    ),
    spelling(
        Cmd::KillAfterCheckpoint,
        None,
        "kcheckpoint",
        &["kc", "ck", "K", "Kc"],
        "Checkpoint all nodes, then kill them",
    ),
    spelling(
        Cmd::Interval(0),
        Some('i'),
        "interval",
        &["i"],
        "Set the checkpoint interval to N seconds (0 = never)",
    ),
    spelling(Cmd::Kill, Some('k'), "kill", &["k"], "Kill all nodes"),
    spelling(
        Cmd::Quit,
        Some('q'),
        "quit",
        &["q"],
        "Kill all nodes and quit the coordinator",
    ),
];

/// The command line of `dmtcp_command`.
pub fn command() -> Command {
    let cmd = cli::tool(
        "dmtcp_command",
        "Send a command to the dmtcp_coordinator remotely.",
    )
    .override_usage("dmtcp_command [OPTIONS] COMMAND")
    .after_help(format!(
        "{}\n\n{}",
        cli::wrap(
            "A command may also be given as a bare word and with any number of leading \
             dashes, as DMTCP takes them: s, -s, --s, bc, -bc, i 5, i5, -i5.",
            80
        ),
        cli::wrap(
            "Exit status: 0 success, 1 bad usage or a failed command, 2 coordinator not found.",
            80
        )
    ))
    .next_help_heading("Options");
    let cmd = cli::host_port_args(
        cmd,
        "Port of the coordinator (env DMTCP_COORD_PORT, default 7779)",
    )
    .arg(cli::flag("json", "json", "Print the answer as JSON"))
    .next_help_heading("Commands");
    let cmd = COMMANDS
        .iter()
        .fold(cmd, |cmd, c| {
            // DMTCP's documented spelling; the others are accepted too.
            let help = match c.also[0] {
                a if a.len() == 1 => format!("{} (also {a})", c.help),
                a => format!("{} (also -{a}, {a})", c.help),
            };
            let mut arg = Arg::new(c.long).long(c.long).help(help).group("command");
            if let Some(short) = c.short {
                arg = arg.short(short);
            }
            arg = if c.long == "interval" {
                arg.value_name("N")
                    .value_parser(value_parser!(u32))
                    .value_hint(ValueHint::Other)
            } else {
                arg.action(ArgAction::SetTrue)
            };
            cmd.arg(arg)
        })
        .group(ArgGroup::new("command").multiple(false));
    cli::finish(cmd)
}

/// DMTCP's spelling of a command (`bc`, `-bc`, `--s`, `i5`) as an option.
fn respell(w: &str) -> Option<String> {
    let bare = w.trim_start_matches('-');
    if let Some(n) = bare
        .strip_prefix('i')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(format!("--interval={n}"));
    }
    COMMANDS
        .iter()
        .find(|c| bare == c.long || c.also.contains(&bare))
        .map(|c| format!("--{}", c.long))
}

/// `dmtcp_command -s` text, as existing scripts parse it.
pub fn status_text(host: &str, port: u16, r: &Reply) -> String {
    format!(
        "Coordinator:\n  Host: {host}\n  Port: {port}\nStatus...\n  NUM_PEERS={}\n  RUNNING={}\n  CKPT_INTERVAL={}\n",
        r.num_peers,
        if r.running { "yes" } else { "no" },
        r.interval
    )
}

/// `dmtcp_command -l` text.
pub fn list_text(r: &Reply) -> String {
    let mut s = String::from("Client List:\n#, PROG[PID]@HOST, DMTCP-UNIQUEPID, STATE\n");
    for p in &r.peers {
        s.push_str(&format!(
            "{}, {}[{}]@{}, {}, {}\n",
            p.id, p.program, p.pid, p.hostname, p.uniq_id, p.state
        ));
    }
    s
}

fn cmd_name(c: &Cmd) -> &'static str {
    match c {
        Cmd::Status => "DMT_STATUS",
        Cmd::List => "DMT_LIST",
        Cmd::Checkpoint => "DMT_CHECKPOINT",
        Cmd::BlockingCheckpoint => "DMT_BLOCKING_CHECKPOINT",
        Cmd::KillAfterCheckpoint => "DMT_KILL_AFTER_CHECKPOINT",
        Cmd::Kill => "DMT_KILL",
        Cmd::Quit => "DMT_QUIT",
        Cmd::Interval(_) => "DMT_INTERVAL",
    }
}

/// Prefix of the error [`send_command`] gives when the coordinator turned
/// the connection away (too many connections) rather than not answering.
pub const REFUSED: &str = dmtcp_common::auth::REFUSED;

/// The first message of a tool's connection (`program` is its name).
pub fn tool_hello(program: &str) -> ToCoord {
    ToCoord::Hello {
        role: Role::Command,
        pid: std::process::id() as i32,
        hostname: dmtcp_common::hostname(),
        program: program.into(),
        uniq_id: String::new(),
        restarting: false,
        comp_id: None,
        generation: 0,
        num_peers: 0,
        auth: None,
    }
}

/// Send one command; `Err` when no coordinator answers (or it refused).
pub fn send_command(host: &str, port: u16, cmd: Cmd) -> Result<Reply, String> {
    send_command_with(host, port, cmd, |_, _, _| {})
}

/// [`send_command`], calling `progress(written, total, bytes)` at each
/// progress report of a blocking checkpoint.
pub fn send_command_with(
    host: &str,
    port: u16,
    cmd: Cmd,
    progress: impl FnMut(u32, u32, u64),
) -> Result<Reply, String> {
    send_command_as("dmtcp_command", host, port, cmd, progress)
}

/// [`send_command_with`] from the tool `program` (the name the coordinator
/// logs).
pub fn send_command_as(
    program: &str,
    host: &str,
    port: u16,
    cmd: Cmd,
    mut progress: impl FnMut(u32, u32, u64),
) -> Result<Reply, String> {
    let s = TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut hello = tool_hello(program);
    if let ToCoord::Hello { auth, .. } = &mut hello {
        *auth = Some(crate::client::authenticate(&s, host, port)?);
    }
    // A coordinator that refuses the connection may close it before our
    // command is written: read its answer even if a write failed.
    let sent =
        proto::send(&mut w, &hello).and_then(|_| proto::send(&mut w, &ToCoord::Command { cmd }));
    let mut r = BufReader::new(s);
    let mut m = proto::recv::<_, FromCoord>(&mut r);
    while let Ok(Some(FromCoord::Progress {
        written,
        total,
        bytes,
    })) = m
    {
        progress(written, total, bytes);
        m = proto::recv::<_, FromCoord>(&mut r);
    }
    match m {
        Ok(Some(FromCoord::Reply(rep))) => Ok(rep),
        Ok(Some(FromCoord::Refused { reason })) => Err(format!("{REFUSED}{reason}")),
        _ if sent.is_err() => Err(sent.err().map(|e| e.to_string()).unwrap_or_default()),
        Ok(_) => Err(format!(
            "the coordinator at {host}:{port} closed the connection without answering \
             (as it does when the answer to its challenge is wrong: is --secret-file/DMTCP_SECRET_FILE \
             the secret of this coordinator?)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Entry point of `dmtcp_command`.
pub fn main(args: Vec<String>) -> i32 {
    dmtcp_common::log::init_tool("dmtcp_command", "dmtcp_command: ", 0, 0);
    let mut clap_cmd = command();
    let args = cli::respell(&clap_cmd, args, false, respell);
    let m = match cli::parse(&mut clap_cmd, args) {
        Ok(m) => m,
        Err(code) => return code,
    };
    crate::client::use_secret_file(&m);
    let mut a = CoordAddr::from_env();
    if let Some(h) = m.get_one::<String>("coord_host") {
        a.host = h.clone();
    }
    if let Some(p) = m.get_one::<u16>("coord_port") {
        a.port = *p;
    }
    let json = m.get_flag("json");
    let cmd = match m.get_one::<u32>("interval") {
        Some(n) => Cmd::Interval(*n),
        None => match COMMANDS
            .iter()
            .find(|c| c.long != "interval" && m.get_flag(c.long))
        {
            Some(c) => c.cmd.clone(),
            None => return cli::usage_error(&mut clap_cmd, "no command given"),
        },
    };
    let name = cmd_name(&cmd);
    // On a terminal, a blocking checkpoint shows how far the writing is.
    let shown = !json
        && matches!(cmd, Cmd::BlockingCheckpoint | Cmd::KillAfterCheckpoint)
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = std::time::Instant::now();
    let mut drew = false;
    let answer = send_command_with(&a.host, a.port, cmd.clone(), |written, total, bytes| {
        if shown {
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r\x1b[K[dmtcp_command] checkpoint: {written} of {total} processes written, {:.1} MB, {:.1} MB/s",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs
            );
            drew = true;
        }
    });
    if drew {
        eprintln!();
    }
    match answer {
        Err(e) if e.starts_with(REFUSED) || e.starts_with("the coordinator at ") => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema_version": 1, "command": name, "command_status": "DMT_COORD_ERROR",
                        "coordinator_host": a.host, "coordinator_port": a.port, "message": e})
                );
            } else {
                dmtcp_common::log_error!("{e}");
            }
            1
        }
        Err(_) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema_version": 1, "command": name, "command_status": "DMT_COORD_NOT_FOUND",
                        "coordinator_host": a.host, "coordinator_port": a.port})
                );
            } else {
                dmtcp_common::log_error!(
                    "Coordinator not found at {}:{}. Please check the host and port.",
                    a.host,
                    a.port
                );
            }
            2
        }
        Ok(r) => {
            if json {
                let mut v = serde_json::json!({
                    "schema_version": 1,
                    "command": name,
                    "command_status": r.status,
                    "coordinator_host": a.host,
                    "coordinator_port": a.port,
                    "num_peers": r.num_peers,
                    "running": r.running,
                    "checkpoint_interval": r.interval,
                    "generation": r.generation,
                });
                if matches!(cmd, Cmd::List) {
                    v["peers"] = serde_json::to_value(&r.peers).unwrap_or_default();
                }
                if let Some(m) = &r.message {
                    v["message"] = m.clone().into();
                }
                if !r.images.is_empty()
                    && matches!(cmd, Cmd::BlockingCheckpoint | Cmd::KillAfterCheckpoint)
                {
                    v["images"] = serde_json::to_value(&r.images).unwrap_or_default();
                }
                println!("{v}");
            } else {
                match cmd {
                    Cmd::Status => print!("{}", status_text(&a.host, a.port, &r)),
                    Cmd::List => print!("{}", list_text(&r)),
                    _ => {
                        if let Some(m) = &r.message {
                            dmtcp_common::log_error!("{m}");
                        }
                    }
                }
            }
            if r.ok {
                0
            } else {
                1
            }
        }
    }
}
