//! The system calls the relays make, wrapped once (every `unsafe` of the
//! binaries is here or in `capi`).
#![allow(dead_code)]

use std::io;
use std::os::fd::RawFd;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    check(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((p[0], p[1]))
}

pub fn close(fd: RawFd) {
    // SAFETY: closing an fd this program owns.
    unsafe { libc::close(fd) };
}

/// Put `fd` at number `to` (close-on-exec unless `inherit`).
pub fn dup2(fd: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup3/dup2 on fds this program owns.
    check(unsafe { libc::dup2(fd, to) })?;
    Ok(())
}

pub fn set_cloexec(fd: RawFd) {
    // SAFETY: setting a flag on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

pub fn set_nonblock(fd: RawFd, on: bool) {
    // SAFETY: reading and setting the status flags of our own fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let nf = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, nf);
        }
    }
}

/// If `fd` is a pipe, make it hold 1 MiB (fewer, larger transfers);
/// harmless otherwise.
pub fn grow_pipe(fd: RawFd) {
    // SAFETY: F_SETPIPE_SZ changes only the pipe's capacity; other fds refuse it.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Write all of `buf` to a (possibly non-blocking) fd, waiting when full.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = [libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                poll(&mut p, -1)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd for its length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    check(r).map(|n| n as usize)
}

/// A non-blocking, close-on-exec eventfd (to wake the relay's poll).
pub fn eventfd() -> io::Result<RawFd> {
    // SAFETY: creates a new fd.
    check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

/// Async-signal-safe: add one to an eventfd.
pub fn eventfd_poke(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

pub fn eventfd_clear(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a local.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: sending a signal changes no memory of ours.
    unsafe { libc::kill(pid, sig) };
}

/// Wait for child `pid`: Ok(Err(sig)) if a signal killed it, Ok(Ok(code)) if it exited.
pub fn wait_child(pid: i32, nohang: bool) -> io::Result<Option<Result<i32, i32>>> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        let r = unsafe { libc::waitpid(pid, &mut st, if nohang { libc::WNOHANG } else { 0 }) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if libc::WIFEXITED(st) {
            return Ok(Some(Ok(libc::WEXITSTATUS(st))));
        }
        if libc::WIFSIGNALED(st) {
            return Ok(Some(Err(libc::WTERMSIG(st))));
        }
    }
}

/// Handler for the signals a relay forwards: it records the signal and
/// pokes the wake fd (both async-signal-safe).
pub fn catch_signals(sigs: &[i32], handler: extern "C" fn(libc::c_int)) {
    for &s in sigs {
        // SAFETY: a zeroed sigaction with our handler; SA_RESTART so that
        // other calls are not interrupted.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
}

/// Die of signal `sig` as the default action would.
pub fn die_of(sig: i32) -> ! {
    // SAFETY: restoring the default action and raising the signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

pub fn ignore_sigpipe() {
    // SAFETY: ignoring SIGPIPE (write errors come back as EPIPE).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = name;
    let n = b.len().min(a.sun_path.len() - 1);
    for (i, &c) in b[..n].iter().enumerate() {
        a.sun_path[i + 1] = c as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + n;
    (a, len as libc::socklen_t)
}

/// A listening abstract unix socket `\0name` (close-on-exec).
pub fn listen_abstract(name: &[u8]) -> io::Result<RawFd> {
    // SAFETY: a new socket of our own.
    let fd =
        check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let (a, len) = abstract_addr(name);
    // SAFETY: `a` is a valid sockaddr_un of length `len`.
    let r = unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    // SAFETY: as above, on our socket.
    if r < 0 || unsafe { libc::listen(fd, 4) } < 0 {
        let e = io::Error::last_os_error();
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Connect to the abstract unix socket `\0name`.
pub fn connect_abstract(name: &[u8]) -> io::Result<RawFd> {
    // SAFETY: a new socket of our own.
    let fd =
        check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let (a, len) = abstract_addr(name);
    // SAFETY: `a` is a valid sockaddr_un of length `len`.
    if unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) } < 0 {
        let e = io::Error::last_os_error();
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

pub fn accept(fd: RawFd) -> io::Result<RawFd> {
    loop {
        // SAFETY: accept on our listening socket; no address wanted.
        let r = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

const PASSED: usize = 3;

/// Room for the control message carrying PASSED fds.
fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((PASSED * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// A message header over one byte (`iov`) and the control buffer `cbuf`.
fn fd_msg(iov: &mut libc::iovec, cbuf: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is valid, then filled.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len();
    msg
}

/// Send three fds over a unix socket (one byte of data with them).
pub fn send_fds(sock: RawFd, fds: [RawFd; PASSED]) -> io::Result<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = vec![0u8; cmsg_space()];
    let msg = fd_msg(&mut iov, &mut cbuf);
    // SAFETY: the control buffer holds one header with room for PASSED fds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((PASSED * std::mem::size_of::<RawFd>()) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), PASSED);
    }
    loop {
        // SAFETY: msg points at live buffers.
        let r = unsafe { libc::sendmsg(sock, &msg, 0) };
        match check_size(r as libc::ssize_t) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Receive the three fds `send_fds` sent (close-on-exec).
pub fn recv_fds(sock: RawFd) -> io::Result<[RawFd; PASSED]> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = vec![0u8; cmsg_space()];
    let mut msg = fd_msg(&mut iov, &mut cbuf);
    let n = loop {
        // SAFETY: msg points at live buffers.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check_size(r as libc::ssize_t) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    // SAFETY: reading the header the kernel filled, if any.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if n == 0
            || c.is_null()
            || (*c).cmsg_type != libc::SCM_RIGHTS
            || (*c).cmsg_len < libc::CMSG_LEN((PASSED * 4) as u32) as usize
        {
            return Err(io::Error::other("no fds received"));
        }
        let mut out = [0; PASSED];
        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c).cast::<RawFd>(), out.as_mut_ptr(), PASSED);
        Ok(out)
    }
}

/// This host's name into `b`; its length (no allocation).
pub fn hostname_into(b: &mut [u8]) -> usize {
    b.fill(0);
    // SAFETY: gethostname writes at most b.len() bytes.
    unsafe { libc::gethostname(b.as_mut_ptr().cast(), b.len()) };
    b.iter().position(|&c| c == 0).unwrap_or(b.len())
}

pub fn hostname() -> String {
    let mut b = [0u8; 256];
    let n = hostname_into(&mut b);
    String::from_utf8_lossy(&b[..n]).into_owned()
}

pub fn open_devnull() -> io::Result<RawFd> {
    // SAFETY: opening /dev/null (a C string literal).
    check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
}
