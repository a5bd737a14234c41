//! Lazy restore of compressed (zstd) images through userfaultfd: the page
//! server fills the pages the program touches first and the rest in the
//! background; the program (tests/c/lazyz.c) checks its memory after the
//! restart through system calls, madvise/munmap/mremap, threads and a
//! fork, is checkpointed again and restarted from that image, and checks
//! it all once more. The tests run as root (full userfaultfd, used by
//! default; DMTCP_RESTART_UFFD=0 turns it off).

mod common;
use common::*;
use dmtcp_common::image::{Image, CHUNK_ZSTD, LAZY_PROTOCOL};

/// The stats line of the page server in restart.err: (chunks, runs of
/// them filled on a fault, in the background), if any. (A chunk cut by
/// munmap or madvise is filled as several runs.)
fn stats(err: &str) -> Option<(u64, u64, u64)> {
    let line = err.lines().find(|l| l.contains("lazy restore of "))?;
    let num = |after: &str| -> u64 {
        let i = line.find(after).unwrap() + after.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let filled = |before: &str| -> u64 {
        let i = line.find(before).unwrap();
        line[..i].rsplit(' ').next().unwrap().parse().unwrap()
    };
    Some((
        num("lazy restore of "),
        filled(" runs filled on a fault"),
        filled(" in the background"),
    ))
}

/// Launch tests/c/lazyz.c in `job`, checkpoint it once it waits for go1,
/// kill it; its image.
fn checkpointed(job: &mut Job) -> std::path::PathBuf {
    checkpointed_with(job, &[])
}

/// As [`checkpointed`], with `dmtcp_launch` options.
fn checkpointed_with(job: &mut Job, launch_opts: &[&str]) -> std::path::PathBuf {
    let prog = c_program("lazyz");
    job.launch(&[prog.to_str().unwrap()], launch_opts);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.kill();
    job.images()[0].clone()
}

fn create(job: &Job, name: &str) {
    create_in(&job.dir, name);
}

fn restart_err(job: &Job) -> String {
    std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default()
}

/// Launch, checkpoint, kill, restart (phase 1 checks), checkpoint again,
/// kill, restart from that image (phase 2 checks). `env` goes to both
/// restarts. The first restart's and the second's stderr.
fn two_restarts(name: &str, env: &[(&str, &str)]) -> (String, String) {
    two_restarts_with(name, &[], env)
}

/// As [`two_restarts`], with `dmtcp_launch` options: with `--no-gzip` the
/// images hold raw chunks only.
fn two_restarts_with(name: &str, launch_opts: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new(name).env("DMTCP_RESTART_LAZY_STATS", "1");
    for (k, v) in env {
        job = job.env(k, v);
    }
    job.launch(&[p], launch_opts);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.kill();
    let imgs = job.images();
    assert_eq!(imgs.len(), 1);
    let img = Image::open(&imgs[0]).unwrap();
    let zstd = img
        .chunks
        .iter()
        .filter(|c| c.flags & CHUNK_ZSTD != 0)
        .count();
    if launch_opts.contains(&"--no-gzip") {
        assert!(
            zstd == 0 && img.chunks.len() > 8,
            "not an image of raw chunks"
        );
    } else {
        assert!(zstd > 8, "the image holds few compressed chunks");
    }
    job.restart();
    create(&job, "go1");
    job.wait_for("waiting for go2");
    assert!(job.output().contains("phase 1 ok"), "{}", job.diag());
    let first = restart_err(&job);
    job.checkpoint();
    job.kill();
    job.restart();
    create(&job, "go2");
    job.wait_success();
    let out = job.output();
    assert!(out.contains("phase 2 ok"), "{}", job.diag());
    assert!(!out.contains("BAD"), "{}", job.diag());
    (first, restart_err(&job))
}

/// With the background fill off, every page comes on demand, so the stats
/// prove the program ran before its memory was all in: pages it touched
/// (through system calls, threads, after munmap/mremap) were filled on a
/// fault; the fork had the server fill the rest first (its child saw the
/// right bytes; counted as filled in the background).
#[test]
fn pages_come_on_demand_and_a_fork_gets_them_all() {
    let (first, second) = two_restarts("lazyz-demand", &[("DMTCP_RESTART_LAZY_BACKGROUND", "0")]);
    let (chunks, on_fault, in_background) =
        stats(&first).unwrap_or_else(|| panic!("no stats line in: {first}"));
    assert!(on_fault > 0, "no page filled on a fault: {first}");
    assert!(chunks > on_fault, "every chunk filled on a fault: {first}");
    assert!(in_background > 0, "nothing left for the fork: {first}");
    assert!(!first.contains("went away"), "{first}");
    // Phase 2 reads all its regions and ends without a fork or a
    // checkpoint: what it never touched is never filled.
    let (_, on_fault, in_background) =
        stats(&second).unwrap_or_else(|| panic!("no stats line in: {second}"));
    assert!(on_fault > 0 && in_background == 0, "{second}");
    assert!(second.contains("went away"), "{second}");
}

/// By default: faults served, the rest filled in the background.
#[test]
fn compressed_image_restarts_lazily_by_default() {
    let (first, second) = two_restarts("lazyz-default", &[]);
    for err in [&first, &second] {
        let (chunks, on_fault, in_background) =
            stats(err).unwrap_or_else(|| panic!("no stats line in: {err}"));
        assert!(chunks > 8, "{err}");
        assert!(on_fault + in_background > 0, "{err}");
    }
}

/// Without userfaultfd (forced here; an unprivileged process without
/// vm.unprivileged_userfaultfd is in the same case) compressed chunks are
/// decompressed before the program resumes, without a word.
#[test]
fn without_userfaultfd_chunks_are_decompressed_first() {
    let (first, second) = two_restarts("lazyz-nouffd", &[("DMTCP_RESTART_NO_UFFD", "1")]);
    for err in [&first, &second] {
        assert!(stats(err).is_none(), "{err}");
        assert!(!err.contains("userfaultfd"), "{err}");
    }
}

/// An image whose library does not speak the lazy protocol (metadata
/// without `lazy_protocol`, as every image of before it) is restored
/// eagerly: that library would neither take the page server's socket nor
/// ask for the missing pages before a fork or a checkpoint. The library
/// restored from it writes the protocol into its next image, which then
/// restarts lazily.
#[test]
fn an_image_of_a_library_without_the_lazy_protocol_restarts_eagerly() {
    let mut job = Job::new("lazyz-oldlib").env("DMTCP_RESTART_LAZY_STATS", "1");
    let path = checkpointed(&mut job);
    assert_eq!(
        Image::open(&path).unwrap().meta.lazy_protocol,
        LAZY_PROTOCOL
    );
    dmtcp_common::image::rewrite_meta(&path, |m| m.lazy_protocol = 0).unwrap();
    job.restart();
    create(&job, "go1");
    job.wait_for("waiting for go2");
    assert!(job.output().contains("phase 1 ok"), "{}", job.diag());
    let first = restart_err(&job);
    assert!(stats(&first).is_none(), "{first}");
    job.checkpoint();
    job.kill();
    let path = job.images()[0].clone();
    assert_eq!(
        Image::open(&path).unwrap().meta.lazy_protocol,
        LAZY_PROTOCOL
    );
    job.restart();
    create(&job, "go2");
    job.wait_success();
    assert!(job.output().contains("phase 2 ok"), "{}", job.diag());
    assert!(stats(&restart_err(&job)).is_some(), "{}", job.diag());
}

/// DMTCP_RESTART_EAGER=1 keeps everything eager; DMTCP_RESTART_UFFD=0
/// turns the page server off (compressed chunks are decompressed before
/// the program resumes).
#[test]
fn eager_restart_and_uffd_zero_stay_eager() {
    for (name, env) in [
        ("lazyz-eager", ("DMTCP_RESTART_EAGER", "1")),
        ("lazyz-off", ("DMTCP_RESTART_UFFD", "0")),
    ] {
        let (first, second) = two_restarts(name, &[env]);
        assert!(
            stats(&first).is_none() && stats(&second).is_none(),
            "{first}{second}"
        );
    }
}

/// With `dmtcp_restart --verify before` a damaged compressed chunk is
/// refused before the program runs, with the checksum message, though its
/// pages would only be needed later.
#[test]
fn a_damaged_compressed_chunk_is_refused_before_the_program_runs() {
    let mut job = Job::new("lazyz-damaged");
    let path = checkpointed(&mut job);
    let img = Image::open(&path).unwrap();
    // The last compressed chunk: with the default background fill, the
    // one filled last.
    let c = *img
        .chunks
        .iter()
        .rev()
        .find(|c| c.flags & CHUNK_ZSTD != 0 && c.stored_len > 200)
        .expect("a compressed chunk");
    drop(img);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[c.file_off as usize + 100] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    job.restart_with(&[
        "--verify".into(),
        "before".into(),
        path.display().to_string(),
    ]);
    let mut pr = job.proc.take().unwrap();
    let st = wait_timeout(&mut pr, TIMEOUT).expect("dmtcp_restart did not end");
    let err = restart_err(&job);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains(&format!("memory at {:#x}", c.addr)),
        "the message names another chunk: {err}"
    );
    assert!(
        job.peer_pids().is_empty(),
        "a process runs after a refused restart"
    );
    // The image made whole again restarts.
    restarts_when_whole(&mut job, &path, &good, &[]);
}

