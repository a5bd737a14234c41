//! Committing a checkpoint generation (the coordinator's side).
//!
//! Every process of a round writes its image into
//! `<its ckptdir>/dmtcp_gen_<comp>_<N>.partial/`. Once all have reported
//! theirs written, the coordinator checks them (present, of the size
//! reported), writes the manifest and the restart script into that
//! directory, and renames it to `dmtcp_gen_<comp>_<N>`: the commit, one
//! atomic rename. Then the names DMTCP users know are made to point at the
//! new generation (hard links `ckpt_<prog>_<id>.dmtcp` and
//! `dmtcp_restart_script_<comp>.sh`, the symlink `dmtcp_restart_script.sh`)
//! and generations past the number to keep are removed. Nothing of the
//! previous generation is touched before the new one is committed.
//!
//! Images of one round in several directories (processes with checkpoint
//! directories of their own, no coordinator `--ckptdir`): each directory
//! is committed by its own rename, the coordinator's (the first image's)
//! last. A directory the coordinator cannot see (local to another host)
//! is committed by the processes that wrote into it (see the preload
//! library's `writer::commit_unseen`), without a manifest.

use dmtcp_common::generation::{self as gen, Entry, Manifest};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One image of the round, as its process reported it.
#[derive(Clone, Debug)]
pub struct Image {
    pub path: String,
    pub host: String,
    pub program: String,
    pub bytes: u64,
    pub crc32: u32,
    pub header_crc: u32,
}

/// What the restart script needs besides the images.
pub struct ScriptParams {
    pub coord_host: String,
    pub coord_port: u16,
    pub interval: u32,
}

/// A committed generation.
#[derive(Debug)]
pub struct Committed {
    /// The restart script at the top of the checkpoint directory, if the
    /// coordinator could write one.
    pub script: Option<PathBuf>,
    /// The images under the names users know.
    pub images: Vec<String>,
    /// Things that went wrong after the commit (links, pruning).
    pub notes: Vec<String>,
}

/// What is left to do once a generation is committed: the names users
/// know (top-level links, the restart script's) and removing old
/// generations ([`publish`]). A restart does not need it (it finds the
/// newest committed generation by its directory), so the coordinator
/// lets the processes run on before it does this.
pub struct Names {
    dirs: Vec<GenDir>,
    home: usize,
    script: String,
    comp: String,
    generation: u32,
    keep: u32,
    images: Vec<String>,
    notes: Vec<String>,
}

