//! `dmtcp_restart`: bring processes back from their images.
//!
//! Every image is validated first (header, index, the files it maps, the
//! kernel's vDSO layout), so a bad image is reported before anything starts.
//! Then, per image, this process connects to the coordinator, starts a
//! detached streamer (a grandchild that reads, checks and decompresses the
//! image and writes it into a pipe), and replaces itself with the static
//! restorer, which maps the stream back and jumps into the program. With
//! userfaultfd, the streamer then stays as the page server of the
//! anonymous memory it left out of the stream (`crate::lazy`), whose
//! chunks it checks as it reads them (`--verify on-fill`, the default;
//! with `--verify before` the streamer checks them all first).

use crate::cli;
use crate::client;
use clap::{value_parser, Arg, ArgAction, Command, ValueHint};
use dmtcp_common::image::{ChunkDesc, Image, ImageError};
use dmtcp_sys::restore::*;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

/// The command line of `dmtcp_restart`.
pub fn command() -> Command {
    let cmd = cli::tool("dmtcp_restart", "Restart processes from checkpoint images.")
        .override_usage(
            "dmtcp_restart [OPTIONS] <ckpt1.dmtcp> [ckpt2.dmtcp...]\n       \
             dmtcp_restart [OPTIONS] --restartdir DIR",
        );
    let cmd = cli::coord_args(
        cmd,
        "Port of the coordinator (env DMTCP_COORD_PORT, default 7779; 0 = any free port)",
        "Checkpoint interval after restart (env DMTCP_CHECKPOINT_INTERVAL, 0 = manual)",
    )
    .next_help_heading(cli::OTHER)
    .arg(cli::ckptdir(
        "Where later checkpoints of the restarted processes go",
    ))
    .arg(
        Arg::new("restartdir")
            .short('d')
            .short_alias('r')
            .long("restartdir")
            .value_name("DIR")
            .value_parser(value_parser!(PathBuf))
            .value_hint(ValueHint::DirPath)
            .action(ArgAction::Append)
            .help(
                "Restart the newest committed checkpoint generation in DIR (or DIR itself if \
                 it is a generation's directory; in a directory without generations: every \
                 ckpt_*.dmtcp image in it); also -r. `dmtcp_restart DIR` does the same",
            ),
    )
    .arg(cli::flag(
        "no_strict_checking",
        "no-strict-checking",
        "Restart even on a processor that lacks features the images were taken with \
         (images are still checked for damage)",
    ))
    .arg(cli::flag(
        "allow_other_user_image",
        "allow-other-user-image",
        "Restart images owned by another user (refused by default)",
    ))
    .arg(
        Arg::new("verify")
            .long("verify")
            .value_name("WHEN")
            .value_parser(["before", "on-fill"])
            .hide_possible_values(true)
            .help(
                "When the chunks of memory are checked against their checksums: `on-fill` \
                 (default): the chunks the page server fills (anonymous memory) are checked as \
                 it reads them, before the program can use them, so the program resumes without \
                 reading its whole image first; a damaged chunk then stops the computation with \
                 the reason. `before`: every chunk is checked before the program resumes, and a \
                 damaged image is refused with nothing started (env DMTCP_RESTART_VERIFY)",
            ),
    )
    .arg(cli::tmpdir("Directory for temporary files"))
    .arg(cli::quiet("Less output"))
    .arg(cli::verbose())
    .arg(cli::secret_from_stdin())
    .arg(
        Arg::new("images")
            .value_name("ckpt.dmtcp")
            .help("Checkpoint images, all of one computation (or a directory, as --restartdir)")
            .num_args(1..)
            .action(ArgAction::Append)
            .value_parser(value_parser!(PathBuf))
            .value_hint(ValueHint::FilePath)
            .required_unless_present("restartdir")
            .help_heading(None),
    );
    cli::finish(cmd)
}

