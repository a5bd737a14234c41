//! Every system and FFI call of the plugin (the only module with `unsafe`
//! besides the exported `ioctl` in `wrap`): the real `ioctl` (the next one
//! after ours, libc's), the engine's public C interface (include/dmtcp.h,
//! found with `dlsym`), file descriptors, and the route netlink socket.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr, CString};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The address of `name` (`RTLD_NEXT` or `RTLD_DEFAULT`), cached in `slot`
/// (1 = looked up, not found).
fn lookup(slot: &AtomicUsize, next: bool, name: &CStr) -> usize {
    let v = slot.load(Ordering::Acquire);
    if v > 1 {
        return v;
    }
    if v == 1 {
        return 0;
    }
    let h = if next {
        libc::RTLD_NEXT
    } else {
        libc::RTLD_DEFAULT
    };
    // SAFETY: dlsym with a NUL-terminated name; the result is only cast to
    // the documented signature by the callers.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) } as usize;
    slot.store(if p == 0 { 1 } else { p }, Ordering::Release);
    p
}

type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int;

/// libc's `ioctl` (ours interposes it).
fn real_ioctl_fn() -> Option<IoctlFn> {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = lookup(&SLOT, true, c"ioctl");
    // SAFETY: libc's `int ioctl(int, unsigned long, ...)`; the one extra
    // argument is passed in a register like a fixed one on the 64-bit ABIs
    // Linux runs on.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, IoctlFn>(p) })
}

/// Resolves libc's `ioctl` now, at load time: the engine's own ioctl
/// calls reach our wrapper too, some while the program's threads are
/// suspended (draining sockets), where a first `dlsym` (locks, malloc)
/// must not happen.
pub(crate) fn init() {
    let _ = real_ioctl_fn();
}

