//! Connections between processes restarted by different `dmtcp_restart`s.
//!
//! A job that spanned hosts is restarted by one `dmtcp_restart` per host
//! (the restart script), so the two ends of a TCP connection between two
//! hosts are in the hands of two `dmtcp_restart`s that know nothing of each
//! other except the coordinator. They meet through its name service:
//!
//! 1. The end recorded as side 0 of the pair listens (one listener per
//!    kind of socket, on every address of this host) and publishes where,
//!    under the pair's name, in the database [`DB`].
//! 2. The end recorded as side 1 looks the name up, connects, and sends a
//!    hello naming the pair; side 0 answers with one byte once it holds the
//!    accepted socket under that name. An entry left from an earlier
//!    restart of the same images leads nowhere or to a listener that does
//!    not know the pair: side 1 then looks again until the new entry is
//!    there.
//!
//! Both steps run at once (listening in a thread of its own), so two
//! `dmtcp_restart`s that each hold a side 0 and a side 1 of different
//! pairs never wait for each other. The connection made is of the same
//! kind as the old one (TCP over IPv4 or IPv6, or a Unix stream or
//! seqpacket connection when both ends are on one host); the bytes that
//! were in flight are given back over it by the processes themselves,
//! as for any connection of the job.

use dmtcp_common::image::SockRec;
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The name-service database of the rendezvous (not a `dmtcp:` one: those
/// are cleared when the computation empties, which it may do while a
/// slower host's `dmtcp_restart` is still to come).
const DB: &str = "dmtcp-restart:sock";
const HELLO: &[u8; 8] = b"DMTCPRJ1";
/// How long an end waits for its other end (`DMTCP_RESTART_CONNECT_TIMEOUT`).
const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// A connection to the coordinator's name service.
pub struct NameService {
    w: std::net::TcpStream,
    r: std::io::BufReader<std::net::TcpStream>,
}

impl NameService {
    pub fn connect(host: &str, port: u16) -> std::io::Result<NameService> {
        use dmtcp_common::proto;
        let s = std::net::TcpStream::connect((host, port))?;
        let _ = s.set_nodelay(true);
        let mut w = s.try_clone()?;
        let mut hello = crate::command::tool_hello("dmtcp_restart");
        if let proto::ToCoord::Hello { auth, .. } = &mut hello {
            *auth =
                Some(crate::client::authenticate(&s, host, port).map_err(std::io::Error::other)?);
        }
        proto::send(&mut w, &hello)?;
        Ok(NameService {
            w,
            r: std::io::BufReader::new(s),
        })
    }

    pub fn put(&mut self, key: &str, val: Vec<u8>) -> std::io::Result<()> {
        let m = dmtcp_common::proto::ToCoord::KvPut {
            db: DB.into(),
            key: key.as_bytes().to_vec(),
            val,
        };
        dmtcp_common::proto::send(&mut self.w, &m)
    }

    pub fn get(&mut self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        use dmtcp_common::proto::{FromCoord, ToCoord};
        dmtcp_common::proto::send(
            &mut self.w,
            &ToCoord::KvGet {
                db: DB.into(),
                key: key.as_bytes().to_vec(),
            },
        )?;
        match dmtcp_common::proto::recv::<_, FromCoord>(&mut self.r)? {
            Some(FromCoord::KvValue { val }) => Ok(val),
            Some(other) => Err(std::io::Error::other(format!(
                "unexpected answer from the coordinator: {other:?}"
            ))),
            None => Err(std::io::Error::other(
                "the coordinator closed the connection",
            )),
        }
    }

    /// This host's address as the coordinator sees it.
    fn local_ip(&self) -> Option<IpAddr> {
        self.w.local_addr().ok().map(|a| a.ip())
    }
}

/// The IPv4 addresses of this host's interfaces, loopback left out.
fn interface_ips() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = core::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is walked read-only and freed
    // once; each entry's address is read as sockaddr_in only when its
    // family says AF_INET.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut p = list;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Where a side 0 waits: its host and the addresses to try, best first.
#[derive(Debug, PartialEq)]
struct Offer {
    host: String,
    addrs: Vec<String>,
}

impl Offer {
    fn encode(&self) -> Vec<u8> {
        serde_json::json!({ "host": self.host, "addrs": self.addrs })
            .to_string()
            .into_bytes()
    }
    fn decode(b: &[u8]) -> Option<Offer> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let addrs = v["addrs"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        Some(Offer {
            host: v["host"].as_str()?.to_string(),
            addrs,
        })
    }
}

/// The kind of socket a record needs: (domain, type).
fn kind(r: &SockRec) -> (i32, i32) {
    (r.domain, r.stype)
}

fn abstract_addr(name: &str) -> std::io::Result<SockAddr> {
    SockAddr::unix(format!("\0{name}"))
}

/// A listener of the kind `k`, and the addresses it can be reached at.
fn listen(k: (i32, i32), ns: &NameService, tag: &str) -> std::io::Result<(Socket, Vec<String>)> {
    let (domain, stype) = k;
    let s = Socket::new(Domain::from(domain), Type::from(stype), None)?;
    let mut addrs = Vec::new();
    match domain {
        libc::AF_UNIX => {
            let name = format!("dmtcp-rejoin-{tag}-{stype}");
            s.bind(&abstract_addr(&name)?)?;
            addrs.push(format!("unix:{name}"));
        }
        libc::AF_INET | libc::AF_INET6 => {
            let any: SocketAddr = if domain == libc::AF_INET {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            if domain == libc::AF_INET6 {
                s.set_only_v6(false)?;
            }
            s.bind(&any.into())?;
            let port = s.local_addr()?.as_socket().map(|a| a.port()).unwrap_or(0);
            let mut ips: Vec<Ipv4Addr> = Vec::new();
            if let Some(IpAddr::V4(ip)) = ns.local_ip().filter(|ip| !ip.is_loopback()) {
                ips.push(ip);
            }
            for ip in interface_ips() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            ips.push(Ipv4Addr::LOCALHOST);
            for ip in ips {
                let a = if domain == libc::AF_INET {
                    SocketAddr::new(IpAddr::V4(ip), port)
                } else {
                    SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), port)
                };
                addrs.push(a.to_string());
            }
        }
        _ => return Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    }
    s.listen(libc::SOMAXCONN)?;
    Ok((s, addrs))
}

