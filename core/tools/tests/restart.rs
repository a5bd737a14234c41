//! Checkpoint-kill-restart of real programs: the final output must equal a
//! bare run's, byte for byte.

mod common;
use common::*;

fn cycle_program(name: &str, args: &[&str], launch_opts: &[&str]) {
    cycle_program_marks(name, args, launch_opts, "step 5\n", "step 8\n");
}

fn cycle_program_marks(name: &str, args: &[&str], launch_opts: &[&str], mark: &str, after: &str) {
    let prog = c_program(name);
    let p = prog.to_str().unwrap();
    let mut full = vec![p];
    full.extend_from_slice(args);
    let bare = run_bare(&full);
    assert!(bare.contains("RESULT"), "bare run gave no result: {bare}");
    let mut job = Job::new(name);
    job.launch(&full, launch_opts);
    job.cycle(mark, after);
    job.wait_success();
    assert_eq!(job.output(), bare, "restarted {name} differs from a bare run");
}

#[test]
fn threads_locks_condvars_pipe_and_sleep() {
    cycle_program("threads", &[], &[]);
}

#[test]
fn threads_uncompressed() {
    cycle_program("threads", &[], &["--no-gzip"]);
}

#[test]
fn big_memory_reservations_file_mapping_and_brk() {
    cycle_program("bigmem", &["48"], &[]);
}

#[test]
fn big_memory_uncompressed() {
    cycle_program("bigmem", &["48"], &["--no-gzip"]);
}

#[test]
fn file_offsets_survive() {
    cycle_program("filewriter", &[], &[]);
}

#[test]
fn memory_checksums_hold() {
    cycle_program_marks("memcheck", &[], &[], "step 5 ok", "step 8 ok");
}

#[test]
fn checkpoint_then_kill_with_kc() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("kc");
    job.launch(&[p], &[]);
    job.wait_for("step 4\n");
    job.checkpoint_and_kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn three_generations_on_one_job() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("generations");
    job.launch(&[p], &[]);
    for (i, (mark, after)) in [("step 3 ok", "step 5 ok"), ("step 9 ok", "step 11 ok"), ("step 15 ok", "step 17 ok")].iter().enumerate() {
        job.wait_for(mark);
        job.checkpoint();
        job.wait_for(after);
        job.kill();
        let imgs = job.images();
        assert_eq!(imgs.len(), 1, "generation {}: one image expected", i + 1);
        job.restart();
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn python3_with_a_thread() {
    let mut job = Job::new("python");
    let script = job.dir.join("work.py");
    std::fs::write(
        &script,
        "import threading, time, hashlib\n\
         h = hashlib.sha256(); data = []\n\
         def worker():\n    for i in range(40):\n        data.append(i * i); time.sleep(0.05)\n\
         t = threading.Thread(target=worker); t.start()\n\
         big = [str(i) * 10 for i in range(200000)]\n\
         for i in range(30):\n    h.update(big[i * 1000].encode()); print('step', i, flush=True); time.sleep(0.1)\n\
         t.join(); print('RESULT', h.hexdigest(), sum(data), len(big), flush=True)\n",
    )
    .unwrap();
    let s = script.to_str().unwrap().to_string();
    let bare = run_bare(&["python3", &s]);
    job.launch(&["python3", &s], &[]);
    job.cycle("step 5\n", "step 8\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn sqlite3_mid_query() {
    let q = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<12000000) SELECT sum(x*x % 1000003), count(*) FROM c;";
    let bare = run_bare(&["sqlite3", ":memory:", q]);
    let mut job = Job::new("sqlite");
    job.launch(&["sqlite3", ":memory:", q], &[]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    job.checkpoint_and_kill();
    assert!(job.output().is_empty(), "the query finished before the checkpoint; make it longer");
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn restart_from_a_moved_directory_and_checkpoint_again() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("moved");
    job.launch(&[p], &[]);
    job.wait_for("step 3 ok");
    job.checkpoint_and_kill();
    let moved = job.dir.join("moved");
    std::fs::rename(&job.ckpt, &moved).unwrap();
    let later = job.dir.join("later");
    std::fs::create_dir_all(&later).unwrap();
    job.restart_with(&["--restartdir".into(), moved.display().to_string(), "--ckptdir".into(), later.display().to_string()]);
    job.wait_for("step 8 ok");
    job.checkpoint();
    assert_eq!(images_in(&later).len(), 1, "the next checkpoint goes to --ckptdir");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn generated_restart_script() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("script");
    job.launch(&[p], &[]);
    job.wait_for("step 4\n");
    job.checkpoint_and_kill();
    let script = job.ckpt.join("dmtcp_restart_script.sh");
    assert!(script.exists(), "no restart script in {}", job.ckpt.display());
    let mut c = std::process::Command::new("bash");
    c.arg(&script)
        .args(["--coord-host", "127.0.0.1", "--coord-port", &job.port.to_string()])
        .current_dir(&job.dir)
        .stdout(std::fs::File::create(job.dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(job.dir.join("restart.err")).unwrap());
    job.proc = Some(c.spawn().unwrap());
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn killed_checkpoint_keeps_the_previous_image() {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "400"]);
    let mut job = Job::new("killedckpt");
    job.launch(&[p, "400"], &["--no-gzip"]);
    job.wait_for("step 2\n");
    job.checkpoint();
    let img = job.images().pop().expect("first image");
    let good = std::fs::read(&img).unwrap();
    job.wait_for("step 4\n");
    // Start a second checkpoint and kill the process while it writes.
    assert!(job.command(&["-c"]).status.success());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let tmp = loop {
        let t = std::fs::read_dir(&job.ckpt).unwrap().filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.to_string_lossy().contains(".tmp."));
        if let Some(t) = t {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "no temporary image appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    job.kill();
    assert!(tmp.exists(), "the second checkpoint finished before the kill: the test did not test anything");
    assert_eq!(std::fs::read(&img).unwrap(), good, "the previous image changed");
    assert_eq!(job.images(), vec![img.clone()]);
    job.restart_with(&[img.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}
