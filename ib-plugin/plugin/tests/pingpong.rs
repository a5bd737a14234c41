//! Debian's verbs pingpong programs (ibverbs-utils) under `dmtcp_launch
//! --ib` on the software device: a server and a client process of one
//! computation, checkpointed in the middle of a long run, killed, the
//! device service killed and started again (every LID, QP number and key
//! changes), restarted; both must finish with their own data check (`-c`)
//! passing. Also a checkpoint the processes simply go on from.

mod common;
use common::*;

/// Runs server and client of `prog` with `args`, checkpoints once both are
/// connected, then either resumes (`restart` false) or kills everything,
/// restarts the device service and restarts from the images.
fn pingpong(name: &str, prog: &str, args: &[&str], iters: u32, restart: bool) {
    let mut j = Job::new(name);
    let port = free_port();
    let n = iters.to_string();
    let p = port.to_string();
    let mut a: Vec<&str> = vec!["-d", "softib0", "-c", "-n", &n, "-p", &p];
    a.extend_from_slice(args);
    let server = j.launch("server", prog, &a);
    j.wait_listening(server, port);
    let mut ca = a.clone();
    ca.push("127.0.0.1");
    j.launch("client", prog, &ca);
    // Both QPs ready to send: the traffic runs from there.
    j.wait_err("server", "(RTS)");
    j.wait_err("client", "(RTS)");
    j.checkpoint();
    if restart {
        j.kill();
        j.restart_service();
        j.restart();
    }
    j.wait_success();
    for side in ["server", "client"] {
        let (out, err) = (j.read(&format!("{side}.out")), j.read(&format!("{side}.err")));
        check_pingpong(&out, &err, iters, &format!("{name} {side}"));
        if restart {
            check_ids_changed(&err, &format!("{name} {side}"));
        }
    }
}

#[test]
fn rc_pingpong_restart_events() {
    pingpong("rc-ev", "ibv_rc_pingpong", &["-e"], 100_000, true);
}

#[test]
fn rc_pingpong_restart_polling() {
    pingpong("rc-poll", "ibv_rc_pingpong", &[], 100_000, true);
}

#[test]
fn rc_pingpong_resume() {
    pingpong("rc-resume", "ibv_rc_pingpong", &["-e"], 30_000, false);
}

#[test]
fn ud_pingpong_restart_events() {
    pingpong("ud-ev", "ibv_ud_pingpong", &["-e"], 100_000, true);
}

#[test]
fn uc_pingpong_restart_events() {
    pingpong("uc-ev", "ibv_uc_pingpong", &["-e"], 100_000, true);
}

#[test]
fn srq_pingpong_restart_events() {
    pingpong("srq-ev", "ibv_srq_pingpong", &["-e"], 100_000, true);
}

#[test]
fn srq_pingpong_restart_polling() {
    pingpong("srq-poll", "ibv_srq_pingpong", &[], 100_000, true);
}