/// Entry point of `dmtcp_restart`.
pub fn main(args: Vec<String>) -> i32 {
    let mut cmd = command();
    let m = match cli::parse(&mut cmd, args) {
        Ok(m) => m,
        Err(code) => return code,
    };
    dmtcp_common::log::init_tool(
        "dmtcp_restart",
        "dmtcp_restart: ",
        m.get_count("verbose"),
        m.get_count("quiet"),
    );
    // Our messages (and the page server's) keep going where ours went
    // once fd 2 is the restarted program's.
    dmtcp_common::log::keep_stderr(dmtcp_common::fdnums::RESTART_STDERR_FD);
    if let Err(e) = crate::client::secret_options(&m) {
        dmtcp_common::log_error!("{e}");
        return 1;
    }
    let mut a = cli::coord_addr(&m);
    let ckpt_dir = m.get_one::<PathBuf>("ckptdir").cloned();
    let mut images: Vec<PathBuf> = Vec::new();
    let mut restart_dirs: Vec<PathBuf> = m
        .get_many::<PathBuf>("restartdir")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    // A directory among the images: as --restartdir.
    for p in m.get_many::<PathBuf>("images").into_iter().flatten() {
        if p.is_dir() {
            restart_dirs.push(p.clone());
        } else {
            images.push(p.clone());
        }
    }
    let verify = m.get_one::<String>("verify").cloned().or_else(|| {
        std::env::var("DMTCP_RESTART_VERIFY")
            .ok()
            .filter(|v| !v.is_empty())
    });
    match verify.as_deref() {
        Some("before") => {
            let _ = VERIFY_ON_FILL.set(false);
        }
        None | Some("on-fill") => {
            let _ = VERIFY_ON_FILL.set(true);
        }
        Some(v) => {
            return cli::usage_error(
                &mut cmd,
                format!("DMTCP_RESTART_VERIFY={v}: expected `before` or `on-fill`"),
            )
        }
    }
    let allow_other_image = m.get_flag("allow_other_user_image");
    let strict = !m.get_flag("no_strict_checking");
    // Images a generation's manifest lists: what the manifest says of them.
    let mut listed: Vec<(PathBuf, dmtcp_common::generation::Entry, PathBuf)> = Vec::new();
    for d in &restart_dirs {
        match generation_images(d) {
            Ok(found) => {
                for (p, e) in found.images {
                    images.push(p.clone());
                    listed.push((p, e, found.manifest.clone()));
                }
            }
            Err(m) => {
                dmtcp_common::log_error!("{m}");
                return 1;
            }
        }
    }
    if images.is_empty() {
        return cli::usage_error(&mut cmd, "no checkpoint images given");
    }
    for (p, _, manifest) in &listed {
        if std::fs::symlink_metadata(p).is_err() {
            dmtcp_common::log_error!(
                "{} lists {}, which is missing",
                manifest.display(),
                p.display()
            );
            return 1;
        }
    }
    let mut opened = Vec::new();
    for p in &images {
        match Image::open(p).and_then(|img| preflight(&img).map(|_| img)) {
            Ok(img) => opened.push(img),
            Err(e) => {
                dmtcp_common::log_error!("{e}");
                return 1;
            }
        }
    }
    // Top-level images of two generations of one computation (a job
    // killed while the names were being moved to a new generation after
    // its commit): the newer generation's whole set, from its manifest.
    let comps: std::collections::BTreeSet<String> =
        opened.iter().map(|i| i.meta.comp_id.clone()).collect();
    for c in comps {
        let mine = |i: &Image| i.meta.comp_id == c;
        let gens: std::collections::BTreeSet<u32> = opened
            .iter()
            .filter(|i| mine(i))
            .map(|i| i.meta.generation)
            .collect();
        let Some(&top) = gens.iter().next_back().filter(|_| gens.len() > 1) else {
            continue;
        };
        let Some(dir) = opened
            .iter()
            .find(|i| mine(i) && i.meta.generation == top)
            .and_then(|i| i.path.parent().map(Path::to_path_buf))
        else {
            continue;
        };
        let gdir = dir.join(dmtcp_common::generation::dir_name(&c, top));
        let Ok(m) = dmtcp_common::generation::Manifest::load(&gdir) else {
            continue;
        };
        dmtcp_common::log_info!(
            "the images given are of generations {gens:?} of computation {c}: restarting generation {top} \
             as its manifest lists it ({})",
            gdir.display()
        );
        opened.retain(|i| !mine(i));
        for e in &m.images {
            let p = dmtcp_common::generation::Manifest::path_of(&gdir, e);
            match Image::open(&p).and_then(|img| preflight(&img).map(|_| img)) {
                Ok(img) => opened.push(img),
                Err(e) => {
                    dmtcp_common::log_error!("{e}");
                    return 1;
                }
            }
            listed.push((p, e.clone(), gdir.join(dmtcp_common::generation::MANIFEST)));
        }
    }
    for (p, e, manifest) in &listed {
        if let Some(img) = opened.iter().find(|i| &i.path == p) {
            if let Err(m) = matches_manifest(img, e, manifest) {
                dmtcp_common::log_error!("{m}");
                return 1;
            }
        }
    }
    if strict {
        let here = dmtcp_common::cpu::isa_flags();
        for img in &opened {
            let lacking = dmtcp_common::cpu::missing(&img.meta.cpu_flags, &here);
            if !lacking.is_empty() {
                dmtcp_common::log_error!(
                    "{} was taken on a processor with features this one lacks ({}): the program may run code \
                     that needs them and die of SIGILL. Restart it on a like machine, or pass --no-strict-checking to try anyway.",
                    img.path.display(),
                    lacking.join(" ")
                );
                return 1;
            }
        }
    }
    if !allow_other_image {
        for img in &opened {
            if let Err(m) = owned_by_me(img) {
                dmtcp_common::log_error!("{m}");
                return 1;
            }
        }
    }
    // Images of a computation from an older checkpoint (of processes that
    // have exited since, or that exec'd under another name) would bring
    // back processes from the past: only the newest generation is restarted.
    let newest: std::collections::BTreeMap<String, u32> =
        opened.iter().fold(Default::default(), |mut m, i| {
            let g = m.entry(i.meta.comp_id.clone()).or_insert(0);
            *g = (*g).max(i.meta.generation);
            m
        });
    let before = opened.len();
    opened.retain(|i| newest.get(&i.meta.comp_id) == Some(&i.meta.generation));
    if opened.len() < before {
        dmtcp_common::log_info!(
            "ignoring {} image(s) of an older checkpoint of the same computation",
            before - opened.len()
        );
    }
    // Later checkpoints are numbered above the generations of these
    // computations already in the directories they will go to (restarting
    // an older generation must not make the next one collide with, or rank
    // below, the newer ones there).
    {
        let mut dirs: Vec<PathBuf> = restart_dirs.clone();
        dirs.extend(
            restart_dirs
                .iter()
                .filter_map(|d| d.parent().map(Path::to_path_buf)),
        );
        match &ckpt_dir {
            Some(d) => dirs.push(d.clone()),
            None => dirs.extend(opened.iter().map(|i| PathBuf::from(&i.meta.ckpt_dir))),
        }
        let floor = opened
            .iter()
            .flat_map(|i| {
                dirs.iter()
                    .map(|d| dmtcp_common::generation::highest(d, &i.meta.comp_id))
            })
            .max()
            .unwrap_or(0);
        let _ = GEN_FLOOR.set(floor);
    }
    let restorer = client::lib_dir().join("dmtcp_restorer");
    if !restorer.exists() {
        dmtcp_common::log_error!(
            "{} not found (build the whole workspace: cargo build --release)",
            restorer.display()
        );
        return 1;
    }
    let interval = a.interval;
    let port = match client::ensure(&mut a, "dmtcp_restart") {
        Ok(c) => c.port,
        Err(m) => {
            dmtcp_common::log_error!("{m}");
            return 1;
        }
    };
    if let Err(e) = recreate_files(&opened) {
        dmtcp_common::log_error!("{e}");
        return 1;
    }
    if m.get_count("quiet") == 0 && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress::start(&opened);
    }
    // Every image has its streamer, all running at once: together they
    // use the machine's cores, no more.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = STREAM_WORKERS.set((cores / opened.len().max(1)).clamp(1, MAX_STREAM_WORKERS));
    let _ = crate::tree::COORD.set((a.host.clone(), port));
    if let Some(i) = interval {
        let _ = crate::command::send_command(&a.host, port, dmtcp_common::proto::Cmd::Interval(i));
    }
    let ckpt_dir = ckpt_dir.map(|d| std::path::absolute(&d).unwrap_or(d));
    // In a pid namespace of its own, each process gets its pid back; where
    // that cannot be had, the job comes back whole under new pids.
    let why = if !crate::tree::wanted() {
        "DMTCP_RESTART_PIDNS=0".to_string()
    } else {
        match crate::tree::probe().and_then(|()| crate::tree::enter()) {
            Ok(()) => {
                let restore = |img: &Image| {
                    restore_into_self(
                        img,
                        &a.host,
                        port,
                        ckpt_dir.as_deref(),
                        &restorer,
                        RESTART_SET_TID,
                    )
                };
                return crate::tree::run(&mut opened, &restore, crate::tree::Mode::SamePids);
            }
            Err(e) => e,
        }
    };
    dmtcp_common::log_info!(
        "restarting without a pid namespace ({why}): the processes get new pids"
    );
    if opened.len() == 1 {
        let mut img = opened.pop().expect("one image");
        if let Err(e) = crate::tree::socks_for_single(&mut img) {
            dmtcp_common::log_error!("{e}");
            return 1;
        }
        let e = restore_into_self(&img, &a.host, port, ckpt_dir.as_deref(), &restorer, 0);
        dmtcp_common::log_error!("{e}");
        return 1;
    }
    let restore =
        |img: &Image| restore_into_self(img, &a.host, port, ckpt_dir.as_deref(), &restorer, 0);
    crate::tree::run(&mut opened, &restore, crate::tree::Mode::NewPids)
}

