//! Checkpoint-kill-restart of real programs: the final output must equal a
//! bare run's, byte for byte.

mod common;
use common::*;
use std::path::{Path, PathBuf};

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
    assert_eq!(
        job.output(),
        bare,
        "restarted {name} differs from a bare run"
    );
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

/// A block restored from the image (stored raw: incompressible bytes)
/// and then grown by realloc, which glibc does with mremap: the grown
/// block must behave as before the checkpoint (its old bytes kept, its new
/// end writable), not like a mapping of the image file (whose end is
/// not the block's).
#[test]
fn realloc_grows_memory_restored_from_the_image() {
    cycle_program_marks("regrow", &[], &["--no-gzip"], "step 3 ok", "step 5 ok");
}

fn three_generations(name: &str, launch_opts: &[&str]) {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new(name);
    job.launch(&[p], launch_opts);
    for (i, (mark, after)) in [
        ("step 3 ok", "step 5 ok"),
        ("step 9 ok", "step 11 ok"),
        ("step 15 ok", "step 17 ok"),
    ]
    .iter()
    .enumerate()
    {
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
fn three_generations_on_one_job() {
    three_generations("generations", &[]);
}

/// Raw images are mapped lazily at restart; the next checkpoint must save
/// those pages in full (they live in the old image file).
#[test]
fn three_generations_uncompressed_lazy_restore() {
    three_generations("generations-raw", &["--no-gzip"]);
}

/// Memory mapped lazily from an image is recognised by the image file, not
/// by its name: restarted from renamed images, the next checkpoint still
/// saves those pages in full, so the job restarts from the new images
/// after the renamed ones are gone.
#[test]
fn lazy_restore_from_renamed_images() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("lazy-renamed");
    job.launch(&[p], &["--no-gzip"]);
    job.wait_for("step 3 ok");
    job.checkpoint();
    job.wait_for("step 5 ok");
    job.kill();
    let moved = job.dir.join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let mut renamed = Vec::new();
    for (i, img) in job.images().iter().enumerate() {
        let to = moved.join(format!("generation1-{i}.img"));
        std::fs::rename(img, &to).unwrap();
        renamed.push(to);
    }
    job.restart_with(
        &renamed
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    job.wait_for("step 9 ok");
    job.checkpoint();
    job.wait_for("step 11 ok");
    job.kill();
    for r in &renamed {
        std::fs::remove_file(r).unwrap();
    }
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// The same with every page copied eagerly at restart.
#[test]
fn eager_restore() {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "32"]);
    let mut job = Job::new("eager").env("DMTCP_RESTART_EAGER", "1");
    job.launch(&[p, "32"], &["--no-gzip"]);
    job.wait_for("step 5\n");
    job.checkpoint_and_kill();
    let mut c = tool("dmtcp_restart");
    c.env("DMTCP_RESTART_EAGER", "1")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .args(job.images())
        .current_dir(&job.dir)
        .stdout(std::fs::File::create(job.dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(job.dir.join("restart.err")).unwrap());
    job.proc = Some(c.spawn().unwrap());
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
    assert!(
        job.output().is_empty(),
        "the query finished before the checkpoint; make it longer"
    );
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
    job.restart_with(&[
        "--restartdir".into(),
        moved.display().to_string(),
        "--ckptdir".into(),
        later.display().to_string(),
    ]);
    job.wait_for("step 8 ok");
    job.checkpoint();
    assert_eq!(
        images_in(&later).len(),
        1,
        "the next checkpoint goes to --ckptdir"
    );
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
    assert!(
        script.exists(),
        "no restart script in {}",
        job.ckpt.display()
    );
    let mut c = std::process::Command::new("bash");
    c.arg(&script)
        .args([
            "--coord-host",
            "127.0.0.1",
            "--coord-port",
            &job.port.to_string(),
        ])
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
    // The new generation's image, in the directory it is written into.
    let tmp = loop {
        let t = std::fs::read_dir(&job.ckpt)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".dmtcp"));
        if let Some(t) = t {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary image appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let gens_before = std::fs::read_dir(&job.ckpt).unwrap().count();
    job.kill();
    assert_eq!(
        std::fs::read_dir(&job.ckpt).unwrap().count(),
        gens_before - 1,
        "the second checkpoint finished before the kill, or left its image ({}): the test did not test anything",
        tmp.display()
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        good,
        "the previous image changed"
    );
    assert_eq!(job.images(), vec![img.clone()]);
    job.restart_with(&[img.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn signal_handlers_masks_and_alternate_stacks() {
    cycle_program_marks("signals", &[], &[], "step 5 ", "step 8 ");
}

#[test]
fn stdio_on_dev_null_is_reopened() {
    let prog = c_program("threads");
    let mut job = Job::new("devnull");
    let mut c = job.joined("dmtcp_launch");
    c.arg(&prog)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(job.dir.join("err.txt")).unwrap());
    job.proc = Some(c.spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(600));
    job.checkpoint_and_kill();
    // Restart with stdout on a pipe: the program's fd 1 must be /dev/null again.
    let mut r = tool("dmtcp_restart")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .args(job.images())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(job.dir.join("restart.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    // The restored process runs below dmtcp_restart (in its pid namespace).
    loop {
        let on_null = descendants(r.id() as i32).into_iter().skip(1).any(|p| {
            std::fs::read_link(format!("/proc/{p}/fd/1"))
                .is_ok_and(|t| t == std::path::Path::new("/dev/null"))
        });
        if on_null {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fd 1 never became /dev/null"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = wait_timeout(&mut r, TIMEOUT).expect("restarted process did not finish");
    assert!(st.success());
    let mut out = String::new();
    use std::io::Read;
    r.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(
        out.is_empty(),
        "output went to the restart's pipe instead of /dev/null: {out}"
    );
}

#[test]
fn stdio_on_a_terminal_follows_the_new_terminal() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let result = bare.lines().last().unwrap().to_string();
    let job = Job::new("tty");
    let launch = format!(
        "{} -j -h 127.0.0.1 -p {} --ckptdir {} {p}",
        bin_dir().join("dmtcp_launch").display(),
        job.port,
        job.ckpt.display()
    );
    let mut s = std::process::Command::new("script")
        .args(["-qfec", &launch])
        .arg(job.dir.join("tty1.txt"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(job.dir.join("tty1.txt"))
        .unwrap_or_default()
        .contains("step 4")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no output on the first terminal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = job.command(&["-kc"]);
    assert!(o.status.success());
    wait_timeout(&mut s, TIMEOUT).expect("script did not end");
    let restart = format!(
        "{} -j -h 127.0.0.1 -p {} {}",
        bin_dir().join("dmtcp_restart").display(),
        job.port,
        job.images()[0].display()
    );
    let st = std::process::Command::new("script")
        .args(["-qfec", &restart])
        .arg(job.dir.join("tty2.txt"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "restart under a new terminal failed");
    let tty2 = std::fs::read_to_string(job.dir.join("tty2.txt"))
        .unwrap()
        .replace('\r', "");
    assert!(
        tty2.contains(&result),
        "the new terminal lacks {result:?}: {tty2}"
    );
    assert!(tty2.contains("step 24"), "{tty2}");
}

#[test]
fn new_coordinator_on_a_free_port_with_port_file() {
    let prog = c_program("memcheck");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("newcoord-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pf = dir.join("port");
    let mut l = tool("dmtcp_launch")
        .args(["--new-coordinator", "-p", "0", "--port-file"])
        .arg(&pf)
        .args(["--ckptdir"])
        .arg(&dir)
        .arg(&prog)
        .current_dir(&dir)
        .stdout(std::fs::File::create(dir.join("out.txt")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&pf)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no port file");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // The port file appears when the coordinator listens, maybe before the program joined.
    while !std::fs::read_to_string(dir.join("out.txt"))
        .unwrap_or_default()
        .contains("step 1 ok")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the program did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-bc"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(images_in(&dir).len(), 1);
    let st = wait_timeout(&mut l, TIMEOUT).unwrap();
    assert!(st.success());
    // The coordinator started by dmtcp_launch leaves after its last
    // process (5 s later: see coordinator::EXIT_GRACE).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let o = loop {
        let o = tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-s"])
            .output()
            .unwrap();
        if o.status.code() == Some(2) || std::time::Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        o.status.code(),
        Some(2),
        "the embedded coordinator is still running"
    );
}

/// A full disk: the checkpoint fails with a clear error, the previous image
/// and the running program are unharmed. Uses a 4 MiB tmpfs (needs root,
/// as the test machines and CI have).
#[test]
fn full_disk_fails_the_checkpoint_and_loses_nothing() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("fulldisk");
    let small = job.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cannot mount a small tmpfs (this test needs root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(small.clone());
    job.launch(&[p], &["--ckptdir", small.to_str().unwrap()]);
    job.wait_for("step 2 ok");
    job.checkpoint();
    let img = images_in(&small).pop().expect("first image");
    let good = std::fs::read(&img).unwrap();
    // Fill the disk.
    let free = {
        // SAFETY: statvfs into a zeroed struct.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(small.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes into our struct; the path is NUL-terminated.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bavail as usize * s.f_frsize as usize
    };
    std::fs::write(small.join("filler"), vec![1u8; free.saturating_sub(8192)]).unwrap();
    let o = job.command(&["-bc"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "a checkpoint onto a full disk reported success"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left"), "unclear error: {err}");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        good,
        "the previous image changed"
    );
    assert_eq!(images_in(&small), vec![img.clone()]);
    assert!(
        !std::fs::read_dir(&small).unwrap().any(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".tmp") || n.ends_with(".partial")
        }),
        "a temporary file or an unfinished generation was left"
    );
    // The program goes on unharmed; then a restart from the first image works too.
    job.wait_success();
    assert_eq!(job.output(), bare);
    std::fs::remove_file(small.join("filler")).unwrap();
    job.restart_with(&[img.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn cwd_umask_rlimits_and_environment_survive() {
    let prog = c_program("procstate");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("procstate");
    job.launch(&[p], &[]);
    job.wait_for("step 4 ");
    job.checkpoint_and_kill();
    // Restart from elsewhere, with another umask and environment.
    let elsewhere = job.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "umask 077; DEMO_VAR=changed exec {} -j -h 127.0.0.1 -p {} {}",
            bin_dir().join("dmtcp_restart").display(),
            job.port,
            job.images()[0].display()
        ))
        .current_dir(&elsewhere)
        .stdout(std::fs::File::create(job.dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(job.dir.join("restart.err")).unwrap());
    job.proc = Some(c.spawn().unwrap());
    job.wait_success();
    assert_eq!(job.output(), bare);
}

#[test]
fn program_using_the_checkpoint_signal_and_blocking_all_signals() {
    cycle_program_marks("sigusr2", &[], &[], "step 5 ", "step 8 ");
}

#[test]
fn another_checkpoint_signal() {
    cycle_program_marks(
        "sigusr2",
        &[],
        &["--ckpt-signal", "40"],
        "step 5 ",
        "step 8 ",
    );
}

/// The main stack must still grow after a restart (it is restored as one
/// grows-down mapping, lazy restore or not).
#[test]
fn main_stack_grows_after_restart() {
    cycle_program("deepstack", &[], &["--no-gzip"]);
}

/// Two processes in one computation: one checkpoint writes both images
/// (barriers across peers), one dmtcp_restart brings both back and waits
/// for both (the restart barrier counts the peers recorded in the images).
#[test]
fn two_processes_checkpointed_and_restarted_together() {
    let a = c_program("memcheck");
    let b = c_program("filewriter");
    let bare_a = run_bare(&[a.to_str().unwrap()]);
    let bare_b = run_bare(&[b.to_str().unwrap()]);
    let mut job = Job::new("two");
    job.launch(&[a.to_str().unwrap()], &[]);
    let mut second = job
        .joined("dmtcp_launch")
        .arg(&b)
        .stdout(std::fs::File::create(job.dir.join("out2.txt")).unwrap())
        .stderr(std::fs::File::create(job.dir.join("err2.txt")).unwrap())
        .spawn()
        .unwrap();
    job.wait_for("step 3 ok");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(job.dir.join("out2.txt"))
        .unwrap_or_default()
        .contains("step 3\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "second program did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = String::from_utf8_lossy(&job.command(&["-s"]).stdout).into_owned();
    assert!(s.contains("NUM_PEERS=2"), "{s}");
    job.checkpoint_and_kill();
    wait_timeout(&mut second, TIMEOUT).expect("second program survived -kc");
    assert_eq!(job.images().len(), 2);
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare_a);
    let out2 = std::fs::read_to_string(job.dir.join("out2.txt")).unwrap();
    assert_eq!(out2, bare_b);
}

/// A program that blocks every signal and treats EINTR as an error, waiting
/// in poll/ppoll/select/epoll_wait/nanosleep (calls the kernel does not
/// restart after a signal handler): checkpoints and a restart must not
/// interrupt it.
#[test]
fn blocking_waits_do_not_see_checkpoints() {
    let prog = c_program("noeintr");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "60"]);
    let mut job = Job::new("noeintr");
    job.launch(&[p, "60"], &[]);
    for mark in ["round 10\n", "round 20\n"] {
        job.wait_for(mark);
        job.checkpoint();
    }
    job.cycle("round 30\n", "round 40\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// `--ckpt-open-files`: a counter file the program rewrites in place is put
/// back as it was at checkpoint time (so it matches the program's memory
/// after the restart), and a deleted file the program keeps open comes
/// back from the image with its contents and offset. Two restarts.
#[test]
fn ckpt_open_files_and_deleted_files() {
    let prog = c_program("openfiles");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "120"]);
    assert!(bare.ends_with("counter 120 scratch lines 120\n"), "{bare}");
    let mut job = Job::new("openfiles");
    job.launch(&[p, "120"], &["--ckpt-open-files"]);
    job.cycle("step 20\n", "step 40\n");
    job.cycle("step 60\n", "step 80\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// /dev/null, /dev/zero, /dev/urandom, a /proc file, a file opened with
/// O_TRUNC (not truncated again by the restart) and a file truncated under
/// the program's offset all keep working through three restarts.
#[test]
fn files_in_odd_states() {
    let prog = c_program("oddfiles");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "oddfiles",
        &[p, "80"],
        &[],
        &[
            ("step 10\n", "step 15\n"),
            ("step 30\n", "step 35\n"),
            ("step 50\n", "step 55\n"),
        ],
    );
    assert!(
        bare.ends_with("trunc lines 80 shrink offset 8000\n"),
        "{bare}"
    );
}

/// A record lock (fcntl) and a flock held by a parent stay held through
/// three restarts: its child never gets them until the parent lets go.
#[test]
fn locks_stay_held() {
    let prog = c_program("locks");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "locks",
        &[p, "80"],
        &[],
        &[
            ("step 10\n", "step 15\n"),
            ("step 30\n", "step 35\n"),
            ("step 50\n", "step 55\n"),
        ],
    );
    assert!(
        bare.ends_with("while held the child got 0, after release 3\n"),
        "{bare}"
    );
}

/// A named pipe (mkfifo) between two processes, with bytes in it at each
/// checkpoint: reopened at restart without blocking, no byte lost or
/// doubled, through three restarts.
#[test]
fn named_pipe_between_processes() {
    let prog = c_program("fifo");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "fifo",
        &[p, "10000"],
        &[],
        &[
            ("read 2000\n", "read 3000\n"),
            ("read 4000\n", "read 5000\n"),
            ("read 6000\n", "read 7000\n"),
        ],
    );
    assert!(bare.ends_with("lines 10000 writer exit 0\n"), "{bare}");
}

/// A named pipe the program holds open in a directory that is gone at
/// restart (as mpirun's session directory goes with a job that died): the
/// directory and the pipe are made again, the fd is the pipe at its path
/// again (a line written by path is read through it), and poll never sees
/// the fd closed or taken by something else.
#[test]
fn a_named_pipe_whose_directory_is_gone_is_made_again() {
    let prog = c_program("fifogone");
    let args = [prog.to_str().unwrap(), "150"];
    let bare = run_bare(&args);
    let mut job = Job::new("fifogone");
    job.launch(&args, &[]);
    job.wait_for("step 40\n");
    job.checkpoint();
    job.kill();
    std::fs::remove_dir_all(job.dir.join("sess")).unwrap();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare, "restart differs");
    assert!(bare.ends_with("read back: through the pipe\n"), "{bare}");
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(!err.contains("cannot reopen"), "{err}");
}

/// The library's fds survive a program that closes every fd above 2 (one
/// by one, with closefrom and with close_range), and a program holding
/// more than 830 files gets none of the library's numbers, so all of them
/// come back at restart.
#[test]
fn program_closing_all_fds_stays_checkpointed() {
    let prog = c_program("fdguard");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "12"]);
    let mut job = Job::new("fdguard");
    job.launch(&[p, "12"], &[]);
    let peers = |job: &Job| {
        let o = job.command(&["-s"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("NUM_PEERS=").map(str::to_string))
            .unwrap_or_default()
    };
    job.wait_for("round 0 step 4 ");
    job.checkpoint();
    job.wait_for("round 1 step 2 ");
    assert_eq!(
        peers(&job),
        "1",
        "the close() loop cut the coordinator link{}",
        job.output()
    );
    job.checkpoint();
    job.wait_for("round 1 step 6 ");
    job.kill();
    job.restart();
    job.wait_for("round 2 step 2 ");
    assert_eq!(peers(&job), "1", "closefrom cut the coordinator link");
    job.checkpoint();
    job.wait_for("round 2 step 6 ");
    job.kill();
    job.restart();
    job.wait_for("round 2 closed\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// Threads of a process that runs with glibc's rseq on (started without
/// dmtcp_launch's GLIBC_TUNABLES, as over ssh) have their rseq areas
/// registered again at restart.
#[test]
fn rseq_registration_survives_restart() {
    let prog = c_program("rseqcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "30"]);
    assert!(
        bare.contains("glibc registers rseq: yes"),
        "this glibc does not register rseq: {bare}"
    );
    let mut job = Job::new("rseq");
    job.launch(&[p, "30"], &[]);
    job.wait_for("step 5\n");
    job.checkpoint();
    job.wait_for("step 8\n");
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// The temporary image is created new under a name nobody can predict,
/// never through a symlink: a link planted at the old predictable name
/// (`<image>.tmp.<pid>`) in a shared checkpoint directory leads nowhere.
#[test]
fn planted_symlink_at_the_temporary_image_name_is_not_followed() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("tmp-symlink");
    job.launch(&[p], &[]);
    job.wait_for("step 2\n");
    job.checkpoint();
    let img = job.images().pop().expect("an image");
    let pid = job.peer_pids()[0];
    let victim = job.dir.join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let planted = std::path::PathBuf::from(format!("{}.tmp.{pid}", img.display()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    job.checkpoint();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the checkpoint wrote through the planted link"
    );
    job.wait_for("step 4\n");
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// Restarted under another coordinator, the processes the program starts
/// afterwards must join that one: a bash loop whose every step forks a
/// subshell that execs `printenv DMTCP_COORD_PORT`. Bash hands its own
/// copy of the variables (the old port) to each exec; the new program must
/// see the port of the coordinator of now, and the forked subshells must
/// reach it.
#[test]
fn programs_started_after_a_restart_join_the_new_coordinator() {
    let script = "for i in $(seq 1 40); do echo \"step $i port $(printenv DMTCP_COORD_PORT)\"; sleep 0.1; done";
    let mut job = Job::new("coordenv");
    job.launch(&["bash", "-c", script], &[]);
    job.wait_for("step 3 ");
    job.checkpoint_and_kill();
    let cut = job.output().lines().count();
    let imgs: Vec<String> = job
        .images()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // Another coordinator on another port; the old one is stopped (no
    // process could reach it by mistake and still pass).
    let mut other = Job::new("coordenv-new");
    job.kill_coordinator();
    other.restart_with(&imgs);
    other.wait_success();
    let out = job.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 40, "{out}");
    for (i, l) in lines.iter().enumerate() {
        let want = if i < cut { job.port } else { other.port };
        assert_eq!(
            *l,
            format!("step {} port {want}", i + 1),
            "line {} (the restart came after {cut}):\n{out}",
            i + 1
        );
    }
}

/// Files gone or changed at restart (DMTCP users' expectations): the
/// program reads `in.txt` (read-only), appends to `out/out.log` and keeps a
/// small session file in a temporary directory. `change` does to them
/// what the test wants between the kill and the restart.
fn missing_files_case(name: &str, change: impl FnOnce(&Path, &Path)) -> (Job, String, String) {
    let prog = c_program("missingfiles");
    let mut job = Job::new(name);
    let data = job.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let records: String = (1..=200).map(|i| format!("rec{i:04}\n")).collect();
    std::fs::write(data.join("in.txt"), &records).unwrap();
    let tmp = PathBuf::from(format!(
        "/tmp/dmtcp-test-missing-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let args = [
        prog.to_str().unwrap(),
        data.to_str().unwrap(),
        tmp.to_str().unwrap(),
        "30",
    ];
    let bare = run_bare(&args);
    let _ = std::fs::remove_dir_all(data.join("out"));
    let _ = std::fs::remove_dir_all(&tmp);
    job.launch(&args, &[]);
    job.wait_for("step 5 ");
    job.checkpoint_and_kill();
    change(&data, &tmp);
    job.restart();
    let st = wait_timeout(job.proc.as_mut().unwrap(), TIMEOUT).expect("restart did not end");
    job.proc = None;
    // The restarted process writes to the program's stderr (err.txt).
    let read = |f: &str| std::fs::read_to_string(job.dir.join(f)).unwrap_or_default();
    let err = read("restart.err") + &read("err.txt");
    let _ = std::fs::remove_dir_all(&tmp);
    (
        job,
        bare,
        format!("{}{err}", if st.success() { "" } else { "FAILED\n" }),
    )
}

/// An output file and its directory gone: created again (with a warning)
/// and written on; a small file in a temporary directory that was cleaned
/// up comes back with its contents (in the image); the program's output
/// equals a bare run's.
#[test]
fn missing_output_and_temporary_files_come_back() {
    let (job, bare, err) = missing_files_case("missing-out", |data, tmp| {
        std::fs::remove_dir_all(data.join("out")).unwrap();
        std::fs::remove_dir_all(tmp).unwrap();
    });
    assert!(!err.starts_with("FAILED"), "{err}");
    assert_eq!(job.output(), bare, "{err}");
    assert!(
        err.contains("out/out.log (fd ") && err.contains("was missing: created again, empty"),
        "{err}"
    );
    // Written on after the restart: the steps after the checkpoint.
    let log = std::fs::read_to_string(job.dir.join("data/out/out.log")).unwrap();
    assert!(
        log.ends_with("step 30\n") && !log.contains("step 1\n"),
        "{log}"
    );
}

/// A file the program reads that is gone (its contents not in the image):
/// the restart fails, naming it, instead of running on with a closed fd.
#[test]
fn missing_input_file_fails_the_restart() {
    let (job, _, err) = missing_files_case("missing-in", |data, _| {
        std::fs::remove_file(data.join("in.txt")).unwrap();
    });
    assert!(err.starts_with("FAILED"), "the restart went on: {err}");
    assert!(
        err.contains("restart failed:")
            && err.contains("in.txt (fd ")
            && err.contains("--ckpt-open-files"),
        "{err}"
    );
    assert!(!job.output().contains("step 30 "), "{}", job.output());
}

/// An input file whose size changed since the checkpoint: a warning naming
/// the sizes (the program goes on).
#[test]
fn input_file_changed_in_size_is_warned_about() {
    let (_job, _, err) = missing_files_case("changed-in", |data, _| {
        let f = data.join("in.txt");
        let mut s = std::fs::read_to_string(&f).unwrap();
        s.push_str("rec9999\n");
        std::fs::write(&f, s).unwrap();
    });
    assert!(!err.starts_with("FAILED"), "{err}");
    assert!(
        err.contains("in.txt (fd ")
            && err.contains("was 1600 bytes at checkpoint time and is 1608 now"),
        "{err}"
    );
}

/// On a terminal `dmtcp_restart` shows how far the restore is (processes,
/// megabytes, rate); off a terminal and with `-q` it does not. A 48 MB
/// program: restarted once without a terminal, then from its next images
/// with `-q` on a terminal (then told to quit), then from the same images
/// on a terminal (script(1)); its result must still equal a bare run's.
#[test]
fn restart_shows_progress_on_a_terminal_only() {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "48"]);
    let mut job = Job::new("restart-progress");
    job.launch(&[p, "48"], &[]);
    job.cycle("step 3\n", "step 5\n");
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default();
    assert!(
        !err.contains("processes restored"),
        "progress off a terminal: {err:?}"
    );
    job.wait_for("step 10\n");
    job.checkpoint();
    job.wait_for("step 12\n");
    job.kill();
    let images: Vec<String> = job
        .images()
        .iter()
        .map(|i| i.display().to_string())
        .collect();
    // script(1) runs dmtcp_restart on a pseudo-terminal; the restarted
    // program keeps its own stdout (out.txt).
    let on_terminal = |job: &Job, opt: &str, out: &str| {
        let cmdline = format!(
            "{} -j -h 127.0.0.1 -p {} {opt} {}",
            bin_dir().join("dmtcp_restart").display(),
            job.port,
            images.join(" ")
        );
        std::process::Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .current_dir(&job.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(job.dir.join(out)).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("script")
    };
    let mut quiet = on_terminal(&job, "-q", "quiet.out");
    job.wait_running(1);
    assert!(job.command(&["-k"]).status.success());
    wait_timeout(&mut quiet, TIMEOUT).expect("the -q restart did not end after -k");
    let out = std::fs::read_to_string(job.dir.join("quiet.out")).unwrap_or_default();
    assert!(
        !out.contains("processes restored"),
        "progress with -q: {out:?}"
    );
    job.proc = Some(on_terminal(&job, "", "shown.out"));
    job.wait_success();
    let out = std::fs::read_to_string(job.dir.join("shown.out")).unwrap_or_default();
    assert!(
        out.contains("restart: 1 of 1 processes restored") && out.contains("MB/s"),
        "no progress on a terminal: {out:?}"
    );
    assert_eq!(
        job.output(),
        bare,
        "restarted bigmem differs from a bare run"
    );
}
