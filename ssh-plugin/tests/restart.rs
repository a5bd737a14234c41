//! Checkpoint, kill and restart of jobs that span hosts over ssh (real
//! sshd on a testrig rig); each result is compared with an uninterrupted
//! run of the same script.

mod common;

use common::Job;

/// node0 runs `ssh node1 counter`; checkpointed mid-run, killed on both
/// hosts, restarted by the generated script: the output is the
/// uninterrupted sequence, no line lost or repeated.
#[test]
fn remote_counter_survives_restart() {
    let rig = common::rig(2);
    let counter = common::compile(&rig, "counter", &[]);
    let script = format!(
        "{} node1 {} line 400 10; echo rc=$?",
        common::ssh(&rig),
        counter.display()
    );
    let bare = common::bare(&rig, 0, &script);
    assert!(bare.ends_with("line 400\nrc=0\n"), "bare run: {bare}");

    let mut job = Job::launch(&rig, "counter", &script, &[]);
    job.wait_for("line 100\n");
    // bash, dmtcp_ssh on node0; dmtcp_sshd and the counter on node1.
    job.wait_peers(4);
    let procs = job.processes();
    let on = |prog: &str, host: &str| {
        procs
            .iter()
            .any(|(p, h, pid)| p == prog && h == host && *pid > 0)
    };
    assert!(
        on("dmtcp_ssh", "node0") && on("dmtcp_sshd", "node1") && on("counter", "node1"),
        "{procs:?}"
    );
    job.checkpoint();
    job.wait_for("line 150\n");
    job.kill();
    job.restart(&[]);
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// 200 MB up (`gen | ssh node1 md5sum`) and 200 MB down (`ssh node1 gen |
/// md5sum`), each checkpointed half-way (the generator waits at a gate
/// file until the checkpoint is taken) and again while streaming, killed
/// and restarted: the checksums equal the uninterrupted run's.
#[test]
fn streams_both_ways_survive_restart() {
    let rig = common::rig(2);
    let gen = common::compile(&rig, "gen", &[]).display().to_string();
    let ssh = common::ssh(&rig);
    let gates = rig.shared_dir().join("gates");
    let _ = std::fs::remove_dir_all(&gates);
    std::fs::create_dir_all(&gates).unwrap();
    let script = |g: &str| {
        format!(
            "{{ {gen} up 200000000 {g}/up | {ssh} node1 md5sum; echo rc=$?; \
             {ssh} node1 '{gen} down 200000000 {g}/down 3>&2' | md5sum; echo rc=$?; }} 3>&1 2>&1"
        )
    };
    let open = rig.shared_dir().join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::write(open.join("up"), "").unwrap();
    std::fs::write(open.join("down"), "").unwrap();
    let bare = common::bare(&rig, 0, &script(&open.display().to_string()));
    assert_eq!(bare.matches("rc=0\n").count(), 2, "bare run: {bare}");
    assert!(
        bare.starts_with("up half\nup sent\n") && bare.contains("down half\ndown sent\n"),
        "bare run: {bare}"
    );
    assert_eq!(
        bare.lines().filter(|l| l.ends_with("  -")).count(),
        2,
        "bare run: {bare}"
    );

    let mut job = Job::launch(&rig, "streams", &script(&gates.display().to_string()), &[]);
    for dir in ["up", "down"] {
        job.wait_for(&format!("{dir} half\n"));
        assert!(
            !gates.join(dir).exists() && !job.output().contains(&format!("{dir} sent\n")),
            "{dir}: the generator passed its gate{}",
            job.diag()
        );
        job.checkpoint();
        // Open the gate and checkpoint again at once: the second half
        // is streaming, with bytes in the pipes and in the relays.
        std::fs::write(gates.join(dir), "").unwrap();
        job.checkpoint();
        let streaming = !job.output().contains(&format!("{dir} sent\n"));
        eprintln!(
            "{dir}: second checkpoint {} the stream ended",
            if streaming { "before" } else { "after" }
        );
        job.kill();
        job.restart(&[]);
    }
    job.wait_for("rc=0\n");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// stdin forwarded to a remote reader (checkpointed mid-stream, killed,
/// restarted), then exit codes: a remote `exit 7` gives 7, an unknown
/// host gives ssh's own message and 255; all as in the bare run.
#[test]
fn stdin_and_exit_codes_survive_restart() {
    let rig = common::rig(2);
    let counter = common::compile(&rig, "counter", &[]).display().to_string();
    let ssh = common::ssh(&rig);
    let script = format!(
        "{{ {counter} in 300 10 | {ssh} node1 'while read l; do echo \"got $l\"; done; echo eof'; echo rc=$?; \
         {ssh} node1 'echo to-stderr >&2; exit 7'; echo rc=$?; \
         {ssh} -n nosuchhost true; echo rc=$?; }} 2>&1"
    );
    let bare = common::bare(&rig, 0, &script);
    assert!(
        bare.contains("got in 300\neof\nrc=0\nto-stderr\nrc=7\n") && bare.ends_with("rc=255\n"),
        "bare run: {bare}"
    );
    assert!(bare.contains("nosuchhost"), "bare run: {bare}");

    let mut job = Job::launch(&rig, "stdin", &script, &[]);
    job.wait_for("got in 100\n");
    job.checkpoint();
    job.wait_for("got in 150\n");
    job.kill();
    job.restart(&[]);
    job.wait_for("rc=255\n");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// SIGTERM to dmtcp_ssh reaches the remote command (after a restart, over
/// the new ssh), whose handler's output and exit code come back.
#[test]
fn sigterm_is_forwarded_after_restart() {
    let rig = common::rig(2);
    let ssh = common::ssh(&rig);
    let gate = rig.shared_dir().join("term-gate");
    let script = format!(
        "{ssh} node1 'trap \"echo got TERM; exit 3\" TERM; echo ready; while :; do sleep 0.05; done' & p=$!; \
         until [ -e {gate} ]; do sleep 0.05; done; kill -TERM $p; wait $p; echo rc=$?",
        gate = gate.display()
    );
    let mut job = Job::launch(&rig, "term", &script, &[]);
    job.wait_for("ready\n");
    job.checkpoint();
    job.kill();
    job.restart(&[]);
    // The restarted relay is connected again: the coordinator counts the
    // same processes (bash, dmtcp_ssh; dmtcp_sshd and the remote bash).
    job.wait_peers_at_least(4);
    std::fs::write(&gate, "").unwrap();
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), "ready\ngot TERM\nrc=3\n", "{}", job.diag());
}

/// A job on node0 with its remote side on node1 is restarted on node2 and
/// node3 with `--hostfile` (old hosts in order onto the new ones): the
/// relay finds its peer on the new host and the output is the bare run's.
#[test]
fn restart_on_other_hosts_with_hostfile() {
    let rig = common::rig(4);
    let counter = common::compile(&rig, "counter", &[]);
    let script = format!(
        "{} node1 {} line 400 10; echo rc=$?",
        common::ssh(&rig),
        counter.display()
    );
    let bare = common::bare(&rig, 0, &script);
    let mut job = Job::launch(&rig, "hostfile", &script, &[]);
    job.wait_for("line 100\n");
    job.checkpoint();
    job.wait_for("line 150\n");
    job.kill();
    let hostfile = rig.shared_dir().join("hostfile");
    std::fs::write(&hostfile, "# new allocation\nnode2 slots=1\nnode3\n").unwrap();
    job.restart(&["--hostfile", &hostfile.display().to_string()]);
    job.wait_peers(4);
    let procs = job.processes();
    let on = |prog: &str, host: &str| common::count(&procs, prog, host) > 0;
    assert!(
        on("bash", "node2")
            && on("dmtcp_ssh", "node2")
            && on("dmtcp_sshd", "node3")
            && on("counter", "node3"),
        "{procs:?}"
    );
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// node0 → ssh node1 → ssh node2 counter (a remote process that sshes on
/// to a third node), through three checkpoint-kill-restart cycles.
#[test]
fn nested_ssh_survives_three_restarts() {
    let rig = common::rig(3);
    let counter = common::compile(&rig, "counter", &[]);
    let ssh = common::ssh(&rig);
    let script = format!(
        "{ssh} node1 \"{ssh} node2 {} line 500 10\"; echo rc=$?",
        counter.display()
    );
    let bare = common::bare(&rig, 0, &script);
    assert!(bare.ends_with("line 500\nrc=0\n"), "bare run: {bare}");
    let mut job = Job::launch(&rig, "nested", &script, &[]);
    for (ckpt_at, kill_at) in [(50, 80), (150, 180), (250, 280)] {
        job.wait_for(&format!("line {ckpt_at}\n"));
        // bash, dmtcp_ssh (node0); dmtcp_sshd, bash, dmtcp_ssh (node1); dmtcp_sshd, counter (node2)
        job.wait_peers_at_least(6);
        job.checkpoint();
        job.wait_for(&format!("line {kill_at}\n"));
        job.kill();
        job.restart(&[]);
    }
    job.wait_peers_at_least(6);
    let procs = job.processes();
    assert!(
        procs.iter().any(|(p, h, _)| p == "counter" && h == "node2"),
        "{procs:?}"
    );
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// `mpirun` of the ring program, 2 ranks on node0 and 2 on node1 (TCP
/// between ranks), and its bare run's output.
fn openmpi_ring(rig: &testrig::Rig) -> (String, String) {
    let prog = common::compile(rig, "mpi_ring", &["mpi"]);
    let hostfile = rig.shared_dir().join("mpi-hosts");
    std::fs::write(&hostfile, "node0 slots=2\nnode1 slots=2\n").unwrap();
    let script = format!(
        "mpirun --allow-run-as-root --hostfile {} -np 4 --mca plm_rsh_agent '{}' --mca btl tcp,self \
         --mca btl_tcp_if_include {net} --mca oob_tcp_if_include {net} {} 400",
        hostfile.display(),
        common::ssh(rig),
        prog.display(),
        net = rig.subnet()
    );
    let bare = common::bare(rig, 0, &script);
    assert!(bare.contains("\nsize 4 checksum "), "bare run: {bare}");
    (script, bare)
}

/// OpenMPI across two hosts: `mpirun` (4 ranks on node0 and node1, its
/// remote orted started through `ssh -F cfg`, TCP between ranks) runs
/// under the checkpointer with the remote side in the computation, is
/// checkpointed twice mid-run (every process on both hosts writes an
/// image) and ends with the bare run's checksum.
#[test]
fn openmpi_job_across_two_hosts_is_checkpointed() {
    let rig = common::rig(2);
    let (script, bare) = openmpi_ring(&rig);
    let mut job = Job::launch(&rig, "openmpi", &script, &[]);
    job.wait_for("iter 100 ");
    // mpirun, dmtcp_ssh, 2 ranks (node0); dmtcp_sshd, orted, 2 ranks (node1)
    job.wait_peers(8);
    let procs = job.processes();
    let count = |prog: &str, host: &str| common::count(&procs, prog, host);
    assert!(
        count("orted", "node1") == 1
            && count("mpi_ring", "node1") == 2
            && count("mpi_ring", "node0") == 2,
        "{procs:?}"
    );
    job.checkpoint();
    assert_eq!(common::images(&job.ckpt).len(), 8, "{}", job.diag());
    job.wait_for("iter 200 ");
    job.checkpoint();
    job.wait_for("checksum");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// The same job checkpointed, killed on both hosts and restarted with the
/// restart script (one `dmtcp_restart` per host), twice: on the same two
/// hosts, then on two others (`--hostfile`) whose private /tmp and
/// /dev/shm never saw the job. The ranks' TCP connections across hosts are
/// re-made through the coordinator, the files OpenMPI mapped in its
/// session directory come back, and the job ends with the bare run's
/// checksum.
#[test]
fn openmpi_job_across_two_hosts_restarts() {
    let rig = common::rig(4);
    let (script, bare) = openmpi_ring(&rig);
    let mut job = Job::launch(&rig, "openmpi-restart", &script, &[]);
    job.wait_for("iter 100 ");
    job.wait_peers(8);
    job.checkpoint();
    job.kill();
    job.restart(&[]);
    job.wait_peers(8);
    job.wait_for("iter 200 ");
    job.checkpoint();
    job.kill();
    // Then onto two other hosts, whose /tmp never saw this job.
    let moved = rig.shared_dir().join("mpi-hosts-moved");
    std::fs::write(&moved, "node2\nnode3\n").unwrap();
    job.restart(&["--hostfile", &moved.display().to_string()]);
    job.wait_peers(8);
    let procs = job.processes();
    let count = |prog: &str, host: &str| common::count(&procs, prog, host);
    assert!(
        count("mpirun", "node2") == 1
            && count("mpi_ring", "node2") == 2
            && count("mpi_ring", "node3") == 2,
        "{procs:?}"
    );
    job.wait_for("checksum");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}

/// Two sessions to the same host at once, one started by Python's
/// subprocess (a vfork child execs ssh), across a restart: every line of
/// both comes once (the two streams interleave, so lines are compared
/// sorted).
#[test]
fn two_sessions_to_one_host_one_from_python() {
    let rig = common::rig(2);
    let counter = common::compile(&rig, "counter", &[]).display().to_string();
    let ssh = common::ssh(&rig);
    let cfg = rig.ssh_config().display().to_string();
    let script = format!(
        "python3 -c 'import subprocess; subprocess.run([\"ssh\", \"-F\", \"{cfg}\", \"node1\", \"{counter}\", \"py\", \"300\", \"10\"], check=True)' & \
         {ssh} node1 {counter} sh 300 10; wait $!; echo rc=$?"
    );
    let sorted = |s: &str| {
        let mut v: Vec<&str> = s.lines().collect();
        v.sort();
        v.join("\n")
    };
    let bare = common::bare(&rig, 0, &script);
    assert!(
        bare.contains("py 300\n") && bare.contains("sh 300\n") && bare.ends_with("rc=0\n"),
        "bare run: {bare}"
    );
    let mut job = Job::launch(&rig, "two", &script, &[]);
    job.wait_for("py 100\n");
    job.wait_for("sh 100\n");
    let procs = job.processes();
    assert_eq!(common::count(&procs, "dmtcp_sshd", "node1"), 2, "{procs:?}");
    job.checkpoint();
    job.wait_for("py 150\n");
    job.kill();
    job.restart(&[]);
    job.wait_for("rc=");
    job.finish();
    let out = job.output();
    assert_eq!(sorted(&out), sorted(&bare), "{}", job.diag());
    assert!(out.ends_with("rc=0\n"), "{}", job.diag());
}

/// Checkpoints back to back, while data flows: a round's PRESUSPEND can
/// reach a relay before it ran again after the previous RESUME (this hung
/// the relay once); then a kill and a restart from the last one.
#[test]
fn back_to_back_checkpoints_while_streaming() {
    let rig = common::rig(2);
    let counter = common::compile(&rig, "counter", &[]);
    let script = format!(
        "{} node1 {} line 3000 1; echo rc=$?",
        common::ssh(&rig),
        counter.display()
    );
    let bare = common::bare(&rig, 0, &script);
    let mut job = Job::launch(&rig, "b2b", &script, &[]);
    job.wait_for("line 100\n");
    for _ in 0..8 {
        job.checkpoint();
    }
    job.kill();
    job.restart(&[]);
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}