/// `good` written back to `path`, the job restarts from it (with
/// `dmtcp_restart` options `opts`) and ends well.
fn restarts_when_whole(job: &mut Job, path: &std::path::Path, good: &[u8], opts: &[String]) {
    std::fs::write(path, good).unwrap();
    let mut args = opts.to_vec();
    args.push(path.display().to_string());
    job.restart_with(&args);
    create(job, "go1");
    create(job, "go2");
    job.wait_success();
    assert!(job.output().contains("phase 2 ok"), "{}", job.diag());
}

/// An incremental image whose compressed chunks lie in the generation
/// before it restarts lazily too, and so does the next one.
#[test]
fn incremental_compressed_image_restarts_lazily() {
    incremental_restarts_lazily("lazyz-incr", &[], &[]);
}

/// Several threads fill in the background (4 here, on any machine) while
/// the program's threads fault, read and write through system calls, and
/// madvise, munmap and mremap its regions: every byte is still right in
/// both phases. (Regions of 48 MiB, 384 MiB in all: the fill took 0.15-0.45
/// s here and the program faulted on 7-25 runs meanwhile. Whether one of
/// its layout changes lands while a copy is under way is up to timing
/// here; `runs_under_way_when_the_layout_changes_are_put_back` makes sure
/// of it.)
#[test]
fn several_fill_threads_race_the_programs_own_changes() {
    for (name, opts) in [
        ("lazyz-threads", &[][..]),
        ("lazyz-threads-raw", &["--no-gzip"][..]),
    ] {
        let mut env = vec![("DMTCP_RESTART_FILL_THREADS", "4"), ("REGION_MB", "48")];
        if !opts.is_empty() {
            env.push(("DMTCP_RESTART_VERIFY", "on-fill"));
        }
        let (first, second) = two_restarts_with(name, opts, &env);
        for err in [&first, &second] {
            assert!(stats(err).is_some(), "no stats line in: {err}");
            assert!(err.contains("(4 threads, "), "{err}");
        }
        let (_, _, in_background) = stats(&first).unwrap();
        assert!(in_background > 0, "{first}");
    }
}

