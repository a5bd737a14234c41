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
    open_with(0, FEATURES)
}

/// A new userfaultfd (close-on-exec, non-blocking, and `flags`) with
/// `features`, or a negative errno.
fn open_with(flags: usize, features: u64) -> isize {
    // SAFETY: userfaultfd takes flags only.
    let fd = unsafe {
        syscall3(
            SYS_USERFAULTFD,
            nr::O_CLOEXEC | nr::O_NONBLOCK | flags,
            0,
            0,
        )
    };
    if is_err(fd) {
        return fd;
    }
    let mut api = Api {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes our struct.
    let r = unsafe {
        syscall3(
            nr::IOCTL,
            fd as usize,
            UFFDIO_API,
            &mut api as *mut Api as usize,
        )
    };
    if is_err(r) {
        // SAFETY: closing the fd made above.
        unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
        return r;
    }
    fd
}

/// Register `[start, start + len)` for missing-page faults; 0 or a negative errno.
pub fn register(fd: i32, start: u64, len: u64) -> isize {
    register_mode(fd, start, len, REGISTER_MODE_MISSING)
}

fn register_mode(fd: i32, start: u64, len: u64, mode: u64) -> isize {
    let mut reg = Register {
        range: Range { start, len },
        mode,
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

// Write-protect tracking of written pages (the engine's dirty tracking,
// docs/storage.md): asynchronous write-protect faults, which the kernel
// resolves itself (no handler thread), read back with PAGEMAP_SCAN.

/// `userfaultfd(2)` flag: faults of user mode only (allowed without
/// privilege even with `vm.unprivileged_userfaultfd=0`; asynchronous
/// write-protect faults never reach a handler anyway).
pub const USER_MODE_ONLY: usize = 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: write-protecting a range marks its
/// unpopulated pages too (`PAGEMAP_SCAN` takes anonymous areas only
/// with it).
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: write-protect faults are resolved by the
/// kernel, which only clears the page's write-protect bit.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const REGISTER_MODE_WP: u64 = 2;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: usize = 0x8010_aa01;

/// `PAGEMAP_SCAN` on /proc/self/pagemap: `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: usize = 0xc060_6610;
/// Write-protect the pages that match (atomically with reporting them).
pub const PM_SCAN_WP_MATCHING: u64 = 1;
/// Fail (EPERM) on an area not registered for asynchronous write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 2;
/// Page category: in an area registered for asynchronous write-protect.
pub const PAGE_IS_WPALLOWED: u64 = 1;
/// Page category: written since it was last write-protected (or never
/// write-protected).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct page_region`: `[start, end)` of pages of the same categories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    /// Out: where the walk stopped (`end` when it went through).
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

const _: () = {
    assert!(core::mem::size_of::<PageRegion>() == 24);
    assert!(core::mem::size_of::<PmScanArg>() == 96);
    // The ioctl numbers carry the sizes of their structs.
    assert!((UFFDIO_UNREGISTER >> 16) & 0x3fff == core::mem::size_of::<Range>());
    assert!((PAGEMAP_SCAN >> 16) & 0x3fff == core::mem::size_of::<PmScanArg>());
};

/// A new userfaultfd for asynchronous write-protect tracking (user-mode
/// faults only, close-on-exec, non-blocking), or a negative errno (EPERM,
/// EINVAL: a kernel without these features).
pub fn open_wp_async() -> isize {
    open_with(USER_MODE_ONLY, FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED)
}

/// Register `[start, start + len)` for write-protect faults; 0 or a
/// negative errno (EBUSY: another userfaultfd has it).
pub fn register_wp(fd: i32, start: u64, len: u64) -> isize {
    register_mode(fd, start, len, REGISTER_MODE_WP)
}

/// Unregister `[start, start + len)`; 0 or a negative errno.
pub fn unregister(fd: i32, start: u64, len: u64) -> isize {
    let mut r = Range { start, len };
    // SAFETY: UFFDIO_UNREGISTER reads our struct.
    unsafe {
        syscall3(
            nr::IOCTL,
            fd as usize,
            UFFDIO_UNREGISTER,
            &mut r as *mut Range as usize,
        )
    }
}

/// `PAGEMAP_SCAN` on `pagemap_fd` (/proc/self/pagemap) with `arg`
/// (`size` is filled in): the number of regions written to `arg.vec`, or
/// a negative errno.
///
/// # Safety
/// `arg.vec` must be null with `arg.vec_len` 0, or point at `arg.vec_len`
/// writable [`PageRegion`]s.
pub unsafe fn pagemap_scan(pagemap_fd: i32, arg: &mut PmScanArg) -> isize {
    arg.size = core::mem::size_of::<PmScanArg>() as u64;
    // SAFETY: PAGEMAP_SCAN reads our struct, writes walk_end and at most
    // vec_len regions to vec (the caller's buffer of that length).
    unsafe {
        syscall3(
            nr::IOCTL,
            pagemap_fd as usize,
            PAGEMAP_SCAN,
            arg as *mut PmScanArg as usize,
        )
    }
}