fn sockaddr(addr: &str) -> std::io::Result<SockAddr> {
    match addr.strip_prefix("unix:") {
        Some(name) => abstract_addr(name),
        None => Ok(addr
            .parse::<SocketAddr>()
            .map_err(std::io::Error::other)?
            .into()),
    }
}

fn hello(pair: &str) -> Vec<u8> {
    let mut m = HELLO.to_vec();
    m.extend_from_slice(&(pair.len() as u16).to_le_bytes());
    m.extend_from_slice(pair.as_bytes());
    m
}

/// The pair a complete hello names; None while `b` is still short; an
/// error if it is no hello.
fn parse_hello(b: &[u8]) -> Result<Option<String>, ()> {
    let n = b.len().min(8);
    if b[..n] != HELLO[..n] {
        return Err(());
    }
    if b.len() < 10 {
        return Ok(None);
    }
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    match b.len().cmp(&(10 + len)) {
        std::cmp::Ordering::Less => Ok(None),
        std::cmp::Ordering::Equal => String::from_utf8(b[10..].to_vec())
            .map(Some)
            .map_err(|_| ()),
        std::cmp::Ordering::Greater => Err(()),
    }
}

/// A side 1 end on its way to its other end.
enum Step {
    /// Look the offer up (again) at this time.
    Lookup(Instant),
    /// Try the offer's address number `i` next.
    Try(usize),
    Connecting(Socket, usize, Instant),
    AwaitAck(Socket, usize, Instant),
    Done(Socket),
}

struct Outgoing<'a> {
    rec: &'a SockRec,
    addrs: Vec<String>,
    host: String,
    step: Step,
    last: String,
}

