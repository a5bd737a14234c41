//! What the plugin knows about the program's tun/tap devices, and the
//! checkpoint and restart work.
//!
//! PRESUSPEND (the program still runs): every fd that leads to
//! /dev/net/tun is found in /proc/self/fd and asked for its device
//! (TUNGETIFF: name and flags, persist included), sndbuf, vnet header size
//! and endianness; the device's network configuration is read through
//! netlink; the fds are claimed so the engine leaves them alone. The
//! snapshot is plugin memory, so it is in the image.
//!
//! RESTART: for each device, the fds are opened again on /dev/net/tun and
//! attached with the same name and flags (the first one creates the
//! device, with its old interface index when free; a persistent device
//! that still exists is attached to), the recorded settings are applied,
//! each fd is put back at its number, and the configuration (MAC, MTU,
//! bridge, addresses, up, routes) is written again.

use crate::netlink::{self, NetState};
use crate::sys;
use std::ffi::{c_int, c_ulong};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) static VHOST_SAID: AtomicBool = AtomicBool::new(false);
pub(crate) static EBPF_SAID: AtomicBool = AtomicBool::new(false);

/// A tun setting the program made (recorded once the kernel accepted it).
#[derive(Debug, Clone)]
pub(crate) enum Setting {
    Owner(c_ulong),
    Group(c_ulong),
    Link(c_ulong),
    Offload(c_ulong),
    TxFilter(Vec<u8>),
    /// Classic BPF instructions (8 bytes each); None: detached.
    Filter(Option<Vec<u8>>),
    Carrier(c_int),
    /// TUNSETQUEUE flags, and the device's name read before the call.
    Queue(i16, Option<String>),
}

/// Device-wide settings recorded from the program's ioctls.
#[derive(Debug, Clone, Default)]
struct DevSettings {
    name: String,
    owner: Option<c_ulong>,
    group: Option<c_ulong>,
    link: Option<c_ulong>,
    offload: Option<c_ulong>,
    txfilter: Option<Vec<u8>>,
    filter: Option<Vec<u8>>,
    carrier: Option<c_int>,
}

struct Records {
    devs: Vec<DevSettings>,
    /// Queues the program detached: (fd, device name).
    detached: Vec<(c_int, String)>,
}

static RECORDS: Mutex<Records> = Mutex::new(Records {
    devs: Vec::new(),
    detached: Vec::new(),
});

/// Checkpoints held off while a user thread records (so no thread is
/// suspended holding `RECORDS`).
pub(crate) struct Hold;

impl Hold {
    pub(crate) fn new() -> Hold {
        let _ = sys::disable_ckpt();
        Hold
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = sys::enable_ckpt();
    }
}

fn records() -> std::sync::MutexGuard<'static, Records> {
    RECORDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name of the device `fd` is attached to.
pub(crate) fn name_of(fd: c_int) -> Option<String> {
    let mut b = [0u8; sys::IFREQ_SIZE];
    sys::ioctl_buf(fd, libc::TUNGETIFF, &mut b).ok()?;
    Some(sys::ifreq_parts(&b).0)
}

/// Records a setting of `fd` the kernel accepted.
pub(crate) fn record(fd: c_int, s: Setting) {
    let mut r = records();
    if let Setting::Queue(flags, before) = s {
        r.detached.retain(|(f, _)| *f != fd);
        if flags as c_int & libc::IFF_DETACH_QUEUE != 0 {
            if let Some(n) = before {
                r.detached.push((fd, n));
            }
        }
        return;
    }
    let Some(name) = name_of(fd) else {
        return;
    };
    let i = match r.devs.iter().position(|d| d.name == name) {
        Some(i) => i,
        None => {
            r.devs.push(DevSettings {
                name,
                ..Default::default()
            });
            r.devs.len() - 1
        }
    };
    let d = &mut r.devs[i];
    match s {
        Setting::Owner(v) => d.owner = Some(v),
        Setting::Group(v) => d.group = Some(v),
        Setting::Link(v) => d.link = Some(v),
        Setting::Offload(v) => d.offload = Some(v),
        Setting::TxFilter(v) => d.txfilter = Some(v),
        Setting::Filter(v) => d.filter = v,
        Setting::Carrier(v) => d.carrier = Some(v),
        Setting::Queue(..) => {}
    }
}

/// How an fd stands with its device.
#[derive(Debug, Clone, Copy, PartialEq)]
enum QueueKind {
    Attached,
    Detached,
}

