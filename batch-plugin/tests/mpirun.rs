//! srun started by a process of the computation, on the rig's real SLURM
//! cluster: OpenMPI's `mpirun` under `dmtcp_launch` in an allocation
//! starts its orted daemons with srun (plm/slurm), which the batch plugin
//! turns into `dmtcp_srun --relay`. Needs root, slurmctld, slurmd,
//! slurm-client, munge and OpenMPI; build the workspace first (`cargo
//! build --release --workspace`).

mod common;

use common::{bin, checksum, dmtcp_command, listed, read, running_peers, sh, wait_for};
use std::path::Path;
use std::time::Duration;
use testrig::Rig;

/// One MPI job at a time: ranks busy-poll, and two 4-rank jobs at once on
/// a small machine run very slowly (the time-limit test counts on its
/// pace).
static JOBS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `mpirun` of the Jacobi program, 4 ranks in the allocation (2 per node),
/// `steps` steps `pause` ms apart.
fn mpirun(rig: &Rig, steps: u32, pause: u32) -> String {
    format!(
        "mpirun --allow-run-as-root -np 4 --mca btl self,vader,tcp --mca btl_tcp_if_include {net} \
         --mca oob_tcp_if_include {net} {} {steps} {pause} 4",
        bin("mpi_jacobi").display(),
        net = rig.subnet()
    )
}

/// The bare run's checksum: the same mpirun in an allocation of node0 and
/// node1, without the checkpointer.
fn bare_checksum(rig: &Rig, dir: &Path, mpirun: &str) -> String {
    let mut bare = sh(
        rig,
        dir,
        "bare",
        &format!("salloc -N2 -n4 -w node0,node1 {mpirun}"),
    );
    assert!(
        bare.wait().unwrap().success(),
        "{}",
        read(&dir.join("bare.err"))
    );
    let out = read(&dir.join("bare.out"));
    checksum(&out).unwrap_or_else(|| panic!("no checksum in the bare run: {out}"))
}

/// The processes of the running job: mpirun and srun's stand-in
/// (dmtcp_srun) and 2 ranks on `a`, the task's parent (dmtcp_srun), orted
/// and 2 ranks on `b`; no srun, no slurmstepd.
fn check_processes(list: &str, a: &str, b: &str) {
    let procs = listed(list);
    let count = |p: &str, h: &str| procs.iter().filter(|(q, k)| q == p && k == h).count();
    assert_eq!(procs.len(), 8, "{list}");
    assert_eq!(count("mpirun", a), 1, "{list}");
    assert_eq!(count("dmtcp_srun", a), 1, "{list}");
    assert_eq!(count("mpi_jacobi", a), 2, "{list}");
    assert_eq!(count("dmtcp_srun", b), 1, "{list}");
    assert_eq!(count("orted", b), 1, "{list}");
    assert_eq!(count("mpi_jacobi", b), 2, "{list}");
}

/// `dmtcp_launch mpirun` in an allocation of node0 and node1: mpirun's
/// srun (starting orted on node1) is relayed; checkpointed mid-run, the
/// allocation cancelled (scancel: every process of the job is killed),
/// then the restart script in an allocation of node2 and node3 restores
/// mpirun and its stand-in on node2, orted and its ranks on node3; the
/// job finishes with the bare run's checksum.
#[test]
fn mpirun_job_restarts_in_another_allocation() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::builder(4).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let mpirun = mpirun(&rig, 240, 25);
    let want = bare_checksum(&rig, &dir, &mpirun);

    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    let port_file = dir.join("port");
    let mut job = sh(
        &rig,
        &dir,
        "job",
        &format!(
            "salloc -N2 -n4 -w node0,node1 {} --new-coordinator -p 0 --port-file {} -c {} {mpirun}",
            bin("dmtcp_launch").display(),
            port_file.display(),
            ck.display()
        ),
    );
    let port: String = wait_for("the coordinator", Duration::from_secs(20), || {
        Some(read(&port_file).trim().to_string()).filter(|p| !p.is_empty())
    });
    let out = dir.join("job.out");
    let diag = || {
        format!(
            "\n--- job.out:\n{}\n--- job.err:\n{}\n--- restart.out:\n{}\n--- restart.err:\n{}\n--- list:\n{}",
            read(&out),
            read(&dir.join("job.err")),
            read(&dir.join("restart.out")),
            read(&dir.join("restart.err")),
            dmtcp_command(&rig, &port, &["-l"]).0
        )
    };
    wait_for("step 40", Duration::from_secs(60), || {
        read(&out).contains("step 40\n").then_some(())
    });
    wait_for("8 processes running", Duration::from_secs(30), || {
        (running_peers(&rig, &port) == Some(8)).then_some(())
    });
    check_processes(&dmtcp_command(&rig, &port, &["-l"]).0, "node0", "node1");
    let (o, code) = dmtcp_command(&rig, &port, &["-bc"]);
    assert_eq!(code, Some(0), "checkpoint: {o}{}", diag());
    wait_for("step 80", Duration::from_secs(60), || {
        read(&out).contains("step 80\n").then_some(())
    });
    // The allocation ends (as at a time limit): srun's steps are killed;
    // what ran on node0 outside any step too.
    let id = common::on_node0(&rig, "squeue -h -o %i");
    let id = id.split_whitespace().next().unwrap_or("").to_string();
    assert!(!id.is_empty(), "no allocation in squeue");
    common::on_node0(&rig, &format!("scancel -s KILL {id}; scancel {id}"));
    let _ = dmtcp_command(&rig, &port, &["-k"]);
    job.wait().unwrap();
    wait_for("the coordinator to go", Duration::from_secs(30), || {
        (dmtcp_command(&rig, &port, &["-s"]).1 == Some(2)).then_some(())
    });
    assert!(checksum(&read(&out)).is_none(), "finished before the kill");

    let mut restart = sh(
        &rig,
        &dir,
        "restart",
        &format!(
            "salloc -N2 -n4 -w node2,node3 {}",
            ck.join("dmtcp_restart_script.sh").display()
        ),
    );
    wait_for("the restarted job", Duration::from_secs(60), || {
        (running_peers(&rig, &port) == Some(8)).then_some(())
    });
    check_processes(&dmtcp_command(&rig, &port, &["-l"]).0, "node2", "node3");
    let st = restart.wait().unwrap();
    assert!(st.success(), "restart: {st}{}", diag());
    assert_eq!(checksum(&read(&out)), Some(want), "{}", diag());
}

