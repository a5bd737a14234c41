//! Sockets across checkpoint/restart: connections between processes of the
//! job keep every byte in flight (checked byte by byte against a known
//! pattern, in both directions), over Unix socketpairs, Unix path sockets,
//! TCP/IPv4 and TCP/IPv6; options and flags carry over; listeners are bound
//! again; a connection to a server outside the job comes back closed in a
//! way the program sees (its unread bytes, then a reset).

mod common;
use common::*;

/// Three checkpoint/kill/restart cycles of the producer/consumer pair, then
/// the result must equal a bare run's.
fn stream_three_restarts(mode: &str) {
    let prog = c_program("sockstream");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, mode, "24"]);
    assert!(bare.contains("producer exit 0"), "{bare}");
    let mut job = Job::new(&format!("sock-{mode}"));
    job.launch(&[p, mode, "24"], &[]);
    for (mark, after) in [
        ("got 3 MB\n", "got 4 MB\n"),
        ("got 9 MB\n", "got 10 MB\n"),
        ("got 15 MB\n", "got 16 MB\n"),
    ] {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "output after three restarts differs from a bare run"
    );
}

#[test]
fn unix_socketpair_stream_keeps_bytes_in_flight() {
    stream_three_restarts("unix");
}

#[test]
fn unix_path_socket_keeps_bytes_in_flight() {
    stream_three_restarts("unixpath");
}

#[test]
fn unix_abstract_socket_keeps_bytes_in_flight() {
    stream_three_restarts("unixabs");
}

#[test]
fn tcp4_connection_keeps_bytes_in_flight() {
    stream_three_restarts("tcp4");
}

#[test]
fn tcp6_connection_keeps_bytes_in_flight() {
    stream_three_restarts("tcp6");
}

/// A checkpoint that the job survives (no restart) must not lose or
/// duplicate a byte either: drained bytes are put back on resume.
#[test]
fn tcp_stream_survives_checkpoints_without_restart() {
    let prog = c_program("sockstream");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "tcp4", "16"]);
    let mut job = Job::new("sock-resume");
    job.launch(&[p, "tcp4", "16"], &[]);
    for mark in ["got 2 MB\n", "got 6 MB\n", "got 10 MB\n"] {
        job.wait_for(mark);
        job.checkpoint();
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// An echo server with clients that connect one after another (some only
/// after a restart), over TCP and a Unix path socket; two restarts.
#[test]
fn echo_server_with_clients_across_restarts() {
    let prog = c_program("echosrv");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "6", "40"]);
    assert!(bare.contains("clients-failed-mask 0"), "{bare}");
    let mut job = Job::new("sock-echo");
    job.launch(&[p, "6", "40"], &[]);
    job.cycle("accepted 2 ", "accepted 3 ");
    job.cycle("accepted 4 ", "accepted 5 ");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// A server outside the job: after a restart the client gets the bytes it
/// had not read yet, then sees the connection reset (never a hang).
#[test]
fn connection_to_an_outside_server_comes_back_reset() {
    use std::io::Write;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port().to_string();
    let serve = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in server.incoming().take(2) {
            let mut c = c.unwrap();
            let mut msg = b"hello\n".to_vec();
            msg.extend((0..1000).map(|k| b'A' + (k % 23) as u8));
            c.write_all(&msg).unwrap();
            held.push(c); // kept open: the bare run sees no end
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    let prog = c_program("extclient");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, &port, "40"]);
    assert!(
        bare.contains("pending 1000 bytes ok\nconnection: timeout\n"),
        "{bare}"
    );
    let mut job = Job::new("sock-ext");
    job.launch(&[p, &port, "40"], &[]);
    job.cycle("tick 5\n", "tick 8\n");
    job.wait_success();
    let out = job.output();
    assert!(
        out.contains("pending 1000 bytes ok\nconnection: reset\nwrite after: Broken pipe\n"),
        "{out}"
    );
    assert!(out.contains("tick 39\n"), "{out}");
    drop(serve);
}

/// A token ring of four processes over Unix datagram sockets bound to
/// paths, and a datagram socketpair beside it: datagrams waiting at
/// checkpoint time are delivered after the restart, from the same sender
/// addresses, in order. Three restarts.
#[test]
fn unix_datagram_ring_across_restarts() {
    let prog = c_program("dgramring");
    let p = prog.to_str().unwrap();
    cycles_match_bare(
        "sock-ring",
        &[p, "4", "300"],
        &[],
        &[
            ("round 40 ", "round 50 "),
            ("round 120 ", "round 130 "),
            ("round 200 ", "round 210 "),
        ],
    );
}

