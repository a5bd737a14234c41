//! Checkpoint generations: names, the manifest, and finding the newest
//! committed generation of a directory (see docs/image-format.md).
//!
//! Every checkpoint round is a generation. Its images are written into
//! `<ckptdir>/dmtcp_gen_<comp>_<N>.partial/`; when every process has
//! written its own, the coordinator puts the manifest and the restart
//! script in that directory and renames it to `dmtcp_gen_<comp>_<N>`: that
//! one rename commits the generation. A directory without `.partial` and
//! with a manifest whose checksum matches is a committed generation;
//! anything else is not, and restart never takes it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Start of every generation directory's name.
pub const PREFIX: &str = "dmtcp_gen_";
/// Suffix of a generation still being written.
pub const PARTIAL: &str = ".partial";
/// The manifest's file name inside a generation directory.
pub const MANIFEST: &str = "dmtcp_manifest.json";
/// What `format` says in every manifest.
pub const FORMAT: &str = "DMTCP-rs checkpoint generation";
/// Manifest version.
pub const VERSION: u32 = 1;
/// Generations kept by default (`--keep-generations`).
pub const DEFAULT_KEEP: u32 = 2;
/// The line that closes a manifest starts with this (after two spaces).
const CHECKSUM_KEY: &str = "\n  \"checksum\": \"crc32:";

/// The computation id as it may appear in a file name (plain characters
/// only: it comes from the processes).
pub fn safe_comp(comp: &str) -> String {
    comp.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `dmtcp_gen_<comp>_<gen>`: the committed generation's directory name.
pub fn dir_name(comp: &str, gen: u32) -> String {
    format!("{PREFIX}{}_{gen}", safe_comp(comp))
}

/// The directory a generation's images are written into.
pub fn partial_name(comp: &str, gen: u32) -> String {
    format!("{}{PARTIAL}", dir_name(comp, gen))
}

/// A generation directory's name taken apart: (safe computation id,
/// generation, partial?). None for any other name.
pub fn parse_name(name: &str) -> Option<(String, u32, bool)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (rest, partial) = match rest.strip_suffix(PARTIAL) {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (comp, n) = rest.rsplit_once('_')?;
    if comp.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((comp.to_string(), n.parse().ok()?, partial))
}

/// One generation directory found in a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub generation: u32,
    /// Safe computation id (as in the name).
    pub comp: String,
    pub partial: bool,
    pub path: PathBuf,
}

/// Every generation directory (committed or not) in `dir`, by generation.
pub fn list(dir: &Path) -> Vec<Found> {
    let mut v: Vec<Found> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (comp, generation, partial) = parse_name(&name)?;
            // Only real directories (a symlink planted there is not ours).
            e.file_type().ok().filter(|t| t.is_dir())?;
            Some(Found {
                generation,
                comp,
                partial,
                path: e.path(),
            })
        })
        .collect();
    v.sort();
    v
}

/// The generation directories (their names) whose images the images in
/// `kept` (generation directories) refer to and that a kept directory does
/// not hold itself: incremental images keep part of their memory in
/// earlier generations, which the coordinator hard-links into the
/// referring generation's directory before its commit
/// (`<kept>/dmtcp_gen_<comp>_<N>/<image>`); where it could not (no hard
/// links there, or a directory the processes committed), the earlier
/// generation must stay as long as a kept generation needs it. An image
/// that cannot be read refers to nothing here (a restart of it fails
/// anyway); reading one costs its index.
pub fn referenced<'a>(kept: impl Iterator<Item = &'a Path>) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in kept {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("ckpt_") && name.ends_with(".dmtcp")) {
                continue;
            }
            if let Ok(img) = crate::image::Image::open_alone(&e.path()) {
                for s in &img.meta.sources {
                    let held = std::fs::symlink_metadata(d.join(&s.name))
                        .is_ok_and(|m| m.is_file() && m.len() == s.file_len);
                    if let (false, Some((dir, _))) = (held, s.name.split_once('/')) {
                        out.insert(dir.to_string());
                    }
                }
            }
        }
    }
    out
}