/// The restart script's file name for computation `comp`.
pub fn script_name(comp: &str) -> String {
    format!("dmtcp_restart_script_{}.sh", gen::safe_comp(comp))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One directory of the round: the generation being written in it, and
/// which images (indexes into the round's list) are there.
struct GenDir {
    partial: PathBuf,
    committed: PathBuf,
    top: PathBuf,
    images: Vec<usize>,
    /// The images' file names (known once committed).
    names: Vec<String>,
    visible: bool,
}

/// Commit generation `generation` of `comp`, whose images (in the order
/// the restart script lists them, the first one's directory being the
/// coordinator's) are all written. An error leaves the previous generation
/// as it was; the caller then throws the round away ([`abandon`]).
pub fn commit(
    comp: &str,
    generation: u32,
    keep: u32,
    params: &ScriptParams,
    images: &[Image],
) -> Result<Committed, String> {
    commit_generation(comp, generation, keep, params, images).map(publish)
}

/// The commit proper: images checked, manifest and restart script
/// written, the generation's directories renamed. What is left is
/// [`publish`]; an error leaves the previous generation as it was.
pub fn commit_generation(
    comp: &str,
    generation: u32,
    keep: u32,
    params: &ScriptParams,
    images: &[Image],
) -> Result<Names, String> {
    commit_linking(comp, generation, keep, params, images, |a, b| {
        std::fs::hard_link(a, b)
    })
}

/// How [`commit_generation`] makes a hard link (a test makes it fail).
type LinkFn = fn(&Path, &Path) -> std::io::Result<()>;

/// [`commit_generation`], linking the earlier images with `link`.
fn commit_linking(
    comp: &str,
    generation: u32,
    keep: u32,
    params: &ScriptParams,
    images: &[Image],
    link: LinkFn,
) -> Result<Names, String> {
    if images.is_empty() {
        return Err("no image was written".into());
    }
    let want = gen::partial_name(comp, generation);
    let mut dirs: Vec<GenDir> = Vec::new();
    for (i, im) in images.iter().enumerate() {
        let p = Path::new(&im.path);
        let partial = p.parent().map(Path::to_path_buf).unwrap_or_default();
        if file_name(&partial) != want {
            return Err(format!(
                "{} is not in this generation's directory ({want})",
                im.path
            ));
        }
        match dirs.iter_mut().find(|d| d.partial == partial) {
            Some(d) => d.images.push(i),
            None => {
                let top = partial.parent().map(Path::to_path_buf).unwrap_or_default();
                let visible = std::fs::symlink_metadata(&partial).is_ok_and(|m| m.is_dir());
                dirs.push(GenDir {
                    committed: top.join(gen::dir_name(comp, generation)),
                    partial,
                    top,
                    images: vec![i],
                    names: Vec::new(),
                    visible,
                });
            }
        }
    }
    let all_top: Vec<String> = images
        .iter()
        .map(|im| {
            let p = Path::new(&im.path);
            let top = p.parent().and_then(Path::parent).unwrap_or(Path::new("."));
            top.join(file_name(p)).display().to_string()
        })
        .collect();
    let Some(home) = dirs.iter().position(|d| d.visible) else {
        let notes = vec![format!(
            "the coordinator cannot see the images' directories ({}): the processes commit them, without a manifest or restart script",
            dirs.iter().map(|d| d.top.display().to_string()).collect::<Vec<_>>().join(", ")
        )];
        return Ok(Names {
            dirs: Vec::new(),
            home: 0,
            script: String::new(),
            comp: comp.into(),
            generation,
            keep,
            images: all_top,
            notes,
        });
    };
    // Every image where its process said, as long as it said; nothing else
    // (a round that died in this directory earlier may have left files).
    for d in dirs.iter().filter(|d| d.visible) {
        for &i in &d.images {
            let im = &images[i];
            match std::fs::symlink_metadata(&im.path) {
                Ok(m) if m.is_file() && m.len() == im.bytes => {}
                Ok(m) => {
                    return Err(format!(
                        "{} has {} bytes, its process wrote {}",
                        im.path,
                        m.len(),
                        im.bytes
                    ))
                }
                // A process of another host whose directory has the same
                // path as one here but is its own (node-local storage):
                // its processes commit it (see the module's comment).
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound && im.host != params.coord_host => {
                }
                Err(e) => return Err(format!("{}: {e}", im.path)),
            }
        }
        let mine: Vec<String> = d
            .images
            .iter()
            .map(|&i| file_name(Path::new(&images[i].path)))
            .collect();
        for e in std::fs::read_dir(&d.partial)
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if !mine.contains(&n) {
                let p = e.path();
                let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
            }
        }
        if std::fs::symlink_metadata(&d.committed).is_ok() {
            return Err(format!(
                "{} exists already (a generation of another run of this computation?)",
                d.committed.display()
            ));
        }
    }
    // Names as each directory's manifest gives them: plain in their own
    // directory, absolute (committed path) elsewhere.
    let name_in = |d: &GenDir, i: usize| -> String {
        let img = Path::new(&images[i].path);
        if d.images.contains(&i) {
            return file_name(img);
        }
        let other = dirs
            .iter()
            .find(|o| o.images.contains(&i))
            .map(|o| o.committed.clone())
            .unwrap_or_default();
        other.join(file_name(img)).display().to_string()
    };
    // Every earlier image an incremental image refers to, linked into its
    // directory before the commit: a committed generation holds all it
    // needs, and pruning older ones cannot take it away.
    let mut notes = Vec::new();
    let mut linked: Vec<Vec<Entry>> = Vec::with_capacity(dirs.len());
    for d in &dirs {
        linked.push(if d.visible {
            link_sources(d, images, link, &mut notes)
        } else {
            Vec::new()
        });
    }
    let script = script_name(comp);
    let home_script = dirs[home].committed.join(&script);
    let time = now();
    for (d, sources) in dirs.iter().zip(linked).filter(|(d, _)| d.visible) {
        let is_home = d.partial == dirs[home].partial;
        let m = Manifest {
            format: gen::FORMAT.into(),
            version: gen::VERSION,
            comp_id: comp.into(),
            generation,
            time,
            script: if is_home {
                script.clone()
            } else {
                home_script.display().to_string()
            },
            images: (0..images.len())
                .map(|i| Entry {
                    name: name_in(d, i),
                    host: images[i].host.clone(),
                    program: images[i].program.clone(),
                    size: images[i].bytes,
                    crc32: images[i].crc32,
                    header_crc: images[i].header_crc,
                })
                .collect(),
            sources,
            checksum: String::new(),
        };
        put_file(&d.partial, gen::MANIFEST, m.encode().as_bytes(), 0o600)
            .map_err(|e| format!("cannot write the manifest in {}: {e}", d.partial.display()))?;
        if is_home {
            let text = crate::script::render(&crate::script::ScriptInfo {
                comp_id: comp.into(),
                generation,
                coord_host: params.coord_host.clone(),
                coord_port: params.coord_port,
                interval: params.interval,
                restart_bin: restart_bin(),
                ckpt_dir: d.committed.display().to_string(),
                images: (0..images.len()).map(|i| name_in(d, i)).collect(),
                hosts: images.iter().map(|im| im.host.clone()).collect(),
            });
            put_file(&d.partial, &script, text.as_bytes(), 0o755).map_err(|e| {
                format!(
                    "cannot write the restart script in {}: {e}",
                    d.partial.display()
                )
            })?;
        }
        fsync_dir(&d.partial);
    }
    // The commit: the other directories first, the coordinator's last.
    let mut order: Vec<usize> = (0..dirs.len())
        .filter(|&k| dirs[k].visible && k != home)
        .collect();
    order.push(home);
    let mut renamed: Vec<usize> = Vec::new();
    for &k in &order {
        let d = &dirs[k];
        if let Err(e) = std::fs::rename(&d.partial, &d.committed) {
            for &r in &renamed {
                let _ = std::fs::rename(&dirs[r].committed, &dirs[r].partial);
            }
            return Err(format!(
                "cannot commit {} as {}: {e}",
                d.partial.display(),
                d.committed.display()
            ));
        }
        fsync_dir(&d.top);
        renamed.push(k);
    }
    // Committed.
    let names = |d: &GenDir| -> Vec<String> {
        d.images
            .iter()
            .map(|&i| file_name(Path::new(&images[i].path)))
            .collect()
    };
    let dirs = dirs
        .into_iter()
        .map(|mut d| {
            // From here on a directory's images are known by name.
            d.names = names(&d);
            d
        })
        .collect();
    Ok(Names {
        dirs,
        home,
        script,
        comp: comp.into(),
        generation,
        keep,
        images: all_top,
        notes,
    })
}

