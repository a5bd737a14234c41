//! The checkpoint image format (documented in docs/image-format.md).
//!
//! ```text
//! offset 0      header block, 4096 bytes (magic, version, index location, CRCs)
//! 4096 ...      memory contents: runs of pages, raw or zstd, each starting at
//!               a 4096-aligned offset (so raw runs can be written with O_DIRECT
//!               straight from the process's memory), in any order
//! index_offset  index: IndexHead, metadata JSON, padding to 8, ChunkDesc table
//! ```
//! The header block is written last, after everything else is on disk, and
//! the file is renamed into place only after an fsync: a file with a valid
//! header is complete. Every run carries a CRC32 of its stored bytes, the
//! index and the header carry their own.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// First 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"DMTCPRS\0";
/// Current format version (2: chunks may lie in earlier images, the
/// index may end with content hashes). Version 1 images are read too.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this reader accepts.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Size of the header block, and alignment of every data run.
pub const BLOCK: u64 = 4096;
/// Chunk flag: the stored bytes are one zstd frame.
pub const CHUNK_ZSTD: u32 = 1;
/// Header flag: some chunks are compressed.
pub const HDR_COMPRESSED: u32 = 1;
/// Header flag: the index ends with one 16-byte content hash (xxh3-128 of
/// the chunk's memory bytes, little-endian) per chunk, in table order.
pub const HDR_HASHES: u32 = 2;
/// Chunk flags bits 16..31: where the stored bytes are. 0: in this file;
/// k: in `Meta::sources[k - 1]` (an earlier image of the same process).
pub const CHUNK_SRC_SHIFT: u32 = 16;
/// Most source images one image may refer to.
pub const MAX_SOURCES: usize = 64;
/// Largest chunk (memory bytes, and stored bytes) a reader accepts. The
/// writer (core/preload/src/writer.rs) never stores a run longer than one
/// work item, `memory::ITEM_PAGES` pages (4 MiB); this leaves room to grow
/// while bounding what a crafted image can make a reader allocate.
pub const MAX_CHUNK_LEN: u64 = 64 << 20;
/// Largest index a reader accepts: metadata and 40 bytes per chunk. 1 GiB
/// is millions of chunks, far beyond any process this version checkpoints.
pub const MAX_INDEX_LEN: u64 = 1 << 30;

/// The fixed header at offset 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub flags: u32,
    pub index_offset: u64,
    pub index_len: u64,
    pub file_len: u64,
    pub index_crc: u32,
    /// CRC32 of the header with this field set to zero.
    pub header_crc: u32,
}

/// Where a text hint for people who `head` the file starts in the header block.
pub const HINT_OFFSET: usize = 256;
/// The hint itself.
pub const HINT: &[u8] =
    b"\nDMTCP-rs checkpoint image. Restart it with: dmtcp_restart <this file>\n";

/// Start of the index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexHead {
    pub meta_len: u64,
    pub n_chunks: u64,
}

/// One stored run of memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkDesc {
    /// Address in the process.
    pub addr: u64,
    /// Bytes of memory (a multiple of 4096).
    pub len: u64,
    /// Offset of the stored bytes in the file (a multiple of 4096).
    pub file_off: u64,
    /// Stored bytes (compressed length, or `len`).
    pub stored_len: u64,
    /// CRC32 of the stored bytes.
    pub crc: u32,
    /// `CHUNK_*` flags; bits 16..31 the source ([`CHUNK_SRC_SHIFT`]).
    pub flags: u32,
}

impl ChunkDesc {
    /// 0: the stored bytes are in this file; k: in source image k - 1.
    pub fn source(&self) -> usize {
        (self.flags >> CHUNK_SRC_SHIFT) as usize
    }
}

/// An earlier image of the same process whose chunks an incremental image
/// refers to (the file where those bytes physically are: never a chain).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    /// `dmtcp_gen_<comp>_<N>/<image name>`: the generation directory and
    /// file, looked up in the referring image's generation directory (the
    /// coordinator's link), then next to it (or below the directory
    /// holding it, for a top-level name).
    pub name: String,
    pub generation: u32,
    /// Its `file_len`.
    pub file_len: u64,
    /// Its `header_crc` (which covers its index: this is the file).
    pub header_crc: u32,
}

const _: () = {
    assert!(std::mem::size_of::<Header>() == 48);
    assert!(std::mem::size_of::<IndexHead>() == 16);
    assert!(std::mem::size_of::<ChunkDesc>() == 40);
};

/// One memory area of the process (a line of /proc/self/maps).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub len: u64,
    pub offset: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// `dmtcp_sys::restore::KIND_*`.
    pub kind: u32,
    /// `dmtcp_sys::restore::AREA_*`.
    pub flags: u32,
    /// Backing file, or the kernel's label ("[heap]", "[stack]"), or empty.
    pub path: String,
    /// Size of the backing file at checkpoint time (file kinds only).
    #[serde(default)]
    pub file_size: u64,
    /// Shared anonymous memory: the kernel's inode of the shared object
    /// (equal in every process that shares it; 0 if unknown).
    #[serde(default)]
    pub shm: u64,
}

