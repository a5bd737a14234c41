//! `munmap`, `mremap` and `mmap(MAP_FIXED)`: memory a plugin or the
//! program asked to keep out of images (`dmtcp_exclude_memory`, a plugin's
//! skipped device memory) stays out only while it is mapped. Once the
//! program unmaps, moves or replaces it, the request ends there, so memory
//! mapped at the same address later is saved like any other.
//!
//! The bookkeeping is done only after the first such request, and only
//! when the call succeeded. A thread suspended between the call and the
//! bookkeeping leaves a request for memory that is no longer mapped, which
//! costs nothing (what is not mapped is not saved).

use core::ffi::{c_int, c_void};
use dmtcp_sys::{nr, syscall6};

/// `mmap` for the library's own memory, straight to the kernel (not
/// through the wrapper below, which the library's heap must not enter):
/// the address, or MAP_FAILED with errno set.
///
/// # Safety
/// The `mmap(2)` contract.
pub unsafe fn sys_mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller's mmap contract.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            addr as usize,
            len,
            prot as usize,
            flags as usize,
            fd as usize,
            off as usize,
        )
    };
    if dmtcp_sys::is_err(r) {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = -r as c_int };
        return libc::MAP_FAILED;
    }
    r as *mut c_void
}

/// `munmap` of the library's own memory, straight to the kernel.
///
/// # Safety
/// The `munmap(2)` contract: nothing still uses the memory.
pub unsafe fn sys_munmap(addr: *mut c_void, len: usize) {
    // SAFETY: the caller's munmap contract.
    unsafe { syscall6(nr::MUNMAP, addr as usize, len, 0, 0, 0, 0) };
}

type MunmapFn = unsafe extern "C" fn(*mut c_void, usize) -> c_int;
type MremapFn = unsafe extern "C" fn(*mut c_void, usize, usize, c_int, *mut c_void) -> *mut c_void;
type MmapFn =
    unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, libc::off_t) -> *mut c_void;

/// # Safety
/// The `munmap(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let next = super::iface::next_libc!(c"munmap", MunmapFn);
    // SAFETY: forwarded contract.
    let r = unsafe { next(addr, len) };
    if r == 0 {
        super::memory::forget_ranges(addr as u64, len as u64);
    }
    r
}

/// `mremap` is variadic in C (the fifth argument, the new address, is read
/// only with MREMAP_FIXED); on the Linux ABIs this library supports
/// (x86-64, AArch64) integer arguments of a variadic call are passed as in
/// a call with that many named ones, so the fifth is taken as named.
///
/// # Safety
/// The `mremap(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: usize,
    new_size: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let next = super::iface::next_libc!(c"mremap", MremapFn, libc::MAP_FAILED);
    // SAFETY: forwarded contract.
    let r = unsafe { next(old, old_size, new_size, flags, new_addr) };
    if r != libc::MAP_FAILED {
        if r == old {
            // Shrunk in place: the tail is gone.
            if new_size < old_size {
                super::memory::forget_ranges(
                    old as u64 + new_size as u64,
                    (old_size - new_size) as u64,
                );
            }
        } else {
            super::memory::forget_ranges(old as u64, old_size as u64);
            super::memory::forget_ranges(r as u64, new_size as u64);
        }
    }
    r
}

/// # Safety
/// The `mmap(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let next = super::iface::next_libc!(c"mmap", MmapFn, libc::MAP_FAILED);
    // SAFETY: forwarded contract.
    let r = unsafe { next(addr, len, prot, flags, fd, off) };
    if r != libc::MAP_FAILED && flags & libc::MAP_FIXED != 0 {
        super::memory::forget_ranges(r as u64, len as u64);
    }
    r
}
