//! Who owns the other end of a TCP connection on this machine, asked of
//! the kernel by sock_diag netlink (one exact lookup: cheap enough for
//! every connection the coordinator accepts, where a scan of
//! /proc/net/tcp would grow with the number of connections).

use std::net::{SocketAddr, SocketAddrV4, TcpStream};

/// nlmsghdr followed by inet_diag_req_v2 (linux/inet_diag.h).
#[repr(C)]
struct Req {
    nlmsg_len: u32,
    nlmsg_type: u16,
    nlmsg_flags: u16,
    nlmsg_seq: u32,
    nlmsg_pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    // struct inet_diag_sockid
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<Req>() == 16 + 56);

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_ERROR: u16 = 2;
/// Offset of idiag_state in a reply (after nlmsghdr and idiag_family).
const STATE_AT: usize = 16 + 1;
/// Offset of idiag_uid in a reply: nlmsghdr (16), then inet_diag_msg's
/// family/state/timer/retrans (4), sockid (48), expires, rqueue, wqueue.
const UID_AT: usize = 16 + 4 + 48 + 12;

/// Who is at the other end of a connection we accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// Another host (or another network namespace): the kernel cannot say.
    Elsewhere,
    /// A live socket of this machine, owned by this uid.
    User(u32),
    /// From an address of this machine, but no live socket answers for it
    /// (the client closed at once: a closed socket no longer has an owner).
    Unknown,
}

/// The owner of the other end of `conn` (accepted by us).
pub fn peer_owner(conn: &TcpStream) -> Owner {
    let (Ok(SocketAddr::V4(me)), Ok(SocketAddr::V4(peer))) = (conn.local_addr(), conn.peer_addr())
    else {
        return Owner::Elsewhere;
    };
    let found = match lookup(&me, &peer) {
        Ok(found) => found,
        // No sock_diag here (a restricted container): the kernel's table.
        Err(()) => crate::client::local_peer_uid(conn),
    };
    match found {
        Some(uid) => Owner::User(uid),
        // Only now, when it matters: the interfaces' addresses.
        None if peer.ip().is_loopback() || local_addresses().contains(peer.ip()) => Owner::Unknown,
        None => Owner::Elsewhere,
    }
}

/// The uid owning the established socket at the other end of `s` (our
/// connection), when the kernel of this namespace has it: Ok(None) when it
/// has not (another host, or not established), Err when sock_diag cannot
/// be asked or `s` is not IPv4.
#[allow(clippy::result_unit_err)] // Err: sock_diag could not be asked; nothing more to say
pub fn established_peer_uid(s: &TcpStream) -> Result<Option<u32>, ()> {
    match (s.local_addr(), s.peer_addr()) {
        (Ok(SocketAddr::V4(me)), Ok(SocketAddr::V4(peer))) => lookup(&me, &peer),
        _ => Err(()),
    }
}

/// The IPv4 addresses of this machine's interfaces (this namespace).
fn local_addresses() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills our pointer with a list we free below; each
    // entry's address is read only when its family says it is IPv4.
    unsafe {
        if libc::getifaddrs(&mut ifa) != 0 {
            return out;
        }
        let mut p = ifa;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifa);
    }
    out
}

/// The uid owning the live (established) socket `peer` -> `me` of this
/// namespace; None when there is none; Err when sock_diag cannot be asked.
fn lookup(me: &SocketAddrV4, peer: &SocketAddrV4) -> Result<Option<u32>, ()> {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&peer.ip().octets());
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&me.ip().octets());
    // The peer's socket: local address the peer's, remote ours.
    let req = Req {
        nlmsg_len: core::mem::size_of::<Req>() as u32,
        nlmsg_type: SOCK_DIAG_BY_FAMILY,
        nlmsg_flags: libc::NLM_F_REQUEST as u16,
        nlmsg_seq: 1,
        nlmsg_pid: 0,
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        // Established only: a socket closed since (FIN_WAIT2, TIME_WAIT)
        // is a kernel stub whose owner reads as uid 0.
        states: 1 << TCP_ESTABLISHED,
        sport: peer.port().to_be_bytes(),
        dport: me.port().to_be_bytes(),
        src,
        dst,
        ifindex: 0,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: a netlink socket of our own, closed below.
    let nl = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if nl < 0 {
        return Err(());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: sending our request struct, then receiving into our buffer,
    // on the netlink socket we opened; closing it.
    let n = unsafe {
        let sent = libc::send(
            nl,
            &req as *const Req as *const libc::c_void,
            core::mem::size_of::<Req>(),
            0,
        );
        let n = if sent < 0 {
            -1
        } else {
            libc::recv(nl, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
        };
        libc::close(nl);
        n
    };
    if n < 20 {
        return Err(());
    }
    let b = &buf[..n as usize];
    let kind = u16::from_ne_bytes([b[4], b[5]]);
    if kind == NLMSG_ERROR {
        // No such socket (here, in this state): ENOENT; anything else is
        // sock_diag failing.
        let e = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
        return if e == -libc::ENOENT {
            Ok(None)
        } else {
            Err(())
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || b.len() < UID_AT + 4 {
        return Err(());
    }
    if u32::from(b[STATE_AT]) != TCP_ESTABLISHED {
        return Ok(None);
    }
    Ok(Some(u32::from_ne_bytes([
        b[UID_AT],
        b[UID_AT + 1],
        b[UID_AT + 2],
        b[UID_AT + 3],
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_a_loopback_connection_is_us() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(peer_owner(&s), Owner::User(me));
        assert_eq!(peer_owner(&c), Owner::User(me));
    }

    /// A client that connected and closed at once has no owner any more:
    /// unknown, not root (its stub socket reads as uid 0).
    #[test]
    fn a_closed_local_client_is_unknown() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(peer_owner(&s), Owner::Unknown);
    }
}
