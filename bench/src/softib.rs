//! `bench softib [--iters N] [--sizes 8,4096,65536,1048576]`: perftest on
//! the software InfiniBand device, two processes on one node and two nodes
//! of the test rig (network namespaces), latency and bandwidth tables.
//! Numbers to know the device by, not targets.
//!
//! `bench ibrate [--runs 7] [--iters 300000]`: the InfiniBand plugin's
//! cost on the data path: 8-byte `ib_write_bw` message rate on one node,
//! bare and with both ends under `dmtcp_launch --ib`, runs alternating
//! (issue 15's target: within 5 %); then one verb call's cost bare and
//! under the plugin (`bench/c/ib_callcost.c`, a best-of figure that the
//! load on the machine hardly moves).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Place {
    rig: Option<testrig::Rig>,
    dir: PathBuf,
}

impl Place {
    fn cmd(&self, softib: &Path, node: usize, args: &[String]) -> Command {
        let mut c = match &self.rig {
            None => {
                let mut c = Command::new(softib);
                c.env("SOFTIB_DIR", &self.dir);
                c
            }
            Some(r) => {
                let mut c = r.node(node).command(softib);
                c.env("SOFTIB_FABRIC", &self.dir).env_remove("SOFTIB_DIR");
                c
            }
        };
        c.arg("exec")
            .arg("--")
            .args(args)
            .env("SOFTIB_IDLE_EXIT", "5")
            .env_remove("SOFTIB_SOCKET");
        c
    }

    fn server_addr(&self) -> String {
        self.rig
            .as_ref()
            .map_or("127.0.0.1".into(), |r| r.node(0).addr().to_string())
    }
}

/// Runs one perftest pair; returns the client's output.
fn pair(p: &Place, softib: &Path, args: &[String]) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut sa: Vec<String> = args.to_vec();
    sa.extend(["-d".into(), "softib0".into(), "-p".into(), port.to_string()]);
    let mut ca = sa.clone();
    ca.push(p.server_addr());
    let mut s = p
        .cmd(softib, 0, &sa)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while !testrig::is_listening_on_port(s.id(), port) {
        if t0.elapsed() > Duration::from_secs(30)
            || s.try_wait().map_err(|e| e.to_string())?.is_some()
        {
            let _ = s.kill();
            return Err(format!("{} server did not start", args[0]));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let c: Output = p.cmd(softib, 1, &ca).output().map_err(|e| e.to_string())?;
    let so = s.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&c.stdout).into_owned();
    if !c.status.success() || !so.status.success() {
        return Err(format!(
            "{} failed:\n{}{}",
            args[0],
            text,
            String::from_utf8_lossy(&c.stderr)
        ));
    }
    Ok(text)
}

/// The numbers of the result line (the one after the `#bytes` header).
fn result_line(out: &str) -> Option<Vec<f64>> {
    let mut lines = out.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("#bytes"))?;
    let v: Vec<f64> = lines
        .next()?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() >= 3).then_some(v)
}

