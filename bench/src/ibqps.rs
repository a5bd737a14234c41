//! `bench ibqps [--qps 10,100,1000] [--runs 3] [--pause-us 0]`: what the InfiniBand
//! plugin adds to a checkpoint and a restart as the number of queue pairs
//! grows. Two processes (bench/c/ib_qps.c, the second forked by the first)
//! connected by N RC QPs exchange a message on every QP in rounds (back to
//! back by default, so the checkpoint finds sends in flight; `--pause-us`
//! between rounds) under `dmtcp_launch --ib` on the software device. Each run: blocking
//! checkpoint, kill, the device service killed and started again (all ids
//! new), restart; the plugin's own timings (`DMTCP_IB_DEBUG=1`: the drain,
//! and the restart's phases) are read from the processes' stderr, the
//! larger of the two processes' kept, and the run counts only if the QPs
//! carry checked messages again after the restart. Medians over the runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < LIMIT, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The plugin's timings of one restart, µs: drain (at the checkpoint),
/// total, re-create, publish, barrier and reading the tables, reconnect,
/// barrier.
fn timings(err: &str) -> Option<[u64; 7]> {
    let mut best: Option<[u64; 7]> = None;
    for l in err.lines().filter(|l| l.contains("rebuild and reconnect")) {
        let nums: Vec<u64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        // drain N us; ... N us (with two barriers): re-create N us, publish N us, barrier N us, reconnect N us, barrier N us
        let v = nums;
        if v.len() < 7 {
            continue;
        }
        let mut t = [0u64; 7];
        t.copy_from_slice(&v[..7]);
        best = Some(match best {
            None => t,
            Some(b) => std::array::from_fn(|i| b[i].max(t[i])),
        });
    }
    best
}

struct Run {
    ckpt_ms: f64,
    restart_ms: f64,
    t: [u64; 7],
}