/// The highest generation of the restarted computations already in their
/// checkpoint directories (see `main`).
static GEN_FLOOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// `--verify on-fill` (the default): the chunks the page server fills are
/// checked as it reads them, not before the program resumes; false for
/// `--verify before`.
static VERIFY_ON_FILL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn verify_on_fill() -> bool {
    VERIFY_ON_FILL.get().copied().unwrap_or(true)
}

/// Threads of each image's streamer that read and check chunks
/// (`DMTCP_RESTART_READERS` overrides, 1 to 8).
static STREAM_WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
const MAX_STREAM_WORKERS: usize = 4;

fn stream_workers() -> usize {
    std::env::var("DMTCP_RESTART_READERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.clamp(1, 8))
        .or_else(|| STREAM_WORKERS.get().copied())
        .unwrap_or(1)
}

/// The images to restart from directory `d`, with what the generation's
/// manifest says of each.
struct GenImages {
    images: Vec<(PathBuf, dmtcp_common::generation::Entry)>,
    /// The manifest's path (for messages).
    manifest: PathBuf,
}

/// What `--restartdir d` (or `dmtcp_restart d`) restarts: the newest
/// committed generation in `d`, or `d` itself when it is a generation's
/// directory, or (a directory without generations: images copied by hand,
/// or from an older version) every `ckpt_*.dmtcp` in it.
fn generation_images(d: &Path) -> Result<GenImages, String> {
    use dmtcp_common::generation::{self as gen, Manifest};
    let from = |dir: &Path, m: Manifest| {
        dmtcp_common::log_info!(
            "restarting generation {} of computation {} ({})",
            m.generation,
            m.comp_id,
            dir.display()
        );
        GenImages {
            images: m
                .images
                .iter()
                .map(|e| (Manifest::path_of(dir, e), e.clone()))
                .collect(),
            manifest: dir.join(gen::MANIFEST),
        }
    };
    if d.join(gen::MANIFEST).exists() {
        let m = Manifest::load(d)?;
        return Ok(from(d, m));
    }
    match gen::newest(d) {
        Some(Ok(n)) => {
            if let Some((bad, why)) = n.skipped.first() {
                return Err(format!(
                    "the newest checkpoint generation in {}, {}, cannot be used: {why}. The newest sound one is {}: \
                     restart it with --restartdir {} if that is what you want.",
                    d.display(),
                    bad.display(),
                    n.dir.display(),
                    n.dir.display()
                ));
            }
            Ok(from(&n.dir, n.manifest))
        }
        Some(Err(e)) => Err(format!(
            "no usable checkpoint generation in {}: {e}",
            d.display()
        )),
        None => {
            let rd = std::fs::read_dir(d)
                .map_err(|e| format!("cannot read --restartdir {}: {e}", d.display()))?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    n.starts_with("ckpt_") && n.ends_with(".dmtcp")
                })
                .collect();
            found.sort();
            if found.is_empty() && gen::list(d).iter().any(|f| f.partial) {
                return Err(format!(
                    "{} holds no committed checkpoint generation (only one that was never finished)",
                    d.display()
                ));
            }
            let images = found
                .into_iter()
                .map(|p| {
                    let e = gen::Entry {
                        name: String::new(),
                        host: String::new(),
                        program: String::new(),
                        size: 0,
                        crc32: 0,
                        header_crc: 0,
                    };
                    (p, e)
                })
                .collect();
            Ok(GenImages {
                images,
                manifest: PathBuf::new(),
            })
        }
    }
}

/// An image a manifest lists must be the one it describes: the size and
/// the header's CRC (which covers the index's, which covers every
/// chunk's) written at checkpoint time.
fn matches_manifest(
    img: &Image,
    e: &dmtcp_common::generation::Entry,
    manifest: &Path,
) -> Result<(), String> {
    if manifest.as_os_str().is_empty() {
        return Ok(());
    }
    let size = std::fs::metadata(&img.path).map(|m| m.len()).unwrap_or(0);
    if size != e.size || img.header.file_len != e.size {
        return Err(format!(
            "{} has {size} bytes, but {} lists it with {}: the image is damaged or was replaced",
            img.path.display(),
            manifest.display(),
            e.size
        ));
    }
    if img.header.header_crc != e.header_crc {
        return Err(format!(
            "{} is not the image {} lists (header checksum {:08x}, expected {:08x}): it was replaced",
            img.path.display(),
            manifest.display(),
            img.header.header_crc,
            e.header_crc
        ));
    }
    Ok(())
}