fn python_threads_and_sockets(name: &str, pidns: bool) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/sockpy.py");
    let s = script.to_str().unwrap();
    let bare = run_bare(&["python3", s, "30"]);
    assert!(
        bare.contains("blocks 3840 left 0 echoes ok 30 nodelay 1"),
        "{bare}"
    );
    let mut job = Job::new(name);
    if !pidns {
        job = job.env("DMTCP_RESTART_PIDNS", "0");
    }
    job.launch(&["python3", s, "30"], &[]);
    job.cycle("got 6 MB\n", "got 8 MB\n");
    job.cycle("got 16 MB\n", "got 18 MB\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// python3 with threads on both ends of a socketpair and of a TCP
/// connection inside one process.
#[test]
fn python_threads_over_sockets_in_one_process() {
    python_threads_and_sockets("sock-py", true);
}

/// The same without a pid namespace (one image restored in place).
#[test]
fn python_sockets_restart_without_pid_namespace() {
    python_threads_and_sockets("sock-py-nons", false);
}

/// A real server: python3's http.server (a listening socket, a poll loop,
/// a connection per request) and a client fetching a file over and over,
/// both in the job; two restarts. The server is bound to the same port
/// again, and every fetch gets the whole file.
#[test]
fn python_http_server_and_client_across_restarts() {
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/httpclient.py");
    let port = unused_port();
    let cmd = format!(
        "python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 & python3 {} {port} 120; kill $!",
        client.display()
    );
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
    let mut job = Job::new("sock-http");
    std::fs::write(job.dir.join("data.bin"), &data).unwrap();
    job.launch(&["sh", "-c", &cmd], &[]);
    job.cycle("fetch 20 ", "fetch 25 ");
    job.cycle("fetch 60 ", "fetch 65 ");
    job.wait_success();
    let out = job.output();
    assert!(
        out.ends_with("fetch 119 ok\nfetches ok 120 of 120\n"),
        "{out}"
    );
    assert!(!out.contains("BAD"), "{out}");
}

/// A SOCK_SEQPACKET socketpair with messages of many sizes in flight:
/// every message comes back whole, boundaries kept, through three
/// restarts.
#[test]
fn seqpacket_messages_keep_their_boundaries() {
    let prog = c_program("seqpacket");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "seqpacket",
        &[p, "6000"],
        &[],
        &[
            ("got 1000\n", "got 1500\n"),
            ("got 2500\n", "got 3000\n"),
            ("got 4000\n", "got 4500\n"),
        ],
    );
    assert!(bare.ends_with("messages 6000 sender exit 0\n"), "{bare}");
}

/// A connection whose other end was closed with bytes still queued in the
/// kernel (an orphaned socket, held by no process of the job or anyone
/// else) at checkpoint time: the reader gets every byte and then the end
/// of the stream, after a restart (twice).
#[test]
fn bytes_of_an_orphaned_peer_survive_restarts() {
    let prog = c_program("orphanpeer");
    let out = cycles_match_bare(
        "orphanpeer",
        &[prog.to_str().unwrap()],
        &[],
        &[("tick 1\n", "tick 2\n"), ("tick 3\n", "tick 4\n")],
    );
    assert!(out.ends_with("read every byte ok\n"), "{out}");
}

/// The same with a checkpoint the job resumes from (the orphan's bytes are
/// read at checkpoint, so the connection is replaced at once), then a
/// restart.
#[test]
fn bytes_of_an_orphaned_peer_survive_resume_then_restart() {
    let prog = c_program("orphanpeer");
    let mut job = Job::new("orphanpeer-resume");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("tick 1\n");
    job.checkpoint();
    job.cycle("tick 3\n", "tick 4\n");
    job.wait_success();
    let out = job.output();
    assert!(out.ends_with("tick 6\nread every byte ok\n"), "{out}");
}

/// A half-closed connection between two processes of the job: the server
/// shut its sending side down with bytes still in its send queue. After
/// restarts the client reads every byte, then the end, and its answer
/// still reaches the server the other way.
#[test]
fn half_closed_connection_keeps_the_senders_queue_across_restarts() {
    let prog = c_program("orphanpeer");
    let out = cycles_match_bare(
        "halfclosed",
        &[prog.to_str().unwrap(), "half"],
        &[],
        &[("tick 1\n", "tick 2\n"), ("tick 3\n", "tick 4\n")],
    );
    assert!(
        out.ends_with("read every byte ok\nserver got bye\n"),
        "{out}"
    );
}

