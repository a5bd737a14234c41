//! The MPI programs across hosts of the test rig (network namespaces with
//! sshd; `mpirun` starts its remote orted over ssh, through the ssh
//! plugin's relays): 4 ranks, 2 on each of two hosts, shared memory
//! between ranks of one host and TCP between hosts. Each job is
//! checkpointed mid-run, killed on every host and restarted with the
//! generated restart script (one `dmtcp_restart` per host); the final
//! checksum must equal a bare run's, and HDF5 files must read back alike.
//! The harness is the ssh plugin's (ssh-plugin/tests/common).

#[path = "../../../ssh-plugin/tests/common/mod.rs"]
mod common;
mod h5compare;

use common::Job;
use std::sync::Mutex;

/// One rig job at a time: MPI ranks busy-poll, and a small machine runs
/// two 4-rank jobs at once very slowly.
static JOBS: Mutex<()> = Mutex::new(());

const STEPS: &str = "200";
const SLEEP_MS: &str = "25";

fn checksum(out: &str) -> Option<&str> {
    out.lines().rev().find_map(|l| l.strip_prefix("CHECKSUM "))
}

/// `mpirun` of `prog` with 2 ranks on each of node0 and node1.
fn script(rig: &testrig::Rig, prog: &str) -> String {
    script_steps(rig, prog, STEPS)
}

/// The same, running `steps` steps.
fn script_steps(rig: &testrig::Rig, prog: &str, steps: &str) -> String {
    script_exe(rig, &common::bin_dir().join(prog), steps)
}

/// `mpirun` of the program `exe` with 2 ranks on each of node0 and node1.
fn script_exe(rig: &testrig::Rig, exe: &std::path::Path, steps: &str) -> String {
    script_on(rig, 2, "self,vader,tcp", exe, steps)
}

/// `mpirun` of `exe` with 2 ranks on each of node0..node<nodes-1>, over
/// the BTLs `btl`.
fn script_on(
    rig: &testrig::Rig,
    nodes: usize,
    btl: &str,
    exe: &std::path::Path,
    steps: &str,
) -> String {
    let hostfile = rig.shared_dir().join("mpi-hosts");
    let hosts: String = (0..nodes).map(|k| format!("node{k} slots=2\n")).collect();
    std::fs::write(&hostfile, hosts).unwrap();
    let np = 2 * nodes;
    format!(
        "mpirun --allow-run-as-root --hostfile {} -np {np} --mca plm_rsh_agent '{}' --mca btl {btl} \
         --mca btl_tcp_if_include {net} --mca oob_tcp_if_include {net} {} {steps} {SLEEP_MS} {np}",
        hostfile.display(),
        common::ssh(rig),
        exe.display(),
        net = rig.subnet()
    )
}

/// Bare run in `dir` (created) on node0; its checksum.
fn bare(rig: &testrig::Rig, script: &str, dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let out = common::bare(rig, 0, &format!("cd {} && {script}", dir.display()));
    checksum(&out)
        .unwrap_or_else(|| panic!("no checksum in the bare run: {out}"))
        .to_string()
}

/// Wait for the job's end; its checksum must be `want` (the bare run's).
fn finish_with(job: &mut Job, want: &str) {
    job.wait_for("CHECKSUM ");
    job.finish();
    assert_eq!(checksum(&job.output()), Some(want), "{}", job.diag());
}

/// Launch, checkpoint at step 40, kill at step 70, restart on the same
/// hosts (then, with `moved`, checkpoint again at step 120, kill at 150
/// and restart on those hosts, and a third time: checkpoint at 200, kill
/// at 230, restart there again; such a run has 300 steps); the checksum
/// must be the bare run's. Returns the bare run's and the job's
/// directories.
fn run<'a>(
    rig: &'a testrig::Rig,
    name: &str,
    prog: &str,
    launch_opts: &[&str],
    moved: Option<&str>,
) -> (std::path::PathBuf, Job<'a>) {
    let s = match moved {
        Some(_) => script_steps(rig, prog, "300"),
        None => script(rig, prog),
    };
    let bare_dir = rig.shared_dir().join(format!("bare-{name}"));
    let want = bare(rig, &s, &bare_dir);
    let mut job = Job::launch(rig, name, &s, launch_opts);
    job.wait_for("step 40\n");
    // mpirun, dmtcp_ssh, 2 ranks on node0; dmtcp_sshd, orted, 2 ranks on node1
    job.wait_peers(8);
    job.checkpoint();
    job.wait_for("step 70\n");
    job.kill();
    job.restart(&[]);
    if let Some(hosts) = moved {
        job.wait_peers(8);
        job.wait_for("step 120\n");
        job.checkpoint();
        job.wait_for("step 150\n");
        job.kill();
        let f = rig.shared_dir().join(format!("hosts-{name}"));
        std::fs::write(&f, hosts).unwrap();
        job.restart(&["--hostfile", &f.display().to_string()]);
        job.wait_peers(8);
        let procs = job.processes();
        let first = hosts.lines().next().unwrap();
        assert!(common::count(&procs, prog, first) == 2, "{procs:?}");
        // The third cycle in one run, on the hosts it moved to.
        job.wait_for("step 200\n");
        job.checkpoint();
        job.wait_for("step 230\n");
        job.kill();
        job.restart(&["--hostfile", &f.display().to_string()]);
        job.wait_peers(8);
        assert!(common::count(&job.processes(), prog, first) == 2);
    }
    finish_with(&mut job, &want);
    (bare_dir, job)
}

