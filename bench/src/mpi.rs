//! `bench mpi`: the Jacobi program of mpi-tests (OpenMPI on one node)
//! bare, under this project and under DMTCP (`--dmtcp DIR`), in one run.
//!
//! 1. Run-time overhead: the whole `mpirun` of `mpi_jacobi STEPS 0 N`
//!    timed bare and under `dmtcp_launch` (no checkpoint), the systems
//!    interleaved run by run so that a change of the machine's load hits
//!    all of them; medians of `--runs`. Every run's checksum must be the
//!    bare run's.
//! 2. Checkpoint and restart per rank count: the job (with a pause per
//!    step so it runs long enough) checkpointed once (`dmtcp_command -bc`,
//!    timed), killed, restarted with the generated restart script (timed
//!    until the coordinator lists as many running processes as before),
//!    then left to finish: its checksum must be the bare run's.
//!
//! Images go to `--dir` (default target/bench-mpi).
//!
//! `--per-node K` runs every job on a test rig (network namespaces with
//! sshd, mpi-tests/rig) instead of this machine alone: N ranks on
//! ceil(N/K) nodes, K on each, `mpirun` (and the coordinator) on node0
//! starting its remote daemons over ssh, TCP between nodes (default
//! `--btl self,vader,tcp`), the restart script restarting each node's
//! images there. `--ranks 2,4,8 --per-node 2` runs 2/4/8 ranks on 1/2/4
//! nodes.

use super::{bin_dir, on_node0, opt, Coord};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the jobs run: this machine, or a rig with `per_node` ranks on
/// each node.
struct Place {
    rig: Option<Arc<testrig::Rig>>,
    per_node: usize,
}

impl Place {
    fn rig(&self) -> Option<&testrig::Rig> {
        self.rig.as_deref()
    }
    /// `mpirun`'s options placing `ranks` ranks (a hostfile written in
    /// `dir`); none on this machine.
    fn mpirun_opts(&self, ranks: usize, dir: &Path) -> Vec<String> {
        let Some(rig) = self.rig() else {
            return Vec::new();
        };
        let nodes = ranks.div_ceil(self.per_node);
        let hosts: String = (0..nodes)
            .map(|k| format!("{} slots={}\n", rig.node(k).name(), self.per_node))
            .collect();
        let f = dir.join(format!("hosts-{ranks}"));
        std::fs::write(&f, hosts).expect("writing the hostfile");
        let net = rig.subnet().to_string();
        vec![
            "--hostfile".into(),
            f.display().to_string(),
            "--mca".into(),
            "plm_rsh_agent".into(),
            rig_ssh(rig),
            "--mca".into(),
            "btl_tcp_if_include".into(),
            net.clone(),
            "--mca".into(),
            "oob_tcp_if_include".into(),
            net,
        ]
    }
    fn describe(&self, ranks: usize) -> String {
        match self.rig {
            None => format!("{ranks}"),
            Some(_) => format!("{ranks} on {}", ranks.div_ceil(self.per_node)),
        }
    }
}

/// The rig's ssh command (its config file).
fn rig_ssh(rig: &testrig::Rig) -> String {
    format!("ssh -F {}", rig.ssh_config().display())
}

const LIMIT: Duration = Duration::from_secs(300);

fn mpirun(
    place: &Place,
    dir: &Path,
    ranks: usize,
    btl: &str,
    steps: u32,
    sleep_ms: u32,
) -> Vec<String> {
    let prog = bin_dir().join("mpi_jacobi");
    assert!(
        prog.exists(),
        "{} missing: cargo build --release --workspace",
        prog.display()
    );
    let n = ranks.to_string();
    let mut v: Vec<String> = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &n,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(place.mpirun_opts(ranks, dir));
    v.extend(["--mca", "btl", btl].map(String::from));
    v.push(prog.display().to_string());
    v.extend([steps.to_string(), sleep_ms.to_string(), n]);
    v
}

fn checksum(out: &str) -> Option<String> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("CHECKSUM "))
        .map(String::from)
}

/// Kill a child that overstays `LIMIT`; its output file's checksum.
fn finish(mut c: std::process::Child, out: &Path, what: &str) -> Option<String> {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().ok()? {
            if !st.success() {
                let err =
                    std::fs::read_to_string(out.with_file_name("err.txt")).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                eprintln!("bench mpi: {what} ended with {st}: {}", tail.join(" / "));
            }
            break;
        }
        if t.elapsed() > LIMIT {
            eprintln!("bench mpi: {what} did not end in {LIMIT:?}; killed");
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    checksum(&std::fs::read_to_string(out).unwrap_or_default())
}

#[derive(Clone, Copy, PartialEq)]
enum System<'a> {
    Bare,
    Ours,
    Dmtcp(&'a Path),
}

impl System<'_> {
    fn name(&self) -> &'static str {
        match self {
            System::Bare => "bare",
            System::Ours => "dmtcp-rs",
            System::Dmtcp(_) => "DMTCP",
        }
    }
    fn coord(&self, place: &Place, dir: &Path) -> Option<Coord> {
        match self {
            System::Bare => None,
            System::Ours => Some(Coord::start_on(dir, &bin_dir(), place.rig.clone())),
            System::Dmtcp(root) => Some(Coord::start_on(dir, &root.join("bin"), place.rig.clone())),
        }
    }
}

