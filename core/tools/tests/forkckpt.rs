//! Forked checkpointing (`dmtcp_launch --forked-ckpt`): the program is
//! suspended only while its state is captured and its address space
//! duplicated; a forked child writes the image while the program runs on,
//! and the coordinator commits the generation when every writer is done.
//!
//! The program (tests/c/forkckpt.c) keeps two threads rewriting their
//! memory, writes a MAP_SHARED region that children it forks update too,
//! counts SIGCHLD and polls `waitpid(-1)`: its output says whether it ever
//! saw a child it did not fork (the image writer must stay invisible).
//! `DMTCP_TEST_WRITE_DELAY_MS` slows a forked writer down (a pause per
//! 4 MiB written) so that the tests can act while it writes.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const FORKED: &[&str] = &["--forked-ckpt"];

/// The last "step N" line of the program's output.
fn last_step(job: &Job) -> i64 {
    job.output()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("step ").and_then(|n| n.trim().parse().ok()))
        .unwrap_or(-1)
}

/// Children of `pid` created without an exit signal (field 38 of
/// /proc/PID/stat is 0): the checkpointer's image writers.
fn writer_children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        // Fields after ")" start at field 3 (state): ppid is field 4,
        // exit_signal field 38.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<i64>().ok());
        if field(4) == Some(pid as i64) && field(38) == Some(0) && !f[0].starts_with('Z') {
            out.push(child);
        }
    }
    out
}

/// `dmtcp_command -bc` in the background.
fn background_bc(job: &Job) -> Child {
    tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &job.port.to_string(), "-bc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The job's program: the one peer whose parent is not a peer (forkckpt
/// forks a short-lived child every few steps, which joins the job too).
fn app_pid(job: &Job) -> i32 {
    let pids = job.peer_pids();
    let ppid = |p: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        stat.rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse::<i32>().ok())
    };
    let top: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| ppid(p).is_some_and(|pp| !pids.contains(&pp)))
        .collect();
    assert_eq!(top.len(), 1, "one program process expected among {pids:?}");
    top[0]
}

/// Wait until `pid` has a forked image writer other than those of
/// `earlier` (the last round's, which may still be on its way out for a
/// few milliseconds after its generation committed); its pid.
fn wait_writer(pid: i32, earlier: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(&w) = writer_children(pid).iter().find(|w| !earlier.contains(w)) {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "no forked writer of {pid} appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn committed_generations(dir: &std::path::Path) -> Vec<u32> {
    let mut g: Vec<u32> = dmtcp_common::generation::list(dir)
        .into_iter()
        .filter(|f| !f.partial)
        .map(|f| f.generation)
        .collect();
    g.sort();
    g
}

/// Several forked checkpoints, each followed by a SIGKILL of the job and a
/// restart: the threads' memory, the shared region, the children and the
/// SIGCHLD count come back exactly as in a run without checkpoints, and
/// the program never sees an image writer in waitpid(-1) or SIGCHLD.
#[test]
fn forked_checkpoints_restart_exactly() {
    let bare = cycles_match_bare(
        "forkckpt",
        &[c_program("forkckpt").to_str().unwrap()],
        FORKED,
        &[
            ("step 60", "step 120"),
            ("step 220", "step 300"),
            ("step 400", "step 450"),
        ],
    );
    assert!(bare.contains("unexpected 0") && bare.contains("sigchld exact"));
    assert!(bare.contains("after all: ECHILD"));
}

/// The same with raw images (`--no-gzip`): the forked writer writes every
/// chunk with O_DIRECT, from its bounce buffer (docs/architecture.md,
/// Forked checkpointing), and the restarts come back exactly.
#[test]
fn forked_raw_images_restart_exactly() {
    let mut opts = FORKED.to_vec();
    opts.push("--no-gzip");
    let bare = cycles_match_bare(
        "forkckpt-raw",
        &[c_program("forkckpt").to_str().unwrap()],
        &opts,
        &[("step 60", "step 120"), ("step 220", "step 300")],
    );
    assert!(bare.contains("sigchld exact"));
}

/// While a (slowed down) forked writer writes the image the program goes
/// on; the generation commits when the writer is done, and a restart from
/// it gives the exact result (its shared memory as it was at the fork,
/// though the program changed it while the image was written).
#[test]
fn the_program_runs_while_its_image_is_written() {
    let prog = c_program("forkckpt");
    let bare = run_bare(&[prog.to_str().unwrap()]);
    let mut job = Job::new("forkckpt-runs").env("DMTCP_TEST_WRITE_DELAY_MS", "60");
    job.launch(&[prog.to_str().unwrap()], FORKED);
    job.wait_for("step 50");
    let before = last_step(&job);
    let t = Instant::now();
    job.checkpoint();
    let took = t.elapsed();
    let after = last_step(&job);
    // Tens of work items at 60 ms each (two threads): the round took a while, and the
    // program stepped on (a step is about 10 ms) meanwhile.
    assert!(
        took >= Duration::from_millis(400),
        "the checkpoint took only {took:?}: was the writer forked?"
    );
    assert!(
        after - before >= 20,
        "the program went from step {before} to {after} during a {took:?} checkpoint"
    );
    assert_eq!(committed_generations(&job.ckpt), vec![1]);
    job.wait_for(&format!("step {}", after + 30));
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare, "restart from a forked image differs");
}

