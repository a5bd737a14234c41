//! Making sockets again at restart: connected pairs of the kind a program
//! had (Unix socketpairs, TCP connections over loopback), listeners bound
//! to their old address, plain sockets. Used by `dmtcp_restart` (for the
//! sockets it hands to the processes of a job) and by the preload library
//! (for connections that led outside the job). All fds are close-on-exec.

use crate::image::{SockRec, SockState};
use std::io::Error;

fn close(fd: i32) {
    // SAFETY: closing an fd this module created.
    unsafe { libc::close(fd) };
}

/// A connected TCP pair over loopback: (connecting end, accepted end).
/// IPv6 uses ::1, or an IPv4-mapped address where ::1 is missing.
pub fn loopback_pair(domain: i32) -> std::io::Result<(i32, i32)> {
    let v6 = [
        std::net::Ipv6Addr::LOCALHOST,
        std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
    ];
    let tries = if domain == libc::AF_INET6 {
        &v6[..]
    } else {
        &v6[..1]
    };
    let mut last = Error::from_raw_os_error(libc::EINVAL);
    for ip6 in tries {
        // SAFETY: socket calls on fds of our own and a local address struct.
        unsafe {
            let mut ss: libc::sockaddr_storage = core::mem::zeroed();
            let len = if domain == libc::AF_INET {
                let a = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in;
                (*a).sin_family = libc::AF_INET as u16;
                (*a).sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
                core::mem::size_of::<libc::sockaddr_in>()
            } else {
                let a = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6;
                (*a).sin6_family = libc::AF_INET6 as u16;
                (*a).sin6_addr.s6_addr = ip6.octets();
                core::mem::size_of::<libc::sockaddr_in6>()
            } as libc::socklen_t;
            let sa = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr;
            let l = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if l < 0 {
                return Err(Error::last_os_error());
            }
            let mut alen = len;
            if libc::bind(l, sa, len) != 0
                || libc::listen(l, 1) != 0
                || libc::getsockname(l, sa, &mut alen) != 0
            {
                last = Error::last_os_error();
                close(l);
                continue;
            }
            let c = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if c < 0 || libc::connect(c, sa, alen) != 0 {
                last = Error::last_os_error();
                close(l);
                if c >= 0 {
                    close(c);
                }
                continue;
            }
            let a = libc::accept4(
                l,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            last = Error::last_os_error();
            close(l);
            if a < 0 {
                close(c);
                continue;
            }
            return Ok((c, a));
        }
    }
    Err(last)
}

/// A connected pair like the one `r` was an end of: (side 0, side 1).
pub fn pair(r: &SockRec) -> std::io::Result<(i32, i32)> {
    if r.domain == libc::AF_UNIX {
        let mut p = [-1i32; 2];
        // SAFETY: socketpair writes two fds into our array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                r.stype | libc::SOCK_CLOEXEC,
                0,
                p.as_mut_ptr(),
            )
        } != 0
        {
            return Err(Error::last_os_error());
        }
        return Ok((p[0], p[1]));
    }
    loopback_pair(r.domain)
}

fn addr_call(fd: i32, raw: &[u8], connect: bool) -> i32 {
    // SAFETY: a copy of a socket address the kernel gave us, in a buffer
    // large enough for any address.
    unsafe {
        let mut ss: libc::sockaddr_storage = core::mem::zeroed();
        let n = raw
            .len()
            .min(core::mem::size_of::<libc::sockaddr_storage>());
        core::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            &mut ss as *mut libc::sockaddr_storage as *mut u8,
            n,
        );
        let sa = &ss as *const libc::sockaddr_storage as *const libc::sockaddr;
        if connect {
            libc::connect(fd, sa, n as libc::socklen_t)
        } else {
            libc::bind(fd, sa, n as libc::socklen_t)
        }
    }
}

/// The file a Unix socket address names, if it is a path (not abstract).
fn unix_path(raw: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = raw.get(2..)?;
    if p.first().is_none_or(|&c| c == 0) {
        return None;
    }
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
        &p[..end],
    )))
}

/// Bind to the old address. A Unix path still there from the old run is a
/// stale socket file: it is removed first.
fn bind_again(fd: i32, r: &SockRec) -> Result<(), Error> {
    if addr_call(fd, &r.local, false) == 0 {
        return Ok(());
    }
    let e = Error::last_os_error();
    if r.domain == libc::AF_UNIX && e.raw_os_error() == Some(libc::ENOENT) {
        // Its directory is gone (a per-host temporary directory): make it
        // again, private to this user.
        if let Some(dir) = unix_path(&r.local)
            .as_deref()
            .and_then(std::path::Path::parent)
        {
            use std::os::unix::fs::DirBuilderExt;
            if std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .is_ok()
                && addr_call(fd, &r.local, false) == 0
            {
                return Ok(());
            }
        }
    }
    if r.domain == libc::AF_UNIX && e.raw_os_error() == Some(libc::EADDRINUSE) {
        if let Some(p) = unix_path(&r.local) {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&p);
                if addr_call(fd, &r.local, false) == 0 {
                    return Ok(());
                }
                return Err(Error::last_os_error());
            }
        }
    }
    Err(e)
}

