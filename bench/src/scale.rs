//! `bench scale [--peers 512,1024,2048,4096] [--rounds 3] [--real 256]
//!  [--dmtcp DIR] [--dir DIR] [--plots DIR]`
//!
//! How the coordinator copes with many processes (issue 19, "Scale").
//!
//! Simulated peers: this process opens `--peers` connections to one
//! `dmtcp_coordinator` and speaks the protocol as a process of the job
//! would (`Hello`, then every barrier of a checkpoint round, and a small
//! image file each in the generation's directory, so that the coordinator
//! commits a real generation: manifest, restart script, rename). It times
//! the joins, the broadcast of `DoCheckpoint`, each barrier of a round from
//! the first `Barrier` sent to the last `BarrierDone` read (the N sends
//! included), the whole `dmtcp_command -bc`, and reads the coordinator's
//! memory and threads from /proc.
//!
//! Real processes: `--real` processes (`sleep`) under `dmtcp_launch`, one
//! coordinator: time until all joined, and `dmtcp_command -bc` rounds;
//! with `--dmtcp DIR` the same under DMTCP's tools (DIR/bin) after them,
//! in the same run.
//!
//! With several peer counts it also prints a summary and writes
//! `scale-barriers.svg` (mean time of each barrier against the number of
//! peers) into `--plots` (default bench/plots).

use dmtcp_common::proto::{self, Cmd, FromCoord, Role, ToCoord};
use std::io::BufReader;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{opt, Coord};

type Peer = BufReader<TcpStream>;

fn send(p: &Peer, m: &ToCoord) {
    let mut s = p.get_ref();
    proto::send(&mut s, m).expect("send to the coordinator");
}