/// An image is the saved memory of a program, code included: restarting
/// one runs it with the rights of whoever restarts it. Only images owned
/// by the user restarting them are taken (root's own included), unless
/// `--allow-other-user-image`; the owner is that of the file opened.
fn owned_by_me(img: &Image) -> Result<(), String> {
    let uid = img.owner().map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if uid == me {
        return Ok(());
    }
    let name = |u: u32| {
        client::user_name(u)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    };
    Err(format!(
        "{} is owned by uid {uid}{}, not by you (uid {me}{}): restarting it would run that user's saved program \
         with your rights. If you trust where it comes from, pass --allow-other-user-image (or copy it and own the copy).",
        img.path.display(),
        name(uid),
        name(me)
    ))
}

/// A shared file mapping whose whole contents the image holds (a file in
/// a temporary directory, POSIX shared memory): its file may be made again.
fn recreatable(a: &dmtcp_common::image::Area) -> bool {
    a.kind == KIND_FILE_SHARED && a.flags & AREA_SAVED != 0
}

/// Create the files the images' processes mapped that are gone (a per-host
/// temporary directory on a new host, an MPI session directory deleted when
/// the job was killed), with their directories, private to this user, at
/// their old size; the restorer writes their contents in.
fn recreate_files(images: &[Image]) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for a in images
        .iter()
        .flat_map(|i| i.meta.areas.iter())
        .filter(|a| recreatable(a))
    {
        let p = Path::new(&a.path);
        if p.exists() {
            continue;
        }
        if let Some(dir) = p.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    format!("cannot make {} again (for {}): {e}", dir.display(), a.path)
                })?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(p)
            .map_err(|e| format!("cannot make {} again: {e}", a.path))?;
        if f.metadata().map(|m| m.len()).unwrap_or(0) < a.file_size {
            f.set_len(a.file_size).map_err(|e| {
                format!("cannot make {} again ({} bytes): {e}", a.path, a.file_size)
            })?;
        }
    }
    Ok(())
}

/// Checks that need no memory contents: mapped files, the vDSO layout.
fn preflight(img: &Image) -> Result<(), ImageError> {
    let corrupt = |what: String| ImageError::Corrupt {
        path: img.path.clone(),
        what,
    };
    for a in &img.meta.areas {
        if a.kind == KIND_FILE_PRIVATE || a.kind == KIND_FILE_SHARED {
            match std::fs::metadata(&a.path) {
                Ok(m) if m.len() == a.file_size => {}
                // Its contents are in the image: made again before restoring.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && recreatable(a) => {}
                Ok(m) => {
                    return Err(ImageError::Corrupt {
                        path: img.path.clone(),
                        what: format!(
                            "the program mapped {} ({} bytes at checkpoint time), which now has {} bytes: restart needs the same file",
                            a.path,
                            a.file_size,
                            m.len()
                        ),
                    })
                }
                Err(e) => {
                    return Err(ImageError::Corrupt {
                        path: img.path.clone(),
                        what: format!("the program mapped {}, which cannot be opened now: {e}", a.path),
                    })
                }
            }
        }
        if dmtcp_sys::in_restorer_window(a.start as usize, a.start as usize + 1) {
            return Err(corrupt(format!(
                "an area at {:#x} lies in the restorer window",
                a.start
            )));
        }
    }
    // Compare the vDSO/vvar sizes with this kernel's.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut cur = [(0u64, 0u64); 3];
    for line in maps.lines() {
        let name = line.split_whitespace().nth(5).unwrap_or("");
        if let Some(i) = SPECIAL_NAMES.iter().position(|n| *n == name.as_bytes()) {
            let (s, e) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .unwrap_or(("0", "0"));
            let (s, e) = (
                u64::from_str_radix(s, 16).unwrap_or(0),
                u64::from_str_radix(e, 16).unwrap_or(0),
            );
            cur[i] = (s, e - s);
        }
    }
    let old = img.meta.special;
    let same = (0..3).all(|i| {
        old[i].1 == cur[i].1
            && (old[i].0 == 0
                || cur[i].0 == 0
                || old[i].0.wrapping_sub(old[2].0) == cur[i].0.wrapping_sub(cur[2].0))
    });
    // With the old vDSO's entry points recorded, the restorer redirects them
    // to this kernel's vDSO (a proxy); older images need the same layout.
    if !same && img.meta.vdso_syms.is_empty() {
        return Err(corrupt(
            "it was made on a kernel whose vDSO/vvar layout differs from this one, and it does not record the old vDSO's \
             entry points (made by an older version); restart it on the kernel it was made on"
                .into(),
        ));
    }
    Ok(())
}

fn cloexec(fd: i32, on: bool) {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
}

pub(crate) fn pipe() -> std::io::Result<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((p[0], p[1]))
}

