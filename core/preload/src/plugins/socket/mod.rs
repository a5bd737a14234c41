//! The "socket" plugin: Unix and TCP sockets across checkpoint and restart.
//!
//! At checkpoint (user threads of every process suspended):
//! 1. Each process lists its sockets and publishes, in the coordinator's
//!    name service, one entry per socket it holds (last writer wins: after
//!    the barrier everyone reads the same owner, who is the socket's
//!    *leader*) and one per connected stream end (its shutdown state).
//! 2. After the barrier, a connected stream socket whose other end was
//!    published is *in the job*; the other ones lead outside (an external
//!    server, or a peer that already closed).
//!    A connection of the job still waiting in a TCP listener's accept
//!    queue is adopted: accepted, drained, its bytes handed to the client
//!    end, which connects again after the round ([`adopt_waiting`]).
//! 3. Leaders drain in-job connections: each end sends a cookie and reads
//!    until the other's cookie arrives, so every byte in flight (kernel
//!    receive queues and TCP send queues) is in the reader's memory and in
//!    the image. Half-closed connections and outside connections are only
//!    peeked (`SO_PEEK_OFF`): their bytes stay where they are.
//!
//! On resume, each in-job pair exchanges what it drained: an end sends its
//! bytes to the other end in a framed message, and the other end writes
//! them back raw, so they arrive again, in order, before anything new.
//!
//! On restart, `dmtcp_restart` re-creates sockets from the records kept in
//! the image (pairs as fresh connections of the same kind, listeners bound
//! to their addresses) and hands them to every process that had them; the
//! process puts the options back, rebuilds outside connections as closed
//! ones (the bytes it had not read, then EOF or a reset) and, once the
//! whole job is back, runs the same exchange as on resume.

use crate::engine::iface::{self as dmtcp, Event, FdDesc, Plugin, Tree};
use dmtcp_common::image::{SockRec, SockState};

const DB: &str = "dmtcp:sock";
/// Ends the drained stream of one direction: 16 random bytes drawn anew
/// for every checkpoint round and agreed through the name service, so no
/// program data can pass for it.
static COOKIE: dmtcp::FLock<[u8; 16]> = dmtcp::FLock::new([0; 16]);
/// Starts a refill message.
const MAGIC: [u8; 8] = *b"DMTCPRX1";
/// Most bytes peeked from one socket.
const PEEK_MAX: usize = 256 << 20;

#[derive(Clone, Debug, Default)]
struct Sock {
    rec: SockRec,
    leader: bool,
    /// A connected stream socket.
    stream_conn: bool,
    /// This end has shut its write side / the other end has.
    my_shut: bool,
    peer_shut: bool,
    /// Drained by consuming (both ends in the job, both directions open).
    consume: bool,
    /// The drain of this socket did not finish in time (the round failed).
    failed: bool,
    /// Bytes of this end's drain marker sent; the other end's marker read.
    cookie_sent: usize,
    cookie_got: bool,
    /// Bytes of the receive queue at checkpoint time.
    data: Vec<u8>,
    opts: Vec<(i32, i32, Vec<u8>)>,
    flags: i32,
    cloexec: bool,
    endkey: String,
    peerkey: String,
    /// A connection this process took from its listener's accept queue at
    /// checkpoint (the program had not accepted it yet): its bytes are
    /// handed to the client end, and it is closed again afterwards.
    adopted: bool,
    /// The other end was [`adopted`](Sock::adopted): after the checkpoint
    /// (or the restart) this end connects to the listener again and sends
    /// its bytes again, so the program accepts it as if nothing happened.
    reconnect: bool,
    /// For a [`reconnect`](Sock::reconnect) end: the bytes it had sent,
    /// handed back by the adopting process, sent again after connecting.
    resend: Vec<u8>,
}

static SAVED: dmtcp::FLock<Vec<Sock>> = dmtcp::FLock::new(Vec::new());

/// Records for the image (read when the tree is captured).
fn records() -> Vec<SockRec> {
    SAVED.with(|s| s.iter().map(|x| x.rec.clone()).collect())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn get_int(fd: i32, level: i32, opt: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32) -> bool {
    // SAFETY: setsockopt reads 4 bytes from `v`.
    unsafe { libc::setsockopt(fd, level, opt, &v as *const i32 as *const libc::c_void, 4) == 0 }
}

fn get_raw(fd: i32, level: i32, opt: i32, size: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; size];
    let mut len = size as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into our buffer.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            v.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    v.truncate(len as usize);
    Some(v)
}

/// getsockname / getpeername as raw bytes (empty when unnamed or unconnected).
fn name(fd: i32, peer: bool) -> Vec<u8> {
    // SAFETY: a zeroed sockaddr_storage is a valid buffer.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: reading `len` initialized bytes of `ss`.
    let b = unsafe {
        core::slice::from_raw_parts(
            p as *const u8,
            (len as usize).min(core::mem::size_of::<libc::sockaddr_storage>()),
        )
    };
    match ss.ss_family as i32 {
        libc::AF_UNIX if b.len() <= 2 => Vec::new(),
        libc::AF_INET | libc::AF_INET6 => {
            // Port 0 means not bound (or not connected).
            if b.len() >= 4 && b[2] == 0 && b[3] == 0 {
                Vec::new()
            } else {
                b.to_vec()
            }
        }
        _ => b.to_vec(),
    }
}

/// An inet address as text, v4-mapped v6 addresses shown as v4 (so both
/// ends of a connection through a dual-stack socket name it the same way).
fn inet_text(raw: &[u8]) -> String {
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    if raw.len() >= 8 && raw[0] as i32 | (raw[1] as i32) << 8 == libc::AF_INET {
        return format!("{}.{}.{}.{}:{}", raw[4], raw[5], raw[6], raw[7], port(raw));
    }
    if raw.len() >= 24 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&raw[8..24]);
        let ip = std::net::Ipv6Addr::from(a);
        if let Some(v4) = ip.to_ipv4_mapped() {
            return format!("{v4}:{}", port(raw));
        }
        return format!("[{ip}]:{}", port(raw));
    }
    String::new()
}

/// A netlink message header (linux/netlink.h) for a `sock_diag` request.
#[repr(C)]
struct NlHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}
const _: () = assert!(core::mem::size_of::<NlHdr>() == 16);
const SOCK_DIAG_BY_FAMILY: u16 = 20;

impl NlHdr {
    fn diag<T>(flags: i32, seq: u32) -> NlHdr {
        NlHdr {
            len: core::mem::size_of::<T>() as u32,
            ty: SOCK_DIAG_BY_FAMILY,
            flags: flags as u16,
            seq,
            pid: 0,
        }
    }
}

