//! `libibverbs.so.1` for the software InfiniBand device.
//!
//! Programs built against rdma-core's libibverbs (Debian's `ibv_*_pingpong`,
//! perftest, OpenMPI's openib BTL) load this library instead when its
//! directory comes first in `LD_LIBRARY_PATH` (`softib exec` arranges it).
//! It exports rdma-core v44's symbols with their version nodes and presents
//! the devices of the node's softib service: every verb that creates or
//! changes device state is a request to the service over the context's
//! connection; posting sends and receives is one packet with no answer; the
//! service writes completions into a ring shared with the library, which
//! `ibv_poll_cq` reads without a system call.
//!
//! This crate is the C ABI boundary, so most of it is `unsafe`: it takes raw
//! pointers from C programs. The types come from the system's
//! `<infiniband/verbs.h>` (bindgen, with layout tests), the objects handed
//! out embed those structs first, so a pointer the program passes back leads
//! to the library's own data. Panics abort (the workspace builds with
//! `panic = "abort"`), so none can unwind into C.

#![allow(clippy::missing_safety_doc)]

mod ffi {
    #![allow(
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals,
        dead_code,
        unsafe_op_in_unsafe_fn
    )]
    #![allow(clippy::all, clippy::undocumented_unsafe_blocks)]
    include!(concat!(env!("OUT_DIR"), "/verbs.rs"));
}

mod conn;
mod exports;
mod strings;
mod verbs;

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets the calling thread's errno.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Writes one line to stderr (without Rust's stdout/stderr locks, which a
/// program forking or in a signal handler could hold).
pub(crate) fn warn(msg: &str) {
    let line = format!("softib: {msg}\n");
    // SAFETY: writes our own buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// Warns once per process about a verb the device does not implement.
pub(crate) fn unsupported(name: &str, once: &AtomicBool) {
    if !once.swap(true, Ordering::Relaxed) {
        warn(&format!("{name} is not supported by the software device"));
    }
}
