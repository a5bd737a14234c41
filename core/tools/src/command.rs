//! `dmtcp_command`: talk to a running coordinator.

use crate::client::CoordAddr;
use dmtcp_common::proto::{self, Cmd, FromCoord, Reply, Role, ToCoord};
use std::io::BufReader;
use std::net::TcpStream;

const USAGE: &str = "Usage: dmtcp_command [OPTIONS] COMMAND
Send a command to the dmtcp_coordinator remotely.

Options:
  -h, --coord-host HOST  Hostname of the coordinator (env DMTCP_COORD_HOST, default localhost)
  -p, --coord-port PORT  Port of the coordinator (env DMTCP_COORD_PORT, default 7779)
  --json                 Print the answer as JSON
  --help                 Print this message and exit
  --version              Print the version and exit

Commands:
  s, --status            Print the status of all nodes
  l, --list              List the connected processes
  c, --checkpoint        Checkpoint all nodes
  bc, --bcheckpoint      Checkpoint all nodes, return when the images are written
  kc, --kcheckpoint      Checkpoint all nodes, then kill them
  i, --interval N        Set the checkpoint interval to N seconds (0 = never)
  k, --kill              Kill all nodes
  q, --quit              Kill all nodes and quit the coordinator

Exit status: 0 success, 1 bad usage or a failed command, 2 coordinator not found.";

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
        s.push_str(&format!("{}, {}[{}]@{}, {}, {}\n", p.id, p.program, p.pid, p.hostname, p.uniq_id, p.state));
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
pub const REFUSED: &str = "the coordinator refused the connection: ";

/// Send one command; `Err` when no coordinator answers (or it refused).
pub fn send_command(host: &str, port: u16, cmd: Cmd) -> Result<Reply, String> {
    let s = TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let hello = ToCoord::Hello {
        role: Role::Command,
        pid: std::process::id() as i32,
        hostname: dmtcp_common::hostname(),
        program: "dmtcp_command".into(),
        uniq_id: String::new(),
        restarting: false,
        comp_id: None,
        generation: 0,
        num_peers: 0,
    };
    // A coordinator that refuses the connection may close it before our
    // command is written: read its answer even if a write failed.
    let sent = proto::send(&mut w, &hello).and_then(|_| proto::send(&mut w, &ToCoord::Command { cmd }));
    let mut r = BufReader::new(s);
    match proto::recv::<_, FromCoord>(&mut r) {
        Ok(Some(FromCoord::Reply(rep))) => Ok(rep),
        Ok(Some(FromCoord::Refused { reason })) => Err(format!("{REFUSED}{reason}")),
        _ if sent.is_err() => Err(sent.err().map(|e| e.to_string()).unwrap_or_default()),
        Ok(_) => Err("the coordinator closed the connection without answering".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Entry point of `dmtcp_command`.
pub fn main(args: Vec<String>) -> i32 {
    let mut a = CoordAddr::from_env();
    let mut json = false;
    let mut cmd: Option<Cmd> = None;
    let mut it = args.into_iter().skip(1).peekable();
    let bad = |m: String| {
        eprintln!("dmtcp_command: {m}\n\n{USAGE}");
        1
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("option {name} needs a value"));
        let set = |c: &mut Option<Cmd>, v: Cmd| {
            if c.is_some() {
                return Err("only one command at a time".to_string());
            }
            *c = Some(v);
            Ok(())
        };
        let r: Result<(), String> = match arg.as_str() {
            "--help" => {
                println!("{USAGE}");
                return 0;
            }
            "--version" => {
                println!("dmtcp_command (DMTCP-rs) {}", dmtcp_common::VERSION);
                return 0;
            }
            "-h" | "--coord-host" | "--host" => value(&arg).map(|v| a.host = v),
            "-p" | "--coord-port" | "--port" => value(&arg).and_then(|v| v.parse().map(|p| a.port = p).map_err(|_| format!("bad port '{v}'"))),
            s if s.starts_with("-p") && s[2..].parse::<u16>().is_ok() => {
                a.port = s[2..].parse().unwrap_or(0);
                Ok(())
            }
            s if s.starts_with("--coord-port=") || s.starts_with("--port=") => {
                let v = s.split_once('=').map(|x| x.1).unwrap_or("");
                v.parse().map(|p| a.port = p).map_err(|_| format!("bad port '{v}'"))
            }
            "--json" => {
                json = true;
                Ok(())
            }
            "s" | "-s" | "--status" => set(&mut cmd, Cmd::Status),
            "l" | "-l" | "--list" => set(&mut cmd, Cmd::List),
            "c" | "-c" | "--checkpoint" => set(&mut cmd, Cmd::Checkpoint),
            "bc" | "-bc" | "--bcheckpoint" => set(&mut cmd, Cmd::BlockingCheckpoint),
            "kc" | "-kc" | "--kcheckpoint" => set(&mut cmd, Cmd::KillAfterCheckpoint),
            "k" | "-k" | "--kill" => set(&mut cmd, Cmd::Kill),
            "q" | "-q" | "--quit" => set(&mut cmd, Cmd::Quit),
            "i" | "-i" | "--interval" => value(&arg)
                .and_then(|v| v.parse().map_err(|_| format!("bad interval '{v}'")))
                .and_then(|n| set(&mut cmd, Cmd::Interval(n))),
            s if s.starts_with("--interval=") => s[11..]
                .parse()
                .map_err(|_| format!("bad interval '{}'", &s[11..]))
                .and_then(|n| set(&mut cmd, Cmd::Interval(n))),
            other => Err(format!("unknown option or command '{other}'")),
        };
        if let Err(m) = r {
            return bad(m);
        }
    }
    let Some(cmd) = cmd else { return bad("no command given".into()) };
    let name = cmd_name(&cmd);
    match send_command(&a.host, a.port, cmd.clone()) {
        Err(e) if e.starts_with(REFUSED) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema_version": 1, "command": name, "command_status": "DMT_COORD_ERROR",
                        "coordinator_host": a.host, "coordinator_port": a.port, "message": e})
                );
            } else {
                eprintln!("dmtcp_command: {e}");
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
                eprintln!("dmtcp_command: Coordinator not found at {}:{}. Please check the host and port.", a.host, a.port);
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
                });
                if matches!(cmd, Cmd::List) {
                    v["peers"] = serde_json::to_value(&r.peers).unwrap_or_default();
                }
                if let Some(m) = &r.message {
                    v["message"] = m.clone().into();
                }
                if !r.images.is_empty() && matches!(cmd, Cmd::BlockingCheckpoint | Cmd::KillAfterCheckpoint) {
                    v["images"] = serde_json::to_value(&r.images).unwrap_or_default();
                }
                println!("{v}");
            } else {
                match cmd {
                    Cmd::Status => print!("{}", status_text(&a.host, a.port, &r)),
                    Cmd::List => print!("{}", list_text(&r)),
                    _ => {
                        if let Some(m) = &r.message {
                            eprintln!("dmtcp_command: {m}");
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