/// Peer inode and shutdown bits (1: receive side, 2: send side) of a Unix
/// socket, from the kernel's sock_diag interface.
fn unix_diag(nl: i32, ino: u64) -> Option<(u64, u8)> {
    #[repr(C)]
    struct Req {
        hdr: NlHdr,
        family: u8,
        protocol: u8,
        pad: u16,
        states: u32,
        ino: u32,
        show: u32,
        cookie: [u32; 2],
    }
    const _: () = assert!(core::mem::size_of::<Req>() == 16 + 24);
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let req = Req {
        hdr: NlHdr::diag::<Req>(libc::NLM_F_REQUEST, ino as u32),
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino: ino as u32,
        show: UDIAG_SHOW_PEER,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: sending our request struct over our netlink socket.
    let n = unsafe {
        libc::send(
            nl,
            &req as *const Req as *const libc::c_void,
            core::mem::size_of::<Req>(),
            0,
        )
    };
    if n < 0 {
        return None;
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(nl, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 16 + 16 {
        return None;
    }
    let b = &buf[..n as usize];
    let u16at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let u32at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let len = (u32at(0) as usize).min(b.len());
    if u16at(4) != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let (mut peer, mut shut) = (0u64, 0u8);
    let mut o = 16 + 16;
    while o + 4 <= len {
        let alen = u16at(o) as usize;
        let atype = u16at(o + 2);
        if alen < 4 || o + alen > len {
            break;
        }
        match atype {
            UNIX_DIAG_PEER if alen >= 8 => peer = u32at(o + 4) as u64,
            UNIX_DIAG_SHUTDOWN if alen >= 5 => shut = b[o + 4],
            _ => {}
        }
        o += (alen + 3) & !3;
    }
    Some((peer, shut))
}

/// Options put back at restart: (level, option, size).
const OPTS: [(i32, i32, usize); 14] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4),
    (libc::SOL_SOCKET, libc::SO_PASSCRED, 4),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
];

/// What tells a buffer size the program set from one the kernel chose:
/// the limits (`/proc/sys/net/core/{w,r}mem_max`) and a fresh socket's
/// sizes per domain, found once per checkpoint.
struct BufRule {
    max: [i32; 2],
    fresh: Vec<(i32, [i32; 2])>,
}

impl BufRule {
    fn new() -> BufRule {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(212992)
        };
        BufRule {
            max: [
                read("/proc/sys/net/core/wmem_max"),
                read("/proc/sys/net/core/rmem_max"),
            ],
            fresh: Vec::new(),
        }
    }

    /// A fresh stream socket's (SO_SNDBUF, SO_RCVBUF) in `domain`.
    fn fresh(&mut self, domain: i32) -> [i32; 2] {
        if let Some(f) = self.fresh.iter().find(|f| f.0 == domain) {
            return f.1;
        }
        // SAFETY: a throw-away socket.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        let sizes = if fd < 0 {
            [-1, -1]
        } else {
            let s = [libc::SO_SNDBUF, libc::SO_RCVBUF]
                .map(|o| get_int(fd, libc::SOL_SOCKET, o).unwrap_or(-1));
            // SAFETY: closing it.
            unsafe { libc::close(fd) };
            s
        };
        self.fresh.push((domain, sizes));
        sizes
    }
}

fn save_opts(fd: i32, domain: i32, bufs: &mut BufRule) -> Vec<(i32, i32, Vec<u8>)> {
    let mut out = Vec::new();
    for (level, opt, size) in OPTS {
        if level == libc::IPPROTO_TCP && domain == libc::AF_UNIX {
            continue;
        }
        if let Some(v) = get_raw(fd, level, opt, size) {
            out.push((level, opt, v));
        }
    }
    // Buffer sizes the program set (the kernel reports twice the value
    // asked for; sizes it tuned itself are left to it).
    let fresh = bufs.fresh(domain);
    for (k, opt) in [libc::SO_SNDBUF, libc::SO_RCVBUF].into_iter().enumerate() {
        let Some(v) = get_int(fd, libc::SOL_SOCKET, opt) else {
            continue;
        };
        if v <= 2 * bufs.max[k] && v != fresh[k] {
            out.push((libc::SOL_SOCKET, opt, (v / 2).to_ne_bytes().to_vec()));
        }
    }
    out
}

fn tcp_state(fd: i32) -> u8 {
    get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 232)
        .and_then(|v| v.first().copied())
        .unwrap_or(0)
}

/// List the process's sockets (`boot`: this boot's id).
fn scan(boot: &str) -> Vec<Sock> {
    let mut bufs = BufRule::new();
    // SAFETY: a netlink socket of our own for sock_diag queries.
    let nl = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    let mut out = Vec::new();
    for (fd, target) in dmtcp::fds::socket_fds() {
        let Some(ino) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if fd == nl {
            continue;
        }
        out.push(describe(fd, ino, nl, boot, &mut bufs));
    }
    if nl >= 0 {
        // SAFETY: closing our netlink socket.
        unsafe { libc::close(nl) };
    }
    out
}

/// What a checkpoint keeps of the socket `fd` (inode `ino`); `nl` is a
/// sock_diag netlink socket (or -1).
fn describe(fd: i32, ino: u64, nl: i32, boot: &str, bufs: &mut BufRule) -> Sock {
    {
        let domain = get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        let stype = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
        let protocol = get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
        let listening = get_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1);
        let local = name(fd, false);
        let peer = name(fd, true);
        // SAFETY: fcntl queries of a live fd.
        let (flags, fdflags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        let mut s = Sock {
            rec: SockRec {
                fd,
                ino,
                domain,
                stype,
                protocol,
                state: SockState::Plain,
                local,
                peer,
                pair: String::new(),
                side: 0,
                v6only: domain == libc::AF_INET6
                    && get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1),
                dgrams: Vec::new(),
            },
            flags,
            cloexec: fdflags & libc::FD_CLOEXEC != 0,
            ..Default::default()
        };
        let inet = domain == libc::AF_INET || domain == libc::AF_INET6;
        if inet || domain == libc::AF_UNIX {
            s.opts = save_opts(fd, domain, bufs);
        }
        if inet && stype == libc::SOCK_STREAM && !s.rec.local.is_empty() {
            // The port must be free for a restart soon after the job was
            // killed: old connections of this port linger (TIME_WAIT and
            // the like) and block a new bind unless they allow reuse. The
            // program's own value is in `opts`, for the restarted socket.
            set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        }
        // Byte streams are drained with cookies; message sockets (datagram,
        // seqpacket) are peeked message by message, boundaries kept.
        let stream = stype == libc::SOCK_STREAM;
        let seqpacket = stype == libc::SOCK_SEQPACKET;
        if listening {
            s.rec.state = SockState::Listen;
        } else if stream && domain == libc::AF_UNIX && nl >= 0 {
            if let Some((peer_ino, shut)) = unix_diag(nl, ino) {
                if peer_ino != 0 || !s.rec.peer.is_empty() {
                    s.stream_conn = true;
                    s.my_shut = shut & 2 != 0;
                    s.peer_shut = shut & 1 != 0;
                    s.endkey = format!("u:{boot}:{ino}");
                    s.peerkey = if peer_ino != 0 {
                        format!("u:{boot}:{peer_ino}")
                    } else {
                        String::new()
                    };
                    let (a, b) = (ino.min(peer_ino), ino.max(peer_ino));
                    s.rec.pair = format!("u:{boot}:{a}-{b}");
                    s.rec.side = (ino > peer_ino) as u8;
                }
            }
        } else if !stream
            && domain == libc::AF_UNIX
            && (s.rec.peer.is_empty() || seqpacket)
            && nl >= 0
        {
            // A datagram socketpair (both ends unnamed, connected to each
            // other), or a connected seqpacket socket.
            if let Some((peer_ino, _)) = unix_diag(nl, ino) {
                if peer_ino != 0 {
                    let (a, b) = (ino.min(peer_ino), ino.max(peer_ino));
                    s.rec.state = SockState::Pair;
                    s.rec.pair = format!("u:{boot}:{a}-{b}");
                    s.rec.side = (ino > peer_ino) as u8;
                }
            }
        } else if stream && inet && protocol == libc::IPPROTO_TCP && !s.rec.peer.is_empty() {
            let st = tcp_state(fd);
            // ESTABLISHED 1, FIN_WAIT1 4, FIN_WAIT2 5, TIME_WAIT 6, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11
            if matches!(st, 1 | 4 | 5 | 6 | 8 | 9 | 11) {
                s.stream_conn = true;
                s.my_shut = matches!(st, 4 | 5 | 6 | 9 | 11);
                s.peer_shut = matches!(st, 6 | 8 | 9 | 11);
                let (l, p) = (inet_text(&s.rec.local), inet_text(&s.rec.peer));
                s.endkey = format!("t:{l}>{p}");
                s.peerkey = format!("t:{p}>{l}");
                s.rec.pair = if l < p {
                    format!("t:{l}|{p}")
                } else {
                    format!("t:{p}|{l}")
                };
                s.rec.side = (l > p) as u8;
            }
        }
        s
    }
}