/// The example batch script (examples/slurm/dmtcp_job.sbatch) runs
/// `mpirun` (its orted started with srun, relayed) with a time limit of one
/// minute, shorter than the job's run (700 steps 90 ms apart: 63 s of
/// pauses alone), and SLURM's warning 30 s before the limit
/// (`--signal=B:USR1@30`; slurmctld sends it when it next looks at time
/// limits, periodically, so each start runs for a varying time: 3 and 4
/// restarts were seen). The script checkpoints, requeues, and
/// restarts from the checkpoint until the job is done: it ends COMPLETED
/// after at least one restart, with the checksum of a bare run of the same
/// program and steps (bare: without the pause between steps, which
/// changes no value).
#[test]
fn example_sbatch_script_runs_mpirun_past_its_time_limit() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let (steps, pause) = (700, 90);
    let t0 = std::time::Instant::now();
    let want = bare_checksum(&rig, &dir, &mpirun(&rig, steps, 0));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/slurm/dmtcp_job.sbatch");
    let path = format!(
        "{}:{}",
        bin("dmtcp_launch").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = dir.join("job.txt");
    let submit = format!(
        "PATH={path} DMTCP_CKPT_ROOT={} sbatch --parsable -N2 -n4 --time=1 --signal=B:USR1@30 -o {} {} {}",
        dir.join("ckpt").display(),
        out.display(),
        script.display(),
        mpirun(&rig, steps, pause)
    );
    let mut s = sh(&rig, &dir, "sbatch", &submit);
    assert!(
        s.wait().unwrap().success(),
        "{}",
        read(&dir.join("sbatch.err"))
    );
    let id = read(&dir.join("sbatch.out")).trim().to_string();
    eprintln!("bare run: {:?}", t0.elapsed());
    let state = testrig::wait_for("the job to complete", Duration::from_secs(220), || {
        let s = common::on_node0(&rig, &format!("scontrol show job {id}"));
        ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]
            .iter()
            .any(|k| s.contains(&format!("JobState={k}")))
            .then_some(s)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n--- job.txt:\n{}",
            common::on_node0(&rig, &format!("scontrol show job {id}")),
            read(&out)
        )
    });
    eprintln!(
        "the bare run and the job took {:?}; the job: {}",
        t0.elapsed(),
        state
            .lines()
            .find(|l| l.contains("Restarts="))
            .unwrap_or("")
    );
    let text = read(&out);
    assert!(
        state.contains("JobState=COMPLETED") && !state.contains("Restarts=0"),
        "{state}\n{text}"
    );
    assert!(text.contains("dmtcp_job: restart 1 of job"), "{text}");
    assert_eq!(checksum(&text), Some(want), "{text}");
}

