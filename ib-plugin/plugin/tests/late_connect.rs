//! Peers that first talk after the restart, with nothing but the ids of the
//! first run (what OpenMPI's udcm does for ranks that had not talked before
//! the checkpoint): `tests/c/late_connect.c` has two processes exchange
//! their LIDs, UD and RC QP numbers and rkeys, connect one RC QP only on
//! one side (the other stays in INIT: a connection half made) and move no
//! message before the checkpoint. After the service restart (every id new)
//! and the restart: a UD send through an AH created after the restart to
//! the peer's old LID and QP number (the completion must name the sender's
//! old ids), the half-made RC connection completed with the peer's old QP
//! number, and RDMA WRITEs both ways with the peers' old rkeys (on a QP
//! connected after the restart and on one reconnected by the restart).
//! None of these ids was looked up in a verb: the plugin read every
//! process's table at the restart. Before that, the datagram was lost.

mod common;
use common::*;

#[test]
fn peers_first_talk_after_the_restart() {
    let mut j = Job::new("late-connect");
    let prog = compile_c(&j, "late_connect");
    j.launch("prog", &prog, &[]);
    j.wait_out("prog", "A ready\n");
    j.wait_out("prog", "B ready\n");
    j.cycle();
    j.wait_running(2);
    std::fs::write(j.dir.join("go"), b"").unwrap();
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    for want in ["ud ok", "rdma from B ok", "rdma from A ok"] {
        assert!(out.contains(want), "no '{want}':\n{out}\n{err}");
    }
    assert!(!out.contains("FAILED"), "{out}\n{err}");
    check_ids_changed(&err, "late connect");
    // The half-made connection was published for its peer to complete.
    assert!(
        err.lines()
            .any(|l| l.contains("tables half:") && l.contains(": 1 values")),
        "{err}"
    );
}
