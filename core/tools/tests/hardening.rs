//! Reproductions of engine hangs: programs that block or eat the checkpoint
//! signal, wrappers that take library locks on user threads, concurrent
//! fork and vfork, too many threads, and shared memory this process never
//! touched. Each test is bounded in time: a checkpoint that does not end
//! within its limit fails the test (with the state of every thread of the
//! job: kernel wait channel, signal masks, kernel stack, gdb backtrace),
//! and the job is killed. Each test also checks the program's own result
//! after a checkpoint-kill-restart against a bare run.
//!
//! The races (section 3 to 5) are hit with a probability per checkpoint:
//! HARD_ROUNDS=n in the environment changes the number of checkpoints the
//! stress tests take in a row (ROUNDS by default).

mod common;
use common::stuck::stuck_report_of;
use common::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};
use testrig::procs::{kill_group_of, proc_start};

/// How long one checkpoint of these small programs may take.
const CKPT_LIMIT: Duration = Duration::from_secs(10);
/// How long a program may take to end after its restart.
const END_LIMIT: Duration = Duration::from_secs(30);
/// Checkpoints in a row in the stress tests.
const ROUNDS: usize = 100;

/// A job whose whole process group is SIGKILLed when the test ends, even by
/// a panic: a process stuck in a checkpoint does not obey the coordinator's
/// kill, and its forked children would outlive the test.
struct Hard {
    job: Job,
    pgid: i32,
    /// The launched leader's start time ([`proc_start`]).
    pgid_start: Option<u64>,
    name: String,
}

impl Hard {
    fn new(name: &str) -> Hard {
        Hard {
            job: Job::new(name),
            pgid: 0,
            pgid_start: None,
            name: name.to_string(),
        }
    }

    fn launch(&mut self, args: &[&str]) {
        self.job.launch(args, &[]);
        self.pgid = self.job.proc.as_ref().map(|p| p.id() as i32).unwrap_or(0);
        self.pgid_start = proc_start(self.pgid as u32);
    }

    fn touch(&self, f: &str) {
        std::fs::write(self.job.dir.join(f), b"").unwrap();
    }

    /// Kill the job and fail with `msg`.
    fn fail(&mut self, msg: String) -> ! {
        let files = self.files();
        self.reap();
        panic!("{}: {msg}{files}", self.name);
    }

    fn reap(&mut self) {
        self.kill_group();
        self.job.kill();
    }

    /// SIGKILL the launched job's process group while its leader is the
    /// process launched (see [`kill_group_of`]).
    fn kill_group(&mut self) {
        if self.pgid > 0 {
            kill_group_of(self.pgid as u32, self.pgid_start);
        }
    }

    fn files(&self) -> String {
        let r = |f: &str| std::fs::read_to_string(self.job.dir.join(f)).unwrap_or_default();
        let tail = |s: String| {
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "\n--- out.txt (last lines)\n{}\n--- err.txt\n{}\n--- restart.err\n{}\n--- coord.err\n{}",
            tail(r("out.txt")),
            tail(r("err.txt")),
            tail(r("restart.err")),
            tail(r("coord.err"))
        )
    }