/// A drain that the other end does not finish in time fails the
/// checkpoint and keeps the connection whole: the producer starts
/// draining 3 s late (fault injection in its environment only), the
/// consumer waits 1 s. Every such `-bc` must fail, and the stream must
/// still arrive byte for byte as in a bare run; a normal checkpoint and
/// restart afterwards still work.
#[test]
fn late_drain_fails_the_checkpoint_and_keeps_the_connection() {
    let prog = c_program("sockstream");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "tcp4", "16"]);
    assert!(bare.contains("producer exit 0"), "{bare}");
    let mut job = Job::new("sock-late").env("DMTCP_SOCKET_DRAIN_TIMEOUT", "1");
    job.launch(&[p, "tcp4", "16", "DMTCP_FAULT_DRAIN_DELAY_MS=3000"], &[]);
    for mark in ["got 2 MB\n", "got 5 MB\n"] {
        job.wait_for(mark);
        let o = job.command(&["-bc"]);
        assert!(
            !o.status.success(),
            "a checkpoint with a late drain succeeded: {o:?}"
        );
        let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
        assert!(err.contains("did not finish draining within 1 s"), "{err}");
    }
    assert!(
        job.images().is_empty(),
        "a failed round left images: {:?}",
        job.images()
    );
    job.wait_for("got 8 MB\n");
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "the stream differs from a bare run after failed checkpoints"
    );
}

/// Both ends' final lines of a `streampeer` run without the checkpointer.
fn streampeer_bare(kind: &str, blocks: &str) -> Vec<String> {
    let prog = c_program("streampeer");
    let dir = fresh_dir(&format!("streampeer-bare-{kind}"));
    let file = dir.join("addr");
    let f = file.to_str().unwrap();
    let l = std::process::Command::new(&prog)
        .args(["listen", kind, f, blocks])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let c = std::process::Command::new(&prog)
        .args(["connect", kind, f, blocks])
        .output()
        .unwrap();
    let mut l = l;
    if !c.status.success() {
        // The listener would wait for ever for its peer.
        let _ = l.kill();
    }
    let l = l.wait_with_output().unwrap();
    assert!(
        l.status.success() && c.status.success(),
        "bare streampeer run failed: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    let last = |o: &[u8]| {
        String::from_utf8_lossy(o)
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    };
    let mut v = vec![last(&l.stdout), last(&c.stdout)];
    v.sort();
    v
}

/// Two programs launched separately, connected to each other, are
/// checkpointed mid-stream, killed and restarted by two `dmtcp_restart`s,
/// one image each (as a job spread over two hosts is restarted, one
/// `dmtcp_restart` per host): the two meet through the coordinator and
/// re-make their connection; every byte in flight arrives and both
/// checksums equal a bare run's.
fn connection_remade_between_two_restarts(kind: &str) {
    let prog = c_program("streampeer");
    let p = prog.to_str().unwrap();
    let blocks = "4000";
    let bare = streampeer_bare(kind, blocks);
    let mut job = Job::new(&format!("rejoin-{kind}"));
    let file = job.dir.join("addr");
    let f = file.to_str().unwrap().to_string();
    job.launch(&[p, "listen", kind, &f, blocks], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut client = job
        .joined("dmtcp_launch")
        .args([p, "connect", kind, &f, blocks])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(job.dir.join("client.txt")).unwrap())
        .spawn()
        .unwrap();
    job.wait_for("step 1000\n");
    job.checkpoint();
    job.wait_for("step 1500\n");
    job.kill();
    let _ = client.wait();
    let imgs = job.images();
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    // The second dmtcp_restart starts a little later, as another host's would.
    job.restart_with(&[imgs[0].display().to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = job
        .joined("dmtcp_restart")
        .arg(&imgs[1])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(job.dir.join("restart2.out")).unwrap())
        .stderr(std::fs::File::create(job.dir.join("restart2.err")).unwrap())
        .spawn()
        .unwrap();
    job.wait_success();
    let second = second.wait_with_output().unwrap();
    let read = |f: &str| std::fs::read_to_string(job.dir.join(f)).unwrap_or_default();
    assert!(
        second.status.success(),
        "second dmtcp_restart: {:?}\n{}\n{}",
        second.status,
        read("restart2.out"),
        read("restart2.err")
    );
    let last = |s: String| s.lines().last().unwrap_or("").to_string();
    // Each program still writes to the file it had as its output.
    let mut got = vec![last(read("out.txt")), last(read("client.txt"))];
    got.sort();
    assert_eq!(
        got,
        bare,
        "restart.err:\n{}\nrestart2.err:\n{}",
        read("restart.err"),
        read("restart2.err")
    );
}

#[test]
fn tcp_connection_remade_between_two_restarts() {
    connection_remade_between_two_restarts("tcp");
}

#[test]
fn unix_connection_remade_between_two_restarts() {
    connection_remade_between_two_restarts("unix");
}

/// Four processes that all hold the same socketpair and pipes (shared open
/// file descriptions) pass a token around a ring through them, TCP and
/// shared memory. After a restart, the process that refills a shared
/// socket used to set O_NONBLOCK on it for the refill, which every holder
/// shares: one already running its program then failed a blocking read
/// with EAGAIN (seen in 2 of 5 restarts under `bench soak`). The refill's
/// second half is held back here (DMTCP_FAULT_REFILL_DELAY_MS) so that
/// the others run meanwhile.
#[test]
fn ring_over_shared_descriptors_across_restarts() {
    let prog = c_program("sharedring");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "5000"]);
    assert!(bare.contains("done 5000 sum "), "{bare}");
    let mut job = Job::new("sharedring").env("DMTCP_FAULT_REFILL_DELAY_MS", "300");
    job.launch(&[p, "5000"], &[]);
    for (mark, after) in [
        ("tokens 800\n", "tokens 1200\n"),
        ("tokens 2000\n", "tokens 2400\n"),
        ("tokens 3200\n", "tokens 3600\n"),
    ] {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(job.output(), bare, "output after three restarts");
}

