//! `bench soak [--cycles 500] [--restarts 50] [--every 50] [--dir DIR]`
//!
//! Issue 19, "Soak": a 4-process job (core/tools/tests/c/sharedring.c: a
//! token ring over a pipe, a UNIX socketpair, TCP over loopback and a
//! pipe, paced by timerfds, with a shared memory page checked at every
//! token) is
//! checkpointed `--cycles` times with `dmtcp_command -bc` while it runs,
//! then killed and restarted `--restarts` times (a checkpoint after each
//! restart, so each restart starts from the newest generation). Every
//! `--every` cycles (and every restart) it prints the open fds and RSS of
//! each process and the size of the images, which should stay flat, and
//! checks that the ring goes on and never saw a wrong token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, opt, Coord};

/// Children of `pid`, their children, ... (from /proc/*/stat).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces; cut at the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(pp) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parent.push((p, pp));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// (open fds, VmRSS KiB) of `pid`.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (fds, crate::status_field(pid, "VmRSS:"))
}

/// The top-level images of the newest generation.
fn images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ckpt_") && n.ends_with(".dmtcp"))
        })
        .collect();
    v.sort();
    v
}

fn image_bytes(dir: &Path) -> u64 {
    images(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The log's "tokens N" lines' last N, and how many lines it has; panics
/// on a line that reports a wrong token or an error.
fn progress(log: &Path) -> (u64, usize) {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let mut last = 0;
    for l in s.lines() {
        assert!(
            !l.starts_with("MISMATCH") && !l.starts_with("ERROR"),
            "the soak job reports: {l}"
        );
        if let Some(n) = l.strip_prefix("tokens ").and_then(|n| n.parse().ok()) {
            last = n;
        }
    }
    (last, s.lines().count())
}

/// Wait until the log has `new` more "tokens" lines than at `lines`.
fn wait_progress(log: &Path, lines: usize, new: usize, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, l) = progress(log);
        if l >= lines + new {
            return n;
        }
        assert!(Instant::now() < deadline, "{what}: the ring does not go on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_status(coord: &Coord, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = coord.cmd(&["-s"]);
        if want.iter().all(|w| s.contains(w)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {want:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn checkpoint(coord: &Coord, what: &str) -> f64 {
    let t = Instant::now();
    let o = Command::new(bin_dir().join("dmtcp_command"))
        .args(["-h", "127.0.0.1", "-p", &coord.port.to_string(), "-bc"])
        .output()
        .expect("dmtcp_command");
    let s = t.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "{what}: checkpoint failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

/// One table row: per-process fds and RSS, images, the ring's progress.
fn sample(job: &Child, dir: &Path, log: &Path, label: &str, secs: f64) {
    // dmtcp_restart's own processes are not the job's.
    let procs: Vec<u32> = descendants(job.id())
        .into_iter()
        .filter(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
            argv0.ends_with(b"/sharedring")
        })
        .collect();
    assert_eq!(
        procs.len(),
        4,
        "{label}: the job has {} processes",
        procs.len()
    );
    let u: Vec<(usize, u64)> = procs.iter().map(|&p| usage(p)).collect();
    let fds: Vec<String> = u.iter().map(|x| x.0.to_string()).collect();
    let rss: Vec<String> = u.iter().map(|x| x.1.to_string()).collect();
    let (tokens, _) = progress(log);
    println!(
        "| {label} | {tokens} | {} | {} | {} | {secs:.3} |",
        fds.join(" "),
        rss.join(" "),
        image_bytes(dir)
    );
}

fn launch(coord: &Coord, dir: &Path, prog: &Path, log: &Path) -> Child {
    coord
        .launcher(dir)
        .arg(prog)
        .arg("0")
        .arg(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("dmtcp_launch")
}

pub fn run(a: &[String]) {
    let cycles: usize = opt(a, "--cycles", "500").parse().expect("--cycles N");
    let restarts: usize = opt(a, "--restarts", "50").parse().expect("--restarts N");
    let every: usize = opt(a, "--every", "50").parse().expect("--every N");
    let dir = PathBuf::from(opt(a, "--dir", "/tmp/dmtcp-bench-soak"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prog = super::compile_c("../core/tools/tests/c/sharedring.c", &dir.join("sharedring"), &[]);
    let ckdir = dir.join("ckpt");
    std::fs::create_dir_all(&ckdir).unwrap();
    let log = dir.join("soak.log");
    let coord = Coord::start(&dir);
    let mut job = launch(&coord, &ckdir, &prog, &log);
    wait_status(&coord, &["NUM_PEERS=4\n", "RUNNING=yes"]);
    wait_progress(&log, 0, 2, "start");

    println!("soak: {cycles} checkpoints of a running 4-process job, then {restarts} kill/restart cycles");
    println!();
    println!("| after | tokens | fds per process | RSS KiB per process | images (bytes) | s (checkpoint: mean since the last row; restart: until all joined) |");
    println!("|---|---|---|---|---|---|");
    sample(&job, &ckdir, &log, "start", 0.0);
    let t_all = Instant::now();
    let mut since = 0.0;
    let mut last_tokens = progress(&log).0;
    for c in 1..=cycles {
        since += checkpoint(&coord, &format!("cycle {c}"));
        if c % every == 0 || c == cycles {
            // The ring goes on between checkpoints.
            let (_, lines) = progress(&log);
            let t = wait_progress(&log, lines, 1, &format!("cycle {c}"));
            assert!(
                t > last_tokens,
                "cycle {c}: tokens went from {last_tokens} to {t}"
            );
            last_tokens = t;
            let n = if c % every == 0 { every } else { c % every };
            sample(&job, &ckdir, &log, &format!("ckpt {c}"), since / n as f64);
            since = 0.0;
        }
    }
    let ck_total = t_all.elapsed().as_secs_f64();
    for r in 1..=restarts {
        // Kill the whole job (every process, SIGKILL), restart from the
        // newest generation, see the ring go on, checkpoint again.
        for p in descendants(job.id()) {
            // SAFETY: kill(2) on a pid of our own job.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = job.wait();
        wait_status(&coord, &["NUM_PEERS=0\n"]);
        let imgs = images(&ckdir);
        assert_eq!(imgs.len(), 4, "restart {r}: images {imgs:?}");
        let (_, lines) = progress(&log);
        let t = Instant::now();
        job = Command::new(bin_dir().join("dmtcp_restart"))
            .args(["-j", "-h", "127.0.0.1", "-p", &coord.port.to_string()])
            .args(&imgs)
            .stdin(Stdio::null())
            .spawn()
            .expect("dmtcp_restart");
        wait_status(&coord, &["NUM_PEERS=4\n", "RUNNING=yes"]);
        let restart_s = t.elapsed().as_secs_f64();
        wait_progress(&log, lines, 2, &format!("restart {r}"));
        checkpoint(&coord, &format!("after restart {r}"));
        if r % (every / 10).max(1) == 0 || r == restarts || r == 1 {
            sample(&job, &ckdir, &log, &format!("restart {r}"), restart_s);
        }
    }
    println!();
    println!(
        "{cycles} checkpoints in {ck_total:.1} s; {restarts} restarts; no wrong token (the job checks each one)"
    );
    coord.cmd(&["-k"]);
    let _ = job.wait();
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
}
