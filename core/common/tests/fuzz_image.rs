//! Property tests of the checkpoint image reader (Image::open, read_chunk)
//! on damaged images: a small valid image, made here with the crate's own
//! encoders, has bytes flipped, set, overwritten with garbage, inserted,
//! deleted or cut off, in the header, the data section, the index head,
//! the metadata and the chunk table; or its metadata replaced by JSON of
//! the wrong shape. Most cases have their CRCs recomputed afterwards (as a
//! crafted file would) so the damage reaches the parser.
//!
//! What must hold: no panic; memory within a few times the file's size
//! (plus the one chunk being decompressed, at most MAX_CHUNK_LEN); an
//! error names its place ("header: ", "index: ", "metadata: ", "chunk N",
//! or the file as a whole: not an image, truncated, another version); an
//! image that opens and verifies without its CRCs recomputed is the
//! original, and any chunk that verifies holds the original's bytes.
//! The corpus in tests/corpus/image is replayed with expected messages.
//! `DMTCP_FUZZ_CASES=n` sets the cases per property (bench/fuzz.sh).

mod support;

use dmtcp_common::image::{
    encode_index, reseal, Area, ChunkDesc, EvfdRec, FileRec, Header, Image, ImageError, Meta,
    PtyRec, SockRec, SockState, Tree, BLOCK, CHUNK_ZSTD, MAX_CHUNK_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn meta() -> Meta {
    let area = |start: u64, len: u64, path: &str| Area {
        start,
        len,
        offset: 0,
        prot: 3,
        kind: 0,
        flags: 0,
        path: path.into(),
        file_size: 0,
        shm: 0,
    };
    Meta {
        program: "fuzz".into(),
        argv: vec!["fuzz".into(), "--arg".into()],
        hostname: "host".into(),
        pid: 4242,
        uniq_id: "u-1".into(),
        comp_id: "c-1".into(),
        generation: 3,
        num_peers: 1,
        time: 1_700_000_000,
        dmtcp_version: "0.1.0".into(),
        entry: 0x7f00_0000_1000,
        entry_stack_top: 0x7f00_0010_0000,
        special: [(0x7fff_0000_0000, 8192), (0, 0), (0x7fff_0000_2000, 8192)],
        mm: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        areas: vec![
            area(0x10000, 0x10000, "[heap]"),
            area(0x40000, 0x20000, ""),
            area(0x7ffd_0000_0000, 0x21000, "[stack]"),
        ],
        coord_host: "localhost".into(),
        coord_port: 7779,
        ckpt_dir: "/tmp".into(),
        tree: Tree {
            ppid: 1,
            pgid: 4242,
            sid: 4242,
            tids: vec![4242, 4243],
            zombies: vec![(4250, 0)],
            pipes: vec![(3, 99, false), (4, 99, true)],
            socks: vec![SockRec {
                fd: 5,
                ino: 1234,
                domain: 1,
                stype: 2,
                state: SockState::Plain,
                local: vec![1, 0, 47, 116],
                dgrams: vec![(vec![1, 0], vec![104, 105])],
                ..Default::default()
            }],
            evfds: vec![EvfdRec {
                fd: 6,
                id: 7,
                count: 2,
                semaphore: false,
            }],
            files: vec![FileRec {
                fd: 7,
                key: "k".into(),
                path: "/tmp/f".into(),
                flags: 2,
                offset: 10,
            }],
            ptys: vec![PtyRec {
                fd: 8,
                key: "p".into(),
                master: true,
                termios: vec![0; 8],
                winsize: [24, 80, 0, 0],
                ..Default::default()
            }],
            ctty: Some("p".into()),
        },
        cpu_flags: vec!["sse2".into()],
        vdso_syms: vec![("__vdso_clock_gettime".into(), 0x800)],
        sources: Vec::new(),
        since_full: 0,
        lazy_protocol: 1,
    }
}

/// A small valid image and what it holds.
struct Sample {
    bytes: Vec<u8>,
    meta_json: Vec<u8>,
    /// Each chunk's record and memory contents.
    chunks: Vec<(ChunkDesc, Vec<u8>)>,
    index_offset: usize,
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Three raw chunks and two zstd ones (one compressible, one not).
fn sample() -> Sample {
    let runs: [(u64, Vec<u8>, bool); 5] = [
        (0x10000, pattern(4096, 1), false),
        (0x12000, vec![0x5a; 3 * 4096], true),
        (0x40000, pattern(8192, 2), false),
        (0x50000, pattern(4096, 3), true),
        (0x7ffd_0001_0000, pattern(4096, 4), false),
    ];
    let mut data = vec![0u8; BLOCK as usize];
    let mut chunks = Vec::new();
    for (addr, mem, z) in runs {
        let stored = if z {
            zstd::bulk::compress(&mem, 1).unwrap()
        } else {
            mem.clone()
        };
        let desc = ChunkDesc {
            addr,
            len: mem.len() as u64,
            file_off: data.len() as u64,
            stored_len: stored.len() as u64,
            crc: crc32fast::hash(&stored),
            flags: if z { CHUNK_ZSTD } else { 0 },
        };
        data.extend_from_slice(&stored);
        data.resize(data.len().next_multiple_of(BLOCK as usize), 0);
        chunks.push((desc, mem));
    }
    let m = meta();
    let descs: Vec<ChunkDesc> = chunks.iter().map(|c| c.0).collect();
    let index = encode_index(&m, &descs);
    let index_offset = data.len();
    data.extend_from_slice(&index);
    let h = Header {
        index_offset: index_offset as u64,
        index_len: index.len() as u64,
        index_crc: crc32fast::hash(&index),
        file_len: data.len() as u64,
        ..Default::default()
    };
    data[..BLOCK as usize].copy_from_slice(&h.encode());
    Sample {
        bytes: data,
        meta_json: serde_json::to_vec(&m).unwrap(),
        chunks,
        index_offset,
    }
}

/// Parts of the file an edit aims at.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// The 48 bytes of the header.
    Header,
    /// The rest of the header block (the hint, zeros): not checked.
    HeaderBlock,
    Data,
    IndexHead,
    Metadata,
    ChunkTable,
    Anywhere,
}

impl Region {
    fn range(self, s: &Sample) -> std::ops::Range<usize> {
        let io = s.index_offset;
        let meta_end = io + 16 + s.meta_json.len();
        let table = meta_end.next_multiple_of(8);
        match self {
            Region::Header => 0..48,
            Region::HeaderBlock => 48..BLOCK as usize,
            Region::Data => BLOCK as usize..io,
            Region::IndexHead => io..io + 16,
            Region::Metadata => io + 16..meta_end,
            Region::ChunkTable => table..s.bytes.len(),
            Region::Anywhere => 0..s.bytes.len(),
        }
    }
}

/// Values that make lengths and offsets interesting.
const EDGES: &[u64] = &[
    0,
    1,
    7,
    8,
    16,
    40,
    4095,
    4096,
    4097,
    8192,
    0x10000,
    MAX_CHUNK_LEN,
    MAX_CHUNK_LEN + 1,
    1 << 30,
    (1 << 30) + 1,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    u64::MAX - 4095,
    u64::MAX - 23,
    u64::MAX - 16,
    u64::MAX - 7,
    u64::MAX,
];

#[derive(Clone, Debug)]
enum Edit {
    Flip(Region, usize, u8),
    Set(Region, usize, u8),
    /// A u64 field (8-aligned in the header, the index head and the chunk
    /// table) set to an edge value or a nearby one.
    Word(Region, usize, u64),
    /// Bytes overwritten with garbage.
    Garbage(Region, usize, Vec<u8>),
    Insert(Region, usize, Vec<u8>),
    Delete(Region, usize, usize),
    Truncate(usize),
}

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        2 => Just(Region::Header),
        1 => Just(Region::HeaderBlock),
        2 => Just(Region::Data),
        2 => Just(Region::IndexHead),
        3 => Just(Region::Metadata),
        3 => Just(Region::ChunkTable),
        1 => Just(Region::Anywhere),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let word = prop_oneof![
        prop::sample::select(EDGES),
        (prop::sample::select(EDGES), -64i64..64).prop_map(|(v, d)| v.wrapping_add_signed(d)),
        any::<u64>(),
    ];
    let garbage = vec(any::<u8>(), 1..64);
    prop_oneof![
        3 => (region(), any::<usize>(), 0u8..8).prop_map(|(r, a, b)| Edit::Flip(r, a, b)),
        2 => (region(), any::<usize>(), any::<u8>()).prop_map(|(r, a, b)| Edit::Set(r, a, b)),
        4 => (prop_oneof![Just(Region::Header), Just(Region::IndexHead), Just(Region::ChunkTable)],
              any::<usize>(), word)
            .prop_map(|(r, a, v)| Edit::Word(r, a, v)),
        2 => (region(), any::<usize>(), garbage.clone()).prop_map(|(r, a, g)| Edit::Garbage(r, a, g)),
        1 => (region(), any::<usize>(), garbage).prop_map(|(r, a, g)| Edit::Insert(r, a, g)),
        1 => (region(), any::<usize>(), 1usize..64).prop_map(|(r, a, n)| Edit::Delete(r, a, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Apply `e` to `b` (edits whose place the file no longer has do nothing).
fn apply(s: &Sample, b: &mut Vec<u8>, e: &Edit) {
    let pick = |r: Region, a: usize, b: &[u8]| {
        let rg = r.range(s);
        let end = rg.end.min(b.len());
        (rg.start < end).then(|| rg.start + a % (end - rg.start))
    };
    match e {
        Edit::Flip(r, a, bit) => {
            if let Some(i) = pick(*r, *a, b) {
                b[i] ^= 1 << bit;
            }
        }
        Edit::Set(r, a, v) => {
            if let Some(i) = pick(*r, *a, b) {
                b[i] = *v;
            }
        }
        Edit::Word(r, a, v) => {
            let rg = r.range(s);
            // Fields are 8-aligned from the start of each of these regions
            // (the chunk table's records are 40 bytes: 5 words).
            let words = (rg.end.min(b.len()).saturating_sub(rg.start)) / 8;
            if words > 0 {
                let i = rg.start + 8 * (a % words);
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Edit::Garbage(r, a, g) => {
            if let Some(i) = pick(*r, *a, b) {
                let n = g.len().min(b.len() - i);
                b[i..i + n].copy_from_slice(&g[..n]);
            }
        }
        Edit::Insert(r, a, g) => {
            if let Some(i) = pick(*r, *a, b) {
                b.splice(i..i, g.iter().copied());
            }
        }
        Edit::Delete(r, a, n) => {
            if let Some(i) = pick(*r, *a, b) {
                b.drain(i..(i + n).min(b.len()));
            }
        }
        Edit::Truncate(a) => b.truncate(a % (b.len() + 1)),
    }
}

/// Does the message say where the image is wrong?
fn names_its_place(e: &ImageError) -> bool {
    match e {
        ImageError::NotAnImage { .. }
        | ImageError::NotAFile { .. }
        | ImageError::Version { .. }
        | ImageError::Truncated { .. }
        // (names the earlier image and what is wrong with it)
        | ImageError::Source { .. } => true,
        ImageError::Corrupt { what, .. } => ["header: ", "index: ", "metadata: ", "chunk "]
            .iter()
            .any(|p| what.starts_with(p)),
        ImageError::Io { .. } => false,
    }
}

/// What reading an image gave.
enum Outcome {
    Refused(String),
    /// Opened: the metadata as JSON, and each chunk's record with its
    /// contents or the error reading it.
    Opened(Vec<u8>, Vec<(ChunkDesc, Result<Vec<u8>, String>)>),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Outcome::Refused(m) => write!(f, "refused: {m}"),
            Outcome::Opened(json, chunks) => {
                write!(f, "opened, {} bytes of metadata", json.len())?;
                for (c, r) in chunks {
                    let r = r.as_ref().map(|m| m.len());
                    write!(f, "; {c:?}: {r:?}")?;
                }
                Ok(())
            }
        }
    }
}

/// Open `path` and read every chunk, checking the properties above;
/// `sealed_by_writer`: the CRCs are the writer's (not recomputed).
fn read_and_check(s: &Sample, path: &Path, sealed_by_writer: bool) -> Result<Outcome, String> {
    let file_len = std::fs::metadata(path).unwrap().len() as usize;
    let (outcome, peak) = support::peak_during(|| match Image::open(path) {
        Err(e) => {
            if !names_its_place(&e) {
                return Err(format!("an error that names no place: {e}"));
            }
            Ok((Outcome::Refused(e.to_string()), 0))
        }
        Ok(img) => {
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            let mut chunks = Vec::new();
            let mut largest = 0;
            for (i, c) in img.chunks.iter().enumerate() {
                largest = largest.max(c.len as usize);
                let r = img.read_chunk(c, &mut out, &mut scratch);
                if let Err(e) = &r {
                    let me = format!("chunk {i} of {}", img.chunks.len());
                    if !e.to_string().contains(&me) {
                        return Err(format!("chunk {i}'s error does not name it: {e}"));
                    }
                }
                chunks.push((*c, r.map(|_| out.clone()).map_err(|e| e.to_string())));
            }
            let json = serde_json::to_vec(&img.meta).unwrap();
            Ok((Outcome::Opened(json, chunks), largest))
        }
    });
    let (outcome, largest) = outcome?;
    // Everything the reader keeps comes from the file (the index once as
    // bytes, once parsed; a chunk stored and decompressed), and the output
    // copies above are as large as the memory they hold.
    let allowed = 6 * file_len + 3 * largest + (1 << 20);
    if peak > allowed {
        return Err(format!(
            "{peak} bytes allocated for a file of {file_len} (allowed {allowed}): {outcome:?}"
        ));
    }
    if let Outcome::Opened(json, chunks) = &outcome {
        assert!(largest as u64 <= MAX_CHUNK_LEN);
        for (c, r) in chunks {
            if let Ok(mem) = r {
                // Verified bytes are the original's (the CRC held) when the
                // record is the original's.
                if let Some((_, orig)) = s.chunks.iter().find(|(d, _)| d == c) {
                    if mem != orig {
                        return Err(format!("chunk at {:#x} verified with other bytes", c.addr));
                    }
                }
            }
        }
        if sealed_by_writer {
            // The header and index CRCs held: the metadata and the chunk
            // table are the original's (the chunks' own CRCs judged their
            // bytes above).
            if *json != s.meta_json {
                return Err("the metadata changed under the writer's CRC".into());
            }
            let descs: Vec<ChunkDesc> = chunks.iter().map(|c| c.0).collect();
            let orig: Vec<ChunkDesc> = s.chunks.iter().map(|c| c.0).collect();
            if descs != orig {
                return Err(format!(
                    "the chunk table changed under the writer's CRC: {descs:?}"
                ));
            }
        }
    }
    Ok(outcome)
}

fn scratch_file(name: &str) -> PathBuf {
    thread_local! {
        static DIR: PathBuf = support::scratch_dir("image");
    }
    DIR.with(|d| d.join(format!("{name}-{:?}.dmtcp", std::thread::current().id())))
}

/// A top-level field of the metadata, or one inside its arrays and
/// objects, by a walk of small numbers.
fn poke(v: &mut Value, walk: &[usize], new: Value) {
    let Some((&w, rest)) = walk.split_first() else {
        *v = new;
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(w % m.len()).unwrap().clone();
            poke(m.get_mut(&k).unwrap(), rest, new)
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            poke(&mut a[w % n], rest, new)
        }
        _ => *v = new,
    }
}

/// Mostly numbers (the metadata's fields are mostly numbers: a number
/// where one is expected reaches the reader's own checks), then any value.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => any::<i64>().prop_map(Value::from),
        6 => prop::sample::select(EDGES).prop_map(Value::from),
        2 => (prop::sample::select(EDGES), -8i64..8).prop_map(|(v, d)| Value::from(v.wrapping_add_signed(d))),
        1 => (0u64..=u32::MAX as u64).prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => Just(Value::from("Listen")),
    ];
    let any_value = leaf.clone().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    prop_oneof![3 => leaf, 1 => any_value]
}

/// The sample's index made again around `json` as its metadata (the
/// chunk table unchanged), resealed.
fn with_metadata(s: &Sample, json: &[u8]) -> Vec<u8> {
    let mut b = s.bytes[..s.index_offset].to_vec();
    let descs: Vec<ChunkDesc> = s.chunks.iter().map(|c| c.0).collect();
    let mut index = Vec::new();
    index.extend_from_slice(&(json.len() as u64).to_le_bytes());
    index.extend_from_slice(&(descs.len() as u64).to_le_bytes());
    index.extend_from_slice(json);
    index.resize(index.len().next_multiple_of(8), 0);
    let table = encode_index(&meta(), &descs);
    index.extend_from_slice(&table[table.len() - 40 * descs.len()..]);
    b.extend_from_slice(&index);
    b[24..32].copy_from_slice(&(index.len() as u64).to_le_bytes());
    let file_len = b.len() as u64;
    b[32..40].copy_from_slice(&file_len.to_le_bytes());
    reseal(&mut b);
    b
}

#[test]
fn the_sample_is_a_valid_image() {
    let s = sample();
    let p = scratch_file("sample");
    std::fs::write(&p, &s.bytes).unwrap();
    match read_and_check(&s, &p, true).unwrap() {
        Outcome::Opened(_, chunks) => assert_eq!(chunks.len(), 5),
        o => panic!("{o:?}"),
    }
    // And resealing it changes nothing.
    let mut b = s.bytes.clone();
    reseal(&mut b);
    assert_eq!(b, s.bytes);
}

proptest! {
    #![proptest_config(support::config(1000))]

    /// Bytes of every part changed, with or without the CRCs recomputed.
    #[test]
    fn damaged_images_are_refused_or_unchanged(
        edits in vec(edit(), 1..4),
        reseal_after in prop::bool::weighted(0.85),
    ) {
        let s = sample();
        let mut b = s.bytes.clone();
        for e in &edits {
            apply(&s, &mut b, e);
        }
        if reseal_after {
            reseal(&mut b);
        }
        let p = scratch_file("damaged");
        std::fs::write(&p, &b).unwrap();
        let sealed_by_writer = !reseal_after;
        let r = read_and_check(&s, &p, sealed_by_writer);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

proptest! {
    #![proptest_config(support::config(500))]

    /// The metadata replaced by JSON of the wrong shape (a field, or a value
    /// deep inside one, set to any JSON value; or any JSON value at all),
    /// with a valid index and header around it.
    #[test]
    fn metadata_of_the_wrong_shape_is_refused(
        walk in vec(any::<usize>(), 1..4),
        new in json_value(),
        whole in prop::bool::weighted(0.1),
    ) {
        let s = sample();
        let json = if whole {
            serde_json::to_vec(&new).unwrap()
        } else {
            let mut v: Value = serde_json::from_slice(&s.meta_json).unwrap();
            poke(&mut v, &walk, new);
            serde_json::to_vec(&v).unwrap()
        };
        let p = scratch_file("meta");
        std::fs::write(&p, with_metadata(&s, &json)).unwrap();
        match read_and_check(&s, &p, false) {
            Ok(Outcome::Refused(m)) => prop_assert!(m.contains("metadata: "), "{m}"),
            Ok(Outcome::Opened(..)) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

/// Files that are not images: a FIFO (which would block an open for
/// reading until a writer came), a directory, /dev/null, /dev/zero.
#[test]
fn things_that_are_not_files_are_refused_at_once() {
    let dir = support::scratch_dir("notfiles");
    let fifo = dir.join("fifo.dmtcp");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let paths = [fifo, dir.clone(), "/dev/null".into(), "/dev/zero".into()];
    std::thread::spawn(move || {
        for p in paths {
            let r = Image::open(&p).map(|_| ()).map_err(|e| e.to_string());
            tx.send((p, r)).unwrap();
        }
    });
    for _ in 0..4 {
        let (p, r) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("Image::open hung");
        let e = r.expect_err("opened");
        assert!(
            e.contains("not a DMTCP-rs checkpoint image"),
            "{}: {e}",
            p.display()
        );
    }
}

/// tests/corpus/image: every file is listed in its `expect` file with the
/// message it must give ("OK" for an image that opens and verifies).
#[test]
fn the_image_corpus_gives_the_expected_messages() {
    let s = sample();
    for (p, want) in support::corpus("image") {
        let name = p.file_name().unwrap().to_string_lossy();
        let outcome = read_and_check(&s, &p, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        match outcome {
            Outcome::Opened(_, chunks) => {
                let bad: Vec<&String> = chunks.iter().filter_map(|c| c.1.as_ref().err()).collect();
                if want == "OK" {
                    assert!(bad.is_empty(), "{name}: {bad:?}");
                } else {
                    assert!(
                        bad.iter().any(|m| m.contains(&want)),
                        "{name}: want {want:?}, chunks gave {bad:?}"
                    );
                }
            }
            Outcome::Refused(m) => {
                assert!(
                    want != "OK" && m.contains(&want),
                    "{name}: want {want:?}, got {m}"
                );
            }
        }
    }
}

/// Write the corpus's seeds again (`cargo test --test fuzz_image -- --ignored
/// write_image_corpus`): the sample and one damage per place. Crashers
/// found by the long runs are added by hand, with their expected message.
#[test]
#[ignore]
fn write_image_corpus() {
    let s = sample();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/image");
    std::fs::create_dir_all(&dir).unwrap();
    let io = s.index_offset;
    let table = (io + 16 + s.meta_json.len()).next_multiple_of(8);
    let with = |f: &dyn Fn(&mut Vec<u8>), seal: bool| {
        let mut b = s.bytes.clone();
        f(&mut b);
        if seal {
            reseal(&mut b);
        }
        b
    };
    let set =
        |at: usize, v: u64| move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("valid.dmtcp", s.bytes.clone()),
        ("hint-changed.dmtcp", with(&|b| b[300] ^= 0x20, false)),
        ("header-flipped.dmtcp", with(&|b| b[20] ^= 1, false)),
        (
            "header-index-past-end.dmtcp",
            with(&set(16, u64::MAX - 7), true),
        ),
        ("index-flipped.dmtcp", with(&|b| b[io + 30] ^= 4, false)),
        ("meta-len-wraps.dmtcp", with(&set(io, u64::MAX - 7), true)),
        (
            "chunk-count-wraps.dmtcp",
            with(&set(io + 8, u64::MAX / 40 + 2), true),
        ),
        ("meta-not-json.dmtcp", with(&|b| b[io + 16] = b'x', true)),
        (
            "chunk2-huge-len.dmtcp",
            with(&set(table + 2 * 40 + 8, 1 << 62), true),
        ),
        (
            "chunk3-zstd-len-lies.dmtcp",
            with(&set(table + 3 * 40 + 8, 8192), true),
        ),
        (
            "chunk1-data-flipped.dmtcp",
            with(&|b| b[s.chunks[1].0.file_off as usize + 3] ^= 0x80, false),
        ),
        ("truncated.dmtcp", s.bytes[..s.bytes.len() - 100].to_vec()),
        ("short-header.dmtcp", s.bytes[..20].to_vec()),
        ("empty.dmtcp", Vec::new()),
    ];
    for (n, b) in cases {
        std::fs::write(dir.join(n), b).unwrap();
    }
}
