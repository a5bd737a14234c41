//! userfaultfd(2): the calls and layouts a lazy restore of compressed
//! chunks uses. The restorer creates the descriptor and registers the
//! ranges still to be filled; the page server (`dmtcp_restart`'s streamer)
//! answers the faults and fills the rest in the background.

use crate::{is_err, nr, syscall3};

/// `userfaultfd(2)`.
pub const SYS_USERFAULTFD: usize = 323;
pub const UFFD_API: u64 = 0xaa;
/// The events the page server follows: a range moved (`mremap`), dropped
/// (`madvise(MADV_DONTNEED/REMOVE)`) or unmapped keeps the server's list of
/// pages still to fill in step with the process.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const FEATURES: u64 = FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;

pub const UFFDIO_API: usize = 0xc018_aa3f;
pub const UFFDIO_REGISTER: usize = 0xc020_aa00;
pub const UFFDIO_WAKE: usize = 0x8010_aa02;
pub const UFFDIO_COPY: usize = 0xc028_aa03;
pub const UFFDIO_ZEROPAGE: usize = 0xc020_aa04;
pub const REGISTER_MODE_MISSING: u64 = 1;

pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Api {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Register {
    pub range: Range,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Copy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Bytes copied, or a negative errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Zeropage {
    pub range: Range,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffd_msg`: the event, then (by event) the page fault's flags,
/// address; a remap's from, to, len; a remove's or unmap's start, end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Msg {
    pub event: u8,
    pub _r1: u8,
    pub _r2: u16,
    pub _r3: u32,
    pub arg: [u64; 3],
}

const _: () = {
    assert!(core::mem::size_of::<Api>() == 24);
    assert!(core::mem::size_of::<Register>() == 32);
    assert!(core::mem::size_of::<Copy>() == 40);
    assert!(core::mem::size_of::<Zeropage>() == 32);
    assert!(core::mem::size_of::<Msg>() == 32);
};

/// A new userfaultfd (close-on-exec, non-blocking) that handles faults of
/// the kernel too (no `UFFD_USER_MODE_ONLY`: a `read(2)` into a missing
/// page must wait for it, not fail with EFAULT), with [`FEATURES`]. The
/// fd, or a negative errno (EPERM: not allowed for this process).
pub fn open() -> isize {
    // SAFETY: userfaultfd takes flags only.
    let fd = unsafe { syscall3(SYS_USERFAULTFD, nr::O_CLOEXEC | nr::O_NONBLOCK, 0, 0) };
    if is_err(fd) {
        return fd;
    }
    let mut api = Api {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes our struct.
    let r = unsafe { syscall3(nr::IOCTL, fd as usize, UFFDIO_API, &mut api as *mut Api as usize) };
    if is_err(r) {
        // SAFETY: closing the fd made above.
        unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
        return r;
    }
    fd
}

/// Register `[start, start + len)` for missing-page faults; 0 or a negative errno.
pub fn register(fd: i32, start: u64, len: u64) -> isize {
    let mut reg = Register {
        range: Range { start, len },
        mode: REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes our struct.
    unsafe {
        syscall3(
            nr::IOCTL,
            fd as usize,
            UFFDIO_REGISTER,
            &mut reg as *mut Register as usize,
        )
    }
}