/// The next message on `p` that `want` accepts (others, such as a
/// `BarrierDone` of a barrier this peer is not waiting for, are skipped).
fn expect<T>(p: &mut Peer, what: &str, want: impl Fn(&FromCoord) -> Option<T>) -> T {
    loop {
        match proto::recv::<_, FromCoord>(p) {
            Ok(Some(m)) => {
                if let Some(t) = want(&m) {
                    return t;
                }
                if matches!(m, FromCoord::Kill | FromCoord::Refused { .. }) {
                    panic!("waiting for {what}: {m:?}");
                }
            }
            Ok(None) => panic!("waiting for {what}: the coordinator closed the connection"),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// The `Hello` of a simulated peer, answering the coordinator's challenge
/// on `s` with the secret of the coordinator at `port` (this user's file).
fn hello(s: &TcpStream, port: u16, role: Role, i: usize, host: &str) -> ToCoord {
    use std::os::fd::AsRawFd;
    let auth = dmtcp_common::auth::answer_challenge(s.as_raw_fd(), "bench", || {
        dmtcp_common::auth::find(None, "localhost", port)
    })
    .expect("challenge");
    ToCoord::Hello {
        role,
        pid: 1_000_000 + i as i32,
        hostname: host.into(),
        program: "simpeer".into(),
        // As the library makes them (host id, pid, start time in hex); the
        // time orders the images in the manifest.
        uniq_id: format!("5eed-{}-{:x}", 1_000_000 + i, 0x1000_0000 + i),
        restarting: false,
        comp_id: None,
        generation: 0,
        num_peers: 0,
        auth: Some(auth),
    }
}

/// One barrier for every peer: seconds from the first `Barrier` sent to
/// the last `BarrierDone` read.
fn barrier(peers: &mut [Peer], name: &str) -> f64 {
    let t = Instant::now();
    for p in peers.iter() {
        send(p, &ToCoord::Barrier { name: name.into() });
    }
    for p in peers.iter_mut() {
        expect(p, name, |m| match m {
            FromCoord::BarrierDone { name: n, .. } if n == name => Some(()),
            _ => None,
        });
    }
    t.elapsed().as_secs_f64()
}

/// (VmRSS, VmHWM) in KiB and the thread count of `pid`.
fn proc_mem(pid: u32) -> (u64, u64, u64) {
    let f = |k| crate::status_field(pid, k);
    (f("VmRSS:"), f("VmHWM:"), f("Threads:"))
}

fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on live structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

const BARRIERS: [&str; 4] = ["suspended", "checkpointed", "committed", "resumed"];

/// Means over the rounds of one peer count, in ms: (join per peer, each
/// of the four barriers).
struct SimStats {
    join_ms: f64,
    barrier_ms: [f64; 4],
}

fn simulated(dir: &Path, n: usize, rounds: usize) -> SimStats {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = Coord::start(dir);
    let cpid = coord.child.id();
    let host = dmtcp_common::hostname();
    let (rss0, _, _) = proc_mem(cpid);
    println!("simulated peers: {n}, coordinator pid {cpid}, RSS at start {rss0} KiB");

    let mut joins = Vec::with_capacity(n);
    let mut peers: Vec<Peer> = Vec::with_capacity(n);
    let mut comp = String::new();
    let t_all = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", coord.port)).expect("connect");
        let _ = s.set_nodelay(true);
        let h = hello(&s, coord.port, Role::Worker, i, &host);
        let mut p = BufReader::new(s);
        send(&p, &h);
        comp = expect(&mut p, "Welcome", |m| match m {
            FromCoord::Welcome { comp_id, .. } => Some(comp_id.clone()),
            _ => None,
        });
        joins.push(t.elapsed().as_secs_f64());
        peers.push(p);
    }
    let join_total = t_all.elapsed().as_secs_f64();
    let join_median = crate::median(joins.clone()) * 1e3;
    let (rss1, _, thr1) = proc_mem(cpid);
    println!(
        "join: {n} peers in {:.3} s; per join median {:.3} ms, p99 {:.3} ms; coordinator RSS {rss1} KiB, {thr1} threads",
        join_total,
        join_median,
        pct(&mut joins, 0.99) * 1e3
    );
    println!();
    println!("| round | DoCheckpoint to all (s) | suspended (s) | write {n} images (s) | checkpointed + commit (s) | committed (s) | resumed (s) | barriers total (s) | -bc (s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut sums = [0.0f64; 4];
    for r in 0..rounds {
        let port = coord.port;
        let t = Instant::now();
        let cmd = std::thread::spawn(move || {
            let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let h = hello(&s, port, Role::Command, usize::MAX >> 40, "bench");
            let mut p = BufReader::new(s);
            send(&p, &h);
            send(
                &p,
                &ToCoord::Command {
                    cmd: Cmd::BlockingCheckpoint,
                },
            );
            let reply = expect(&mut p, "Reply", |m| match m {
                FromCoord::Reply(r) => Some(r.clone()),
                _ => None,
            });
            (reply, t.elapsed().as_secs_f64())
        });
        let mut gen = 0;
        let mut ckdir = None;
        for p in peers.iter_mut() {
            (gen, ckdir) = expect(p, "DoCheckpoint", |m| match m {
                FromCoord::DoCheckpoint {
                    generation,
                    ckpt_dir,
                    ..
                } => Some((*generation, ckpt_dir.clone())),
                _ => None,
            });
        }
        let bcast = t.elapsed().as_secs_f64();
        let mut times = [0.0f64; 4];
        times[0] = barrier(&mut peers, BARRIERS[0]);
        let tw = Instant::now();
        let gen_dir = ckdir
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.to_path_buf())
            .join(dmtcp_common::generation::partial_name(&comp, gen));
        std::fs::create_dir_all(&gen_dir).unwrap();
        let body = vec![0x5au8; 4096];
        for (i, p) in peers.iter().enumerate() {
            let img = gen_dir.join(format!("ckpt_simpeer_{i}.dmtcp"));
            std::fs::write(&img, &body).unwrap();
            send(
                p,
                &ToCoord::CkptDone {
                    image: img.display().to_string(),
                    bytes: body.len() as u64,
                    error: None,
                    crc32: 0,
                    header_crc: 0,
                },
            );
        }
        let write = tw.elapsed().as_secs_f64();
        for (k, name) in BARRIERS.iter().enumerate().skip(1) {
            times[k] = barrier(&mut peers, name);
        }
        for (k, t) in times.iter().enumerate() {
            sums[k] += t * 1e3 / rounds as f64;
        }
        let (reply, bc) = cmd.join().expect("command thread");
        assert!(reply.ok, "round {r} failed: {:?}", reply.message);
        assert_eq!(reply.num_peers as usize, n, "peers in the reply");
        println!(
            "| {} | {bcast:.3} | {:.3} | {write:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {bc:.3} |",
            r + 1,
            times[0],
            times[1],
            times[2],
            times[3],
            times.iter().sum::<f64>()
        );
    }
    let (rss2, hwm, thr2) = proc_mem(cpid);
    println!();
    println!("coordinator after {rounds} rounds: RSS {rss2} KiB, peak {hwm} KiB, {thr2} threads");
    drop(peers);
    drop(coord);
    let _ = std::fs::remove_dir_all(dir);
    SimStats {
        join_ms: join_median,
        barrier_ms: sums,
    }
}

/// `n` real processes under the tools in `bin` (`label`: whose).
fn real(dir: &Path, n: usize, rounds: usize, bin: &Path, label: &str) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = Coord::start_in(dir, bin);
    let t = Instant::now();
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        let c = coord
            .launcher(dir)
            .args(["sleep", "100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("dmtcp_launch");
        kids.push(c);
    }
    let want = format!("NUM_PEERS={n}\n");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !coord.cmd(&["-s"]).contains(&want) || !coord.cmd(&["-s"]).contains("RUNNING=yes") {
        assert!(Instant::now() < deadline, "{n} processes did not join");
        std::thread::sleep(Duration::from_millis(20));
    }
    let joined = t.elapsed().as_secs_f64();
    println!("{label}: {n} `sleep` under dmtcp_launch joined in {joined:.2} s");
    println!();
    println!("| round | -bc (s) | images (MB) |");
    println!("|---|---|---|");
    for r in 0..rounds {
        let t = Instant::now();
        let out = coord.cmd(&["-bc"]);
        let s = t.elapsed().as_secs_f64();
        if std::env::var_os("BENCH_SHOW").is_some() {
            eprintln!("{label} -bc: {out}");
        }
        assert!(
            !out.contains("fail"),
            "round {} of the real processes: {out}",
            r + 1
        );
        let bytes: u64 = walk(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dmtcp"))
            .filter(|p| !p.is_symlink())
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        println!("| {} | {s:.2} | {:.1} |", r + 1, bytes as f64 / 1e6);
    }
    let (rss, hwm, thr) = proc_mem(coord.child.id());
    println!();
    println!("{label} coordinator: RSS {rss} KiB, peak {hwm} KiB, {thr} threads");
    coord.cmd(&["-k"]);
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    drop(coord);
    let _ = std::fs::remove_dir_all(dir);
}

/// Files under `dir`, one level of generation directories deep.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            out.push(p);
        }
    }
    out
}

