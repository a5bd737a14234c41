//! Incremental images (docs/image-format.md, "Incremental images").
//!
//! With incremental images on, the writers cut memory into chunks on a
//! fixed grid ([`BLOCK`] bytes, aligned by address) and record the
//! xxh3-128 hash of each chunk's memory bytes in the image. At the next
//! checkpoint the previous generation's image is read back (before any
//! thread is suspended: this allocates) into a [`Prev`] table sorted by
//! address; a writer hashes each chunk again and, when the previous image
//! has a chunk of the same address and length with the same hash, stores
//! a reference to where those bytes physically are (that image, or one of
//! the earlier images it refers to itself) instead of the bytes. The
//! lookup is a binary search in the table: nothing is allocated while the
//! program is suspended.

use dmtcp_common::image::{self, Image, Source, CHUNK_SRC_SHIFT, HDR_HASHES, MAX_SOURCES};
use std::path::Path;

/// Grid of incremental chunks: 64 KiB (16 pages), aligned by address.
pub const BLOCK: u64 = 64 << 10;

/// A chunk of the previous image, as this image would refer to it.
#[derive(Clone, Copy, Debug)]
pub struct PrevChunk {
    pub addr: u64,
    pub len: u64,
    pub hash: u128,
    pub file_off: u64,
    pub stored_len: u64,
    pub crc: u32,
    /// Flags for this image: zstd bit as stored, source renumbered
    /// (1: the previous image; k > 1: its source k - 1).
    pub flags: u32,
}

/// What the previous generation's image offers this one.
pub struct Prev {
    /// Sorted by address.
    pub chunks: Vec<PrevChunk>,
    /// Source list for this image before unused ones are dropped: the
    /// previous image, then its own sources.
    pub sources: Vec<Source>,
    /// `since_full` of an image that refers to any of these.
    pub since_full: u32,
    /// The previous image's generation.
    pub generation: u32,
}

impl Prev {
    /// The previous image's chunk at `addr` of `len` bytes, whatever its hash.
    pub fn at(chunks: &[PrevChunk], addr: u64, len: u64) -> Option<&PrevChunk> {
        let i = chunks.binary_search_by_key(&addr, |c| c.addr).ok()?;
        let c = &chunks[i];
        (c.len == len).then_some(c)
    }

    /// The previous image's chunk at `addr` of `len` bytes whose memory
    /// had hash `hash`.
    pub fn find(chunks: &[PrevChunk], addr: u64, len: u64, hash: u128) -> Option<&PrevChunk> {
        Prev::at(chunks, addr, len).filter(|c| c.hash == hash)
    }
}

/// Read the image `prev` (the previous committed generation's image of
/// this process, in `top`, the checkpoint directory the next image goes
/// to) into a table, or None if the next image is to be full: it is
/// missing (its round failed, or it was removed), not this process's,
/// has no hashes, or is the `full_every`-th.
pub fn load(prev: &Path, top: &Path, uniq_id: &str, full_every: u32) -> Option<Prev> {
    if full_every == 1 {
        return None;
    }
    let gen_dir = prev.parent()?;
    if gen_dir.parent()? != top {
        return None;
    }
    let img = Image::open_alone(prev).ok()?;
    if img.meta.uniq_id != uniq_id
        || img.header.flags & HDR_HASHES == 0
        || img.hashes.len() != img.chunks.len()
    {
        return None;
    }
    let since_full = img.meta.since_full + 1;
    if full_every > 0 && since_full >= full_every {
        return None;
    }
    if img.meta.sources.len() + 1 > MAX_SOURCES {
        return None;
    }
    let name = format!(
        "{}/{}",
        gen_dir.file_name()?.to_str()?,
        prev.file_name()?.to_str()?
    );
    let mut sources = vec![Source {
        name,
        generation: img.meta.generation,
        file_len: img.header.file_len,
        header_crc: img.header.header_crc,
    }];
    sources.extend(img.meta.sources.iter().cloned());
    let chunks = img
        .chunks
        .iter()
        .zip(&img.hashes)
        .map(|(c, &hash)| PrevChunk {
            addr: c.addr,
            len: c.len,
            hash,
            file_off: c.file_off,
            stored_len: c.stored_len,
            crc: c.crc,
            flags: (c.flags & ((1 << CHUNK_SRC_SHIFT) - 1))
                | ((c.source() as u32 + 1) << CHUNK_SRC_SHIFT),
        })
        .collect();
    Some(Prev {
        chunks,
        sources,
        since_full,
        generation: img.meta.generation,
    })
}

/// After the job: keep only the sources `chunks` use, renumbered in order,
/// and say how many images since the last full one this is.
pub fn finish(chunks: &mut [image::ChunkDesc], prev: Option<&Prev>) -> (Vec<Source>, u32) {
    let Some(prev) = prev else {
        return (Vec::new(), 0);
    };
    let mut map = vec![0u32; prev.sources.len() + 1];
    for c in chunks.iter() {
        if let Some(m) = map.get_mut(c.source()) {
            *m = 1;
        }
    }
    let mut used = Vec::new();
    for (k, m) in map.iter_mut().enumerate().skip(1) {
        if *m != 0 {
            used.push(prev.sources[k - 1].clone());
            *m = used.len() as u32;
        }
    }
    for c in chunks.iter_mut() {
        let k = c.source();
        if k > 0 {
            c.flags = (c.flags & ((1 << CHUNK_SRC_SHIFT) - 1)) | (map[k] << CHUNK_SRC_SHIFT);
        }
    }
    let since = if used.is_empty() { 0 } else { prev.since_full };
    (used, since)
}
