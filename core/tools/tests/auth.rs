//! The authenticated coordinator (docs/security.md): every connection
//! starts with a challenge answered with HMAC-SHA256(secret, nonce).
//!
//! A client from another machine (here: another network namespace of a
//! testrig rig, where the coordinator's uid check cannot see it) that does
//! not know the secret is refused; one given the secret file is served; a
//! wrong answer is refused and logged; the secret is in neither the launched
//! program's environment, command line nor its images; the tools need no
//! new flag on the coordinator's own machine.

mod common;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on every wait (only to turn a hang into a failure).
const HANG: Duration = Duration::from_secs(60);

/// The secret the coordinator at `port` on this machine wrote for us.
fn secret_file(port: u16) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir()
        .join(format!("dmtcp-{uid}"))
        .join(format!("coord-{}-{port}.secret", hostname()))
}

fn hostname() -> String {
    String::from_utf8(Command::new("uname").arg("-n").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn coord_err(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("coord.err")).unwrap_or_default()
}

fn wait_log(dir: &Path, pat: &str) -> bool {
    let deadline = Instant::now() + HANG;
    while !coord_err(dir).contains(pat) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn launch_sleeper(job: &mut Job) {
    job.launch(
        &[
            "python3",
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(300)\n",
        ],
        &["--no-gzip"],
    );
    job.wait_for("ready");
}

fn num_peers(job: &Job) -> usize {
    job.peer_pids().len()
}

/// The coordinator writes a private secret file; a raw client with a
/// wrong answer, or none, is refused without a word and logged; the tools
/// of the same user need no flag.
#[test]
fn a_wrong_or_missing_answer_is_refused_and_logged() {
    let mut job = Job::new("auth-wrong");
    launch_sleeper(&mut job);
    let f = secret_file(job.port);
    let meta = std::fs::metadata(&f).expect("the coordinator's secret file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", f.display());
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.trim().len(), 64, "{text:?}");

    for (auth, logged) in [
        (json!("00".repeat(32)), "a wrong answer to the challenge"),
        (serde_json::Value::Null, "no answer to the challenge"),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", job.port)).unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["t"], "Challenge", "{first}");
        assert_eq!(v["nonce"].as_str().unwrap().len(), 64, "{first}");
        let hello = json!({"t": "Hello", "role": "Command", "pid": 4242, "hostname": "raw",
            "program": "forger", "uniq_id": "", "restarting": false, "comp_id": null,
            "generation": 0, "num_peers": 0, "auth": auth});
        s.write_all(format!("{hello}\n").as_bytes()).unwrap();
        s.write_all(b"{\"t\":\"Command\",\"cmd\":\"Kill\"}\n")
            .unwrap();
        // Nothing is said: the connection is closed.
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        assert_eq!(rest, "", "the coordinator answered a forged client");
        assert!(
            wait_log(&job.dir, logged),
            "no log line {logged:?}: {}",
            coord_err(&job.dir)
        );
    }
    assert!(coord_err(&job.dir).contains("forger"));
    // The forged kills did nothing; the same user's tools need no flag.
    assert_eq!(num_peers(&job), 1, "{}", coord_err(&job.dir));
    let o = job.command(&["-s"]);
    assert!(o.status.success(), "{o:?}");

    // A wrong secret file: refused, with a message naming the problem.
    let wrong = job.dir.join("wrong.secret");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = tool("dmtcp_command")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &job.port.to_string(),
            "--secret-file",
        ])
        .arg(&wrong)
        .arg("-k")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("challenge"), "{err}");
    let o = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &job.port.to_string(), "-k"])
        .env("DMTCP_SECRET_FILE", &wrong)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(num_peers(&job), 1, "{}", coord_err(&job.dir));
    job.kill();
    // Removed when the coordinator ends.
    let _ = job.command(&["-q"]);
    let deadline = Instant::now() + HANG;
    while f.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!f.exists(), "{} left behind", f.display());
}

/// A coordinator that never sends its challenge (an older version): the
/// tool says so, bounded, instead of hanging.
#[test]
fn a_coordinator_without_a_challenge_is_named() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().take(1) {
            held.push(c);
            std::thread::sleep(Duration::from_secs(40));
        }
    });
    let t = Instant::now();
    let o = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("did not send its challenge") && err.contains("older version"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(35), "{:?}", t.elapsed());
    drop(keep);
}