/// A change of the program's memory layout (`madvise`, `munmap`,
/// `mremap`) that lands while background copies are under way makes those
/// copies fail (EAGAIN) until the server has read the change; the runs
/// are put back and filled in the new layout. Each background fill here
/// waits 100 ms between its claim and its copy (a testing knob), so that
/// copies are under way when the program's changes come: the stats count
/// the runs put back, and every byte is still right in both phases.
///
/// One fill thread: its ~100 runs then take about 10 s, far longer than
/// the program needs to reach its first layout change, and the thread is
/// inside a claim almost all of the time. (With 4 threads the fill took
/// 2.4-4 s, and the program, whose faults on claimed runs wait for those
/// pauses too, once reached its changes on a loaded CI machine only after
/// the fill was over: nothing was put back.)
#[test]
fn runs_under_way_when_the_layout_changes_are_put_back() {
    let env = [
        ("DMTCP_RESTART_FILL_THREADS", "1"),
        ("REGION_MB", "48"),
        ("DMTCP_RESTART_VERIFY", "on-fill"),
        ("DMTCP_TEST_FILL_PAUSE_MS", "100"),
    ];
    // (The program changes its layout after the first restart only.)
    let (first, _) = two_restarts_with("lazyz-put-back", &["--no-gzip"], &env);
    let line = first
        .lines()
        .find(|l| l.contains("lazy restore of"))
        .unwrap_or_else(|| panic!("no stats line in: {first}"));
    let put_back: u64 = line
        .split(" put back)")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of runs put back in: {line}"));
    assert!(put_back > 0, "no run was put back: {line}");
}

/// The page server's messages go to the stderr `dmtcp_restart` was
/// started with, also when the program's stdout and stderr are one file
/// (`>out 2>&1`, which `dmtcp_restart` itself puts back at fds 1 and 2
/// before the server starts; its stats line used to land there).
#[test]
fn the_page_servers_messages_go_to_the_restarts_stderr() {
    let mut job = Job::new("lazyz-stderr").env("DMTCP_RESTART_LAZY_STATS", "1");
    let prog = c_program("lazyz");
    job.launch_one_log(&[prog.to_str().unwrap()]);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.kill();
    job.restart();
    create(&job, "go1");
    job.wait_for("waiting for go2");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while stats(&restart_err(&job)).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no stats line in restart.err{}",
            job.diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!job.output().contains("lazy restore of"), "{}", job.diag());
    assert!(job.output().contains("phase 1 ok"), "{}", job.diag());
    // dmtcp_restart's copy of its stderr (handed to the restorer for its
    // messages) is not left open in the program. (The restorer closes it;
    // the check also holds with that close taken out, so something later
    // closes it too: a guard of the result, not of the restorer's close.)
    let pids = job.peer_pids();
    assert!(!pids.is_empty(), "{}", job.diag());
    for pid in pids {
        let fd = format!("/proc/{pid}/fd/{}", dmtcp_common::fdnums::RESTART_STDERR_FD);
        assert!(
            std::fs::symlink_metadata(&fd).is_err(),
            "{fd} is open in the restarted program"
        );
    }
    create(&job, "go2");
    job.wait_success();
}