    /// Wait until out.txt contains `pat`, at most `limit`.
    fn wait_for(&mut self, pat: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.job.output().contains(pat) {
            if Instant::now() > deadline {
                let report = stuck_report(&self.job);
                self.fail(format!(
                    "timed out waiting for {pat:?} in the output\n{report}"
                ));
            }
            if let Some(p) = self.job.proc.as_mut() {
                if let Ok(Some(st)) = p.try_wait() {
                    self.fail(format!("the job ended ({st}) before {pat:?} appeared"));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `dmtcp_command -bc` with a deadline: Ok(time taken) or Err(why),
    /// with the state of the job's threads when it hung.
    fn try_checkpoint(&self, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut c = tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &self.job.port.to_string(), "-bc"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dmtcp_command");
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                let mut err = String::new();
                let _ = c.stderr.take().map(|mut e| e.read_to_string(&mut err));
                return if st.success() {
                    Ok(t0.elapsed())
                } else {
                    Err(format!("dmtcp_command -bc failed ({st}): {}", err.trim()))
                };
            }
            if t0.elapsed() > limit {
                let report = stuck_report(&self.job);
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("checkpoint did not complete within {limit:?} (dmtcp_command -bc still waiting)\n{report}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A checkpoint that must complete within `limit`.
    fn checkpoint(&mut self, limit: Duration, what: &str) -> Duration {
        match self.try_checkpoint(limit) {
            Ok(d) => d,
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    /// SIGKILL the job, restart it from its newest images.
    fn kill_and_restart(&mut self) {
        self.reap();
        self.pgid = 0;
        self.job.restart();
    }

    /// Wait for the (restarted) job to end successfully within END_LIMIT.
    fn wait_success(&mut self) {
        let mut p = self.job.proc.take().expect("no running process");
        let deadline = Instant::now() + END_LIMIT;
        loop {
            if let Ok(Some(st)) = p.try_wait() {
                if !st.success() {
                    self.fail(format!("the job ended with {st}"));
                }
                return;
            }
            if Instant::now() > deadline {
                let report = stuck_report_of(&[p.id() as i32]);
                let _ = p.kill();
                let _ = p.wait();
                self.fail(format!(
                    "the job did not end within {END_LIMIT:?}\n{report}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Compare out.txt with a bare run's output.
    fn assert_output(&mut self, bare: &str) {
        let out = self.job.output();
        if out != bare {
            self.fail(format!("output differs from a bare run\n--- bare\n{bare}\n--- under checkpoint control\n{out}"));
        }
    }
}

impl Drop for Hard {
    fn drop(&mut self) {
        self.kill_group();
    }
}

fn stuck_report(job: &Job) -> String {
    match job.proc.as_ref() {
        Some(p) => stuck_report_of(&[p.id() as i32]),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------
// Shapes of test.

fn bare_of(prog: &str, args: &[&str]) -> String {
    let p = c_program(prog);
    let mut full = vec![p.to_str().unwrap()];
    full.extend_from_slice(args);
    run_bare(&full)
}

/// One checkpoint at `mark` (bounded), run on to `after`, kill, restart,
/// end: the output must equal a bare run's.
fn one_cycle(name: &str, prog: &str, args: &[&str], mark: &str, after: &str) {
    let bare = bare_of(prog, args);
    assert!(bare.contains("RESULT"), "bare run gave no result: {bare}");
    let p = c_program(prog);
    let mut full = vec![p.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut h = Hard::new(name);
    h.launch(&full);
    h.wait_for(mark, Duration::from_secs(30));
    h.checkpoint(CKPT_LIMIT, "the checkpoint");
    h.wait_for(after, Duration::from_secs(30));
    h.kill_and_restart();
    h.wait_success();
    h.assert_output(&bare);
}

/// A program that loops until a file "stop" appears: ROUNDS checkpoints in
/// a row while it runs (each bounded), then a kill and a restart, a little
/// more running, "stop", and the output must equal a bare run's (which
/// stops by itself after a while). With `quiesce`, the program is asked to
/// hold still (file "pause", answered by a file "paused") for the
/// checkpoint it is restarted from, and let go after the restart.
fn stress(name: &str, job_args: &[&str], bare_args: &[&str], quiesce: bool) {
    let bare = run_bare(bare_args);
    assert!(
        bare.contains("RESULT") && !bare.contains("BAD"),
        "bare run: {bare}"
    );
    let mut h = Hard::new(name);
    h.launch(job_args);
    h.wait_for("started", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    // HARD_ROUNDS=n: more (or fewer) checkpoints, to measure how often one hangs.
    let rounds = std::env::var("HARD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    for i in 0..rounds {
        let d = h.checkpoint(CKPT_LIMIT, &format!("checkpoint {} of {rounds}", i + 1));
        slowest = slowest.max(d);
        std::thread::sleep(Duration::from_millis(30));
    }
    eprintln!("{name}: {rounds} checkpoints, slowest {slowest:?}");
    if quiesce {
        h.touch("pause");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h.job.dir.join("paused").exists() {
            if Instant::now() > deadline {
                h.fail("the program did not pause".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h.checkpoint(CKPT_LIMIT, "the checkpoint while paused");
    }
    h.kill_and_restart();
    if quiesce {
        let _ = std::fs::remove_file(h.job.dir.join("pause"));
    }
    std::thread::sleep(Duration::from_millis(500));
    h.touch("stop");
    h.wait_success();
    h.assert_output(&bare);
}

/// The same for a C program of tests/c taking MAX_SECS first.
fn stress_c(name: &str, prog: &str, rest: &[&str]) {
    stress_c_q(name, prog, rest, false);
}

fn stress_c_q(name: &str, prog: &str, rest: &[&str], quiesce: bool) {
    let p = c_program(prog);
    let p = p.to_str().unwrap();
    let mut job = vec![p, "120"];
    job.extend_from_slice(rest);
    let mut bare = vec![p, "1.5"];
    bare.extend_from_slice(rest);
    stress(name, &job, &bare, quiesce);
}

// ---------------------------------------------------------------------
// 1. A thread waiting for every signal, another computing.

#[test]
fn sigwait_on_every_signal() {
    one_cycle(
        "sigwait",
        "hard_sigwait",
        &["sigwait"],
        "step 5\n",
        "step 8\n",
    );
}

#[test]
fn sigwaitinfo_on_every_signal() {
    one_cycle(
        "sigwaitinfo",
        "hard_sigwait",
        &["sigwaitinfo"],
        "step 5\n",
        "step 8\n",
    );
}

#[test]
fn sigtimedwait_on_every_signal() {
    one_cycle(
        "sigtimedwait",
        "hard_sigwait",
        &["sigtimedwait"],
        "step 5\n",
        "step 8\n",
    );
}

#[test]
fn sigsuspend_blocking_every_signal() {
    one_cycle(
        "sigsuspend",
        "hard_sigwait",
        &["sigsuspend"],
        "step 5\n",
        "step 8\n",
    );
}

// 2. Long waits with a signal mask that blocks everything.

#[test]
fn ppoll_with_a_mask_blocking_everything() {
    one_cycle("ppoll", "hard_pmask", &["ppoll"], "step 5\n", "step 8\n");
}

#[test]
fn pselect_with_a_mask_blocking_everything() {
    one_cycle(
        "pselect",
        "hard_pmask",
        &["pselect"],
        "step 5\n",
        "step 8\n",
    );
}

#[test]
fn epoll_pwait_with_a_mask_blocking_everything() {
    one_cycle(
        "epoll_pwait",
        "hard_pmask",
        &["epoll_pwait"],
        "step 5\n",
        "step 8\n",
    );
}

// 3. Wrappers used in tight loops while checkpoints come one after another.

/// Removes the SysV objects keyed `base..base+n` (what a killed job left).
struct SysvKeys(i32, i32);

impl Drop for SysvKeys {
    fn drop(&mut self) {
        for (file, sem) in [("/proc/sysvipc/sem", true), ("/proc/sysvipc/msg", false)] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for l in text.lines().skip(1) {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(Ok(key)), Some(Ok(id))) = (
                    f.first().map(|k| k.parse::<i64>()),
                    f.get(1).map(|i| i.parse::<i32>()),
                ) else {
                    continue;
                };
                let key = key as i32;
                if key >= self.0 && key < self.0 + self.1 {
                    // SAFETY: removing an IPC object of our own test by id.
                    unsafe {
                        if sem {
                            libc::semctl(id, 0, libc::IPC_RMID);
                        } else {
                            libc::msgctl(id, libc::IPC_RMID, core::ptr::null_mut());
                        }
                    }
                }
            }
        }
    }
}

/// Two threads in semop on one semaphore (a lock), eight more each on one of
/// their own (never waiting), a producer in msgsnd, a consumer in msgrcv
/// (the wrappers take the id table's lock on the calling thread).
#[test]
fn sysv_semop_msgsnd_msgrcv_loops_under_repeated_checkpoints() {
    // Keys of this test run alone (several runs may share the machine).
    let base = 0x4a00_0000 | ((std::process::id() as i32 & 0xffff) << 4);
    let _cleanup = SysvKeys(base, 2);
    let key = format!("{base:#x}");
    stress_c("sysv", "hard_sysv", &[&key, "8"]);
}

/// Eight threads calling inotify_add_watch on files of their own (the
/// wrapper allocates the path and takes the watch table's lock).
#[test]
fn inotify_add_watch_loops_under_repeated_checkpoints() {
    stress_c("inotify", "hard_inotify", &["8"]);
}

/// Eight threads creating and deleting SIGEV_THREAD timers (the wrapper
/// allocates on the calling thread, in the library's heap; at most 2
/// million, which the wrapper never frees). The threads hold no timer at the checkpoint the job is
/// restarted from (see the next test for one that does).
#[test]
fn timer_create_delete_loops_under_repeated_checkpoints() {
    stress_c_q("timers", "hard_timers", &["2000000", "8"], true);
}

/// A live timer whose id is large (120000 timers were made and deleted
/// before it) must come back at restart.
#[test]
fn posix_timer_with_a_large_id_survives_restart() {
    one_cycle(
        "timerid",
        "hard_timerid",
        &["120000"],
        "step 5\n",
        "step 8\n",
    );
}

// 4. Threads forking at the same time.

/// Three threads forking at once, children exiting at once, parents
/// waiting for them.
#[test]
fn concurrent_forks_under_repeated_checkpoints() {
    stress_c("forks", "hard_forks", &["3"]);
}

// 5. vfork + exec in a tight loop.

/// The loop holds still (no child alive) for the checkpoint the job is
/// restarted from: restarted from a checkpoint taken right after a vfork,
/// the parent's waitpid may fail with ECHILD (the exec'd child can miss
/// that checkpoint), another matter than the hang looked for here.
#[test]
fn vfork_execl_loop_under_repeated_checkpoints() {
    stress_c_q("vfork-execl", "hard_vfork", &["execl"], true);
}

#[test]
fn vfork_execve_loop_under_repeated_checkpoints() {
    stress_c_q("vfork-execve", "hard_vfork", &["execve"], true);
}

/// Python's subprocess uses vfork: without `env` its child calls execv,
/// with `env` execve (both are tried, in turn).
#[test]
fn python_subprocess_run_loop_under_repeated_checkpoints() {
    // The interpreter itself, not a wrapper script that would exec it.
    let py = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let py = String::from_utf8_lossy(&py.stdout).trim().to_string();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hard-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("subprocs.py");
    std::fs::write(
        &script,
        "import os, subprocess, sys, time\n\
         print('started', flush=True)\n\
         n = bad = 0\n\
         env = dict(os.environ)\n\
         t0 = time.monotonic()\n\
         while not os.path.exists('stop') and time.monotonic() - t0 < float(sys.argv[1]):\n\
         \x20   if os.path.exists('pause'):\n\
         \x20       open('paused', 'w').close()\n\
         \x20       while os.path.exists('pause') and not os.path.exists('stop'): time.sleep(0.02)\n\
         \x20       os.unlink('paused')\n\
         \x20       continue\n\
         \x20   r = subprocess.run(['/bin/true'], env=env if n % 2 else None)\n\
         \x20   n += 1\n\
         \x20   bad += r.returncode != 0\n\
         print('RESULT python subprocess', 'ok' if bad == 0 and n > 0 else 'BAD %d of %d' % (bad, n), flush=True)\n",
    )
    .unwrap();
    let s = script.to_str().unwrap();
    stress(
        "python-subprocess",
        &[&py, s, "120"],
        &[&py, s, "1.5"],
        true,
    );
}

// 6. More threads than the engine has slots for.

/// A checkpoint of a process with more threads than threads::MAX_THREADS
/// allows (4096 slots, of which the library's own threads take 3 to 5: at
/// most 4093 user threads on a 2-CPU machine) may succeed or fail, but it
/// must end (dmtcp_command answers), and the job must go on and be
/// checkpointed and restarted afterwards.
fn too_many_threads(name: &str, with_child: bool) {
    let n = "4100";
    let child = if with_child { "1" } else { "0" };
    let bare = bare_of("hard_manythreads", &[n, child, "auto"]);
    let p = c_program("hard_manythreads");
    let mut h = Hard::new(name);
    h.launch(&[p.to_str().unwrap(), n, child]);
    h.wait_for(&format!("ready {n}\n"), Duration::from_secs(60));
    let first = h.try_checkpoint(Duration::from_secs(20));
    eprintln!(
        "checkpoint with {n} threads: {}",
        first.as_ref().map_or_else(
            |e| e.lines().next().unwrap_or("").to_string(),
            |d| format!("ok in {d:?}")
        )
    );
    if let Err(e) = &first {
        if e.contains("did not complete") {
            h.fail(format!("checkpoint with {n} threads: {e}"));
        }
    }
    h.touch("go");
    h.wait_for("step 3\n", Duration::from_secs(60));
    h.checkpoint(CKPT_LIMIT, "the checkpoint after the threads ended");
    h.wait_for("step 6\n", Duration::from_secs(30));
    h.kill_and_restart();
    h.wait_success();
    h.assert_output(&bare);
}

#[test]
fn more_threads_than_slots_with_a_second_process() {
    too_many_threads("manythreads", true);
}

#[test]
fn more_threads_than_slots_in_a_single_process() {
    too_many_threads("manythreads-alone", false);
}

// 7. Shared memory this process never touched through its mapping.

#[test]
fn memfd_filled_by_write_and_read_only_after_restart() {
    one_cycle("shm-memfd", "hard_shm", &["memfd"], "step 3\n", "step 6\n");
}

#[test]
fn memfd_kept_open_filled_by_write_and_read_only_after_restart() {
    one_cycle(
        "shm-memfd-fd",
        "hard_shm",
        &["memfd-fd"],
        "step 3\n",
        "step 6\n",
    );
}

#[test]
fn shared_anonymous_memory_written_by_an_exited_child() {
    one_cycle("shm-child", "hard_shm", &["child"], "step 3\n", "step 6\n");
}