/// Everything but the memory contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub program: String,
    pub argv: Vec<String>,
    pub hostname: String,
    pub pid: i32,
    /// Stable id of this process across restarts (in the image name).
    pub uniq_id: String,
    /// Id of the computation (all processes of one job).
    pub comp_id: String,
    pub generation: u32,
    /// Processes in the computation when it was checkpointed.
    pub num_peers: u32,
    /// Seconds since the epoch.
    pub time: u64,
    pub dmtcp_version: String,
    /// Address of the restart entry in the preload library.
    pub entry: u64,
    /// Top of the stack the restart entry runs on.
    pub entry_stack_top: u64,
    /// [vvar], [vvar_vclock], [vdso]: (start, len).
    pub special: [(u64, u64); 3],
    /// /proc/self/stat's start_code..env_end, in prctl_mm_map order.
    pub mm: [u64; 11],
    pub areas: Vec<Area>,
    pub coord_host: String,
    pub coord_port: u16,
    pub ckpt_dir: String,
    /// The process's place in the job's tree when it was checkpointed.
    #[serde(default)]
    pub tree: Tree,
    /// Instruction-set features of the processor the image was taken on
    /// ([`crate::cpu`]); a restart on a processor without one is refused.
    #[serde(default)]
    pub cpu_flags: Vec<String>,
    /// The functions the `[vdso]` of `special` exported: (name, offset from
    /// its start). Lets a restart on a kernel whose vDSO differs redirect
    /// the old entry points to the new ones; empty in older images (which
    /// then restart only on a vDSO of the same layout).
    #[serde(default)]
    pub vdso_syms: Vec<(String, u64)>,
    /// Earlier images holding chunks of this one (incremental images;
    /// empty in a full one).
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Incremental images taken since the last full one (0: this one is full).
    #[serde(default)]
    pub since_full: u32,
    /// The version of the lazy restore protocol the library that wrote this
    /// image speaks ([`LAZY_PROTOCOL`]; 0 in images of a library without
    /// one): `dmtcp_restart` leaves compressed chunks to a page server only
    /// for a library that takes the page server's socket, asks it for
    /// every page before a fork or a checkpoint and watches it.
    #[serde(default)]
    pub lazy_protocol: u32,
}

/// The lazy restore protocol of this version (see [`Meta::lazy_protocol`]):
/// the restorer hands the page server's socket over in
/// `RestartArgs::lazy_fd` with the `RESTART_LAZY_FD` flag, the library
/// sends `F` to ask for every page and the server answers `D` once all are
/// in.
pub const LAZY_PROTOCOL: u32 = 1;

/// Parent, group, session and unreaped children of a process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tree {
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids (the main thread's is the pid).
    pub tids: Vec<i32>,
    /// Children that had exited but were not yet waited for: (pid, wait status).
    pub zombies: Vec<(i32, i32)>,
    /// Pipe ends: (fd, pipe inode, is the write end). Ends with the same
    /// inode, in any process of the computation, are one pipe.
    #[serde(default)]
    pub pipes: Vec<(i32, u64, bool)>,
    /// Sockets, re-created by `dmtcp_restart` (all but `Dead` ones) and
    /// handed to every process that had them.
    #[serde(default)]
    pub socks: Vec<SockRec>,
    /// Eventfds, made by `dmtcp_restart` with their counters (the same id
    /// in several processes: one shared eventfd).
    #[serde(default)]
    pub evfds: Vec<EvfdRec>,
    /// Open regular files: the same key in several processes is one open
    /// file description (one offset), opened once by `dmtcp_restart`.
    #[serde(default)]
    pub files: Vec<FileRec>,
    /// Ends of pseudo-terminals whose master is in the job.
    #[serde(default)]
    pub ptys: Vec<PtyRec>,
    /// The pseudo-terminal (its `key`) that is the process's controlling
    /// terminal, if its master is in the job.
    #[serde(default)]
    pub ctty: Option<String>,
}

/// One end of a pseudo-terminal whose master is held in the job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyRec {
    pub fd: i32,
    /// Names the pseudo-terminal (equal for both ends, in any process).
    pub key: String,
    pub master: bool,
    /// `struct termios` as `tcgetattr` gave it (slave ends).
    pub termios: Vec<u8>,
    /// rows, columns, x pixels, y pixels.
    pub winsize: [u16; 4],
    /// Foreground process group (master ends; 0 if none).
    pub fg: i32,
    pub flags: i32,
    /// Output the master had not read at checkpoint time (master ends):
    /// made readable on the master again at restart.
    #[serde(default)]
    pub pending: Vec<u8>,
}

/// An open regular file at checkpoint time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRec {
    pub fd: i32,
    /// Owner pid, device, inode, offset, flags: equal for the processes
    /// sharing one open file description.
    pub key: String,
    pub path: String,
    pub flags: i32,
    pub offset: i64,
}

/// An eventfd at checkpoint time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EvfdRec {
    pub fd: i32,
    /// The kernel's eventfd id (-1 if it does not show one).
    pub id: i64,
    pub count: u64,
    pub semaphore: bool,
}

/// What `dmtcp_restart` re-creates for a socket.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum SockState {
    /// A new socket, bound to `local` if that is set, connected to `peer`
    /// if that is set (datagram sockets).
    #[default]
    Plain,
    /// Bound to `local` and listening.
    Listen,
    /// One end of a connection between processes of the computation: the
    /// records with the same `pair` key are its two ends (`side` 0 and 1).
    Pair,
    /// A connection to something outside the computation: the process
    /// itself restores it closed (with the bytes it had not read yet).
    Dead,
}

/// A socket of the process at checkpoint time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SockRec {
    pub fd: i32,
    /// Inode: records with the same inode (in any process) are one socket.
    pub ino: u64,
    pub domain: i32,
    pub stype: i32,
    pub protocol: i32,
    pub state: SockState,
    /// Raw socket addresses (empty: unnamed / not connected).
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
    pub pair: String,
    pub side: u8,
    pub v6only: bool,
    /// Datagrams waiting in the receive queue: (sender's address, bytes),
    /// in order; sent again at restart (from the sender's new socket when
    /// it has one).
    #[serde(default)]
    pub dgrams: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What can be wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a DMTCP-rs checkpoint image (bad magic)")]
    NotAnImage { path: PathBuf },
    #[error("{path} is not a DMTCP-rs checkpoint image (not a regular file)")]
    NotAFile { path: PathBuf },
    #[error("{path} has image format version {found}, this dmtcp_restart reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated: {actual} bytes, the image needs {expected} (an interrupted copy or a full disk?)")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// `what` starts with the place: "header: ", "index: ", "metadata: ",
    /// "chunk N (memory at 0x...): ".
    #[error("{path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    /// An incremental image whose earlier image (holding part of its
    /// memory) is missing, replaced or damaged.
    #[error("{path} cannot be restarted: {what}")]
    Source { path: PathBuf, what: String },
}

fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: only used on the repr(C) integer structs above, which have no
    // padding (checked by the size assertions).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// The struct at the start of `b`; None if `b` is too short.
fn pod_read<T: Copy + Default>(b: &[u8]) -> Option<T> {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    if b.len() < n {
        return None;
    }
    // SAFETY: copying n bytes (b holds at least n) into a plain integer
    // struct; every bit pattern is valid.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut v as *mut T as *mut u8, n) };
    Some(v)
}

impl Header {
    /// The header block (4096 bytes) for these values, CRC filled in.
    pub fn encode(mut self) -> Vec<u8> {
        self.magic = MAGIC;
        self.version = FORMAT_VERSION;
        self.header_crc = 0;
        self.header_crc = crc32fast::hash(pod_bytes(&self));
        let mut block = vec![0u8; BLOCK as usize];
        block[..std::mem::size_of::<Header>()].copy_from_slice(pod_bytes(&self));
        block[HINT_OFFSET..HINT_OFFSET + HINT.len()].copy_from_slice(HINT);
        block
    }
}

impl Header {
    /// The `header_crc` field of an encoded header block (0 if too short).
    pub fn decode_crc(block: &[u8]) -> u32 {
        block
            .get(44..48)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    }
}

/// Encode the index for `meta` and `chunks` (no content hashes).
pub fn encode_index(meta: &Meta, chunks: &[ChunkDesc]) -> Vec<u8> {
    encode_index_hashed(meta, chunks, &[])
}

/// Encode the index for `meta` and `chunks`, followed by `hashes` (one per
/// chunk, or none; the header then has [`HDR_HASHES`]).
pub fn encode_index_hashed(meta: &Meta, chunks: &[ChunkDesc], hashes: &[u128]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("metadata serializes");
    let head = IndexHead {
        meta_len: json.len() as u64,
        n_chunks: chunks.len() as u64,
    };
    let mut out = Vec::with_capacity(16 + json.len() + 8 + chunks.len() * 40);
    out.extend_from_slice(pod_bytes(&head));
    out.extend_from_slice(&json);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    for c in chunks {
        out.extend_from_slice(pod_bytes(c));
    }
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out
}

/// Recompute the checksums of the image in `b`: the index's (where the
/// header says the index is, if that lies inside `b`), then the header's.
/// For tests and tools that make or edit images in memory (a test's
/// crafted damage then reaches the checks behind the checksums).
pub fn reseal(b: &mut [u8]) {
    let Some(mut h) = pod_read::<Header>(b) else {
        return;
    };
    let (o, l) = (h.index_offset as usize, h.index_len as usize);
    if let Some(ix) = o.checked_add(l).filter(|&e| e <= b.len()).map(|e| &b[o..e]) {
        h.index_crc = crc32fast::hash(ix);
    }
    h.header_crc = 0;
    h.header_crc = crc32fast::hash(pod_bytes(&h));
    b[..std::mem::size_of::<Header>()].copy_from_slice(pod_bytes(&h));
}

/// Change an image's metadata in place: the index (the end of the file)
/// is written again with `edit` applied, and the header updated. For tools
/// and tests that move or amend images; memory chunks are not touched.
pub fn rewrite_meta(path: &Path, edit: impl FnOnce(&mut Meta)) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    let img = Image::open(path)?;
    let mut meta = img.meta.clone();
    edit(&mut meta);
    let index = encode_index_hashed(&meta, &img.chunks, &img.hashes);
    let mut header = img.header;
    header.index_len = index.len() as u64;
    header.file_len = header.index_offset + header.index_len;
    header.index_crc = crc32fast::hash(&index);
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    f.write_all_at(&index, header.index_offset).map_err(io)?;
    f.set_len(header.file_len).map_err(io)?;
    f.write_all_at(&header.encode(), 0).map_err(io)?;
    f.sync_all().map_err(io)
}

/// An opened, validated image (header and index checked; contents are
/// checked chunk by chunk as they are read).
pub struct Image {
    pub path: PathBuf,
    pub header: Header,
    pub meta: Meta,
    pub chunks: Vec<ChunkDesc>,
    /// Content hash of each chunk's memory (empty if the image has none).
    pub hashes: Vec<u128>,
    /// The images of `meta.sources`, opened and checked, in that order.
    pub sources: Vec<Image>,
    file: File,
}

