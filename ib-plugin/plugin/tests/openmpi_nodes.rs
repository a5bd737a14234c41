//! OpenMPI (Debian's 4.1) over its openib BTL only, 4 ranks on two nodes
//! of the test rig (2 on each; mpirun starts the remote orted over ssh,
//! which the ssh plugin carries into the computation), each node with its
//! own softib service, all under `dmtcp_launch --ib`. Checkpointed in the
//! middle of the ping-pong, killed on both nodes, both services killed and
//! started again (every LID, QP number and key new), restarted with the
//! generated restart script (one `dmtcp_restart` per node). The program
//! checks every byte it receives; its checksum must equal a run over
//! shared memory. The harness is the ssh plugin's (ssh-plugin/tests/common).

#[path = "../../../ssh-plugin/tests/common/mod.rs"]
mod sshjob;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ping-pong rounds per message size: a run of a few seconds.
const ROUNDS: &str = "30";

fn program(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softib/tests/c/mpi_ring.c");
    let out = dir.join("mpi_ring");
    let st = Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("mpicc");
    assert!(st.success());
    out
}

/// The device services of the rig's nodes, started by the test (so it
/// can kill them between the checkpoint and the restart).
struct Services<'a> {
    rig: &'a testrig::Rig,
    fabric: PathBuf,
    log: PathBuf,
    procs: Vec<Option<Child>>,
}

impl Services<'_> {
    fn status(&self, k: usize) -> Option<String> {
        let o = self
            .rig
            .node(k)
            .command(sshjob::bin_dir().join("softib"))
            .arg("status")
            .env("SOFTIB_FABRIC", &self.fabric)
            .env_remove("SOFTIB_DIR")
            .env_remove("SOFTIB_SOCKET")
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&o.stdout);
        let l = s.lines().find(|l| l.starts_with("softib0: lid"))?;
        o.status.success().then(|| l.to_string())
    }

    fn start(&mut self, k: usize) {
        let c = self
            .rig
            .node(k)
            .command(sshjob::bin_dir().join("softib"))
            .args(["daemon", "--idle-exit", "0"])
            .env("SOFTIB_FABRIC", &self.fabric)
            .env_remove("SOFTIB_DIR")
            .env_remove("SOFTIB_SOCKET")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .expect("softib daemon");
        self.procs[k] = Some(c);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status(k).is_none() {
            assert!(
                Instant::now() < deadline,
                "softib service of node{k} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every node's service and starts a new one; the devices change.
    fn restart(&mut self) {
        for k in 0..self.procs.len() {
            let before = self.status(k);
            if let Some(mut p) = self.procs[k].take() {
                // SAFETY: SIGTERM to the service this test started.
                unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
                p.wait().unwrap();
            }
            self.start(k);
            assert_ne!(before, self.status(k), "node{k}: the same device ids");
        }
    }
}

impl Drop for Services<'_> {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The rig's softib services started, and `prog ARGS` launched under
/// `dmtcp_launch --ib` as `mpirun` with 4 ranks, 2 on each of node0 and
/// node1, over OpenMPI's openib BTL only (and `self`); `env` names the
/// variables mpirun passes to the ranks (`-x`), set in `exports`.
fn launch_over_openib<'a>(
    rig: &'a testrig::Rig,
    name: &str,
    exports: &str,
    env: &[&str],
    prog_and_args: &str,
) -> (Services<'a>, sshjob::Job<'a>) {
    let dir = rig.shared_dir();
    let fabric = dir.join("fabric");
    std::fs::create_dir_all(&fabric).unwrap();
    let mut services = Services {
        rig,
        fabric: fabric.clone(),
        log: dir.join("softibd.err"),
        procs: vec![None, None],
    };
    services.start(0);
    services.start(1);

    let hostfile = dir.join("mpi-hosts");
    std::fs::write(&hostfile, "node0 slots=2\nnode1 slots=2\n").unwrap();
    let xs: String = env.iter().map(|v| format!("-x {v} ")).collect();
    let script = format!(
        "export SOFTIB_FABRIC={fabric} DMTCP_IB_DEBUG=1 {exports}; \
         mpirun --allow-run-as-root --oversubscribe --bind-to none --hostfile {hosts} -np 4 \
         --mca plm_rsh_agent '{ssh}' --mca oob_tcp_if_include {net} \
         --mca pml ob1 --mca btl openib,self --mca btl_openib_allow_ib 1 \
         --mca btl_openib_cpc_include udcm --mca btl_openib_warn_no_device_params_found 0 \
         --mca mpi_yield_when_idle 1 \
         -x SOFTIB_FABRIC -x DMTCP_IB_DEBUG {xs}\
         {softib} exec -- {prog_and_args}",
        fabric = fabric.display(),
        hosts = hostfile.display(),
        ssh = sshjob::ssh(rig),
        net = rig.subnet(),
        softib = sshjob::bin_dir().join("softib").display(),
    );
    let job = sshjob::Job::launch(rig, name, &script, &["--ib"]);
    (services, job)
}

/// Every rank re-created its QPs with new numbers, on both nodes (the
/// plugin's debug lines in the job's stderr); that stderr.
fn qps_recreated(job: &sshjob::Job) -> String {
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    let published: Vec<&str> = err.lines().filter(|l| l.contains("publish QP")).collect();
    assert!(published.len() >= 4, "too few QPs re-created:\n{err}");
    for l in &published {
        let (v, r) = l.rsplit_once(" -> ").unwrap();
        let v = v.rsplit_once('/').unwrap().1;
        assert_ne!(v.trim(), r.trim(), "QP number unchanged: {l}");
    }
    let lids: std::collections::HashSet<&str> = err
        .lines()
        .filter_map(|l| l.split_once("publish LID ").map(|x| x.1))
        .collect();
    assert_eq!(lids.len(), 2, "one LID per node expected:\n{err}");
    err
}

#[test]
fn openmpi_openib_four_ranks_on_two_nodes_restart() {
    let rig = sshjob::rig(2);
    let dir = rig.shared_dir();
    let prog = program(&dir);
    let p = prog.display().to_string();
    let reference = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            "4",
            "--mca",
            "pml",
            "ob1",
            "--mca",
            "btl",
            "self,vader",
        ])
        .args([&p, "4"])
        .env("MPI_RING_ROUNDS", ROUNDS)
        .output()
        .unwrap();
    let reference = String::from_utf8_lossy(&reference.stdout).into_owned();
    let want = reference
        .lines()
        .find(|l| l.starts_with("mpi_ring: ok "))
        .unwrap_or_else(|| panic!("reference run: {reference}"))
        .to_string();

    let (mut services, mut job) = launch_over_openib(
        &rig,
        "openmpi-openib",
        &format!("MPI_RING_TIMES=1 MPI_RING_ROUNDS={ROUNDS}"),
        &["MPI_RING_TIMES", "MPI_RING_ROUNDS"],
        &format!("{p} 4"),
    );
    // In the middle of the large messages (rendezvous over RDMA).
    job.wait_for("mpi_ring: size 65537");
    // mpirun, dmtcp_ssh, 2 ranks on node0; dmtcp_sshd, orted, 2 ranks on node1
    job.wait_peers_at_least(7);
    job.checkpoint();
    assert!(
        !job.output().contains("mpi_ring: ok"),
        "the checkpoint came too late:\n{}",
        job.output()
    );
    job.kill();
    services.restart();
    job.restart(&[]);
    job.wait_for("mpi_ring: ok ");
    job.finish();
    let out = job.output();
    assert!(out.contains(&want), "want {want}\n{}", job.diag());
    let err = qps_recreated(&job);
    if std::env::var_os("IB_TEST_SHOW").is_some() {
        eprintln!("--- out.txt\n{out}\n--- err.txt\n{err}");
    }
}

