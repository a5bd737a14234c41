//! The "event" plugin: epoll instances with their interest lists, eventfd,
//! timerfd, signalfd and inotify (with its watches) across a restart.
//!
//! At checkpoint time (user threads suspended) it reads each such fd's
//! `/proc/self/fdinfo` entry: an epoll's registered fds with their event
//! masks and data, an eventfd's counter and id, a timerfd's clock, time
//! left, interval and unread expirations, a signalfd's mask. A checkpoint
//! that is only resumed changes nothing: the kernel kept it all.
//!
//! At restart, eventfds are made by `dmtcp_restart` (one per eventfd id, so
//! an eventfd shared by a parent and its children stays shared) with their
//! counters; this plugin re-creates timerfds armed with the time that was
//! left (and the expirations not yet read), signalfds, and, after every
//! other fd is back, each epoll instance with its interest list. It runs
//! after the file and socket plugins at restart (it is registered before
//! them).

use crate::engine::iface::{self as dmtcp, Event, FdDesc, Plugin, Tree};
use dmtcp_common::image::EvfdRec;

#[derive(Clone, Debug)]
enum Kind {
    Epoll(Vec<(i32, u32, u64)>),
    Eventfd(EvfdRec),
    Timerfd {
        clock: i32,
        ticks: u64,
        value: libc::timespec,
        interval: libc::timespec,
    },
    Signalfd(u64),
    /// Watches: (wd, mask, absolute path), by wd.
    Inotify(Vec<(i32, u32, String)>),
}

#[derive(Clone, Debug)]
struct Ev {
    fd: i32,
    flags: i32,
    cloexec: bool,
    kind: Kind,
}

static SAVED: dmtcp::FLock<Vec<Ev>> = dmtcp::FLock::new(Vec::new());