fn send_some(fd: i32, b: &[u8]) -> Result<usize, i32> {
    if b.is_empty() {
        return Ok(0);
    }
    // SAFETY: sending from our buffer; MSG_NOSIGNAL keeps SIGPIPE away.
    let n = unsafe {
        libc::send(
            fd,
            b.as_ptr() as *const libc::c_void,
            b.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        Ok(n as usize)
    } else {
        match errno() {
            libc::EAGAIN | libc::EINTR => Ok(0),
            e => Err(e),
        }
    }
}

/// Ok(None): nothing now; Ok(Some(0)): end of stream.
fn recv_some(fd: i32, b: &mut [u8], flags: i32) -> Result<Option<usize>, i32> {
    // SAFETY: receiving into our buffer.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr() as *mut libc::c_void,
            b.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        Ok(Some(n as usize))
    } else {
        match errno() {
            libc::EAGAIN | libc::EINTR => Ok(None),
            e => Err(e),
        }
    }
}

/// Read the receive queue without taking it (peek offset walks it).
fn peek_all(fd: i32) -> Vec<u8> {
    let old = get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    if set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0) {
        while out.len() < PEEK_MAX {
            match recv_some(fd, &mut buf, libc::MSG_PEEK) {
                Ok(Some(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    } else {
        // No peek offset: one peek of what is queued.
        let n = queued(fd);
        if n > 0 {
            let mut b = vec![0u8; n as usize];
            if let Ok(Some(k)) = recv_some(fd, &mut b, libc::MSG_PEEK) {
                out.extend_from_slice(&b[..k]);
            }
        }
    }
    out
}

fn poll_wait(fds: &mut [libc::pollfd], ms: i32) {
    // SAFETY: poll on our array.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// The datagrams waiting on `fd`, with their senders, left in place.
fn peek_dgrams(fd: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let old = get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if !set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0) {
        return out;
    }
    let mut buf = vec![0u8; 1 << 18];
    let mut total = 0usize;
    while total < PEEK_MAX {
        // SAFETY: zeroed address buffer for recvmsg.
        let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; fields set below.
        let mut m: libc::msghdr = unsafe { core::mem::zeroed() };
        m.msg_name = &mut ss as *mut libc::sockaddr_storage as *mut libc::c_void;
        m.msg_namelen = core::mem::size_of::<libc::sockaddr_storage>() as u32;
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        // SAFETY: recvmsg writes into our buffers.
        let n = unsafe { libc::recvmsg(fd, &mut m, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            break;
        }
        // SAFETY: the kernel wrote msg_namelen bytes of address.
        let src = unsafe {
            core::slice::from_raw_parts(
                &ss as *const libc::sockaddr_storage as *const u8,
                m.msg_namelen as usize,
            )
        };
        let src = if ss.ss_family as i32 == libc::AF_UNIX && src.len() <= 2 {
            Vec::new()
        } else {
            src.to_vec()
        };
        out.push((src, buf[..n as usize].to_vec()));
        total += n as usize;
        if n == 0 {
            // An empty datagram does not move the peek offset: stop here.
            break;
        }
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    out
}

/// Peeks a TCP connection that is not drained with cookies (half-closed,
/// or its other end outside the job or closed) with room for everything the
/// other end still has queued for us: with a larger receive buffer the
/// kernel moves the other end's send queue (and its FIN, if it closed) into
/// ours at once on this machine, so the bytes it had sent but we had no
/// room for are in the image too, while the connection itself is left as
/// it was. Beyond the sysctl limit only with CAP_NET_ADMIN
/// (SO_RCVBUFFORCE); without it, up to net.core.rmem_max.
fn peek_tcp(s: &mut Sock) {
    let fd = s.rec.fd;
    if queued(fd) < 32 << 10 {
        // The window was open: nothing waits behind these bytes.
        s.data = peek_all(fd);
        return;
    }
    let old = get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF);
    let want = 256 << 20;
    if !set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want) {
        set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, want);
    }
    // A peek sends the window update; let the bytes come until none arrive
    // for a moment (or the other end's FIN is in), a second at most; then
    // take them all in one peek.
    let start = std::time::Instant::now();
    let mut quiet = std::time::Instant::now();
    let mut have = 0;
    let mut one = [0u8; 1];
    while start.elapsed() < std::time::Duration::from_secs(1)
        && quiet.elapsed() < std::time::Duration::from_millis(20)
    {
        let _ = recv_some(fd, &mut one, libc::MSG_PEEK);
        if peer_closed(fd) {
            break; // nothing more can come
        }
        poll_wait(
            &mut [libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            }],
            5,
        );
        let now = queued(fd);
        if now > have {
            have = now;
            quiet = std::time::Instant::now();
        }
    }
    s.data = peek_all(fd);
    s.peer_shut = s.peer_shut || peer_closed(fd);
    if let Some(v) = old {
        // getsockopt reports twice what setsockopt takes.
        set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (v / 2).max(1));
    }
}