#[derive(Debug, Clone)]
struct Queue {
    fd: c_int,
    kind: QueueKind,
    nonblock: bool,
    cloexec: bool,
}

#[derive(Debug, Clone)]
struct Device {
    name: String,
    /// TUNSETIFF flags (IFF_TUN/IFF_TAP, IFF_NO_PI, IFF_VNET_HDR,
    /// IFF_MULTI_QUEUE, ...), without IFF_PERSIST.
    flags: i16,
    persist: bool,
    ifindex: u32,
    sndbuf: Option<c_int>,
    vnet_hdr_sz: Option<c_int>,
    vnet_le: Option<c_int>,
    vnet_be: Option<c_int>,
    settings: DevSettings,
    queues: Vec<Queue>,
    net: NetState,
}

impl Device {
    fn kind(&self) -> &'static str {
        if self.flags as c_int & libc::IFF_TAP != 0 {
            "tap"
        } else {
            "tun"
        }
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    devices: Vec<Device>,
    /// /dev/net/tun fds not attached to any device.
    unattached: Vec<Queue>,
}

static SNAPSHOT: Mutex<Option<Snapshot>> = Mutex::new(None);

fn snapshot() -> std::sync::MutexGuard<'static, Option<Snapshot>> {
    SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The program's fds and where they lead.
fn fds() -> Vec<(c_int, String)> {
    let Ok(d) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut v: Vec<(c_int, String)> = d
        .flatten()
        .filter_map(|e| {
            let fd: c_int = e.file_name().to_str()?.parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            Some((fd, t.to_string_lossy().into_owned()))
        })
        .collect();
    v.sort();
    v
}