/// Said once per coordinator: hard links could not be made.
static NO_LINKS_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Hard-link into `d.partial` (not yet committed) every earlier image the
/// images written there refer to, as `<its generation directory's
/// name>/<image>` (the name in the images' `sources`, found first by a
/// restart); the manifest's entries for them. The file is taken where it
/// is: in its own generation directory, or linked in a later one (its own
/// pruned). Where no link can be made (another file system, no hard links
/// there) the generation refers to the earlier directory as before, which
/// pruning then keeps; a note says so, once per coordinator.
fn link_sources(d: &GenDir, images: &[Image], link: LinkFn, notes: &mut Vec<String>) -> Vec<Entry> {
    use dmtcp_common::image::Image as File;
    use std::collections::{HashMap, HashSet};
    let mut out: Vec<Entry> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut subdirs: HashSet<PathBuf> = HashSet::new();
    // Whole-file CRCs the manifests give, read once per manifest.
    let mut crcs: HashMap<PathBuf, HashMap<String, u32>> = HashMap::new();
    let committed: Vec<gen::Found> = gen::list(&d.top)
        .into_iter()
        .filter(|f| !f.partial)
        .rev()
        .collect();
    for &i in &d.images {
        let Ok(img) = File::open_alone(Path::new(&images[i].path)) else {
            continue;
        };
        for s in &img.meta.sources {
            let Some((sdir, sfile)) = s.name.split_once('/') else {
                continue;
            };
            let plain = |x: &str| !x.is_empty() && x != ".." && x != "." && !x.contains('/');
            if !plain(sdir) || !plain(sfile) || gen::parse_name(sdir).is_none_or(|n| n.2) {
                continue;
            }
            if !done.insert(s.name.clone()) {
                continue;
            }
            let at = std::iter::once(d.top.clone())
                .chain(committed.iter().map(|f| f.path.clone()))
                .find(|dir| is_source(&dir.join(&s.name), s));
            // Not to be found: the restart will say so (as before).
            let Some(at) = at else { continue };
            let from = at.join(&s.name);
            let sub = d.partial.join(sdir);
            let made = match std::fs::create_dir(&sub) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => link(&from, &sub.join(sfile)),
            };
            if let Err(e) = made {
                if !NO_LINKS_SAID.swap(true, Ordering::Relaxed) {
                    notes.push(format!(
                        "cannot hard-link {} into {} ({e}): generations of incremental images keep the \
                         earlier generations they refer to, so more than --keep-generations may stay",
                        from.display(),
                        sub.display()
                    ));
                }
                continue;
            }
            subdirs.insert(sub);
            // The manifest that listed it: a later generation's holding
            // it, or its own generation's.
            let (mdir, key) = if at == d.top {
                (at.join(sdir), sfile)
            } else {
                (at.clone(), s.name.as_str())
            };
            let listed = crcs
                .entry(mdir.clone())
                .or_insert_with(|| listed_crcs(&mdir))
                .get(key)
                .copied();
            out.push(Entry {
                name: s.name.clone(),
                host: images[i].host.clone(),
                program: images[i].program.clone(),
                size: s.file_len,
                crc32: listed.unwrap_or_else(|| gen::file_crc32(&from).unwrap_or(0)),
                header_crc: s.header_crc,
            });
        }
    }
    for sub in &subdirs {
        fsync_dir(sub);
    }
    out
}