/// A single socket for `r` (listening, bound or plain); problems binding
/// or listening are reported as warnings, the socket is made anyway.
pub fn single(r: &SockRec, warn: &mut dyn FnMut(String)) -> std::io::Result<i32> {
    // SAFETY: a new socket of the recorded kind.
    let fd = unsafe { libc::socket(r.domain, r.stype | libc::SOCK_CLOEXEC, r.protocol) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    let set = |level: i32, opt: i32, v: i32| {
        // SAFETY: setsockopt reads an int.
        unsafe { libc::setsockopt(fd, level, opt, &v as *const i32 as *const libc::c_void, 4) };
    };
    if r.domain == libc::AF_INET6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, r.v6only as i32);
    }
    if !r.local.is_empty() {
        if r.domain != libc::AF_UNIX {
            set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        }
        if let Err(e) = bind_again(fd, r) {
            warn(format!(
                "socket fd {}: cannot bind to its old address: {e}",
                r.fd
            ));
        }
    }
    if r.state == SockState::Listen {
        // SAFETY: listen on our socket.
        if unsafe { libc::listen(fd, libc::SOMAXCONN) } != 0 {
            warn(format!(
                "socket fd {}: cannot listen again: {}",
                r.fd,
                Error::last_os_error()
            ));
        }
    }
    Ok(fd)
}

/// Connect a datagram socket to its old peer (after every socket of the
/// job is bound again).
pub fn reconnect(fd: i32, r: &SockRec, warn: &mut dyn FnMut(String)) {
    if r.state == SockState::Plain
        && !r.peer.is_empty()
        && r.stype != libc::SOCK_STREAM
        && addr_call(fd, &r.peer, true) != 0
    {
        warn(format!(
            "socket fd {}: cannot connect to its old peer again: {}",
            r.fd,
            Error::last_os_error()
        ));
    }
}

/// Which made socket a record gets: the two ends of a pair by side, any
/// other socket by inode (so every process that shared it shares it again).
pub fn key(r: &SockRec) -> String {
    match r.state {
        SockState::Pair => format!("p:{}:{}", r.pair, r.side),
        _ => format!("i:{}", r.ino),
    }
}

/// Does `dmtcp_restart` make this record's socket? (Connections to the
/// outside are re-made by the process; stdio outside the job stays what
/// `dmtcp_restart` itself was given.)
pub fn made_by_restart(r: &SockRec) -> bool {
    r.state != SockState::Dead && (r.fd > 2 || r.state == SockState::Pair)
}

/// Send one datagram from `fd` to the raw address `dest` (empty: to the
/// connected peer), without blocking.
pub fn send_dgram(fd: i32, data: &[u8], dest: &[u8]) -> std::io::Result<()> {
    // SAFETY: a copy of a socket address the kernel gave us, in a buffer
    // large enough for any address; sending from our buffer.
    let n = unsafe {
        let mut ss: libc::sockaddr_storage = core::mem::zeroed();
        let len = dest
            .len()
            .min(core::mem::size_of::<libc::sockaddr_storage>());
        core::ptr::copy_nonoverlapping(
            dest.as_ptr(),
            &mut ss as *mut libc::sockaddr_storage as *mut u8,
            len,
        );
        let sa = if len == 0 {
            core::ptr::null()
        } else {
            &ss as *const libc::sockaddr_storage as *const libc::sockaddr
        };
        libc::sendto(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            sa,
            len as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Two raw addresses name the same place (Unix names may differ in
/// trailing NULs).
pub fn same_addr(a: &[u8], b: &[u8]) -> bool {
    let t = |x: &[u8]| {
        let mut n = x.len();
        while n > 2 && x[n - 1] == 0 {
            n -= 1;
        }
        n
    };
    !a.is_empty() && a[..t(a)] == b[..t(b)]
}

/// Send the datagrams each record had waiting again, in order, from the
/// sender's new socket when one of `made` is bound to the sender's
/// address (so a reply goes back to it), else from the other end of a
/// socketpair, else from a throw-away socket.
pub fn refill_dgrams(
    recs: &[&SockRec],
    made: &std::collections::BTreeMap<String, i32>,
    warn: &mut dyn FnMut(String),
) {
    let named: Vec<(&[u8], i32)> = recs
        .iter()
        .filter(|r| !r.local.is_empty())
        .filter_map(|r| made.get(&key(r)).map(|&fd| (r.local.as_slice(), fd)))
        .collect();
    for r in recs.iter().filter(|r| !r.dgrams.is_empty()) {
        let Some(&target) = made.get(&key(r)) else {
            continue;
        };
        let other = (r.state == SockState::Pair).then(|| {
            let mut o = (*r).clone();
            o.side ^= 1;
            made.get(&key(&o)).copied()
        });
        let mut lost = 0;
        for (src, data) in &r.dgrams {
            let from = named
                .iter()
                .find(|(n, fd)| *fd != target && same_addr(src, n))
                .map(|x| x.1);
            let res = match (from, other.flatten()) {
                (Some(f), _) if !r.local.is_empty() => send_dgram(f, data, &r.local),
                (_, Some(o)) => send_dgram(o, data, &[]),
                _ if !r.local.is_empty() => {
                    // SAFETY: a throw-away datagram socket.
                    let t =
                        unsafe { libc::socket(r.domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
                    let res = send_dgram(t, data, &r.local);
                    close(t);
                    res
                }
                _ => Err(Error::from_raw_os_error(libc::EDESTADDRREQ)),
            };
            if res.is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            warn(format!(
                "socket fd {}: {lost} of {} waiting datagrams could not be queued again",
                r.fd,
                r.dgrams.len()
            ));
        }
    }
}
