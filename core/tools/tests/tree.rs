//! Process trees across checkpoint/restart: forked children are
//! checkpointed with their parent and come back with the same pids, parent,
//! process group and session; zombies stay waitable; exec keeps a process in
//! the computation; checkpoints taken while processes fork, exec and exit
//! complete. Each test compares the final output with a bare run.

mod common;
use common::*;

/// The tree under `sh -c`, both writing to one file in append mode.
fn tree_cmd(prog: &str, steps: u32, extra: &str) -> String {
    format!("{prog} {steps} setsid {extra} >> tree.txt; echo sh-exit $? >> tree.txt")
}

#[test]
fn forked_tree_keeps_its_ids_through_three_restarts() {
    forked_tree("forktree", true);
}

/// The same without a pid namespace: the processes get new pids, and the
/// program keeps seeing the old ones (getpid, getppid, getpgid, getsid,
/// waitpid of a child and of a zombie, kill).
#[test]
fn forked_tree_keeps_its_ids_without_a_pid_namespace() {
    forked_tree("forktree-newpids", false);
}

fn forked_tree(name: &str, pidns: bool) {
    let prog = c_program("forktree");
    let p = prog.to_str().unwrap();
    let extra = if pidns { "" } else { "notid" };
    let bare = run_bare(&[p, "3", "setsid", extra]);
    let worker_exit = bare
        .lines()
        .find(|l| l.starts_with("worker exit"))
        .expect("bare worker line")
        .to_string();
    let steps = 60;
    let mut job = Job::new(name);
    if !pidns {
        job = job.env("DMTCP_RESTART_PIDNS", "0");
    }
    let cmd = tree_cmd(p, steps, extra);
    job.launch(&["sh", "-c", &cmd], &[]);
    let tree = job.dir.join("tree.txt");
    let wait_tree = |pat: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string(&tree)
            .unwrap_or_default()
            .contains(pat)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {pat:?} in tree.txt"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    for (mark, after) in [
        ("step 5\n", "step 8\n"),
        ("step 15\n", "step 18\n"),
        ("step 25\n", "step 28\n"),
    ] {
        wait_tree(mark);
        // The shell, the parent and its two running children.
        let listed = job.command(&["-l"]);
        assert_eq!(
            job.peer_pids().len(),
            4,
            "processes under checkpoint control: {}{}",
            String::from_utf8_lossy(&listed.stdout),
            String::from_utf8_lossy(&listed.stderr)
        );
        job.checkpoint();
        assert_eq!(
            job.images().len(),
            4,
            "one image per process: {:?}",
            job.images()
        );
        wait_tree(after);
        job.kill();
        job.restart();
    }
    job.wait_success();
    let out = std::fs::read_to_string(&tree).unwrap();
    // The worker's exit code is its checksum of 2*STEPS rounds: compare with
    // a bare run of the same length.
    let bare_long = run_bare(&[p, &steps.to_string(), "setsid", extra]);
    let expect_worker = bare_long
        .lines()
        .find(|l| l.starts_with("worker exit"))
        .unwrap();
    assert_ne!(
        expect_worker, worker_exit,
        "the checksum does not depend on the length"
    );
    for want in [
        expect_worker,
        "waiter exit 7",
        "zombie exit 42",
        "parent ids same",
        "done",
        "sh-exit 0",
    ] {
        assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
    }
    let steps_seen: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps_seen.last(), Some(&"step 59"), "{out}");
}

#[test]
fn pid_is_the_launch_pid_after_restart() {
    let prog = c_program("showpid");
    let mut job = Job::new("samepid");
    job.launch(&[prog.to_str().unwrap()], &[]);
    let launch_pid = job.proc.as_ref().unwrap().id();
    job.wait_for("step 3 ");
    job.checkpoint_and_kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(out.contains("RESULT done"), "{out}");
    // The program's parent is this test (dmtcp_launch execs the program).
    let my_pid = std::process::id();
    for line in out.lines().filter(|l| l.starts_with("step ")) {
        assert!(
            line.ends_with(&format!(" pid={launch_pid}")),
            "getpid() changed across the restart: {line}\n{out}"
        );
        assert!(
            line.contains(&format!(" ppid={my_pid} ")),
            "getppid() changed across the restart: {line}\n{out}"
        );
    }
}