/// The real ioctl with a raw argument (a value or a pointer, as `req` wants).
///
/// # Safety
/// `arg` must be what the kernel expects for `req` on `fd`.
pub(crate) unsafe fn real_ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    match real_ioctl_fn() {
        // SAFETY: forwarded as the caller guarantees.
        Some(f) => unsafe { f(fd, req, arg) },
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl whose argument is a value (TUNSETPERSIST, TUNSETOWNER, ...).
pub(crate) fn ioctl_val(fd: c_int, req: c_ulong, val: c_ulong) -> io::Result<c_int> {
    // SAFETY: the request takes its argument by value: nothing is read
    // or written through it.
    check(unsafe { real_ioctl(fd, req, val as *mut c_void) })
}

/// An ioctl that reads an `int` (TUNGETSNDBUF, ...).
pub(crate) fn ioctl_get_int(fd: c_int, req: c_ulong) -> io::Result<c_int> {
    let mut v: c_int = 0;
    // SAFETY: the kernel writes one int.
    check(unsafe { real_ioctl(fd, req, (&mut v as *mut c_int).cast()) })?;
    Ok(v)
}

/// An ioctl that takes a pointer to an `int` (TUNSETSNDBUF, ...).
pub(crate) fn ioctl_set_int(fd: c_int, req: c_ulong, v: c_int) -> io::Result<c_int> {
    let mut v = v;
    // SAFETY: the kernel reads (or writes) one int.
    check(unsafe { real_ioctl(fd, req, (&mut v as *mut c_int).cast()) })
}

/// An ioctl on a buffer the caller sized for the request (a `struct ifreq`,
/// a `struct tun_filter`).
pub(crate) fn ioctl_buf(fd: c_int, req: c_ulong, buf: &mut [u8]) -> io::Result<c_int> {
    // SAFETY: the buffer is as large as the request's structure (callers).
    check(unsafe { real_ioctl(fd, req, buf.as_mut_ptr().cast()) })
}

/// `struct ifreq`: 16 bytes of name, then a union of 24 (flags: a short).
pub(crate) const IFREQ_SIZE: usize = 40;
const _: () = assert!(std::mem::size_of::<libc::ifreq>() == IFREQ_SIZE);

/// An ifreq with `name` and `flags`.
pub(crate) fn ifreq(name: &str, flags: i16) -> [u8; IFREQ_SIZE] {
    let mut b = [0u8; IFREQ_SIZE];
    let n = name.len().min(libc::IFNAMSIZ - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b[16..18].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// Name and flags of an ifreq.
pub(crate) fn ifreq_parts(b: &[u8; IFREQ_SIZE]) -> (String, i16) {
    let end = b[..16].iter().position(|&c| c == 0).unwrap_or(16);
    (
        String::from_utf8_lossy(&b[..end]).into_owned(),
        i16::from_ne_bytes([b[16], b[17]]),
    )
}

/// `struct sock_fprog` of a classic BPF program (TUNATTACHFILTER): the
/// instructions are 8 bytes each.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const u8,
}
const _: () = assert!(std::mem::size_of::<SockFprog>() == std::mem::size_of::<libc::sock_fprog>());

/// The instructions of the sock_fprog at `arg` (TUNATTACHFILTER's argument).
///
/// # Safety
/// `arg` points to a readable `struct sock_fprog` whose `filter` holds
/// `len` instructions (what the kernel accepted).
pub(crate) unsafe fn read_fprog(arg: *const c_void) -> Vec<u8> {
    // SAFETY: as the caller guarantees.
    let p = unsafe { &*(arg as *const SockFprog) };
    if p.filter.is_null() {
        return Vec::new();
    }
    // SAFETY: len instructions of 8 bytes, accepted by the kernel.
    unsafe { std::slice::from_raw_parts(p.filter, p.len as usize * 8) }.to_vec()
}

/// TUNATTACHFILTER with the instructions `prog` (8 bytes each).
pub(crate) fn attach_fprog(fd: c_int, req: c_ulong, prog: &[u8]) -> io::Result<c_int> {
    let mut f = SockFprog {
        len: (prog.len() / 8) as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: a sock_fprog pointing at `prog`, alive for the call.
    check(unsafe { real_ioctl(fd, req, (&mut f as *mut SockFprog).cast()) })
}

/// Copies `len` bytes at `arg` (a structure the program passed to an
/// ioctl that the kernel accepted).
///
/// # Safety
/// `arg` points to `len` readable bytes.
pub(crate) unsafe fn read_bytes(arg: *const c_void, len: usize) -> Vec<u8> {
    // SAFETY: as the caller guarantees.
    unsafe { std::slice::from_raw_parts(arg as *const u8, len) }.to_vec()
}

/// Reads the `int` at `arg`.
///
/// # Safety
/// `arg` points to a readable int.
pub(crate) unsafe fn read_int(arg: *const c_void) -> c_int {
    // SAFETY: as the caller guarantees.
    unsafe { std::ptr::read_unaligned(arg as *const c_int) }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Opens /dev/net/tun (read-write, close-on-exec).
pub(crate) fn open_tun() -> io::Result<c_int> {
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
}

/// (status flags, fd flags) of `fd`.
pub(crate) fn fd_flags(fd: c_int) -> io::Result<(c_int, c_int)> {
    // SAFETY: fcntl queries on a number.
    let fl = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    let fdfl = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    Ok((fl, fdfl))
}

pub(crate) fn set_nonblock(fd: c_int) -> io::Result<()> {
    let (fl, _) = fd_flags(fd)?;
    // SAFETY: fcntl on our fd.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Puts `old` at number `new` (with close-on-exec as asked) and closes `old`.
pub(crate) fn move_fd(old: c_int, new: c_int, cloexec: bool) -> io::Result<()> {
    if old == new {
        return Ok(());
    }
    let fl = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 and close of fds this plugin owns (`new` is held by
    // /dev/null for us since the engine's restart).
    let r = check(unsafe { libc::dup3(old, new, fl) });
    // SAFETY: as above.
    unsafe { libc::close(old) };
    r.map(|_| ())
}

pub(crate) fn close(fd: c_int) {
    // SAFETY: closing an fd this plugin opened.
    unsafe { libc::close(fd) };
}

/// The interface index of `name` in this network namespace (0: none).
pub(crate) fn if_index(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else {
        return 0;
    };
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// The name of interface `index` in this network namespace.
pub(crate) fn if_name(index: u32) -> Option<String> {
    let mut b = [0 as c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, b.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(b.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Writes `b` to stderr.
pub(crate) fn write_err(b: &[u8]) {
    // SAFETY: writing a buffer to fd 2.
    unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}

/// Ends the process (a restart that cannot go on).
pub(crate) fn exit_group(code: c_int) -> ! {
    // SAFETY: exit_group does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code as libc::c_long) };
    // SAFETY: not reached; _exit as the last resort.
    unsafe { libc::_exit(code) }
}

// ---- The engine's public interface (include/dmtcp.h) --------------------

macro_rules! dmtcp_fn {
    ($name:ident($($a:ident: $t:ty),*) as $sym:literal) => {
        pub(crate) fn $name($($a: $t),*) -> Option<c_int> {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = lookup(&SLOT, false, $sym);
            if p == 0 {
                return None;
            }
            // SAFETY: the symbol is the include/dmtcp.h function of this signature.
            let f: unsafe extern "C" fn($($t),*) -> c_int = unsafe { std::mem::transmute(p) };
            // SAFETY: arguments as the C interface documents them.
            Some(unsafe { f($($a),*) })
        }
    };
}

dmtcp_fn!(claim_fd(fd: c_int) as c"dmtcp_claim_fd");
dmtcp_fn!(disable_ckpt() as c"dmtcp_disable_ckpt");
dmtcp_fn!(enable_ckpt() as c"dmtcp_enable_ckpt");

/// `dmtcp_register_plugin(&descriptor)`.
pub(crate) fn register_plugin(d: *const c_void) {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = lookup(&SLOT, false, c"dmtcp_register_plugin");
    if p == 0 {
        return;
    }
    // SAFETY: `void dmtcp_register_plugin(const DmtcpPluginDescriptor_t *)`.
    let f: unsafe extern "C" fn(*const c_void) = unsafe { std::mem::transmute(p) };
    // SAFETY: a static descriptor of the C layout.
    unsafe { f(d) };
}

// ---- Route netlink -------------------------------------------------------

/// A NETLINK_ROUTE socket (closed on drop).
pub(crate) struct Netlink(c_int);

impl Netlink {
    pub(crate) fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        Ok(Netlink(fd))
    }

    /// Sends one request (a whole netlink message) to the kernel.
    pub(crate) fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sending `msg` to the kernel address above.
        let r = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram (one or more messages) into `buf`.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: receiving into `buf`.
            let r = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(r as usize);
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        close(self.0);
    }
}
