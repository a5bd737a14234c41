//! The Rust `ibverbs` program (ib-plugin/verbs-check, `ibv_rust_check`: two
//! RC QPs of one process connected through the device, every message
//! checked word by word) under `dmtcp_launch --ib`, checkpointed in the
//! middle of its messages, killed, the device service restarted (new LID,
//! GID, QP numbers, keys), restarted: it must finish with the checksum of
//! a run that was never interrupted. The crate learns its GID with
//! `ibv_query_gid_table` (verbs.h's `_ibv_query_gid_table`), which the
//! plugin virtualizes like `ibv_query_gid`.

mod common;
use common::*;

const MESSAGES: u64 = 300_000;
const WORDS: u64 = 64;

/// The checksum `ibv_rust_check` prints for MESSAGES messages of WORDS
/// words all received intact (its `pattern` and sum).
fn expected_checksum() -> u64 {
    let pattern = |m: u64, w: u64| {
        (m.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ w.wrapping_mul(0x0100_0000_01b3) ^ 0x5eed
    };
    let mut sum = 0u64;
    for m in 0..MESSAGES {
        for w in 0..WORDS {
            sum = sum.wrapping_add(pattern(m, w).rotate_left((w % 64) as u32));
        }
    }
    sum
}

#[test]
fn rust_ibverbs_program_restarts_mid_traffic() {
    let mut j = Job::new("rust-ibverbs");
    let prog = path_of(&bin_dir().join("ibv_rust_check"));
    j.launch(
        "prog",
        &prog,
        &[&MESSAGES.to_string(), &WORDS.to_string(), "10000"],
    );
    j.wait_out("prog", "progress 20000\n");
    // The GID the crate found (ibv_query_gid_table) is the device's: fe80::<GUID>.
    let guid = j
        .device_status(0)
        .and_then(|l| l.rsplit_once(" guid ").map(|x| x.1.trim().to_string()))
        .expect("softib status");
    let first = j.read("prog.out");
    assert!(
        first.contains(&format!(" gid fe80000000000000{guid}\n")),
        "the program's GID is not its device's (guid {guid}):\n{first}"
    );
    j.checkpoint();
    let at_ckpt = j.read("prog.out");
    assert!(
        !at_ckpt.contains("ok "),
        "the checkpoint came too late:\n{at_ckpt}"
    );
    j.kill();
    j.restart_service();
    j.restart();
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    let want = format!(
        "ok {MESSAGES} messages of {WORDS} words, checksum {:016x}",
        expected_checksum()
    );
    assert!(out.contains(&want), "want '{want}':\n{out}\n{err}");
    // It still sees the first run's GID (it asks once, at the start).
    assert!(
        out.contains(&format!(" gid fe80000000000000{guid}\n")),
        "{out}"
    );
    check_ids_changed(&err, "ibv_rust_check");
}
