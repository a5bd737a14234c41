//! System V IPC across checkpoint/restart: a message queue and a
//! semaphore set used by three processes keep their messages and values,
//! and the ids the program holds keep working; three restarts.

mod common;
use common::*;

#[test]
fn sysv_message_queue_and_semaphores_across_restarts() {
    let prog = c_program("sysvipc");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "sysv",
        &[p, "2500"],
        &[],
        &[
            ("got 500\n", "got 700\n"),
            ("got 900\n", "got 1100\n"),
            ("got 1300\n", "got 1500\n"),
        ],
    );
    assert!(
        bare.ends_with("messages 2500 bumps 200 slots 6 children 0 0\n"),
        "{bare}"
    );
}

/// A POSIX message queue (unlinked while open) between two processes keeps
/// its messages and priorities; three restarts.
#[test]
fn posix_message_queue_across_restarts() {
    let prog = c_program("mqtest");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "mq",
        &[p, "1500"],
        &[],
        &[
            ("got 200\n", "got 400\n"),
            ("got 600\n", "got 800\n"),
            ("got 1000\n", "got 1200\n"),
        ],
    );
    assert!(bare.ends_with("received 1500 child exit 0\n"), "{bare}");
}

/// System V shared memory: a ring in a removed-while-attached segment and
/// a keyed segment a late child attaches by id; the segments are System V
/// segments again after each of three restarts, under the ids the program
/// holds.
#[test]
fn sysv_shared_memory_across_restarts() {
    let prog = c_program("sysvshm");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "sysvshm",
        &[p, "5000"],
        &[],
        &[
            ("got 1000\n", "got 1500\n"),
            ("got 2000\n", "got 2500\n"),
            ("got 3000\n", "got 3500\n"),
        ],
    );
    assert!(
        bare.ends_with("counter 5000 producer 0 late child 0 stat 1\n"),
        "{bare}"
    );
}