fn is_macvtap(path: &str) -> bool {
    path.strip_prefix("/dev/tap")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// PRESUSPEND: find and describe every tun fd, claim them.
pub(crate) fn presuspend() {
    let t0 = Instant::now();
    let recs = {
        let r = records();
        (r.devs.clone(), r.detached.clone())
    };
    let mut snap = Snapshot::default();
    for (fd, target) in fds() {
        if target == "/dev/vhost-net" {
            crate::say(&format!(
                "fd {fd} is /dev/vhost-net: vhost-net is not supported, its state will not \
                 survive a restart"
            ));
            continue;
        }
        if is_macvtap(&target) {
            crate::say(&format!(
                "fd {fd} is a macvtap queue ({target}): macvtap is not supported, its settings \
                 will not survive a restart (use a tap device on a bridge)"
            ));
            continue;
        }
        if target != "/dev/net/tun" {
            continue;
        }
        let Ok((fl, fdfl)) = sys::fd_flags(fd) else {
            continue;
        };
        let mut q = Queue {
            fd,
            kind: QueueKind::Attached,
            nonblock: fl & libc::O_NONBLOCK != 0,
            cloexec: fdfl & libc::FD_CLOEXEC != 0,
        };
        let mut b = [0u8; sys::IFREQ_SIZE];
        let (name, flags) = match sys::ioctl_buf(fd, libc::TUNGETIFF, &mut b) {
            // Newer kernels answer for a detached queue too, with
            // IFF_DETACH_QUEUE among the flags.
            Ok(_) => {
                let (n, f) = sys::ifreq_parts(&b);
                if f as c_int & libc::IFF_DETACH_QUEUE != 0 {
                    q.kind = QueueKind::Detached;
                }
                (n, f)
            }
            // Older ones do not: the device is the one it left.
            Err(_) => match recs.1.iter().find(|(f, _)| *f == fd) {
                Some((_, n)) => {
                    q.kind = QueueKind::Detached;
                    (n.clone(), 0)
                }
                None => {
                    snap.unattached.push(q);
                    claim(fd);
                    continue;
                }
            },
        };
        claim(fd);
        match snap.devices.iter_mut().find(|d| d.name == name) {
            // Met before through detached queues only: described again
            // through this attached one (the getters need it), keeping
            // the queues met before.
            Some(d)
                if q.kind == QueueKind::Attached
                    && d.queues.iter().all(|x| x.kind == QueueKind::Detached) =>
            {
                let qs = std::mem::take(&mut d.queues);
                let f = if flags != 0 { flags } else { d.flags };
                *d = describe(Some(fd), name, f, q, &recs.0);
                d.queues.splice(0..0, qs);
            }
            Some(d) => d.queues.push(q),
            None => snap
                .devices
                .push(describe(Some(fd), name, flags, q, &recs.0)),
        }
    }
    // A device known only through detached queues, on a kernel that tells
    // neither TUNGETIFF nor the link info for them: its type is unknown.
    snap.devices.retain_mut(|d| {
        if d.flags != 0 {
            return true;
        }
        crate::say(&format!(
            "{}: cannot tell its type (every queue the program holds is detached); its fds \
             come back attached to no device",
            d.name
        ));
        snap.unattached.append(&mut d.queues);
        false
    });
    crate::debug(|| {
        let mut m = String::from("checkpoint:");
        for d in &snap.devices {
            m += &format!(
                " {} (flags {:#x}{}, index {}, {} queue(s), {} address(es), {} route(s){})",
                d.name,
                d.flags,
                if d.persist { ", persist" } else { "" },
                d.ifindex,
                d.queues.len(),
                d.net.addrs.len(),
                d.net.routes.len(),
                d.net
                    .master
                    .as_ref()
                    .map(|m| format!(", in {m}"))
                    .unwrap_or_default()
            );
        }
        if !snap.unattached.is_empty() {
            m += &format!(" {} unattached fd(s)", snap.unattached.len());
        }
        m + &format!(" in {} us", t0.elapsed().as_micros())
    });
    *snapshot() = Some(snap);
}

fn claim(fd: c_int) {
    if sys::claim_fd(fd) != Some(1) {
        crate::say(&format!("cannot claim fd {fd} from the engine"));
    }
}

/// Everything about device `name` (`flags` as TUNGETIFF or the link info
/// gave them), asking `fd` (one of its queues) for the per-device values
/// only it can tell.
fn describe(fd: Option<c_int>, name: String, flags: i16, q: Queue, recs: &[DevSettings]) -> Device {
    let ifindex = sys::if_index(&name);
    let tap = flags as c_int & libc::IFF_TAP != 0;
    let net = if ifindex == 0 {
        NetState::default()
    } else {
        netlink::capture(ifindex, tap).unwrap_or_else(|e| {
            crate::say(&format!(
                "cannot read the configuration of {name}: {e}; it will come back unconfigured"
            ));
            NetState::default()
        })
    };
    let get = |req| fd.and_then(|fd| sys::ioctl_get_int(fd, req).ok());
    // Flags unknown here (only detached queues seen so far): the link
    // info's, if any.
    let flags = if flags == 0 { net.tun_flags } else { flags };
    Device {
        settings: recs
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .unwrap_or_default(),
        name,
        flags: flags
            & !((libc::IFF_PERSIST | libc::IFF_ATTACH_QUEUE | libc::IFF_DETACH_QUEUE) as i16),
        persist: flags as c_int & libc::IFF_PERSIST != 0,
        ifindex,
        sndbuf: get(libc::TUNGETSNDBUF),
        vnet_hdr_sz: get(libc::TUNGETVNETHDRSZ),
        vnet_le: get(libc::TUNGETVNETLE),
        vnet_be: get(libc::TUNGETVNETBE),
        queues: vec![q],
        net,
    }
}

/// A restart that cannot go on: say why and end the process.
fn fail(msg: &str) -> ! {
    crate::say(&format!("restart failed: {msg}"));
    sys::exit_group(1)
}

/// RESTART: bring every device back.
pub(crate) fn restart() {
    let snap = snapshot().take();
    let Some(snap) = snap else {
        return;
    };
    let t0 = Instant::now();
    for q in &snap.unattached {
        match sys::open_tun() {
            Ok(t) => put(t, q),
            Err(e) => fail(&format!(
                "cannot open /dev/net/tun again for fd {}: {e}",
                q.fd
            )),
        }
    }
    for d in &snap.devices {
        restore(d);
    }
    if !snap.devices.is_empty() || !snap.unattached.is_empty() {
        crate::debug(|| format!("restart done in {} us", t0.elapsed().as_micros()));
    }
}

/// Puts the new fd `t` at the queue's number, as the program had it.
fn put(t: c_int, q: &Queue) {
    if q.nonblock {
        if let Err(e) = sys::set_nonblock(t) {
            crate::say(&format!("fd {}: cannot set O_NONBLOCK again: {e}", q.fd));
        }
    }
    if let Err(e) = sys::move_fd(t, q.fd, q.cloexec) {
        fail(&format!("cannot put the tun fd back at {}: {e}", q.fd));
    }
    claim(q.fd);
}

/// Waits (bounded) until no interface is named `name`: the killed
/// process's device may still be going away.
fn name_free(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while sys::if_index(name) != 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn restore(d: &Device) {
    let exists = if d.persist {
        sys::if_index(&d.name) != 0
    } else {
        if !name_free(&d.name) {
            if same_kind(d) {
                return restore_shared(d);
            }
            fail(&format!(
                "a network device named {} exists in this network namespace, and the \
                 checkpointed {} device of that name was not persistent, so it is not ours: \
                 remove it (ip link del {}) or restart in another network namespace",
                d.name,
                d.kind(),
                d.name
            ));
        }
        false
    };
    // Every queue attached first: the device-wide settings reach each
    // attached queue (the send buffer, the socket filter), as when the
    // program made them.
    let mut ts = Vec::with_capacity(d.queues.len());
    for i in 0..d.queues.len() {
        match attach(d, i == 0 && !exists) {
            Ok(t) => ts.push(t),
            // Made (or, persistent, attached to) meanwhile by another
            // process restoring the same fd.
            Err(e)
                if i == 0
                    && e.raw_os_error() == Some(libc::EBUSY)
                    && (d.persist || same_kind(d)) =>
            {
                return restore_shared(d);
            }
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::EBUSY) {
                    " (another process holds it: a tun fd shared by several processes, \
                     inherited across fork, comes back in one of them only; see docs/tun.md)"
                } else {
                    ""
                };
                fail(&format!(
                    "cannot {} the {} device {} (flags {:#x}): {e}{why}",
                    if exists || i > 0 {
                        "attach to"
                    } else {
                        "create again"
                    },
                    d.kind(),
                    d.name,
                    d.flags
                ))
            }
        }
    }
    settings(ts[0], d, !exists);
    for (&t, q) in ts.iter().zip(&d.queues) {
        if q.kind == QueueKind::Detached {
            let mut b = sys::ifreq("", libc::IFF_DETACH_QUEUE as i16);
            if let Err(e) = sys::ioctl_buf(t, libc::TUNSETQUEUE, &mut b) {
                crate::say(&format!("{}: cannot detach a queue again: {e}", d.name));
            } else {
                let mut r = records();
                r.detached.retain(|(f, _)| *f != q.fd);
                r.detached.push((q.fd, d.name.clone()));
            }
        }
        put(t, q);
    }
    let index = sys::if_index(&d.name);
    if index == 0 {
        fail(&format!("{} vanished while it was being restored", d.name));
    }
    let name = d.name.clone();
    let r = netlink::apply(index, &d.net, &mut |m| crate::say(&format!("{name}: {m}")));
    if let Err(e) = r {
        crate::say(&format!("{}: cannot configure it again: {e}", d.name));
    }
    crate::debug(|| format!("restored {} (index {index}, was {})", d.name, d.ifindex));
}

