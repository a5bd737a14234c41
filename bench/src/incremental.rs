//! `bench incremental [--mib 1024] [--percent 10] [--modes zstd,raw]
//!  [--runs 1] [--dir DIR]`: a process holding MIB MiB of random memory is
//! checkpointed (a full image), then PERCENT % of its memory changes (in
//! 256 KiB regions chosen at random) and it is checkpointed again (an
//! incremental image on the first). Prints, per mode, the bytes and
//! seconds of both checkpoints with their ratio (targets of issue 18:
//! at most 15 % of the bytes and 25 % of the time), and the restart time
//! of the incremental generation next to the full one's (their files read
//! into the page cache first). Medians over `--runs`.

use super::{launch_workload, median, opt, restart_timed, Cache, Coord};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Run {
    full_s: f64,
    incr_s: f64,
    full_bytes: u64,
    incr_bytes: u64,
    restart_full_s: f64,
    restart_incr_s: f64,
}

/// The one image in the committed generation directory `n` of `dir`.
fn gen_image(dir: &Path, n: u32) -> PathBuf {
    let g = dmtcp_common::generation::list(dir)
        .into_iter()
        .find(|f| !f.partial && f.generation == n)
        .expect("the generation");
    std::fs::read_dir(&g.path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dmtcp"))
        .expect("its image")
}

/// Seconds from `dmtcp_restart IMG` until the process runs, with IMG
/// and every earlier image it refers to read into the page cache first
/// (each restart finds the cache the same way, whatever ran before).
fn restart_time(coord: &Coord, img: &Path) -> f64 {
    let opened = dmtcp_common::image::Image::open(img).expect("the image");
    for f in std::iter::once(&opened).chain(opened.sources.iter()) {
        Cache::Warm.prepare(&f.path);
    }
    let (mut r, s) = restart_timed(coord, img);
    coord.cmd(&["-k"]);
    let _ = r.wait();
    while !coord.cmd(&["-s"]).contains("NUM_PEERS=0") {
        std::thread::sleep(Duration::from_millis(2));
    }
    s
}

fn one(dir: &Path, mib: usize, percent: u32, mode: &str) -> Run {
    let (coord, mut child) = launch_workload(
        dir,
        mode,
        &["--incremental"],
        &[&format!("{mib}M"), "random", "changing"],
        Stdio::piped(),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let t = Instant::now();
    coord.cmd(&["-bc"]);
    let full_s = t.elapsed().as_secs_f64();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "change {percent}").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("changed"), "{line}");
    let t = Instant::now();
    coord.cmd(&["-bc"]);
    let incr_s = t.elapsed().as_secs_f64();
    let (full_img, incr_img) = (gen_image(dir, 1), gen_image(dir, 2));
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let (full_bytes, incr_bytes) = (len(&full_img), len(&incr_img));
    let _ = child.kill();
    let _ = child.wait();
    while !coord.cmd(&["-s"]).contains("NUM_PEERS=0") {
        std::thread::sleep(Duration::from_millis(2));
    }
    let restart_full_s = restart_time(&coord, &full_img);
    let restart_incr_s = restart_time(&coord, &incr_img);
    Run {
        full_s,
        incr_s,
        full_bytes,
        incr_bytes,
        restart_full_s,
        restart_incr_s,
    }
}

pub fn run(a: &[String]) {
    let mib: usize = opt(a, "--mib", "1024").parse().expect("--mib");
    let percent: u32 = opt(a, "--percent", "10").parse().expect("--percent");
    let runs: usize = opt(a, "--runs", "1").parse().expect("--runs");
    let dir = std::path::absolute(PathBuf::from(opt(a, "--dir", "target/bench-incr"))).unwrap();
    println!("| MiB | image | full ckpt s | incremental ckpt s | time ratio | full bytes | incremental bytes | bytes ratio | restart full s | restart incremental s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for mode in opt(a, "--modes", "zstd,raw").split(',') {
        let rs: Vec<Run> = (0..runs).map(|_| one(&dir, mib, percent, mode)).collect();
        let med = |f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
        let (fs, is) = (med(|r| r.full_s), med(|r| r.incr_s));
        let (fb, ib) = (med(|r| r.full_bytes as f64), med(|r| r.incr_bytes as f64));
        println!(
            "| {mib} | {mode} | {fs:.2} | {is:.2} | {:.1} % | {fb:.0} | {ib:.0} | {:.1} % | {:.2} | {:.2} |",
            100.0 * is / fs,
            100.0 * ib / fb,
            med(|r| r.restart_full_s),
            med(|r| r.restart_incr_s),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