#[test]
fn checkpoints_during_a_fork_exec_exit_loop() {
    let prog = c_program("forkloop");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "150"]);
    let mut job = Job::new("forkloop");
    job.launch(&[p, "150"], &[]);
    job.wait_for("round 10 ");
    for _ in 0..5 {
        job.checkpoint();
    }
    job.wait_for("round 60 ");
    job.checkpoint();
    job.wait_for("round 70 ");
    job.kill();
    job.restart();
    job.wait_for("round 100 ");
    job.checkpoint();
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    let result = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("RESULT"))
            .map(str::to_string)
    };
    assert_eq!(result(&out), result(&bare), "{out}");
    assert!(result(&bare).is_some());
}

#[test]
fn timers_and_pending_signals_survive_restart() {
    let prog = c_program("timers");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    assert!(
        bare.contains("usr1 pending yes") && bare.contains("thread hup pending yes"),
        "{bare}"
    );
    let mut job = Job::new("timers");
    job.launch(&[p], &[]);
    for k in 1..=3 {
        job.wait_for(&format!("step {k}\n"));
        job.checkpoint();
        job.kill();
        job.restart();
    }
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "restarted timers program differs from a bare run"
    );
}

/// Runs `cmd` with bash bare and under checkpoint control (a
/// checkpoint-kill-restart cycle at each mark of `file`), and compares
/// `file`, which one process of the job writes (lines written after a
/// checkpoint are written again after the restart, at the same offsets).
/// Returns the job (its directory is removed when it is dropped).
fn shell_job_cycles(name: &str, cmd: &str, file: &str, marks: &[&str]) -> Job {
    shell_job_cycles_in("bash", name, cmd, file, marks)
}

fn shell_job_cycles_in(shell: &str, name: &str, cmd: &str, file: &str, marks: &[&str]) -> Job {
    let bare_dir = std::env::temp_dir().join(format!("dmtcp-bare-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&bare_dir).unwrap();
    let st = std::process::Command::new(shell)
        .args(["-c", cmd])
        .current_dir(&bare_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let bare = std::fs::read_to_string(bare_dir.join(file)).unwrap();
    let _ = std::fs::remove_dir_all(&bare_dir);
    let mut job = Job::new(name);
    job.launch(&[shell, "-c", cmd], &[]);
    let path = job.dir.join(file);
    for mark in marks {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains(mark)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {mark:?} in {file}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        job.checkpoint();
        job.kill();
        job.restart();
    }
    job.wait_success();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        bare,
        "{name}: output differs from a bare run"
    );
    job
}

#[test]
fn shell_pipeline_of_three_processes() {
    // A producer loop (forking `sleep` every line), sed (unbuffered), and a consumer loop
    // that writes each line as it comes (bash builtins do not buffer).
    let cmd = r#"for i in $(seq 1 150); do echo "line $i"; sleep 0.02; done | sed -u "s/line/LINE/" | while read -r l; do n=$((n+1)); s=$((s+${#l})); echo "$n $s $l"; done > pipe.txt; echo pipeline-exit $? > exit.txt"#;
    let job = shell_job_cycles("pipeline", cmd, "pipe.txt", &["\n20 ", "\n60 ", "\n100 "]);
    assert_eq!(
        std::fs::read_to_string(job.dir.join("exit.txt")).unwrap(),
        "pipeline-exit 0\n"
    );
}

/// The same pipeline run by dash.
#[test]
fn dash_pipeline_of_three_processes() {
    let cmd = r#"for i in $(seq 1 150); do echo "line $i"; sleep 0.02; done | sed -u "s/line/LINE/" | while read -r l; do n=$((n+1)); s=$((s+${#l})); echo "$n $s $l"; done > pipe.txt; echo pipeline-exit $? > exit.txt"#;
    let job = shell_job_cycles_in(
        "dash",
        "dash-pipeline",
        cmd,
        "pipe.txt",
        &["\n20 ", "\n60 ", "\n100 "],
    );
    assert_eq!(
        std::fs::read_to_string(job.dir.join("exit.txt")).unwrap(),
        "pipeline-exit 0\n"
    );
}

/// perl: a forked child writing into a pipe its parent reads.
#[test]
fn perl_fork_and_pipe() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/pipe.pl");
    let cmd = format!("perl {} 150 > perl.txt", script.display());
    shell_job_cycles("perl", &cmd, "perl.txt", &["\n20 ", "\n60 ", "\n100 "]);
}

#[test]
fn python_thread_pool_and_subprocesses() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/pool.py");
    let cmd = format!("python3 {} 40 > py.txt", script.display());
    shell_job_cycles(
        "pypool",
        &cmd,
        "py.txt",
        &["step 8\n", "step 18\n", "step 28\n"],
    );
}

