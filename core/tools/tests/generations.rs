//! Checkpoint generations: each round is committed at once (manifest,
//! restart script, one rename) or not at all; restart from a directory
//! takes the newest committed generation; `--keep-generations`; damaged
//! manifests and images are refused with a clear message.

mod common;
use common::*;
use dmtcp_common::generation::{self as gen, Manifest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn partials(dir: &Path) -> Vec<PathBuf> {
    gen::list(dir)
        .into_iter()
        .filter(|f| f.partial)
        .map(|f| f.path)
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (x, y) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    x.dev() == y.dev() && x.ino() == y.ino()
}

/// A committed generation is what its manifest says: every image there,
/// and every earlier image they refer to (held in a subdirectory named as
/// their sources name it), with the size, whole-file CRC-32 and header
/// CRC listed, and nothing else; its restart script too. Returns the
/// manifest.
fn check_generation(gdir: &Path) -> Manifest {
    let m = Manifest::load(gdir).unwrap_or_else(|e| panic!("{e}"));
    assert!(!m.images.is_empty(), "{}: no images", gdir.display());
    let mut held: Vec<String> = Vec::new();
    for sub in std::fs::read_dir(gdir).unwrap().map(|e| e.unwrap()) {
        if sub.file_type().unwrap().is_dir() {
            let d = sub.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(sub.path()).unwrap() {
                held.push(format!("{d}/{}", f.unwrap().file_name().to_string_lossy()));
            }
        }
    }
    held.sort();
    let mut listed: Vec<String> = m.sources.iter().map(|e| e.name.clone()).collect();
    listed.sort();
    assert_eq!(held, listed, "{}: sources", gdir.display());
    for e in m.images.iter().chain(&m.sources) {
        let p = Manifest::path_of(gdir, e);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(bytes.len() as u64, e.size, "{}: size", p.display());
        assert_eq!(crc32fast::hash(&bytes), e.crc32, "{}: crc32", p.display());
        let hcrc = u32::from_le_bytes(bytes[44..48].try_into().unwrap());
        assert_eq!(hcrc, e.header_crc, "{}: header crc", p.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(gdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dmtcp"))
        .collect();
    names.sort();
    let mut listed: Vec<String> = m.images.iter().map(|e| e.name.clone()).collect();
    listed.sort();
    assert_eq!(
        names,
        listed,
        "{}: images not in the manifest",
        gdir.display()
    );
    assert!(gdir.join(&m.script).is_file(), "no restart script");
    m
}

/// The names users know point at generation `gdir`: every top-level image
/// is a link to one of its images, and the restart script is its script.
fn top_level_is(ckpt: &Path, gdir: &Path) {
    let m = Manifest::load(gdir).unwrap();
    let top = images_in(ckpt);
    assert_eq!(top.len(), m.images.len(), "top-level images: {top:?}");
    for e in &m.images {
        assert!(
            same_file(&ckpt.join(&e.name), &gdir.join(&e.name)),
            "{} is not generation {}'s",
            e.name,
            m.generation
        );
    }
    assert!(same_file(
        &ckpt.join("dmtcp_restart_script.sh"),
        &gdir.join(&m.script)
    ));
}

/// Wait until an image of an unfinished generation has `min` bytes on disk.
fn wait_for_partial_image(ckpt: &Path, min: u64) -> PathBuf {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for p in partials(ckpt) {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let big = e.metadata().map(|m| m.len() >= min).unwrap_or(false);
                if e.file_name().to_string_lossy().ends_with(".dmtcp") && big {
                    return e.path();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no image of the new generation appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `bigmem 400` (a long write) as a job: generation 1 committed at step
/// 2, then at step 4 a second checkpoint started and its image under way.
/// Returns the job, the bare run's output, generation 1's directory and
/// manifest, the image being written and the process's pid.
fn second_checkpoint_under_way(name: &str) -> (Job, String, PathBuf, Manifest, PathBuf, i32) {
    second_checkpoint_under_way_with(Job::new(name), &["--no-gzip"], "30")
}

/// As above, with launch options `opts` and `steps` of 100 ms.
fn second_checkpoint_under_way_with(
    mut job: Job,
    opts: &[&str],
    steps: &str,
) -> (Job, String, PathBuf, Manifest, PathBuf, i32) {
    let prog = c_program("bigmem");
    let p = prog.to_str().unwrap();
    let args = [p, "400", "bigmem.data", steps];
    let bare = run_bare(&args);
    job.launch(&args, opts);
    job.wait_for("step 2\n");
    job.checkpoint();
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 1, "{gens:?}");
    let first = gens[0].1.clone();
    let before = check_generation(&first);
    top_level_is(&job.ckpt, &first);
    job.wait_for("step 4\n");
    let pids = job.peer_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(job.command(&["-c"]).status.success());
    let partial = wait_for_partial_image(&job.ckpt, 1 << 20);
    (job, bare, first, before, partial, pids[0])
}

/// A process of the computation is SIGKILLed while it writes its image:
/// the generation is never committed, the previous one stays as it was
/// (its manifest, images and the top-level names), and restarting the
/// directory gives the program's right result.
#[test]
fn process_killed_while_writing_keeps_the_previous_generation() {
    let (mut job, bare, first, before, partial, _) = second_checkpoint_under_way("gen-killproc");
    job.kill();
    assert_eq!(
        committed(&job.ckpt).len(),
        1,
        "the second checkpoint finished before the kill: the test did not test anything"
    );
    assert!(
        !partial.exists() && partials(&job.ckpt).is_empty(),
        "the unfinished generation is left: {partial:?}"
    );
    assert_eq!(check_generation(&first), before, "generation 1 changed");
    top_level_is(&job.ckpt, &first);
    job.restart_with(&["--restartdir".into(), job.ckpt.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// The coordinator is SIGKILLed while the images are being written: no
/// generation is committed; the process finishes its write, throws its
/// image away and runs to its end unharmed. The previous generation is as
/// it was and restarts (under a new coordinator) with the right result.
/// The writing process is stopped (SIGSTOP) from the moment its image is
/// seen under way until the coordinator is dead, so the write cannot
/// finish first however slow the test is (incremental images, the
/// default, write little when little changed: `bigmem` changes every
/// 64 KiB chunk of its 300 MiB at every step). Written with the program
/// suspended (`--no-forked-ckpt`; a forked writer is the next test).
#[test]
fn coordinator_killed_while_writing_keeps_the_previous_generation() {
    let (mut job, bare, first, before, _, pid) = second_checkpoint_under_way_with(
        Job::new("gen-killcoord"),
        &["--no-gzip", "--no-forked-ckpt"],
        "30",
    );
    // SAFETY: kill(2) on the job's own process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The program is suspended while it writes: its output stops here.
    let suspended_at = job.output().lines().count();
    job.kill_coordinator();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(
        committed(&job.ckpt).len(),
        1,
        "the second checkpoint finished before the kill: the test did not test anything"
    );
    // The process finishes its write, sees the coordinator gone, throws
    // its image away and goes on.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap();
        if err.contains("lost the connection to the coordinator") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not go on: {err}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It runs again: its output grows (it may even have ended by now; a
    // count taken after the warning could miss the last steps).
    while job.output().lines().count() <= suspended_at {
        assert!(
            Instant::now() < deadline,
            "the program printed nothing after the checkpoint: {}",
            job.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    previous_generation_restarts(job, &first, &before, &bare);
}

/// After the coordinator died during the second checkpoint: the job
/// killed, no image of that round is left, generation 1 is as it was and
/// the top-level names its; under a new coordinator the directory restarts
/// to the bare run's output.
fn previous_generation_restarts(mut job: Job, first: &Path, before: &Manifest, bare: &str) {
    job.kill();
    assert!(partials(&job.ckpt).is_empty(), "an image was left");
    assert_eq!(committed(&job.ckpt).len(), 1);
    assert_eq!(&check_generation(first), before, "generation 1 changed");
    top_level_is(&job.ckpt, first);
    job.new_coordinator(&[]);
    job.restart_with(&["--restartdir".into(), job.ckpt.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// The same with a forked writer (slowed down so that the coordinator dies
/// while it writes): the program runs on while its image is written; the
/// writer finishes, finds no coordinator to report to, removes its image
/// and exits. The previous generation is as it was and restarts with the
/// right result. (The program is stopped once it has been seen running
/// during the write, so that it cannot reach its end, which removes a
/// file its image needs, before the writer is done.)
#[test]
fn coordinator_killed_while_a_forked_writer_writes_keeps_the_previous_generation() {
    // 30 ms per 4 MiB: about 2.3 s a write, the first one included,
    // while the program runs on; 80 steps (8 s) leave it far from its end.
    let job = Job::new("gen-killcoord-forked").env("DMTCP_TEST_WRITE_DELAY_MS", "30");
    let (mut job, bare, first, before, _, pid) =
        second_checkpoint_under_way_with(job, &["--no-gzip", "--forked-ckpt"], "80");
    let lines = job.output().lines().count();
    let deadline = Instant::now() + TIMEOUT;
    while job.output().lines().count() <= lines {
        assert!(
            Instant::now() < deadline,
            "the program did not run while its image was written: {}",
            job.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on the job's own process (not its writer).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    job.kill_coordinator();
    assert!(
        !partials(&job.ckpt).is_empty() && committed(&job.ckpt).len() == 1,
        "the second checkpoint finished before the kill: the test did not test anything"
    );
    while !partials(&job.ckpt).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the writer's image was left: {:?}{}",
            partials(&job.ckpt),
            job.diag()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    previous_generation_restarts(job, &first, &before, &bare);
}

/// `--keep-generations 2`: after four checkpoints exactly the two newest
/// are there, the top-level names are the newest's, and restarting the
/// directory resumes from the newest.
#[test]
fn keep_two_generations_of_four() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::with_coordinator_args("gen-keep", &["--keep-generations", "2"]);
    job.launch(&[p], &[]);
    for step in [2, 5, 8, 11] {
        job.wait_for(&format!("step {step} ok"));
        job.checkpoint();
        let gens = committed(&job.ckpt);
        assert!(gens.len() <= 2, "{gens:?}");
    }
    let gens = committed(&job.ckpt);
    assert_eq!(
        gens.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![3, 4],
        "{gens:?}"
    );
    for g in &gens {
        check_generation(&g.1);
    }
    // Incremental images (the default): 4 refers to generation 1 (what
    // never changed since), which it holds: 1 is gone all the same.
    let m4 = Manifest::load(&gens[1].1).unwrap();
    assert!(
        m4.sources.iter().any(|e| e
            .name
            .starts_with(&format!("{}/", gen::dir_name(&m4.comp_id, 1)))),
        "generation 4 refers to nothing of generation 1: {:?}",
        m4.sources
    );
    top_level_is(&job.ckpt, &gens[1].1);
    job.wait_for("step 14 ok");
    job.kill();
    job.restart_with(&[job.ckpt.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap();
    assert!(err.contains("restarting generation 4 "), "{err}");
}

/// `dmtcp_launch --keep-generations 1` (for the coordinator it starts).
#[test]
fn launch_keeps_one_generation() {
    let prog = c_program("memcheck");
    let dir = fresh_dir("gen-launch-keep");
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let port_file = dir.join("port");
    let mut launched = tool("dmtcp_launch")
        .args(["--new-coordinator", "-p", "0", "--port-file"])
        .arg(&port_file)
        .arg("--ckptdir")
        .arg(&ckpt)
        .args(["--keep-generations", "1"])
        .arg(&prog)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            break p.to_string();
        }
        assert!(Instant::now() < deadline, "no coordinator");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The program has joined.
    loop {
        let o = tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &port, "-s"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("NUM_PEERS=1") {
            break;
        }
        assert!(Instant::now() < deadline, "the program did not join");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..3 {
        let o = tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &port, "-bc"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let gens = committed(&ckpt);
    let _ = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &port, "-k"])
        .output();
    let _ = wait_timeout(&mut launched, TIMEOUT);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
    check_generation(&gens[0].1);
}

/// Restart from the directory takes the newest generation; an older one
/// restarts when named, and the next checkpoint of that restart is
/// numbered above every generation there, so the directory's newest is
/// again the one just taken. Every manifest matches its images.
#[test]
fn restartdir_takes_the_newest_generation() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::with_coordinator_args("gen-newest", &["--keep-generations", "0"]);
    job.launch(&[p], &[]);
    for step in [2, 4, 6] {
        job.wait_for(&format!("step {step} ok"));
        job.checkpoint();
    }
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 3, "{gens:?}");
    for g in &gens {
        let m = check_generation(&g.1);
        assert_eq!(m.generation, g.0);
    }
    top_level_is(&job.ckpt, &gens[2].1);
    job.wait_for("step 8 ok");
    job.kill();
    // The oldest, by its directory.
    job.restart_with(&["--restartdir".into(), gens[0].1.display().to_string()]);
    job.wait_for("step 10 ok");
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap();
    assert!(err.contains("restarting generation 1 "), "{err}");
    job.checkpoint();
    let after = committed(&job.ckpt);
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[3].0, 4, "{after:?}");
    check_generation(&after[3].1);
    top_level_is(&job.ckpt, &after[3].1);
    job.wait_for("step 12 ok");
    job.kill();
    job.restart_with(&["--restartdir".into(), job.ckpt.display().to_string()]);
    job.wait_success();
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap();
    assert!(err.contains("restarting generation 4 "), "{err}");
    assert_eq!(job.output(), bare);
}

/// A damaged manifest, a truncated image and an image replaced by another
/// generation's are refused before anything starts, each with a message
/// that says what is wrong; the intact directory then restarts.
#[test]
fn damaged_manifest_or_image_is_refused_clearly() {
    let prog = c_program("memcheck");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("gen-damage");
    job.launch(&[p], &[]);
    job.wait_for("step 2 ok");
    job.checkpoint();
    job.wait_for("step 4 ok");
    job.checkpoint();
    job.wait_for("step 6 ok");
    job.kill();
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 2);
    let (older, newest) = (gens[0].1.clone(), gens[1].1.clone());
    let manifest = newest.join(gen::MANIFEST);
    let good_manifest = std::fs::read(&manifest).unwrap();
    let m = check_generation(&newest);
    let img = newest.join(&m.images[0].name);
    let good_img = std::fs::read(&img).unwrap();
    let try_restart = |what: &str, expect: &[&str]| {
        let o = job
            .joined("dmtcp_restart")
            .arg("--restartdir")
            .arg(&job.ckpt)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        for e in expect {
            assert!(err.contains(e), "{what}: no '{e}' in: {err}");
        }
    };
    // One digit of a size changed.
    let text = String::from_utf8(good_manifest.clone()).unwrap();
    let size = m.images[0].size.to_string();
    let changed = text.replacen(
        &format!("\"size\": {size}"),
        &format!("\"size\": {}", m.images[0].size + 1),
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&manifest, changed).unwrap();
    try_restart(
        "damaged manifest",
        &[
            "checksum mismatch",
            &manifest.display().to_string(),
            &older.display().to_string(),
        ],
    );
    // Cut short.
    std::fs::write(&manifest, &good_manifest[..good_manifest.len() / 2]).unwrap();
    try_restart("truncated manifest", &["damaged"]);
    std::fs::write(&manifest, &good_manifest).unwrap();
    // The image cut short (as a full disk or a lost write would leave it).
    std::fs::write(&img, &good_img[..good_img.len() - 4096]).unwrap();
    try_restart("truncated image", &[&m.images[0].name, "truncated"]);
    // The image replaced by the older generation's (a complete image).
    std::fs::copy(older.join(&m.images[0].name), &img).unwrap();
    try_restart("replaced image", &[&m.images[0].name, "was replaced"]);
    std::fs::write(&img, &good_img).unwrap();
    check_generation(&newest);
    job.restart_with(&["--restartdir".into(), job.ckpt.display().to_string()]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// Top-level images of two generations (as a job killed while the names
/// were being moved to a new generation would leave them): restarting
/// them by name takes the newer generation whole, from its manifest.
#[test]
fn top_level_names_of_two_generations_restart_the_newer_whole() {
    let prog = c_program("memcheck");
    let cmd = format!("{}; echo done", prog.display());
    let bare = run_bare(&["sh", "-c", &cmd]);
    let mut job = Job::new("gen-mixed");
    job.launch(&["sh", "-c", &cmd], &[]);
    job.wait_for("step 2 ok");
    job.checkpoint();
    job.wait_for("step 5 ok");
    job.checkpoint();
    job.wait_for("step 7 ok");
    job.kill();
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 2);
    let m = check_generation(&gens[1].1);
    assert_eq!(m.images.len(), 2, "sh and its child");
    let name = &m.images[0].name;
    let top = job.ckpt.join(name);
    std::fs::remove_file(&top).unwrap();
    std::fs::hard_link(gens[0].1.join(name), &top).unwrap();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
    let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap();
    assert!(
        err.contains("restarting generation 2 as its manifest lists it"),
        "{err}"
    );
}

/// One process of a 4-process job is stopped (SIGSTOP) when a checkpoint
/// is asked for: after `--suspend-timeout` the round is given up with a
/// message naming it; the other processes go on, no partial generation is
/// left, the previous one is untouched. Once the stopped process is
/// continued it passes the given-up round by itself and the next
/// checkpoint succeeds; a restart from it ends with a bare run's output.
#[test]
fn stopped_process_fails_the_round_by_name_and_the_job_goes_on() {
    let prog = c_program("sharedring");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "4000"]);
    let mut job = Job::with_coordinator_args("gen-stopped", &["--suspend-timeout", "2"]);
    job.launch(&[p, "4000"], &[]);
    job.wait_for("tokens 400\n");
    job.checkpoint();
    let first = committed(&job.ckpt);
    assert_eq!(first.len(), 1);
    let before = check_generation(&first[0].1);
    let stopped = *job.peer_pids().iter().max().expect("peers");
    // SAFETY: stopping a process of our own job.
    unsafe { libc::kill(stopped, libc::SIGSTOP) };
    let out = job.dir.join("bc.out");
    let f = std::fs::File::create(&out).unwrap();
    let mut bc = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &job.port.to_string(), "-bc"])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut bc, Duration::from_secs(30));
    // SAFETY: as above.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    let _ = bc.kill();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let st = st.unwrap_or_else(|| panic!("-bc did not return within 30 s: {text}"));
    assert!(!st.success(), "the checkpoint succeeded: {text}");
    assert!(
        text.contains("did not suspend within 2 s") && text.contains(&format!("pid {stopped} ")),
        "the failure does not name the stopped process: {text}"
    );
    assert!(
        partials(&job.ckpt).is_empty(),
        "a partial generation is left"
    );
    assert_eq!(
        committed(&job.ckpt),
        first,
        "the committed generations changed"
    );
    assert_eq!(
        check_generation(&first[0].1),
        before,
        "generation 1 changed"
    );
    // Continued, the ring goes on, and so do checkpoints.
    let now = job.output().matches("tokens ").count();
    job.wait_for(&format!("tokens {}\n", (now + 2) * 200));
    job.checkpoint();
    assert_eq!(committed(&job.ckpt).len(), 2);
    let now = job.output().matches("tokens ").count();
    job.wait_for(&format!("tokens {}\n", (now + 1) * 200));
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// A process stopped after it suspended, while the images are written (a
/// user's SIGSTOP, a debugger): the coordinator gives the round up once
/// it has said nothing for the suspend timeout while the others wait at a
/// barrier, naming it (the others' `Writing` lines, every second, keep a
/// slow writer from being taken for a stopped one). No generation is
/// committed, the previous one is untouched; once continued, the stopped
/// process passes the given-up round by itself, the next checkpoint
/// commits and a restart from it gives a bare run's output.
/// (tests/c/stop_plugin.c stops the process named in stop-pid in its
/// pre-checkpoint hook.)
#[test]
fn process_stopped_while_checkpointing_fails_the_round_by_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let so =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("libstop-{}.so", std::process::id()));
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-I"])
        .arg(root.join("../../include"))
        .arg("-o")
        .arg(&so)
        .arg(root.join("tests/c/stop_plugin.c"))
        .status()
        .unwrap();
    assert!(st.success(), "compiling stop_plugin.c");
    let prog = c_program("sharedring");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "4000"]);
    let mut job = Job::with_coordinator_args("gen-stopped-late", &["--suspend-timeout", "2"]);
    job.launch(&[p, "4000"], &["--with-plugin", so.to_str().unwrap()]);
    job.wait_for("tokens 400\n");
    job.checkpoint();
    let first = committed(&job.ckpt);
    assert_eq!(first.len(), 1);
    let before = check_generation(&first[0].1);
    let stopped = *job.peer_pids().iter().max().expect("peers");
    std::fs::write(job.dir.join("stop-pid"), stopped.to_string()).unwrap();
    let out = job.dir.join("bc.out");
    let f = std::fs::File::create(&out).unwrap();
    let mut bc = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &job.port.to_string(), "-bc"])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut bc, Duration::from_secs(30));
    let _ = bc.kill();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    // Stopped by the plugin, not by the test: it must be stopped now.
    let state = std::fs::read_to_string(format!("/proc/{stopped}/stat")).unwrap_or_default();
    let stopped_now = state
        .rsplit_once(')')
        .is_some_and(|(_, r)| r.trim_start().starts_with('T'));
    // SAFETY: continuing a process of our own job.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    assert!(
        stopped_now,
        "the plugin did not stop process {stopped}: {state}"
    );
    let st = st.unwrap_or_else(|| panic!("-bc did not return within 30 s: {text}"));
    assert!(!st.success(), "the checkpoint succeeded: {text}");
    assert!(
        text.contains("stopped answering for 2 s while the others waited at barrier")
            && text.contains(&format!("pid {stopped} ")),
        "the failure does not name the stopped process: {text}"
    );
    assert_eq!(
        committed(&job.ckpt),
        first,
        "the committed generations changed"
    );
    assert_eq!(
        check_generation(&first[0].1),
        before,
        "generation 1 changed"
    );
    // Continued, the ring goes on, and so do checkpoints.
    let now = job.output().matches("tokens ").count();
    job.wait_for(&format!("tokens {}\n", (now + 2) * 200));
    job.checkpoint();
    assert_eq!(committed(&job.ckpt).len(), 2);
    let now = job.output().matches("tokens ").count();
    job.wait_for(&format!("tokens {}\n", (now + 1) * 200));
    job.kill();
    job.restart();
    job.wait_success();
    assert_eq!(job.output(), bare);
}