/// An accepted connection whose hello is still being read.
struct Incoming {
    sock: Socket,
    buf: Vec<u8>,
    since: Instant,
}

fn raw(s: &Socket) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(s)
}

/// Bytes waiting on a nonblocking socket, appended to `buf` (at most
/// `max` in all); Err at end of stream or on an error.
fn read_some(s: &Socket, buf: &mut Vec<u8>, max: usize) -> Result<(), ()> {
    let mut tmp = [0u8; 512];
    let want = max.saturating_sub(buf.len()).clamp(1, tmp.len());
    match (&*s).read(&mut tmp[..want]) {
        Ok(0) => Err(()),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted =>
        {
            Ok(())
        }
        Err(_) => Err(()),
    }
}

impl Outgoing<'_> {
    /// Move on as far as possible without waiting.
    fn advance(&mut self, ns: &mut NameService, me: &str) -> std::io::Result<()> {
        let now = Instant::now();
        loop {
            match std::mem::replace(&mut self.step, Step::Try(usize::MAX)) {
                Step::Lookup(at) if now < at => {
                    self.step = Step::Lookup(at);
                    return Ok(());
                }
                Step::Lookup(_) => match ns.get(&self.rec.pair)?.and_then(|v| Offer::decode(&v)) {
                    Some(o) => {
                        let same_host = o.host == me;
                        self.addrs = o
                            .addrs
                            .into_iter()
                            .filter(|a| {
                                same_host || !(a.starts_with("unix:") || a.contains("127.0.0.1"))
                            })
                            .collect();
                        if self.addrs.is_empty() {
                            self.last = format!("its other end is now on host {} and a Unix socket cannot reach there", o.host);
                        }
                        self.host = o.host;
                        self.step = Step::Try(0);
                    }
                    None => {
                        self.step = Step::Lookup(now + Duration::from_millis(50));
                        return Ok(());
                    }
                },
                Step::Try(i) if i >= self.addrs.len() => {
                    self.step = Step::Lookup(now + Duration::from_millis(100));
                    return Ok(());
                }
                Step::Try(i) => {
                    let attempt = sockaddr(&self.addrs[i]).and_then(|sa| {
                        let s = Socket::new(
                            Domain::from(self.rec.domain),
                            Type::from(self.rec.stype),
                            None,
                        )?;
                        s.set_nonblocking(true)?;
                        match s.connect(&sa) {
                            Ok(()) => Ok(s),
                            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
                            Err(e) => Err(e),
                        }
                    });
                    match attempt {
                        Ok(s) => self.step = Step::Connecting(s, i, now),
                        Err(e) => {
                            self.last = format!("{} ({}): {e}", self.addrs[i], self.host);
                            self.step = Step::Try(i + 1);
                        }
                    }
                }
                other => {
                    self.step = other;
                    return Ok(());
                }
            }
        }
    }

    /// What the step waits for: (fd, poll events).
    fn waits(&self) -> Option<(i32, i16)> {
        match &self.step {
            Step::Connecting(s, ..) => Some((raw(s), libc::POLLOUT)),
            Step::AwaitAck(s, ..) => Some((raw(s), libc::POLLIN)),
            _ => None,
        }
    }

    /// The socket waited for is ready (or the wait is over).
    fn ready(&mut self, revents: i16) {
        let now = Instant::now();
        self.step = match std::mem::replace(&mut self.step, Step::Try(usize::MAX)) {
            Step::Connecting(s, i, since) => {
                if revents == 0 {
                    if now.duration_since(since) > Duration::from_secs(2) {
                        self.last =
                            format!("{} ({}): connection timed out", self.addrs[i], self.host);
                        Step::Try(i + 1)
                    } else {
                        Step::Connecting(s, i, since)
                    }
                } else {
                    match s.take_error() {
                        Ok(None) => match (&s).write(&hello(&self.rec.pair)) {
                            // A few bytes into a new connection's empty buffer.
                            Ok(n) if n == hello(&self.rec.pair).len() => Step::AwaitAck(s, i, now),
                            _ => Step::Try(i + 1),
                        },
                        Ok(Some(e)) | Err(e) => {
                            self.last = format!("{} ({}): {e}", self.addrs[i], self.host);
                            Step::Try(i + 1)
                        }
                    }
                }
            }
            Step::AwaitAck(s, i, since) => {
                let mut b = Vec::new();
                let r = if revents == 0 {
                    Ok(())
                } else {
                    read_some(&s, &mut b, 1)
                };
                if r.is_ok() && b == b"K" {
                    Step::Done(s)
                } else if r.is_err()
                    || !b.is_empty()
                    || now.duration_since(since) > Duration::from_secs(5)
                {
                    // A listener from an earlier restart, or one that does
                    // not know this pair (yet): look again.
                    self.last = format!(
                        "{} ({}): not answered for this connection",
                        self.addrs[i], self.host
                    );
                    Step::Lookup(now + Duration::from_millis(100))
                } else {
                    Step::AwaitAck(s, i, since)
                }
            }
            other => other,
        };
    }
}

