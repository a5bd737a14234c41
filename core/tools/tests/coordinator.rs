//! The coordinator and the tools facing misbehaving clients, other users'
//! coordinators and images, and planted symlinks.
//!
//! Raw clients here speak the coordinator protocol (JSON lines, see
//! core/common/src/proto.rs) by hand, the way a broken or hostile program
//! would. Every wait is bounded by [`HANG`], only to turn a hang into a
//! failure: no assertion depends on how long something takes.

mod common;
use common::*;
use serde_json::json;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on every wait in these tests (only to turn a hang into a failure).
const HANG: Duration = Duration::from_secs(20);

/// `dmtcp_command` against `port`: (success, stdout + stderr), or None if
/// it had not finished after [`HANG`] (it is killed then).
fn command_bounded(port: u16, args: &[&str]) -> Option<(bool, String)> {
    let mut c = tool("dmtcp_command");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let (st, out) = output_bounded(c);
    Some((st?.success(), out))
}

/// Run `c` with its output captured: (exit status, stdout + stderr), the
/// status None if it had not finished after [`HANG`].
fn output_bounded(mut c: Command) -> (Option<std::process::ExitStatus>, String) {
    let mut c = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let st = wait_timeout(&mut c, HANG);
    let mut out = String::new();
    let _ = c.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = c.stderr.take().map(|mut s| s.read_to_string(&mut out));
    (st, out)
}

/// A `Hello` line, as the preload library or dmtcp_command sends it
/// (`auth`: the answer to the coordinator's challenge).
fn hello(role: &str, uniq: &str, auth: &str) -> String {
    json!({"t": "Hello", "role": role, "pid": 999_999, "hostname": "raw", "program": "rawclient", "uniq_id": uniq,
           "restarting": false, "comp_id": null, "generation": 0, "num_peers": 0, "auth": auth})
    .to_string()
        + "\n"
}

/// A process that just waits (checkpointable, prints `ready`).
fn launch_sleeper(job: &mut Job) {
    job.launch(
        &[
            "python3",
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(300)\n",
        ],
        &[],
    );
    job.wait_for("ready");
}

fn coord_err(job: &Job) -> String {
    std::fs::read_to_string(job.dir.join("coord.err")).unwrap_or_default()
}

