//! The MPI programs under OpenMPI on one node, each checkpointed twice
//! while it runs, killed, and restarted with the generated
//! `dmtcp_restart_script.sh`: the final checksum must equal a bare run's.
//! Shared memory (`btl self,vader`: its segments and CMA copies) and TCP
//! (`btl self,tcp`; not for RMA: OpenMPI 4.1's one-sided component needs
//! vader there, and a bare run fails in MPI_Win_create). Multi-node runs
//! over ssh come with the ssh plugin.

mod h5compare;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RANKS: &str = "4";
const STEPS: &str = "120";
const SLEEP_MS: &str = "25";
const LIMIT: Duration = Duration::from_secs(90);

/// MPI ranks busy-poll: one job at a time, or on a small machine they
/// starve each other.
static JOBS: Mutex<()> = Mutex::new(());

/// target/release, where the programs and the tools are.
fn bin_dir() -> PathBuf {
    let d = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for f in [
        "dmtcp_launch",
        "dmtcp_command",
        "dmtcp_coordinator",
        "dmtcp_restart",
        "libdmtcp.so",
        "mpi_ring",
    ] {
        assert!(
            d.join(f).exists(),
            "{} missing: build the whole workspace first (cargo build --release --workspace)",
            d.join(f).display()
        );
    }
    d
}

fn mpirun(btl: &str, prog: &str) -> Vec<String> {
    let p = bin_dir().join(prog).display().to_string();
    [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        RANKS,
        "--mca",
        "btl",
        btl,
        &p,
        STEPS,
        SLEEP_MS,
        RANKS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn checksum(out: &str) -> Option<&str> {
    out.lines().rev().find_map(|l| l.strip_prefix("CHECKSUM "))
}

fn wait(c: &mut Child, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(t.elapsed() < LIMIT, "{what} did not finish in {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Coordinator {
    proc: Child,
    port: String,
    dir: PathBuf,
}

impl Coordinator {
    fn start(dir: &Path) -> Coordinator {
        let pf = dir.join("port");
        let proc = Command::new(bin_dir().join("dmtcp_coordinator"))
            .args(["-q", "-p", "0", "--port-file"])
            .arg(&pf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&pf)
                .ok()
                .filter(|s| !s.trim().is_empty())
            {
                break p.trim().to_string();
            }
            assert!(t.elapsed() < LIMIT, "coordinator did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Coordinator {
            proc,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_dir().join("dmtcp_command"))
            .args(["-h", "127.0.0.1", "-p", &self.port])
            .args(args)
            .output()
            .unwrap()
    }

    fn pids(&self) -> Vec<i32> {
        let o = self.command(&["--json", "-l"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["pid"].as_i64().map(|x| x as i32))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.txt")).unwrap_or_default()
    }

    fn wait_for(&self, pat: &str) {
        let t = Instant::now();
        while !self.output().contains(pat) {
            assert!(
                t.elapsed() < LIMIT,
                "no {pat:?} in the output: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Bare run, then the checkpointed run: two checkpoints, SIGKILL of the
/// whole job, restart from the script; the checksums must be equal.
fn bare_and_restarted(btl: &str, prog: &str) {
    run_case(btl, prog, &[]);
}

/// [`bare_and_restarted`] with `launch_opts` for dmtcp_launch; returns the
/// directories the bare and the restarted run worked in.
fn run_case(btl: &str, prog: &str, launch_opts: &[&str]) -> (PathBuf, PathBuf) {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let cmd = mpirun(btl, prog);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "mpi-{prog}-{}-{}",
        btl.replace(',', "_"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let bare_dir = dir.join("bare");
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::create_dir_all(&bare_dir).unwrap();
    let bare = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(&bare_dir)
        .output()
        .unwrap();
    let bare_out = String::from_utf8_lossy(&bare.stdout).into_owned();
    assert!(
        bare.status.success(),
        "bare run failed: {bare_out}{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    let want = checksum(&bare_out)
        .expect("no checksum in the bare run")
        .to_string();

    let coord = Coordinator::start(&dir);
    let mut launch = Command::new(bin_dir().join("dmtcp_launch"));
    launch
        .args(["-j", "-h", "127.0.0.1", "-p", &coord.port, "--ckptdir"])
        .arg(&ck)
        .args(launch_opts)
        .args(&cmd);
    launch
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.txt")).unwrap());
    launch.stderr(std::fs::File::create(dir.join("err.txt")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut launch, 0);
    let mut job = launch.spawn().unwrap();
    for mark in ["step 20\n", "step 50\n"] {
        coord.wait_for(mark);
        let o = coord.command(&["-bc"]);
        assert!(
            o.status.success(),
            "checkpoint failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            coord.output()
        );
    }
    coord.wait_for("step 60\n");
    // SIGKILL everything, as a node failure would.
    // SAFETY: signalling the job's process group and its processes.
    unsafe { libc::kill(-(job.id() as i32), libc::SIGKILL) };
    for pid in coord.pids() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = job.wait();
    let t = Instant::now();
    while !coord.pids().is_empty() {
        assert!(t.elapsed() < LIMIT, "the job did not go after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut restart = Command::new("bash")
        .arg(ck.join("dmtcp_restart_script.sh"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("restart.err")).unwrap())
        .spawn()
        .unwrap();
    let st = wait(&mut restart, "the restarted job");
    let out = coord.output();
    let err = std::fs::read_to_string(dir.join("restart.err")).unwrap_or_default();
    assert!(st.success(), "restart failed ({st}): {err}\n{out}");
    assert_eq!(
        checksum(&out),
        Some(want.as_str()),
        "checksum after restart differs from the bare run's: {out}\n{err}"
    );
    (bare_dir, dir)
}

#[test]
fn ring_over_shared_memory() {
    bare_and_restarted("self,vader", "mpi_ring");
}

#[test]
fn jacobi_over_shared_memory() {
    bare_and_restarted("self,vader", "mpi_jacobi");
}

#[test]
fn collectives_over_shared_memory() {
    bare_and_restarted("self,vader", "mpi_collectives");
}

#[test]
fn rma_over_shared_memory() {
    bare_and_restarted("self,vader", "mpi_rma");
}

#[test]
fn jacobi_over_tcp() {
    bare_and_restarted("self,tcp", "mpi_jacobi");
}

#[test]
fn collectives_over_tcp() {
    bare_and_restarted("self,tcp", "mpi_collectives");
}

/// Every rank keeps its HDF5 file open and adds a dataset every 10 steps,
/// checkpointed twice while the files are open. Launched with
/// `--ckpt-open-files`, as docs/mpi.md advises for output files (the images
/// hold the files as they were at checkpoint time; this deterministic
/// program would also rewrite the same bytes at the same offsets without
/// it). After the restart each file reads back (`h5dump`) exactly as the
/// bare run's.
#[test]
fn hdf5_files_open_across_restart() {
    let (bare, run) = run_case("self,vader", "mpi_h5writer", &["--ckpt-open-files"]);
    h5compare::same_files(&bare, &run, 4, "step_0119");
}