fn wait_limit() -> Duration {
    std::env::var("DMTCP_RESTART_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WAIT)
}

/// Make the connections of `recs` (pair ends whose other end another
/// `dmtcp_restart` holds), keyed by pair name. Ends that could not be
/// connected are reported through `warn` and left out. One loop serves
/// both sides (no threads: this process may be in a pid namespace it
/// cannot start threads in).
pub fn connect_across(
    recs: &[&SockRec],
    coord: (&str, u16),
    warn: &mut dyn FnMut(String),
) -> BTreeMap<String, i32> {
    use std::os::fd::IntoRawFd;
    let mut out = BTreeMap::new();
    if recs.is_empty() {
        return out;
    }
    let mut ns = match NameService::connect(coord.0, coord.1) {
        Ok(n) => n,
        Err(e) => {
            warn(format!(
                "cannot reach the coordinator to re-make {} connection(s) with other hosts: {e}",
                recs.len()
            ));
            return out;
        }
    };
    let limit = wait_limit();
    let deadline = Instant::now() + limit;
    let me = dmtcp_common::hostname();
    let tag = format!("{}-{:x}", std::process::id(), rand_u64());
    // Side 0: one listener per kind; publish it under every pair name.
    let mut listeners: BTreeMap<(i32, i32), (Socket, Vec<String>)> = BTreeMap::new();
    let mut want: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.side == 0) {
        let k = kind(r);
        let addrs = match listeners.entry(k) {
            std::collections::btree_map::Entry::Occupied(o) => o.get().1.clone(),
            std::collections::btree_map::Entry::Vacant(v) => match listen(k, &ns, &tag) {
                Ok(l) => {
                    let _ = l.0.set_nonblocking(true);
                    v.insert(l).1.clone()
                }
                Err(e) => {
                    warn(format!(
                        "socket fd {}: cannot listen for its other end ({}): {e}",
                        r.fd, r.pair
                    ));
                    continue;
                }
            },
        };
        let offer = Offer {
            host: me.clone(),
            addrs,
        };
        if let Err(e) = ns.put(&r.pair, offer.encode()) {
            warn(format!(
                "socket fd {}: cannot publish where its other end finds it: {e}",
                r.fd
            ));
            continue;
        }
        want.insert(r.pair.clone(), k);
    }
    let expected: Vec<String> = want.keys().cloned().collect();
    let mut accepted: BTreeMap<String, Socket> = BTreeMap::new();
    let mut incoming: Vec<Incoming> = Vec::new();
    let mut outgoing: Vec<Outgoing> = recs
        .iter()
        .filter(|r| r.side == 1)
        .map(|r| Outgoing {
            rec: r,
            addrs: Vec::new(),
            host: String::new(),
            step: Step::Lookup(Instant::now()),
            last: "its other end was never published".into(),
        })
        .collect();
    let mut ns_broken = false;
    loop {
        let pending_out = outgoing.iter().any(|o| !matches!(o.step, Step::Done(_)));
        if (!pending_out && want.is_empty()) || Instant::now() > deadline {
            break;
        }
        for o in outgoing.iter_mut() {
            if ns_broken {
                break;
            }
            if let Err(e) = o.advance(&mut ns, &me) {
                warn(format!(
                    "the coordinator's name service failed while re-making connections: {e}"
                ));
                ns_broken = true;
            }
        }
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        for (l, _) in listeners.values() {
            pfds.push(libc::pollfd {
                fd: raw(l),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for c in &incoming {
            pfds.push(libc::pollfd {
                fd: raw(&c.sock),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for o in &outgoing {
            if let Some((fd, ev)) = o.waits() {
                pfds.push(libc::pollfd {
                    fd,
                    events: ev,
                    revents: 0,
                });
            }
        }
        // SAFETY: poll on fds of our own sockets, in a local array.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 50) };
        let revents = |fd: i32| {
            pfds.iter()
                .find(|p| p.fd == fd)
                .map(|p| p.revents)
                .unwrap_or(0)
        };
        for (l, _) in listeners.values() {
            if revents(raw(l)) != 0 {
                while let Ok((s, _)) = l.accept() {
                    if s.set_nonblocking(true).is_ok() {
                        incoming.push(Incoming {
                            sock: s,
                            buf: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                }
            }
        }
        let now = Instant::now();
        for mut c in std::mem::take(&mut incoming) {
            if revents(raw(&c.sock)) != 0
                && read_some(&c.sock, &mut c.buf, 10 + u16::MAX as usize).is_err()
            {
                continue;
            }
            match parse_hello(&c.buf) {
                Ok(None) if now.duration_since(c.since) < Duration::from_secs(5) => {
                    incoming.push(c)
                }
                // A listener serves one kind of socket: the accepted one is
                // of the kind the program had.
                Ok(Some(pair))
                    if want.remove(&pair).is_some() && (&c.sock).write(b"K").ok() == Some(1) =>
                {
                    accepted.insert(pair, c.sock);
                }
                _ => {}
            }
        }
        for o in outgoing.iter_mut() {
            if let Some((fd, _)) = o.waits() {
                o.ready(revents(fd));
            }
        }
    }
    for o in outgoing {
        match o.step {
            Step::Done(s) => {
                let _ = s.set_nonblocking(false);
                out.insert(o.rec.pair.clone(), s.into_raw_fd());
            }
            _ => warn(format!(
                "socket fd {} (a connection of the job, {}): not re-made within {} s: {}",
                o.rec.fd,
                o.rec.pair,
                limit.as_secs(),
                o.last
            )),
        }
    }
    for p in expected {
        match accepted.remove(&p) {
            Some(s) => {
                let _ = s.set_nonblocking(false);
                out.insert(p, s.into_raw_fd());
            }
            None => warn(format!(
                "a connection of the job ({p}): its other end did not connect within {} s",
                limit.as_secs()
            )),
        }
    }
    out
}

fn rand_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: getrandom fills our 8 bytes.
    unsafe { libc::syscall(libc::SYS_getrandom, v.as_mut_ptr(), 8usize, 0) };
    u64::from_ne_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip() {
        let o = Offer {
            host: "node1".into(),
            addrs: vec!["10.0.0.2:4000".into(), "unix:x".into()],
        };
        assert_eq!(Offer::decode(&o.encode()), Some(o));
        assert_eq!(Offer::decode(b"{}"), None);
    }

    #[test]
    fn hello_names_the_pair() {
        let h = hello("t:1.2.3.4:5|6.7.8.9:10");
        assert_eq!(
            parse_hello(&h),
            Ok(Some("t:1.2.3.4:5|6.7.8.9:10".to_string()))
        );
        assert_eq!(parse_hello(&h[..4]), Ok(None));
        assert_eq!(parse_hello(&h[..12]), Ok(None));
        assert_eq!(parse_hello(b"GET / HTTP/1.0"), Err(()));
        let mut long = h.clone();
        long.push(b'x');
        assert_eq!(parse_hello(&long), Err(()));
    }
}