/// Launch, checkpoint, kill and restart with no new flag; the secret is
/// not in the program's environment or command line, nor (raw or as hex)
/// in any image, before or after the restart.
#[test]
fn the_secret_stays_out_of_environ_cmdline_and_images() {
    let mut job = Job::new("auth-image");
    launch_sleeper(&mut job);
    let hex = std::fs::read_to_string(secret_file(job.port))
        .unwrap()
        .trim()
        .to_string();
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let holds = |hay: &[u8]| {
        hay.windows(64)
            .any(|w| w.eq_ignore_ascii_case(hex.as_bytes()))
            || hay.windows(32).any(|w| w == raw.as_slice())
    };
    for pid in job.peer_pids() {
        for f in ["environ", "cmdline"] {
            let b = std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
            assert!(!holds(&b), "the secret is in /proc/{pid}/{f}");
        }
    }
    let check_images = |job: &Job, when: &str| {
        let imgs = job.images();
        assert!(!imgs.is_empty(), "{when}: no images");
        for i in imgs {
            let b = std::fs::read(&i).unwrap();
            assert!(b.len() > 100_000, "{}: compressed?", i.display());
            assert!(!holds(&b), "{when}: the secret is in {}", i.display());
        }
    };
    job.checkpoint();
    check_images(&job, "first checkpoint");
    job.kill();
    job.restart();
    // The restored process rejoined (it answered the challenge with the
    // secret dmtcp_restart handed it), and checkpoints again.
    let deadline = Instant::now() + HANG;
    while num_peers(&job) != 1 {
        assert!(Instant::now() < deadline, "not rejoined after restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in job.images() {
        std::fs::remove_file(i).unwrap();
    }
    job.checkpoint();
    check_images(&job, "after restart");
    job.kill();
}

/// A client in another network namespace (node1 of a rig; the
/// coordinator and the job on node0): without the secret it is refused
/// and cannot kill the job; with the secret file it is served.
#[test]
fn a_client_from_another_host_needs_the_secret() {
    let rig = testrig::Rig::builder(2)
        .up()
        .expect("rig (needs root, iproute2)");
    let (n0, n1) = (rig.node(0), rig.node(1));
    let dir = rig.shared_dir().join("auth");
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let bin = bin_dir();
    let mut coord = n0
        .command(bin.join("dmtcp_coordinator"))
        .args(["-p", "0", "--port-file"])
        .arg(&port_file)
        .env_remove("DMTCP_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("coord.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("coord.err")).unwrap())
        .spawn()
        .unwrap();
    let port = read_port_file(&port_file);
    let mut prog = n0
        .command(bin.join("dmtcp_launch"))
        .args(["-j", "-p", &port.to_string(), "sleep", "300"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let cmd = |env: Option<&Path>, what: &str| {
        let mut c = n1.command(bin.join("dmtcp_command"));
        c.args(["-h", "node0", "-p", &port.to_string(), "--json", what])
            .env_remove("DMTCP_SECRET_FILE");
        if let Some(f) = env {
            c.env("DMTCP_SECRET_FILE", f);
        }
        c.output().unwrap()
    };
    let peers = |o: &std::process::Output| -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["num_peers"].as_u64()
    };
    let local = |what: &str| {
        n0.command(bin.join("dmtcp_command"))
            .args(["-p", &port.to_string(), "--json", what])
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + HANG;
    while peers(&local("-s")) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the job did not join: {}",
            coord_err(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No secret on node1: refused, and the kill does nothing.
    let o = cmd(None, "-k");
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("asked for a secret this process does not have")
            && out.contains("DMTCP_SECRET_FILE"),
        "{out}"
    );
    // (It sent no Hello at all: nothing for the coordinator to log.)
    assert_eq!(peers(&local("-s")), Some(1), "{}", coord_err(&dir));
    // A wrong secret: refused too.
    let wrong = dir.join("wrong.secret");
    std::fs::write(&wrong, format!("{}\n", "cd".repeat(32))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = cmd(Some(&wrong), "-k");
    assert!(!o.status.success(), "{o:?}");
    assert!(
        wait_log(&dir, "a wrong answer to the challenge"),
        "{}",
        coord_err(&dir)
    );
    assert_eq!(peers(&local("-s")), Some(1), "{}", coord_err(&dir));
    // The secret file the coordinator wrote on node0 (its private /tmp),
    // copied for node1: served.
    let tmp0 = n0.tmp_dir().expect("private /tmp");
    let src = tmp0
        .join("dmtcp-0")
        .join(format!("coord-node0-{port}.secret"));
    let given = dir.join("given.secret");
    std::fs::copy(&src, &given).unwrap();
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = cmd(Some(&given), "-s");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(peers(&o), Some(1));
    let o = cmd(Some(&given), "-k");
    assert!(o.status.success(), "{o:?}");
    assert!(
        wait_timeout(&mut prog, HANG).is_some(),
        "the job was not killed"
    );
    let _ = local("-q");
    if wait_timeout(&mut coord, HANG).is_none() {
        let _ = coord.kill();
        let _ = coord.wait();
    }
}
