//! A device's network configuration through route netlink: read at
//! checkpoint (link MTU, MAC, queue length, up, bridge master; addresses;
//! routes through it), written again at restart onto the re-created
//! device. Messages are built and parsed as bytes here; the socket is
//! `sys::Netlink`.

use crate::sys::Netlink;
use std::ffi::c_int;
use std::io;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;
const RTMSG: usize = 12;

const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_TXQLEN: u16 = 13;
const IFLA_LINKINFO: u16 = 18;
const IFLA_CARRIER: u16 = 33;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;

const IFA_CACHEINFO: u16 = 6;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_CACHEINFO: u16 = 12;
const RTA_TABLE: u16 = 15;

const RT_TABLE_LOCAL: u32 = 255;
const RTPROT_KERNEL: u8 = 2;
const RTM_F_CLONED: u32 = 0x200;
const RT_SCOPE_LINK: u8 = 253;
const IFF_UP: u32 = 1;

/// What the device had at checkpoint.
#[derive(Debug, Default, Clone)]
pub(crate) struct NetState {
    pub(crate) mtu: Option<u32>,
    /// Hardware address (tap devices only).
    pub(crate) mac: Option<Vec<u8>>,
    pub(crate) txqlen: Option<u32>,
    pub(crate) up: bool,
    /// Name of the bridge (or other master) it was enslaved to.
    pub(crate) master: Option<String>,
    /// Bodies (ifaddrmsg + attributes) of its addresses.
    pub(crate) addrs: Vec<Vec<u8>>,
    /// Bodies (rtmsg + attributes) of the routes through it.
    pub(crate) routes: Vec<Vec<u8>>,
    /// Owner and group of the tun device when set (the kernel's link
    /// info: known even when the program set them with a raw syscall).
    pub(crate) owner: Option<u32>,
    pub(crate) group: Option<u32>,
    /// Carrier (with a queue attached, off only if the program said so).
    pub(crate) carrier: Option<u8>,
    /// TUNSETIFF flags as the link info tells them (type, IFF_NO_PI,
    /// IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST); 0 if it does not.
    pub(crate) tun_flags: i16,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes (type, payload) that follow a fixed header of `fixed`
/// bytes in a message body.
fn attrs(body: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    let mut o = fixed;
    while o + 4 <= body.len() {
        let len = u16_at(body, o) as usize;
        if len < 4 || o + len > body.len() {
            break;
        }
        v.push((u16_at(body, o + 2) & 0x3fff, &body[o + 4..o + len]));
        o += align4(len);
    }
    v
}

fn push_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn message(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + body.len());
    m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends a request and collects the bodies of the (type, body) replies
/// until the dump ends or the acknowledgement comes. An error reply
/// becomes the error.
fn request(nl: &Netlink, ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    nl.send(&message(ty, flags, body))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = nl.recv(&mut buf)?;
        let mut o = 0;
        while o + NLMSG_HDR <= n {
            let len = u32_at(&buf, o) as usize;
            if len < NLMSG_HDR || o + len > n {
                break;
            }
            let mty = u16_at(&buf, o + 4);
            let mflags = u16_at(&buf, o + 6);
            let body = &buf[o + NLMSG_HDR..o + len];
            match mty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = if body.len() >= 4 {
                        i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                    } else {
                        0
                    };
                    if e != 0 {
                        return Err(io::Error::from_raw_os_error(-e));
                    }
                    return Ok(out);
                }
                _ => {
                    out.push((mty, body.to_vec()));
                    // A reply that is not part of a dump is the whole answer.
                    if mflags & 2 == 0 && flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0
                    {
                        return Ok(out);
                    }
                }
            }
            o += align4(len);
        }
    }
}

