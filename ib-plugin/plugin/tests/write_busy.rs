//! A checkpoint while RDMA WRITEs target a process that is busy computing:
//! `tests/c/write_busy.c`'s writer writes sequence-numbered blocks into the
//! target's memory (bursts of 12 writes, one signaled: each leaves an
//! unsignaled tail that the plugin's fence covers), the target never calls a
//! verb and never looks at the blocks until the writer says, after every
//! completion, that it is done. Checkpointed in the middle of the writes,
//! killed, the device service restarted (new rkeys, QP numbers, LIDs),
//! restarted: the target then finds every block as written, so no write
//! the writer saw acknowledged before the checkpoint is missing from the
//! target's image, and the writes after the restart land with the new rkey.

mod common;
use common::*;

#[test]
fn writes_into_a_computing_target_survive_a_restart() {
    let mut j = Job::new("write-busy");
    let prog = compile_c(&j, "write_busy");
    let blocks = "100000";
    let port = free_port();
    let t = j.launch("target", &prog, &["target", &port.to_string(), blocks]);
    j.wait_listening(t, port);
    j.launch(
        "writer",
        &prog,
        &["writer", "127.0.0.1", &port.to_string(), blocks],
    );
    j.wait_out("target", "target: computing");
    j.wait_out("writer", "progress 5000\n");
    j.checkpoint();
    // Still writing when the checkpoint was over.
    let at_ckpt = j.read("writer.out");
    assert!(
        !at_ckpt.contains("writer: all"),
        "the checkpoint came too late:\n{at_ckpt}"
    );
    j.kill();
    j.restart_service();
    j.restart();
    j.wait_success();
    let (tout, wout) = (j.read("target.out"), j.read("writer.out"));
    assert!(
        tout.contains(&format!("target: ok {blocks} blocks checked")),
        "{}",
        j.diag()
    );
    assert!(
        wout.contains(&format!("writer: ok {blocks} writes acknowledged")),
        "{}",
        j.diag()
    );
    assert!(
        wout.contains("progress 95000\n"),
        "the writer did not go on after the restart:\n{wout}"
    );
    for side in ["target", "writer"] {
        let err = j.read(&format!("{side}.err"));
        check_ids_changed(&err, side);
        assert!(
            !err.contains("unsignaled sends after its last signaled"),
            "{side}: a tail was not fenced:\n{err}"
        );
    }
}