/// Start `cmd` under `sys` (stdout to `dir/out.txt`, own process group).
fn start(
    place: &Place,
    sys: System,
    coord: Option<&Coord>,
    dir: &Path,
    cmd: &[String],
) -> (std::process::Child, PathBuf) {
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    let mut c = match (sys, coord) {
        (System::Bare, _) | (_, None) => on_node0(place.rig(), Path::new(&cmd[0])),
        (_, Some(co)) => {
            let mut c = co.launcher(&ck);
            c.arg(&cmd[0]);
            c
        }
    };
    let out = dir.join("out.txt");
    c.args(&cmd[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("err.txt")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    (c.spawn().expect("start the job"), out)
}

fn status_peers(co: &Coord) -> (usize, bool) {
    let s = co.cmd(&["-s"]);
    let n = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("NUM_PEERS="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (n, s.contains("RUNNING=yes"))
}

/// One timed run of the whole job; None if it failed or differed.
fn timed_run(
    place: &Place,
    sys: System,
    dir: &Path,
    cmd: &[String],
    want: Option<&str>,
) -> Option<(f64, String)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = sys.coord(place, dir);
    let t = Instant::now();
    let (c, out) = start(place, sys, coord.as_ref(), dir, cmd);
    let sum = finish(c, &out, sys.name())?;
    let s = t.elapsed().as_secs_f64();
    if let Some(w) = want {
        if sum != w {
            eprintln!("bench mpi: {} gave checksum {sum}, bare {w}", sys.name());
            return None;
        }
    }
    Some((s, sum))
}

struct CkptRow {
    ckpt_s: f64,
    restart_s: f64,
    image: u64,
}

/// Checkpoint once mid-run, kill, restart with the script, finish.
fn ckpt_restart(
    place: &Place,
    sys: System,
    dir: &Path,
    cmd: &[String],
    want: &str,
) -> Result<CkptRow, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = sys.coord(place, dir).expect("a checkpointer");
    let (mut job, out) = start(place, sys, Some(&coord), dir, cmd);
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let t = Instant::now();
    while !read().contains("step 20\n") {
        if t.elapsed() > LIMIT || job.try_wait().ok().flatten().is_some() {
            let _ = job.kill();
            return Err(format!(
                "the job did not reach step 20: {}",
                std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (peers, _) = status_peers(&coord);
    let t = Instant::now();
    coord.cmd(&["-bc"]);
    let ckpt_s = t.elapsed().as_secs_f64();
    let ck = dir.join("ckpt");
    let image = super::image_bytes(&ck);
    // SAFETY: killing the job's process group (mpirun and its ranks).
    unsafe { libc::kill(-(job.id() as i32), libc::SIGKILL) };
    let _ = job.wait();
    let t = Instant::now();
    while status_peers(&coord).0 != 0 {
        if t.elapsed() > Duration::from_secs(2) {
            // Ranks outside the process group: the coordinator ends them.
            coord.cmd(&["-k"]);
        }
        if t.elapsed() > LIMIT {
            return Err("the job did not go after SIGKILL".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let script = ck.join("dmtcp_restart_script.sh");
    if !script.exists() || image == 0 {
        return Err(format!("no images or restart script in {}", ck.display()));
    }
    let t = Instant::now();
    let mut r = coord.tool(Path::new("bash"));
    if let Some(rig) = place.rig() {
        // Images of the other nodes are restarted there over ssh.
        r.env("DMTCP_RSH", rig_ssh(rig));
    }
    r.arg(&script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("restart.err")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut r, 0);
    let mut r = r.spawn().expect("restart script");
    loop {
        let (n, running) = status_peers(&coord);
        if n == peers && running {
            break;
        }
        if t.elapsed() > LIMIT {
            // SAFETY: killing the restart's process group (its leader is
            // not reaped yet, so the group is still this one).
            unsafe { libc::kill(-(r.id() as i32), libc::SIGKILL) };
            let _ = r.wait();
            return Err(format!(
                "the restart did not come back ({n} of {peers} processes)"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let restart_s = t.elapsed().as_secs_f64();
    let after = finish(r, &dir.join("restart.out"), "the restarted job");
    // The restored job writes to its old stdout (out.txt, reopened by
    // path) or to the restart's: either must end with the bare checksum.
    let got = checksum(&read()).or(after);
    // Whatever is left of the job (after a timeout) ends by the
    // coordinator, not by a process group id that may be reused by now.
    coord.cmd(&["-k"]);
    match got {
        Some(g) if g == want => Ok(CkptRow {
            ckpt_s,
            restart_s,
            image,
        }),
        g => Err(format!("checksum after restart {g:?}, bare {want}")),
    }
}

pub fn run(a: &[String]) {
    let ranks: Vec<usize> = opt(a, "--ranks", "2,4,8")
        .split(',')
        .map(|s| s.parse().expect("--ranks"))
        .collect();
    let steps: u32 = opt(a, "--steps", "100000").parse().expect("--steps");
    let runs: usize = opt(a, "--runs", "3").parse().expect("--runs");
    let per_node: Option<usize> =
        super::opt_given(a, "--per-node").map(|s| s.parse().expect("--per-node"));
    let btl = opt(
        a,
        "--btl",
        if per_node.is_some() {
            "self,vader,tcp"
        } else {
            "self,vader"
        },
    )
    .to_string();
    let dmtcp_root = super::opt_given(a, "--dmtcp").map(PathBuf::from);
    let dir = std::path::absolute(PathBuf::from(opt(a, "--dir", "target/bench-mpi"))).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let place = Place {
        rig: per_node.map(|k| {
            assert!(k > 0, "--per-node must be at least 1");
            let nodes = ranks.iter().map(|n| n.div_ceil(k)).max().unwrap_or(1);
            Arc::new(
                testrig::Rig::builder(nodes)
                    .sshd(true)
                    // Images and outputs (under /tmp too) seen by every node.
                    .share(&dir)
                    .up()
                    .expect("test rig with sshd (needs root, iproute2, openssh-server)"),
            )
        }),
        per_node: per_node.unwrap_or(1),
    };
    let mut systems = vec![System::Bare, System::Ours];
    if let Some(r) = &dmtcp_root {
        systems.push(System::Dmtcp(r));
    }

    let ranks_head = if place.rig.is_some() {
        "ranks on nodes"
    } else {
        "ranks"
    };
    println!("Run-time overhead: mpi_jacobi {steps} steps, btl {btl}, median of {runs} runs");
    println!();
    println!("| {ranks_head} | system | median s | runs s | overhead vs bare |");
    println!("|---|---|---|---|---|");
    for &n in &ranks {
        let cmd = mpirun(&place, &dir, n, &btl, steps, 0);
        let nn = place.describe(n);
        let Some((_, want)) = timed_run(&place, System::Bare, &dir.join("warm"), &cmd, None) else {
            eprintln!("bench mpi: the bare run with {n} ranks failed");
            continue;
        };
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
        // A system that failed once is not tried again at this rank count.
        let mut failed = vec![false; systems.len()];
        for _ in 0..runs {
            for (i, &s) in systems.iter().enumerate() {
                if failed[i] {
                    continue;
                }
                match timed_run(&place, s, &dir.join(s.name()), &cmd, Some(&want)) {
                    Some((t, _)) => times[i].push(t),
                    None => failed[i] = true,
                }
            }
        }
        let bare = super::median(times[0].clone());
        for (i, s) in systems.iter().enumerate() {
            if times[i].is_empty() {
                println!("| {nn} | {} | failed | | |", s.name());
                continue;
            }
            let all: Vec<String> = times[i].iter().map(|t| format!("{t:.2}")).collect();
            let m = super::median(times[i].clone());
            println!(
                "| {nn} | {} | {m:.2} | {} | {:+.1}% |",
                s.name(),
                all.join(" "),
                (m / bare - 1.0) * 100.0
            );
        }
    }

    println!();
    println!("Checkpoint and restart: mpi_jacobi with 5 ms per step, one checkpoint at step 20, SIGKILL, restart script, run to the end");
    println!();
    println!("| {ranks_head} | system | checkpoint s | restart s | images MB | checksum |");
    println!("|---|---|---|---|---|---|");
    for &n in &ranks {
        let cmd = mpirun(&place, &dir, n, &btl, 400, 5);
        let nn = place.describe(n);
        let Some((_, want)) = timed_run(&place, System::Bare, &dir.join("warm"), &cmd, None) else {
            eprintln!("bench mpi: the bare run with {n} ranks failed");
            continue;
        };
        for &s in &systems[1..] {
            match ckpt_restart(&place, s, &dir.join(s.name()), &cmd, &want) {
                Ok(r) => println!(
                    "| {nn} | {} | {:.2} | {:.2} | {:.0} | = bare |",
                    s.name(),
                    r.ckpt_s,
                    r.restart_s,
                    r.image as f64 / 1e6
                ),
                Err(e) => println!("| {nn} | {} | failed: {e} | | | |", s.name()),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