/// CRC-32 (IEEE) of a whole file, as manifests give it.
pub fn file_crc32(p: &Path) -> std::io::Result<u32> {
    use std::io::Read;
    let mut h = crc32fast::Hasher::new();
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(h.finalize()),
            n => h.update(&buf[..n]),
        }
    }
}

/// The highest generation number of computation `comp` that `dir` holds
/// (committed or partial), 0 if none.
pub fn highest(dir: &Path, comp: &str) -> u32 {
    let safe = safe_comp(comp);
    list(dir)
        .iter()
        .filter(|f| f.comp == safe)
        .map(|f| f.generation)
        .max()
        .unwrap_or(0)
}

/// One image of a generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The image's file name in the generation directory, or its absolute
    /// path when it was written into another directory.
    pub name: String,
    /// Host the process ran on.
    pub host: String,
    /// The program.
    pub program: String,
    /// Bytes (the image's `file_len`).
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file, computed by the writer.
    pub crc32: u32,
    /// The image's own header CRC (which covers the index CRC, which
    /// covers every chunk's CRC).
    pub header_crc: u32,
}

/// What a committed generation holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub comp_id: String,
    pub generation: u32,
    /// Seconds since the epoch when it was committed.
    pub time: u64,
    /// The restart script in the generation directory.
    pub script: String,
    pub images: Vec<Entry>,
    /// The earlier images the incremental images of this generation refer
    /// to, hard-linked into this directory before its commit (`name`:
    /// `dmtcp_gen_<comp>_<N>/<image>`, as the images' `sources` name them;
    /// `host`, `program`: of the first image referring to it). Absent
    /// when there are none, or where no link could be made (the
    /// generation then needs the earlier generation's directory, and
    /// pruning keeps it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Entry>,
    /// `crc32:<8 hex digits>` of every byte of the file before the line
    /// holding this key.
    #[serde(default)]
    pub checksum: String,
}

impl Manifest {
    /// The manifest's text: pretty JSON whose last member is its checksum.
    pub fn encode(&self) -> String {
        let mut m = self.clone();
        m.checksum = String::new();
        let body = serde_json::to_string_pretty(&m).expect("manifest serializes");
        // Drop the empty checksum member the serializer put last and
        // append the real one.
        let cut = body
            .rfind(",\n  \"checksum\"")
            .expect("checksum is the last member");
        let mut text = body[..cut].to_string();
        text.push(',');
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("{CHECKSUM_KEY}{crc:08x}\"\n}}\n"));
        text
    }

    /// Parse and check a manifest's text.
    pub fn decode(text: &str) -> Result<Manifest, String> {
        let at = text
            .rfind(CHECKSUM_KEY)
            .ok_or("it has no checksum line (truncated or not a manifest)")?;
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| format!("it is not valid JSON ({e})"))?;
        let want = crc32fast::hash(&text.as_bytes()[..at]);
        if m.checksum != format!("crc32:{want:08x}") {
            return Err(format!(
                "checksum mismatch (it says {}, its contents give crc32:{want:08x})",
                m.checksum
            ));
        }
        if m.format != FORMAT || m.version != VERSION {
            return Err(format!(
                "unknown format '{}' version {} (this is {FORMAT} {VERSION})",
                m.format, m.version
            ));
        }
        Ok(m)
    }

    /// Read and check `<gen_dir>/dmtcp_manifest.json`.
    pub fn load(gen_dir: &Path) -> Result<Manifest, String> {
        let p = gen_dir.join(MANIFEST);
        let text = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("{} is damaged: not UTF-8 text", p.display()))?;
        Manifest::decode(&text).map_err(|e| format!("{} is damaged: {e}", p.display()))
    }

    /// Where entry `e` is, for a generation in `gen_dir`.
    pub fn path_of(gen_dir: &Path, e: &Entry) -> PathBuf {
        if Path::new(&e.name).is_absolute() {
            PathBuf::from(&e.name)
        } else {
            gen_dir.join(&e.name)
        }
    }
}