/// Is there a tun/tap device named like `d`, of its type and flags?
/// (Not persistent, so someone holds it: another process of the
/// computation that had the same fd, shared across fork.)
fn same_kind(d: &Device) -> bool {
    let index = sys::if_index(&d.name);
    if index == 0 {
        return false;
    }
    let tap = d.flags as c_int & libc::IFF_TAP != 0;
    let mask = (0xf | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE) as i16;
    // A persistent one is somebody else's (the other process would have
    // made it as the checkpointed one was: not persistent).
    netlink::capture(index, tap).is_ok_and(|n| {
        n.tun_flags & mask == d.flags & mask && n.tun_flags as c_int & libc::IFF_PERSIST == 0
    })
}

/// `d`'s device was made again by another process of the computation
/// that held the same fds (inherited across fork). A multi-queue device
/// takes this process's fds as new queues; a single-queue one is that
/// other process's: here the fds come back attached to no device.
fn restore_shared(d: &Device) {
    for q in &d.queues {
        let t = match attach(d, false) {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                crate::say(&format!(
                    "fd {}: {} is attached in another process (a tun fd shared across fork \
                     comes back in one process only); here the fd is attached to no device",
                    q.fd, d.name
                ));
                match sys::open_tun() {
                    Ok(t) => t,
                    Err(e) => fail(&format!("cannot open /dev/net/tun again: {e}")),
                }
            }
            Err(e) => fail(&format!("cannot attach to {} again: {e}", d.name)),
        };
        if q.kind == QueueKind::Detached {
            let mut b = sys::ifreq("", libc::IFF_DETACH_QUEUE as i16);
            let _ = sys::ioctl_buf(t, libc::TUNSETQUEUE, &mut b);
        }
        put(t, q);
    }
    crate::debug(|| format!("{}: attached to the device another process made", d.name));
}

