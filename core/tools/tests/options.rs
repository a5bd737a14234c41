//! Every tool's DMTCP-documented options, in each spelling DMTCP takes:
//! listed by `--help`, accepted, and taking effect where that is cheap to
//! see; bad usage exits 1 with the error and the usage; man pages and
//! shell completions are generated.

mod common;
use common::*;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOOLS: [&str; 5] = [
    "dmtcp_launch",
    "dmtcp_checkpoint",
    "dmtcp_command",
    "dmtcp_restart",
    "dmtcp_coordinator",
];

/// The environment variables the tools read, cleared so that the
/// environment the tests run in does not change what they see.
const ENV: [&str; 16] = [
    "DMTCP_COORD_HOST",
    "DMTCP_COORD_PORT",
    "DMTCP_CHECKPOINT_DIR",
    "DMTCP_CHECKPOINT_INTERVAL",
    "DMTCP_GZIP",
    "DMTCP_QUIET",
    "DMTCP_PLUGIN",
    "DMTCP_TMPDIR",
    "DMTCP_CKPT_SIGNAL",
    "DMTCP_CKPT_OPEN_FILES",
    "DMTCP_DISABLED_PLUGINS",
    "DMTCP_RESTART_PIDNS",
    "DMTCP_INCREMENTAL",
    "DMTCP_FULL_EVERY",
    "DMTCP_FORKED_CKPT",
    "DMTCP_FORKED_CHECKPOINT",
];

