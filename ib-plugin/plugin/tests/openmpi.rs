//! OpenMPI (Debian's 4.1) over its openib BTL on the software device,
//! under `dmtcp_launch --ib`: 2 ranks on one node with `--mca btl
//! openib,self` only (the ranks can reach each other only through the
//! device), checkpointed mid-run, killed, the device service restarted
//! (every id new) and restarted; the program checks every byte it receives
//! and its checksum must equal a run over shared memory. OpenMPI's default
//! receive queues include shared receive queues, created before the
//! buffers posted to them are registered (this found the restart
//! re-posting an SRQ's receives before its MRs were registered again).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Ping-pong rounds per message size: a run of a few seconds.
const ROUNDS: &str = "40";

#[test]
fn openmpi_over_openib_restarts_with_new_ids() {
    let mut j = Job::new("openmpi-openib");
    let prog = program(&j.dir);
    let p = prog.display().to_string();
    // 4 ranks on this node, ob1 (the point-to-point layer openib serves).
    let base = |btl: &str| -> Vec<String> {
        [
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
            btl,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let reference = Command::new("mpirun")
        .args(base("self,vader"))
        .args([&p, "4"])
        .env("MPI_RING_TIMES", "1")
        .env("MPI_RING_ROUNDS", ROUNDS)
        .output()
        .unwrap();
    let reference = String::from_utf8_lossy(&reference.stdout).into_owned();
    let want = reference
        .lines()
        .find(|l| l.starts_with("mpi_ring: ok "))
        .unwrap_or_else(|| panic!("reference run: {reference}"))
        .to_string();
    let mut args = base("openib,self");
    for (k, v) in [
        // The software device (no vendor parameters, UD connection setup).
        ("btl_openib_allow_ib", "1"),
        ("btl_openib_cpc_include", "udcm"),
        ("btl_openib_warn_no_device_params_found", "0"),
        // Spinning ranks yield, so the service gets the CPU.
        ("mpi_yield_when_idle", "1"),
    ] {
        args.extend(["--mca".to_string(), k.to_string(), v.to_string()]);
    }
    for e in [
        "MPI_RING_TIMES=1".to_string(),
        format!("MPI_RING_ROUNDS={ROUNDS}"),
    ] {
        args.extend(["-x".to_string(), e]);
    }
    args.extend([p.clone(), "4".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    j.launch("mpirun", "mpirun", &args);
    // In the middle of the large messages (rendezvous over RDMA).
    j.wait_out("mpirun", "mpi_ring: size 65537");
    j.cycle();
    j.wait_success();
    let out = j.read("mpirun.out");
    assert!(out.contains(&want), "want {want}\n{}", j.diag());
    check_ids_changed(&j.read("mpirun.err"), "openmpi over openib");
}