/// Bytes waiting in a socket's receive queue.
fn queued(fd: i32) -> i32 {
    let mut n: i32 = 0;
    // SAFETY: FIONREAD writes an int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

/// Whether the other end's FIN has come in: TIME_WAIT 6, CLOSE 7,
/// CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11.
fn peer_closed(fd: i32) -> bool {
    matches!(tcp_state(fd), 6 | 7 | 8 | 9 | 11)
}

/// A number from the environment, read when it is needed (libc's getenv:
/// no lock, no allocation).
fn env_u64(name: &core::ffi::CStr) -> Option<u64> {
    // SAFETY: getenv of a NUL-terminated name; the result is read at once.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    (!v.is_null()).then(|| {
        // SAFETY: a NUL-terminated string of the environment.
        unsafe { core::ffi::CStr::from_ptr(v) }
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    })?
}

/// Drain in-job connections (cookie protocol) and peek the others. A
/// connection whose other end does not finish in time fails this
/// checkpoint; its drain is finished on resume ([`finish_drains`]).
fn drain(socks: &mut [Sock]) {
    for s in socks.iter_mut() {
        if s.leader && s.stream_conn && !s.consume {
            if s.rec.domain == libc::AF_UNIX {
                s.data = peek_all(s.rec.fd);
            } else {
                peek_tcp(s);
            }
        }
        let dgram = (s.rec.stype == libc::SOCK_DGRAM
            && matches!(s.rec.domain, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6))
            || (s.rec.stype == libc::SOCK_SEQPACKET && s.rec.domain == libc::AF_UNIX);
        s.rec.dgrams = if s.leader && dgram {
            peek_dgrams(s.rec.fd)
        } else {
            Vec::new()
        };
    }
    let idx: Vec<usize> = (0..socks.len())
        .filter(|&i| socks[i].leader && socks[i].consume)
        .collect();
    // How long the other ends may take (DMTCP_SOCKET_DRAIN_TIMEOUT, s).
    let limit =
        std::time::Duration::from_secs(env_u64(c"DMTCP_SOCKET_DRAIN_TIMEOUT").unwrap_or(30));
    // Fault injection for tests: this process starts draining late.
    if let Some(ms) = env_u64(c"DMTCP_FAULT_DRAIN_DELAY_MS") {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let late = run_drain(socks, &idx, limit);
    for &i in &late {
        let s = &mut socks[i];
        s.failed = true;
        dmtcp::warn(format_args!(
            "socket fd {}: the other end did not finish draining within {} s; this checkpoint fails and the connection is kept whole",
            s.rec.fd,
            limit.as_secs()
        ));
    }
    if !late.is_empty() {
        dmtcp::fail_round(format!(
            "{} socket(s) did not finish draining within {} s",
            late.len(),
            limit.as_secs()
        ));
    }
}

/// Take from `fd` what is queued up to and including the drain's end
/// marker, never past it (after a failed round the other end's refill
/// message may follow the marker). Ok(true) once the marker is in.
fn take_to_cookie(
    fd: i32,
    data: &mut Vec<u8>,
    cookie: &[u8; 16],
    buf: &mut [u8],
) -> Result<bool, ()> {
    loop {
        let n = match recv_some(fd, buf, libc::MSG_PEEK) {
            Ok(Some(0)) | Err(_) => return Err(()),
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
        };
        // The marker may begin in bytes already taken.
        let t = data.len().min(cookie.len() - 1);
        let mut window = data[data.len() - t..].to_vec();
        window.extend_from_slice(&buf[..n]);
        let end = window
            .windows(cookie.len())
            .position(|w| w == cookie)
            .map(|i| i + cookie.len() - t);
        let take = end.unwrap_or(n);
        match recv_some(fd, &mut buf[..take], 0) {
            Ok(Some(k)) if k == take => data.extend_from_slice(&buf[..k]),
            _ => return Err(()),
        }
        if end.is_some() {
            data.truncate(data.len() - cookie.len());
            return Ok(true);
        }
    }
}

/// The cookie exchange on the sockets `idx`: send this end's marker, take
/// the other end's bytes up to its marker. Returns the sockets not done
/// within `limit` (their progress stays in the `Sock` for a later call).
fn run_drain(socks: &mut [Sock], idx: &[usize], limit: std::time::Duration) -> Vec<usize> {
    if idx.is_empty() {
        return Vec::new();
    }
    let cookie = COOKIE.with(|c| *c);
    // Every send and receive here is MSG_DONTWAIT: the file's O_NONBLOCK
    // is left alone (it is shared by every process holding the socket,
    // and one that already runs its program would see EAGAIN from a
    // blocking read; seen after a restart, bench soak).
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut late = Vec::new();
    loop {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        for &i in idx {
            let s = &mut socks[i];
            let fd = s.rec.fd;
            if s.cookie_sent < cookie.len() {
                match send_some(fd, &cookie[s.cookie_sent..]) {
                    Ok(n) => s.cookie_sent += n,
                    Err(_) => s.cookie_sent = cookie.len(),
                }
            }
            if !s.cookie_got {
                s.cookie_got = take_to_cookie(fd, &mut s.data, &cookie, &mut buf).unwrap_or(true);
            }
            let mut ev = 0;
            if !s.cookie_got {
                ev |= libc::POLLIN;
            }
            if s.cookie_sent < cookie.len() {
                ev |= libc::POLLOUT;
            }
            if ev != 0 {
                pfds.push(libc::pollfd {
                    fd,
                    events: ev,
                    revents: 0,
                });
            }
        }
        if pfds.is_empty() {
            break;
        }
        if start.elapsed() >= limit {
            late = idx
                .iter()
                .copied()
                .filter(|&i| !socks[i].cookie_got || socks[i].cookie_sent < cookie.len())
                .collect();
            break;
        }
        poll_wait(&mut pfds, 100);
    }
    late
}

/// Resume after a round that failed on late drains: finish them (the
/// other ends run again now), so the refill exchange finds every
/// connection drained up to its marker.
fn finish_drains(socks: &mut [Sock]) {
    let idx: Vec<usize> = (0..socks.len()).filter(|&i| socks[i].failed).collect();
    for i in run_drain(socks, &idx, std::time::Duration::from_secs(120)) {
        dmtcp::warn(format_args!(
            "socket fd {}: its drain did not finish after 120 s more; bytes in flight may be lost",
            socks[i].rec.fd
        ));
        socks[i].consume = false;
    }
}

fn checkpoint() {
    let boot = dmtcp::boot_id();
    let mut socks = scan(&boot);
    let pid = dmtcp_sys::getpid();
    let put = |k: String, v: Vec<u8>| dmtcp::kv_put(DB, k.into_bytes(), v);
    for s in &socks {
        put(
            format!("o:{boot}:{}", s.rec.ino),
            pid.to_ne_bytes().to_vec(),
        );
        if s.stream_conn {
            put(
                s.endkey.clone(),
                vec![s.my_shut as u8 | (s.peer_shut as u8) << 1],
            );
        }
    }
    // Every process offers a fresh end marker; after the barrier all read
    // the same one (the last offered).
    let mut offer = [0u8; 16];
    // SAFETY: getrandom fills our 16 bytes.
    unsafe { libc::syscall(libc::SYS_getrandom, offer.as_mut_ptr(), 16usize, 0) };
    put("cookie".to_string(), offer.to_vec());
    let coordinated = dmtcp::barrier("sock:elect");
    let agreed = if coordinated {
        dmtcp::kv_get(DB, b"cookie").flatten()
    } else {
        None
    };
    let cookie: [u8; 16] = agreed.and_then(|v| v.try_into().ok()).unwrap_or(offer);
    COOKIE.with(|c| *c = cookie);
    if coordinated {
        for s in socks.iter_mut() {
            let owner = dmtcp::kv_get(DB, format!("o:{boot}:{}", s.rec.ino).as_bytes()).flatten();
            s.leader = owner.is_none_or(|o| o == pid.to_ne_bytes());
        }
        adopt_waiting(&mut socks, &boot, pid);
    }
    // Every process, with or without listeners: the adopted connections'
    // ends are published after this.
    dmtcp::barrier("sock:adopt");
    for s in socks.iter_mut() {
        let owner = if coordinated {
            dmtcp::kv_get(DB, format!("o:{boot}:{}", s.rec.ino).as_bytes()).flatten()
        } else {
            None
        };
        s.leader = owner.is_none_or(|o| o == pid.to_ne_bytes());
        if !s.stream_conn {
            continue;
        }
        let other = if coordinated && !s.peerkey.is_empty() {
            dmtcp::kv_get(DB, s.peerkey.as_bytes()).flatten()
        } else {
            None
        };
        match other {
            Some(v) => {
                let o = v.first().copied().unwrap_or(3);
                s.rec.state = SockState::Pair;
                s.consume = !s.my_shut && !s.peer_shut && o == 0;
                s.reconnect = dmtcp::kv_get(DB, format!("a:{}", s.peerkey).as_bytes())
                    .flatten()
                    .is_some();
            }
            None => {
                s.rec.state = SockState::Dead;
                s.rec.pair.clear();
            }
        }
    }
    drain(&mut socks);
    hand_over(&mut socks);
    SAVED.with(|v| *v = socks);
    DRAINED.store(true, core::sync::atomic::Ordering::SeqCst);
}

/// A raw socket address (as `getsockname` gives it) for an inet_diag
/// address: `family`, port bytes (network order), 4 or 16 address bytes.
fn raw_inet(family: u8, port: [u8; 2], addr: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    v.extend_from_slice(&(family as u16).to_ne_bytes());
    v.extend_from_slice(&port);
    if family as i32 == libc::AF_INET {
        v.extend_from_slice(&addr[..4]);
        v.extend_from_slice(&[0; 8]);
    } else {
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&addr[..16]);
        v.extend_from_slice(&[0; 4]);
    }
    v
}

