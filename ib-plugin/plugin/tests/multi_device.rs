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

fn multi_device(name: &str, ndev: u32, iters: u32, service_env: &[(&str, &str)]) -> String {
    let mut j = Job::with_devices_env(name, ndev, service_env);
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
    out
}

#[test]
fn two_devices_restart_mid_traffic() {
    multi_device("multi-dev2", 2, 60_000, &[]);
}

/// The service numbers each device's rkeys on its own, in order, as mlx5
/// does (`SOFTIB_RKEYS=per-device`): the two devices hand out equal rkeys,
/// and (one MR deregistered before the checkpoint) after the restart the
/// MRs behind an equal rkey get different new ones. The plugin translates
/// an RDMA WRITE's rkey with the table of the device of the QP's peer
/// (its RTR destination LID); with one table per process (before), an
/// equal rkey took the other device's new key and the writes failed with
/// remote access errors.
#[test]
fn two_devices_with_equal_rkeys_restart_mid_traffic() {
    let out = multi_device(
        "multi-dev2-rkeys",
        2,
        60_000,
        &[("SOFTIB_RKEYS", "per-device")],
    );
    let shared: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("rkeys shared by two devices: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rkey count:\n{out}"));
    assert!(shared > 0, "the devices shared no rkey:\n{out}");
}