pub fn run(a: &[String]) {
    let mut iters = 20000u32;
    let mut sizes: Vec<u64> = vec![8, 4096, 65536, 1 << 20];
    let mut i = 0;
    while i < a.len() {
        match a[i].as_str() {
            "--iters" => {
                iters = a[i + 1].parse().expect("--iters N");
                i += 1;
            }
            "--sizes" => {
                sizes = a[i + 1]
                    .split(',')
                    .map(|s| s.parse().expect("--sizes a,b,c"))
                    .collect();
                i += 1;
            }
            x => panic!("unknown option {x}"),
        }
        i += 1;
    }
    let softib = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("softib");
    assert!(
        softib.exists(),
        "build the workspace first: {} is missing",
        softib.display()
    );
    let local_dir = std::env::temp_dir().join(format!("softib-bench-{}", std::process::id()));
    std::fs::create_dir_all(&local_dir).unwrap();
    let rig = testrig::Rig::up(2).expect("test rig (needs root)");
    let fab = rig.shared_dir().join("fabric");
    std::fs::create_dir_all(&fab).unwrap();
    let places = [
        (
            "one node",
            Place {
                rig: None,
                dir: local_dir.clone(),
            },
        ),
        (
            "two nodes",
            Place {
                rig: Some(rig),
                dir: fab,
            },
        ),
    ];
    println!("perftest on the software device, {iters} iterations (bandwidth: -n; latency: -n)\n");
    println!("| where | test | bytes | result |");
    println!("|---|---|---|---|");
    for (name, p) in &places {
        for &size in &sizes {
            for test in ["ib_send_lat", "ib_write_lat", "ib_read_lat"] {
                let n = if size >= 1 << 20 { iters / 20 } else { iters };
                let args: Vec<String> =
                    [test, "-s", &size.to_string(), "-n", &n.max(100).to_string()]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                match pair(p, &softib, &args).map(|o| result_line(&o)) {
                    // #bytes #iters t_min t_max t_typical t_avg t_stdev p99 p99.9
                    Ok(Some(v)) if v.len() >= 6 => println!(
                        "| {name} | {test} | {size} | typical {:.2} µs, average {:.2} µs |",
                        v[4], v[5]
                    ),
                    Ok(_) => println!("| {name} | {test} | {size} | (no result line) |"),
                    Err(e) => println!(
                        "| {name} | {test} | {size} | failed: {} |",
                        e.lines().next().unwrap_or("")
                    ),
                }
            }
            for test in ["ib_write_bw", "ib_read_bw", "ib_send_bw"] {
                let n = if size >= 1 << 20 { iters / 20 } else { iters };
                let args: Vec<String> =
                    [test, "-s", &size.to_string(), "-n", &n.max(100).to_string()]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                match pair(p, &softib, &args).map(|o| result_line(&o)) {
                    // #bytes #iters peak avg msgrate
                    Ok(Some(v)) if v.len() >= 5 => println!(
                        "| {name} | {test} | {size} | {:.1} MB/s, {:.3} Mmsg/s |",
                        v[3], v[4]
                    ),
                    Ok(_) => println!("| {name} | {test} | {size} | (no result line) |"),
                    Err(e) => println!(
                        "| {name} | {test} | {size} | failed: {} |",
                        e.lines().next().unwrap_or("")
                    ),
                }
            }
        }
        let args: Vec<String> = ["ib_atomic_bw", "-n", &iters.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match pair(p, &softib, &args).map(|o| result_line(&o)) {
            Ok(Some(v)) if v.len() >= 5 => {
                println!("| {name} | ib_atomic_bw | 8 | {:.3} Mops/s |", v[4])
            }
            Ok(_) => println!("| {name} | ib_atomic_bw | 8 | (no result line) |"),
            Err(e) => println!(
                "| {name} | ib_atomic_bw | 8 | failed: {} |",
                e.lines().next().unwrap_or("")
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&local_dir);
}

/// `bench ibrate`: 8-byte `ib_write_bw` message rate, bare and under the
/// plugin, alternating runs; medians and their difference.
pub fn rate(a: &[String]) {
    let runs: usize = super::opt(a, "--runs", "7").parse().expect("--runs");
    let iters = super::opt(a, "--iters", "300000");
    let bin = super::bin_dir();
    let softib = bin.join("softib");
    assert!(
        softib.exists(),
        "build the workspace first: {} is missing",
        softib.display()
    );
    let dir = std::env::temp_dir().join(format!("softib-ibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = Place {
        rig: None,
        dir: dir.clone(),
    };
    let coord = super::Coord::start(&dir);
    let port = coord.port.to_string();
    let test: Vec<String> = ["ib_write_bw", "-s", "8", "-n", iters]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut launched: Vec<String> = [
        bin.join("dmtcp_launch").display().to_string(),
        "--ib".into(),
        "-q".into(),
        "-j".into(),
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port,
        "--ckptdir".into(),
        dir.display().to_string(),
    ]
    .to_vec();
    launched.extend(test.iter().cloned());
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (k, args) in [&test, &launched].into_iter().enumerate() {
            match pair(&p, &softib, args).map(|o| result_line(&o)) {
                Ok(Some(v)) if v.len() >= 5 => rates[k].push(v[4]),
                Ok(_) => eprintln!("bench ibrate: no result line"),
                Err(e) => eprintln!("bench ibrate: {}", e.lines().next().unwrap_or("")),
            }
        }
    }
    println!("8-byte ib_write_bw -n {iters} on one node (softib), {runs} runs each, alternating\n");
    println!("| | Mmsg/s (runs) | median |");
    println!("|---|---|---|");
    for (k, name) in ["bare", "dmtcp_launch --ib"].iter().enumerate() {
        let all: Vec<String> = rates[k].iter().map(|r| format!("{r:.3}")).collect();
        let m = if rates[k].is_empty() {
            f64::NAN
        } else {
            super::median(rates[k].clone())
        };
        println!("| {name} | {} | {m:.3} |", all.join(" "));
    }
    if !rates[0].is_empty() && !rates[1].is_empty() {
        let (b, l) = (
            super::median(rates[0].clone()),
            super::median(rates[1].clone()),
        );
        println!(
            "\nunder the plugin: {:+.1} % message rate (median vs median)",
            (l / b - 1.0) * 100.0
        );
    }
    call_cost(&p, &softib, &launched[..launched.len() - test.len()], &dir);
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One verb call's cost, bare and under the plugin: `bench/c/ib_callcost.c`
/// (best of 7 rounds of empty `ibv_poll_cq` calls, so the load on the
/// machine weighs little), run 3 times each way.
fn call_cost(p: &Place, softib: &Path, launcher: &[String], dir: &Path) {
    let prog = super::compile_c("c/ib_callcost.c", &dir.join("ib_callcost"), &["-libverbs"])
        .display()
        .to_string();
    let mut under: Vec<String> = launcher.to_vec();
    under.push(prog.clone());
    let mut best = [f64::INFINITY; 2];
    for _ in 0..3 {
        for (k, args) in [vec![prog.clone()], under.clone()].iter().enumerate() {
            let o = p.cmd(softib, 0, args).output().expect("softib exec");
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().find_map(|l| l.strip_prefix("poll_ns ")) {
                Some(v) => best[k] = best[k].min(v.trim().parse().unwrap_or(f64::INFINITY)),
                None => eprintln!(
                    "bench ibrate: ib_callcost gave no result: {}",
                    String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")
                ),
            }
        }
    }
    println!(
        "\nempty ibv_poll_cq, best of 3x7 rounds: bare {:.1} ns, under the plugin {:.1} ns \
         (+{:.1} ns per verb call)",
        best[0],
        best[1],
        best[1] - best[0]
    );
}