/// The whole-file CRCs generation `dir`'s manifest gives, by name: its
/// images' and its held earlier images' (empty without a sound manifest).
fn listed_crcs(dir: &Path) -> std::collections::HashMap<String, u32> {
    Manifest::load(dir)
        .map(|m| {
            m.images
                .into_iter()
                .chain(m.sources)
                .map(|e| (e.name, e.crc32))
                .collect()
        })
        .unwrap_or_default()
}

/// `p` is the earlier image `s` names: a file of its length whose header
/// has its header CRC (which covers its index CRC, so every chunk's). Only
/// the header block is read (the restart checks the rest).
fn is_source(p: &Path, s: &dmtcp_common::image::Source) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut block = [0u8; 48];
    // Non-blocking: a FIFO in its place must not stop the commit.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p);
    // A symlink would be linked as such, not the file.
    let plain = std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    plain
        && f.is_ok_and(|mut f| {
            f.metadata()
                .is_ok_and(|m| m.is_file() && m.len() == s.file_len)
                && f.read_exact(&mut block).is_ok()
                && dmtcp_common::image::Header::decode_crc(&block) == s.header_crc
        })
}

/// After the commit: the names users know point at the new generation,
/// then generations past the number to keep go. What fails here is a note
/// (the generation stays committed and restartable).
pub fn publish(n: Names) -> Committed {
    let Names {
        dirs,
        home,
        script,
        comp,
        generation,
        keep,
        images,
        mut notes,
    } = n;
    let comp = comp.as_str();
    let mut script_top = None;
    for (k, d) in dirs.iter().enumerate().filter(|(_, d)| d.visible) {
        let names = &d.names;
        for (n, e) in link_all(&d.top, &d.committed, names) {
            notes.push(format!("cannot link {n} in {}: {e}", d.top.display()));
        }
        if k == home {
            match link_over(&d.top, &d.committed, &script).and_then(|()| {
                let link = d.top.join("dmtcp_restart_script.sh");
                let tmp = symlink_fresh(&d.top, "dmtcp_restart_script.sh", &script)?;
                std::fs::rename(&tmp, &link).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
            }) {
                Ok(()) => script_top = Some(d.top.join(&script)),
                Err(e) => notes.push(format!("cannot put the restart script in place: {e}")),
            }
        }
        drop_stale_names(&d.top, comp, generation, names);
        fsync_dir(&d.top);
        prune(&d.top, comp, generation, keep, &mut notes);
    }
    Committed {
        script: script_top,
        images,
        notes,
    }
}

