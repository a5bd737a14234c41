//! A user-space network behind a tun device (`tests/c/tun_ping.c`)
//! across checkpoints, a kill and a restart, in a fresh network
//! namespace: the device comes back with the same name, index, flags,
//! MTU, address and route; `ping` through it is answered before and after;
//! the program's own UDP datagrams routed into the tun arrive in order,
//! with at most the few in flight at the checkpoint lost.

mod common;
use common::*;

/// What must be the same after the restart: the link (index, flags, MTU,
/// tun details), the IPv4 addresses and the routes through the device.
fn device_state(j: &Job, dev: &str) -> String {
    let all = format!(
        "{}{}{}",
        j.sh(&format!("ip -d link show {dev}")),
        j.sh(&format!(
            "ip addr show {dev} | grep -v 'inet6 fe80' | grep -v 'valid_lft'"
        )),
        j.sh(&format!(
            "ip route show dev {dev}; ip -6 route show dev {dev} | grep -v fe80; true"
        ))
    );
    // Carrier and operational state are the kernel's (a re-attached
    // persistent device says UP where a new one says UNKNOWN).
    let lines: Vec<String> = all
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let mut keep = Vec::new();
            let mut i = 0;
            while i < w.len() {
                if w[i] == "state" {
                    i += 2;
                    continue;
                }
                keep.push(w[i].replace(",LOWER_UP", ""));
                i += 1;
            }
            keep.join(" ")
        })
        .collect();
    lines.join("\n")
}

/// `ping` through the tun: every echo answered by the program.
fn ping(j: &Job, addr: &str) {
    let out = j.sh(&format!("ping -n -c 3 -i 0.2 -W 5 {addr}"));
    assert!(
        out.contains("3 packets transmitted, 3 received"),
        "ping {addr}:\n{out}{}",
        j.diag()
    );
}

fn wait_sent(j: &mut Job, at_least: i64) {
    j.wait_for("p.out", &format!("{at_least} datagrams sent"), |o| {
        last_num(o, "sent").is_some_and(|n| n >= at_least)
    });
}

/// A job running `tests/c/<prog>.c` on device `dev` (with `args`), once
/// the program said it is ready; `opts` go to dmtcp_launch.
fn started(name: &str, prog: &str, dev: &str, args: &[&str], opts: &[&str]) -> Job {
    let mut j = Job::new(name);
    j.launch_opts = opts.iter().map(|o| o.to_string()).collect();
    started_in(j, prog, dev, args)
}

/// [`started`] for a job made by the caller.
fn started_in(mut j: Job, prog: &str, dev: &str, args: &[&str]) -> Job {
    let bin = compile_c(&j, prog);
    let mut a = vec![dev];
    a.extend_from_slice(args);
    j.launch("p", &bin, &a);
    j.wait_in("p.out", &format!("ready {dev}"));
    j.wait_running(1);
    j
}

/// Launch, ping, checkpoint twice, kill, restart, ping, finish; checks
/// the device and the counts. Returns the job's final output line.
fn scenario(name: &str, args: &[&str], persist: bool) -> String {
    scenario_on(Job::new(name), args, persist, false)
}

