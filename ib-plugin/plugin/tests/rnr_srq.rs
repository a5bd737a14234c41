//! RC SENDs that wait for a receive (RNR) when the checkpoint comes, into
//! QPs that take their receives from one shared SRQ, empty at the
//! checkpoint (OpenMPI's openib receives through SRQs). The receiver's
//! drain publishes its QPs whose SRQ has no receive posted, with the
//! receives each QP completed; the sender's drain sees that its oldest
//! outstanding send on each QP is one the peer QP had not received and
//! stops waiting at once (before, it waited the full 10 s: only QPs
//! without an SRQ were published). `tests/c/rnr_srq.c`: two QPs on one
//! SRQ, one of which had received a message before; after the checkpoint
//! (a restart on a new device service, or a resume) the receiver posts
//! receives and each QP must get exactly its waiting message, once, then
//! the sender's last message.

mod common;
use common::*;

/// Runs `rnr_srq`, checkpoints while both sends wait, then restarts (or
/// resumes), lets the receiver post its receives and checks the result.
fn rnr_srq(name: &str, restart: bool) {
    let mut j = Job::new(name);
    let prog = compile_c(&j, "rnr_srq");
    j.launch("prog", &prog, &[]);
    j.wait_out("prog", "not receiving\n");
    if restart {
        j.cycle();
        j.wait_running(2);
    } else {
        j.checkpoint();
    }
    std::fs::write(j.dir.join("go"), b"").unwrap();
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    for l in err.lines().filter(|l| l.contains("drain took")) {
        eprintln!("{name}: {l}");
    }
    assert!(out.contains("received ok"), "{out}\n{err}");
    assert!(out.contains("sent ok"), "{out}\n{err}");
    assert!(
        !err.contains("still has sends in flight after 10 s"),
        "the drain waited its 10 s:\n{err}"
    );
    assert_eq!(
        err.matches("waits for a receive its peer has not posted")
            .count(),
        2,
        "the drain did not see both sends blocked:\n{err}"
    );
    let replayed = err
        .matches("1 sends had not run at the checkpoint; posted again")
        .count();
    if restart {
        assert_eq!(replayed, 2, "each QP's waiting send, posted again:\n{err}");
        check_ids_changed(&err, name);
    } else {
        assert_eq!(replayed, 0, "a resume posts nothing again:\n{err}");
    }
}

#[test]
fn sends_waiting_on_an_empty_srq_survive_a_restart() {
    rnr_srq("rnr-srq", true);
}

#[test]
fn sends_waiting_on_an_empty_srq_survive_a_resume() {
    rnr_srq("rnr-srq-resume", false);
}
