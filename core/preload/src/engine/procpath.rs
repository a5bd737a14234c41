//! /proc paths with the ids the program knows. After a restart without a
//! pid namespace the program still names its processes and threads by
//! their old ids (see `vpid`); `/proc/<pid>/...` and
//! `/proc/<pid>/task/<tid>/...` are rewritten to the real ids before the
//! file calls below reach libc. Nothing is done (one load) while the id
//! table is empty, which is always the case in a pid namespace.
//!
//! The rewrite uses a buffer on the stack: no allocation, no lock.

use core::ffi::{c_char, c_int, CStr};

/// Longest path rewritten (longer ones go through unchanged).
const MAX: usize = 4096;

/// Parse a decimal id at the start of `b`: (value, digits).
fn id_at(b: &[u8]) -> Option<(i32, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 9 || b.get(n).is_some_and(|&c| c != b'/') {
        return None;
    }
    let mut v = 0i32;
    for &c in &b[..n] {
        v = v * 10 + (c - b'0') as i32;
    }
    Some((v, n))
}

/// `path` with the process (and thread) id after /proc/ made real, in
/// `buf` (NUL-terminated); `None` when nothing changes.
fn rewrite(path: &[u8], buf: &mut [u8; MAX], to_real: impl Fn(i32) -> i32) -> Option<usize> {
    let rest = path.strip_prefix(b"/proc/")?;
    let (pid, n) = id_at(rest)?;
    let real = to_real(pid);
    let mut tid_at = None;
    let after = &rest[n..];
    if let Some(t) = after.strip_prefix(b"/task/") {
        if let Some((tid, m)) = id_at(t) {
            tid_at = Some((tid, m));
        }
    }
    let rtid = tid_at.map(|(t, _)| to_real(t));
    if real == pid && rtid.is_none_or(|r| Some(r) == tid_at.map(|(t, _)| t)) {
        return None;
    }
    let mut out = Out { buf, len: 0 };
    out.put(b"/proc/")?;
    out.num(real)?;
    let mut tail = after;
    if let (Some((_, m)), Some(r)) = (tid_at, rtid) {
        out.put(b"/task/")?;
        out.num(r)?;
        tail = &after[6 + m..];
    }
    out.put(tail)?;
    out.put(b"\0")?;
    Some(out.len)
}

struct Out<'a> {
    buf: &'a mut [u8; MAX],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.len.checked_add(b.len()).filter(|&e| e <= MAX)?;
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Some(())
    }
    fn num(&mut self, v: i32) -> Option<()> {
        let mut d = [0u8; 12];
        let mut i = d.len();
        let mut v = v.max(0) as u32;
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&d[i..])
    }
}

/// Call `f` with `path`, rewritten if it names an id the program knows
/// under another real one.
fn with_real<R>(path: *const c_char, f: impl FnOnce(*const c_char) -> R) -> R {
    if path.is_null() || !super::vpid::active() {
        return f(path);
    }
    // SAFETY: a non-null path argument is a NUL-terminated string (the
    // contract of every call wrapped here).
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if !p.starts_with(b"/proc/") || p.len() >= MAX {
        return f(path);
    }
    let mut buf = [0u8; MAX];
    match rewrite(p, &mut buf, super::vpid::to_real) {
        Some(_) => f(buf.as_ptr() as *const c_char),
        None => f(path),
    }
}

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, libc::mode_t) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;
type OpendirFn = unsafe extern "C" fn(*const c_char) -> *mut libc::DIR;
type ReadlinkFn = unsafe extern "C" fn(*const c_char, *mut c_char, libc::size_t) -> libc::ssize_t;
type AccessFn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type StatFn = unsafe extern "C" fn(*const c_char, *mut libc::stat64) -> c_int;
type XstatFn = unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat64) -> c_int;

/// Wrappers of `open`-like calls: `$name(path, flags, mode)`. The mode is
/// declared although the C function is variadic: on x86_64 it arrives in
/// the same register, and is passed on (the kernel reads it only with
/// O_CREAT or O_TMPFILE, when the caller gave it).
macro_rules! open_like {
    ($name:ident, $sym:literal) => {
        /// The libc call of the same name, /proc ids made real.
        ///
        /// # Safety
        /// The libc function's contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            path: *const c_char,
            flags: c_int,
            mode: libc::mode_t,
        ) -> c_int {
            let f = super::iface::next_libc!($sym, OpenFn);
            // SAFETY: forwarding the caller's arguments.
            with_real(path, |p| unsafe { f(p, flags, mode) })
        }
    };
}
open_like!(open, c"open");
open_like!(open64, c"open64");