fn last_round(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.strip_prefix("round ")?.strip_suffix(" ok")?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn kill_group(c: &mut Child) {
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
    let _ = c.wait();
}

fn one(bin: &Path, prog: &Path, base: &Path, n: usize, k: usize, pause_us: u64) -> Run {
    let dir = base.join(format!("n{n}-{k}"));
    let _ = std::fs::remove_dir_all(&dir);
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let softib_dir = dir.join("softib");
    let service = || -> Child {
        let c = Command::new(bin.join("softib"))
            .args(["daemon", "--idle-exit", "0"])
            .env("SOFTIB_DIR", &softib_dir)
            .env_remove("SOFTIB_SOCKET")
            .env_remove("SOFTIB_FABRIC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("softib daemon");
        wait_until("softib service", || {
            Command::new(bin.join("softib"))
                .arg("status")
                .env("SOFTIB_DIR", &softib_dir)
                .env_remove("SOFTIB_SOCKET")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        c
    };
    let mut svc = service();
    let port_file = dir.join("port");
    let mut coord = Command::new(bin.join("dmtcp_coordinator"))
        .args(["-q", "-p", "0", "--port-file"])
        .arg(&port_file)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let mut port = String::new();
    wait_until("coordinator port", || {
        port = std::fs::read_to_string(&port_file).unwrap_or_default();
        port = port.trim().to_string();
        !port.is_empty()
    });
    let command = |args: &[&str]| {
        Command::new(bin.join("dmtcp_command"))
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("dmtcp_command")
    };
    let out = dir.join("prog.out");
    let err = dir.join("prog.err");
    let mut launch = Command::new(bin.join("softib"));
    launch
        .env("SOFTIB_DIR", &softib_dir)
        .env_remove("SOFTIB_SOCKET")
        .args(["exec", "--"])
        .arg(bin.join("dmtcp_launch"))
        .args(["-j", "-h", "127.0.0.1", "-p", &port, "--ckptdir"])
        .arg(&ckpt)
        .arg("--ib")
        .arg(prog)
        .arg(n.to_string())
        .arg(pause_us.to_string())
        .env("DMTCP_IB_DEBUG", "1")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut launch, 0);
    let mut p = launch.spawn().expect("launch");
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default();
    wait_until("the QPs connected", || read(&out).contains("round 20 ok"));
    let t0 = Instant::now();
    let o = command(&["-bc"]);
    let ckpt_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(o.status.success(), "checkpoint failed: {}", read(&err));
    let before = last_round(&read(&out));
    kill_group(&mut p);
    wait_until("processes gone", || {
        String::from_utf8_lossy(&command(&["-s"]).stdout).contains("NUM_PEERS=0")
    });
    // SAFETY: SIGTERM to the service we started.
    unsafe { libc::kill(svc.id() as i32, libc::SIGTERM) };
    let _ = svc.wait();
    let mut svc = service();
    let imgs: Vec<PathBuf> = std::fs::read_dir(&ckpt)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dmtcp"))
        .collect();
    assert_eq!(imgs.len(), 2, "images: {imgs:?}");
    let t0 = Instant::now();
    let mut r = Command::new(bin.join("dmtcp_restart"))
        .args(["-j", "-h", "127.0.0.1", "-p", &port])
        .args(&imgs)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("restart.err")).unwrap())
        .spawn()
        .expect("dmtcp_restart");
    wait_until("restarted", || {
        let s = String::from_utf8_lossy(&command(&["-s"]).stdout).to_string();
        s.contains("NUM_PEERS=2") && s.contains("RUNNING=yes")
    });
    let restart_ms = t0.elapsed().as_secs_f64() * 1e3;
    wait_until("checked messages after the restart", || {
        let o = read(&out);
        assert!(!o.contains("FAILED"), "{o}\n{}", read(&err));
        last_round(&o) > before + 20
    });
    let t = timings(&read(&err)).unwrap_or_else(|| panic!("no timings in\n{}", read(&err)));
    let _ = r.kill();
    let _ = r.wait();
    let _ = command(&["-k"]);
    let _ = coord.kill();
    let _ = coord.wait();
    let _ = svc.kill();
    let _ = svc.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        ckpt_ms,
        restart_ms,
        t,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(a: &[String]) {
    let mut qps: Vec<usize> = vec![10, 100, 1000];
    let mut runs = 3usize;
    let mut pause_us = 0u64;
    let mut i = 0;
    while i < a.len() {
        match a[i].as_str() {
            "--qps" => {
                qps = a[i + 1]
                    .split(',')
                    .map(|s| s.parse().expect("--qps a,b,c"))
                    .collect();
                i += 1;
            }
            "--pause-us" => {
                pause_us = a[i + 1].parse().expect("--pause-us N");
                i += 1;
            }
            "--runs" => {
                runs = a[i + 1].parse().expect("--runs N");
                i += 1;
            }
            x => panic!("unknown option {x}"),
        }
        i += 1;
    }
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for f in ["softib", "dmtcp_launch", "dmtcp_restart", "libdmtcp_ib.so"] {
        assert!(
            bin.join(f).exists(),
            "build the workspace first: {f} is missing"
        );
    }
    let base = std::env::temp_dir().join(format!("ibqps-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let prog = super::compile_c("c/ib_qps.c", &base.join("ib_qps"), &["-libverbs"]);
    println!(
        "InfiniBand plugin, N RC QPs per process (2 processes), rounds {pause_us} us apart, \
         medians of {runs} runs; plugin times are the slower process's (ms)\n"
    );
    println!(
        "| QPs | drain | restart hook | re-create | publish | barrier, tables | reconnect | barrier | whole checkpoint | whole restart |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &qps {
        let rs: Vec<Run> = (0..runs)
            .map(|k| one(&bin, &prog, &base, n, k, pause_us))
            .collect();
        let col = |i: usize| median(rs.iter().map(|r| r.t[i] as f64 / 1e3).collect());
        println!(
            "| {n} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            col(5),
            col(6),
            median(rs.iter().map(|r| r.ckpt_ms).collect()),
            median(rs.iter().map(|r| r.restart_ms).collect()),
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