/// The newest committed generation in `dir`: (its directory, its
/// manifest). Generations whose manifest is missing or damaged are not
/// committed; a damaged one newer than the one returned is reported in
/// the error when there is no other, and named in `skipped` otherwise.
pub struct Newest {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Newer generation directories that were not taken, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Find the newest committed generation in `dir`: of each computation
/// the highest generation number with a manifest, and of several
/// computations the one committed last. Directories without a manifest
/// are not committed generations and are passed over; a damaged manifest
/// newer than the one taken is named in `skipped` (the caller decides).
/// None when no generation directory of `dir` has a manifest; an error
/// when every manifest there is damaged.
pub fn newest(dir: &Path) -> Option<Result<Newest, String>> {
    let found: Vec<Found> = list(dir).into_iter().filter(|f| !f.partial).collect();
    let mut sound: Vec<(PathBuf, Manifest)> = Vec::new();
    let mut bad: Vec<(PathBuf, String, u32, String)> = Vec::new();
    for f in found.iter().rev() {
        // A higher generation of this computation was found sound already.
        if sound.iter().any(|(_, m)| safe_comp(&m.comp_id) == f.comp) {
            continue;
        }
        if !f.path.join(MANIFEST).exists() {
            continue;
        }
        match Manifest::load(&f.path) {
            Ok(m) => sound.push((f.path.clone(), m)),
            Err(e) => bad.push((f.path.clone(), f.comp.clone(), f.generation, e)),
        }
    }
    let best = sound
        .into_iter()
        .max_by_key(|(_, m)| (m.time, m.generation));
    match best {
        Some((d, m)) => {
            let comp = safe_comp(&m.comp_id);
            let skipped = bad
                .into_iter()
                .filter(|b| b.1 == comp && b.2 > m.generation)
                .map(|b| (b.0, b.3))
                .collect();
            Some(Ok(Newest {
                dir: d,
                manifest: m,
                skipped,
            }))
        }
        None if bad.is_empty() => None,
        None => Some(Err(bad
            .into_iter()
            .map(|b| b.3)
            .collect::<Vec<_>>()
            .join("; "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            comp_id: "1a-7779-65".into(),
            generation: 3,
            time: 1_700_000_000,
            script: "dmtcp_restart_script_1a-7779-65.sh".into(),
            images: vec![Entry {
                name: "ckpt_a_\"x\".dmtcp".into(),
                host: "node0".into(),
                program: "a".into(),
                size: 8192,
                crc32: 0xdeadbeef,
                header_crc: 7,
            }],
            sources: Vec::new(),
            checksum: String::new(),
        }
    }

    #[test]
    fn manifest_round_trip_and_damage() {
        let m = sample();
        let text = m.encode();
        let back = Manifest::decode(&text).unwrap();
        assert_eq!(back.images, m.images);
        assert!(back.checksum.starts_with("crc32:"));
        // Any changed byte before the checksum line is caught.
        let bad = text.replace("8192", "8193");
        assert!(Manifest::decode(&bad)
            .unwrap_err()
            .contains("checksum mismatch"));
        assert!(Manifest::decode(&text[..text.len() / 2]).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(dir_name("a/b_c", 7), "dmtcp_gen_a_b_c_7");
        assert_eq!(
            parse_name("dmtcp_gen_a_b_c_7"),
            Some(("a_b_c".into(), 7, false))
        );
        assert_eq!(
            parse_name(&partial_name("x-1", 12)),
            Some(("x-1".into(), 12, true))
        );
        assert_eq!(parse_name("dmtcp_gen_x_"), None);
        assert_eq!(parse_name("ckpt_a.dmtcp"), None);
    }
}
