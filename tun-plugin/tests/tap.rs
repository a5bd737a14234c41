//! Two programs on tap devices on a Linux bridge (`tests/c/tap_echo.c`),
//! checkpointed and restarted together in a fresh network namespace: the
//! taps come back with their names, hardware addresses and place on the
//! bridge, and the numbered frames go on where they were (the sender
//! sends each number again until its echo comes: only frames in flight
//! are lost, none is skipped or reordered).

mod common;
use common::*;

fn link(j: &Job, dev: &str) -> String {
    j.sh(&format!("ip -d link show {dev}"))
}

fn acked(j: &Job) -> i64 {
    last_num(&j.read("send.out"), "acked").unwrap_or(-1)
}

fn wait_acked(j: &mut Job, at_least: i64) {
    j.wait_for("send.out", &format!("{at_least} frames acked"), |o| {
        last_num(o, "acked").is_some_and(|n| n >= at_least)
    });
}

fn check_tap(j: &Job, dev: &str, mac: &str) {
    let l = link(j, dev);
    assert!(l.contains("master dtbr"), "{dev} not on the bridge:\n{l}");
    assert!(l.contains(&format!("link/ether {mac}")), "{dev}:\n{l}");
    assert!(l.contains("tun type tap"), "{dev}:\n{l}");
    assert!(l.contains(",UP"), "{dev} is down:\n{l}");
}

#[test]
fn two_tap_programs_on_a_bridge_survive_restart() {
    let mut j = Job::new("bridge");
    let bin = compile_c(&j, "tap_echo");
    j.sh("ip link add dtbr type bridge && ip link set dtbr up");
    j.launch("echo", &bin, &["dtap1", "echo"]);
    j.launch("send", &bin, &["dtap0", "send"]);
    j.wait_in("echo.out", "ready dtap1");
    j.wait_in("send.out", "ready dtap0");
    j.sh("ip link set dtap0 master dtbr && ip link set dtap1 master dtbr");
    j.wait_running(2);
    wait_acked(&mut j, 200);
    j.checkpoint();
    let a = acked(&j);
    wait_acked(&mut j, a + 100);
    j.checkpoint();
    check_tap(&j, "dtap0", "fe:00:00:00:00:01");
    check_tap(&j, "dtap1", "fe:00:00:00:00:02");
    let at_ckpt = acked(&j);
    j.kill();
    let links = j.sh("ip -o link show");
    assert!(
        !links.contains("dtap0") && !links.contains("dtap1"),
        "the taps outlived their programs:\n{links}"
    );
    j.restart();
    j.wait_running(2);
    check_tap(&j, "dtap0", "fe:00:00:00:00:01");
    check_tap(&j, "dtap1", "fe:00:00:00:00:02");
    wait_acked(&mut j, at_ckpt + 300);
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
    let (send, echo) = (j.read("send.out"), j.read("echo.out"));
    assert!(
        !send.contains("ERROR") && !echo.contains("ERROR"),
        "{}",
        j.diag()
    );
    let fs = send
        .lines()
        .find(|l| l.starts_with("final "))
        .unwrap_or_else(|| panic!("no final line of the sender{}", j.diag()));
    let fe = echo
        .lines()
        .find(|l| l.starts_with("final "))
        .unwrap_or_else(|| panic!("no final line of the echo{}", j.diag()));
    let n = last_num(fs, "acked").unwrap();
    let d = last_num(fe, "distinct").unwrap();
    assert!(n >= at_ckpt + 300, "{fs}");
    // Every number the sender saw acknowledged was echoed once as new;
    // the one it waited for at the end may have been echoed too.
    assert!(d == n || d == n + 1, "sender: {fs}\necho: {fe}");
    assert_eq!(last_num(fe, "last"), Some(d - 1), "{fe}");
    assert_eq!(last_num(fe, "errors"), Some(0), "{fe}");
}