/// [`scenario`] for a job `j`; with `moved`, the restart happens on node
/// 1 (another network namespace, where the device never was).
fn scenario_on(j: Job, args: &[&str], persist: bool, moved: bool) -> String {
    let mut j = started_in(j, "tun_ping", "dtun0", args);
    // An IPv6 address and route set by another program (ip), not by the
    // checkpointed one: they are the device's, so they come back too.
    j.sh("ip -6 addr add fd00:77::1/64 dev dtun0 nodad && ip -6 route add fd00:78::/64 dev dtun0 metric 7");
    ping(&j, "10.77.0.2");
    ping(&j, "10.78.0.9");
    wait_sent(&mut j, 100);
    j.checkpoint();
    let s = last_num(&j.read("p.out"), "sent").unwrap();
    wait_sent(&mut j, s + 100);
    j.checkpoint();
    let before = device_state(&j, "dtun0");
    assert!(before.contains("mtu 1400"), "{before}");
    assert!(before.contains("inet 10.77.0.1/24"), "{before}");
    assert!(before.contains("10.78.0.0/24"), "{before}");
    assert!(before.contains("inet6 fd00:77::1/64"), "{before}");
    assert!(before.contains("fd00:78::/64"), "{before}");
    // Two rounds: the restarted program is checkpointed and restarted
    // again.
    let mut sent_ckpt = 0;
    for round in 0..2 {
        if round == 1 {
            j.checkpoint();
        }
        sent_ckpt = last_num(&j.read("p.out"), "sent").unwrap();
        j.kill();
        let links = j.sh("ip -o link show");
        assert_eq!(
            links.contains("dtun0"),
            persist,
            "the device after the kill (round {round}):\n{links}"
        );
        if moved && round == 0 {
            j.at = 1;
            let links = j.sh("ip -o link show");
            assert!(!links.contains("dtun0"), "node 1 has it:\n{links}");
        }
        j.restart();
        j.wait_running(1);
        let after = device_state(&j, "dtun0");
        assert_eq!(before, after, "the device differs after restart {round}");
        ping(&j, "10.77.0.2");
        ping(&j, "10.78.0.9");
        wait_sent(&mut j, sent_ckpt + 300);
    }
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
    let out = j.read("p.out");
    let fin = out
        .lines()
        .find(|l| l.starts_with("final "))
        .unwrap_or_else(|| panic!("no final line{}", j.diag()))
        .to_string();
    assert!(!out.contains("ERROR"), "{}", j.diag());
    assert!(
        !j.read("p.err").contains("tun plugin is not loaded"),
        "{}",
        j.diag()
    );
    assert_eq!(last_num(&fin, "errors"), Some(0), "{fin}");
    // Six pings of three echoes, two before the restarts and two after
    // each.
    assert_eq!(last_num(&fin, "pings"), Some(18), "{fin}");
    let (sent, got) = (
        last_num(&fin, "sent").unwrap(),
        last_num(&fin, "got").unwrap(),
    );
    assert!(sent >= sent_ckpt + 300, "{fin}");
    // Lost: what was queued in the device at the two checkpoints that
    // were restarted and the last one in flight when the program stopped.
    assert!(
        sent - got <= 8,
        "too many datagrams lost: {fin}{}",
        j.diag()
    );
    fin
}

#[test]
fn tun_device_comes_back_after_restart() {
    scenario("plain", &[], false);
}

#[test]
fn persistent_tun_device_is_reattached() {
    scenario("persist", &["persist"], true);
}

/// Checkpointed in one network namespace, restarted in another (another
/// node of the rig): the device is made there with everything it had.
#[test]
fn tun_device_moves_to_another_network_namespace() {
    scenario_on(Job::on_nodes("moved", 2), &[], false, true);
}

#[test]
fn multi_queue_tun_device_comes_back_with_its_queues() {
    scenario("mq", &["mq"], false);
}

/// A device of the same name that is not the program's (the checkpointed
/// one was not persistent): the restart is refused with a clear message.
/// `other` makes it.
fn refused(name: &str, other: &str, kind: &str) {
    let mut j = started(name, "tun_ping", "dtun0", &[], &[]);
    j.checkpoint();
    j.kill();
    j.sh(other);
    j.restart();
    let st = j.wait_restart();
    assert!(
        st.is_some_and(|s| !s.success()),
        "restart ended with {st:?}{}",
        j.diag()
    );
    let err = j.read("restart.err") + &j.read("p.err");
    assert!(
        err.contains("restart failed: a network device named dtun0 exists"),
        "{}",
        j.diag()
    );
    // The other device is left alone.
    assert!(j.sh("ip -d link show dtun0").contains(kind));
}

#[test]
fn restart_refuses_a_name_taken_by_another_device() {
    refused("taken", "ip link add dtun0 type bridge", "bridge");
}

/// Even a tun device of the same kind, when it is not the program's: a
/// persistent one made by `ip tuntap`.
#[test]
fn restart_refuses_a_name_taken_by_another_tun_device() {
    refused(
        "taken-tun",
        "ip tuntap add dev dtun0 mode tun && ip -d link show dtun0 | grep -q 'pi off'",
        "persist on",
    );
}

/// vhost-net is refused where the program asks for it, with a reason.
#[test]
fn vhost_net_backend_is_refused() {
    let mut j = started("vhost", "tun_ping", "dtun0", &["vhost"], &[]);
    assert!(
        j.read("p.out")
            .contains("vhost backend: Operation not supported"),
        "{}",
        j.diag()
    );
    assert!(
        j.read("p.err")
            .contains("vhost-net is not supported under checkpointing"),
        "{}",
        j.diag()
    );
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
}

/// With `--disable-tun-plugin` the engine says, once, that the tun fd
/// will come back attached to nothing.
#[test]
fn tun_without_the_plugin_is_warned_about() {
    let mut j = started(
        "noplugin",
        "tun_ping",
        "dtun0",
        &[],
        &["--disable-tun-plugin"],
    );
    j.checkpoint();
    j.checkpoint();
    let err = j.read("p.err");
    assert_eq!(
        err.matches("is a tun/tap device (/dev/net/tun) and the tun plugin is not loaded")
            .count(),
        1,
        "{}",
        j.diag()
    );
    assert!(!err.contains("dmtcp_tun:"), "{}", j.diag());
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
}