/// So does an incremental image of raw chunks with `--verify on-fill`: the
/// server reads and checks the chunks kept in the generation before.
#[test]
fn incremental_raw_image_checked_on_fill_restarts_lazily() {
    incremental_restarts_lazily(
        "lazyz-incr-raw",
        &["--no-gzip"],
        &[("DMTCP_RESTART_VERIFY", "on-fill")],
    );
}

fn incremental_restarts_lazily(name: &str, launch_opts: &[&str], env: &[(&str, &str)]) {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new(name).env("DMTCP_RESTART_LAZY_STATS", "1");
    for (k, v) in env {
        job = job.env(k, v);
    }
    let zstd = !launch_opts.contains(&"--no-gzip");
    let mut opts = vec!["--incremental"];
    opts.extend_from_slice(launch_opts);
    job.launch(&[p], &opts);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.checkpoint();
    job.kill();
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 2);
    let newest = images_in(&gens[1].1);
    let img = Image::open(&newest[0]).unwrap();
    let kept = img
        .chunks
        .iter()
        .filter(|c| c.source() == 1 && (c.flags & CHUNK_ZSTD != 0) == zstd)
        .count();
    assert!(
        kept > 8,
        "generation 2 keeps few chunks (compressed: {zstd}) in generation 1"
    );
    drop(img);
    let restartdir = ["--restartdir".to_string(), job.ckpt.display().to_string()];
    job.restart_with(&restartdir);
    create(&job, "go1");
    job.wait_for("waiting for go2");
    let first = restart_err(&job);
    let (chunks, on_fault, in_background) =
        stats(&first).unwrap_or_else(|| panic!("no stats line in: {first}"));
    // (Most of them lie in generation 1: it holds `kept` compressed chunks
    // of generation 2, of anonymous memory and of file mappings.)
    assert!(chunks > 8 && on_fault + in_background > 0, "{first}");
    job.checkpoint();
    job.kill();
    job.restart_with(&restartdir);
    create(&job, "go2");
    job.wait_success();
    let out = job.output();
    assert!(
        out.contains("phase 1 ok") && out.contains("phase 2 ok"),
        "{}",
        job.diag()
    );
    assert!(!out.contains("BAD"), "{}", job.diag());
    assert!(stats(&restart_err(&job)).is_some(), "{}", job.diag());
}

/// The anonymous memory of a raw image (`--no-gzip`) is anonymous memory
/// again after a restart, not a private mapping of the image file (where
/// `madvise(MADV_DONTNEED)` would bring back the image's bytes instead of
/// zeros: lazyz.c checks it): filled by the page server by default, read
/// in by the restorer without userfaultfd.
#[test]
fn raw_anonymous_memory_stays_anonymous_after_a_restart() {
    let (first, second) = two_restarts_with("lazyz-raw-default", &["--no-gzip"], &[]);
    for err in [&first, &second] {
        let (chunks, on_fault, in_background) =
            stats(err).unwrap_or_else(|| panic!("no stats line in: {err}"));
        assert!(chunks > 8 && on_fault + in_background > 0, "{err}");
    }
    let (first, second) = two_restarts_with(
        "lazyz-raw-nouffd",
        &["--no-gzip"],
        &[("DMTCP_RESTART_NO_UFFD", "1")],
    );
    assert!(
        stats(&first).is_none() && stats(&second).is_none(),
        "{first}{second}"
    );
}

/// The written pages of a private file mapping come back as the
/// program's own copies over the file it mapped, not as a mapping of the
/// image: `madvise(MADV_DONTNEED)` brings back the file's bytes and
/// `mremap` growing the mapping the file's next pages (privfile.c checks
/// both). Raw images, with and without userfaultfd, and an eager restart.
#[test]
fn written_pages_of_a_private_file_mapping_stay_over_their_file() {
    let prog = c_program("privfile");
    for (name, env) in [
        ("privfile-default", &[][..]),
        ("privfile-nouffd", &[("DMTCP_RESTART_NO_UFFD", "1")][..]),
        ("privfile-eager", &[("DMTCP_RESTART_EAGER", "1")][..]),
    ] {
        let mut job = Job::new(name);
        for (k, v) in env {
            job = job.env(k, v);
        }
        let data = job.dir.join("data");
        job.launch(
            &[prog.to_str().unwrap(), data.to_str().unwrap()],
            &["--no-gzip"],
        );
        job.wait_for("waiting for go1");
        job.checkpoint();
        job.kill();
        job.restart();
        create(&job, "go1");
        job.wait_success();
        assert!(job.output().contains("privfile ok"), "{name}{}", job.diag());
    }
}

