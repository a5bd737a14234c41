//! Incremental images: a checkpoint writes only the chunks whose contents
//! changed since the previous generation and refers to the earlier images
//! for the rest. A program that changes a known part of its memory between
//! checkpoints (tests/c/incrmem.c, which verifies all of its memory every
//! 50 ms) is restarted from generation N, incremental on N-1 on N-2, with
//! the image files, the restart script and --restartdir of a moved
//! directory; every committed generation holds (hard-linked) the earlier
//! images it refers to, so pruning keeps exactly `--keep-generations`; a
//! missing, replaced or damaged earlier image is refused before the
//! program runs.

mod common;
use common::*;
use dmtcp_common::image::Image;
use std::path::{Path, PathBuf};

/// The one image of generation directory `g`.
fn image_of(g: &Path) -> PathBuf {
    let v = images_in(g);
    assert_eq!(v.len(), 1, "{}: {v:?}", g.display());
    v[0].clone()
}

/// Bytes of memory an image keeps in itself (not in earlier images).
fn own_bytes(img: &Image) -> u64 {
    img.chunks
        .iter()
        .filter(|c| c.source() == 0)
        .map(|c| c.stored_len)
        .sum()
}

/// Names of the generation directories an image refers to.
fn source_dirs(img: &Image) -> Vec<String> {
    let mut v: Vec<String> = img
        .meta
        .sources
        .iter()
        .map(|s| s.name.split('/').next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn dir_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `incrmem` launched with `opts`; CTL file in the job's directory.
struct Mem {
    job: Job,
    ctl: PathBuf,
    phase: u32,
}

impl Mem {
    fn launch(name: &str, opts: &[&str]) -> Mem {
        Mem::launch_with(name, &[], opts)
    }

    /// With `coord` options for the job's coordinator.
    fn launch_with(name: &str, coord: &[&str], opts: &[&str]) -> Mem {
        let prog = c_program("incrmem");
        let mut job = Job::with_coordinator_args(name, coord);
        let ctl = job.dir.join("ctl");
        std::fs::write(&ctl, "0").unwrap();
        job.launch(
            &[prog.to_str().unwrap(), ctl.to_str().unwrap(), "32", "10"],
            opts,
        );
        job.wait_for("phase 0 done\n");
        Mem { job, ctl, phase: 0 }
    }

    /// The next phase: about 10% of the memory changes.
    fn change(&mut self) {
        self.phase += 1;
        std::fs::write(&self.ctl, self.phase.to_string()).unwrap();
        self.job.wait_for(&format!("phase {} done", self.phase));
    }

    /// End the program (it checks all of its memory once more).
    fn finish(&mut self) {
        std::fs::write(&self.ctl, "end").unwrap();
        self.job.wait_success();
        let out = self.job.output();
        assert!(
            out.contains(&format!("OK phase {}\n", self.phase)) && !out.contains("BAD"),
            "{out}"
        );
    }
}

/// The earlier image `name` (`dmtcp_gen_<comp>_<N>/<image>`, as a
/// source names it) as generation directory `g` holds it: a hard link the
/// coordinator made before the commit, listed in the manifest with its
/// size and CRCs.
fn held_source(g: &Path, name: &str) -> PathBuf {
    let p = g.join(name);
    let m = dmtcp_common::generation::Manifest::load(g).unwrap_or_else(|e| panic!("{e}"));
    let e = m
        .sources
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{}: manifest lists no source {name}: {m:?}", g.display()));
    let len = std::fs::metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len();
    assert_eq!(len, e.size, "{}", p.display());
    let crc = dmtcp_common::generation::file_crc32(&p).unwrap();
    assert_eq!(crc, e.crc32, "{}: crc32", p.display());
    p
}

/// Generations 1 (full), 2 (on 1), 3 (on 2 and 1) with --full-every 5
/// and --keep-generations 2 (the default): exactly 2 and 3 stay, each
/// holding (hard-linked) the earlier images it refers to; 2 and 3 store a
/// small part of 1's bytes. Killed, restarted with the restart script
/// from generation 3, generation 1's own directory gone; every byte is
/// checked by the program. After the restart the first image is full, the
/// next one incremental again, and two generations stay each time.
#[test]
fn chain_of_three_restarts_and_prunes_to_the_kept_generations() {
    let mut m = Mem::launch("incr-chain", &["--full-every", "5"]);
    let ckpt = m.job.ckpt.clone();
    m.job.checkpoint();
    let g1 = dir_name(&committed(&ckpt)[0].1);
    m.change();
    m.job.checkpoint();
    m.change();
    m.job.checkpoint();
    let gens = committed(&ckpt);
    assert_eq!(
        gens.iter().map(|g| g.0).collect::<Vec<_>>(),
        [2, 3],
        "--keep-generations 2 keeps two generations"
    );
    let (img2, img3) = (image_of(&gens[0].1), image_of(&gens[1].1));
    let img1 = held_source(&gens[1].1, &format!("{g1}/{}", dir_name(&img2)));
    assert_eq!(
        held_source(&gens[0].1, &format!("{g1}/{}", dir_name(&img2)))
            .metadata()
            .unwrap()
            .len(),
        img1.metadata().unwrap().len()
    );
    held_source(
        &gens[1].1,
        &format!("{}/{}", dir_name(&gens[0].1), dir_name(&img3)),
    );
    let imgs: Vec<Image> = [img1, img2, img3]
        .iter()
        .map(|p| Image::open(p).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(imgs[0].meta.sources.is_empty(), "generation 1 is full");
    assert_eq!(source_dirs(&imgs[1]), [g1.as_str()]);
    assert_eq!(
        source_dirs(&imgs[2]),
        [g1.clone(), dir_name(&gens[0].1)],
        "generation 3 refers to where the bytes are (1 and 2), never through a chain"
    );
    assert_eq!(imgs[2].meta.since_full, 2);
    let (full, second, third) = (
        own_bytes(&imgs[0]),
        own_bytes(&imgs[1]),
        own_bytes(&imgs[2]),
    );
    assert!(full > 32 << 20, "generation 1 holds {full} bytes");
    for (n, b, g) in [(2, second, &gens[0].1), (3, third, &gens[1].1)] {
        assert!(
            b * 4 < full,
            "generation {n} stores {b} bytes of memory, the full image {full}"
        );
        let file = std::fs::metadata(image_of(g)).unwrap().len();
        assert!(file * 4 < full, "generation {n}'s file has {file} bytes");
    }
    for img in &imgs {
        img.verify_all().unwrap_or_else(|e| panic!("{e}"));
    }
    m.job.kill();
    let script = ckpt.join("dmtcp_restart_script.sh");
    let mut c = std::process::Command::new("bash");
    c.arg(&script)
        .args(["--coord-host", "127.0.0.1", "--coord-port"])
        .arg(m.job.port.to_string())
        .current_dir(&m.job.dir)
        .stdout(std::fs::File::create(m.job.dir.join("restart.out")).unwrap())
        .stderr(std::fs::File::create(m.job.dir.join("restart.err")).unwrap());
    m.job.proc = Some(c.spawn().unwrap());
    m.change();
    m.job.checkpoint();
    let gens = committed(&ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [3, 4]);
    let img4 = Image::open(&image_of(&gens[1].1)).unwrap();
    assert!(
        img4.meta.sources.is_empty(),
        "the first image after a restart is full"
    );
    m.change();
    m.job.checkpoint();
    let gens = committed(&ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [4, 5]);
    let img5 = Image::open(&image_of(&gens[1].1)).unwrap();
    assert_eq!(source_dirs(&img5), [dir_name(&gens[0].1)]);
    m.finish();
}

/// `--keep-generations 1`: generation 2, incremental on 1, is the only
/// one left, and generation 1's image lives on in it only. Restarting the
/// top-level image name (a link to generation 2's image) finds it there;
/// the program checks every byte.
#[test]
fn keep_one_generation_restarts_the_top_level_image() {
    let mut m = Mem::launch_with("incr-keep1", &["--keep-generations", "1"], &[]);
    let ckpt = m.job.ckpt.clone();
    m.job.checkpoint();
    let g1 = dir_name(&committed(&ckpt)[0].1);
    m.change();
    m.job.checkpoint();
    let gens = committed(&ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [2]);
    let img2 = Image::open(&image_of(&gens[0].1)).unwrap();
    assert_eq!(source_dirs(&img2), [g1.as_str()]);
    assert!(!ckpt.join(&g1).exists());
    held_source(&gens[0].1, &img2.meta.sources[0].name);
    m.job.kill();
    let top = image_of(&ckpt);
    m.job.restart_with(&[top.display().to_string()]);
    m.change();
    m.finish();
}

/// Generations 1 (full) and 2 (incremental), killed. Restarting
/// generation 2's image is refused with a clear message, before the
/// program runs, when generation 1's image is missing (the link in
/// generation 2 and generation 1's own), replaced by another image,
/// truncated, or when a chunk generation 2 refers to is damaged; once
/// the file is back next to generation 2 (in generation 1's directory,
/// not linked) the same image restarts and the program finds all of its
/// memory (here copied, not mapped: DMTCP_RESTART_EAGER).
#[test]
fn a_missing_replaced_or_damaged_earlier_image_is_refused() {
    let mut m = Mem::launch("incr-refuse", &["--no-gzip"]);
    let ckpt = m.job.ckpt.clone();
    m.job.checkpoint();
    m.change();
    m.job.checkpoint();
    m.job.kill();
    let gens = committed(&ckpt);
    assert_eq!(gens.len(), 2);
    let (first, second) = (image_of(&gens[0].1), image_of(&gens[1].1));
    let good = std::fs::read(&first).unwrap();
    let img2 = Image::open(&second).unwrap();
    assert_eq!(img2.meta.sources.len(), 1);
    let linked = held_source(&gens[1].1, &img2.meta.sources[0].name);
    std::fs::remove_file(&first).unwrap();
    let c = *img2
        .chunks
        .iter()
        .find(|c| c.source() == 1)
        .expect("a chunk kept in generation 1");
    // (A damaged chunk is refused up front with `--verify before`; by
    // default the page server finds it as it fills it: lazyz.rs.)
    let refused = |job: &mut Job, want: &str| {
        job.restart_with(&[
            "--verify".into(),
            "before".into(),
            second.display().to_string(),
        ]);
        let mut p = job.proc.take().unwrap();
        let st = wait_timeout(&mut p, TIMEOUT).expect("dmtcp_restart did not end");
        let err = std::fs::read_to_string(job.dir.join("restart.err")).unwrap();
        eprintln!("refused as it should be: {err}");
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(err.contains(want), "wanted {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            job.peer_pids().is_empty(),
            "a process of the job runs after a refused restart"
        );
    };
    std::fs::remove_file(&linked).unwrap();
    refused(&mut m.job, "is missing");
    // Another image of the same name: generation 2's own.
    std::fs::copy(&second, &linked).unwrap();
    refused(&mut m.job, "is another image");
    std::fs::write(&linked, &good[..good.len() / 2]).unwrap();
    refused(&mut m.job, "is truncated");
    let mut bad = good.clone();
    bad[c.file_off as usize + 100] ^= 0x5a;
    std::fs::write(&linked, &bad).unwrap();
    refused(&mut m.job, "checksum mismatch");
    std::fs::remove_file(&linked).unwrap();
    std::fs::write(&first, &good).unwrap();
    m.job = m.job.env("DMTCP_RESTART_EAGER", "1");
    m.job.restart_with(&[second.display().to_string()]);
    m.change();
    m.finish();
}

/// Forked checkpointing with zstd chunks: generation 3 is incremental on
/// 2 on 1 (generation 1's directory pruned, its image held in 3's). The
/// checkpoint directory is moved elsewhere, then generation 3's directory
/// alone is moved out of it and everything else deleted: `dmtcp_restart
/// --restartdir` of that directory restarts generation 3 (its sources
/// found inside it by their relative names), memory mapped lazily from
/// all three files.
#[test]
fn forked_compressed_chain_survives_a_moved_directory() {
    let mut m = Mem::launch("incr-moved", &["--incremental", "--forked-ckpt", "--gzip"]);
    for _ in 0..2 {
        m.job.checkpoint();
        m.change();
    }
    m.job.checkpoint();
    let gens = committed(&m.job.ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [2, 3]);
    let img3 = Image::open(&image_of(&gens[1].1)).unwrap();
    assert_eq!(img3.meta.sources.len(), 2, "{:?}", img3.meta.sources);
    m.job.kill();
    let moved = m.job.dir.join("moved");
    std::fs::rename(&m.job.ckpt, &moved).unwrap();
    let alone = m.job.dir.join("alone");
    std::fs::rename(moved.join(dir_name(&gens[1].1)), &alone).unwrap();
    std::fs::remove_dir_all(&moved).unwrap();
    m.job
        .restart_with(&["--restartdir".into(), alone.display().to_string()]);
    m.change();
    m.finish();
}

/// The hash stored for each chunk (the writers compute it with AVX-512 or
/// AVX2 where the CPU has them, engine/xxh3.rs) is xxh3-128 of the
/// chunk's bytes as `xxhash_rust` computes it, for the chunks generation 2
/// wrote and those it refers to in generation 1: so a chunk is judged
/// unchanged by the same function on any CPU. Killed and restarted from
/// generation 2, the program finds all of its memory.
#[test]
fn stored_hashes_are_xxh3_128_of_the_chunks() {
    let mut m = Mem::launch("incr-hash", &["--incremental"]);
    m.job.checkpoint();
    m.change();
    m.job.checkpoint();
    let gens = committed(&m.job.ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2]);
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let mut referred = 0;
    for g in &gens {
        let img = Image::open(&image_of(&g.1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.hashes.len(), img.chunks.len());
        for (c, &h) in img.chunks.iter().zip(&img.hashes) {
            img.read_chunk(c, &mut out, &mut scratch)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                h,
                xxhash_rust::xxh3::xxh3_128(&out),
                "chunk at {:#x} ({} bytes) of {}",
                c.addr,
                c.len,
                g.1.display()
            );
            referred += usize::from(c.source() > 0);
        }
    }
    assert!(
        referred > 100,
        "generation 2 refers to {referred} chunks of 1"
    );
    m.job.kill();
    m.job.restart();
    m.change();
    m.finish();
}

/// With `--no-incremental` every image is full: no sources, no hashes,
/// generations pruned to `--keep-generations`.
#[test]
fn no_incremental_makes_every_image_full() {
    let mut m = Mem::launch("incr-off", &["--no-incremental"]);
    m.job.checkpoint();
    m.change();
    m.job.checkpoint();
    m.change();
    m.job.checkpoint();
    let gens = committed(&m.job.ckpt);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [2, 3]);
    for g in &gens {
        let img = Image::open(&image_of(&g.1)).unwrap();
        assert!(img.meta.sources.is_empty() && img.hashes.is_empty());
        assert!(own_bytes(&img) > 32 << 20, "{}", own_bytes(&img));
    }
    m.finish();
}