/// Become the process of `img`. Returns only on failure (with a message).
fn restore_into_self(
    img: &Image,
    host: &str,
    port: u16,
    ckpt_dir: Option<&Path>,
    restorer: &Path,
    flags: u32,
) -> String {
    let coord = match std::net::TcpStream::connect((host, port)) {
        Ok(s) => s,
        Err(e) => return format!("Coordinator not found at {host}:{port}: {e}"),
    };
    let _ = coord.set_nodelay(true);
    let coord_fd = coord.into_raw_fd();
    cloexec(coord_fd, false);
    let pid_map = if flags & RESTART_SET_TID != 0 {
        None
    } else {
        // SAFETY: getpid has no preconditions.
        Some(
            crate::tree::pid_map()
                .cloned()
                .unwrap_or_else(|| (vec![(img.meta.pid, unsafe { libc::getpid() })], true)),
        )
    };
    // The coordinator's secret, for the restored process to answer its
    // challenge (kept out of its images; docs/security.md).
    let secret = match crate::client::secret_for(host, port) {
        Ok(s) => s.map(|s| s.to_hex()),
        Err(e) => return format!("the secret of the coordinator at {host}:{port}: {e}"),
    };
    let info = serde_json::json!({
        "coord_host": host,
        "coord_port": port,
        "secret": secret,
        "ckpt_dir": ckpt_dir.map(|d| d.display().to_string()),
        "shared_files": crate::tree::shared_files(img),
        // Without a pid namespace: the job's pids then and now.
        "pid_map": pid_map.as_ref().map(|m| &m.0),
        "job_root": pid_map.as_ref().map(|m| m.1),
        "generation": GEN_FLOOR.get().copied().unwrap_or(0),
    })
    .to_string();
    let (info_r, info_w) = match pipe() {
        Ok(p) => p,
        Err(e) => return format!("pipe: {e}"),
    };
    // SAFETY: info_w is ours; the File closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(info_w) };
    if let Err(e) = f.write_all(info.as_bytes()) {
        return format!("writing restart info: {e}");
    }
    drop(f);
    cloexec(info_r, false);
    let (sr, sw) = match pipe() {
        Ok(p) => p,
        Err(e) => return format!("pipe: {e}"),
    };
    // SAFETY: enlarging our pipe's buffer (best effort).
    unsafe { libc::fcntl(sw, libc::F_SETPIPE_SZ, 1 << 20) };
    // The restorer maps raw chunks straight from the image (lazy restore),
    // from the file that was opened and checked.
    // (The sources' files follow: fds[k] for source k.)
    let mut fds = Vec::new();
    if lazy_restore() {
        for i in std::iter::once(img).chain(img.sources.iter()) {
            match i.try_clone_file() {
                Ok(f) => {
                    let fd = f.into_raw_fd();
                    cloexec(fd, false);
                    fds.push(fd);
                }
                Err(e) => return format!("cannot open {}: {e}", i.path.display()),
            }
        }
    }
    let image_fd = fds.first().copied().unwrap_or(-1);
    // Compressed chunks too are restored lazily where this process may use
    // userfaultfd: a socket to the page server (the streamer, once the
    // stream is written); [restorer's end, server's end].
    // Only for an image whose library speaks this version's lazy protocol
    // (an older library would neither take the socket nor ask for its
    // pages before a fork or a checkpoint).
    let lazy_sock = if !fds.is_empty()
        && img.meta.lazy_protocol == dmtcp_common::image::LAZY_PROTOCOL
        && crate::lazy::usable()
    {
        match crate::lazy::socketpair() {
            Ok(p) => Some(p),
            Err(e) => return format!("socketpair: {e}"),
        }
    } else {
        None
    };
    let header = StreamHeader {
        magic: STREAM_MAGIC,
        version: STREAM_VERSION,
        n_areas: img.meta.areas.len() as u32,
        entry: img.meta.entry,
        entry_stack_top: img.meta.entry_stack_top,
        special: img
            .meta
            .special
            .map(|(start, len)| SpecialArea { start, len }),
        mm: {
            let m = img.meta.mm;
            MmMap {
                start_code: m[0],
                end_code: m[1],
                start_data: m[2],
                end_data: m[3],
                start_brk: m[4],
                brk: m[5],
                start_stack: m[6],
                arg_start: m[7],
                arg_end: m[8],
                env_start: m[9],
                env_end: m[10],
                auxv: 0,
                auxv_size: 0,
                exe_fd: u32::MAX,
            }
        },
        args: RestartArgs {
            coord_fd,
            info_fd: info_r,
            flags,
            lazy_fd: -1,
        },
        image_fd,
        n_vdso_syms: vdso_syms(img).len() as u32,
        vdso_flags: vdso_flags(),
        lazy_sock: lazy_sock.map_or(-1, |p| p.0),
    };
    let restored_pid = std::process::id() as i32;
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return format!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: second fork so the streamer is not a child of the restored program.
        let p2 = unsafe { libc::fork() };
        if p2 == 0 {
            // The streamer (later the page server) speaks on the stderr
            // dmtcp_restart was started with.
            dmtcp_common::log::restore_stderr();
            // SAFETY: closing the read end in the streamer.
            unsafe { libc::close(sr) };
            if let Some((theirs, _)) = lazy_sock {
                // SAFETY: the restorer's end of the socket is not the streamer's.
                unsafe { libc::close(theirs) };
            }
            // SAFETY: the write end is ours; the File closes it at the end.
            let f = unsafe { std::fs::File::from_raw_fd(sw) };
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let r = stream(img, &mut w, &header, &fds, lazy_sock.is_some());
            progress::image_done(r.is_ok());
            let code = match r {
                Ok(lazy) => match lazy_sock {
                    Some((_, ours)) if !lazy.is_empty() => {
                        // The stream is complete: the restorer may go on.
                        drop(w);
                        crate::lazy::serve(img, ours, lazy, restored_pid, (host, port))
                    }
                    _ => 0,
                },
                Err(e) => {
                    dmtcp_common::log_error!("{e}");
                    // The restorer then stops without a message of its
                    // own: the line above is the one the user sees. (A
                    // chunk is read before its record is written, so the
                    // stream is between records here, unless writing to
                    // it failed, when this fails too.)
                    let abort = DataRecord {
                        kind: REC_ABORT,
                        // Not 0: no restorer takes it for the end of the stream.
                        len: u64::MAX,
                        ..Default::default()
                    };
                    let _ = w.write_all(as_bytes(&abort)).and_then(|()| w.flush());
                    1
                }
            };
            // SAFETY: ending the streamer.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: the intermediate child just exits.
        unsafe { libc::_exit(if p2 < 0 { 1 } else { 0 }) };
    }
    let mut st = 0;
    // SAFETY: reaping the intermediate child.
    unsafe {
        libc::waitpid(pid, &mut st, 0);
        libc::close(sw);
    }
    if let Some((theirs, ours)) = lazy_sock {
        // SAFETY: the server's end is the streamer's; the restorer keeps
        // its own end across the exec.
        unsafe { libc::close(ours) };
        cloexec(theirs, false);
    }
    cloexec(sr, false);
    // The restorer's messages go where ours do (the stderr we were started
    // with, kept at a number of our own), not into the program's fd 2.
    let err = dmtcp_common::log::stderr_fd();
    cloexec(err, false);
    let prog = std::ffi::CString::new(restorer.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let a0 = c"dmtcp_restorer";
    let a1 = std::ffi::CString::new(sr.to_string()).unwrap_or_default();
    let a2 = std::ffi::CString::new(err.to_string()).unwrap_or_default();
    let argv = [a0.as_ptr(), a1.as_ptr(), a2.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: execve with NUL-terminated strings and null-terminated arrays.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    format!(
        "cannot run {}: {}",
        restorer.display(),
        std::io::Error::last_os_error()
    )
}

/// The old vDSO's entry points, as stream records (names too long for a
/// record are left out; the restorer then fails if it needs them).
fn vdso_syms(img: &Image) -> Vec<dmtcp_sys::vdso::VdsoSym> {
    let v = img
        .meta
        .vdso_syms
        .iter()
        .filter_map(|(n, o)| dmtcp_sys::vdso::VdsoSym::new(n.as_bytes(), *o));
    v.take(MAX_VDSO_SYMS).collect()
}

/// DMTCP_RESTORE_VDSO_PROXY=1 makes the restorer build the vDSO proxy even
/// on the kernel the image was made on; =stubs also stubs every entry
/// point with its system call (as if this kernel's vDSO lacked them). For
/// tests of the proxy without a second kernel.
fn vdso_flags() -> u32 {
    match std::env::var("DMTCP_RESTORE_VDSO_PROXY").as_deref() {
        Ok("stubs") => VDSO_FORCE_PROXY | VDSO_FORCE_STUBS,
        Ok(v) if dmtcp_common::env::truthy(v) => VDSO_FORCE_PROXY,
        _ => 0,
    }
}

/// Raw chunks go from the image file into place (read by the restorer,
/// or filled by the page server) rather than through the stream (default;
/// DMTCP_RESTART_EAGER=1 sends every chunk through the stream).
fn lazy_restore() -> bool {
    !std::env::var("DMTCP_RESTART_EAGER").is_ok_and(|v| dmtcp_common::env::truthy(&v))
}

/// Write the restore stream for `img` into `w`.
/// `fds`: the image's file and its sources' (in order), for raw chunks the
/// restorer reads into place; empty: every chunk goes through the stream.
/// `uffd`: chunks of anonymous private areas, raw or compressed, are left
/// to the page server ([`REC_UFFD`]; checked here all the same, but with
/// `--verify on-fill`, when the server checks them as it reads them):
/// returned, in address order.
fn stream(
    img: &Image,
    w: &mut impl Write,
    header: &StreamHeader,
    fds: &[i32],
    uffd: bool,
) -> Result<Vec<ChunkDesc>, ImageError> {
    let lazy = !fds.is_empty();
    let mut served = Vec::new();
    let mut map_fd = fds.first().copied().unwrap_or(-1);
    let io = |source| ImageError::Io {
        path: img.path.clone(),
        source,
    };
    w.write_all(as_bytes(header)).map_err(io)?;
    for a in &img.meta.areas {
        let file = a.kind == KIND_FILE_PRIVATE || a.kind == KIND_FILE_SHARED;
        let path = if file { a.path.as_bytes() } else { b"" };
        let d = AreaDesc {
            start: a.start,
            len: a.len,
            offset: a.offset,
            prot: a.prot,
            kind: a.kind,
            flags: a.flags,
            path_len: path.len() as u32,
            fd: if a.kind == KIND_ANON_SHARED {
                crate::tree::shm_fd(a.shm)
            } else {
                -1
            },
            _pad: 0,
        };
        w.write_all(as_bytes(&d)).map_err(io)?;
        let mut padded = path.to_vec();
        padded.resize(pad8(path.len()), 0);
        w.write_all(&padded).map_err(io)?;
    }
    for sym in vdso_syms(img) {
        w.write_all(as_bytes(&sym)).map_err(io)?;
    }
    // Grows-down areas (the main stack) stay one anonymous mapping that can grow.
    // So do shared areas (a private mapping of the image would unshare them).
    let growsdown: Vec<(u64, u64)> = img
        .meta
        .areas
        .iter()
        .filter(|a| a.flags & (AREA_GROWSDOWN | AREA_SAVED) != 0 || a.kind == KIND_ANON_SHARED)
        .map(|a| (a.start, a.start + a.len))
        .collect();
    // Chunks are read and checked by `workers` threads, a batch of two
    // per thread at a time (the disk sees several reads at once, and the
    // checksums and decompression use every core given), and go into the
    // stream in order.
    let workers = stream_workers();
    let in_place = |c: &ChunkDesc| {
        lazy && !growsdown
            .iter()
            .any(|&(s, e)| c.addr < e && s < c.addr + c.len)
    };
    let zstd = |c: &ChunkDesc| c.flags & dmtcp_common::image::CHUNK_ZSTD != 0;
    // Only anonymous private memory can be filled through userfaultfd.
    let anon = |c: &ChunkDesc| {
        img.meta.areas.iter().any(|a| {
            a.kind == KIND_ANON_PRIVATE && a.start <= c.addr && c.addr + c.len <= a.start + a.len
        })
    };
    // Anonymous private memory, raw or compressed, is filled by the page
    // server where there is one.
    let by_fault = |c: &ChunkDesc| uffd && in_place(c) && anon(c);
    // With `--verify on-fill` those are not read here at all: the server
    // checks them as it reads them.
    let on_fill = verify_on_fill();
    let unchecked = |c: &ChunkDesc| on_fill && by_fault(c);
    // Go from the image file into place, not through the stream, and are
    // checked where they lie (not read into a buffer here). Those the
    // server does not fill (written pages of private file mappings, and
    // anonymous memory without the server) the restorer reads from the
    // image into place ([`REC_READ`]). Nothing is mapped from the image:
    // a private mapping of it would not behave as the memory it stands for
    // after `madvise(MADV_DONTNEED)` (anonymous memory reads zeros, glibc's
    // `calloc` relies on that; a private file mapping shows its file's
    // bytes) or a growing `mremap` (the image's next bytes).
    let placed = |c: &ChunkDesc| by_fault(c) || (in_place(c) && !zstd(c));
    let how = |c: &ChunkDesc| {
        if unchecked(c) {
            Check::Later
        } else if placed(c) {
            Check::InPlace
        } else {
            Check::Read
        }
    };
    // Batches of up to 8 MiB to read per thread (and at most 1,024
    // chunks): chunks are 64 KiB, and batches of a few chunks started two
    // threads for every few hundred KiB (8,000 thread starts for 1 GiB).
    let batch_bytes = workers as u64 * (8 << 20);
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut ahead = ReadAhead::default();
    let mut start = 0;
    while start < img.chunks.len() {
        let (mut end, mut bytes) = (start, 0u64);
        while end < img.chunks.len() && end - start < 1024 && (end == start || bytes < batch_bytes)
        {
            let c = &img.chunks[end];
            if how(c) != Check::Later {
                bytes += c.stored_len;
            }
            end += 1;
        }
        let batch = &img.chunks[start..end];
        ahead.advance(img, &img.chunks, start, &unchecked);
        start = end;
        if bufs.len() < batch.len() {
            bufs.resize(batch.len(), (Vec::new(), Vec::new()));
        }
        let bufs = &mut bufs[..batch.len()];
        read_batch(img, batch, bufs, workers, &how)?;
        for (c, (out, _)) in batch.iter().zip(bufs.iter()) {
            // Served by the page server, read from an image file, or
            // the bytes themselves after the record.
            let (kind, file_off) = if by_fault(c) {
                served.push(*c);
                (REC_UFFD, 0)
            } else if placed(c) {
                let fd = fds.get(c.source()).copied().unwrap_or(-1);
                if fd != map_fd {
                    map_fd = fd;
                    let rec = DataRecord {
                        kind: REC_FILE,
                        len: u64::MAX,
                        file_off: fd as u64,
                        ..Default::default()
                    };
                    w.write_all(as_bytes(&rec)).map_err(io)?;
                }
                (REC_READ, c.file_off)
            } else {
                (REC_DATA, 0)
            };
            let rec = DataRecord {
                addr: c.addr,
                len: c.len,
                kind,
                file_off,
            };
            w.write_all(as_bytes(&rec)).map_err(io)?;
            if kind == REC_DATA {
                w.write_all(out).map_err(io)?;
            }
            progress::add(c.len);
        }
    }
    w.write_all(as_bytes(&DataRecord::default())).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(served)
}

/// Keeps the kernel reading ahead of the chunk being checked: the stored
/// bytes of the chunks from there on, up to 64 MiB of them, are
/// asked for with `posix_fadvise(WILLNEED)`, which starts their reads and
/// returns. Without it a restart from an image that is not in the page
/// cache reads one chunk at a time (4 MiB, then the checksum, then the
/// next): 4 GiB took 3.9-4.6 s here against 2.6 s for DMTCP, which reads
/// its image with large read() calls.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// The next chunk not yet asked for.
    next: usize,
}

/// Bytes asked for ahead (`DMTCP_RESTART_READAHEAD`, MiB, 0: none).
fn read_ahead_bytes() -> u64 {
    static B: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        std::env::var("DMTCP_RESTART_READAHEAD")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(64)
            .min(4096)
            << 20
    })
}