/// With `--verify on-fill` the raw chunks the page server fills are not
/// read before the program resumes; the server checks each as it reads
/// it. With the background fill off, the program ran before its memory
/// was all in.
#[test]
fn raw_image_checked_on_fill_comes_on_demand() {
    let (first, second) = two_restarts_with(
        "lazyz-raw-onfill",
        &["--no-gzip"],
        &[
            ("DMTCP_RESTART_VERIFY", "on-fill"),
            ("DMTCP_RESTART_LAZY_BACKGROUND", "0"),
        ],
    );
    let (chunks, on_fault, in_background) =
        stats(&first).unwrap_or_else(|| panic!("no stats line in: {first}"));
    assert!(chunks > 8 && on_fault > 0, "{first}");
    assert!(chunks > on_fault, "every chunk filled on a fault: {first}");
    assert!(in_background > 0, "nothing left for the fork: {first}");
    let (_, on_fault, in_background) =
        stats(&second).unwrap_or_else(|| panic!("no stats line in: {second}"));
    assert!(on_fault > 0 && in_background == 0, "{second}");
}

/// The last raw chunk of anonymous private memory that is not a stack
/// in the image at `path` (with the background fill, the one filled last).
fn last_raw_anon_chunk(path: &std::path::Path) -> dmtcp_common::image::ChunkDesc {
    let img = Image::open(path).unwrap();
    let anon = |c: &dmtcp_common::image::ChunkDesc| {
        img.meta.areas.iter().any(|a| {
            a.kind == dmtcp_sys::restore::KIND_ANON_PRIVATE
                && a.flags & dmtcp_sys::restore::AREA_GROWSDOWN == 0
                && a.start <= c.addr
                && c.addr + c.len <= a.start + a.len
        })
    };
    *img.chunks
        .iter()
        .rev()
        .find(|c| c.flags & CHUNK_ZSTD == 0 && c.stored_len >= 65536 && c.source() == 0 && anon(c))
        .expect("a raw chunk of anonymous memory")
}

/// A damaged raw chunk: with `dmtcp_restart --verify before` refused
/// before the program runs; by default (`--verify on-fill`) the program
/// resumes, and the page server finds the damage when it reads that
/// chunk, before any of its pages reach the program, and stops the
/// program with the reason.
#[test]
fn a_damaged_raw_chunk_checked_on_fill_stops_the_program_with_the_reason() {
    use std::os::unix::process::ExitStatusExt;
    let mut job = Job::new("lazyz-raw-damaged");
    let path = checkpointed_with(&mut job, &["--no-gzip"]);
    let c = last_raw_anon_chunk(&path);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[c.file_off as usize + 100] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    let at = format!("memory at {:#x}", c.addr);
    // Checked before: refused, nothing started.
    job.restart_with(&[
        "--verify".into(),
        "before".into(),
        path.display().to_string(),
    ]);
    let st =
        wait_timeout(&mut job.proc.take().unwrap(), TIMEOUT).expect("dmtcp_restart did not end");
    let err = restart_err(&job);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("checksum mismatch") && err.contains(&at),
        "{err}"
    );
    assert!(
        job.peer_pids().is_empty(),
        "a process runs after a refused restart"
    );
    // By default (and with the option spelled out): started, then stopped
    // with the reason.
    for args in [
        vec![path.display().to_string()],
        vec![
            "--verify".into(),
            "on-fill".into(),
            path.display().to_string(),
        ],
    ] {
        job.restart_with(&args);
        let st = wait_timeout(&mut job.proc.take().unwrap(), TIMEOUT)
            .expect("the program was not stopped");
        let err = restart_err(&job);
        // (dmtcp_restart waits for the process it restarted and ends as it
        // did: 128 + the signal.)
        assert!(
            st.signal() == Some(libc::SIGKILL) || st.code() == Some(128 + libc::SIGKILL),
            "{args:?}: {st:?}: {err}{}",
            job.diag()
        );
        assert!(
            err.contains("checksum mismatch") && err.contains(&at),
            "{err}"
        );
        assert!(
            err.contains("stopped before it could use that memory"),
            "{err}"
        );
        assert!(!job.output().contains("phase 1"), "{}", job.diag());
    }
    // The image made whole again restarts, checked on fill.
    restarts_when_whole(&mut job, &path, &good, &[]);
}

