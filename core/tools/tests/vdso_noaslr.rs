//! The vDSO proxy when this kernel's vDSO sits where the image needs room.
//!
//! Without address randomisation, the restorer's vDSO lands at the very
//! address the checkpointed program had its own: the range the proxy must
//! take. The restorer then moves the new vDSO/vvar to a free range clear of
//! the image. This test binary turns randomisation off for itself, and so
//! for every process it starts (`personality` is inherited), which is why
//! it is a test binary of its own.

mod common;
use common::*;

#[test]
fn vdso_proxy_moves_the_new_vdso_out_of_the_way() {
    // SAFETY: personality(0xffffffff) only queries; then sets one flag more.
    unsafe {
        let cur = libc::personality(0xffff_ffff);
        assert!(
            cur >= 0
                && libc::personality(
                    (cur as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong
                ) >= 0
        );
    }
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    assert!(
        bare.contains(
            "RESULT monotonic 0 realtime 0 gettimeofday 0 time 0 getcpu 0 getres 0 spinner 0"
        ),
        "bare run: {bare}"
    );
    let mut job = Job::new("vdso-noaslr").env("DMTCP_RESTORE_VDSO_PROXY", "1");
    job.launch(&[p], &[]);
    for (mark, after) in [("step 10 ok", "step 14 ok"), ("step 30 ok", "step 34 ok")] {
        job.cycle(mark, after);
        // The restorer's note (restart.err is made afresh by each restart).
        let deadline = std::time::Instant::now() + TIMEOUT;
        let note = loop {
            let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default();
            if let Some(l) = err
                .lines()
                .find(|l| l.starts_with("dmtcp_restorer: vDSO proxy at 0x"))
            {
                break l.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the restorer built no vDSO proxy:\n{err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            note.contains("(moved out of the image's way)"),
            "the new vDSO was not moved: {note}"
        );
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
    let report = std::fs::read_to_string(job.dir.join("vdso-report.txt")).unwrap_or_default();
    assert_eq!(report.trim(), "trampoline\nauxv current");
}