macro_rules! openat_like {
    ($name:ident, $sym:literal) => {
        /// The libc call of the same name, /proc ids made real.
        ///
        /// # Safety
        /// The libc function's contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: libc::mode_t,
        ) -> c_int {
            let f = super::iface::next_libc!($sym, OpenatFn);
            // SAFETY: forwarding the caller's arguments.
            with_real(path, |p| unsafe { f(dirfd, p, flags, mode) })
        }
    };
}
openat_like!(openat, c"openat");
openat_like!(openat64, c"openat64");

macro_rules! one_path {
    ($name:ident, $sym:literal, $ty:ty, ($($arg:ident: $aty:ty),*), $ret:ty, $fail:expr) => {
        /// The libc call of the same name, /proc ids made real.
        ///
        /// # Safety
        /// The libc function's contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char $(, $arg: $aty)*) -> $ret {
            let f = super::iface::next_libc!($sym, $ty, $fail);
            // SAFETY: forwarding the caller's arguments.
            with_real(path, |p| unsafe { f(p $(, $arg)*) })
        }
    };
}
one_path!(fopen, c"fopen", FopenFn, (mode: *const c_char), *mut libc::FILE, core::ptr::null_mut());
one_path!(fopen64, c"fopen64", FopenFn, (mode: *const c_char), *mut libc::FILE, core::ptr::null_mut());
one_path!(
    opendir,
    c"opendir",
    OpendirFn,
    (),
    *mut libc::DIR,
    core::ptr::null_mut()
);
one_path!(readlink, c"readlink", ReadlinkFn, (buf: *mut c_char, size: libc::size_t), libc::ssize_t, -1);
one_path!(access, c"access", AccessFn, (mode: c_int), c_int, -1);
one_path!(stat, c"stat", StatFn, (st: *mut libc::stat64), c_int, -1);
one_path!(stat64, c"stat64", StatFn, (st: *mut libc::stat64), c_int, -1);
one_path!(lstat, c"lstat", StatFn, (st: *mut libc::stat64), c_int, -1);
one_path!(lstat64, c"lstat64", StatFn, (st: *mut libc::stat64), c_int, -1);

macro_rules! xstat_like {
    ($name:ident, $sym:literal) => {
        /// glibc's older stat entry point (programs built before 2.33),
        /// /proc ids made real.
        ///
        /// # Safety
        /// The libc function's contract.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            ver: c_int,
            path: *const c_char,
            st: *mut libc::stat64,
        ) -> c_int {
            let f = super::iface::next_libc!($sym, XstatFn);
            // SAFETY: forwarding the caller's arguments.
            with_real(path, |p| unsafe { f(ver, p, st) })
        }
    };
}
xstat_like!(__xstat, c"__xstat");
xstat_like!(__xstat64, c"__xstat64");
xstat_like!(__lxstat, c"__lxstat");
xstat_like!(__lxstat64, c"__lxstat64");

#[cfg(test)]
mod tests {
    use super::*;

    /// With the table (100 -> 5000, 101 -> 5001), not the process's own
    /// (other unit tests may set that one at the same time).
    fn rw(p: &str) -> Option<String> {
        let mut buf = [0u8; MAX];
        let table = |v: i32| match v {
            100 => 5000,
            101 => 5001,
            v => v,
        };
        rewrite(p.as_bytes(), &mut buf, table)
            .map(|n| String::from_utf8_lossy(&buf[..n - 1]).into_owned())
    }

    #[test]
    fn ids_after_proc_are_made_real() {
        assert_eq!(rw("/proc/100/status").as_deref(), Some("/proc/5000/status"));
        assert_eq!(rw("/proc/100").as_deref(), Some("/proc/5000"));
        assert_eq!(
            rw("/proc/100/task/101/comm").as_deref(),
            Some("/proc/5000/task/5001/comm")
        );
        assert_eq!(rw("/proc/7/task/101").as_deref(), Some("/proc/7/task/5001"));
        assert_eq!(rw("/proc/7/status"), None);
        assert_eq!(rw("/proc/self/status"), None);
        assert_eq!(rw("/proc/100x/status"), None);
        assert_eq!(rw("/proc/1000/status"), None);
        assert_eq!(rw("/procx/100"), None);
    }
}