impl ReadAhead {
    /// Ask for the chunks of `chunks` (of `img` and its sources) from
    /// `from` on; those `skip` says are not read now are passed over.
    pub(crate) fn advance(
        &mut self,
        img: &Image,
        chunks: &[ChunkDesc],
        from: usize,
        skip: &dyn Fn(&ChunkDesc) -> bool,
    ) {
        use std::os::fd::AsRawFd;
        let limit = read_ahead_bytes();
        self.next = self.next.max(from);
        let mut window: u64 = chunks[from..self.next]
            .iter()
            .filter(|c| !skip(c))
            .map(|c| c.stored_len)
            .sum();
        while self.next < chunks.len() && window < limit {
            let c = &chunks[self.next];
            self.next += 1;
            if skip(c) {
                continue;
            }
            // SAFETY: posix_fadvise only advises the kernel about the open
            // file's pages; no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    img.file_of(c).file().as_raw_fd(),
                    c.file_off as libc::off_t,
                    c.stored_len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            window += c.stored_len;
        }
    }
}

/// How the streamer checks a chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Read into a buffer (its bytes go into the stream).
    Read,
    /// Checked where it lies in the image (read into place, or filled by
    /// the page server).
    InPlace,
    /// Not now: the page server checks it as it reads it (`--verify on-fill`).
    Later,
}