#[test]
fn jacobi_across_two_hosts_restarts_and_moves() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(4);
    run(&rig, "jacobi", "mpi_jacobi", &[], Some("node2\nnode3\n"));
}

#[test]
fn collectives_across_two_hosts_restart() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(2);
    run(&rig, "collectives", "mpi_collectives", &[], None);
}

/// Every rank keeps its HDF5 file open in the shared directory (as on a
/// cluster's shared file system) and adds a dataset every 10 steps; after
/// the restart each file reads back (`h5dump`) exactly as the bare run's.
#[test]
fn hdf5_files_across_two_hosts_restart() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(2);
    let (bare_dir, job) = run(&rig, "h5", "mpi_h5writer", &["--ckpt-open-files"], None);
    h5compare::same_files(&bare_dir, &job.dir, 4, "step_0199");
}

/// 8 ranks, 2 on each of four hosts, Jacobi over TCP only (`btl
/// self,tcp`: also between the ranks of one host): checkpointed, killed on
/// every host and restarted with the script (four `dmtcp_restart`s whose
/// connections meet through the coordinator); checksum = the bare run's.
#[test]
fn jacobi_with_8_ranks_on_4_hosts_over_tcp_restarts() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(4);
    let s = script_on(
        &rig,
        4,
        "self,tcp",
        &common::bin_dir().join("mpi_jacobi"),
        STEPS,
    );
    let want = bare(&rig, &s, &rig.shared_dir().join("bare-jacobi8"));
    let mut job = Job::launch(&rig, "jacobi8", &s, &[]);
    job.wait_for("step 40\n");
    // mpirun, 3 dmtcp_ssh and 2 ranks on node0; dmtcp_sshd, orted and 2
    // ranks on each of node1..node3.
    job.wait_peers(18);
    job.checkpoint();
    job.wait_for("step 70\n");
    job.kill();
    job.restart(&[]);
    job.wait_peers(18);
    let procs = job.processes();
    for k in 0..4 {
        assert_eq!(
            common::count(&procs, "mpi_jacobi", &format!("node{k}")),
            2,
            "{procs:?}"
        );
    }
    finish_with(&mut job, &want);
}

/// Parallel HDF5: the ranks write one shared file (`field.h5` in the
/// shared directory) through the MPI-IO driver, each stored step a dataset
/// made together and written with one collective write (`mpi_h5shared`,
/// built with the `mpio` feature against Debian's OpenMPI HDF5 into
/// target/h5mpi, as scripts/test.sh does). Checkpointed twice while the
/// file is open, killed and restarted on the same hosts: the checksum and
/// the file (`h5dump`) equal the bare run's.
#[test]
fn parallel_hdf5_shared_file_across_two_hosts_restarts() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let exe = common::bin_dir()
        .parent()
        .unwrap()
        .join("h5mpi/release/mpi_h5shared");
    assert!(
        exe.exists(),
        "{} missing: build it against the OpenMPI HDF5 first (apt install libhdf5-openmpi-dev; \
         scripts/test.sh does: HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi cargo build --release \
         -p mpi-apps --features mpio --bin mpi_h5shared --target-dir target/h5mpi)",
        exe.display()
    );
    let rig = common::rig(2);
    let s = script_exe(&rig, &exe, STEPS);
    let bare_dir = rig.shared_dir().join("bare-h5shared");
    let want = bare(&rig, &s, &bare_dir);
    let mut job = Job::launch(&rig, "h5shared", &s, &["--ckpt-open-files"]);
    job.wait_for("step 40\n");
    job.wait_peers(8);
    job.checkpoint();
    job.wait_for("step 80\n");
    job.checkpoint();
    job.wait_for("step 110\n");
    job.kill();
    job.restart(&[]);
    finish_with(&mut job, &want);
    h5compare::same_file(&bare_dir, &job.dir, "field.h5", "step_0199");
}

