//! `bench parallel`: N processes of one computation, each holding M MiB of
//! random memory, checkpointed at once (`dmtcp_command -bc`, timed: every
//! process writes its image in parallel and the generation commits), by
//! this project (zstd and raw images) and by DMTCP (`--dmtcp DIR`, gzip
//! and raw), next to N threads writing the same bytes with O_DIRECT into N
//! files of the same directory at once (the storage's raw parallel
//! bandwidth). Aggregate GB/s = bytes of memory / seconds. Images go to
//! `--dir` (default target/bench-parallel). With `--nodes K` the processes
//! run on K nodes of the test rig (network namespaces, root needed), the
//! coordinator on node0, all writing into the one directory.

use super::{opt, Coord};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds for `n` threads to each write `bytes` with O_DIRECT into its
/// own file in `dir`, fsync included.
fn raw_parallel(dir: &Path, n: usize, bytes: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..n {
            let d = dir.join(format!("raw-{i}"));
            s.spawn(move || {
                std::fs::create_dir_all(&d).unwrap();
                super::raw_write(&d, bytes);
            });
        }
    });
    // raw_write times itself; the wall time of all of them at once is what
    // counts here (it includes their buffer set-up, a few ms).
    t.elapsed().as_secs_f64()
}

/// Start the workload (`dmtcp_launch ... bench workload <mib>M random`,
/// made by `launcher`) and wait until it says it is ready.
fn start_workload(mut c: Command, opts: &[&str], mib: usize, err: &Path) -> Option<Child> {
    c.args(opts)
        .arg(std::env::current_exe().unwrap())
        .args(["workload", &format!("{mib}M"), "random"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(err).map_or(Stdio::null(), Stdio::from));
    let mut k = c.spawn().ok()?;
    let mut line = String::new();
    BufReader::new(k.stdout.take().unwrap())
        .read_line(&mut line)
        .ok()?;
    if line.trim() != "ready" {
        let _ = k.kill();
        let _ = k.wait();
        let why = std::fs::read_to_string(err).unwrap_or_default();
        eprintln!("bench parallel: a workload did not start: {}", why.trim());
        return None;
    }
    Some(k)
}

/// Launch `n` workloads into one coordinator of the tools in `bin`,
/// checkpoint them all at once; (seconds, image bytes). With a rig the
/// workloads are spread over its nodes (round robin), the coordinator on
/// node0, every node writing into the one directory `dir` (shared storage:
/// a path outside /tmp is the same in every node).
fn checkpoint_all(
    rig: Option<&Arc<testrig::Rig>>,
    bin: &Path,
    dir: &Path,
    n: usize,
    mib: usize,
    opts: &[&str],
) -> Option<(f64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = Coord::start_on(dir, bin, rig.cloned());
    let nodes = rig.map_or(1, |r| r.nodes().len());
    let mut kids = Vec::new();
    for i in 0..n {
        let c = coord.launcher_on(i % nodes, dir);
        match start_workload(c, opts, mib, &dir.join("launch.err")) {
            Some(k) => kids.push(k),
            None => break,
        }
    }
    // Every workload started and connected (within 10 minutes): one timed
    // `-bc`. Then `-k`, and the workloads reaped whatever happened.
    let deadline = Instant::now() + Duration::from_secs(600);
    let joined = kids.len() == n
        && loop {
            if coord.cmd(&["-s"]).contains(&format!("NUM_PEERS={n}")) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
    let s = joined.then(|| {
        let t = Instant::now();
        coord.cmd(&["-bc"]);
        t.elapsed().as_secs_f64()
    });
    let bytes = super::image_bytes(dir);
    coord.cmd(&["-k"]);
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    s.filter(|_| bytes > 0).map(|s| (s, bytes))
}

pub fn run(a: &[String]) {
    let n: usize = opt(a, "--procs", "8").parse().expect("--procs");
    let mib: usize = opt(a, "--mib", "512").parse().expect("--mib");
    let runs: usize = opt(a, "--runs", "3").parse().expect("--runs");
    let dmtcp_root = super::opt_given(a, "--dmtcp").map(PathBuf::from);
    let dir = std::path::absolute(PathBuf::from(opt(a, "--dir", "target/bench-parallel"))).unwrap();
    let nodes: usize = opt(a, "--nodes", "0").parse().expect("--nodes");
    let rig =
        (nodes > 0).then(|| Arc::new(testrig::Rig::up(nodes).expect("the test rig (needs root)")));
    let total = (n * mib) as f64 * 1048576.0;
    let mut systems: Vec<(String, PathBuf, Vec<&str>)> = vec![
        ("dmtcp-rs (zstd)".into(), super::bin_dir(), vec![]),
        ("dmtcp-rs (raw)".into(), super::bin_dir(), vec!["--no-gzip"]),
    ];
    if let Some(r) = &dmtcp_root {
        systems.push(("DMTCP (gzip)".into(), r.join("bin"), vec![]));
        systems.push(("DMTCP (raw)".into(), r.join("bin"), vec!["--no-gzip"]));
    }
    let place = match nodes {
        0 => String::new(),
        k => format!(" on {k} rig nodes (round robin, coordinator on node0)"),
    };
    println!("{n} processes x {mib} MiB of random memory{place}, checkpointed at once into one directory; runs interleaved, median of {runs}");
    println!();
    println!(
        "| system | seconds (runs) | median s | aggregate GB/s | vs raw parallel | images MB |"
    );
    println!("|---|---|---|---|---|---|");
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); systems.len() + 1];
    let mut sizes = vec![0u64; systems.len()];
    for _ in 0..runs {
        for (i, (name, bin, opts)) in systems.iter().enumerate() {
            match checkpoint_all(rig.as_ref(), bin, &dir.join("ck"), n, mib, opts) {
                Some((s, b)) => {
                    times[i].push(s);
                    sizes[i] = b;
                }
                None => eprintln!("bench parallel: {name} did not run"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        times[systems.len()].push(raw_parallel(&dir, n, mib << 20));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let med = |v: &Vec<f64>| (!v.is_empty()).then(|| super::median(v.clone()));
    let raw = super::median(times[systems.len()].clone());
    let mut rows: Vec<(String, usize)> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| (s.0.clone(), i))
        .collect();
    rows.push(("raw O_DIRECT, one writer per process".into(), systems.len()));
    for (name, i) in rows {
        let all: Vec<String> = times[i].iter().map(|t| format!("{t:.2}")).collect();
        match med(&times[i]) {
            Some(m) => println!(
                "| {name} | {} | {m:.2} | {:.2} | {:.0}% | {} |",
                all.join(" "),
                total / m / 1e9,
                raw / m * 100.0,
                if i < sizes.len() {
                    format!("{:.0}", sizes[i] as f64 / 1e6)
                } else {
                    "-".into()
                }
            ),
            None => println!("| {name} | failed | | | | |"),
        }
    }
}
