//! Who owns the other end of a TCP connection on this machine, asked of
//! the kernel by sock_diag netlink (one exact lookup: cheap enough for
//! every connection the coordinator accepts, where a scan of
//! /proc/net/tcp would grow with the number of connections).

use std::net::{SocketAddr, TcpStream};

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
/// Offset of idiag_uid in a reply: nlmsghdr (16), then inet_diag_msg's
/// family/state/timer/retrans (4), sockid (48), expires, rqueue, wqueue.
const UID_AT: usize = 16 + 4 + 48 + 12;

/// The uid of the process that owns the other end of `conn` (accepted by
/// us), when that end is a socket of this machine's network namespace;
/// None when it is elsewhere (another host or namespace) or unknown.
pub fn local_peer_uid(conn: &TcpStream) -> Option<u32> {
    let (SocketAddr::V4(me), SocketAddr::V4(peer)) =
        (conn.local_addr().ok()?, conn.peer_addr().ok()?)
    else {
        return None;
    };
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
        states: u32::MAX,
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
        return None;
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
    if n < (UID_AT + 4) as isize {
        return None; // an error message (no such socket here), or nothing
    }
    let b = &buf[..n as usize];
    if u16::from_ne_bytes([b[4], b[5]]) != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    Some(u32::from_ne_bytes([
        b[UID_AT],
        b[UID_AT + 1],
        b[UID_AT + 2],
        b[UID_AT + 3],
    ]))
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
        assert_eq!(local_peer_uid(&s), Some(me));
        assert_eq!(local_peer_uid(&c), Some(me));
    }
}
