//! Raw Linux x86_64 system calls and the `#[repr(C)]` layouts shared by the
//! restorer (a `no_std` static program that runs with no libc at all) and the
//! preload library (which uses these calls while user threads are suspended,
//! where libc wrappers that might take locks must be avoided).
//!
//! This crate is one of the few places of the project that hold `unsafe`
//! code; every block carries a `SAFETY:` comment.
#![no_std]

pub mod nr;
pub mod restore;
pub mod syscall;
pub mod uffd;
pub mod vdso;

pub use syscall::*;

/// Size of a page on x86_64 Linux.
pub const PAGE_SIZE: usize = 4096;

/// The address range reserved at launch in every process for the restorer.
///
/// The preload library maps a `PROT_NONE` reservation here as soon as it is
/// loaded, so no mapping of the program can ever land in it; the checkpoint
/// skips it, and at restart the static restorer (linked at `RESTORER_BASE`)
/// runs inside it without colliding with any area of the image.
pub const RESTORER_BASE: usize = 0x5e00_0000_0000;
/// Size of the reserved restorer window (code, data, bss and its stack).
pub const RESTORER_SIZE: usize = 64 << 20;

/// Is `[start, end)` inside the restorer window?
pub const fn in_restorer_window(start: usize, end: usize) -> bool {
    start >= RESTORER_BASE && end <= RESTORER_BASE + RESTORER_SIZE
}