/// The connections waiting in the accept queue of the TCP listener `l`, as
/// (server end, client end) addresses, from the kernel's sock_diag (the
/// sockets of the queue are established and have no file yet: inode 0).
/// None if the kernel cannot say.
fn tcp_waiting(l: &Sock) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    #[repr(C)]
    struct Req {
        hdr: NlHdr,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: [u8; 48],
    }
    const _: () = assert!(core::mem::size_of::<Req>() == 16 + 56);
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let local = &l.rec.local;
    if local.len() < 8 {
        return None;
    }
    let port = [local[2], local[3]];
    let wild = if l.rec.domain == libc::AF_INET {
        local[4..8].iter().all(|&b| b == 0)
    } else {
        local.get(8..24)?.iter().all(|&b| b == 0)
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
    let req = Req {
        hdr: NlHdr::diag::<Req>(libc::NLM_F_REQUEST | libc::NLM_F_DUMP, 1),
        family: l.rec.domain as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        // TCP_ESTABLISHED, and TCP_CLOSE_WAIT: the client shut its side.
        states: 1 << 1 | 1 << 8,
        id: [0; 48],
    };
    let mut found = Vec::new();
    let mut ok = false;
    // SAFETY: sending our request struct; replies into our buffer.
    unsafe {
        if libc::send(nl, (&req as *const Req).cast(), req.hdr.len as usize, 0) >= 0 {
            let mut buf = vec![0u8; 1 << 16];
            'recv: loop {
                let n = libc::recv(nl, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n <= 0 {
                    break;
                }
                let b = &buf[..n as usize];
                let mut at = 0;
                while at + 16 <= b.len() {
                    let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes([b[at + 4], b[at + 5]]);
                    if len < 16 || at + len > b.len() {
                        break 'recv;
                    }
                    if ty == NLMSG_DONE || ty == NLMSG_ERROR {
                        ok = ty == NLMSG_DONE;
                        break 'recv;
                    }
                    let m = &b[at + 16..at + len];
                    // inet_diag_msg: family, state, timer, retrans, then
                    // sockid (sport, dport, src[16], dst[16], if, cookie),
                    // expires, rqueue, wqueue, uid, inode.
                    if m.len() >= 72 {
                        let fam = m[0];
                        let (sport, dport) = ([m[4], m[5]], [m[6], m[7]]);
                        let (src, dst) = (&m[8..24], &m[24..40]);
                        let inode = u32::from_ne_bytes(m[68..72].try_into().unwrap());
                        let alen = if fam as i32 == libc::AF_INET { 4 } else { 16 };
                        let here = local.get(if alen == 4 { 4..8 } else { 8..24 });
                        if inode == 0
                            && sport == port
                            && (wild || here == Some(&src[..alen]))
                        {
                            found.push((raw_inet(fam, sport, src), raw_inet(fam, dport, dst)));
                        }
                    }
                    at += (len + 3) & !3;
                }
            }
        }
        libc::close(nl);
    }
    ok.then_some(found)
}