/// `mpiexec.mpich` (hydra, starting `hydra_pmi_proxy` over ssh with the
/// rig's config) of `prog ARGS`, 2 ranks on each of node0 and node1, UCX
/// restricted to `ucx_tls`.
fn mpich_script(rig: &testrig::Rig, ucx_tls: &str, prog_and_args: &str) -> String {
    // hydra runs its launcher as one program: ssh with the rig's config.
    let rsh = rig.shared_dir().join("rig-ssh");
    std::fs::write(
        &rsh,
        format!("#!/bin/sh\nexec {} \"$@\"\n", common::ssh(rig)),
    )
    .unwrap();
    std::fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "export UCX_TLS={ucx_tls}; mpiexec.mpich -launcher ssh -launcher-exec {} -hosts node0:2,node1:2 -n 4 {prog_and_args}",
        rsh.display()
    )
}

/// MPICH 4.0's MPI_Finalize over UCX can deadlock by itself: a rank whose
/// endpoint disconnects are done waits in a PMI barrier while another
/// rank's disconnect still needs its progress (fixed in MPICH 4.2,
/// pmodels/mpich#6596; docs/mpi.md). Seen here without the checkpointer
/// too, so a run whose output is complete (a line starting `last`) and
/// that has not ended 30 s later is stopped (and says so on stderr); its
/// output up to that line (not mpiexec's words on being stopped) is
/// what a test compares. This is the bare run of `mpiexec` that way.
fn mpich_bare(rig: &testrig::Rig, mpiexec: &str, last: &str) -> String {
    let bare_script = format!(
        "t=$(mktemp); {mpiexec} >$t & p=$!; \
         for i in $(seq 1000); do grep -q '^{last}' $t && break; kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
         for i in $(seq 300); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; \
         if kill -0 $p 2>/dev/null; then echo 'bare run: stopped in MPI_Finalize' >&2; kill -INT $p; fi; \
         wait $p; sed -n '1,/^{last}/p' $t; rm -f $t"
    );
    let bare = common::bare(rig, 0, &bare_script);
    assert!(bare.contains(&format!("\n{last}")), "bare run: {bare}");
    bare
}

/// The restarted MPICH job has printed `last`: give it 30 s to end (see
/// [`mpich_bare`]), then its output must equal the bare run's.
fn mpich_finish(job: &mut Job, last: &str, bare: &str) {
    job.wait_for(&format!("\n{last}"));
    if !job.ended_within(std::time::Duration::from_secs(30)) {
        eprintln!("mpich: the restarted job did not end 30 s after its last line (MPICH 4.0 finalize deadlock, docs/mpi.md): stopped");
        job.kill();
    }
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// MPICH (4.0) with the C ring program built by `mpicc.mpich`, 2 ranks
/// on each of node0 and node1: checkpointed, killed and restarted on the
/// same hosts, twice; the output (every iteration's running checksum,
/// then the final one) equals a bare run's. (A job moved to other hosts:
/// `mpich_jacobi_over_tcp_moves_to_two_other_hosts`.)
#[test]
fn mpich_ring_across_two_hosts_restarts_twice() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(2);
    let dir = rig.shared_dir();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ssh-plugin/tests/c/mpi_ring.c");
    let prog = dir.join("mpich_ring");
    let st = std::process::Command::new("mpicc.mpich")
        .args(["-O2", "-o"])
        .arg(&prog)
        .arg(&src)
        .status()
        .expect("mpicc.mpich (apt install mpich libmpich-dev)");
    assert!(st.success(), "compiling {}", src.display());
    // UCX's System V shared memory transport attaches parts of segments,
    // which the engine does not restore as shared (docs/mpi.md): its
    // POSIX shared memory and TCP transports are used instead.
    let mpiexec = mpich_script(&rig, "self,posix,tcp", &format!("{} 1500", prog.display()));
    let bare = mpich_bare(&rig, &mpiexec, "size 4 checksum");
    let mut job = Job::launch(&rig, "mpich", &mpiexec, &[]);
    job.wait_for("iter 200 ");
    job.checkpoint();
    job.wait_for("iter 400 ");
    job.kill();
    job.restart(&[]);
    job.wait_for("iter 600 ");
    job.checkpoint();
    job.wait_for("iter 800 ");
    job.kill();
    job.restart(&[]);
    mpich_finish(&mut job, "size 4 checksum", &bare);
}