/// A round failed: remove what it wrote in `dirs` (checkpoint directories;
/// the processes remove their own images too). The previous generation is
/// not touched.
pub fn abandon<'a>(comp: &str, generation: u32, dirs: impl Iterator<Item = &'a Path>) {
    let name = gen::partial_name(comp, generation);
    for d in dirs {
        let p = d.join(&name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn restart_bin() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("dmtcp_restart")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "dmtcp_restart".into())
}

/// Make `top/name` the committed generation's `name`: a hard link made
/// under a fresh name and renamed over it (a symlink into the generation
/// where hard links are not to be had).
fn link_over(top: &Path, committed: &Path, name: &str) -> std::io::Result<()> {
    let target = committed.join(name);
    let tmp = fresh_name(top, name);
    if std::fs::hard_link(&target, &tmp).is_err() {
        let rel = Path::new(&file_name(committed)).join(name);
        std::os::unix::fs::symlink(rel, &tmp)?;
    }
    std::fs::rename(&tmp, top.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Names per thread of [`link_all`]: below this, one thread does all.
const LINKS_PER_THREAD: usize = 64;
/// Threads of [`link_all`] at most: on a parallel file system each link
/// and rename is a round trip to the metadata server, so several in
/// flight finish sooner; a local disk gains nothing and loses little.
const LINK_THREADS: usize = 8;

/// [`link_over`] for every name, by up to [`LINK_THREADS`] threads; the
/// names that failed, with their errors.
fn link_all(top: &Path, committed: &Path, names: &[String]) -> Vec<(String, std::io::Error)> {
    let threads = names
        .len()
        .div_ceil(LINKS_PER_THREAD)
        .clamp(1, LINK_THREADS);
    let per = names.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = names
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|n| link_over(top, committed, n).err().map(|e| (n.clone(), e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Images at the top of `top` that belonged to the generation before
/// `generation` and not to it (processes that exited since): their names
/// go, so that `ckpt_*.dmtcp` names the new generation only.
fn drop_stale_names(top: &Path, comp: &str, generation: u32, names: &[String]) {
    let safe = gen::safe_comp(comp);
    let prev = gen::list(top)
        .into_iter()
        .rfind(|f| f.comp == safe && !f.partial && f.generation < generation);
    let Some(prev) = prev else { return };
    let Ok(m) = Manifest::load(&prev.path) else {
        return;
    };
    for e in m
        .images
        .iter()
        .filter(|e| !Path::new(&e.name).is_absolute())
    {
        if names.contains(&e.name) {
            continue;
        }
        let at_top = top.join(&e.name);
        if same_file(&at_top, &prev.path.join(&e.name)) {
            let _ = std::fs::remove_file(&at_top);
        }
    }
}

/// Keep the `keep` newest committed generations of `comp` in `top` (0: all),
/// the one just committed among them; remove unfinished ones it replaces.
fn prune(top: &Path, comp: &str, generation: u32, keep: u32, notes: &mut Vec<String>) {
    let safe = gen::safe_comp(comp);
    let mine: Vec<gen::Found> = gen::list(top)
        .into_iter()
        .filter(|f| f.comp == safe && f.generation != generation)
        .collect();
    let mut older: Vec<&gen::Found> = mine.iter().filter(|f| !f.partial).collect();
    older.sort_by_key(|f| std::cmp::Reverse(f.generation));
    let keep_others = if keep == 0 {
        usize::MAX
    } else {
        keep as usize - 1
    };
    let stale_partial = mine
        .iter()
        .filter(|f| f.partial && f.generation < generation);
    // Generations a kept one's incremental images refer to stay.
    let kept = std::iter::once(top.join(gen::dir_name(comp, generation)))
        .chain(older.iter().take(keep_others).map(|f| f.path.clone()))
        .collect::<Vec<_>>();
    let needed = gen::referenced(kept.iter().map(|p| p.as_path()));
    let unneeded = older.into_iter().skip(keep_others).filter(|f| {
        !f.path
            .file_name()
            .is_some_and(|n| needed.contains(&*n.to_string_lossy()))
    });
    for f in unneeded.chain(stale_partial) {
        if let Err(e) = std::fs::remove_dir_all(&f.path) {
            notes.push(format!("cannot remove {}: {e}", f.path.display()));
        }
    }
}

/// Write `name` in `dir` (ours: the generation being written) under a
/// fresh name, make it durable and rename it into place.
fn put_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = write_fresh(dir, name, data, mode)?;
    let r = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// A temporary name in `dir` for `name` nobody else can guess in advance.
pub fn fresh_name(dir: &Path, name: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        ".{name}.{}.{}.{nanos:x}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Create a new file in `dir` (never an existing one, never through a
/// symlink) holding `data` with `mode`; returns its name.
pub fn write_fresh(dir: &Path, name: &str, data: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for _ in 0..64 {
        let tmp = fresh_name(dir, name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        let mut f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        // fchmod on the open file: the mode is exact whatever the umask.
        let r = f
            .write_all(data)
            .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(mode)));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        return Ok(tmp);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free temporary name for {name} in {}", dir.display()),
    ))
}

/// Create a new symlink to `target` in `dir` under a fresh name.
pub fn symlink_fresh(dir: &Path, name: &str, target: &str) -> std::io::Result<PathBuf> {
    for _ in 0..64 {
        let tmp = fresh_name(dir, name);
        match std::os::unix::fs::symlink(target, &tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free temporary name for {name} in {}", dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, comp: &str, gen: u32, name: &str, bytes: &[u8], host: &str) -> Image {
        let part = dir.join(gen::partial_name(comp, gen));
        std::fs::create_dir_all(&part).unwrap();
        let p = part.join(name);
        std::fs::write(&p, bytes).unwrap();
        Image {
            path: p.display().to_string(),
            host: host.into(),
            program: "p".into(),
            bytes: bytes.len() as u64,
            crc32: crc32(bytes),
            header_crc: 0,
        }
    }

    fn crc32(b: &[u8]) -> u32 {
        // Any value will do: the manifest carries what the writer says.
        b.iter().fold(0u32, |a, &x| a.rotate_left(5) ^ x as u32)
    }

    /// Images in two directories: each committed with a manifest listing
    /// all (the other's by path), the script in the first; top-level links
    /// follow the newest generation; keep 1 removes the older one; an
    /// image of a process gone from the newer generation loses its name.
    #[test]
    fn two_directories_keep_and_stale_names() {
        let root = std::env::temp_dir().join(format!("dmtcp-commit-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let params = ScriptParams {
            coord_host: "here".into(),
            coord_port: 7779,
            interval: 0,
        };
        let comp = "c-1";
        let g1 = vec![
            put(&a, comp, 1, "ckpt_x_1.dmtcp", b"one", "here"),
            put(&a, comp, 1, "ckpt_y_2.dmtcp", b"two", "here"),
            put(&b, comp, 1, "ckpt_z_3.dmtcp", b"three", "there"),
        ];
        let c = commit(comp, 1, 1, &params, &g1).unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let ga = a.join(gen::dir_name(comp, 1));
        let gb = b.join(gen::dir_name(comp, 1));
        let ma = Manifest::load(&ga).unwrap();
        let mb = Manifest::load(&gb).unwrap();
        assert_eq!(ma.images.len(), 3);
        assert_eq!(
            ma.images[2].name,
            gb.join("ckpt_z_3.dmtcp").display().to_string()
        );
        assert_eq!(mb.images[2].name, "ckpt_z_3.dmtcp");
        assert_eq!(
            mb.images[0].name,
            ga.join("ckpt_x_1.dmtcp").display().to_string()
        );
        assert!(ga.join(script_name(comp)).is_file());
        assert_eq!(c.script, Some(a.join(script_name(comp))));
        assert_eq!(std::fs::read(b.join("ckpt_z_3.dmtcp")).unwrap(), b"three");
        assert_eq!(std::fs::read(a.join("ckpt_y_2.dmtcp")).unwrap(), b"two");
        assert!(!a.join(gen::partial_name(comp, 1)).exists());
        // Generation 2 without y; a stale unfinished generation 1 left over.
        std::fs::create_dir_all(a.join(gen::partial_name(comp, 1))).unwrap();
        let g2 = vec![
            put(&a, comp, 2, "ckpt_x_1.dmtcp", b"ONE", "here"),
            put(&b, comp, 2, "ckpt_z_3.dmtcp", b"THREE", "there"),
        ];
        commit(comp, 2, 1, &params, &g2).unwrap();
        assert_eq!(std::fs::read(a.join("ckpt_x_1.dmtcp")).unwrap(), b"ONE");
        assert_eq!(std::fs::read(b.join("ckpt_z_3.dmtcp")).unwrap(), b"THREE");
        assert!(!a.join("ckpt_y_2.dmtcp").exists(), "stale name kept");
        let left: Vec<u32> = gen::list(&a).iter().map(|f| f.generation).collect();
        assert_eq!(left, vec![2], "keep 1 (and no unfinished one)");
        assert_eq!(gen::list(&b).len(), 1);
        // A commit that cannot happen (an image shorter than reported)
        // leaves generation 2 as it was.
        let mut g3 = vec![put(&a, comp, 3, "ckpt_x_1.dmtcp", b"1", "here")];
        g3[0].bytes = 5;
        assert!(commit(comp, 3, 1, &params, &g3)
            .unwrap_err()
            .contains("bytes"));
        abandon(comp, 3, [a.as_path()].into_iter());
        assert_eq!(std::fs::read(a.join("ckpt_x_1.dmtcp")).unwrap(), b"ONE");
        assert_eq!(gen::list(&a).len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A small valid image of process `u`, generation `g`, whose
    /// metadata names `sources` (it has no memory: only its index).
    fn image_file(p: &Path, g: u32, sources: Vec<dmtcp_common::image::Source>) -> Image {
        use dmtcp_common::image::{encode_index, Header, Meta};
        let meta = Meta {
            program: "p".into(),
            argv: vec!["p".into()],
            hostname: "here".into(),
            pid: 1,
            uniq_id: "u".into(),
            comp_id: "c-3".into(),
            generation: g,
            num_peers: 1,
            time: 0,
            dmtcp_version: "0".into(),
            entry: 1,
            entry_stack_top: 2,
            special: [(0, 0); 3],
            mm: [0; 11],
            areas: Vec::new(),
            coord_host: "here".into(),
            coord_port: 7779,
            ckpt_dir: ".".into(),
            tree: Default::default(),
            cpu_flags: Vec::new(),
            vdso_syms: Vec::new(),
            since_full: sources.len() as u32,
            lazy_protocol: 0,
            sources,
        };
        let index = encode_index(&meta, &[]);
        let mut data = vec![0u8; 4096];
        data.extend_from_slice(&index);
        let h = Header {
            index_offset: 4096,
            index_len: index.len() as u64,
            index_crc: crc32fast::hash(&index),
            file_len: data.len() as u64,
            ..Default::default()
        };
        data[..4096].copy_from_slice(&h.encode());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &data).unwrap();
        Image {
            path: p.display().to_string(),
            host: "here".into(),
            program: "p".into(),
            bytes: data.len() as u64,
            crc32: crc32fast::hash(&data),
            header_crc: Header::decode_crc(&data),
        }
    }

    /// The source naming image `im` of generation `g`.
    fn source_of(comp: &str, g: u32, im: &Image) -> dmtcp_common::image::Source {
        dmtcp_common::image::Source {
            name: format!(
                "{}/{}",
                gen::dir_name(comp, g),
                file_name(Path::new(&im.path))
            ),
            generation: g,
            file_len: im.bytes,
            header_crc: im.header_crc,
        }
    }

    /// Generations 2 and 3 refer to 1, 3 to 2 too, with `--keep-generations
    /// 1`: each commit links the sources in (generation 1's image taken
    /// from 2's directory once 1 is pruned), the manifest lists them with
    /// the whole-file CRC the earlier manifest gave, and exactly one
    /// generation stays. Where the links cannot be made, a note says so
    /// once and the generations referred to stay.
    #[test]
    fn sources_are_linked_in_before_the_commit_or_their_generations_stay() {
        let root = std::env::temp_dir().join(format!("dmtcp-commit-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let params = ScriptParams {
            coord_host: "here".into(),
            coord_port: 7779,
            interval: 0,
        };
        let comp = "c-3";
        let name = "ckpt_p_u.dmtcp";
        let at = |g: u32| root.join(gen::partial_name(comp, g)).join(name);
        let g1 = image_file(&at(1), 1, Vec::new());
        commit(comp, 1, 1, &params, std::slice::from_ref(&g1)).unwrap();
        let s1 = source_of(comp, 1, &g1);
        let g2 = image_file(&at(2), 2, vec![s1.clone()]);
        let c = commit(comp, 2, 1, &params, std::slice::from_ref(&g2)).unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let dir = |g: u32| root.join(gen::dir_name(comp, g));
        let left = |r: &Path| {
            gen::list(r)
                .iter()
                .map(|f| f.generation)
                .collect::<Vec<_>>()
        };
        assert_eq!(left(&root), [2], "generation 2 holds what it needs of 1");
        let m2 = Manifest::load(&dir(2)).unwrap();
        assert_eq!(m2.sources.len(), 1);
        assert_eq!(m2.sources[0].name, s1.name);
        assert_eq!(
            (
                m2.sources[0].size,
                m2.sources[0].crc32,
                m2.sources[0].header_crc
            ),
            (g1.bytes, g1.crc32, g1.header_crc)
        );
        let held = dir(2).join(&s1.name);
        assert_eq!(gen::file_crc32(&held).unwrap(), g1.crc32);
        let g3 = image_file(&at(3), 3, vec![s1.clone(), source_of(comp, 2, &g2)]);
        commit(comp, 3, 1, &params, std::slice::from_ref(&g3)).unwrap();
        assert_eq!(left(&root), [3]);
        let m3 = Manifest::load(&dir(3)).unwrap();
        let crcs: Vec<(String, u32)> = m3
            .sources
            .iter()
            .map(|e| (e.name.clone(), e.crc32))
            .collect();
        assert_eq!(
            crcs,
            [
                (s1.name.clone(), g1.crc32),
                (source_of(comp, 2, &g2).name, g2.crc32)
            ]
        );
        assert_eq!(gen::file_crc32(&dir(3).join(&s1.name)).unwrap(), g1.crc32);
        // No hard links to be had: a note, once; generation 3 stays for 4.
        let g4 = image_file(&at(4), 4, vec![source_of(comp, 3, &g3)]);
        let no = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EXDEV));
        NO_LINKS_SAID.store(false, Ordering::Relaxed);
        let c =
            publish(commit_linking(comp, 4, 1, &params, std::slice::from_ref(&g4), no).unwrap());
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("cannot hard-link"), "{:?}", c.notes);
        assert!(Manifest::load(&dir(4)).unwrap().sources.is_empty());
        assert_eq!(left(&root), [3, 4], "generation 4 needs 3's directory");
        let g5 = image_file(&at(5), 5, vec![source_of(comp, 3, &g3)]);
        let c =
            publish(commit_linking(comp, 5, 1, &params, std::slice::from_ref(&g5), no).unwrap());
        assert!(c.notes.is_empty(), "said once: {:?}", c.notes);
        assert_eq!(left(&root), [3, 5]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Enough images for several linking threads: after two generations
    /// every top-level name is the newest generation's image, no
    /// temporary name is left, and one name that cannot be linked (a
    /// directory stands in its way) is reported without stopping the rest.
    #[test]
    fn many_images_are_linked_by_several_threads() {
        let root = std::env::temp_dir().join(format!("dmtcp-commit-many-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let params = ScriptParams {
            coord_host: "here".into(),
            coord_port: 7779,
            interval: 0,
        };
        let comp = "c-2";
        let n = LINKS_PER_THREAD * 5 + 7;
        let name = |i: usize| format!("ckpt_p_{i}.dmtcp");
        for g in 1..=2u32 {
            let imgs: Vec<Image> = (0..n)
                .map(|i| {
                    put(
                        &root,
                        comp,
                        g,
                        &name(i),
                        format!("{g}:{i}").as_bytes(),
                        "here",
                    )
                })
                .collect();
            if g == 2 {
                std::fs::remove_file(root.join(name(3))).unwrap();
                std::fs::create_dir(root.join(name(3))).unwrap();
            }
            let c = commit(comp, g, 2, &params, &imgs).unwrap();
            if g == 1 {
                assert!(c.notes.is_empty(), "{:?}", c.notes);
            } else {
                assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
                assert!(c.notes[0].contains(&name(3)), "{:?}", c.notes);
            }
        }
        for i in (0..n).filter(|&i| i != 3) {
            let got = std::fs::read(root.join(name(i))).unwrap();
            assert_eq!(got, format!("2:{i}").as_bytes(), "{}", name(i));
        }
        let tmp: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "{tmp:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