/// A new fd attached to `d`'s device (`create`: the first, which makes
/// it, with its old interface index when that is free here).
fn attach(d: &Device, create: bool) -> std::io::Result<c_int> {
    let t = sys::open_tun()?;
    if create && d.ifindex != 0 {
        // Programs keep the index (sll_ifindex, IPv6 scope ids).
        let _ = sys::ioctl_set_int(t, libc::TUNSETIFINDEX, d.ifindex as c_int);
    }
    let mut b = sys::ifreq(&d.name, d.flags);
    match sys::ioctl_buf(t, libc::TUNSETIFF, &mut b) {
        Ok(_) => Ok(t),
        Err(e) => {
            sys::close(t);
            if create && d.ifindex != 0 && e.raw_os_error() == Some(libc::EBUSY) {
                // The index is taken here: any index will do.
                let t = sys::open_tun()?;
                let mut b = sys::ifreq(&d.name, d.flags);
                if let Err(e) = sys::ioctl_buf(t, libc::TUNSETIFF, &mut b) {
                    sys::close(t);
                    return Err(e);
                }
                return Ok(t);
            }
            Err(e)
        }
    }
}

/// The device's settings, through `t` (attached). Device-wide ones only
/// on a device made again (`created`; a persistent one kept them); the
/// send buffer always (each attached queue takes it).
fn settings(t: c_int, d: &Device, created: bool) {
    let warn = |what: &str, e: std::io::Error| {
        crate::say(&format!("{}: cannot set {what} again: {e}", d.name));
    };
    if let Some(v) = d.sndbuf {
        if let Err(e) = sys::ioctl_set_int(t, libc::TUNSETSNDBUF, v) {
            warn("its send buffer", e);
        }
    }
    if !created {
        return;
    }
    let s = &d.settings;
    // Owner and group as the kernel reported them, else as recorded.
    let owner = d.net.owner.map(c_ulong::from).or(s.owner);
    let group = d.net.group.map(c_ulong::from).or(s.group);
    // Carrier off as the kernel saw it (the fds were attached), else as
    // recorded.
    let carrier = match d.net.carrier {
        Some(0) => Some(0),
        _ => s.carrier,
    };
    let vals = [
        (libc::TUNSETOWNER, owner, "its owner"),
        (libc::TUNSETGROUP, group, "its group"),
        (libc::TUNSETLINK, s.link, "its link type"),
        (libc::TUNSETOFFLOAD, s.offload, "its offloads"),
    ];
    for (req, v, what) in vals {
        if let Some(v) = v {
            if let Err(e) = sys::ioctl_val(t, req, v) {
                warn(what, e);
            }
        }
    }
    if d.persist {
        if let Err(e) = sys::ioctl_val(t, libc::TUNSETPERSIST, 1) {
            warn("persist", e);
        }
    }
    let ints = [
        (libc::TUNSETVNETHDRSZ, d.vnet_hdr_sz, "its vnet header size"),
        (libc::TUNSETVNETLE, d.vnet_le, "its vnet little-endian mode"),
        (libc::TUNSETVNETBE, d.vnet_be, "its vnet big-endian mode"),
        (libc::TUNSETCARRIER, carrier, "its carrier"),
    ];
    for (req, v, what) in ints {
        if let Some(v) = v {
            if let Err(e) = sys::ioctl_set_int(t, req, v) {
                // Big-endian vnet headers exist only with
                // CONFIG_TUN_VNET_CROSS_LE; 0 is the default anyway.
                if v != 0 {
                    warn(what, e);
                }
            }
        }
    }
    if let Some(f) = &s.txfilter {
        let mut f = f.clone();
        if let Err(e) = sys::ioctl_buf(t, libc::TUNSETTXFILTER, &mut f) {
            warn("its transmit filter", e);
        }
    }
    if let Some(p) = &s.filter {
        if let Err(e) = sys::attach_fprog(t, libc::TUNATTACHFILTER, p) {
            warn("its socket filter", e);
        }
    }
}