/// MPICH 4.0's hydra with its slurm launcher (`mpiexec.mpich -launcher
/// slurm`, which runs `srun` for its proxies) inside an allocation of
/// node0 and node1, the C ring program, 2 ranks per node, under
/// `dmtcp_launch`: srun is relayed, every proxy and rank joins (10
/// processes), a checkpoint writes all 10 images into a committed
/// generation, and the job goes on after it with the bare run's running
/// checksums. Not tested, because it does not work yet: restarting it
/// (docs/batch.md, "MPICH's hydra").
#[test]
fn mpich_hydra_slurm_launcher_job_launches_and_checkpoints() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ssh-plugin/tests/c/mpi_ring.c");
    let prog = dir.join("mpich_ring");
    let st = std::process::Command::new("mpicc.mpich")
        .args(["-O2", "-o"])
        .arg(&prog)
        .arg(&src)
        .status()
        .expect("mpicc.mpich (apt install mpich libmpich-dev)");
    assert!(st.success(), "compiling {}", src.display());
    // UCX's System V shared memory transport is not restored as shared
    // (docs/mpi.md): POSIX shared memory and TCP instead.
    let mpiexec = format!(
        "env UCX_TLS=self,posix,tcp mpiexec.mpich -launcher slurm -n 4 {} 600",
        prog.display()
    );
    // MPICH 4.0's MPI_Finalize over UCX can hang by itself (docs/mpi.md):
    // a bare run whose output is complete and that has not ended 30 s
    // later is stopped; its output up to the checksum line counts.
    let mut bare = sh(
        &rig,
        &dir,
        "bare",
        &format!(
            "salloc -N2 -n4 -w node0,node1 sh -c '{mpiexec} & p=$!; \
             for i in $(seq 1200); do grep -q \"^size 4 checksum\" {out} && break; kill -0 $p || break; sleep 0.1; done; \
             for i in $(seq 300); do kill -0 $p || break; sleep 0.1; done; kill -INT $p; wait $p'",
            out = dir.join("bare.out").display()
        ),
    );
    let _ = bare.wait();
    let bare = read(&dir.join("bare.out"));
    assert!(bare.contains("\nsize 4 checksum "), "bare run: {bare}");

    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    let port_file = dir.join("port");
    let mut job = sh(
        &rig,
        &dir,
        "job",
        &format!(
            "salloc -N2 -n4 -w node0,node1 {} --new-coordinator -p 0 --port-file {} -c {} {mpiexec}",
            bin("dmtcp_launch").display(),
            port_file.display(),
            ck.display()
        ),
    );
    let port: String = wait_for("the coordinator", Duration::from_secs(20), || {
        Some(read(&port_file).trim().to_string()).filter(|p| !p.is_empty())
    });
    let out = dir.join("job.out");
    let diag = || {
        format!(
            "\n--- job.out tail:\n{}\n--- job.err:\n{}\n--- restart.out:\n{}\n--- restart.err:\n{}\n--- list:\n{}\n--- ck:\n{}",
            {
                let t = read(&out);
                let l: Vec<&str> = t.lines().collect();
                format!(
                    "{} lines; last: {}",
                    l.len(),
                    l.iter().rev().take(12).copied().collect::<Vec<_>>().join(" | ")
                )
            },
            read(&dir.join("job.err")),
            read(&dir.join("restart.out")),
            read(&dir.join("restart.err")),
            dmtcp_command(&rig, &port, &["-l"]).0,
            common::on_node0(&rig, &format!("ls -la {}", ck.display()))
        )
    };
    common::wait_diag(
        "iteration 150",
        Duration::from_secs(60),
        || read(&out).contains("\niter 150 ").then_some(()),
        diag,
    );
    let (list, _) = dmtcp_command(&rig, &port, &["-l"]);
    let procs = listed(&list);
    // mpiexec, srun's stand-in; on each node a task parent, a proxy, 2 ranks.
    assert_eq!(procs.len(), 10, "{list}");
    let (o, code) = dmtcp_command(&rig, &port, &["-bc"]);
    assert_eq!(code, Some(0), "checkpoint: {o}{}", diag());
    common::wait_diag(
        "iteration 300",
        Duration::from_secs(60),
        || read(&out).contains("\niter 300 ").then_some(()),
        diag,
    );
    // Every image in the committed generation.
    let images = common::on_node0(
        &rig,
        &format!("ls {}/dmtcp_gen_*_1/*.dmtcp | wc -l", ck.display()),
    );
    assert_eq!(images.trim(), "10", "{}", diag());
    // The iterations after the checkpoint are the bare run's.
    let upto = |t: &str| -> String {
        let end = t.find("\niter 300 ").unwrap_or(t.len());
        t[..end].to_string()
    };
    assert_eq!(upto(&read(&out)), upto(&bare), "{}", diag());
    let id = common::on_node0(&rig, "squeue -h -o %i");
    let id = id.split_whitespace().next().unwrap_or("").to_string();
    common::on_node0(&rig, &format!("scancel -s KILL {id}; scancel {id}"));
    let _ = dmtcp_command(&rig, &port, &["-k"]);
    let _ = job.wait();
}