/// A Unix socket filled to the brim, its reader idle through every
/// checkpoint (tests/c/fullsock.c): the bytes put back need more room in
/// the sender's buffer than they took before (229376 bytes written in 32
/// KiB blocks, only 219264 written back in one go with the same buffer),
/// and the reader's program cannot make room: on resume its threads wait
/// for the whole round, and after a restart it just does not read. Once
/// a resume waited 120 s and then lost the bytes. A checkpoint it
/// resumes from, then a checkpoint, kill and restart, then one more
/// checkpoint; then the reader reads every byte.
#[test]
fn full_unix_socket_with_an_idle_reader_survives_resume_and_restart() {
    let prog = c_program("fullsock");
    let mut job = Job::new("fullsock");
    let go = job.dir.join("go");
    job.launch(&[prog.to_str().unwrap(), go.to_str().unwrap()], &[]);
    job.wait_for("full ");
    let full = job.output();
    let n: u64 = full
        .trim()
        .strip_prefix("full ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{full:?}"));
    job.checkpoint();
    job.checkpoint_and_kill();
    job.restart();
    // Both processes back and running (the writer's write-back may still
    // run: the next round then waits for it).
    job.wait_running(2);
    job.checkpoint();
    std::fs::write(&go, b"").unwrap();
    job.wait_success();
    let out = job.output();
    assert!(
        out.ends_with(&format!("read {n} ok, writer exit 0\n")),
        "{out}"
    );
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(!err.contains("takes long"), "{err}");
}

/// A client of the job connected to the job's listener and sent its
/// bytes, but the server had not accepted the connection when the
/// checkpoint came (it waits in the accept queue, held by no process).
/// After the checkpoint (`restart`: a kill and a restart) the server waits
/// for its listener to be readable, accepts, and must get every byte; the
/// client must get the server's answer. Before, the waiting connection was
/// taken for one leading outside the job: a reset at restart.
fn waiting_connection(name: &str, shut: &str, restart: bool) {
    let prog = c_program("acceptq");
    let mut job = Job::new(name);
    let go = job.dir.join("go");
    job.launch(
        &[prog.to_str().unwrap(), go.to_str().unwrap(), "50000", "tcp", shut],
        &[],
    );
    job.wait_for("pending\n");
    if restart {
        job.checkpoint_and_kill();
        job.restart();
        job.wait_running(2);
    } else {
        job.checkpoint();
    }
    std::fs::write(&go, b"").unwrap();
    job.wait_success();
    let out = job.output();
    assert!(out.contains("server got 50000 ok\n"), "{out}{}", job.diag());
    assert!(out.contains("client got answer ok\n"), "{out}{}", job.diag());
    assert!(out.ends_with("client exit 0\n"), "{out}{}", job.diag());
}

#[test]
fn connection_waiting_to_be_accepted_survives_resume() {
    waiting_connection("acceptq-resume", "open", false);
}

#[test]
fn connection_waiting_to_be_accepted_survives_restart() {
    waiting_connection("acceptq-restart", "open", true);
}

#[test]
fn half_closed_connection_waiting_to_be_accepted_survives_resume() {
    waiting_connection("acceptq-shut-resume", "shut", false);
}

#[test]
fn half_closed_connection_waiting_to_be_accepted_survives_restart() {
    waiting_connection("acceptq-shut-restart", "shut", true);
}
