//! perftest (`ib_write_bw`, `ib_read_bw`, `ib_send_bw`, `ib_atomic_bw`)
//! under `dmtcp_launch --ib`: checkpointed in the middle of an `-n` run,
//! killed, the device service restarted (all ids new), restarted; both
//! sides must finish (exit 0) and report the full iteration count, and the
//! checkpoint must not have warned of sends a restart may lose (perftest
//! signals only every 100th: the others are waited for with a fence; an
//! ib_send_bw SEND waiting for a receive is posted again at the restart). The RDMA and atomic
//! tests need the peer's rkey translated after the restart.

mod common;
use common::*;

fn perftest(name: &str, prog: &str, args: &[&str], iters: u32) {
    let mut j = Job::new(name);
    let n = iters.to_string();
    let mut a: Vec<&str> = vec!["-d", "softib0", "-F", "-n", &n];
    a.extend_from_slice(args);
    j.pair(prog, &a);
    j.cycle();
    j.wait_success();
    for side in ["server", "client"] {
        let (out, err) = (
            j.read(&format!("{side}.out")),
            j.read(&format!("{side}.err")),
        );
        let done = out.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5 && f[0].parse::<u64>().is_ok() && f[1] == n
        });
        assert!(
            done,
            "{name} {side}: no result line for {iters} iterations:\n{out}\n{err}"
        );
        assert!(
            !err.contains("rror") && !out.contains("rror"),
            "{name} {side}: errors:\n{out}\n{err}"
        );
        // The drain's warnings of sends a restart may have lost (perftest
        // signals every 100th send only). Sends waiting for a receive are
        // said with `dmtcp_ib: drain:` and posted again at the restart.
        assert!(
            !err.contains("dmtcp_ib: checkpoint:"),
            "{name} {side}: the checkpoint could not drain every send:\n{err}"
        );
        check_ids_changed(&err, &format!("{name} {side}"));
    }
}

#[test]
fn write_bw_restart() {
    perftest("write-bw", "ib_write_bw", &["-s", "4096"], 400_000);
}

#[test]
fn read_bw_restart() {
    perftest("read-bw", "ib_read_bw", &["-s", "4096"], 400_000);
}

#[test]
fn send_bw_restart() {
    perftest("send-bw", "ib_send_bw", &["-s", "4096"], 400_000);
}

#[test]
fn atomic_bw_restart() {
    perftest("atomic-bw", "ib_atomic_bw", &[], 400_000);
}