/// The raw chunk, in the image at `path`, of the last byte of region 1 of
/// the lazyz that image is of, as that program printed its regions into
/// `out` (LAZYZ_SHOW_REGIONS, regions of 8 MiB).
fn region1_chunk(path: &std::path::Path, out: &str) -> dmtcp_common::image::ChunkDesc {
    let img = Image::open(path).unwrap();
    let line = format!("pid {} region 1 at 0x", img.meta.pid);
    let at = out
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .unwrap_or_else(|| panic!("no '{line}' in: {out}"));
    let last = at + (8 << 20) - 1;
    let c = *img
        .chunks
        .iter()
        .find(|c| c.addr <= last && last < c.addr + c.len)
        .expect("the chunk of region 1's last byte");
    assert!(c.flags & CHUNK_ZSTD == 0 && c.source() == 0, "{c:?}");
    c
}

/// A damaged chunk found on fill in one process of a computation of three
/// (a shell and two programs, each waiting for a file that is not there
/// yet, so none would ever end by itself), by the background fill during
/// the restart and by the program's own touch after it: its page server
/// stops that process and has the coordinator and the restart's init
/// stop the other two (joined or not yet), which would otherwise wait for
/// ever, and says which earlier generation to restart. Made whole again,
/// the images restart and both programs finish. (Verified to hang without
/// both of those stops.)
#[test]
fn a_damaged_chunk_found_on_fill_stops_the_whole_computation() {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("lazyz-damaged-job").env("LAZYZ_SHOW_REGIONS", "1");
    let script = format!("{p} & {p} & wait");
    // Full images: the chunk damaged is in the newest generation's file.
    job.launch(&["sh", "-c", &script], &["--no-gzip", "--no-incremental"]);
    job.wait_for("waiting for go1");
    while job.output().matches("waiting for go1").count() < 2 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Two generations: the message names the first.
    job.checkpoint();
    job.checkpoint();
    job.kill();
    let gens = committed(&job.ckpt);
    assert_eq!(gens.len(), 2, "{gens:?}");
    let newest = &gens[1].1;
    let imgs: Vec<_> = std::fs::read_dir(newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ckpt_lazyz_")
        })
        .collect();
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    let path = imgs[0].clone();
    // The chunk that holds the last byte of the program's region 1, which
    // phase 1 reads first (not memory the restart itself touches, such as
    // a thread's stack).
    let c = region1_chunk(&path, &job.output());
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[c.file_off as usize + 100] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    let dir = ["--restartdir".to_string(), job.ckpt.display().to_string()];
    // Found by the background fill, while the restart is still under way
    // (the coordinator gives the restart up, and the restart's init stops
    // the processes that have not joined it yet); then, without the background fill, by the program's
    // own touch once all three run (the page server has the coordinator
    // kill the others, which wait for go2).
    for background in [true, false] {
        let _ = std::fs::remove_file(job.dir.join("go1"));
        let fill = if background { "1" } else { "0" };
        job = job.env("DMTCP_RESTART_LAZY_BACKGROUND", fill);
        job.restart_with(&dir);
        if !background {
            let t = std::time::Instant::now();
            while job.peer_pids().len() < 3 && t.elapsed() < TIMEOUT {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            create(&job, "go1");
        }
        if wait_timeout(&mut job.proc.take().unwrap(), TIMEOUT).is_none() {
            panic!(
                "background fill {background}: the computation was not stopped: {}{}",
                restart_err(&job),
                job.diag()
            );
        }
        let err = restart_err(&job);
        assert!(
            err.contains("checksum mismatch") && err.contains(&format!("memory at {:#x}", c.addr)),
            "{err}"
        );
        assert!(err.contains("are stopped too"), "{err}");
        assert!(
            err.contains(&format!("--restartdir {}", gens[0].1.display())),
            "the message does not name generation {}: {err}",
            gens[0].0
        );
        // Every process of the computation is gone.
        let t = std::time::Instant::now();
        while !job.peer_pids().is_empty() && t.elapsed() < TIMEOUT {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            job.peer_pids().is_empty(),
            "background fill {background}: processes of the computation still run: {:?}{}",
            job.peer_pids(),
            job.diag()
        );
        // (Without the background fill the other program may have got
        // through phase 1 before it was stopped: then it waited for go2.)
        let out = job.output();
        assert!(
            !out.contains("phase 2") && !out.contains("BAD"),
            "{}",
            job.diag()
        );
        if background {
            assert!(!out.contains("phase 1"), "{}", job.diag());
        }
    }
    // Made whole again: both programs run to their end.
    std::fs::write(&path, &good).unwrap();
    let _ = std::fs::remove_file(job.dir.join("go1"));
    job = job.env("DMTCP_RESTART_LAZY_BACKGROUND", "1");
    job.restart_with(&dir);
    create(&job, "go1");
    create(&job, "go2");
    job.wait_success();
    let out = job.output();
    assert_eq!(out.matches("phase 2 ok").count(), 2, "{}", job.diag());
    assert!(!out.contains("BAD"), "{}", job.diag());
}

