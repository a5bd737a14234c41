//! System V IPC across checkpoint/restart: a message queue and a
//! semaphore set used by three processes keep their messages and values,
//! and the ids the program holds keep working; three restarts.

mod common;
use common::*;

#[test]
fn sysv_message_queue_and_semaphores_across_restarts() {
    let prog = c_program("sysvipc");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "2500"]);
    assert!(bare.ends_with("messages 2500 bumps 200 slots 6 children 0 0\n"), "{bare}");
    let mut job = Job::new("sysv");
    job.launch(&[p, "2500"], &[]);
    for (mark, after) in [("got 500\n", "got 700\n"), ("got 900\n", "got 1100\n"), ("got 1300\n", "got 1500\n")] {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}