/// Open files inherited across fork share one offset: after three
/// restarts the three processes still read each record of a shared input
/// exactly once and append nothing over each other in a shared output
/// (neither opened with O_APPEND).
#[test]
fn files_shared_between_processes_keep_one_offset() {
    let prog = c_program("sharedfile");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("sharedfile");
    job.launch(&[p, "1500"], &[]);
    let outdat = job.dir.join("out.dat");
    let lines = || {
        std::fs::read_to_string(&outdat)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for (mark, after) in [(200, 300), (600, 700), (1000, 1100)] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while lines() < mark {
            assert!(
                std::time::Instant::now() < deadline,
                "out.dat stuck at {} lines",
                lines()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        job.checkpoint();
        while lines() < after {
            assert!(
                std::time::Instant::now() < deadline,
                "out.dat stuck at {} lines",
                lines()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        job.kill();
        job.restart();
    }
    job.wait_success();
    assert_eq!(job.output(), "records 1500 lines 1500 bad 0 duplicates 0 missing 0 all-processes-read 1 separate-opens 1\n");
}

/// Real-time signals queued several times for the process come back as
/// many times, in order, with their values, through three restarts.
#[test]
fn queued_realtime_signals_keep_count_and_values() {
    let prog = c_program("rtqueue");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "rtqueue",
        &[p, "40"],
        &[],
        &[
            ("step 5\n", "step 8\n"),
            ("step 15\n", "step 18\n"),
            ("step 25\n", "step 28\n"),
        ],
    );
    assert!(
        bare.contains(
            "thread C value 202 queued\nthread D value 0 tkill\nthread D value 0 tkill\n"
        ),
        "{bare}"
    );
    assert!(
        bare.contains("A value 104 queued\nB value 0 kill\nB value 0 kill\ndone\n"),
        "{bare}"
    );
}

/// A POSIX timer that runs its callback on a thread (SIGEV_THREAD) keeps
/// firing through three restarts.
#[test]
fn sigev_thread_timer_keeps_firing() {
    let prog = c_program("evthread");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "evthread",
        &[p, "60"],
        &[],
        &[
            ("step 10\n", "step 13\n"),
            ("step 25\n", "step 28\n"),
            ("step 40\n", "step 43\n"),
        ],
    );
    assert!(bare.ends_with("timer kept firing\n"), "{bare}");
}

/// vfork+exec, posix_spawn, system(), popen() and daemons (double fork,
/// setsid) in a loop through three restarts: every status and output adds
/// up as in a bare run, and every daemon reports.
#[test]
fn every_way_to_start_a_process() {
    let prog = c_program("spawnkinds");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "spawnkinds",
        &[p, "60"],
        &[],
        &[
            ("round 8 ", "round 12 "),
            ("round 25 ", "round 29 "),
            ("round 40 ", "round 44 "),
        ],
    );
    assert!(bare.ends_with("daemons 60\n"), "{bare}");
}

/// An open file passed to another process with SCM_RIGHTS keeps one offset
/// for both through three restarts: every record is read exactly once.
#[test]
fn file_passed_with_scm_rights_keeps_one_offset() {
    let prog = c_program("scmrights");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("scmrights");
    job.launch(&[p, "1200"], &[]);
    for (mark, after) in [
        ("read 100\n", "read 150\n"),
        ("read 200\n", "read 250\n"),
        ("read 300\n", "read 350\n"),
    ] {
        job.cycle(mark, after);
    }
    job.wait_success();
    let out = job.output();
    assert!(
        out.ends_with("records 1200 read once 1200 more than once 0 both read 1 child exit 0\n"),
        "{out}"
    );
}

/// A periodic interval timer whose signal is pending at checkpoint time
/// reads as disarmed then; it must still be periodic after restarts.
#[test]
fn periodic_itimer_with_its_signal_pending_survives_restart() {
    let prog = c_program("itimerpending");
    let out = cycles_match_bare(
        "itimerpending",
        &[prog.to_str().unwrap()],
        &[],
        &[("tick 1\n", "tick 2\n"), ("tick 3\n", "tick 4\n")],
    );
    assert!(
        out.ends_with("alarms after unblocking: 20 or more\n"),
        "{out}"
    );
}

/// Without a pid namespace (here turned off with DMTCP_RESTART_PIDNS=0; on
/// machines without unprivileged user namespaces, or clone3 with set_tid,
/// or a /proc that can be mounted, dmtcp_restart chooses this itself) a
/// job still comes back whole: the same tree, its pipe, its socketpair and
/// its shared memory, under new pids, and dmtcp_restart says so.
#[test]
fn job_restarts_whole_without_a_pid_namespace() {
    let prog = c_program("ipcpair");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "150"]);
    let mut job = Job::new("newpids").env("DMTCP_RESTART_PIDNS", "0");
    job.launch(&[p, "150"], &[]);
    for (mark, after) in [("round 30 ", "round 40 "), ("round 80 ", "round 90 ")] {
        job.wait_for(mark);
        job.checkpoint();
        assert_eq!(job.images().len(), 2, "parent and child");
        job.wait_for(after);
        job.kill();
        job.restart();
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default();
    assert!(
        err.contains("restarting without a pid namespace (DMTCP_RESTART_PIDNS=0)"),
        "{err}"
    );
}