/// The program's answer to "check": its last "state" line after a new one.
fn state_line(j: &mut Job) -> String {
    let n = j.read("p.out").matches("state ").count();
    std::fs::write(j.dir.join("check"), "").unwrap();
    j.wait_for("p.out", "a state line", |o| o.matches("state ").count() > n);
    j.read("p.out")
        .lines()
        .rfind(|l| l.starts_with("state "))
        .unwrap()
        .to_string()
}

/// A multi-queue tap with virtio-net headers and every setting the plugin
/// restores (`tests/c/tun_settings.c`): owner, group, vnet header size,
/// send buffer, carrier, transmit and socket filters, a detached queue,
/// hardware address, up: the same after a restart, as the kernel tells
/// the program and `ip -d link` tells the test.
#[test]
fn tap_settings_and_queues_come_back() {
    let mut j = started("settings", "tun_settings", "dset0", &[], &[]);
    j.sh("ip link set dset0 up");
    let st = state_line(&mut j);
    assert_eq!(
        st,
        "state q0=dset0/detached q1=dset0/0x5102 q2=dset0/0x5102 vnethdr=12 sndbuf=196608 filter=1 \
         csum=1 tso=1"
    );
    let before = device_state(&j, "dset0");
    for want in [
        "user 1234 group 4321",
        "multi_queue numqueues 2 numdisabled 1",
        "vnet_hdr on",
        "NO-CARRIER",
        ",UP",
    ] {
        assert!(before.contains(want), "no '{want}' in\n{before}");
    }
    j.checkpoint();
    j.kill();
    j.restart();
    j.wait_running(1);
    assert_eq!(device_state(&j, "dset0"), before, "{}", j.diag());
    assert_eq!(state_line(&mut j), st, "{}", j.diag());
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
}

/// The last "attached" value `role` printed after its line number `after`.
fn attached_after(out: &str, role: &str, after: i64) -> Option<i64> {
    out.lines()
        .rev()
        .filter(|l| l.starts_with(&format!("{role} ")))
        .filter(|l| last_num(l, role).is_some_and(|i| i > after))
        .find_map(|l| last_num(l, "attached"))
}

/// A tun fd shared by a parent and its child (`tests/c/tun_fork.c`):
/// both restore it; a multi-queue device takes both, a single-queue one
/// only one of them (the other is told, and its fd comes back attached
/// to nothing) and the restart goes on.
fn shared_across_fork(mq: bool) {
    let args: &[&str] = if mq { &["mq"] } else { &[] };
    let mut j = Job::new(if mq { "fork-mq" } else { "fork" });
    let bin = compile_c(&j, "tun_fork");
    let mut a = vec!["dtunf"];
    a.extend_from_slice(args);
    j.launch("p", &bin, &a);
    j.wait_running(2);
    j.wait_in("p.out", "child 3 attached 1");
    j.wait_in("p.out", "parent 3 attached 1");
    j.checkpoint();
    let out = j.read("p.out");
    let last = |role: &str| {
        out.lines()
            .filter(|l| l.starts_with(role))
            .filter_map(|l| last_num(l, role))
            .max()
            .unwrap()
    };
    let (lp, lc) = (last("parent"), last("child"));
    j.kill();
    j.restart();
    j.wait_running(2);
    j.wait_for("p.out", "lines after the restart", |o| {
        attached_after(o, "parent", lp + 3).is_some()
            && attached_after(o, "child", lc + 3).is_some()
    });
    let out = j.read("p.out");
    let (p, c) = (
        attached_after(&out, "parent", lp + 3).unwrap(),
        attached_after(&out, "child", lc + 3).unwrap(),
    );
    let err = j.read("p.err");
    let told = err.matches("is attached in another process").count();
    if mq {
        assert_eq!((p, c, told), (1, 1, 0), "{}", j.diag());
    } else {
        assert_eq!(p + c, 1, "exactly one keeps the device{}", j.diag());
        assert_eq!(told, 1, "{}", j.diag());
    }
    std::fs::write(j.dir.join("stop"), "").unwrap();
    j.wait_success();
}

#[test]
fn tun_fd_shared_across_fork_comes_back_in_one_process() {
    shared_across_fork(false);
}

#[test]
fn multi_queue_tun_fd_shared_across_fork_comes_back_in_both() {
    shared_across_fork(true);
}