/// A wrong `--verify` (or DMTCP_RESTART_VERIFY) is a usage error.
#[test]
fn a_wrong_verify_value_is_refused() {
    let o = std::process::Command::new(bin_dir().join("dmtcp_restart"))
        .args(["--verify", "sometimes", "x.dmtcp"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Usage:"),
        "{o:?}"
    );
    let o = std::process::Command::new(bin_dir().join("dmtcp_restart"))
        .env("DMTCP_RESTART_VERIFY", "sometimes")
        .arg("x.dmtcp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("DMTCP_RESTART_VERIFY=sometimes"), "{err}");
}

/// `tool` run as user nobody, in `dir`.
fn as_nobody(tool_name: &str, dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin_dir().join(tool_name))
        .current_dir(dir);
    c
}

/// An unprivileged user (vm.unprivileged_userfaultfd=0, as here: full
/// userfaultfd is refused with EPERM, only UFFD_USER_MODE_ONLY would be
/// given) restarts a compressed image eagerly, silently, and correctly.
#[test]
fn an_unprivileged_restart_decompresses_first_without_a_word() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test switches users with setpriv: run it as root"
    );
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap();
    assert_eq!(
        sysctl.trim(),
        "0",
        "this test needs vm.unprivileged_userfaultfd=0"
    );
    let prog = c_program("lazyz");
    let dir = fresh_dir("lazyz-nobody");
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    for d in [&dir, &ckpt] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = dir.join("out.txt");
    std::fs::write(&out, b"").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    let port_file = dir.join("port");
    let mut coord = as_nobody("dmtcp_coordinator", &dir)
        .args(["-q", "-p", "0", "--port-file"])
        .arg(&port_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = read_port_file(&port_file).to_string();
    let output = || std::fs::read_to_string(&out).unwrap_or_default();
    let wait_for = |pat: &str| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !output().contains(pat) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {pat:?} in: {}",
                output()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let command = |args: &[&str]| {
        let o = as_nobody("dmtcp_command", &dir)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let mut launch = as_nobody("dmtcp_launch", &dir)
        .args(["-j", "-h", "127.0.0.1", "-p", &port, "--ckptdir"])
        .arg(&ckpt)
        .arg(&prog)
        .stdin(Stdio::null())
        .stdout(std::fs::OpenOptions::new().append(true).open(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("waiting for go1");
    command(&["-bc"]);
    command(&["-k"]);
    assert!(wait_timeout(&mut launch, TIMEOUT).is_some());
    let imgs = images_in(&ckpt);
    assert_eq!(imgs.len(), 1);
    let err_path = dir.join("restart.err");
    let mut restart = as_nobody("dmtcp_restart", &dir)
        .env("DMTCP_RESTART_LAZY_STATS", "1")
        .args(["-j", "-h", "127.0.0.1", "-p", &port])
        .args(&imgs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    create_in(&dir, "go1");
    create_in(&dir, "go2");
    let st = wait_timeout(&mut restart, TIMEOUT);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = coord.kill();
    let _ = coord.wait();
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}: {err}\n{}",
        output()
    );
    assert!(
        output().contains("phase 2 ok") && !output().contains("BAD"),
        "{}",
        output()
    );
    assert!(stats(&err).is_none(), "{err}");
    assert!(!err.contains("userfaultfd"), "{err}");
}

fn create_in(dir: &std::path::Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

/// Processes below `root` (by parent links) holding a userfaultfd: the
/// page server(s) of a lazy restart.
fn page_servers(root: i32) -> Vec<i32> {
    let ppid = |p: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let i = stat.rfind(')')?;
        stat[i + 2..].split_whitespace().nth(1)?.parse().ok()
    };
    let below = |mut p: i32| {
        for _ in 0..64 {
            match ppid(p) {
                Some(q) if q == root => return true,
                Some(q) if q > 1 => p = q,
                _ => return false,
            }
        }
        false
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let holds_uffd = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten().any(|f| {
                    std::fs::read_link(f.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))
                })
            })
            .unwrap_or(false);
        if holds_uffd && below(pid) {
            out.push(pid);
        }
    }
    out
}

