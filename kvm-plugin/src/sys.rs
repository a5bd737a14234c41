//! What the plugin reaches at run time: the engine's public C interface
//! (`dmtcp_*` of the preloaded libdmtcp.so, through `dlsym`), the next
//! definitions of the libc functions it wraps (`dlsym(RTLD_NEXT)`), and raw
//! system calls for the checkpoint hooks, which must not allocate.

use core::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The address of `name` found with `handle` (RTLD_DEFAULT or RTLD_NEXT),
/// cached in `slot` (1: looked for, absent).
fn lookup(slot: &AtomicUsize, handle: *mut c_void, name: &CStr) -> usize {
    let v = slot.load(Ordering::Acquire);
    if v > 1 {
        return v;
    }
    if v == 1 {
        return 0;
    }
    // SAFETY: dlsym with a C string; the result is cast by the callers to
    // the function's documented signature.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) } as usize;
    slot.store(if p == 0 { 1 } else { p }, Ordering::Release);
    p
}

macro_rules! dmtcp_fn {
    ($name:ident($($a:ident: $t:ty),*) -> $r:ty as $sym:literal) => {
        fn $name($($a: $t),*) -> Option<$r> {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = lookup(&SLOT, libc::RTLD_DEFAULT, $sym);
            if p == 0 {
                return None;
            }
            // SAFETY: the symbol is the include/dmtcp.h function of this signature.
            let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { core::mem::transmute(p) };
            // SAFETY: arguments as the C interface documents them.
            Some(unsafe { f($($a),*) })
        }
    };
}

dmtcp_fn!(raw_register(d: *const crate::PluginDescriptor) -> () as c"dmtcp_register_plugin");
dmtcp_fn!(raw_claim(fd: c_int) -> c_int as c"dmtcp_claim_fd");
dmtcp_fn!(raw_release(fd: c_int) -> c_int as c"dmtcp_release_fd");
dmtcp_fn!(raw_disable() -> c_int as c"dmtcp_disable_ckpt");
dmtcp_fn!(raw_enable() -> c_int as c"dmtcp_enable_ckpt");
dmtcp_fn!(raw_exclude(a: *const c_void, l: usize, how: c_int) -> c_int as c"dmtcp_exclude_memory");
dmtcp_fn!(raw_fail(why: *const c_char) -> c_int as c"dmtcp_fail_checkpoint");

/// Register the plugin with the engine (false without one).
pub(crate) fn register(d: &'static crate::PluginDescriptor) -> bool {
    raw_register(d).is_some()
}

/// `dmtcp_claim_fd`: the engine leaves `fd` to us.
pub(crate) fn claim_fd(fd: c_int) {
    let _ = raw_claim(fd);
}

/// `dmtcp_release_fd`.
pub(crate) fn release_fd(fd: c_int) {
    let _ = raw_release(fd);
}

/// `DMTCP_MEM_ZERO` of include/dmtcp.h: kept out of images, but the range
/// stays mapped (zero-filled) after a restart until we map over it.
const MEM_ZERO: c_int = 2;

/// Keep `[addr, addr+len)` out of images, its addresses still held after a
/// restart (see [`MEM_ZERO`]).
pub(crate) fn exclude_memory(addr: usize, len: usize) {
    let _ = raw_exclude(addr as *const c_void, len, MEM_ZERO);
}

/// Fail this process's part of the checkpoint under way (pre-checkpoint
/// hook) with `why` (NUL-terminated).
pub(crate) fn fail_checkpoint(why: &[u8]) {
    let _ = raw_fail(why.as_ptr().cast());
}

/// Holds checkpoints off while the plugin records what a call did, so that
/// an image never shows a VM changed without the record of the change
/// (and no thread is ever suspended holding the plugin's lock).
pub(crate) struct NoCkpt(bool);

impl NoCkpt {
    #[inline]
    pub(crate) fn new() -> NoCkpt {
        NoCkpt(raw_disable().is_some())
    }
}

impl Drop for NoCkpt {
    #[inline]
    fn drop(&mut self) {
        if self.0 {
            let _ = raw_enable();
        }
    }
}