impl Image {
    /// Move the image's file descriptor to a number at or above `min`, out
    /// of the way of the fd numbers a restart puts the program's pipes at.
    /// (The sources' descriptors too.)
    pub fn move_fd_above(&mut self, min: i32) -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd};
        for s in &mut self.sources {
            s.move_fd_above(min)?;
        }
        // SAFETY: duplicating our own open fd; the File takes ownership of the copy.
        let fd = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        self.file = unsafe { File::from_raw_fd(fd) };
        Ok(())
    }

    /// The uid owning the image file (the file opened, whatever `path`
    /// names by now).
    pub fn owner(&self) -> Result<u32, ImageError> {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .map(|m| m.uid())
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Another descriptor of the open image file (close-on-exec), for
    /// mapping its contents: the file that was checked, not whatever
    /// `path` names by now.
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// The open image file (the one that was checked).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Check that `stored` (chunk `c`'s bytes as the file holds them) has
    /// the chunk's CRC.
    pub fn check_stored(&self, c: &ChunkDesc, stored: &[u8]) -> Result<(), ImageError> {
        if crc32fast::hash(stored) != c.crc {
            let whr = match c.source() {
                0 => String::new(),
                _ => format!(" of {}", self.file_of(c).path.display()),
            };
            return Err(ImageError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "{}: checksum mismatch in the memory contents ({} bytes at offset {}{whr})",
                    self.chunk_name(c),
                    c.stored_len,
                    c.file_off
                ),
            });
        }
        Ok(())
    }

    /// Open and validate `path`, and the earlier images an incremental
    /// image refers to (each opened once, checked to be the very file it
    /// names: generation, length, header checksum; every chunk kept there
    /// must lie in its data section).
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let mut img = Image::open_alone(path)?;
        img.open_sources()?;
        Ok(img)
    }

    /// The image or source that holds chunk `c`'s stored bytes.
    pub fn file_of(&self, c: &ChunkDesc) -> &Image {
        match c.source() {
            0 => self,
            k => self.sources.get(k - 1).unwrap_or(self),
        }
    }

    /// Where the sources of an image in `dir` may be, in this order: in
    /// its generation directory (the coordinator links every source there
    /// before the commit: `dir/<source's directory>/<image>`); next to its
    /// generation directory; and for a top-level name (an image in the
    /// checkpoint directory itself, a link to the one in its generation
    /// directory) below `dir`, then in its generation's directory there.
    fn source_candidates(dir: &Path, name: &str, generation: u32) -> Vec<PathBuf> {
        let mut v = vec![dir.join(name), dir.join("..").join(name)];
        let comp = name
            .split_once('/')
            .and_then(|(d, _)| crate::generation::parse_name(d));
        if let Some((comp, _, _)) = comp {
            v.push(
                dir.join(crate::generation::dir_name(&comp, generation))
                    .join(name),
            );
        }
        v
    }

    fn open_sources(&mut self) -> Result<(), ImageError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let err = |what: String| ImageError::Source {
            path: self.path.clone(),
            what,
        };
        let mut opened = Vec::with_capacity(self.meta.sources.len());
        for (k, s) in self.meta.sources.iter().enumerate() {
            let n = self.chunks.iter().filter(|c| c.source() == k + 1).count();
            let need = format!(
                "{n} chunks of its memory are in {} (generation {})",
                s.name, s.generation
            );
            let comps: Vec<_> = Path::new(&s.name).components().collect();
            if comps.len() != 2
                || !comps
                    .iter()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ImageError::Corrupt {
                    path: self.path.clone(),
                    what: format!("metadata: source {k} has the name {:?}, not <generation directory>/<image>", s.name),
                });
            }
            let mut why = Vec::new();
            let mut found = None;
            for cand in Image::source_candidates(&dir, &s.name, self.meta.generation) {
                match Image::open_alone(&cand) {
                    Ok(img) => {
                        if img.header.file_len != s.file_len
                            || img.header.header_crc != s.header_crc
                            || img.meta.generation != s.generation
                            || img.meta.uniq_id != self.meta.uniq_id
                        {
                            why.push(format!(
                                "{} is another image (generation {}, {} bytes, header checksum {:08x}; expected generation {}, {} bytes, {:08x}): replaced?",
                                cand.display(),
                                img.meta.generation,
                                img.header.file_len,
                                img.header.header_crc,
                                s.generation,
                                s.file_len,
                                s.header_crc
                            ));
                            continue;
                        }
                        found = Some(img);
                        break;
                    }
                    Err(ImageError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        why.push(format!("{} is missing", cand.display()));
                    }
                    Err(e) => why.push(e.to_string()),
                }
            }
            let Some(src) = found else {
                return Err(err(format!(
                    "{need}, which cannot be used: {} (an incremental image needs the earlier images it refers to; keep or copy the whole checkpoint directory)",
                    why.join("; ")
                )));
            };
            for (i, c) in self.chunks.iter().enumerate() {
                if c.source() == k + 1
                    && c.file_off
                        .checked_add(c.stored_len)
                        .is_none_or(|e| e > src.header.index_offset)
                {
                    return Err(ImageError::Corrupt {
                        path: self.path.clone(),
                        what: format!(
                            "chunk {i}: lies outside the data section of {} ({} bytes at offset {})",
                            src.path.display(),
                            c.stored_len,
                            c.file_off
                        ),
                    });
                }
            }
            opened.push(src);
        }
        self.sources = opened;
        Ok(())
    }

    /// Open and validate `path` alone (its sources are not opened).
    pub fn open_alone(path: &Path) -> Result<Image, ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = || path.to_path_buf();
        let io = |source| ImageError::Io { path: p(), source };
        // Non-blocking: opening a FIFO for reading would otherwise wait for
        // a writer (forever); it is refused below like any non-file.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let md = file.metadata().map_err(io)?;
        if !md.file_type().is_file() {
            return Err(ImageError::NotAFile { path: p() });
        }
        // SAFETY: fcntl on the descriptor `file` owns.
        unsafe {
            use std::os::fd::AsRawFd;
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        let actual = md.len();
        let mut hb = vec![0u8; std::mem::size_of::<Header>()];
        let got = read_up_to(&mut file, &mut hb).map_err(io)?;
        if got < 8 || hb[..8] != MAGIC {
            return Err(ImageError::NotAnImage { path: p() });
        }
        if got < hb.len() {
            return Err(ImageError::Truncated {
                path: p(),
                expected: BLOCK,
                actual,
            });
        }
        let corrupt = |what: String| ImageError::Corrupt { path: p(), what };
        let header: Header = pod_read(&hb).ok_or_else(|| corrupt("header: too short".into()))?;
        let mut check = header;
        check.header_crc = 0;
        if crc32fast::hash(pod_bytes(&check)) != header.header_crc {
            return Err(corrupt("header: checksum mismatch".into()));
        }
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&header.version) {
            return Err(ImageError::Version {
                path: p(),
                found: header.version,
            });
        }
        if actual < header.file_len {
            return Err(ImageError::Truncated {
                path: p(),
                expected: header.file_len,
                actual,
            });
        }
        if header.index_offset < BLOCK
            || header
                .index_offset
                .checked_add(header.index_len)
                .is_none_or(|e| e > header.file_len)
            || header.index_len < std::mem::size_of::<IndexHead>() as u64
        {
            return Err(corrupt(format!(
                "header: the index it points to ({} bytes at offset {}) lies outside the file's {} bytes",
                header.index_len, header.index_offset, header.file_len
            )));
        }
        if header.index_len > MAX_INDEX_LEN {
            return Err(corrupt(format!(
                "header: an index of {} bytes, more than the {MAX_INDEX_LEN} this version accepts",
                header.index_len
            )));
        }
        let mut index = vec![0u8; header.index_len as usize];
        file.read_exact_at(&mut index, header.index_offset)
            .map_err(io)?;
        if crc32fast::hash(&index) != header.index_crc {
            return Err(corrupt(format!(
                "index: checksum mismatch ({} bytes at offset {}: metadata and chunk table)",
                header.index_len, header.index_offset
            )));
        }
        let (meta, chunks, hashes) = parse_index(&index, &header).map_err(corrupt)?;
        Ok(Image {
            path: p(),
            header,
            meta,
            chunks,
            hashes,
            sources: Vec::new(),
            file,
        })
    }

    /// Read chunk `c` into `out` (resized to `c.len`), verifying its CRC.
    /// `scratch` is a reusable buffer for compressed bytes.
    pub fn read_chunk(
        &self,
        c: &ChunkDesc,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), ImageError> {
        let corrupt = |what: String| ImageError::Corrupt {
            path: self.path.clone(),
            what,
        };
        if c.len > MAX_CHUNK_LEN || c.stored_len > MAX_CHUNK_LEN {
            return Err(corrupt(format!(
                "{}: larger than {MAX_CHUNK_LEN} bytes",
                self.chunk_name(c)
            )));
        }
        let stored = if c.flags & CHUNK_ZSTD != 0 {
            &mut *scratch
        } else {
            &mut *out
        };
        stored.resize(c.stored_len as usize, 0);
        let src = self.file_of(c);
        src.file
            .read_exact_at(stored, c.file_off)
            .map_err(|source| ImageError::Io {
                path: src.path.clone(),
                source,
            })?;
        self.check_stored(c, stored)?;
        if c.flags & CHUNK_ZSTD != 0 {
            out.resize(c.len as usize, 0);
            let n = zstd::bulk::decompress_to_buffer(scratch, out)
                .map_err(|e| corrupt(format!("{}: cannot decompress: {e}", self.chunk_name(c))))?;
            if n != c.len as usize {
                return Err(corrupt(format!(
                    "{}: decompressed to {n} bytes instead of {}",
                    self.chunk_name(c),
                    c.len
                )));
            }
        }
        Ok(())
    }

    /// "chunk N (memory at 0x...)", for messages about `c`.
    fn chunk_name(&self, c: &ChunkDesc) -> String {
        // The table is sorted by address (parse_index checks it).
        match self.chunks.binary_search_by_key(&c.addr, |x| x.addr) {
            Ok(i) => format!(
                "chunk {i} of {} (memory at {:#x})",
                self.chunks.len(),
                c.addr
            ),
            Err(_) => format!("the chunk at memory {:#x}", c.addr),
        }
    }

    /// Read and check every chunk (used by `dmtcp_restart --check`-style paths and tests).
    pub fn verify_all(&self) -> Result<(), ImageError> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        for c in &self.chunks {
            self.read_chunk(c, &mut out, &mut scratch)?;
        }
        Ok(())
    }
}

