//! An RC SEND that waits for a receive (RNR) when the checkpoint comes:
//! the receiver's threads are suspended and cannot post one, so the drain
//! cannot see it complete. The receiver's drain publishes that its QP has
//! no receive posted (and how many it completed); the sender's drain then
//! sees that its oldest outstanding send is one the peer had not received
//! and stops waiting for it at once (it waited 10 s before). The plugin logs
//! each RC send until a completion covers it and, at the restart, posts
//! again the sends from the first one that consumes a receive the peer
//! had not completed. `tests/c/rnr_send.c` makes the case deterministic:
//! the receiver posts its receive only once the test creates the file
//! `go`, after the restart; the message must arrive, once, and the send
//! complete. (Before the send log, the send was lost: both sides timed
//! out. The same case made perftest's send_bw_restart fail 2 runs in 10
//! under load.)

mod common;
use common::*;

#[test]
fn send_waiting_for_a_receive_survives_a_restart() {
    let mut j = Job::new("rnr-send");
    let prog = compile_c(&j, "rnr_send");
    j.launch("prog", &prog, &[]);
    j.wait_out("prog", "not receiving\n");
    j.cycle();
    j.wait_running(2);
    std::fs::write(j.dir.join("go"), b"").unwrap();
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    assert!(out.contains("received ok"), "{out}\n{err}");
    assert!(out.contains("sent ok"), "{out}\n{err}");
    assert!(
        err.contains("1 sends had not run at the checkpoint; posted again"),
        "{err}"
    );
    assert!(
        err.contains("waits for a receive its peer has not posted"),
        "the drain did not see the send blocked:\n{err}"
    );
    assert!(
        !err.contains("still has sends in flight after 10 s"),
        "the drain waited its 10 s:\n{err}"
    );
}