macro_rules! next_fn {
    ($name:ident: $sym:literal as $ty:ty) => {
        #[inline]
        pub(crate) fn $name() -> Option<$ty> {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = lookup(&SLOT, libc::RTLD_NEXT, $sym);
            // SAFETY: libc's function of that name has this C signature.
            (p != 0).then(|| unsafe { core::mem::transmute::<usize, $ty>(p) })
        }
    };
}

pub(crate) type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
pub(crate) type MmapFn =
    unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, libc::off_t) -> *mut c_void;
pub(crate) type MunmapFn = unsafe extern "C" fn(*mut c_void, usize) -> c_int;

next_fn!(next_ioctl: c"ioctl" as IoctlFn);
next_fn!(next_mmap: c"mmap" as MmapFn);
next_fn!(next_mmap64: c"mmap64" as MmapFn);
next_fn!(next_munmap: c"munmap" as MunmapFn);

/// ioctl(2) straight to the kernel: the plugin's own calls (never through
/// the wrappers). The result, or -errno.
#[inline]
pub(crate) fn ioctl(fd: c_int, req: u64, arg: usize) -> isize {
    // SAFETY: the caller passes an argument valid for `req`.
    let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, req as c_ulong, arg) };
    if r < 0 {
        -(errno() as isize)
    } else {
        r as isize
    }
}

/// ioctl with a pointer to `v`.
#[inline]
pub(crate) fn ioctl_ptr<T>(fd: c_int, req: u64, v: &mut T) -> isize {
    ioctl(fd, req, v as *mut T as usize)
}

pub(crate) fn errno() -> c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = e };
}

/// `mmap` straight to the kernel (the restart's MAP_FIXED of a vCPU's run
/// pages: not through the engine's wrapper, which would end the memory's
/// exclusion).
pub(crate) fn sys_mmap(addr: usize, len: usize, prot: c_int, flags: c_int, fd: c_int) -> isize {
    // SAFETY: the caller maps over memory that is ours (the reservation of
    // the old run pages).
    let r = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, 0usize) };
    if r == -1 {
        -(errno() as isize)
    } else {
        r as isize
    }
}

pub(crate) fn close(fd: c_int) {
    // SAFETY: closing an fd of ours.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Put `from` at number `to` (closing `from`), with close-on-exec as given.
pub(crate) fn move_fd(from: c_int, to: c_int, cloexec: bool) -> bool {
    if from == to {
        return true;
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 onto a number the engine holds with /dev/null for us.
    let r = unsafe { libc::syscall(libc::SYS_dup3, from, to, flags) };
    close(from);
    r >= 0
}

/// What fd `fd` leads to (`/proc/self/fd/<fd>`), into `buf`; its length.
/// No allocation (checkpoint hooks).
pub(crate) fn fd_target(fd: c_int, buf: &mut [u8; 256]) -> usize {
    let mut path = StackStr::<40>::new();
    let _ = core::fmt::Write::write_fmt(&mut path, format_args!("/proc/self/fd/{fd}\0"));
    // SAFETY: a NUL-terminated path; readlink fills at most buf.len() bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_readlink,
            path.as_bytes().as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        0
    } else {
        n as usize
    }
}

/// Is close-on-exec set on `fd`?
pub(crate) fn cloexec(fd: c_int) -> bool {
    // SAFETY: F_GETFD on a number.
    let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    r > 0 && r & libc::FD_CLOEXEC as i64 != 0
}

/// A string formatted on the stack (messages from the checkpoint hooks,
/// which must not allocate); longer text is cut.
pub(crate) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) const fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> core::fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = N.saturating_sub(self.len);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Write to stderr (a raw write: no lock, no allocation).
pub(crate) fn write_err(b: &[u8]) {
    // SAFETY: writing our buffer to fd 2.
    unsafe { libc::syscall(libc::SYS_write, 2, b.as_ptr(), b.len()) };
}

/// CLOCK_REALTIME in nanoseconds.
pub(crate) fn realtime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills our struct.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