fn clean(name: &str) -> Command {
    let mut c = tool(name);
    for v in ENV {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

fn run(name: &str, args: &[&str]) -> Output {
    clean(name).args(args).output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `o` exited with status 1 and said `what` on stderr.
fn assert_fails(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", err(o));
    assert!(err(o).contains(what), "no {what:?} in: {}", err(o));
}

/// The options of each tool that `--help` must list, as they appear there.
fn documented(t: &str) -> Vec<&'static str> {
    let coord = [
        "-h, --coord-host <HOST>",
        "-p, --coord-port <PORT>",
        "--port-file <FILE>",
        "-j, --join-coordinator",
        "--new-coordinator",
        "--any-coordinator",
        "--allow-other-user-coordinator",
        "-i, --interval <SECS>",
        "DMTCP_COORD_HOST",
        "DMTCP_COORD_PORT",
        "DMTCP_CHECKPOINT_INTERVAL",
    ];
    let other = ["--help", "--version"];
    let mut v: Vec<&str> = match t {
        "dmtcp_launch" | "dmtcp_checkpoint" => [
            "-c, --ckptdir <DIR>",
            "--gzip",
            "--no-gzip",
            "--ckpt-signal <N>",
            "--ckpt-open-files",
            "--with-plugin <A.so[:B.so]>",
            "--ib",
            "--disable-ssh-plugin",
            "--disable-tun-plugin",
            "--disable-batch-plugin",
            "--disable-process-plugin",
            "--disable-event-plugin",
            "--disable-pty-plugin",
            "--disable-file-plugin",
            "--disable-socket-plugin",
            "--disable-sysv-plugin",
            "--disable-timers-plugin",
            "-t, --tmpdir <DIR>",
            "-q, --quiet",
            "DMTCP_CHECKPOINT_DIR",
            "DMTCP_GZIP",
            "DMTCP_CKPT_SIGNAL",
            "DMTCP_CKPT_OPEN_FILES",
            "DMTCP_PLUGIN",
            "DMTCP_TMPDIR",
            "DMTCP_QUIET",
            "<command>",
        ]
        .into_iter()
        .chain(coord)
        .collect(),
        "dmtcp_restart" => [
            "-c, --ckptdir <DIR>",
            "-d, --restartdir <DIR>",
            "--no-strict-checking",
            "--allow-other-user-image",
            "--verify <WHEN>",
            "-t, --tmpdir <DIR>",
            "-q, --quiet",
            "[ckpt.dmtcp]",
        ]
        .into_iter()
        .chain(coord)
        .collect(),
        "dmtcp_command" => vec![
            "-h, --coord-host <HOST>",
            "-p, --coord-port <PORT>",
            "--json",
            "-s, --status",
            "-l, --list",
            "-c, --checkpoint",
            "--bcheckpoint",
            "-bc, bc",
            "--kcheckpoint",
            "-kc, kc",
            "-i, --interval <N>",
            "-k, --kill",
            "-q, --quit",
            "DMTCP_COORD_HOST",
            "DMTCP_COORD_PORT",
        ],
        "dmtcp_coordinator" => vec![
            "[PORT]",
            "-p, --coord-port <PORT>",
            "--port-file <FILE>",
            "-c, --ckptdir <DIR>",
            "-i, --interval <SECS>",
            "--exit-on-last",
            "--kill-after-ckpt",
            "--timeout <SECS>",
            "--daemon",
            "-q, --quiet",
            "-h, --help",
            "DMTCP_COORD_PORT",
            "DMTCP_CHECKPOINT_INTERVAL",
        ],
        _ => unreachable!(),
    };
    v.extend(other);
    v
}

#[test]
fn help_lists_every_option_and_version_names_the_tool() {
    for t in TOOLS {
        let o = run(t, &["--help"]);
        assert_eq!(o.status.code(), Some(0), "{t} --help: {}", err(&o));
        let help = out(&o);
        assert!(
            help.contains(&format!("Usage: {t} [OPTIONS]")),
            "{t}:\n{help}"
        );
        for opt in documented(t) {
            assert!(help.contains(opt), "{t} --help lacks {opt}:\n{help}");
        }
        // Hand-wrapped to fit a terminal (see cli::wrap).
        assert!(help.lines().all(|l| l.len() <= 100), "{t}:\n{help}");
        let o = run(t, &["--version"]);
        assert_eq!(o.status.code(), Some(0));
        assert!(
            out(&o).starts_with(&format!("{t} (DMTCP-rs) ")),
            "{}",
            out(&o)
        );
    }
    // -h is the coordinator's host, except for the coordinator (as DMTCP).
    let o = run("dmtcp_coordinator", &["-h"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(out(&o).contains("--exit-on-last"));
    for t in ["dmtcp_launch", "dmtcp_command", "dmtcp_restart"] {
        let o = run(t, &["-h"]);
        assert_eq!(o.status.code(), Some(1), "{t} -h");
        assert!(err(&o).contains("--coord-host <HOST>"), "{t}: {}", err(&o));
    }
}

/// Bad usage: exit status 1, an error naming what is wrong, the usage.
#[test]
fn bad_usage_exits_1_with_the_error_and_the_usage() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("dmtcp_launch", &["--bogus", "true"], "'--bogus'"),
        ("dmtcp_launch", &["-p"], "--coord-port"),
        ("dmtcp_launch", &["-p", "port", "true"], "'port'"),
        (
            "dmtcp_launch",
            &["--ckpt-signal", "9", "true"],
            "--ckpt-signal",
        ),
        ("dmtcp_launch", &["-q"], "<command>"),
        ("dmtcp_checkpoint", &["-x", "true"], "'-x'"),
        ("dmtcp_command", &["-s", "--bogus"], "'--bogus'"),
        ("dmtcp_command", &["frob"], "'frob'"),
        ("dmtcp_command", &["-p", "1"], "no command given"),
        ("dmtcp_command", &["-s", "-l"], "--status"),
        ("dmtcp_command", &["i"], "--interval"),
        ("dmtcp_command", &["-i", "x"], "'x'"),
        ("dmtcp_command", &["-s", "-h"], "--coord-host"),
        ("dmtcp_restart", &["--bogus", "x.dmtcp"], "'--bogus'"),
        ("dmtcp_restart", &[], "<ckpt.dmtcp>"),
        ("dmtcp_restart", &["--restartdir"], "--restartdir"),
        ("dmtcp_coordinator", &["--bogus"], "'--bogus'"),
        ("dmtcp_coordinator", &["--timeout"], "--timeout"),
        ("dmtcp_coordinator", &["-i", "x"], "--interval <SECS>"),
    ];
    for (t, args, names) in cases {
        let o = run(t, args);
        let e = err(&o);
        assert_eq!(o.status.code(), Some(1), "{t} {args:?}: {e}");
        assert!(e.contains(&format!("{t}: error: ")), "{t} {args:?}: {e}");
        assert!(e.contains(names), "{t} {args:?} should name {names}: {e}");
        assert!(e.contains(&format!("Usage: {t} ")), "{t} {args:?}: {e}");
    }
    // An empty --restartdir: no images.
    let empty = fresh_dir("norestart");
    let o = run("dmtcp_restart", &["-d", empty.to_str().unwrap()]);
    assert_fails(&o, "no checkpoint images given");
    assert!(err(&o).contains("Usage: dmtcp_restart"));
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = fresh_dir("man");
    for t in TOOLS {
        let o = run(t, &["--generate-man", dir.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{t}: {}", err(&o));
        let page = std::fs::read_to_string(dir.join(format!("{t}.1"))).unwrap();
        assert!(page.contains(&format!(".TH {t} 1")), "{t}: {page}");
        let opt = if t == "dmtcp_coordinator" {
            "exit\\-on\\-last"
        } else {
            "coord\\-port"
        };
        assert!(page.contains(opt), "{t}.1 lacks {opt}:\n{page}");
        for shell in ["bash", "zsh", "fish"] {
            let o = run(t, &["--generate-completions", shell]);
            assert_eq!(o.status.code(), Some(0), "{t} {shell}: {}", err(&o));
            let script = out(&o);
            assert!(
                script.contains(t) && script.contains("coord-port"),
                "{t} {shell}:\n{script}"
            );
        }
    }
    // bash takes the script and completes the tool's options with it.
    let script = out(&run("dmtcp_command", &["--generate-completions", "bash"]));
    let file = dir.join("dmtcp_command.bash");
    std::fs::write(&file, script).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(dmtcp_command --bchec); COMP_CWORD=1; \
             _dmtcp_command dmtcp_command --bchec dmtcp_command; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(out(&o).trim(), "--bcheckpoint", "{}", err(&o));
    // Generation is alone on its command line; an unknown shell is refused.
    assert_eq!(
        run("dmtcp_command", &["--generate-completions", "tcsh"])
            .status
            .code(),
        Some(1)
    );
    let o = run(
        "dmtcp_command",
        &["-s", "--generate-man", dir.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
}

/// `-s` output's port, and its NUM_PEERS.
fn status_port(o: &Output) -> (u16, String) {
    assert_eq!(o.status.code(), Some(0), "{}", err(o));
    let s = out(o);
    let port = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("Port: "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {s}"));
    let peers = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("NUM_PEERS="))
        .unwrap_or_else(|| panic!("no NUM_PEERS in {s}"));
    (port, peers.to_string())
}

fn interval_of(port: u16) -> i64 {
    let o = run("dmtcp_command", &["-p", &port.to_string(), "--json", "-s"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["checkpoint_interval"].as_i64().unwrap()
}

/// dmtcp_command's spellings of its options and commands all reach the
/// coordinator and do what they say.
#[test]
fn command_spellings_reach_the_coordinator() {
    let job = Job::new("cmdforms");
    let port = job.port.to_string();
    let p_glued = format!("-p{port}");
    let p_eq = format!("--coord-port={port}");
    for args in [
        vec!["-h", "127.0.0.1", "-p", &port, "-s"],
        vec![
            "--coord-host",
            "127.0.0.1",
            "--coord-port",
            &port,
            "--status",
        ],
        vec!["--host", "127.0.0.1", "--port", &port, "s"],
        vec!["-s", p_glued.as_str()],
        vec![p_eq.as_str(), "--s"],
        vec!["---status", "-p", &port],
    ] {
        let o = run("dmtcp_command", &args);
        assert_eq!(status_port(&o), (job.port, "0".into()), "{args:?}");
    }
    // Host and port from the environment; options win over it.
    let o = clean("dmtcp_command")
        .env("DMTCP_COORD_HOST", "127.0.0.1")
        .env("DMTCP_COORD_PORT", &port)
        .arg("s")
        .output()
        .unwrap();
    assert_eq!(status_port(&o).0, job.port);
    let o = clean("dmtcp_command")
        .env("DMTCP_COORD_PORT", unused_port().to_string())
        .args(["-p", &port, "-s"])
        .output()
        .unwrap();
    assert_eq!(status_port(&o).0, job.port);
    let o = clean("dmtcp_command")
        .env("DMTCP_COORD_PORT", unused_port().to_string())
        .arg("-s")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    // Every spelling of the interval command sets it.
    for (n, args) in [
        (3, vec!["i", "3"]),
        (4, vec!["-i4"]),
        (5, vec!["i5"]),
        (6, vec!["--interval=6"]),
        (7, vec!["--interval", "7"]),
        (8, vec!["-i", "8"]),
        (9, vec!["--i", "9"]),
        (0, vec!["interval", "0"]),
    ] {
        let o = run("dmtcp_command", &[&["-p", &port][..], &args].concat());
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", err(&o));
        assert_eq!(interval_of(job.port), n, "{args:?}");
    }
    // list, with and without --json.
    for l in ["l", "-l", "--list", "t"] {
        let o = run("dmtcp_command", &["-p", &port, l]);
        assert_eq!(o.status.code(), Some(0), "{l}");
        assert!(out(&o).starts_with("Client List:"), "{l}: {}", out(&o));
    }
    let o = run("dmtcp_command", &["--json", "-p", &port, "--list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command"], "DMT_LIST");
    assert!(v["peers"].as_array().is_some_and(|p| p.is_empty()), "{v}");
    // kill with nobody to kill succeeds; quit ends the coordinator.
    for k in ["k", "-k", "--kill"] {
        assert_eq!(
            run("dmtcp_command", &["-p", &port, k]).status.code(),
            Some(0)
        );
    }
    let o = run("dmtcp_command", &["-p", &port, "--json", "q"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command"], "DMT_QUIT", "{v}");
    let deadline = Instant::now() + TIMEOUT;
    while run("dmtcp_command", &["-p", &port, "-s"]).status.code() != Some(2) {
        assert!(Instant::now() < deadline, "the coordinator did not quit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The environment `dmtcp_launch <args> env` gives the program, joined
/// to `port`, with `envs` set for the launcher.
fn launched_env(port: u16, args: &[&str], envs: &[(&str, &str)]) -> HashMap<String, String> {
    let dir = fresh_dir("launchenv");
    let o = clean("dmtcp_launch")
        .args(["-j", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .arg("env")
        .envs(envs.iter().copied())
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", err(&o));
    out(&o)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// dmtcp_launch's options reach the program's environment, which the
/// checkpointer in it reads.
#[test]
fn launch_options_reach_the_program() {
    let job = Job::new("launchopts");
    let ckpt = fresh_dir("launchckpt");
    let ck = ckpt.to_str().unwrap();
    let ssh = bin_dir().join("libdmtcp_ssh.so");
    let lib = bin_dir().join("libdmtcp.so").display().to_string();
    let e = launched_env(
        job.port,
        &[
            "--ckptdir",
            ck,
            "--no-gzip",
            "--ckpt-signal",
            "10",
            "--ckpt-open-files",
            "--tmpdir",
            "/tmp",
            "-q",
            "--disable-pty-plugin",
            "--disable-svipc-plugin",
            "--disable-alloc-plugin",
            "--disable-ssh-plugin",
            "--disable-tun-plugin",
            "--disable-batch-plugin",
        ],
        &[],
    );
    assert_eq!(e["DMTCP_CHECKPOINT_DIR"], ck);
    assert_eq!(e["DMTCP_GZIP"], "0");
    assert_eq!(e["DMTCP_CKPT_SIGNAL"], "10");
    assert_eq!(e["DMTCP_CKPT_OPEN_FILES"], "1");
    assert_eq!(e["DMTCP_TMPDIR"], "/tmp");
    assert_eq!(e["DMTCP_QUIET"], "1");
    assert_eq!(e["DMTCP_DISABLED_PLUGINS"], "pty,sysv,alloc");
    assert_eq!(e["DMTCP_COORD_HOST"], "127.0.0.1");
    assert_eq!(e["DMTCP_COORD_PORT"], job.port.to_string());
    assert_eq!(
        e["LD_PRELOAD"], lib,
        "--disable-ssh-plugin --disable-tun-plugin --disable-batch-plugin"
    );
    // Short spellings; the last of --gzip/--no-gzip counts; -q counts up
    // from DMTCP_QUIET; plugins from DMTCP_PLUGIN then --with-plugin.
    let e = launched_env(
        job.port,
        &[
            "-c",
            ck,
            "--no-gzip",
            "--gzip",
            "-t",
            "/var/tmp",
            "-qq",
            "--checkpoint-open-files",
            "--with-plugin",
            ssh.to_str().unwrap(),
            "--disable-ssh-plugin",
            "--disable-tun-plugin",
            "--disable-batch-plugin",
        ],
        &[("DMTCP_QUIET", "1"), ("DMTCP_PLUGIN", &lib)],
    );
    assert_eq!(e["DMTCP_CHECKPOINT_DIR"], ck);
    assert_eq!(e["DMTCP_GZIP"], "1");
    assert_eq!(e["DMTCP_TMPDIR"], "/var/tmp");
    assert_eq!(e["DMTCP_QUIET"], "3");
    assert_eq!(e["DMTCP_CKPT_OPEN_FILES"], "1");
    assert_eq!(e["LD_PRELOAD"], format!("{lib}:{lib}:{}", ssh.display()));
    // Defaults from the environment.
    let e = launched_env(
        job.port,
        &[],
        &[("DMTCP_CHECKPOINT_DIR", ck), ("DMTCP_GZIP", "0")],
    );
    assert_eq!(e["DMTCP_CHECKPOINT_DIR"], ck);
    assert_eq!(e["DMTCP_GZIP"], "0");
    assert!(
        e["LD_PRELOAD"].contains("libdmtcp_ssh.so"),
        "ssh plugin on by default"
    );
    assert!(
        e["LD_PRELOAD"].contains("libdmtcp_tun.so"),
        "tun plugin on by default"
    );
    assert!(
        e["LD_PRELOAD"].contains("libdmtcp_ssh.so:")
            && e["LD_PRELOAD"].contains("libdmtcp_batch.so"),
        "batch plugin on by default, after the ssh plugin: {}",
        e["LD_PRELOAD"]
    );
    // A relative plugin path is refused.
    let o = clean("dmtcp_launch")
        .args([
            "-j",
            "-p",
            &job.port.to_string(),
            "--with-plugin",
            "x.so",
            "true",
        ])
        .output()
        .unwrap();
    assert_fails(&o, "absolute path");
}

/// Incremental images are the library's default, so `dmtcp_launch` says
/// nothing unless told: `--no-incremental` sets DMTCP_INCREMENTAL=0 (over
/// an inherited 1), `--incremental` and `--full-every N` set it to 1
/// (over an inherited 0), and `--no-incremental --full-every N` is refused.
#[test]
fn launch_incremental_options() {
    let job = Job::new("launchincr");
    let e = launched_env(job.port, &[], &[]);
    assert!(
        !e.contains_key("DMTCP_INCREMENTAL") && !e.contains_key("DMTCP_FULL_EVERY"),
        "{e:?}"
    );
    let e = launched_env(
        job.port,
        &["--no-incremental"],
        &[("DMTCP_INCREMENTAL", "1")],
    );
    assert_eq!(e["DMTCP_INCREMENTAL"], "0");
    let e = launched_env(job.port, &["--incremental"], &[("DMTCP_INCREMENTAL", "0")]);
    assert_eq!(e["DMTCP_INCREMENTAL"], "1");
    let e = launched_env(
        job.port,
        &["--full-every", "3"],
        &[("DMTCP_INCREMENTAL", "0")],
    );
    assert_eq!(
        (
            e["DMTCP_INCREMENTAL"].as_str(),
            e["DMTCP_FULL_EVERY"].as_str()
        ),
        ("1", "3")
    );
    let e = launched_env(job.port, &["--incremental", "--no-incremental"], &[]);
    assert_eq!(e["DMTCP_INCREMENTAL"], "0", "the last one counts");
    let o = clean("dmtcp_launch")
        .args([
            "-j",
            "-p",
            &job.port.to_string(),
            "--no-incremental",
            "--full-every",
            "3",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("--full-every"), "{}", err(&o));
}

/// The program and its arguments are everything from the first word that
/// is not an option on, options of the program included; `--` ends
/// dmtcp_launch's options too.
#[test]
fn launch_passes_the_programs_own_options() {
    let job = Job::new("launchargs");
    let port = job.port.to_string();
    let script = "printf '%s|' \"$@\"";
    for (pre, prog_args) in [
        (
            vec![],
            vec![
                "sh",
                "-c",
                script,
                "sh",
                "-c",
                "--help",
                "-p",
                "5",
                "--disable-pty-plugin",
            ],
        ),
        (vec!["--"], vec!["sh", "-c", script, "sh", "-q", "--", "x"]),
    ] {
        let o = clean("dmtcp_launch")
            .args(["-j", "-p", &port])
            .args(&pre)
            .args(&prog_args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let want: String = prog_args[4..].iter().map(|a| format!("{a}|")).collect();
        assert_eq!(out(&o), want);
    }
    // The program's exit status is dmtcp_launch's (it becomes the program).
    let o = clean("dmtcp_launch")
        .args(["-j", "-p", &port, "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7));
}

/// The coordinator choices of dmtcp_launch: -i reaches a joined
/// coordinator (also from DMTCP_CHECKPOINT_INTERVAL); --new-coordinator
/// -p 0 --port-file starts one on a free port.
#[test]
fn launch_coordinator_options_take_effect() {
    let job = Job::new("launchcoord");
    launched_env(
        job.port,
        &["-i", "9", "--allow-other-user-coordinator"],
        &[],
    );
    assert_eq!(interval_of(job.port), 9);
    launched_env(
        job.port,
        &["--interval", "12", "--any-coordinator", "-j"],
        &[],
    );
    assert_eq!(interval_of(job.port), 12);
    launched_env(job.port, &["-i5"], &[]);
    assert_eq!(interval_of(job.port), 5);
    launched_env(job.port, &[], &[("DMTCP_CHECKPOINT_INTERVAL", "11")]);
    assert_eq!(interval_of(job.port), 11);
    // --new-coordinator after -j: the last of the two counts.
    let dir = fresh_dir("newcoord");
    let pf = dir.join("port");
    let e = launched_env(
        job.port,
        &[
            "--new-coordinator",
            "-p",
            "0",
            "--port-file",
            pf.to_str().unwrap(),
        ],
        &[],
    );
    let port: u16 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(port, job.port);
    assert_eq!(e["DMTCP_COORD_PORT"], port.to_string());
    // The environment's port is joined (-j), the option's wins over it.
    let o = clean("dmtcp_launch")
        .env("DMTCP_COORD_PORT", job.port.to_string())
        .env("DMTCP_COORD_HOST", "127.0.0.1")
        .args(["--join-coordinator", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = clean("dmtcp_launch")
        .env("DMTCP_COORD_PORT", job.port.to_string())
        .args(["--join", "-p", &unused_port().to_string(), "true"])
        .output()
        .unwrap();
    assert_fails(&o, "Coordinator not found");
}

/// `dmtcp_launch -c D` writes its images into D; `dmtcp_restart -r D -c E`
/// restarts them and writes the next ones into E (with DMTCP's bare
/// command words for dmtcp_command).
#[test]
fn ckptdir_and_restartdir_take_effect() {
    let prog = c_program("memcheck");
    let d = fresh_dir("ckptd");
    let e = fresh_dir("ckpte");
    let mut job = Job::new("ckptdirs");
    job.launch(&[prog.to_str().unwrap()], &["-c", d.to_str().unwrap()]);
    job.wait_for("step 1 ok");
    let o = job.command(&["bc"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!images_in(&d).is_empty(), "no image in --ckptdir");
    assert!(job.images().is_empty(), "an image outside --ckptdir");
    let o = job.command(&["kc"]);
    assert!(o.status.success(), "{}", err(&o));
    let mut p = job.proc.take().unwrap();
    wait_timeout(&mut p, TIMEOUT).expect("kc did not kill the program");
    job.restart_with(&[
        "-r".into(),
        d.display().to_string(),
        "--ckptdir".into(),
        e.display().to_string(),
        "--no-strict-checking".into(),
        "-q".into(),
    ]);
    job.wait_for("step 4 ok");
    let o = job.command(&["--bcheckpoint"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        !images_in(&e).is_empty(),
        "no image in dmtcp_restart --ckptdir"
    );
    job.wait_success();
    assert!(job.output().contains("RESULT"), "{}", job.output());
}

/// dmtcp_restart's other options are taken (the image is what fails).
#[test]
fn restart_options_are_accepted() {
    let dir = fresh_dir("restartopts");
    let img = dir.join("ckpt_none_1.dmtcp");
    std::fs::write(&img, b"not an image").unwrap();
    let o = run(
        "dmtcp_restart",
        &[
            "--no-strict-checking",
            "--allow-other-user-image",
            "--allow-other-user-coordinator",
            "-t",
            "/tmp",
            "--tmpdir",
            "/tmp",
            "-q",
            "--quiet",
            "-i",
            "3",
            "--new-coordinator",
            "--any-coordinator",
            "--port-file",
            dir.join("port").to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    assert_fails(&o, "not a DMTCP-rs checkpoint image");
    assert!(!err(&o).contains("Usage"), "{}", err(&o));
    // --restartdir (and -d, -r) reads the directory.
    for opt in ["--restartdir", "-d", "-r"] {
        let o = run("dmtcp_restart", &[opt, dir.to_str().unwrap()]);
        assert_fails(&o, "not a DMTCP-rs checkpoint image");
    }
}

fn wait_status(port: u16) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let o = run("dmtcp_command", &["-p", &port.to_string(), "-s"]);
        if o.status.success() || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn coordinator_options_take_effect() {
    // --daemon returns at once; -p 0 --port-file, -i, -c (made), --timeout.
    let dir = fresh_dir("coordopts");
    let pf = dir.join("port");
    let ck = dir.join("images");
    let o = run(
        "dmtcp_coordinator",
        &[
            "--daemon",
            "--exit-on-last",
            "--kill-after-ckpt",
            "-q",
            "-p",
            "0",
            "--port-file",
            pf.to_str().unwrap(),
            "-i",
            "13",
            "-c",
            ck.to_str().unwrap(),
            "--timeout",
            "3",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let port = read_port_file(&pf);
    assert_eq!(status_port(&wait_status(port)).0, port);
    assert_eq!(interval_of(port), 13);
    assert!(ck.is_dir(), "--ckptdir not made");
    let deadline = Instant::now() + TIMEOUT;
    while run("dmtcp_command", &["-p", &port.to_string(), "-s"])
        .status
        .code()
        != Some(2)
    {
        assert!(Instant::now() < deadline, "--timeout 3 did not end it");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port as operand, as -pN, and from the environment (with the
    // interval); the last of operand and option counts.
    for (args, envs) in [
        (vec!["PORT".to_string()], vec![]),
        (vec![format!("-pPORT")], vec![]),
        (
            vec!["1".into(), "--coord-port".into(), "PORT".into()],
            vec![],
        ),
        (
            vec![],
            vec![
                ("DMTCP_COORD_PORT", "PORT"),
                ("DMTCP_CHECKPOINT_INTERVAL", "14"),
            ],
        ),
    ] {
        let port = unused_port();
        let ps = port.to_string();
        let mut c = clean("dmtcp_coordinator");
        c.args(args.iter().map(|a| a.replace("PORT", &ps)))
            .args(["--quiet", "--quiet", "--timeout", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &envs {
            c.env(k, v.replace("PORT", &ps));
        }
        let mut child = c.spawn().unwrap();
        assert_eq!(status_port(&wait_status(port)).0, port, "{args:?} {envs:?}");
        let want = if envs.is_empty() { 0 } else { 14 };
        assert_eq!(interval_of(port), want);
        assert!(run("dmtcp_command", &["-p", &ps, "--quit"])
            .status
            .success());
        assert!(wait_timeout(&mut child, TIMEOUT).is_some(), "--quit");
    }
}

/// Forked checkpointing is the library's default where the node has the
/// memory for it, so `dmtcp_launch` says nothing unless told:
/// `--forked-ckpt` (or DMTCP's `--forked-checkpointing`) sets
/// DMTCP_FORKED_CKPT=1, `--no-forked-ckpt` sets 0 (over an inherited 1),
/// and the last of the two counts.
#[test]
fn launch_forked_options() {
    let job = Job::new("launchfork");
    let e = launched_env(job.port, &[], &[]);
    assert!(!e.contains_key("DMTCP_FORKED_CKPT"), "{e:?}");
    let e = launched_env(job.port, &["--forked-ckpt"], &[]);
    assert_eq!(e["DMTCP_FORKED_CKPT"], "1");
    let e = launched_env(job.port, &["--forked-checkpointing"], &[]);
    assert_eq!(e["DMTCP_FORKED_CKPT"], "1");
    let e = launched_env(
        job.port,
        &["--no-forked-ckpt"],
        &[("DMTCP_FORKED_CKPT", "1")],
    );
    assert_eq!(e["DMTCP_FORKED_CKPT"], "0");
    let e = launched_env(job.port, &["--no-forked-ckpt", "--forked-ckpt"], &[]);
    assert_eq!(e["DMTCP_FORKED_CKPT"], "1", "the last one counts");
}