/// Reads the configuration of interface `index`.
pub(crate) fn capture(index: u32, tap: bool) -> io::Result<NetState> {
    let nl = Netlink::open()?;
    let mut s = NetState::default();
    let mut ifi = [0u8; IFINFOMSG];
    ifi[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    for (ty, body) in request(&nl, RTM_GETLINK, NLM_F_REQUEST, &ifi)? {
        if ty != RTM_NEWLINK || body.len() < IFINFOMSG {
            continue;
        }
        s.up = u32_at(&body, 8) & IFF_UP != 0;
        for (a, d) in attrs(&body, IFINFOMSG) {
            match a {
                IFLA_MTU if d.len() >= 4 => s.mtu = Some(u32_at(d, 0)),
                IFLA_TXQLEN if d.len() >= 4 => s.txqlen = Some(u32_at(d, 0)),
                IFLA_ADDRESS if tap => s.mac = Some(d.to_vec()),
                IFLA_MASTER if d.len() >= 4 => s.master = crate::sys::if_name(u32_at(d, 0)),
                IFLA_CARRIER if !d.is_empty() => s.carrier = Some(d[0]),
                IFLA_LINKINFO => {
                    let info = attrs(d, 0);
                    // The data's attributes mean what they mean for a tun
                    // device only (a bridge's are others).
                    let tun = info.iter().any(|(t, k)| {
                        *t == IFLA_INFO_KIND && k.strip_suffix(b"\0") == Some(&b"tun"[..])
                    });
                    for (t, data) in info {
                        if t != IFLA_INFO_DATA || !tun {
                            continue;
                        }
                        for (k, v) in attrs(data, 0) {
                            let on = v.first().is_some_and(|&b| b != 0);
                            let f = |flag: c_int| if on { flag as i16 } else { 0 };
                            match k {
                                IFLA_TUN_OWNER if v.len() >= 4 => s.owner = Some(u32_at(v, 0)),
                                IFLA_TUN_GROUP if v.len() >= 4 => s.group = Some(u32_at(v, 0)),
                                IFLA_TUN_TYPE if !v.is_empty() => s.tun_flags |= v[0] as i16 & 0xf,
                                IFLA_TUN_PI if !on => s.tun_flags |= libc::IFF_NO_PI as i16,
                                IFLA_TUN_VNET_HDR => s.tun_flags |= f(libc::IFF_VNET_HDR),
                                IFLA_TUN_PERSIST => s.tun_flags |= f(libc::IFF_PERSIST),
                                IFLA_TUN_MULTI_QUEUE => s.tun_flags |= f(libc::IFF_MULTI_QUEUE),
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Without the device type the rest says nothing.
    if s.tun_flags & 0xf == 0 {
        s.tun_flags = 0;
    }
    let ifa = [0u8; IFADDRMSG];
    for (ty, body) in request(&nl, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, &ifa)? {
        if ty != RTM_NEWADDR || body.len() < IFADDRMSG || u32_at(&body, 4) != index {
            continue;
        }
        // IPv6 link-local addresses are the kernel's own (made again when
        // the device comes up).
        if body[0] == libc::AF_INET6 as u8 && body[3] == RT_SCOPE_LINK {
            continue;
        }
        s.addrs.push(body);
    }
    let rtm = [0u8; RTMSG];
    for (ty, body) in request(&nl, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, &rtm)? {
        if ty != RTM_NEWROUTE || body.len() < RTMSG {
            continue;
        }
        let a = attrs(&body, RTMSG);
        let table = a
            .iter()
            .find(|(t, d)| *t == RTA_TABLE && d.len() >= 4)
            .map(|(_, d)| u32_at(d, 0))
            .unwrap_or(body[4] as u32);
        let oif = a
            .iter()
            .find(|(t, d)| *t == RTA_OIF && d.len() >= 4)
            .map(|(_, d)| u32_at(d, 0));
        // Routes the kernel made itself (for an address, the local
        // table, cached clones) come back with the addresses.
        if oif != Some(index)
            || table == RT_TABLE_LOCAL
            || body[5] == RTPROT_KERNEL
            || u32_at(&body, 8) & RTM_F_CLONED != 0
            || a.iter().any(|(t, _)| *t == RTA_MULTIPATH)
        {
            continue;
        }
        s.routes.push(body);
    }
    Ok(s)
}

/// Ignores "exists already" (a persistent device kept its configuration).
fn exists_ok(r: io::Result<Vec<(u16, Vec<u8>)>>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_link(
    nl: &Netlink,
    index: u32,
    flags: u32,
    change: u32,
    attr: Option<(u16, &[u8])>,
) -> io::Result<()> {
    let mut b = vec![0u8; IFINFOMSG];
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    if let Some((t, d)) = attr {
        push_attr(&mut b, t, d);
    }
    request(nl, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, &b).map(|_| ())
}

/// Copies a body with the fixed header, dropping attributes `drop` and
/// replacing the 4-byte attribute `oif` (if any) with `index`.
fn rebuild(body: &[u8], fixed: usize, drop: u16, oif: Option<u16>, index: u32) -> Vec<u8> {
    let mut b = body[..fixed].to_vec();
    for (t, d) in attrs(body, fixed) {
        if t == drop {
            continue;
        }
        if Some(t) == oif {
            push_attr(&mut b, t, &index.to_ne_bytes());
        } else {
            push_attr(&mut b, t, d);
        }
    }
    b
}

/// Applies `s` to interface `index` (the re-created device). Each failure
/// is reported to `warn` and the rest still applied.
pub(crate) fn apply(index: u32, s: &NetState, warn: &mut dyn FnMut(String)) -> io::Result<()> {
    let nl = Netlink::open()?;
    if let Some(m) = &s.mac {
        if let Err(e) = set_link(&nl, index, 0, 0, Some((IFLA_ADDRESS, m))) {
            warn(format!("cannot set its hardware address again: {e}"));
        }
    }
    if let Some(m) = s.mtu {
        if let Err(e) = set_link(&nl, index, 0, 0, Some((IFLA_MTU, &m.to_ne_bytes()))) {
            warn(format!("cannot set its MTU to {m} again: {e}"));
        }
    }
    if let Some(q) = s.txqlen {
        if let Err(e) = set_link(&nl, index, 0, 0, Some((IFLA_TXQLEN, &q.to_ne_bytes()))) {
            warn(format!("cannot set its queue length to {q} again: {e}"));
        }
    }
    if let Some(m) = &s.master {
        match crate::sys::if_index(m) {
            0 => warn(format!(
                "its master {m} (a bridge?) does not exist here: the device stays alone"
            )),
            mi => {
                if let Err(e) = set_link(&nl, index, 0, 0, Some((IFLA_MASTER, &mi.to_ne_bytes()))) {
                    warn(format!("cannot put it into {m} again: {e}"));
                }
            }
        }
    }
    let new = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    for a in &s.addrs {
        let mut b = rebuild(a, IFADDRMSG, IFA_CACHEINFO, None, index);
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        if let Err(e) = exists_ok(request(&nl, RTM_NEWADDR, new, &b)) {
            warn(format!("cannot add an address again: {e}"));
        }
    }
    if s.up {
        if let Err(e) = set_link(&nl, index, IFF_UP, IFF_UP, None) {
            warn(format!("cannot bring it up again: {e}"));
        }
    }
    for r in &s.routes {
        let b = rebuild(r, RTMSG, RTA_CACHEINFO, Some(RTA_OIF), index);
        if let Err(e) = exists_ok(request(&nl, RTM_NEWROUTE, new, &b)) {
            warn(format!("cannot add a route again: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut b = vec![9u8; RTMSG];
        push_attr(&mut b, RTA_OIF, &7u32.to_ne_bytes());
        push_attr(&mut b, 1, &[10, 0, 0]);
        push_attr(&mut b, RTA_CACHEINFO, &[1, 2, 3, 4, 5]);
        let r = rebuild(&b, RTMSG, RTA_CACHEINFO, Some(RTA_OIF), 42);
        let a = attrs(&r, RTMSG);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (RTA_OIF, &42u32.to_ne_bytes()[..]));
        assert_eq!(a[1], (1, &[10u8, 0, 0][..]));
        assert_eq!(&r[..RTMSG], &[9u8; RTMSG]);
    }
}
