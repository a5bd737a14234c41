//! Event fds across checkpoint/restart: an epoll loop over an eventfd, a
//! semaphore eventfd shared with a child, a timerfd, a signalfd and TCP
//! sockets; and a real epoll server (redis) with a client.

mod common;
use common::*;

#[test]
fn epoll_loop_with_eventfd_timerfd_signalfd_across_restarts() {
    let prog = c_program("evloop");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    assert!(
        bare.ends_with("a 600 b 400 signals 100 pings 100 timer ticking child exit 0\n"),
        "{bare}"
    );
    let mut job = Job::new("evloop");
    job.launch(&[p], &[]);
    job.cycle("a 100\n", "a 200\n");
    job.cycle("a 300\n", "a 400\n");
    job.cycle("a 500\n", "a 600\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// redis-server from Debian (an epoll server with threads) and clients
/// under one dmtcp_launch: a Python client INCRs a counter over one
/// long-lived connection, checking every reply, across three
/// checkpoint-kill-restart cycles; then redis-cli processes (a new
/// connection each) INCR a second counter. Both counts must be exact.
#[test]
fn redis_server_and_clients_across_restarts() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is missing (apt-get install redis-server; .ci/run installs it)");
    }
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/redisclient.py");
    let port = unused_port();
    let cmd = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no >redis.log 2>&1 &
         python3 {} {port} 900 >> redis.txt
         for i in $(seq 20); do redis-cli -p {port} incr other >/dev/null; done
         redis-cli -p {port} get other >> redis.txt
         redis-cli -p {port} shutdown nosave; wait",
        client.display()
    );
    let mut job = Job::new("redis");
    job.launch(&["sh", "-c", &cmd], &[]);
    let txt = job.dir.join("redis.txt");
    let wait_txt = |pat: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string(&txt)
            .unwrap_or_default()
            .contains(pat)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {pat:?} in redis.txt"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    for (mark, after) in [
        ("incr 100\n", "incr 150\n"),
        ("incr 350\n", "incr 400\n"),
        ("incr 600\n", "incr 650\n"),
    ] {
        wait_txt(mark);
        job.checkpoint();
        wait_txt(after);
        job.kill();
        job.restart();
    }
    job.wait_success();
    let out = std::fs::read_to_string(&txt).unwrap();
    assert!(out.ends_with("incr 900\nfinal 900\n20\n"), "{out}");
    assert!(!out.contains("got"), "{out}");
}

/// A periodic timerfd with expirations pending unread at checkpoint time
/// keeps expiring after each of three restarts.
#[test]
fn timerfd_with_pending_expirations_keeps_ticking() {
    let prog = c_program("timerfd");
    let p = prog.to_str().unwrap();
    cycles_match_bare(
        "timerfd",
        &[p, "80"],
        &[],
        &[
            ("iter 10\n", "iter 15\n"),
            ("iter 30\n", "iter 35\n"),
            ("iter 50\n", "iter 55\n"),
        ],
    );
}

/// inotify watches (a directory and a file, at wds 1 and 3) come back with
/// their numbers, paths and masks: new events keep arriving through three
/// restarts.
#[test]
fn inotify_watches_across_restarts() {
    let prog = c_program("inotify");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "inotify",
        &[p, "80"],
        &[],
        &[
            ("step 10\n", "step 15\n"),
            ("step 30\n", "step 35\n"),
            ("step 50\n", "step 55\n"),
        ],
    );
    assert!(
        bare.starts_with("wds 1 3\n") && bare.ends_with("done\n"),
        "{bare}"
    );
}