/// A forked writer killed while it writes fails its round, with a message
/// naming it; the previous generation stays, and restarts.
#[test]
fn a_killed_writer_fails_the_round_and_the_previous_generation_restarts() {
    let prog = c_program("forkckpt");
    let bare = run_bare(&[prog.to_str().unwrap()]);
    let mut job = Job::new("forkckpt-killed").env("DMTCP_TEST_WRITE_DELAY_MS", "100");
    job.launch(&[prog.to_str().unwrap()], FORKED);
    job.wait_for("step 30");
    job.checkpoint();
    job.wait_for("step 80");
    let pid = app_pid(&job);
    // (The first round's writer may not have exited yet: the program ran
    // on during that round and may be past step 80 already.)
    let first = writer_children(pid);
    let bc = background_bc(&job);
    let w = wait_writer(pid, &first);
    // SAFETY: killing the writer child of our own job.
    unsafe { libc::kill(w, libc::SIGKILL) };
    let o = bc.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success(),
        "the round of a killed writer succeeded: {text}"
    );
    assert!(
        text.contains("forked image writer") && text.contains("previous generation is kept"),
        "unexpected message: {text}"
    );
    assert_eq!(committed_generations(&job.ckpt), vec![1]);
    assert!(
        dmtcp_common::generation::list(&job.ckpt)
            .iter()
            .all(|f| !f.partial),
        "the failed round left its directory"
    );
    // The program went on, unharmed, and nothing of the writer reached it.
    job.wait_for("step 150");
    assert!(!job.output().contains("UNEXPECTED"), "{}", job.output());
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "restart from the previous generation differs"
    );
}

/// A checkpoint asked for while the last round's forked writer still
/// writes waits for it, then takes a new generation (of the program as it
/// is then), which restarts.
#[test]
fn a_checkpoint_asked_for_while_the_writer_writes_waits() {
    let prog = c_program("forkckpt");
    let bare = run_bare(&[prog.to_str().unwrap()]);
    let mut job = Job::new("forkckpt-busy").env("DMTCP_TEST_WRITE_DELAY_MS", "60");
    job.launch(&[prog.to_str().unwrap()], FORKED);
    job.wait_for("step 40");
    let pid = app_pid(&job);
    let first = background_bc(&job);
    let w = wait_writer(pid, &[]);
    // The program runs again (its state is captured; a request before
    // that would join the round, the program's state being the same).
    job.wait_for(&format!("step {}", last_step(&job) + 5));
    assert!(
        writer_children(pid).contains(&w),
        "the writer was done before the second request: nothing tested"
    );
    let second = job.command(&["-bc"]);
    assert!(
        second.status.success(),
        "the second checkpoint failed: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "the first checkpoint failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(committed_generations(&job.ckpt), vec![1, 2]);
    job.wait_for(&format!("step {}", last_step(&job) + 30));
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "restart from the second generation differs"
    );
}

/// `-kc` with forked checkpointing: the processes are killed once their
/// state is captured, the answer comes when the (slowed) writer has
/// written and the generation is committed, and it restarts.
#[test]
fn checkpoint_and_kill_answers_when_the_writer_is_done() {
    let prog = c_program("forkckpt");
    let bare = run_bare(&[prog.to_str().unwrap()]);
    let mut job = Job::new("forkckpt-kc").env("DMTCP_TEST_WRITE_DELAY_MS", "60");
    job.launch(&[prog.to_str().unwrap()], FORKED);
    job.wait_for("step 100");
    let t = Instant::now();
    job.checkpoint_and_kill();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "-kc answered after {:?}: was the writer forked?",
        t.elapsed()
    );
    assert_eq!(committed_generations(&job.ckpt), vec![1]);
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare, "restart after -kc differs");
}