/// Eventfds for the image (read when the tree is captured).
fn records() -> Vec<EvfdRec> {
    SAVED.with(|v| {
        v.iter()
            .filter_map(|e| match &e.kind {
                Kind::Eventfd(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    })
}

/// The value after `key` on the line that starts with it.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim())
}

/// "(sec, nsec)" as a timespec.
fn timespec(v: &str) -> libc::timespec {
    let v = v.trim_matches(|c| c == '(' || c == ')');
    let mut it = v.split(',').map(|x| x.trim().parse::<i64>().unwrap_or(0));
    libc::timespec {
        tv_sec: it.next().unwrap_or(0),
        tv_nsec: it.next().unwrap_or(0),
    }
}

fn parse(fd: i32, target: &str, info: &str) -> Option<Kind> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    match target {
        "anon_inode:[eventpoll]" => {
            let mut entries = Vec::new();
            for l in info.lines().filter(|l| l.starts_with("tfd:")) {
                let w: Vec<&str> = l.split_whitespace().collect();
                // tfd: N events: X data: Y pos:..
                let tfd = w.get(1)?.parse().ok()?;
                let events = u32::from_str_radix(w.get(3)?, 16).ok()?;
                let data = hex(w.get(5)?)?;
                entries.push((tfd, events, data));
            }
            Some(Kind::Epoll(entries))
        }
        "anon_inode:[eventfd]" => Some(Kind::Eventfd(EvfdRec {
            fd,
            id: field(info, "eventfd-id:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            count: field(info, "eventfd-count:").and_then(hex).unwrap_or(0),
            semaphore: field(info, "eventfd-semaphore:") == Some("1"),
        })),
        "anon_inode:[timerfd]" => Some(Kind::Timerfd {
            clock: field(info, "clockid:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(libc::CLOCK_MONOTONIC),
            ticks: field(info, "ticks:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            value: timespec(field(info, "it_value:").unwrap_or("")),
            interval: timespec(field(info, "it_interval:").unwrap_or("")),
        }),
        "anon_inode:[signalfd]" => Some(Kind::Signalfd(
            field(info, "sigmask:").and_then(hex).unwrap_or(0),
        )),
        "anon_inode:inotify" => {
            let live: Vec<i32> = info
                .lines()
                .filter_map(|l| l.strip_prefix("inotify wd:"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .next()
                        .and_then(|w| i32::from_str_radix(w, 16).ok())
                })
                .collect();
            let mut w: Vec<(i32, u32, String)> = WATCHES.with(|v| {
                v.iter()
                    .filter(|x| x.0 == fd && live.contains(&x.1))
                    .map(|x| (x.1, x.2, x.3.clone()))
                    .collect()
            });
            for wd in live.iter().filter(|wd| !w.iter().any(|x| x.0 == **wd)) {
                dmtcp::warn(format_args!("inotify fd {fd}: watch {wd} was added before this program started; it will not come back"));
            }
            w.sort_by_key(|x| x.0);
            let mut pending: i32 = 0;
            // SAFETY: FIONREAD writes an int.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) } == 0 && pending > 0 {
                dmtcp::warn(format_args!("inotify fd {fd}: {pending} bytes of events not read yet will not survive a restart"));
            }
            Some(Kind::Inotify(w))
        }
        _ => None,
    }
}

/// Is this fd target one of ours?
fn handles(target: &str) -> bool {
    matches!(
        target,
        "anon_inode:[eventpoll]"
            | "anon_inode:[eventfd]"
            | "anon_inode:[timerfd]"
            | "anon_inode:[signalfd]"
            | "anon_inode:inotify"
    )
}

/// inotify watches the program added: (fd, wd, mask, absolute path).
/// Kept by the wrappers below (the kernel shows a watch's inode, not its
/// path); inherited across fork with the process's memory.
static WATCHES: dmtcp::FLock<Vec<(i32, i32, u32, String)>> = dmtcp::FLock::new(Vec::new());

type AddWatchFn = unsafe extern "C" fn(libc::c_int, *const libc::c_char, u32) -> libc::c_int;
type RmWatchFn = unsafe extern "C" fn(libc::c_int, libc::c_int) -> libc::c_int;

/// `inotify_add_watch(2)`, remembering the watch's path.
///
/// # Safety
/// As `inotify_add_watch(2)`.
#[no_mangle]
pub unsafe extern "C" fn inotify_add_watch(
    fd: libc::c_int,
    path: *const libc::c_char,
    mask: u32,
) -> libc::c_int {
    static REAL: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let f = dmtcp::libc_fn(&REAL, c"inotify_add_watch");
    if f == 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    // The watch and its record appear in one image or in neither; the
    // record allocates from the library's heap and takes its lock.
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: libc's function with the caller's arguments.
    let wd = unsafe { core::mem::transmute::<usize, AddWatchFn>(f)(fd, path, mask) };
    if wd >= 0 && !path.is_null() {
        // SAFETY: the caller's NUL-terminated path.
        let p = unsafe { core::ffi::CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned();
        let abs = if p.starts_with('/') {
            p
        } else {
            std::env::current_dir()
                .map(|d| d.join(&p).display().to_string())
                .unwrap_or(p)
        };
        let keep = mask & !(libc::IN_MASK_ADD | 0x1000_0000);
        WATCHES.with(|v| match v.iter_mut().find(|x| x.0 == fd && x.1 == wd) {
            Some(x) => {
                x.2 = if mask & libc::IN_MASK_ADD != 0 {
                    x.2 | keep
                } else {
                    keep
                };
                x.3 = abs;
            }
            None => v.push((fd, wd, keep, abs)),
        });
    }
    wd
}

/// `inotify_rm_watch(2)`, forgetting the watch.
///
/// # Safety
/// As `inotify_rm_watch(2)`.
#[no_mangle]
pub unsafe extern "C" fn inotify_rm_watch(fd: libc::c_int, wd: libc::c_int) -> libc::c_int {
    static REAL: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let f = dmtcp::libc_fn(&REAL, c"inotify_rm_watch");
    if f == 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    }
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: libc's function with the caller's arguments.
    let r = unsafe { core::mem::transmute::<usize, RmWatchFn>(f)(fd, wd) };
    if r == 0 {
        WATCHES.with(|v| v.retain(|x| !(x.0 == fd && x.1 == wd)));
    }
    r
}

/// A new inotify instance with the same watches at the same wds: the
/// kernel numbers watches one after the other from 1 and never reuses a
/// number soon, so gaps are filled with throw-away watches (on memfds),
/// removed at the end, and their removal events read away.
fn remake_inotify(e: &Ev, watches: &[(i32, u32, String)]) -> i32 {
    // SAFETY: a new inotify instance.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return -1;
    }
    let add = |path: &str, mask: u32| -> i32 {
        let Ok(c) = std::ffi::CString::new(path) else {
            return -1;
        };
        // SAFETY: libc's inotify_add_watch (not our wrapper: these are ours).
        unsafe { libc::syscall(libc::SYS_inotify_add_watch, fd, c.as_ptr(), mask) as i32 }
    };
    let mut dummies: Vec<(i32, i32)> = Vec::new();
    let mut next = 1;
    for (wd, mask, path) in watches {
        while next < *wd {
            // SAFETY: a throw-away memfd to watch.
            let m = unsafe { libc::memfd_create(c"dmtcp-wd".as_ptr(), libc::MFD_CLOEXEC) };
            let d = if m >= 0 {
                add(&format!("/proc/self/fd/{m}"), libc::IN_ATTRIB)
            } else {
                -1
            };
            if d < 0 {
                break;
            }
            dummies.push((d, m));
            next = d + 1;
        }
        let got = add(path, *mask);
        if got != *wd {
            dmtcp::warn(format_args!(
                "inotify fd {}: watch of {path} came back as {got}, not {wd}",
                e.fd
            ));
        }
        if got >= 0 {
            next = got + 1;
        }
    }
    for &(d, m) in &dummies {
        // SAFETY: removing our throw-away watches and closing their memfds.
        unsafe {
            libc::syscall(libc::SYS_inotify_rm_watch, fd, d);
            libc::close(m);
        }
    }
    if !dummies.is_empty() {
        // Read away the removal events (IN_IGNORED) of the throw-away watches.
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: reading events into our buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
    WATCHES.with(|v| {
        v.retain(|x| x.0 != e.fd);
        v.extend(watches.iter().map(|(wd, m, p)| (e.fd, *wd, *m, p.clone())));
    });
    fd
}

fn checkpoint() {
    let mut out = Vec::new();
    for (fd, target) in dmtcp::fds::fds_with_targets() {
        if !handles(&target) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let Some(kind) = parse(fd, &target, &info) else {
            continue;
        };
        // SAFETY: fcntl queries of a live fd.
        let (flags, fdflags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        out.push(Ev {
            fd,
            flags,
            cloexec: fdflags & libc::FD_CLOEXEC != 0,
            kind,
        });
    }
    SAVED.with(|v| *v = out);
}

/// Put `nfd` at `target` (closing `nfd`) with the saved fd flags.
fn place(nfd: i32, e: &Ev) {
    // SAFETY: fds of our own onto a number of the program's.
    unsafe {
        if nfd != e.fd {
            libc::dup2(nfd, e.fd);
            libc::close(nfd);
        }
        libc::fcntl(
            e.fd,
            libc::F_SETFD,
            if e.cloexec { libc::FD_CLOEXEC } else { 0 },
        );
        libc::fcntl(e.fd, libc::F_SETFL, e.flags & libc::O_NONBLOCK);
    }
}

fn warn_fail(e: &Ev, what: &str) {
    dmtcp::warn(format_args!(
        "fd {} ({what}) cannot be re-created: {}; it stays closed",
        e.fd,
        std::io::Error::last_os_error()
    ));
}

/// `_IOW('T', 0, u64)`: set a timerfd's expiration count (needs a kernel
/// with checkpoint/restore support).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

fn restart() {
    let saved = SAVED.with(|v| v.clone());
    // Everything but epoll first: an epoll instance may watch any of them.
    for e in &saved {
        match &e.kind {
            Kind::Eventfd(_) => {
                if dmtcp::fds::fd_target(e.fd) != "anon_inode:[eventfd]" {
                    dmtcp::warn(format_args!(
                        "eventfd at fd {} was not re-created (restart without a pid namespace?)",
                        e.fd
                    ));
                    continue;
                }
                place(e.fd, e);
            }
            Kind::Timerfd {
                clock,
                ticks,
                value,
                interval,
            } => {
                // SAFETY: a new timerfd, armed with the saved times.
                let t = unsafe { libc::timerfd_create(*clock, libc::TFD_CLOEXEC) };
                if t < 0 {
                    warn_fail(e, "timerfd");
                    continue;
                }
                let mut spec = libc::itimerspec {
                    it_interval: *interval,
                    it_value: *value,
                };
                // A periodic timer whose expiration is not read yet shows no
                // time left (it is re-armed when read): it goes on after one
                // more interval, its pending expirations counted in `ticks`.
                let zero = |t: &libc::timespec| t.tv_sec == 0 && t.tv_nsec == 0;
                if zero(&spec.it_value) && !zero(&spec.it_interval) {
                    spec.it_value = spec.it_interval;
                }
                let mut n = *ticks;
                if n > 0
                    // SAFETY: ioctl reads our u64.
                    && unsafe { libc::ioctl(t, TFD_IOC_SET_TICKS, &mut n) } != 0
                    && spec.it_value.tv_sec == 0
                    && spec.it_value.tv_nsec == 0
                {
                    // No way to set the count: let it expire at once (one expiration).
                    spec.it_value.tv_nsec = 1;
                }
                // SAFETY: timerfd_settime reads our struct.
                unsafe { libc::timerfd_settime(t, 0, &spec, core::ptr::null_mut()) };
                place(t, e);
            }
            Kind::Signalfd(mask) => {
                // SAFETY: building a sigset and a new signalfd.
                let s = unsafe {
                    let mut set: libc::sigset_t = core::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    for sig in 1..=64 {
                        if mask & (1u64 << (sig - 1)) != 0 {
                            libc::sigaddset(&mut set, sig);
                        }
                    }
                    libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
                };
                if s < 0 {
                    warn_fail(e, "signalfd");
                    continue;
                }
                place(s, e);
            }
            Kind::Inotify(watches) => {
                let n = remake_inotify(e, watches);
                if n < 0 {
                    warn_fail(e, "inotify");
                    continue;
                }
                place(n, e);
            }
            Kind::Epoll(_) => {}
        }
    }
    let mut made = Vec::new();
    for e in &saved {
        if let Kind::Epoll(_) = e.kind {
            // SAFETY: a new epoll instance.
            let p = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if p < 0 {
                warn_fail(e, "epoll");
                continue;
            }
            place(p, e);
            made.push(e);
        }
    }
    for e in made {
        let Kind::Epoll(entries) = &e.kind else {
            continue;
        };
        for &(tfd, events, data) in entries {
            let mut ev = libc::epoll_event { events, u64: data };
            // SAFETY: epoll_ctl reads our event.
            if unsafe { libc::epoll_ctl(e.fd, libc::EPOLL_CTL_ADD, tfd, &mut ev) } != 0 {
                dmtcp::warn(format_args!(
                    "epoll fd {}: cannot watch fd {tfd} again: {}",
                    e.fd,
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
}

/// The plugin.
pub struct EventPlugin;

impl Plugin for EventPlugin {
    fn name(&self) -> &'static str {
        "event"
    }
    fn event(&self, ev: Event) {
        match ev {
            Event::PreCheckpoint => checkpoint(),
            Event::Restart => restart(),
            _ => {}
        }
    }
    fn claims_fd(&self, d: &FdDesc) -> bool {
        handles(d.target)
    }
    /// Eventfds shared between processes are made by dmtcp_restart; the
    /// others this plugin re-creates after the file plugin's restart.
    fn keeps_fd(&self, fd: i32) -> bool {
        dmtcp::fds::fd_target(fd) == "anon_inode:[eventfd]"
    }
    fn records(&self, tree: &mut Tree) {
        tree.evfds = records();
    }
}
