//! Pieces shared by the tools, the coordinator and the preload library:
//! the image format, the coordinator protocol, and DMTCP's environment names.

pub mod auth;
pub mod cpu;
pub mod env;
pub mod fdnums;
pub mod generation;
pub mod image;
pub mod log;
pub mod proto;
pub mod sock;

/// Version of this implementation, reported by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This machine's host name (from uname), or "localhost".
pub fn hostname() -> String {
    // SAFETY: uname fills the zero-initialised struct; nodename is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            let c = std::ffi::CStr::from_ptr(u.nodename.as_ptr());
            return c.to_string_lossy().into_owned();
        }
    }
    "localhost".into()
}