/// The rsmpi programs built against MPICH (scripts/test.sh builds them
/// into target/mpich with `MPICC=mpicc.mpich`): `prog`, 2 ranks on each
/// of node0 and node1, UCX restricted to `ucx_tls`, checkpointed at step
/// 40, killed at step 70, restarted with the script (on the hosts of
/// `moved`, one a line, when given: the i-th old host's images go to the
/// i-th new one); the whole output (progress lines and the checksum)
/// equals a bare run's.
fn mpich_rsmpi(name: &str, prog: &str, ucx_tls: &str, moved: Option<&str>) {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let exe = common::bin_dir()
        .parent()
        .unwrap()
        .join("mpich/release")
        .join(prog);
    assert!(
        exe.exists(),
        "{} missing: build the programs against MPICH first (scripts/test.sh does: \
         MPICC=mpicc.mpich cargo build --release -p mpi-apps --bins --target-dir target/mpich)",
        exe.display()
    );
    let rig = common::rig(if moved.is_some() { 4 } else { 2 });
    let mpiexec = mpich_script(
        &rig,
        ucx_tls,
        &format!("{} {STEPS} {SLEEP_MS} 4", exe.display()),
    );
    let bare = mpich_bare(&rig, &mpiexec, "CHECKSUM");
    let mut job = Job::launch(&rig, name, &mpiexec, &[]);
    job.wait_for("step 40\n");
    job.checkpoint();
    let before = job.processes().len();
    job.wait_for("step 70\n");
    job.kill();
    match moved {
        None => job.restart(&[]),
        Some(hosts) => {
            let f = rig.shared_dir().join(format!("hosts-{name}"));
            std::fs::write(&f, hosts).unwrap();
            job.restart(&["--hostfile", &f.display().to_string()]);
            job.wait_peers(before);
            let procs = job.processes();
            for h in hosts.lines() {
                assert_eq!(common::count(&procs, prog, h), 2, "{procs:?}");
            }
        }
    }
    mpich_finish(&mut job, "CHECKSUM", &bare);
}

/// rsmpi Jacobi under MPICH over TCP only (UCX's tcp transport between
/// every pair of ranks, also on one host).
#[test]
fn mpich_jacobi_over_tcp_across_two_hosts_restarts() {
    mpich_rsmpi("mpich-jacobi", "mpi_jacobi", "self,tcp", None);
}

/// The same job restarted on two other hosts (node2, node3: their /tmp
/// and /dev/shm never saw it).
#[test]
fn mpich_jacobi_over_tcp_moves_to_two_other_hosts() {
    mpich_rsmpi(
        "mpich-jacobi-moved",
        "mpi_jacobi",
        "self,tcp",
        Some("node2\nnode3\n"),
    );
}

/// rsmpi one-sided Put/Get with fences under MPICH (shared memory inside
/// a host, TCP between hosts).
#[test]
fn mpich_rma_across_two_hosts_restarts() {
    mpich_rsmpi("mpich-rma", "mpi_rma", "self,posix,tcp", None);
}

/// Periodic checkpoints (`dmtcp_launch -i 2`) and then a rank killed, as a
/// node failure would: the job dies as MPI jobs do (mpirun takes the other
/// ranks down), and the last complete checkpoint, found by the restart
/// script, restarts it to the bare run's checksum.
#[test]
fn jacobi_with_periodic_checkpoints_restarts_after_a_rank_is_killed() {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let rig = common::rig(2);
    let s = script_steps(&rig, "mpi_jacobi", "400");
    let want = bare(&rig, &s, &rig.shared_dir().join("bare-periodic"));
    let mut job = Job::launch(&rig, "periodic", &s, &["-i", "2"]);
    job.wait_peers(8);
    // Two periodic rounds done, and none under way (all running). Then
    // no more: a round that fell while the failing job tears itself down
    // (mpirun takes seconds to stop the other ranks) would image the
    // half-dead job (docs/mpi.md).
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let mut stopped = false;
    loop {
        let o = job.command(&["--json", "-s"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["generation"].as_u64().unwrap_or(0) >= 2 && v["running"] == true {
            if stopped {
                break;
            }
            assert!(job.command(&["-i", "0"]).status.success());
            stopped = true;
            continue;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second periodic checkpoint: {v}{}",
            job.diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rank = job
        .processes()
        .into_iter()
        .find(|(p, h, _)| p == "mpi_jacobi" && h == "node1")
        .unwrap_or_else(|| panic!("no rank on node1{}", job.diag()));
    let st = rig
        .node(1)
        .command("kill")
        .args(["-9", &rank.2.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The whole job goes (and its coordinator with the last process).
    job.wait_gone("after a rank was killed");
    assert!(
        checksum(&job.output()).is_none(),
        "the job finished before the rank was killed"
    );
    job.restart(&[]);
    job.wait_peers(8);
    finish_with(&mut job, &want);
}
