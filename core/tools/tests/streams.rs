//! The per-node limit on image write streams (`DMTCP_NODE_STREAMS`): a
//! writer waits for a free slot, the checkpoint goes on when one frees,
//! and slots that cannot be had at all never hold a checkpoint back.

mod common;
use common::*;
use dmtcp_common::generation as gen;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

fn committed(dir: &Path) -> usize {
    gen::list(dir).into_iter().filter(|f| !f.partial).count()
}

fn wait_committed(job: &Job, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while committed(&job.ckpt) < n {
        assert!(
            Instant::now() < deadline,
            "generation {n} was not committed{}",
            job.diag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With one stream per node and its slot held by someone else (here the
/// test), the processes' writers cannot write: the program stays
/// suspended and nothing is committed. Once the slot is free the
/// checkpoint completes, and a restart from it gives the bare run's
/// result. Two processes (bash and its child) share the slot.
#[test]
fn writers_wait_for_a_free_node_stream() {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let script = format!("{p} 48 a.data > a.out; echo a done; {p} 48 b.data");
    let bare_dir = fresh_dir("streams-bare");
    let bare = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(&bare_dir)
        .output()
        .unwrap();
    assert!(bare.status.success());
    let bare = String::from_utf8(bare.stdout).unwrap();

    let mut job = Job::new("streams-wait");
    let slots = job.dir.join("slots");
    std::fs::create_dir_all(&slots).unwrap();
    job = job
        .env("DMTCP_NODE_STREAMS", "1")
        .env("DMTCP_NODE_STREAMS_DIR", slots.to_str().unwrap());
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let slot = std::fs::File::create(slots.join(format!("dmtcp-streams-{uid}.0"))).unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(slot.as_raw_fd(), libc::LOCK_EX) }, 0);

    // Written with the program suspended (a forked writer would wait for
    // the slot while the program runs on).
    job.launch(&["bash", "-c", &script], &["--no-gzip", "--no-forked-ckpt"]);
    job.wait_for("a done\n");
    job.wait_for("step 2\n");
    assert!(job.command(&["-c"]).status.success());
    // Suspended: the output stops growing (bigmem prints a step every
    // 100 ms); then it stays so while the slot is held.
    let mut lines = job.output().lines().count();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = job.output().lines().count();
        if now == lines {
            break;
        }
        lines = now;
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        committed(&job.ckpt),
        0,
        "a checkpoint was committed while the only write stream was held{}",
        job.diag()
    );
    assert_eq!(job.output().lines().count(), lines, "the program ran on");

    drop(slot);
    wait_committed(&job, 1);
    job.wait_for("step 6\n");
    job.kill();
    job.restart();
    job.wait_success();
    let got = job.output();
    assert_eq!(
        got, bare,
        "output after the restart differs from a bare run"
    );
}

/// A slot directory that does not exist: the writers go on without a
/// slot (a limit that cannot be kept must not stop checkpoints).
#[test]
fn unusable_slot_directory_does_not_hold_checkpoints() {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "32"]);
    let mut job = Job::new("streams-nodir")
        .env("DMTCP_NODE_STREAMS", "1")
        .env("DMTCP_NODE_STREAMS_DIR", "/nonexistent/dmtcp-slots");
    job.launch(&[p, "32"], &[]);
    job.cycle("step 2\n", "step 4\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}