/// Read and check the chunks of `batch` (every one, read into place or
/// not, but those the page server checks itself) with up to `workers`
/// threads, each as `how` says. The first failure in chunk order.
fn read_batch(
    img: &Image,
    batch: &[ChunkDesc],
    bufs: &mut [(Vec<u8>, Vec<u8>)],
    workers: usize,
    how: &(dyn Fn(&ChunkDesc) -> Check + Sync),
) -> Result<(), ImageError> {
    // A part of the batch, in order: chunks checked in place that follow
    // each other in one file are checked through one mapping (one per
    // 64 KiB chunk cost 20-30 us each).
    let part = |cs: &[ChunkDesc], bs: &mut [(Vec<u8>, Vec<u8>)]| -> Result<(), ImageError> {
        let mut j = 0;
        while j < cs.len() {
            let c = &cs[j];
            match how(c) {
                Check::Later => j += 1,
                Check::Read => {
                    let (out, scratch) = &mut bs[j];
                    img.read_chunk(c, out, scratch)?;
                    j += 1;
                }
                Check::InPlace => {
                    let k = in_place_run(&cs[j..], how);
                    check_run_in_place(img, &cs[j..j + k])?;
                    j += k;
                }
            }
        }
        Ok(())
    };
    if workers <= 1 || batch.iter().all(|c| how(c) == Check::Later) {
        return part(batch, bufs);
    }
    let per = batch.len().div_ceil(workers);
    std::thread::scope(|s| {
        let running: Vec<_> = batch
            .chunks(per)
            .zip(bufs.chunks_mut(per))
            .map(|(cs, bs)| s.spawn(move || part(cs, bs)))
            .collect();
        // Joined in order: the first group's failure is reported first.
        // (A panic aborts the whole program: panic = "abort".)
        running
            .into_iter()
            .try_for_each(|t| t.join().unwrap_or(Ok(())))
    })
}

