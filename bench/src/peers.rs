//! `bench peers`: the same workload checkpointed and restarted by this
//! project, by DMTCP (an install given with `--dmtcp DIR`, its `bin/`
//! tools) and by CRIU (`criu` on PATH, run as root), one after another on
//! the same machine in one run, with the storage's raw O_DIRECT write of
//! the same bytes beside them.
//!
//! `--cache cold,warm` (default both): where the image is when each
//! restart starts: dropped from the page cache (a restart after a crash
//! or on another node; needs root), or read into it first (this project
//! writes with O_DIRECT, DMTCP through the page cache, so "as left",
//! `as-left`, favours DMTCP).
//!
//! Each system: start the workload (`bench workload G KIND`, which fills
//! its memory and says `ready`), checkpoint it (the time of the blocking
//! checkpoint command / `criu dump`), kill it, restart it and time until
//! it runs again (the coordinator lists it as running / `criu restore -d`
//! returned), then kill it; for this project also until its lazy
//! restore's page server had filled all the memory ("memory all in"; the
//! others restore everything before the program resumes). `--modes`
//! (default `zstd,raw`) picks this project's runs; `raw+before` and
//! `zstd+before` restart with `--verify before` (every chunk checked before
//! the program resumes; the default checks what the page server fills as
//! it fills it), `+on-fill` spells the default out. Images go to `--dir` (default
//! target/bench-peers). Plots: peers-checkpoint.svg, peers-restart.svg.
//!
//! `--host-memory touched` (the default) touches and frees twice the
//! workload's memory and 1 GiB more right before every restart, of every
//! system, so that each finds the same memory just used by the machine
//! (on a virtual machine that returns idle memory to its host the first
//! touch of that is several times slower; `super::touch_host_memory`);
//! `--host-memory as-is` leaves the machine as the runs before left it.

use super::{opt, raw_write, Cache, GIB};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Measured {
    system: String,
    ckpt_s: f64,
    restart_s: f64,
    /// Until all the memory was in (a lazy restore's page server done).
    all_in_s: f64,
    image: u64,
}

fn dir_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn workload_cmd(c: &mut Command, gib: usize, kind: &str) {
    c.arg(std::env::current_exe().unwrap())
        .args(["workload", &gib.to_string(), kind]);
}

/// Wait for `ready` on the child's stdout.
fn wait_ready(child: &mut std::process::Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the workload did not start");
}

/// This project (zstd or raw images).
fn ours(dir: &Path, gib: usize, kind: &str, mode: &str, cache: Cache) -> Measured {
    let r = super::one(dir, gib, kind, mode, cache);
    Measured {
        system: format!("dmtcp-rs ({mode})"),
        ckpt_s: r.ckpt_s,
        restart_s: r.restart_s,
        all_in_s: r.all_in_s,
        image: r.image,
    }
}