/// Memory marked MADV_DONTFORK (a child would not have it): the image is
/// written with the program suspended, with a warning saying why, and
/// restarts exactly.
#[test]
fn memory_a_child_would_not_have_is_written_without_forking() {
    let prog = c_program("forkckpt");
    let args = [prog.to_str().unwrap(), "600", "8", "dontfork"];
    let bare = run_bare(&args);
    let mut job = Job::new("forkckpt-dontfork").env("DMTCP_TEST_WRITE_DELAY_MS", "300");
    job.launch(&args, FORKED);
    job.wait_for("step 60");
    let t = Instant::now();
    job.checkpoint();
    // No forked writer: the test delay (forked writers only) is not seen.
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the checkpoint took {:?}",
        t.elapsed()
    );
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(
        err.contains("forked checkpointing is not possible here") && err.contains("MADV_DONTFORK"),
        "no warning: {err}"
    );
    job.wait_for("step 150");
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare, "restart differs");
}

/// Lines of the library's log files under `dir` that contain `pat`.
fn log_lines(dir: &std::path::Path, pat: &str) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                n += t.lines().filter(|l| l.contains(pat)).count();
            }
        }
    }
    n
}

/// Without any option, a process forks its image writer when the node has
/// room for the worst case (the writer needing as much memory again as
/// the process's anonymous memory, plus its own), counting the room other
/// forked writers of the node have reserved and not yet given back.
/// DMTCP_FORKED_CKPT_MEM caps that room at 200 MiB here: of two processes
/// of 48 MiB (about 112 MiB each, with the writer's own) and their shell
/// (about 64 MiB), the shell and one of the two fork, whichever comes
/// first; the other is written with the program suspended, with a warning
/// that says why. (Every process decides before it is suspended, and
/// every writer lives until the generation is committed, so the
/// reservations of one round always meet.) Both rounds go so, and the job
/// restarts from the second generation with every byte of both processes'
/// memory checked.
#[test]
fn forked_by_default_as_far_as_the_node_has_room() {
    let prog = c_program("incrmem");
    let p = prog.to_str().unwrap();
    let job = Job::new("forkmem");
    let (logs, node) = (job.dir.join("logs"), job.dir.join("node"));
    let mut job = job
        .env("DMTCP_LOG", "info")
        .env("DMTCP_TMPDIR", logs.to_str().unwrap())
        .env("DMTCP_NODE_STREAMS_DIR", node.to_str().unwrap())
        .env("DMTCP_FORKED_CKPT_MEM", "200");
    let (ca, cb) = (job.dir.join("ctl.a"), job.dir.join("ctl.b"));
    std::fs::write(&ca, "0").unwrap();
    std::fs::write(&cb, "0").unwrap();
    let script = format!(
        "{p} {} 48 10 > a.out & {p} {} 48 10 > b.out & wait",
        ca.display(),
        cb.display()
    );
    job.launch(&["sh", "-c", &script], &[]);
    let dir = job.dir.clone();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let wait_both = |pat: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(read("a.out").contains(pat) && read("b.out").contains(pat)) {
            assert!(Instant::now() < deadline, "no {pat:?}{}", job.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_both("phase 0 done");
    job.wait_running(3);
    const FORKED_LINE: &str = "image written by forked writer";
    const REFUSED: &str = "forked checkpointing is not safe now";
    for round in 1..=2 {
        job.checkpoint();
        assert_eq!(
            (log_lines(&logs, FORKED_LINE), log_lines(&logs, REFUSED)),
            (2 * round, round),
            "round {round}: the shell and one process forked, one refused{}",
            job.diag()
        );
        if round == 1 {
            // The first round's writers gone (they give their room back
            // as they exit, just after the commit).
            let deadline = Instant::now() + Duration::from_secs(30);
            while job
                .peer_pids()
                .iter()
                .any(|&p| !writer_children(p).is_empty())
            {
                assert!(Instant::now() < deadline, "writers left{}", job.diag());
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(&ca, "1").unwrap();
            std::fs::write(&cb, "1").unwrap();
            wait_both("phase 1 done");
        }
    }
    // Said on stderr once per process (its later refusals go to the log
    // only), with the numbers it decided by.
    let err = read("err.txt");
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(REFUSED))
        .filter_map(|l| l.split(']').next())
        .collect();
    let mut distinct = warned.clone();
    distinct.dedup();
    distinct.sort();
    distinct.dedup();
    assert!(
        !warned.is_empty() && distinct.len() == warned.len(),
        "{err}"
    );
    assert!(
        err.contains("DMTCP_FORKED_CKPT_MEM leaves room for 200 MiB"),
        "{err}"
    );
    job.kill();
    job.restart();
    job.wait_running(3);
    std::fs::write(&ca, "end").unwrap();
    std::fs::write(&cb, "end").unwrap();
    job.wait_success();
    for f in ["a.out", "b.out"] {
        let out = read(f);
        assert!(
            out.contains("OK phase 1\n") && !out.contains("BAD"),
            "{f}: {out}{}",
            job.diag()
        );
    }
}