/// How many chunks from the first of `cs` (checked in place) follow each
/// other in one image file, up to 8 MiB of them.
fn in_place_run(cs: &[ChunkDesc], how: &(dyn Fn(&ChunkDesc) -> Check + Sync)) -> usize {
    let mut k = 1;
    let mut bytes = cs[0].stored_len;
    while k < cs.len() && bytes < (8 << 20) {
        let (p, c) = (&cs[k - 1], &cs[k]);
        if how(c) != Check::InPlace || !follows_in_file(p, c) {
            break;
        }
        bytes += c.stored_len;
        k += 1;
    }
    k
}

/// Check the chunks of `run` (one after the other in one image file)
/// where they lie, through one mapping of them all; one by one where it
/// cannot be had.
fn check_run_in_place(img: &Image, run: &[ChunkDesc]) -> Result<(), ImageError> {
    let first = &run[0];
    let len: u64 = run.iter().map(|c| c.stored_len).sum();
    let Some(m) = crate::lazy::MappedRange::new(img.file_of(first), first.file_off, len) else {
        return run.iter().try_for_each(|c| check_in_place(img, c));
    };
    check_stored_run(img, run, m.bytes())
}

/// Does chunk `c` follow chunk `p` in the same image file?
pub(crate) fn follows_in_file(p: &ChunkDesc, c: &ChunkDesc) -> bool {
    c.source() == p.source() && c.file_off == p.file_off + p.stored_len
}

/// Check the CRCs of `run`, chunks that follow each other in one image
/// file, over `bytes`: their stored bytes, in order.
pub(crate) fn check_stored_run<'a>(
    img: &Image,
    run: impl IntoIterator<Item = &'a ChunkDesc>,
    bytes: &[u8],
) -> Result<(), ImageError> {
    let mut at = 0usize;
    for c in run {
        img.check_stored(c, &bytes[at..at + c.stored_len as usize])?;
        at += c.stored_len as usize;
    }
    Ok(())
}

/// Check the CRC of chunk `c` (over its stored bytes) where it lies in the image, through a
/// private read-only mapping populated at once: no copy (half the memory
/// traffic of reading it), and its pages stay in the page cache for the
/// restorer, which maps them the same way. Where the mapping cannot be
/// had, the chunk is read instead.
fn check_in_place(img: &Image, c: &ChunkDesc) -> Result<(), ImageError> {
    match crate::lazy::MappedRange::new(img.file_of(c), c.file_off, c.stored_len) {
        Some(m) => img.check_stored(c, m.bytes()),
        None => img.read_chunk(c, &mut Vec::new(), &mut Vec::new()),
    }
}

/// What `dmtcp_restart` shows on a terminal while it restores: one line,
/// redrawn, "restart: 2 of 4 processes restored, 412.0 of 800.0 MB,
/// 380.2 MB/s". The image streamers (forked, one per process) count into
/// a shared page; a process of its own (double-forked, so it is nobody's
/// child in the job) draws the line and ends with the last image, or when
/// one fails, or when nothing moves for 30 s.
mod progress {
    use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering::SeqCst};

    #[repr(C)]
    struct Counts {
        images: AtomicU64,
        done: AtomicU64,
        failed: AtomicU64,
        bytes: AtomicU64,
        total: AtomicU64,
    }

    static COUNTS: AtomicPtr<Counts> = AtomicPtr::new(core::ptr::null_mut());

    fn counts() -> Option<&'static Counts> {
        // SAFETY: set once by `start` to a shared page that stays mapped in
        // this process and every process forked from it.
        unsafe { COUNTS.load(SeqCst).as_ref() }
    }

    /// Set up the counts and the drawing process (stderr is a terminal).
    pub(super) fn start(images: &[dmtcp_common::image::Image]) {
        // SAFETY: a fresh shared anonymous page, zero-filled.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return;
        }
        let c = p as *mut Counts;
        COUNTS.store(c, SeqCst);
        let Some(c) = counts() else { return };
        c.images.store(images.len() as u64, SeqCst);
        let total: u64 = images
            .iter()
            .flat_map(|i| i.chunks.iter())
            .map(|k| k.len)
            .sum();
        c.total.store(total, SeqCst);
        // SAFETY: fork of this single-threaded program; the child forks
        // again and exits, the grandchild only reads the shared counts
        // and writes to stderr, then exits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if libc::fork() == 0 {
                    draw(c);
                    libc::_exit(0);
                }
                libc::_exit(0);
            }
            if pid > 0 {
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
        }
    }

    fn draw(c: &Counts) {
        let start = std::time::Instant::now();
        let (mut last, mut still) = (u64::MAX, std::time::Instant::now());
        let mut err = std::io::stderr();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (n, done, failed) = (
                c.images.load(SeqCst),
                c.done.load(SeqCst),
                c.failed.load(SeqCst),
            );
            let (bytes, total) = (c.bytes.load(SeqCst), c.total.load(SeqCst));
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            let _ = std::io::Write::write_all(
                &mut err,
                format!(
                    "\r\x1b[K[dmtcp_restart] restart: {done} of {n} processes restored, {:.1} of {:.1} MB, {:.1} MB/s",
                    bytes as f64 / 1e6,
                    total as f64 / 1e6,
                    bytes as f64 / 1e6 / secs
                )
                .as_bytes(),
            );
            if bytes != last {
                (last, still) = (bytes, std::time::Instant::now());
            }
            if done + failed >= n || still.elapsed() > std::time::Duration::from_secs(30) {
                let _ = std::io::Write::write_all(&mut err, b"\n");
                return;
            }
        }
    }

    /// A streamer sent `n` more bytes of memory.
    pub(super) fn add(n: u64) {
        if let Some(c) = counts() {
            c.bytes.fetch_add(n, SeqCst);
        }
    }

    /// A streamer is done with its image (or failed).
    pub(super) fn image_done(ok: bool) {
        if let Some(c) = counts() {
            if ok { &c.done } else { &c.failed }.fetch_add(1, SeqCst);
        }
    }
}