/// Check and decode an index whose checksum matched: every length and
/// offset in it is checked against the index, the file and the limits
/// above, with checked arithmetic, so a crafted index gives an error.
type Parsed = (Meta, Vec<ChunkDesc>, Vec<u128>);

fn parse_index(index: &[u8], header: &Header) -> Result<Parsed, String> {
    let head: IndexHead = pod_read(index).ok_or("index: too short")?;
    let len = index.len() as u64;
    let meta_end = 16u64
        .checked_add(head.meta_len)
        .filter(|&e| e <= len)
        .ok_or_else(|| {
            format!(
                "index: the metadata ({} bytes) overruns the index ({len} bytes)",
                head.meta_len
            )
        })?;
    // meta_end <= len <= MAX_INDEX_LEN: no overflow below.
    let table = (meta_end + 7) & !7;
    let hashed = header.flags & HDR_HASHES != 0;
    let per = std::mem::size_of::<ChunkDesc>() as u64 + if hashed { 16 } else { 0 };
    let need = head
        .n_chunks
        .checked_mul(per)
        .and_then(|n| n.checked_add(table));
    if need.is_none_or(|n| n > len) {
        return Err(format!(
            "index: the chunk table ({} chunks) overruns the index ({len} bytes)",
            head.n_chunks
        ));
    }
    let meta: Meta = serde_json::from_slice(&index[16..meta_end as usize])
        .map_err(|e| format!("metadata: unreadable: {e}"))?;
    let mut chunks = Vec::with_capacity(head.n_chunks as usize);
    let mut prev_end = 0u64;
    for (i, raw) in index[table as usize..]
        .chunks_exact(std::mem::size_of::<ChunkDesc>())
        .take(head.n_chunks as usize)
        .enumerate()
    {
        let c: ChunkDesc = pod_read(raw).ok_or_else(|| format!("chunk {i}: short record"))?;
        let end = c.file_off.checked_add(c.stored_len);
        if c.source() > meta.sources.len() {
            return Err(format!(
                "chunk {i}: kept in source image {} of {}",
                c.source(),
                meta.sources.len()
            ));
        }
        // (A chunk kept in a source image is checked against that file
        // when it is opened.)
        let outside = c.source() == 0 && end.is_none_or(|e| e > header.index_offset);
        if c.file_off < BLOCK || !c.file_off.is_multiple_of(BLOCK) || outside || end.is_none() {
            return Err(format!(
                "chunk {i}: lies outside the data section ({} bytes at offset {})",
                c.stored_len, c.file_off
            ));
        }
        if c.len == 0 || c.len > MAX_CHUNK_LEN || c.stored_len > MAX_CHUNK_LEN {
            return Err(format!(
                "chunk {i}: a length of {} bytes ({} stored), outside 1..={MAX_CHUNK_LEN}",
                c.len, c.stored_len
            ));
        }
        let mem_end = c.addr.checked_add(c.len);
        if !c.len.is_multiple_of(4096) || !c.addr.is_multiple_of(4096) || mem_end.is_none() {
            return Err(format!(
                "chunk {i}: not a page-aligned memory range ({} bytes at {:#x})",
                c.len, c.addr
            ));
        }
        if c.addr < prev_end {
            return Err(format!(
                "chunk {i}: overlaps or precedes the one before it (memory at {:#x})",
                c.addr
            ));
        }
        prev_end = mem_end.unwrap_or(u64::MAX);
        if c.flags & CHUNK_ZSTD == 0 && c.stored_len != c.len {
            return Err(format!(
                "chunk {i}: {} bytes stored raw for {} bytes of memory",
                c.stored_len, c.len
            ));
        }
        chunks.push(c);
    }
    let mut hashes = Vec::new();
    if hashed {
        // table + n_chunks * 56 <= len was checked above.
        let at = table as usize + head.n_chunks as usize * std::mem::size_of::<ChunkDesc>();
        hashes = index[at..at + head.n_chunks as usize * 16]
            .chunks_exact(16)
            .map(|b| u128::from_le_bytes(b.try_into().unwrap_or([0; 16])))
            .collect();
    }
    if meta.sources.len() > MAX_SOURCES {
        return Err(format!(
            "metadata: {} source images, more than {MAX_SOURCES}",
            meta.sources.len()
        ));
    }
    for (i, a) in meta.areas.iter().enumerate() {
        if !a.start.is_multiple_of(4096)
            || !a.len.is_multiple_of(4096)
            || a.len == 0
            || a.start.checked_add(a.len).is_none()
        {
            return Err(format!(
                "metadata: area {i} is not a page-aligned memory range ({} bytes at {:#x})",
                a.len, a.start
            ));
        }
    }
    Ok((meta, chunks, hashes))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The image file name DMTCP users expect: `ckpt_<prog>_<uniq>.dmtcp`.
pub fn image_name(program: &str, uniq_id: &str) -> String {
    format!("ckpt_{program}_{uniq_id}.dmtcp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta() -> Meta {
        Meta {
            program: "t".into(),
            argv: vec!["t".into()],
            hostname: "h".into(),
            pid: 1,
            uniq_id: "u".into(),
            comp_id: "c".into(),
            generation: 1,
            num_peers: 1,
            time: 0,
            dmtcp_version: "0".into(),
            entry: 1,
            entry_stack_top: 2,
            special: [(0, 0); 3],
            mm: [0; 11],
            areas: vec![Area {
                start: 4096,
                len: 8192,
                offset: 0,
                prot: 3,
                kind: 0,
                flags: 0,
                path: String::new(),
                file_size: 0,
                shm: 0,
            }],
            coord_host: "localhost".into(),
            coord_port: 7779,
            ckpt_dir: ".".into(),
            tree: Default::default(),
            cpu_flags: Vec::new(),
            vdso_syms: Vec::new(),
            sources: Vec::new(),
            since_full: 0,
            lazy_protocol: LAZY_PROTOCOL,
        }
    }

    /// Build a small valid image: one raw chunk and one zstd chunk.
    fn build(dir: &Path) -> PathBuf {
        let raw = vec![7u8; 4096];
        let big = vec![3u8; 8192];
        let z = zstd::bulk::compress(&big, 1).unwrap();
        let mut data = vec![0u8; 4096];
        data.extend_from_slice(&raw);
        let zoff = data.len() as u64;
        data.extend_from_slice(&z);
        while !data.len().is_multiple_of(4096) {
            data.push(0);
        }
        let chunks = [
            ChunkDesc {
                addr: 4096,
                len: 4096,
                file_off: 4096,
                stored_len: 4096,
                crc: crc32fast::hash(&raw),
                flags: 0,
            },
            ChunkDesc {
                addr: 8192,
                len: 8192,
                file_off: zoff,
                stored_len: z.len() as u64,
                crc: crc32fast::hash(&z),
                flags: CHUNK_ZSTD,
            },
        ];
        let index = encode_index(&meta(), &chunks);
        seal_into(data, &index, 0, &dir.join("ckpt_t_u.dmtcp"))
    }

    /// `data` (header block and chunks) with `index` appended and the
    /// header filled in, written to `p`.
    fn seal_into(mut data: Vec<u8>, index: &[u8], flags: u32, p: &Path) -> PathBuf {
        let index_offset = data.len() as u64;
        data.extend_from_slice(index);
        let h = Header {
            flags,
            index_offset,
            index_len: index.len() as u64,
            index_crc: crc32fast::hash(index),
            file_len: data.len() as u64,
            ..Default::default()
        };
        data[..4096].copy_from_slice(&h.encode());
        std::fs::File::create(p).unwrap().write_all(&data).unwrap();
        p.to_path_buf()
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("dmtcp-image-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = tmpdir("rt");
        let p = build(&d);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.chunks.len(), 2);
        let (mut out, mut s) = (Vec::new(), Vec::new());
        img.read_chunk(&img.chunks[1], &mut out, &mut s).unwrap();
        assert_eq!(out, vec![3u8; 8192]);
        img.verify_all().unwrap();
    }

    #[test]
    fn detects_damage() {
        let d = tmpdir("dmg");
        let p = build(&d);
        let good = std::fs::read(&p).unwrap();

        std::fs::write(&p, &good[..good.len() - 10]).unwrap();
        assert!(
            matches!(Image::open(&p), Err(ImageError::Truncated { .. })),
            "truncated"
        );

        let mut bad = good.clone();
        bad[4096 + 100] ^= 0xff;
        std::fs::write(&p, &bad).unwrap();
        let img = Image::open(&p).unwrap();
        let e = img.verify_all().unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");

        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x55;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(Image::open(&p), Err(ImageError::Corrupt { .. })));

        std::fs::write(&p, b"#!/bin/sh\necho hello\n").unwrap();
        assert!(matches!(
            Image::open(&p),
            Err(ImageError::NotAnImage { .. })
        ));

        let mut bad = good.clone();
        bad[9] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(Image::open(&p), Err(ImageError::Corrupt { .. })));
    }

    /// An incremental image in `top/dmtcp_gen_c_2/` whose chunk at 4096
    /// is kept in `top/dmtcp_gen_c_1/` (a full image made by `build`), and
    /// one page of its own at 16384.
    fn build_incremental(top: &Path) -> (PathBuf, PathBuf) {
        let (g1, g2) = (top.join("dmtcp_gen_c_1"), top.join("dmtcp_gen_c_2"));
        std::fs::create_dir_all(&g1).unwrap();
        std::fs::create_dir_all(&g2).unwrap();
        let first = build(&g1);
        let a = Image::open(&first).unwrap();
        let own = vec![9u8; 4096];
        let mut data = vec![0u8; 4096];
        data.extend_from_slice(&own);
        let mut m = meta();
        m.generation = 2;
        m.since_full = 1;
        m.sources = vec![Source {
            name: "dmtcp_gen_c_1/ckpt_t_u.dmtcp".into(),
            generation: 1,
            file_len: a.header.file_len,
            header_crc: a.header.header_crc,
        }];
        let mut kept = a.chunks[0];
        kept.flags |= 1 << CHUNK_SRC_SHIFT;
        let chunks = [
            kept,
            ChunkDesc {
                addr: 16384,
                len: 4096,
                file_off: 4096,
                stored_len: 4096,
                crc: crc32fast::hash(&own),
                flags: 0,
            },
        ];
        let index = encode_index_hashed(&m, &chunks, &[1, 2]);
        let p = seal_into(data, &index, HDR_HASHES, &g2.join("ckpt_t_u.dmtcp"));
        (first, p)
    }

    /// A source held in the referring image's generation directory (as the
    /// coordinator links it) is the one taken, before the one in its own
    /// generation's directory; it keeps that directory from nothing
    /// (`generation::referenced`), and with that directory gone the image
    /// opens, by its own name and by a top-level one.
    #[test]
    fn a_source_held_in_the_generation_directory_is_found_first() {
        use crate::generation::referenced;
        let d = tmpdir("incr-held");
        let (first, second) = build_incremental(&d);
        let (g1, g2) = (d.join("dmtcp_gen_c_1"), d.join("dmtcp_gen_c_2"));
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            referenced([g2.as_path()].into_iter()),
            set(&["dmtcp_gen_c_1"])
        );
        let held = g2.join("dmtcp_gen_c_1/ckpt_t_u.dmtcp");
        std::fs::create_dir(held.parent().unwrap()).unwrap();
        std::fs::hard_link(&first, &held).unwrap();
        assert_eq!(referenced([g2.as_path()].into_iter()), set(&[]));
        // Generation 1's own file replaced by another: the held one is taken.
        std::fs::remove_file(&first).unwrap();
        std::fs::write(&first, b"not this one").unwrap();
        let img = Image::open(&second).unwrap();
        assert_eq!(img.sources[0].path, held);
        img.verify_all().unwrap();
        std::fs::hard_link(&second, d.join("ckpt_t_u.dmtcp")).unwrap();
        std::fs::remove_dir_all(&g1).unwrap();
        Image::open(&second).unwrap().verify_all().unwrap();
        let top = Image::open(&d.join("ckpt_t_u.dmtcp")).unwrap();
        assert_eq!(
            top.sources[0].path,
            d.join("dmtcp_gen_c_2").join("dmtcp_gen_c_1/ckpt_t_u.dmtcp")
        );
        top.verify_all().unwrap();
        // A held file of another length does not count as held.
        std::fs::remove_file(&held).unwrap();
        std::fs::write(&held, b"short").unwrap();
        assert_eq!(
            referenced([g2.as_path()].into_iter()),
            set(&["dmtcp_gen_c_1"])
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn incremental_images_read_their_sources_and_refuse_bad_ones() {
        let d = tmpdir("incr");
        let (first, second) = build_incremental(&d);
        let img = Image::open(&second).unwrap();
        assert_eq!(img.hashes, vec![1, 2]);
        assert_eq!(img.sources.len(), 1);
        let (mut out, mut s) = (Vec::new(), Vec::new());
        img.read_chunk(&img.chunks[0], &mut out, &mut s).unwrap();
        assert_eq!(out, vec![7u8; 4096], "the bytes of the earlier image");
        img.read_chunk(&img.chunks[1], &mut out, &mut s).unwrap();
        assert_eq!(out, vec![9u8; 4096]);
        // A top-level name (a link at the checkpoint directory's top)
        // finds the source below its own directory; a moved directory too.
        std::fs::hard_link(&second, d.join("ckpt_t_u.dmtcp")).unwrap();
        Image::open(&d.join("ckpt_t_u.dmtcp"))
            .unwrap()
            .verify_all()
            .unwrap();
        let moved = tmpdir("incr-moved");
        std::fs::remove_dir_all(&moved).unwrap();
        std::fs::rename(&d, &moved).unwrap();
        let second = moved.join("dmtcp_gen_c_2/ckpt_t_u.dmtcp");
        let first = moved.join(first.strip_prefix(&d).unwrap());
        Image::open(&second).unwrap().verify_all().unwrap();
        let good = std::fs::read(&first).unwrap();
        let msg = |p: &Path| Image::open(p).err().expect("opened").to_string();
        std::fs::remove_file(&first).unwrap();
        let e = msg(&second);
        assert!(
            e.contains("is missing") && e.contains("1 chunks of its memory"),
            "{e}"
        );
        // Another image in its place (same size, other header).
        let mut other = good.clone();
        other[HINT_OFFSET] ^= 1;
        other[12] ^= 1;
        reseal(&mut other);
        std::fs::write(&first, &other).unwrap();
        assert!(
            msg(&second).contains("is another image"),
            "{}",
            msg(&second)
        );
        std::fs::write(&first, &good[..good.len() - 1]).unwrap();
        assert!(msg(&second).contains("truncated"), "{}", msg(&second));
        // The referenced chunk damaged: found by its CRC when read.
        let mut bad = good.clone();
        bad[4096 + 10] ^= 0xff;
        std::fs::write(&first, &bad).unwrap();
        let e = Image::open(&second)
            .unwrap()
            .verify_all()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains("dmtcp_gen_c_1"),
            "{e}"
        );
        std::fs::write(&first, &good).unwrap();
        Image::open(&second).unwrap().verify_all().unwrap();
    }

    fn header_of(b: &[u8]) -> Header {
        pod_read(&b[..48]).unwrap()
    }

    /// Put a u64 at `off`, reseal, write to `p`, open.
    fn open_with(p: &Path, good: &[u8], off: usize, v: u64) -> Result<Image, ImageError> {
        let mut b = good.to_vec();
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        reseal(&mut b);
        std::fs::write(p, &b).unwrap();
        Image::open(p)
    }

    /// Offset in the file of chunk record `i`'s field at `field` (bytes).
    fn chunk_field(good: &[u8], i: usize, field: usize) -> usize {
        let h = header_of(good);
        let o = h.index_offset as usize;
        let meta_len = u64::from_le_bytes(good[o..o + 8].try_into().unwrap()) as usize;
        o + (16 + meta_len).div_ceil(8) * 8 + i * 40 + field
    }

    #[test]
    fn huge_chunk_lengths_are_refused() {
        let d = tmpdir("hugechunk");
        let p = build(&d);
        let good = std::fs::read(&p).unwrap();
        // Chunk 1 is zstd: its memory length is not tied to its stored bytes.
        for v in [1u64 << 62, !4095u64, MAX_CHUNK_LEN + 4096] {
            let e = open_with(&p, &good, chunk_field(&good, 1, 8), v)
                .err()
                .expect("a chunk length accepted");
            assert!(
                matches!(e, ImageError::Corrupt { .. }) && e.to_string().contains("chunk 1"),
                "{v:#x}: {e}"
            );
        }
        // Stored length and address near the top wrap no sum.
        let e = open_with(&p, &good, chunk_field(&good, 1, 24), u64::MAX)
            .err()
            .expect("stored length accepted");
        assert!(e.to_string().contains("chunk 1"), "{e}");
        let e = open_with(&p, &good, chunk_field(&good, 1, 0), !4095u64)
            .err()
            .expect("address accepted");
        assert!(e.to_string().contains("chunk 1"), "{e}");
        // A chunk handed to read_chunk directly is checked too.
        let img = Image::open(&{
            std::fs::write(&p, &good).unwrap();
            p.clone()
        })
        .unwrap();
        let mut c = img.chunks[1];
        c.len = 1 << 62;
        let e = img
            .read_chunk(&c, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn metadata_lengths_near_the_top_do_not_wrap() {
        let d = tmpdir("metalen");
        let p = build(&d);
        let good = std::fs::read(&p).unwrap();
        let at = header_of(&good).index_offset as usize;
        for v in [
            u64::MAX,
            u64::MAX - 16,
            u64::MAX - 18,
            u64::MAX - 20,
            u64::MAX - 23,
            u64::MAX - 1 - (1 << 20),
        ] {
            let e = open_with(&p, &good, at, v)
                .err()
                .expect("metadata length accepted");
            assert!(matches!(e, ImageError::Corrupt { .. }), "{v:#x}: {e}");
        }
        // A chunk count whose table would wrap.
        let e = open_with(&p, &good, at + 8, u64::MAX / 40 + 2)
            .err()
            .expect("chunk count accepted");
        assert!(matches!(e, ImageError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn an_index_larger_than_the_limit_is_refused_before_reading_it() {
        let d = tmpdir("bigindex");
        let p = build(&d);
        let mut b = std::fs::read(&p).unwrap();
        let mut h = header_of(&b);
        // A sparse file big enough to hold the claimed index.
        let big = MAX_INDEX_LEN + (1 << 20);
        h.index_offset = 4096;
        h.index_len = big;
        h.file_len = 4096 + big;
        b[..48].copy_from_slice(pod_bytes(&h));
        reseal(&mut b);
        std::fs::write(&p, &b).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096 + big)
            .unwrap();
        let e = Image::open(&p).err().expect("an oversized index accepted");
        assert!(e.to_string().contains("index of"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    /// Damage a good image at random (byte flips, lengths set to edge
    /// values, truncation), with its checksums recomputed so the damage
    /// reaches the parser: the reader must give an error or a valid image,
    /// never panic or allocate without bound.
    #[test]
    fn random_damage_gives_errors_not_panics() {
        let d = tmpdir("fuzz");
        let p = build(&d);
        let good = std::fs::read(&p).unwrap();
        let h = header_of(&good);
        let (io, il) = (h.index_offset as usize, h.index_len as usize);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let edges = [
            0u64,
            1,
            7,
            8,
            16,
            4095,
            4096,
            1 << 32,
            1 << 62,
            u64::MAX,
            u64::MAX - 7,
            u64::MAX - 16,
            u64::MAX - 23,
        ];
        let (mut opened, mut refused) = (0, 0);
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + rnd() % 3 {
                match rnd() % 4 {
                    // A byte of the header or the index.
                    0 => {
                        let at = if rnd() % 2 == 0 {
                            (rnd() % 48) as usize
                        } else {
                            io + (rnd() as usize) % il
                        };
                        b[at] ^= 1 << (rnd() % 8);
                    }
                    // A u64 of the header or the index set to an edge value.
                    1 | 2 => {
                        let at = if rnd() % 4 == 0 {
                            16 + 8 * (rnd() % 3) as usize
                        } else {
                            io + 8 * ((rnd() as usize) % (il / 8))
                        };
                        let v = edges[(rnd() as usize) % edges.len()];
                        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    }
                    // Any byte at all.
                    _ => {
                        let at = (rnd() as usize) % b.len();
                        b[at] = rnd() as u8;
                    }
                }
            }
            if rnd() % 8 == 0 {
                b.truncate((rnd() as usize) % b.len());
            }
            if rnd() % 8 != 0 {
                reseal(&mut b);
            }
            std::fs::write(&p, &b).unwrap();
            match Image::open(&p) {
                Ok(img) => {
                    opened += 1;
                    let _ = img.verify_all();
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > 1000 && opened > 0,
            "{refused} refused, {opened} opened"
        );
    }
}