/// Wait (bounded) until the coordinator's log contains `pat`.
fn wait_log(job: &Job, pat: &str) -> bool {
    let deadline = Instant::now() + HANG;
    while !coord_err(job).contains(pat) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Item 1: a client that asks for a lot and never reads its answers must
/// not freeze the coordinator for everyone else.
#[test]
fn a_client_that_stops_reading_does_not_freeze_the_coordinator() {
    let mut job = Job::new("stuckreader");
    launch_sleeper(&mut job);
    let (mut raw, auth) = raw_connect(job.port);
    // One 1 MiB value (2 MiB as a JSON line), then 64 requests for it:
    // 128 MiB of answers, far more than any socket buffer holds.
    let mut msgs = hello("Worker", "raw-stuck", &auth);
    msgs += &(json!({"t": "KvPut", "db": "test", "key": [1], "val": vec![0u8; 1 << 20]})
        .to_string()
        + "\n");
    let get = json!({"t": "KvGet", "db": "test", "key": [1]}).to_string() + "\n";
    for _ in 0..64 {
        msgs += &get;
    }
    raw.write_all(msgs.as_bytes()).unwrap();
    // From here on `raw` is never read.
    let status = command_bounded(job.port, &["-s"]);
    let ckpt1 = status
        .as_ref()
        .and_then(|_| command_bounded(job.port, &["-bc"]));
    let ckpt2 = ckpt1
        .as_ref()
        .and_then(|_| command_bounded(job.port, &["-bc"]));
    let dropped = ckpt2.is_some() && wait_log(&job, "dropping");
    let images = job.images();
    // Closing the stuck client unblocks a coordinator stuck writing to it,
    // so that the job can be cleaned up whatever happened.
    drop(raw);
    let err = coord_err(&job);
    let (ok, out) = status.expect("dmtcp_command -s hung while one client did not read");
    assert!(ok && out.contains("NUM_PEERS="), "{out}\n{err}");
    let (ok, out) = ckpt1.expect("a checkpoint hung while one client did not read");
    assert!(ok, "checkpoint failed: {out}\n{err}");
    let (ok, out) = ckpt2.expect("a second checkpoint hung while one client did not read");
    assert!(ok, "second checkpoint failed: {out}\n{err}");
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(
        dropped,
        "the stuck client was not dropped with a logged reason: {err}"
    );
}

/// Item 2: connections beyond what the coordinator can serve are refused
/// (with a reason), not left in the listen backlog while the accept loop
/// spins on EMFILE.
#[test]
fn connections_beyond_the_limit_are_refused() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("connlimit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let mut cmd = tool("dmtcp_coordinator");
    cmd.args(["-q", "-p", "0", "--port-file"])
        .arg(&port_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("coord.err")).unwrap());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let rl = libc::rlimit {
                rlim_cur: 96,
                rlim_max: 96,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut coord = KillOnDrop(cmd.spawn().expect("coordinator"));
    let port = wait_port(&port_file);
    let conns: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The last one is past any limit a 96-fd coordinator can keep.
    let last = conns.last().unwrap();
    last.set_read_timeout(Some(HANG)).unwrap();
    let mut line = String::new();
    let r = BufReader::new(last).read_line(&mut line);
    // dmtcp_command says why it got nothing.
    let refused = command_bounded(port, &["-s"]);
    let err = std::fs::read_to_string(dir.join("coord.err")).unwrap_or_default();
    drop(conns);
    let (ok, out) = refused.expect("dmtcp_command hung");
    assert!(
        !ok && out.contains("refused the connection: too many connections"),
        "{out}"
    );
    assert!(
        r.is_ok(),
        "connection 100 was neither served nor refused: {r:?}\n{err}"
    );
    assert!(
        line.contains("Refused") && line.contains("too many connections"),
        "{line:?}\n{err}"
    );
    assert!(err.contains("too many connections"), "{err}");
    // Once they are gone, commands get in again.
    let deadline = Instant::now() + HANG;
    loop {
        if command_bounded(port, &["-s"]).is_some_and(|(ok, _)| ok) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator does not answer after the connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        coord.0.try_wait().unwrap().is_none(),
        "the coordinator exited"
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port_file: &Path) -> u16 {
    read_port_file_within(port_file, HANG)
}

/// Item 3: a line without end is cut off at the protocol's limit and its
/// client dropped, instead of being buffered without bound.
#[test]
fn an_endless_line_is_cut_off_and_its_client_dropped() {
    let mut job = Job::new("endless");
    launch_sleeper(&mut job);
    let (mut raw, auth) = raw_connect(job.port);
    raw.write_all(hello("Worker", "raw-endless", &auth).as_bytes())
        .unwrap();
    raw.write_all(br#"{"t":"KvPut","db":"x","key":[],"val":["#)
        .unwrap();
    let total: usize = 64 << 20;
    let mut w = raw.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = b"0,".repeat(32 << 10);
        let mut sent = 0;
        while sent < total {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    // Read until the coordinator closes the connection (bounded).
    raw.set_read_timeout(Some(HANG)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match raw.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    // Unblock the writer whatever happened.
    let _ = raw.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().unwrap();
    let logged = closed && wait_log(&job, "without a newline");
    // The client's thread logs and shuts the socket, then leaves the peer
    // table: the count follows a moment later.
    let deadline = std::time::Instant::now() + HANG;
    let status = loop {
        let s = command_bounded(job.port, &["-s"]);
        let done = s
            .as_ref()
            .is_none_or(|(_, out)| out.contains("NUM_PEERS=1"));
        if done || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = coord_err(&job);
    assert!(
        closed,
        "the coordinator kept reading a line of {sent} bytes without end\n{err}"
    );
    assert!(
        sent < total,
        "all {sent} bytes of the line were taken\n{err}"
    );
    assert!(logged, "no logged reason for dropping the client: {err}");
    let (ok, out) = status.expect("status hung");
    assert!(ok && out.contains("NUM_PEERS=1"), "{out}\n{err}");
}

/// Start a coordinator as user nobody (65534) on a free port.
fn nobody_coordinator(dir: &Path) -> (KillOnDrop, u16) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port_file = dir.join("port");
    let c = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin_dir().join("dmtcp_coordinator"))
        .args(["-q", "--exit-on-last", "-p", "0", "--port-file"])
        .arg(&port_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv dmtcp_coordinator");
    let c = KillOnDrop(c);
    let port = wait_port(&port_file);
    (c, port)
}

fn launch_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut c = tool("dmtcp_launch");
    c.args(args);
    let (st, out) = output_bounded(c);
    (st.and_then(|s| s.code()), out)
}

/// Item 4: dmtcp_launch does not join another user's coordinator unless
/// told to.
#[test]
fn launch_refuses_another_users_coordinator() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("otheruser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_coord, port) = nobody_coordinator(&dir);
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let p = port.to_string();
    for mode in [&[][..], &["-j"][..]] {
        let mut args: Vec<&str> = vec!["-h", "127.0.0.1", "-p", &p];
        args.extend_from_slice(mode);
        args.extend_from_slice(&["sh", "-c", &touch]);
        let (code, out) = launch_bounded(&args);
        assert_eq!(code, Some(1), "{mode:?}: {out}");
        assert!(
            out.contains("uid 65534") && out.contains("--allow-other-user-coordinator"),
            "{mode:?}: {out}"
        );
        assert!(
            !marker.exists(),
            "{mode:?}: the program ran under another user's coordinator"
        );
    }
    // Told to, it joins: with the other user's secret, even where a file
    // of ours for that port is left from a killed coordinator of ours
    // (the file we would take first for a coordinator of our own).
    let stale = dmtcp_common::auth::default_path(&dmtcp_common::hostname(), port);
    dmtcp_common::auth::make_user_dir().unwrap();
    let wrong = dmtcp_common::auth::Secret::from_hex(&"ab".repeat(32)).unwrap();
    dmtcp_common::auth::write_file(&stale, &wrong).unwrap();
    let (code, out) = launch_bounded(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "--allow-other-user-coordinator",
        "sh",
        "-c",
        &touch,
    ]);
    let _ = std::fs::remove_file(&stale);
    assert_eq!(code, Some(0), "{out}");
    assert!(marker.exists(), "{out}");
    // Our own coordinator is joined as before.
    let job = Job::new("ownuser");
    let (code, out) =
        launch_bounded(&["-j", "-h", "127.0.0.1", "-p", &job.port.to_string(), "true"]);
    assert_eq!(code, Some(0), "{out}");
}

/// A Status reply from the coordinator at `port`, read with a raw client.
fn raw_status(port: u16) -> serde_json::Value {
    let (mut s, auth) = raw_connect(port);
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(hello("Command", "", &auth).as_bytes()).unwrap();
    s.write_all((json!({"t": "Command", "cmd": "Status"}).to_string() + "\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Item 5: the restart script is written without following symlinks
/// planted at its names; the victim files stay untouched.
#[test]
fn restart_script_does_not_follow_planted_symlinks() {
    use std::os::unix::fs::PermissionsExt;
    let mut job = Job::new("scriptlinks");
    launch_sleeper(&mut job);
    let comp = raw_status(job.port)["comp_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!comp.is_empty());
    let victim = job.dir.join("victim");
    let victim2 = job.dir.join("victim2");
    for v in [&victim, &victim2] {
        std::fs::write(v, "precious\n").unwrap();
        std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let script = job.ckpt.join(format!("dmtcp_restart_script_{comp}.sh"));
    std::os::unix::fs::symlink(&victim, &script).unwrap();
    std::os::unix::fs::symlink(
        &victim2,
        job.ckpt
            .join(format!(".dmtcp_restart_script_{comp}.sh.tmp")),
    )
    .unwrap();
    job.checkpoint();
    for v in [&victim, &victim2] {
        assert_eq!(
            std::fs::read_to_string(v).unwrap(),
            "precious\n",
            "{} was written through a symlink",
            v.display()
        );
        assert_eq!(
            std::fs::metadata(v).unwrap().permissions().mode() & 0o7777,
            0o600,
            "{} was chmod'ed",
            v.display()
        );
    }
    let meta = std::fs::symlink_metadata(&script).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the script is not a regular file"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        text.starts_with("#!/bin/bash") && text.contains(&comp),
        "{text}"
    );
    let link = job.ckpt.join("dmtcp_restart_script.sh");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(format!("dmtcp_restart_script_{comp}.sh"))
    );
    assert_eq!(std::fs::read_to_string(&link).unwrap(), text);
}

/// Item 7: dmtcp_restart refuses an image another user owns unless told
/// to take it.
#[test]
fn restart_refuses_an_image_of_another_user() {
    let prog = c_program("memcheck");
    let mut job = Job::new("foreignimage");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("step 2 ok");
    job.checkpoint_and_kill();
    let img = job.images().pop().expect("an image");
    std::os::unix::fs::chown(&img, Some(65534), Some(65534)).unwrap();
    let mut c = tool("dmtcp_restart");
    c.args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let st = wait_timeout(&mut child, HANG);
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(1),
        "restart of another user's image: {err}"
    );
    assert!(
        err.contains("owned by uid 65534") && err.contains("--allow-other-user-image"),
        "{err}"
    );
    // Told to, it restarts it.
    job.restart_with(&["--allow-other-user-image".into(), img.display().to_string()]);
    job.wait_success();
    assert!(job.output().contains("RESULT"), "{}", job.output());
}

/// A coordinator takes connections from this machine only from its own
/// user (and root): another user's `dmtcp_command` and `dmtcp_launch`
/// (even with `--allow-other-user-coordinator`) are refused with the
/// reason, and the program is not run; its own user is served.
#[test]
fn another_users_connections_are_refused() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test switches users with setpriv: run it as root"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("otherclient-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_coord, port) = nobody_coordinator(&dir);
    let p = port.to_string();
    let as_user = |uid: &str, tool_name: &str, args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg(bin_dir().join(tool_name))
        .args(["-h", "127.0.0.1", "-p", &p])
        .args(args)
        .current_dir(&dir);
        let (st, out) = output_bounded(c);
        (st.map(|s| s.success()), out)
    };
    let (ok, out) = as_user("1000", "dmtcp_command", &["-s"]);
    assert_eq!(ok, Some(false), "{out}");
    assert!(
        out.contains("refused") && out.contains("uid 1000"),
        "no reason given: {out}"
    );
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let (ok, out) = as_user(
        "1000",
        "dmtcp_launch",
        &["-j", "--allow-other-user-coordinator", "sh", "-c", &touch],
    );
    assert_eq!(ok, Some(false), "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(!marker.exists(), "the program ran: {out}");
    let (ok, out) = as_user("65534", "dmtcp_command", &["-s"]);
    assert_eq!(ok, Some(true), "{out}");
    assert!(out.contains("NUM_PEERS=0"), "{out}");
}

/// `dmtcp_command -bc` on a terminal shows how far the writing is
/// (processes written of all, bytes, rate); not when its output is not a
/// terminal, nor with `--json`, whose output stays one JSON object.
#[test]
fn blocking_checkpoint_shows_progress_on_a_terminal() {
    let prog = c_program("sharedring");
    let mut job = Job::new("progress");
    job.launch(&[prog.to_str().unwrap(), "0"], &[]);
    job.wait_for("tokens 200\n");
    let cmdline = format!(
        "{} -h 127.0.0.1 -p {} -bc",
        bin_dir().join("dmtcp_command").display(),
        job.port
    );
    // script(1) runs it on a pseudo-terminal.
    let mut c = Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"]);
    let (st, out) = output_bounded(c);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(
        out.contains("checkpoint: 4 of 4 processes written") && out.contains("MB/s"),
        "no progress on a terminal: {out:?}"
    );
    let (ok, out) = command_bounded(job.port, &["-bc"]).expect("-bc hung");
    assert!(ok, "{out}");
    assert!(
        !out.contains("processes written"),
        "progress off a terminal: {out:?}"
    );
    let (ok, out) = command_bounded(job.port, &["--json", "-bc"]).expect("-bc hung");
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["command_status"], "DMT_COORD_SUCCESS", "{out}");
    job.kill();
}

/// A process of a restart that ends before the restart is complete (its
/// restore failed, or its page server stopped it for a damaged image):
/// the restart can never complete, so the processes of it that joined are
/// killed, with the reason in the coordinator's log, instead of waiting
/// at its barrier for ever. Raw clients stand for two of three restarted
/// processes.
#[test]
fn a_restart_that_loses_a_process_is_abandoned() {
    let job = Job::new("abandoned");
    let restarting = |uniq: &str, auth: &str| {
        json!({"t": "Hello", "role": "Worker", "pid": 999_999, "hostname": "raw", "program": "rawclient",
               "uniq_id": uniq, "restarting": true, "comp_id": "c0ffee-1-2", "generation": 3,
               "num_peers": 3, "auth": auth})
        .to_string()
            + "\n"
    };
    let join = |uniq: &str| {
        let (mut s, auth) = raw_connect(job.port);
        s.set_read_timeout(Some(HANG)).unwrap();
        s.write_all(restarting(uniq, &auth).as_bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("Welcome"), "{uniq}: {line}");
        // At the restart's first barrier, which waits for all three.
        s.write_all((json!({"t": "Barrier", "name": "restarting"}).to_string() + "\n").as_bytes())
            .unwrap();
        (s, r)
    };
    let (a, _) = join("raw-a");
    let (_b, mut b_in) = join("raw-b");
    let st = raw_status(job.port);
    assert_eq!(st["num_peers"], 2, "{st}");
    drop(a);
    // b is told to die (a process of the library would exit at once).
    let mut got = String::new();
    let mut line = String::new();
    while b_in.read_line(&mut line).unwrap_or(0) > 0 {
        got += &line;
        if line.contains("Kill") {
            break;
        }
        line.clear();
    }
    let err = coord_err(&job);
    assert!(
        got.contains("Kill"),
        "the process that joined the restart was not killed: {got:?}\n{err}"
    );
    assert!(
        wait_log(&job, "ended before the restart of computation c0ffee-1-2"),
        "{}",
        coord_err(&job)
    );
}