/// The page server killed (SIGKILL: nothing else stops it) while pages are
/// still missing: the restarted program must not run on the zero pages the
/// kernel would now give it. It stops at once with the reason, before it
/// is told to read its memory.
#[test]
fn a_killed_page_server_stops_the_program_with_the_reason() {
    let mut job = Job::new("lazyz-killed").env("DMTCP_RESTART_LAZY_BACKGROUND", "0");
    checkpointed(&mut job);
    job.restart();
    job.wait_running(1);
    let root = job.proc.as_ref().unwrap().id() as i32;
    let servers = page_servers(root);
    assert_eq!(
        servers.len(),
        1,
        "one page server expected: {servers:?}{}",
        job.diag()
    );
    // SAFETY: killing the page server of our own job.
    unsafe { libc::kill(servers[0], libc::SIGKILL) };
    let deadline = std::time::Instant::now() + TIMEOUT;
    // The program's stderr is its own (err.txt), restored with it.
    while !job.diag().contains("ended before it had restored all") {
        assert!(
            std::time::Instant::now() < deadline,
            "the program did not stop{}",
            job.diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    create(&job, "go1");
    let st = job.proc.take().unwrap().wait().unwrap();
    assert!(
        !st.success(),
        "the job ended well with its memory gone{}",
        job.diag()
    );
    assert!(!job.output().contains("phase 1"), "{}", job.diag());
}

/// Two programs of one computation, launched apart and restarted apart
/// (one `dmtcp_restart` each, as on two hosts), without the background
/// fill: once both run, the first reads the chunk damaged in its image;
/// its page server stops it and has the coordinator stop the second,
/// which the first one's `dmtcp_restart` knows nothing of and which would
/// otherwise wait for go2 for ever.
#[test]
fn a_damaged_chunk_stops_the_program_restarted_apart() {
    use std::process::Stdio;
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("lazyz-damaged-apart")
        .env("LAZYZ_SHOW_REGIONS", "1")
        .env("DMTCP_RESTART_LAZY_BACKGROUND", "0");
    let opts = ["--no-gzip", "--no-incremental"];
    job.launch(&[p], &opts);
    job.wait_for("waiting for go1");
    let out2 = job.dir.join("out2.txt");
    let dir = job.dir.clone();
    let file = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let mut c = job.joined("dmtcp_launch");
    c.args(opts)
        .arg(p)
        .env("LAZYZ_SHOW_REGIONS", "1")
        .stdin(Stdio::null())
        .stdout(file("out2.txt"))
        .stderr(file("err2.txt"));
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut second = c.spawn().unwrap();
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&out2)
        .unwrap_or_default()
        .contains("waiting for go1")
    {
        assert!(t.elapsed() < TIMEOUT, "the second program did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    job.checkpoint();
    job.kill();
    let _ = wait_timeout(&mut second, TIMEOUT);
    // The first program's image (by the pid it printed) and the other.
    let out = job.output();
    let pid_of = |img: &std::path::PathBuf| Image::open(img).unwrap().meta.pid;
    let (mine, theirs): (Vec<_>, Vec<_>) = job
        .images()
        .into_iter()
        .partition(|i| out.contains(&format!("pid {} region 1 at 0x", pid_of(i))));
    assert_eq!((mine.len(), theirs.len()), (1, 1), "{mine:?} {theirs:?}");
    let path = mine[0].clone();
    let c = region1_chunk(&path, &out);
    let mut bad = std::fs::read(&path).unwrap();
    bad[c.file_off as usize + 100] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    job.restart_with(&[path.display().to_string()]);
    let mut r2 = job.joined("dmtcp_restart");
    r2.arg(&theirs[0])
        .env("DMTCP_RESTART_LAZY_BACKGROUND", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file("restart2.err"));
    let mut r2 = r2.spawn().unwrap();
    let t = std::time::Instant::now();
    while !String::from_utf8_lossy(&job.command(&["-s"]).stdout).contains("RUNNING=yes") {
        assert!(
            t.elapsed() < TIMEOUT,
            "the restart did not complete{}",
            job.diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    create(&job, "go1");
    let first = wait_timeout(&mut job.proc.take().unwrap(), TIMEOUT);
    let other = wait_timeout(&mut r2, TIMEOUT);
    let err = restart_err(&job);
    let err2 = std::fs::read_to_string(job.dir.join("restart2.err")).unwrap_or_default();
    assert!(
        first.is_some() && other.is_some(),
        "not stopped: first {first:?}, second {other:?}\n{err}\n{err2}{}",
        job.diag()
    );
    assert!(
        err.contains("checksum mismatch") && err.contains("are stopped too"),
        "{err}"
    );
    assert!(job.peer_pids().is_empty(), "{:?}", job.peer_pids());
    assert!(!job.output().contains("BAD"), "{}", job.diag());
}
