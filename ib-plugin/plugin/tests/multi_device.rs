//! Several HCAs in one process: `tests/c/multi_dev.c` opens two (or three)
//! devices of the service, makes RC pairs on each device and between
//! devices, and moves checked data (RDMA WRITE + SEND) on all of them. It
//! is checkpointed in the middle of the traffic, killed, the service is
//! killed and started again (every device's LID, QP numbers and keys
//! change) and the process restarted: every pair must go on, and the
//! program checks that each receive comes from the LID of the sender's own
//! device and that each context still names its device.

mod common;
use common::*;

fn multi_device(name: &str, ndev: u32, iters: u32) {
    let mut j = Job::with_devices(name, ndev);
    let prog = compile_c(&j, "multi_dev");
    j.launch("prog", &prog, &[&ndev.to_string(), &iters.to_string()]);
    j.wait_out("prog", "progress 2000\n");
    j.cycle();
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    assert!(
        out.contains(&format!(
            "ok {ndev} devices, {} pairs, {iters} iterations",
            2 * ndev
        )),
        "{out}\n{err}"
    );
    assert!(!out.contains("FAILED"), "{out}\n{err}");
    check_ids_changed(&err, name);
    // Each device's LID was published with its new value: one per device.
    let lids = err.lines().filter(|l| l.contains("publish LID")).count();
    assert_eq!(lids, ndev as usize, "{err}");
    // The restart happened in the middle: progress lines before and after.
    let last = out
        .lines()
        .filter_map(|l| l.strip_prefix("progress "))
        .filter_map(|n| n.parse::<u32>().ok())
        .max();
    assert_eq!(last, Some(iters - iters % 500), "{out}");
}

#[test]
fn two_devices_restart_mid_traffic() {
    multi_device("multi-dev2", 2, 60_000);
}
