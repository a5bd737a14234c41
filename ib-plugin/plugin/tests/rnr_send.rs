//! An RC SEND that waits for a receive (RNR) when the checkpoint comes:
//! the receiver's threads are suspended and cannot post one, so the drain
//! cannot see it complete (it waits 10 s, then goes on). The plugin logs
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
}
