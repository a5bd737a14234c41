//! The completion ring a CQ's memfd holds, shared by the service (producer)
//! and the program (consumer): a header, then `capacity` entries laid out
//! as `struct ibv_wc`, so `ibv_poll_cq` copies entries out without a system
//! call. Indices only grow; entry `i` lives in slot `i % capacity`.
//!
//! This module maps and accesses shared memory, so it holds `unsafe` code.

use std::sync::atomic::{AtomicU64, Ordering};

/// One completion, laid out as `struct ibv_wc` (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wc {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub vendor_err: u32,
    pub byte_len: u32,
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: u32,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

const _: () = assert!(std::mem::size_of::<Wc>() == 48);

/// Header at the start of the ring. `head` is written by the consumer only,
/// `tail` by the producer only; they sit on separate cache lines.
#[repr(C)]
pub struct Header {
    pub head: AtomicU64,
    _pad0: [u64; 7],
    pub tail: AtomicU64,
    _pad1: [u64; 7],
    pub capacity: u64,
    /// Set by the producer when a completion found the ring full.
    pub overflowed: AtomicU64,
    _pad2: [u64; 6],
}

/// Bytes of the header; entries start there.
pub const HEADER_BYTES: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_BYTES == 192);

/// Bytes a ring of `capacity` entries needs.
pub fn bytes_for(capacity: u32) -> usize {
    HEADER_BYTES + capacity as usize * std::mem::size_of::<Wc>()
}

/// A mapped ring.
pub struct Ring {
    base: *mut u8,
    len: usize,
    capacity: u64,
}

// SAFETY: the ring is plain shared memory; every access goes through atomics
// (indices) or copies of whole entries ordered by those atomics, and each side
// has one writer per field (callers serialize producers and consumers).
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// Maps the ring held by `fd` (shared), `capacity` entries. With
    /// `init`, the header is written (the creator does this once).
    pub fn map(fd: i32, capacity: u32, init: bool) -> std::io::Result<Ring> {
        let len = bytes_for(capacity);
        // SAFETY: a fresh shared mapping of a file we were handed; the kernel
        // checks fd and length; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ring = Ring {
            base: p.cast(),
            len,
            capacity: capacity.max(1) as u64,
        };
        if init {
            // SAFETY: the mapping is at least HEADER_BYTES long and page
            // aligned; nobody else uses it yet.
            unsafe { (ring.base as *mut u64).add(16).write(ring.capacity) };
        } else if ring.header().capacity != ring.capacity {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(ring)
    }

    fn header(&self) -> &Header {
        // SAFETY: base is page aligned and the mapping holds a Header; its
        // shared fields are atomics.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot(&self, index: u64) -> *mut Wc {
        let i = (index % self.capacity) as usize;
        // SAFETY: i < capacity, so the slot lies inside the mapping.
        unsafe { self.base.add(HEADER_BYTES).cast::<Wc>().add(i) }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity as u32
    }

    /// Producer: appends `wc`; false (and `overflowed` set) when full.
    pub fn push(&self, wc: &Wc) -> bool {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        let head = h.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= self.capacity {
            h.overflowed.store(1, Ordering::Release);
            return false;
        }
        // SAFETY: the slot is inside the mapping and not visible to the
        // consumer until tail moves past it (Release below).
        unsafe { std::ptr::write_volatile(self.slot(tail), *wc) };
        h.tail.store(tail + 1, Ordering::Release);
        true
    }

    /// Producer: entries queued and not yet taken.
    pub fn len(&self) -> u64 {
        let h = self.header();
        h.tail
            .load(Ordering::Acquire)
            .wrapping_sub(h.head.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Consumer: copies up to `out.len()` entries out; returns how many.
    pub fn pop_into(&self, out: &mut [Wc]) -> usize {
        let h = self.header();
        let head = h.head.load(Ordering::Relaxed);
        let tail = h.tail.load(Ordering::Acquire);
        let n = (tail.wrapping_sub(head)).min(out.len() as u64) as usize;
        for (k, o) in out.iter_mut().take(n).enumerate() {
            // SAFETY: the slot is inside the mapping and was published by the
            // producer's Release store of tail, observed above.
            *o = unsafe { std::ptr::read_volatile(self.slot(head + k as u64)) };
        }
        h.head.store(head + n as u64, Ordering::Release);
        n
    }

    /// Consumer: whether the producer ever found the ring full.
    pub fn overflowed(&self) -> bool {
        self.header().overflowed.load(Ordering::Acquire) != 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_wrap_and_full() {
        let fd = crate::sys::memfd("t", bytes_for(3)).unwrap();
        let p = Ring::map(std::os::fd::AsRawFd::as_raw_fd(&fd), 3, true).unwrap();
        let c = Ring::map(std::os::fd::AsRawFd::as_raw_fd(&fd), 3, false).unwrap();
        let mut out = [Wc::default(); 8];
        for round in 0..5u64 {
            for k in 0..3 {
                assert!(p.push(&Wc {
                    wr_id: round * 10 + k,
                    ..Wc::default()
                }));
            }
            assert!(!p.push(&Wc::default()));
            assert_eq!(c.pop_into(&mut out[..2]), 2);
            assert_eq!(c.pop_into(&mut out[2..]), 1);
            assert_eq!(
                out[..3].iter().map(|w| w.wr_id).collect::<Vec<_>>(),
                vec![round * 10, round * 10 + 1, round * 10 + 2]
            );
        }
        assert!(c.overflowed());
        assert!(Ring::map(std::os::fd::AsRawFd::as_raw_fd(&fd), 4, false).is_err());
    }
}