pub fn run(a: &[String]) {
    raise_nofile();
    let peers: Vec<usize> = opt(a, "--peers", "512,1024,2048,4096")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("--peers N[,N...]"))
        .collect();
    let rounds: usize = opt(a, "--rounds", "3").parse().expect("--rounds N");
    let real_n: usize = opt(a, "--real", "256").parse().expect("--real N");
    let dir = PathBuf::from(opt(a, "--dir", "/tmp/dmtcp-bench-scale"));
    let plots = PathBuf::from(opt(
        a,
        "--plots",
        concat!(env!("CARGO_MANIFEST_DIR"), "/plots"),
    ));
    let mut stats = Vec::new();
    for &n in peers.iter().filter(|&&n| n > 0) {
        stats.push((n, simulated(&dir.join("sim"), n, rounds)));
        println!();
    }
    if stats.len() > 1 {
        println!("| peers | join median (ms) | suspended (ms) | checkpointed + commit (ms) | committed (ms) | resumed (ms) |");
        println!("|---|---|---|---|---|---|");
        for (n, s) in &stats {
            let b = s.barrier_ms;
            println!(
                "| {n} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} |",
                s.join_ms, b[0], b[1], b[2], b[3]
            );
        }
        println!();
        let series: Vec<(String, Vec<(f64, f64)>)> = BARRIERS
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let label = if *name == "checkpointed" {
                    "checkpointed + commit".to_string()
                } else {
                    name.to_string()
                };
                (
                    label,
                    stats
                        .iter()
                        .map(|(n, s)| (*n as f64, s.barrier_ms[k]))
                        .collect(),
                )
            })
            .collect();
        std::fs::create_dir_all(&plots).expect("--plots directory");
        let f = plots.join("scale-barriers.svg");
        crate::svg::lines(
            &f,
            &format!("Barrier time, one coordinator (mean of {rounds} rounds)"),
            "simulated processes",
            "ms",
            &series,
        )
        .expect("write the plot");
        println!("plot: {}", f.display());
        println!();
    }
    if real_n > 0 {
        real(
            &dir.join("real"),
            real_n,
            rounds,
            &crate::bin_dir(),
            "dmtcp-rs",
        );
        // The same processes under DMTCP, side by side in this run.
        if let Some(root) = crate::opt_given(a, "--dmtcp") {
            println!();
            real(
                &dir.join("real-dmtcp"),
                real_n,
                rounds,
                &Path::new(root).join("bin"),
                "DMTCP",
            );
        }
    }
}