/// Connections waiting unaccepted in this process's TCP listeners whose
/// client end is a process of the job: the checkpoint takes them out of
/// the queue (accepts them) so their bytes are drained and saved like any
/// in-job connection's; after the round the client connects again and
/// sends them again ([`Sock::reconnect`]), and the program finds a waiting
/// connection with the same bytes. A listener whose queue also holds a
/// connection from outside the job is left as it is (an accepted
/// connection cannot be put back: that one keeps working on resume; a
/// restart gives its client a reset).
fn adopt_waiting(socks: &mut Vec<Sock>, boot: &str, pid: i32) {
    let listeners: Vec<Sock> = socks
        .iter()
        .filter(|s| {
            s.leader
                && s.rec.state == SockState::Listen
                && s.rec.stype == libc::SOCK_STREAM
                && s.rec.protocol == libc::IPPROTO_TCP
                && matches!(s.rec.domain, libc::AF_INET | libc::AF_INET6)
        })
        .cloned()
        .collect();
    let mut bufs = BufRule::new();
    for l in listeners {
        // tcpi_unacked of a listener: the connections waiting.
        let waiting = get_raw(l.rec.fd, libc::IPPROTO_TCP, libc::TCP_INFO, 32)
            .filter(|v| v.len() >= 28)
            .map_or(0, |v| u32::from_ne_bytes([v[24], v[25], v[26], v[27]]));
        if waiting == 0 {
            continue;
        }
        let Some(conns) = tcp_waiting(&l) else {
            continue;
        };
        let in_job = conns.iter().all(|(srv, cli)| {
            let key = format!("t:{}>{}", inet_text(cli), inet_text(srv));
            dmtcp::kv_get(DB, key.as_bytes()).flatten().is_some()
        });
        if conns.len() != waiting as usize || !in_job {
            continue;
        }
        for _ in 0..waiting {
            let mut p = libc::pollfd {
                fd: l.rec.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on our pollfd, then accept4 from the program's
            // listener with no address wanted.
            let fd = unsafe {
                if libc::poll(&mut p, 1, 0) != 1 {
                    break;
                }
                libc::accept4(
                    l.rec.fd,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: fstat of the fd just accepted into our struct.
            let ino = unsafe {
                let mut st: libc::stat = core::mem::zeroed();
                libc::fstat(fd, &mut st);
                st.st_ino
            };
            let mut s = describe(fd, ino, -1, boot, &mut bufs);
            s.adopted = true;
            s.leader = true;
            dmtcp::kv_put(
                DB,
                format!("o:{boot}:{ino}").into_bytes(),
                pid.to_ne_bytes().to_vec(),
            );
            dmtcp::kv_put(
                DB,
                s.endkey.clone().into_bytes(),
                vec![s.my_shut as u8 | (s.peer_shut as u8) << 1],
            );
            dmtcp::kv_put(DB, format!("a:{}", s.endkey).into_bytes(), vec![1]);
            socks.push(s);
        }
    }
}

/// Connect the client end `s` again to the listener it had connected to
/// (its peer address), at the same fd with the same options and flags,
/// and send the bytes it had sent before; false (with a warning) if that
/// fails: the program then finds the connection closed.
fn reconnect(s: &Sock) -> bool {
    let r = &s.rec;
    // SAFETY: a new socket of our own, connected, then moved onto the
    // program's fd number (dup3 closes what was there).
    let ok = unsafe {
        let n = libc::socket(r.domain, r.stype | libc::SOCK_CLOEXEC, r.protocol);
        let mut ss: libc::sockaddr_storage = core::mem::zeroed();
        let len = r.peer.len().min(core::mem::size_of::<libc::sockaddr_storage>());
        core::ptr::copy_nonoverlapping(
            r.peer.as_ptr(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            len,
        );
        let ok = n >= 0
            && libc::connect(n, (&ss as *const libc::sockaddr_storage).cast(), len as libc::socklen_t) == 0
            && libc::dup3(n, r.fd, libc::O_CLOEXEC) == r.fd;
        if n >= 0 {
            libc::close(n);
        }
        ok
    };
    if !ok {
        dmtcp::warn(format_args!(
            "socket fd {}: cannot connect again to the listener it was waiting at ({}); it stays closed",
            r.fd,
            std::io::Error::last_os_error()
        ));
        return false;
    }
    put_back_opts(s);
    let start = std::time::Instant::now();
    let mut done = 0;
    while done < s.resend.len() && start.elapsed() < std::time::Duration::from_secs(120) {
        match send_some(r.fd, &s.resend[done..]) {
            Ok(k) => done += k,
            Err(_) => break,
        }
        if done < s.resend.len() {
            poll_wait(
                &mut [libc::pollfd {
                    fd: r.fd,
                    events: libc::POLLOUT,
                    revents: 0,
                }],
                100,
            );
        }
    }
    if done < s.resend.len() {
        dmtcp::warn(format_args!(
            "socket fd {}: {} of the {} bytes it had sent could not be sent again",
            r.fd,
            s.resend.len() - done,
            s.resend.len()
        ));
    }
    if s.my_shut {
        // SAFETY: shutting the write side, as the program had done.
        unsafe { libc::shutdown(r.fd, libc::SHUT_WR) };
    }
    true
}

/// After the drain: each adopted connection hands what the client had
/// sent (drained or peeked) to the client end in a framed message and is
/// closed; the client end keeps the bytes in memory (and the image) to
/// send again when it connects again ([`reconnect`]). No adopted
/// connection is left in the image.
fn hand_over(socks: &mut Vec<Sock>) {
    let mut ex: Vec<Ex> = socks
        .iter_mut()
        .enumerate()
        .filter(|(_, s)| s.leader && (s.adopted || s.reconnect))
        .map(|(i, s)| {
            let mut out = Vec::new();
            if s.adopted {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
                out.extend_from_slice(&s.data);
            }
            Ex {
                idx: i,
                fd: s.rec.fd,
                out,
                sent: 0,
                hdr: [0; 16],
                got: 0,
                body: Vec::new(),
                need: 0,
                in_done: s.adopted,
                wb: 0,
                shut_after: false,
                broken: false,
            }
        })
        .collect();
    if ex.is_empty() {
        return;
    }
    run_exchange(&mut ex, false);
    for e in ex {
        let s = &mut socks[e.idx];
        if s.adopted {
            // SAFETY: the connection this round accepted.
            unsafe { libc::close(s.rec.fd) };
        } else {
            if e.broken || !e.in_done {
                dmtcp::warn(format_args!(
                    "socket fd {}: the bytes it had sent to a listener of the job did not come back; they are lost",
                    s.rec.fd
                ));
            }
            s.resend = e.body;
            s.data.clear();
            s.consume = false;
            s.rec.state = SockState::Dead;
            s.rec.pair.clear();
        }
    }
    socks.retain(|s| !s.adopted);
}

/// One end's part of a refill exchange.
struct Ex {
    /// Its socket's place in the list it came from.
    idx: usize,
    fd: i32,
    out: Vec<u8>,
    sent: usize,
    hdr: [u8; 16],
    got: usize,
    body: Vec<u8>,
    need: usize,
    in_done: bool,
    wb: usize,
    shut_after: bool,
    broken: bool,
}

/// Give every in-job end back its bytes: send mine to the other end framed,
/// read its message, write its bytes back raw (they reach it again, in
/// order, before anything the program sends next). Messages are done
/// before the `barrier` (so no process sharing a socket can run and read
/// one), the raw bytes after it (they may need the other end's program to
/// read to fit). Every process reaches the barrier, with or without sockets.
fn exchange(list: Vec<(i32, Vec<u8>, bool)>, barrier: &str) {
    let mut ex: Vec<Ex> = list
        .into_iter()
        .enumerate()
        .map(|(idx, (fd, data, shut_after))| {
            let mut out = Vec::with_capacity(16 + data.len());
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(&data);
            Ex {
                idx,
                fd,
                out,
                sent: 0,
                hdr: [0; 16],
                got: 0,
                body: Vec::new(),
                need: 0,
                in_done: false,
                wb: 0,
                shut_after,
                broken: false,
            }
        })
        .collect();
    run_exchange(&mut ex, false);
    dmtcp::barrier(barrier);
    // Fault injection for tests: the refill's second half starts late,
    // while the other processes already run their programs.
    if let Some(ms) = env_u64(c"DMTCP_FAULT_REFILL_DELAY_MS").filter(|_| !ex.is_empty()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    // The bytes written back were queued in the socket before, but they
    // need not fit again in the sender's buffer (its accounting counts
    // buffers, not bytes), and the other end's program may read them
    // only after every process of the round has resumed, which waits for
    // this one: the write-back gets the largest buffer the system allows
    // while it runs. (Seen: 146176 of 151504 bytes back, both processes
    // waiting for each other at the end of a round; made certain by
    // tests/c/fullsock.c: 229376 bytes in 32 KiB writes, 219264 back.)
    // That is at least what the socket had: SO_SNDBUF cannot pass twice
    // the sysctl limit, SO_SNDBUFFORCE (root) gets room for all the
    // bytes at four times their size. Unix sockets only: a
    // TCP socket's buffer grows by itself, and setting it would stop that.
    let bufs: Vec<Option<i32>> = ex
        .iter()
        .map(|e| {
            let unix = get_int(e.fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_UNIX);
            let old = get_int(e.fd, libc::SOL_SOCKET, libc::SO_SNDBUF).filter(|_| unix);
            if !e.body.is_empty() && old.is_some() {
                // Past the sysctl limit where allowed (CAP_NET_ADMIN: the
                // program may have been there too), else up to it.
                let want = (e.body.len() as i32)
                    .saturating_mul(4)
                    .max(old.unwrap_or(0));
                if !set_int(e.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want) {
                    set_int(e.fd, libc::SOL_SOCKET, libc::SO_SNDBUF, i32::MAX);
                }
            }
            old
        })
        .collect();
    run_exchange(&mut ex, true);
    for (e, old) in ex.iter().zip(bufs) {
        if let Some(v) = old.filter(|_| !e.body.is_empty()) {
            // getsockopt reports twice what setsockopt takes; a value
            // past the sysctl limit came from SO_SNDBUFFORCE.
            let v = (v / 2).max(1);
            if !set_int(e.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v) {
                set_int(e.fd, libc::SOL_SOCKET, libc::SO_SNDBUF, v);
            }
        }
    }
    for e in &ex {
        if e.broken {
            dmtcp::warn(format_args!(
                "socket fd {}: the connection broke while its bytes in flight were put back",
                e.fd
            ));
        }
        if e.shut_after {
            // SAFETY: shutting the write side, as the program had done.
            unsafe { libc::shutdown(e.fd, libc::SHUT_WR) };
        }
    }
}

/// One stage of [`exchange`]: the messages, or the raw write-back.
fn run_exchange(ex: &mut [Ex], writeback: bool) {
    let start = std::time::Instant::now();
    let mut warned = false;
    loop {
        let mut pfds = Vec::new();
        for e in ex.iter_mut().filter(|e| !e.broken) {
            if writeback {
                if e.wb < e.body.len() {
                    match send_some(e.fd, &e.body[e.wb..]) {
                        Ok(n) => e.wb += n,
                        Err(_) => e.broken = true,
                    }
                }
                if e.wb < e.body.len() && !e.broken {
                    pfds.push(libc::pollfd {
                        fd: e.fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                }
                continue;
            }
            if e.sent < e.out.len() {
                match send_some(e.fd, &e.out[e.sent..]) {
                    Ok(n) => e.sent += n,
                    Err(_) => e.broken = true,
                }
            }
            while !e.in_done && !e.broken {
                if e.got < 16 {
                    let mut h = [0u8; 16];
                    match recv_some(e.fd, &mut h[..16 - e.got], 0) {
                        Ok(Some(0)) => e.in_done = true,
                        Ok(Some(n)) => {
                            e.hdr[e.got..e.got + n].copy_from_slice(&h[..n]);
                            e.got += n;
                            if e.got == 16 {
                                if e.hdr[..8] != MAGIC {
                                    dmtcp::warn(format_args!("socket fd {}: unexpected bytes instead of the refill message", e.fd));
                                    e.broken = true;
                                }
                                let mut l = [0u8; 8];
                                l.copy_from_slice(&e.hdr[8..]);
                                e.need = u64::from_le_bytes(l) as usize;
                                e.in_done = e.need == 0;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => e.broken = true,
                    }
                } else {
                    let want = (e.need - e.body.len()).min(1 << 16);
                    let at = e.body.len();
                    e.body.resize(at + want, 0);
                    match recv_some(e.fd, &mut e.body[at..], 0) {
                        Ok(Some(0)) => {
                            e.body.truncate(at);
                            e.in_done = true;
                        }
                        Ok(Some(n)) => {
                            e.body.truncate(at + n);
                            e.in_done = e.body.len() == e.need;
                        }
                        Ok(None) => {
                            e.body.truncate(at);
                            break;
                        }
                        Err(_) => {
                            e.body.truncate(at);
                            e.broken = true;
                        }
                    }
                }
            }
            let mut ev = 0;
            if !e.in_done {
                ev |= libc::POLLIN;
            }
            if e.sent < e.out.len() {
                ev |= libc::POLLOUT;
            }
            if ev != 0 && !e.broken {
                pfds.push(libc::pollfd {
                    fd: e.fd,
                    events: ev,
                    revents: 0,
                });
            }
        }
        if pfds.is_empty() {
            break;
        }
        let t = start.elapsed();
        if t > std::time::Duration::from_secs(10) && !warned {
            warned = true;
            for e in ex.iter().filter(|e| pfds.iter().any(|p| p.fd == e.fd)) {
                // Where it waits: its message out, the other end's in, or
                // (after the barrier) the raw bytes back into the socket.
                dmtcp::warn(format_args!(
                    "refilling socket fd {} takes long ({}): sent {} of {}, got {} of {}, wrote back {} of {}",
                    e.fd,
                    if writeback { "write-back" } else { "messages" },
                    e.sent,
                    e.out.len(),
                    e.got.min(16) + e.body.len(),
                    if e.got < 16 { 16 } else { 16 + e.need },
                    e.wb,
                    e.body.len()
                ));
            }
        }
        if t > std::time::Duration::from_secs(120) {
            for p in &pfds {
                dmtcp::warn(format_args!(
                    "socket fd {}: gave up refilling after 120 s; bytes in flight were lost",
                    p.fd
                ));
            }
            for e in ex.iter_mut() {
                if pfds.iter().any(|p| p.fd == e.fd) {
                    e.broken = true;
                }
            }
            break;
        }
        poll_wait(&mut pfds, 100);
    }
}

fn resume() {
    if !DRAINED.swap(false, core::sync::atomic::Ordering::SeqCst) {
        return;
    }
    SAVED.with(|v| finish_drains(v));
    let list: Vec<(i32, Vec<u8>, bool)> = SAVED.with(|v| {
        v.iter_mut()
            .filter(|s| s.leader && s.consume)
            .map(|s| (s.rec.fd, core::mem::take(&mut s.data), false))
            .collect()
    });
    exchange(list, "sock:refilled");
    reconnect_all();
    SAVED.with(|v| {
        v.iter_mut().for_each(|s| {
            s.data = Vec::new();
            s.rec.dgrams = Vec::new();
        })
    });
}

/// This round's pre-checkpoint ran (and drained): its resume has work. A
/// round broken before its pre-checkpoint resumes with nothing to do.
static DRAINED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn is_socket(fd: i32) -> bool {
    dmtcp::fds::fd_is(fd, libc::S_IFSOCK)
}

/// A closed connection of the same kind at `s.rec.fd`: the bytes that were
/// waiting, then end of stream (the other end had closed) or a reset.
fn make_dead(s: &Sock) {
    let r = &s.rec;
    let p = match dmtcp_common::sock::pair(r) {
        Ok((near, far)) => [near, far],
        Err(e) => {
            dmtcp::warn(format_args!(
                "socket fd {}: cannot re-create it closed: {e}",
                r.fd
            ));
            return;
        }
    };
    // SAFETY: socket calls on fds of our own; addresses are local structs.
    unsafe {
        let mut done = 0;
        if !s.data.is_empty() {
            // Room for all the bytes: past the sysctl limits where allowed
            // (CAP_NET_ADMIN), else up to them.
            let want = (s.data.len() as i32).saturating_mul(2);
            if !set_int(p[1], libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want) {
                set_int(p[1], libc::SOL_SOCKET, libc::SO_SNDBUF, want);
            }
            if !set_int(p[0], libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want) {
                set_int(p[0], libc::SOL_SOCKET, libc::SO_RCVBUF, want);
            }
            while done < s.data.len() {
                match send_some(p[1], &s.data[done..]) {
                    Ok(n) if n > 0 => done += n,
                    _ => break,
                }
            }
            if done < s.data.len() {
                dmtcp::warn(format_args!(
                    "socket fd {}: {} of its {} unread bytes could not be put back",
                    r.fd,
                    s.data.len() - done,
                    s.data.len()
                ));
            }
        }
        if r.domain != libc::AF_UNIX && !s.peer_shut {
            // A reset: the program sees ECONNRESET after the unread bytes.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            libc::setsockopt(
                p[1],
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                8,
            );
        }
        libc::close(p[1]);
        if p[0] != r.fd {
            libc::dup2(p[0], r.fd);
            libc::close(p[0]);
        }
    }
}

fn restart() {
    DRAINED.store(false, core::sync::atomic::Ordering::SeqCst);
    SAVED.with(|v| {
        for s in v.iter() {
            let r = &s.rec;
            if r.fd <= 2 && r.state != SockState::Pair {
                continue; // stdio outside the job: keep what dmtcp_restart gave us
            }
            if r.state == SockState::Dead {
                if s.leader {
                    make_dead(s);
                } else {
                    make_dead(&Sock { data: Vec::new(), ..s.clone() });
                }
            } else if !is_socket(r.fd) {
                dmtcp::warn(format_args!("socket fd {} was not re-created (restart without a pid namespace?); it stays closed", r.fd));
                continue;
            }
            put_back_opts(s);
        }
    });
}

/// The socket's saved options and fd flags, set on the (new) socket at its fd.
fn put_back_opts(s: &Sock) {
    let r = &s.rec;
    for (level, opt, val) in &s.opts {
        // SAFETY: setsockopt reads our saved bytes.
        unsafe {
            libc::setsockopt(
                r.fd,
                *level,
                *opt,
                val.as_ptr() as *const libc::c_void,
                val.len() as libc::socklen_t,
            )
        };
    }
    // SAFETY: flags of an fd of the program.
    unsafe {
        libc::fcntl(
            r.fd,
            libc::F_SETFL,
            s.flags & (libc::O_NONBLOCK | libc::O_ASYNC),
        );
        libc::fcntl(
            r.fd,
            libc::F_SETFD,
            if s.cloexec { libc::FD_CLOEXEC } else { 0 },
        );
    }
}

/// After the whole job is back (the "restarted" barrier), before user
/// threads run: refill in-job connections.
fn after_restart() {
    let list: Vec<(i32, Vec<u8>, bool)> = SAVED.with(|v| {
        v.iter_mut()
            .filter(|s| {
                s.leader && s.stream_conn && s.rec.state == SockState::Pair && is_socket(s.rec.fd)
            })
            .map(|s| (s.rec.fd, core::mem::take(&mut s.data), s.my_shut))
            .collect()
    });
    exchange(list, "sock:restored");
    reconnect_all();
}

/// Every client end whose connection was adopted at checkpoint connects
/// again (after the whole job is back: the listener is there).
fn reconnect_all() {
    let ends: Vec<Sock> = SAVED.with(|v| {
        v.iter()
            .filter(|s| s.leader && s.reconnect)
            .cloned()
            .collect()
    });
    for s in &ends {
        reconnect(s);
    }
    SAVED.with(|v| v.iter_mut().for_each(|s| s.resend = Vec::new()));
}

/// Before user threads are suspended: gives the program up to half a second
/// to accept the connections waiting in its TCP listeners' queues. A
/// connection still waiting there at checkpoint time belongs to no process
/// yet: one from the job is adopted ([`adopt_waiting`]), but one from
/// outside cannot be, and a restart gives its client a reset
/// (docs/architecture.md, limits); this narrows that window to
/// connections made in the last instants before suspension.
fn let_accepts_finish() {
    let start = std::time::Instant::now();
    let listeners: Vec<i32> = dmtcp::fds::socket_fds()
        .into_iter()
        .map(|(fd, _)| fd)
        .filter(|&fd| {
            get_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
                && get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
        })
        .collect();
    // struct tcp_info of a listener: tcpi_unacked (offset 24) is the
    // number of connections waiting to be accepted.
    let waiting = |fd: i32| {
        get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 32)
            .is_some_and(|v| v.len() >= 28 && u32::from_ne_bytes([v[24], v[25], v[26], v[27]]) > 0)
    };
    while listeners.iter().any(|&fd| waiting(fd))
        && start.elapsed() < std::time::Duration::from_millis(500)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The plugin.
pub struct SocketPlugin;

impl Plugin for SocketPlugin {
    fn name(&self) -> &'static str {
        "socket"
    }
    fn event(&self, ev: Event) {
        match ev {
            Event::PreSuspend => let_accepts_finish(),
            Event::PreCheckpoint => checkpoint(),
            Event::Resume => resume(),
            Event::Restart => restart(),
            Event::Restarted => after_restart(),
            _ => {}
        }
    }
    fn claims_fd(&self, d: &FdDesc) -> bool {
        d.fmt == libc::S_IFSOCK
    }
    /// Sockets are made by dmtcp_restart (or by this plugin's restart).
    fn keeps_fd(&self, fd: i32) -> bool {
        is_socket(fd)
    }
    fn records(&self, tree: &mut Tree) {
        tree.socks = records();
    }
}