/// DMTCP from the install at `root` (gzip on or off).
fn dmtcp(
    root: &Path,
    dir: &Path,
    gib: usize,
    kind: &str,
    gzip: bool,
    cache: Cache,
) -> Option<Measured> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let bin = |t: &str| root.join("bin").join(t);
    let pf = dir.join("port");
    let mut coord = Command::new(bin("dmtcp_coordinator"))
        .args(["-q", "-q", "-p", "0", "--port-file"])
        .arg(&pf)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&pf)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            break p;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let port_s = port.to_string();
    let cmd = |args: &[&str]| {
        Command::new(bin("dmtcp_command"))
            .args(["-h", "127.0.0.1", "-p", &port_s])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut c = Command::new(bin("dmtcp_launch"));
    c.args(["-j", "-h", "127.0.0.1", "-p", &port_s, "--ckptdir"])
        .arg(dir);
    if !gzip {
        c.arg("--no-gzip");
    }
    workload_cmd(&mut c, gib, kind);
    let mut child = c.stdout(Stdio::piped()).spawn().ok()?;
    wait_ready(&mut child);
    let t = Instant::now();
    cmd(&["-bc"]);
    let ckpt_s = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    while !cmd(&["-s"]).contains("NUM_PEERS=0") {
        std::thread::sleep(Duration::from_millis(2));
    }
    let img: PathBuf = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "dmtcp"))?;
    let image = std::fs::metadata(&img).ok()?.len();
    cache.prepare(&img);
    super::touch_host_memory();
    let t = Instant::now();
    let mut r = Command::new(bin("dmtcp_restart"))
        .args(["-j", "-h", "127.0.0.1", "-p", &port_s])
        .arg(&img)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    loop {
        let s = cmd(&["-s"]);
        if s.contains("NUM_PEERS=1") && s.contains("RUNNING=yes") {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            eprintln!("bench peers: DMTCP's restart did not come back");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let restart_s = t.elapsed().as_secs_f64();
    cmd(&["-k"]);
    let _ = r.kill();
    let _ = r.wait();
    cmd(&["-q"]);
    let _ = coord.kill();
    let _ = coord.wait();
    let _ = std::fs::remove_dir_all(dir);
    Some(Measured {
        system: format!("DMTCP ({})", if gzip { "gzip" } else { "raw" }),
        ckpt_s,
        restart_s,
        all_in_s: restart_s,
        image,
    })
}

/// CRIU: dump the workload (started in a session of its own, stdio on
/// files) and restore it detached.
fn criu(dir: &Path, gib: usize, kind: &str) -> Option<Measured> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("workload.out");
    let mut c = Command::new("setsid");
    workload_cmd(&mut c, gib, kind);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).ok()?)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let start = Instant::now();
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("ready")
    {
        if start.elapsed() > Duration::from_secs(600) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let t = Instant::now();
    let st = Command::new("criu")
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&images)
        .args(["-o", "dump.log"])
        .status()
        .ok()?;
    let ckpt_s = t.elapsed().as_secs_f64();
    if !st.success() {
        // The workload was not taken down by a dump that failed.
        let _ = child.kill();
    }
    let _ = child.wait();
    if !st.success() {
        eprintln!(
            "bench peers: criu dump failed ({st}); see {}",
            images.join("dump.log").display()
        );
        return None;
    }
    let image = dir_bytes(&images);
    let pidfile = dir.join("restored.pid");
    super::touch_host_memory();
    let t = Instant::now();
    let st = Command::new("criu")
        .args(["restore", "-d", "-D"])
        .arg(&images)
        .args(["-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .status()
        .ok()?;
    let restart_s = t.elapsed().as_secs_f64();
    if let Some(p) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: killing the process CRIU restored for us.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    if !st.success() {
        eprintln!(
            "bench peers: criu restore failed ({st}); see {}",
            images.join("restore.log").display()
        );
        return None;
    }
    let _ = std::fs::remove_dir_all(dir);
    Some(Measured {
        system: "CRIU".into(),
        ckpt_s,
        restart_s,
        all_in_s: restart_s,
        image,
    })
}

pub fn run(a: &[String]) {
    let sizes: Vec<usize> = opt(a, "--sizes", "1,4")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let kinds: Vec<String> = opt(a, "--kinds", "random")
        .split(',')
        .map(String::from)
        .collect();
    let dmtcp_root = super::opt_given(a, "--dmtcp").map(PathBuf::from);
    let with_criu = a.iter().any(|x| x == "--criu");
    // Ours: zstd, raw, and either with `--verify before` (`raw+before`).
    let modes: Vec<String> = opt(a, "--modes", "zstd,raw")
        .split(',')
        .map(String::from)
        .collect();
    let dir = std::path::absolute(PathBuf::from(opt(a, "--dir", "target/bench-peers"))).unwrap();
    let touched = match opt(a, "--host-memory", "touched") {
        "touched" => true,
        "as-is" => false,
        _ => panic!("--host-memory takes touched or as-is"),
    };
    let caches: Vec<Cache> = opt(a, "--cache", "cold,warm")
        .split(',')
        .map(|c| match c {
            "cold" => Cache::Cold,
            "warm" => Cache::Warm,
            "as-left" => Cache::AsLeft,
            _ => panic!("--cache takes cold, warm or as-left"),
        })
        .collect();
    println!(
        "| GiB | memory | system | checkpoint s | image at restart | restart s | memory all in s | image MB | raw O_DIRECT write s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ck: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut rs: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for &g in &sizes {
        let touch = if touched { (2 * g + 1) * GIB } else { 0 };
        super::HOST_MEMORY_TOUCH.store(touch, std::sync::atomic::Ordering::Relaxed);
        for k in &kinds {
            for &cache in &caches {
                let mut rows: Vec<Measured> =
                    modes.iter().map(|m| ours(&dir, g, k, m, cache)).collect();
                if let Some(root) = &dmtcp_root {
                    for gzip in [true, false] {
                        match dmtcp(root, &dir, g, k, gzip, cache) {
                            Some(m) => rows.push(m),
                            None => {
                                eprintln!("bench peers: DMTCP at {} did not run", root.display())
                            }
                        }
                    }
                }
                if with_criu && cache == caches[0] {
                    match criu(&dir, g, k) {
                        Some(m) => rows.push(m),
                        None => eprintln!("bench peers: CRIU did not run"),
                    }
                }
                std::fs::create_dir_all(&dir).unwrap();
                let raw_s = raw_write(&dir, g * GIB);
                for m in rows {
                    println!(
                        "| {g} | {k} | {} | {:.2} | {} | {:.2} | {:.2} | {:.0} | {raw_s:.2} |",
                        m.system,
                        m.ckpt_s,
                        cache.name(),
                        m.restart_s,
                        m.all_in_s,
                        m.image as f64 / 1e6
                    );
                    let name = format!("{}, {k}, {}", m.system, cache.name());
                    for (into, v) in [(&mut ck, m.ckpt_s), (&mut rs, m.restart_s)] {
                        match into.iter_mut().find(|s| s.0 == name) {
                            Some(s) => s.1.push((g as f64, v)),
                            None => into.push((name.clone(), vec![(g as f64, v)])),
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let plots = PathBuf::from(opt(
        a,
        "--plots",
        concat!(env!("CARGO_MANIFEST_DIR"), "/plots"),
    ));
    std::fs::create_dir_all(&plots).expect("--plots directory");
    for (file, title, series) in [
        (
            "peers-checkpoint.svg",
            "Checkpoint time: dmtcp-rs, DMTCP, CRIU",
            &ck,
        ),
        (
            "peers-restart.svg",
            "Restart time: dmtcp-rs, DMTCP, CRIU",
            &rs,
        ),
    ] {
        let f = plots.join(file);
        super::svg::lines(&f, title, "GiB of memory", "s", series).expect("write the plot");
        println!("plot: {}", f.display());
    }
}