/// The rsmpi Jacobi program of mpi-tests (halo exchange with
/// Isend/Irecv/Waitall and an Allreduce each step) over openib only,
/// 4 ranks on two nodes: checkpointed at step 40, killed with both softib
/// services (every id changes), restarted with the script; its checksum
/// must equal a bare shared-memory run's.
#[test]
fn rsmpi_jacobi_over_openib_on_two_nodes_restarts() {
    let exe = sshjob::bin_dir().join("mpi_jacobi");
    assert!(
        exe.exists(),
        "{} missing: build the workspace",
        exe.display()
    );
    let rig = sshjob::rig(2);
    let args = format!("{} 200 25 4", exe.display());
    let bare = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["-np", "4", "--mca", "btl", "self,vader"])
        .args(args.split(' '))
        .output()
        .unwrap();
    let bare = String::from_utf8_lossy(&bare.stdout).into_owned();
    let want = bare
        .lines()
        .find(|l| l.starts_with("CHECKSUM "))
        .unwrap_or_else(|| panic!("bare run: {bare}"))
        .to_string();
    let (mut services, mut job) = launch_over_openib(&rig, "jacobi-openib", "", &[], &args);
    job.wait_for("step 40\n");
    job.wait_peers_at_least(7);
    job.checkpoint();
    job.wait_for("step 70\n");
    job.kill();
    services.restart();
    job.restart(&[]);
    job.wait_for("CHECKSUM ");
    job.finish();
    let out = job.output();
    assert!(
        out.lines().any(|l| l == want),
        "want {want}\n{}",
        job.diag()
    );
    qps_recreated(&job);
}
