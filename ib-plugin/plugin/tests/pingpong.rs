//! Debian's verbs pingpong programs (ibverbs-utils) under `dmtcp_launch
//! --ib` on the software device: a server and a client process of one
//! computation, checkpointed in the middle of a long run, killed, the
//! device service killed and started again (every LID, QP number and key
//! changes), restarted; both must finish with their own data check (`-c`)
//! passing. Also a checkpoint the processes simply go on from.

mod common;
use common::*;

/// Runs server and client of `prog` with `args`, checkpoints once both are
/// connected, then either resumes (`restart` false) or kills everything,
/// restarts the device service and restarts from the images.
fn pingpong(name: &str, prog: &str, args: &[&str], iters: u32, restart: bool) {
    let mut j = Job::new(name);
    let n = iters.to_string();
    let mut a: Vec<&str> = vec!["-d", "softib0", "-c", "-n", &n];
    a.extend_from_slice(args);
    j.pair(prog, &a);
    if restart {
        j.cycle();
    } else {
        j.checkpoint();
    }
    j.wait_success();
    check_both(&j, name, iters, restart);
}

fn check_both(j: &Job, name: &str, iters: u32, restart: bool) {
    for side in ["server", "client"] {
        let (out, err) = (
            j.read(&format!("{side}.out")),
            j.read(&format!("{side}.err")),
        );
        check_pingpong(&out, &err, iters, &format!("{name} {side}"));
        if restart {
            check_ids_changed(&err, &format!("{name} {side}"));
        }
    }
}

/// Three checkpoints in one run: the program goes on from the first, is
/// restarted from the second and again from the third (on a third
/// device): the ids it holds are still the first run's.
#[test]
fn rc_pingpong_three_checkpoints() {
    let mut j = Job::new("rc-three");
    j.pair(
        "ibv_rc_pingpong",
        &["-d", "softib0", "-c", "-e", "-n", "150000"],
    );
    j.checkpoint();
    j.cycle();
    j.wait_running(2);
    j.cycle();
    j.wait_success();
    check_both(&j, "rc-three", 150_000, true);
    for side in ["server.err", "client.err"] {
        let n = j
            .read(side)
            .lines()
            .filter(|l| l.contains("publish QP"))
            .count();
        assert_eq!(n, 2, "{side}: expected two restarts");
    }
}

#[test]
fn rc_pingpong_restart_events() {
    pingpong("rc-ev", "ibv_rc_pingpong", &["-e"], 100_000, true);
}

#[test]
fn rc_pingpong_restart_polling() {
    pingpong("rc-poll", "ibv_rc_pingpong", &[], 100_000, true);
}

#[test]
fn rc_pingpong_resume() {
    pingpong("rc-resume", "ibv_rc_pingpong", &["-e"], 30_000, false);
}

#[test]
fn ud_pingpong_restart_events() {
    pingpong("ud-ev", "ibv_ud_pingpong", &["-e"], 100_000, true);
}

#[test]
fn uc_pingpong_restart_events() {
    pingpong("uc-ev", "ibv_uc_pingpong", &["-e"], 100_000, true);
}

#[test]
fn srq_pingpong_restart_events() {
    pingpong("srq-ev", "ibv_srq_pingpong", &["-e"], 100_000, true);
}

#[test]
fn srq_pingpong_restart_polling() {
    pingpong("srq-poll", "ibv_srq_pingpong", &[], 100_000, true);
}

/// Server and client on two nodes of the test rig, each node with its own
/// device service (both restarted): LIDs differ between the nodes and
/// change at the restart; each process is restarted on its own node.
#[test]
fn rc_pingpong_two_nodes_restart() {
    let mut j = Job::nodes("rc-nodes", 2);
    j.pair(
        "ibv_rc_pingpong",
        &["-d", "softib0", "-c", "-e", "-n", "50000"],
    );
    j.cycle();
    j.wait_success();
    check_both(&j, "rc-nodes", 50_000, true);
}

/// Forked checkpointing (`--forked-ckpt`) under the verbs plugin: the
/// queues are drained before the fork, the program goes on while a child
/// writes its image, and the generation it wrote restarts (on a new device
/// service) to the end of the run with the data check passing. The first
/// checkpoint is gone on from, the second restarted from.
fn forked(name: &str, prog: &str, iters: u32) {
    let mut j = Job::new(name);
    j.launch_opts = vec!["--forked-ckpt".into()];
    // The library's notes go to log files there.
    let logs = j.dir.join("logs");
    j.launch_env = vec![
        ("DMTCP_LOG".into(), "info".into()),
        ("DMTCP_TMPDIR".into(), logs.display().to_string()),
    ];
    let n = iters.to_string();
    j.pair(prog, &["-d", "softib0", "-c", "-e", "-n", &n]);
    j.checkpoint();
    j.wait_running(2);
    j.cycle();
    j.wait_success();
    check_both(&j, name, iters, true);
    for side in ["server.err", "client.err"] {
        let err = j.read(side);
        assert!(!err.contains("not possible here"), "{side}:\n{err}");
    }
    // Both processes wrote both their images by a forked writer.
    let mut forked = 0;
    for f in walk(&logs) {
        let log = std::fs::read_to_string(&f).unwrap_or_default();
        forked += log
            .lines()
            .filter(|l| l.contains("image written by forked writer"))
            .count();
    }
    assert_eq!(forked, 4, "not every image forked{}", j.diag());
}

/// The files under `d`, at any depth.
fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn rc_pingpong_forked_checkpoints() {
    forked("rc-forked", "ibv_rc_pingpong", 150_000);
}

#[test]
fn srq_pingpong_forked_checkpoints() {
    forked("srq-forked", "ibv_srq_pingpong", 150_000);
}
