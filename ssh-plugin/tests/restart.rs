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
    let script = format!("{} node1 {} line 400 10; echo rc=$?", common::ssh(&rig), counter.display());
    let bare = common::bare(&rig, 0, &script);
    assert!(bare.ends_with("line 400\nrc=0\n"), "bare run: {bare}");

    let mut job = Job::launch(&rig, "counter", &script, &[]);
    job.wait_for("line 100\n");
    // bash, dmtcp_ssh on node0; dmtcp_sshd and the counter on node1.
    job.wait_peers(4);
    let procs = job.processes();
    let on = |prog: &str, host: &str| procs.iter().any(|(p, h, pid)| p == prog && h == host && *pid > 0);
    assert!(on("dmtcp_ssh", "node0") && on("dmtcp_sshd", "node1") && on("counter", "node1"), "{procs:?}");
    job.checkpoint();
    job.wait_for("line 150\n");
    job.kill();
    job.restart(&[]);
    job.wait_for("rc=");
    job.finish();
    assert_eq!(job.output(), bare, "{}", job.diag());
}