/// Start `dmtcp_restart` of the job's images under a seccomp filter that
/// makes `deny` fail (see tests/c/nsdeny.c).
fn restart_denied(job: &mut Job, deny: &str) {
    let mut c = std::process::Command::new(c_program("nsdeny"));
    c.arg(deny)
        .arg("--")
        .arg(bin_dir().join("dmtcp_restart"))
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()]);
    c.args(job.images())
        .current_dir(&job.dir)
        .stdin(std::process::Stdio::null());
    c.stdout(std::fs::File::create(job.dir.join("restart.out")).unwrap());
    c.stderr(std::fs::File::create(job.dir.join("restart.err")).unwrap());
    job.proc = Some(c.spawn().unwrap());
}

/// Where unprivileged user namespaces are off (unshare refused) or clone3
/// is missing (kernels before 5.3; here both made to fail with seccomp),
/// dmtcp_restart finds out before it commits to a namespace, says why, and
/// brings the job back whole under new pids.
#[test]
fn restart_without_user_namespaces_or_clone3() {
    let prog = c_program("ipcpair");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "120"]);
    let mut job = Job::new("nsdeny");
    job.launch(&[p, "120"], &[]);
    for (deny, mark, after, why) in [
        (
            "unshare",
            "round 30 ",
            "round 40 ",
            "cannot create a pid namespace",
        ),
        (
            "clone3",
            "round 70 ",
            "round 80 ",
            "clone3 cannot choose pids here",
        ),
    ] {
        job.wait_for(mark);
        job.checkpoint();
        job.wait_for(after);
        job.kill();
        restart_denied(&mut job, deny);
        job.wait_for(&format!(
            "round {} ",
            mark.trim_start_matches("round ")
                .trim()
                .parse::<u32>()
                .unwrap()
                + 20
        ));
        let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default();
        assert!(
            err.contains("restarting without a pid namespace") && err.contains(why),
            "{deny}: {err}"
        );
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// Thread and process ids the program learnt are still its own after
/// restarts without a pid namespace, where every thread gets a new tid:
/// gettid and syscall(SYS_gettid), tgkill to a noted tid (the right
/// thread gets the signal), /proc/<pid>/task/<tid>/comm and
/// /proc/<pid>/status, stat, access, opendir, readlink, sched affinity.
/// Three restarts: without a namespace, in one (the threads get the tids
/// the program knows back for real), and without again.
#[test]
fn thread_ids_and_proc_paths_survive_restarts_without_a_pid_namespace() {
    let prog = c_program("vtid");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "90"]);
    assert!(bare.ends_with("RESULT workers ok\n"), "{bare}");
    let mut job = Job::new("vtid");
    job.launch(&[p, "90"], &[]);
    for (pidns, mark, after) in [
        ("0", "step 10 ", "step 14 "),
        ("1", "step 35 ", "step 39 "),
        ("0", "step 60 ", "step 64 "),
    ] {
        job = job.env("DMTCP_RESTART_PIDNS", pidns);
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "ids after restarts without a pid namespace"
    );
}

/// A checkpointed shell runs `dmtcp_command -bc` and goes on. The tool
/// loads the library (the shell's `LD_PRELOAD`) but never joins the
/// computation: the round must not wait for it as for a new program that
/// has yet to join (it waited 10 s and warned, with the tool waiting for
/// the round). After a restart the shell goes on to its end.
#[test]
fn a_checkpoint_requested_by_the_program_through_dmtcp_command() {
    let mut job = Job::new("tool-child");
    let cmd = format!(
        "{} -h 127.0.0.1 -p {} -bc; echo bc $?; i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo step $i; sleep 0.05; done",
        bin_dir().join("dmtcp_command").display(),
        job.port
    );
    job.launch(&["bash", "-c", &cmd], &[]);
    job.wait_for("bc 0\n");
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(
        !err.contains("did not join"),
        "the round waited for dmtcp_command: {err}"
    );
    job.wait_for("step 5\n");
    job.checkpoint();
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(out.ends_with("step 40\n"), "{}", job.diag());
}
