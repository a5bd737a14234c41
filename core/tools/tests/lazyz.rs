//! Lazy restore of compressed (zstd) images through userfaultfd: the page
//! server fills the pages the program touches first and the rest in the
//! background; the program (tests/c/lazyz.c) checks its memory after the
//! restart through system calls, madvise/munmap/mremap, threads and a
//! fork, is checkpointed again and restarted from that image, and checks
//! it all once more. The tests run as root (full userfaultfd).

mod common;
use common::*;
use dmtcp_common::image::{Image, CHUNK_ZSTD};

/// The stats line of the page server in restart.err:
/// (chunks, filled on a fault, filled in the background), if any.
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
        filled(" filled on a fault"),
        filled(" in the background"),
    ))
}

fn create(job: &Job, name: &str) {
    std::fs::write(job.dir.join(name), b"").unwrap();
}

fn restart_err(job: &Job) -> String {
    std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default()
}

/// Launch, checkpoint, kill, restart (phase 1 checks), checkpoint again,
/// kill, restart from that image (phase 2 checks). `env` goes to both
/// restarts. The first restart's and the second's stderr.
fn two_restarts(name: &str, env: &[(&str, &str)]) -> (String, String) {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new(name).env("DMTCP_RESTART_LAZY_STATS", "1");
    for (k, v) in env {
        job = job.env(k, v);
    }
    job.launch(&[p], &[]);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.kill();
    let imgs = job.images();
    assert_eq!(imgs.len(), 1);
    let img = Image::open(&imgs[0]).unwrap();
    assert!(
        img.chunks.iter().filter(|c| c.flags & CHUNK_ZSTD != 0).count() > 8,
        "the image holds few compressed chunks"
    );
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
    let (first, second) = two_restarts(
        "lazyz-demand",
        &[("DMTCP_RESTART_LAZY_BACKGROUND", "0")],
    );
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

/// The default: faults served, the rest filled in the background.
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

/// DMTCP_RESTART_EAGER=1 keeps everything eager.
#[test]
fn eager_restart_stays_eager() {
    let (first, second) = two_restarts("lazyz-eager", &[("DMTCP_RESTART_EAGER", "1")]);
    assert!(stats(&first).is_none() && stats(&second).is_none(), "{first}{second}");
}

/// A damaged compressed chunk is still refused before the program runs,
/// with the checksum message, though its pages would only be needed later.
#[test]
fn a_damaged_compressed_chunk_is_refused_before_the_program_runs() {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("lazyz-damaged");
    job.launch(&[p], &[]);
    job.wait_for("waiting for go1");
    job.checkpoint();
    job.kill();
    let path = job.images()[0].clone();
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
    job.restart();
    let mut pr = job.proc.take().unwrap();
    let st = wait_timeout(&mut pr, TIMEOUT).expect("dmtcp_restart did not end");
    let err = restart_err(&job);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains(&format!("memory at {:#x}", c.addr)),
        "the message names another chunk: {err}"
    );
    assert!(job.peer_pids().is_empty(), "a process runs after a refused restart");
    // The image made whole again restarts.
    std::fs::write(&path, &good).unwrap();
    job.restart();
    create(&job, "go1");
    create(&job, "go2");
    job.wait_success();
    assert!(job.output().contains("phase 2 ok"), "{}", job.diag());
}

/// An incremental image whose compressed chunks lie in the generation
/// before it restarts lazily too, and so does the next one.
#[test]
fn incremental_compressed_image_restarts_lazily() {
    let prog = c_program("lazyz");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("lazyz-incr").env("DMTCP_RESTART_LAZY_STATS", "1");
    job.launch(&[p], &["--incremental"]);
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
        .filter(|c| c.source() == 1 && c.flags & CHUNK_ZSTD != 0)
        .count();
    assert!(kept > 8, "generation 2 keeps few compressed chunks in generation 1");
    drop(img);
    let restartdir = ["--restartdir".to_string(), job.ckpt.display().to_string()];
    job.restart_with(&restartdir);
    create(&job, "go1");
    job.wait_for("waiting for go2");
    let first = restart_err(&job);
    let (chunks, on_fault, in_background) =
        stats(&first).unwrap_or_else(|| panic!("no stats line in: {first}"));
    assert!(chunks as usize > kept && on_fault + in_background > 0, "{first}");
    job.checkpoint();
    job.kill();
    job.restart_with(&restartdir);
    create(&job, "go2");
    job.wait_success();
    let out = job.output();
    assert!(out.contains("phase 1 ok") && out.contains("phase 2 ok"), "{}", job.diag());
    assert!(!out.contains("BAD"), "{}", job.diag());
    assert!(stats(&restart_err(&job)).is_some(), "{}", job.diag());
}
