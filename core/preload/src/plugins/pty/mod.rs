//! The "pty" plugin: terminal fds. Pseudo-terminals whose master is held
//! by a process of the job (a terminal multiplexer, `script`, an
//! `expect`-like driver) are recorded for `dmtcp_restart`, which re-makes
//! them; other terminals (the one the job was started on) are given the
//! terminal `dmtcp_restart` runs on.
//!
//! Each end is named by the pty's number and this boot's id. Processes
//! holding a master publish it in the name service (database
//! `dmtcp:pty`); after the barrier `pty:published`, an end is part of
//! the job when its master was published. The slave side records
//! the termios settings and the window size, the master side the
//! foreground process group and the output it had not read yet (given
//! back on resume and at restart); the process's controlling terminal is
//! recorded when it is such a pty.

use crate::engine::iface::{self as dmtcp, fds, Event, FdDesc, Plugin, Tree};
use dmtcp_common::image::PtyRec;

const DB: &str = "dmtcp:pty";

/// The pty number of a terminal fd, and whether it is the master end.
fn pty_of(fd: i32, target: &str) -> Option<(u32, bool)> {
    if target == "/dev/ptmx" || target == "/dev/pts/ptmx" {
        let mut n: u32 = 0;
        // SAFETY: TIOCGPTN writes an unsigned int.
        if unsafe { libc::ioctl(fd, libc::TIOCGPTN, &mut n) } == 0 {
            return Some((n, true));
        }
        return None;
    }
    target
        .strip_prefix("/dev/pts/")
        .and_then(|n| n.parse().ok())
        .map(|n| (n, false))
}

/// Terminal fds that are pty ends: (fd, number, master?).
struct Found {
    ends: Vec<(i32, u32, bool)>,
    boot: String,
}

/// Find pty ends among the process's terminal fds and publish masters
/// (before the barrier).
fn publish(ttys: &[(i32, &str)]) -> Found {
    let ends: Vec<(i32, u32, bool)> = ttys
        .iter()
        .filter_map(|&(fd, t)| pty_of(fd, t).map(|(n, m)| (fd, n, m)))
        .collect();
    let boot = dmtcp::boot_id();
    let pid = dmtcp_sys::getpid();
    for &(_, n, master) in &ends {
        if master {
            let key = format!("{boot}:{n}");
            dmtcp::kv_put(DB, key.into_bytes(), pid.to_ne_bytes().to_vec());
        }
    }
    Found { ends, boot }
}

/// The records of the ends whose master is in the job (after the barrier), and the controlling terminal's key if it is one.
fn collect(found: &Found, flags_of: impl Fn(i32) -> i32) -> (Vec<PtyRec>, Option<String>) {
    let mut out = Vec::new();
    let mut in_job: Vec<u32> = Vec::new();
    for &(fd, n, master) in &found.ends {
        let key = format!("{}:{n}", found.boot);
        let known =
            in_job.contains(&n) || master || dmtcp::kv_get(DB, key.as_bytes()).flatten().is_some();
        if !known {
            continue;
        }
        in_job.push(n);
        let mut r = PtyRec {
            fd,
            key,
            master,
            flags: flags_of(fd),
            ..Default::default()
        };
        // SAFETY: a zeroed termios/winsize for the ioctls to fill.
        let (mut tio, mut ws): (libc::termios, libc::winsize) =
            unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        // SAFETY: tcgetattr and TIOCGWINSZ write our structs.
        unsafe {
            if !master && libc::tcgetattr(fd, &mut tio) == 0 {
                // The struct was zeroed first, so its padding is initialised too.
                r.termios = core::slice::from_raw_parts(
                    &tio as *const libc::termios as *const u8,
                    core::mem::size_of::<libc::termios>(),
                )
                .to_vec();
            }
            if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 {
                r.winsize = [ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel];
            }
        }
        if master {
            let mut pg: i32 = 0;
            let mut pending: i32 = 0;
            // SAFETY: TIOCGPGRP and FIONREAD write an int.
            unsafe {
                if libc::ioctl(fd, libc::TIOCGPGRP, &mut pg) == 0 {
                    r.fg = dmtcp::pid_to_virtual(pg);
                }
                if libc::ioctl(fd, libc::FIONREAD, &mut pending) == 0 && pending > 0 {
                    r.pending = take_pending(fd, pending as usize);
                }
            }
        }
        out.push(r);
    }
    (out, ctty_key(&found.boot, &in_job))
}

/// Read the output waiting on master `fd` (every process of the job is
/// suspended: nothing more arrives). The bytes go back by
/// [`put_back_pending`] on resume and at restart.
fn take_pending(fd: i32, pending: usize) -> Vec<u8> {
    let mut buf = vec![0u8; pending];
    let mut got = 0;
    let old = fds::set_nonblock(fd, true);
    while got < buf.len() {
        // SAFETY: reading into the unfilled rest of our buffer.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: the program's flags back on its fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, old) };
    buf.truncate(got);
    buf
}

/// Make `bytes` readable on master `fd` again: written into its slave end
/// with output processing off (they were processed when first written),
/// then the slave's settings as they were.
fn put_back_pending(fd: i32, bytes: &[u8]) {
    // SAFETY: ptsname_r writes into our buffer; open/tcgetattr/tcsetattr/
    // write/close on the slave fd we open here, with our own structs.
    let done = unsafe {
        let mut name = [0 as libc::c_char; 128];
        let s = if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0 {
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        } else {
            -1
        };
        let mut done = 0;
        let mut tio: libc::termios = core::mem::zeroed();
        if s >= 0 && libc::tcgetattr(s, &mut tio) == 0 {
            let mut raw = tio;
            raw.c_oflag &= !libc::OPOST;
            libc::tcsetattr(s, libc::TCSANOW, &raw);
            while done < bytes.len() {
                let n = libc::write(
                    s,
                    bytes[done..].as_ptr() as *const libc::c_void,
                    bytes.len() - done,
                );
                if n <= 0 {
                    break;
                }
                done += n as usize;
            }
            libc::tcsetattr(s, libc::TCSANOW, &tio);
        }
        if s >= 0 {
            libc::close(s);
        }
        done
    };
    if done < bytes.len() {
        dmtcp::warn(format_args!(
            "pty master fd {fd}: {} of its {} unread output bytes could not be put back",
            bytes.len() - done,
            bytes.len()
        ));
    }
}

/// Put back every master's unread output (on resume, and at restart
/// once the ptys are the job's again).
fn put_back_all() {
    let recs: Vec<(i32, Vec<u8>)> = SAVED.with(|s| {
        s.recs
            .iter_mut()
            .filter(|r| r.master && !r.pending.is_empty())
            .map(|r| (r.fd, core::mem::take(&mut r.pending)))
            .collect()
    });
    for (fd, bytes) in recs {
        put_back_pending(fd, &bytes);
    }
}

/// The controlling terminal, if it is pty `n` of the job.
fn ctty_key(boot: &str, in_job: &[u32]) -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let tty_nr: u32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(4)?
        .parse()
        .ok()?;
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    if !(136..=143).contains(&major) {
        return None;
    }
    let n = (major - 136) * 256 + minor;
    in_job.contains(&n).then(|| format!("{boot}:{n}"))
}

/// A terminal fd as the program had it.
struct TtyFd {
    fd: i32,
    flags: i32,
    cloexec: bool,
}

#[derive(Default)]
struct Saved {
    ttys: Vec<TtyFd>,
    recs: Vec<PtyRec>,
    ctty: Option<String>,
}

static SAVED: dmtcp::FLock<Saved> = dmtcp::FLock::new(Saved {
    ttys: Vec::new(),
    recs: Vec::new(),
    ctty: None,
});

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty on an fd number; fails cleanly on a closed one.
    unsafe { libc::isatty(fd) == 1 }
}

fn checkpoint() {
    let found_fds: Vec<(i32, String)> = fds::fds_with_targets()
        .into_iter()
        .filter(|(fd, _)| is_tty(*fd))
        .collect();
    let ttys: Vec<TtyFd> = found_fds
        .iter()
        .map(|(fd, _)| {
            // SAFETY: fcntl queries on a live fd.
            let (flags, fdflags) = unsafe {
                (
                    libc::fcntl(*fd, libc::F_GETFL),
                    libc::fcntl(*fd, libc::F_GETFD),
                )
            };
            TtyFd {
                fd: *fd,
                flags,
                cloexec: fdflags & libc::FD_CLOEXEC != 0,
            }
        })
        .collect();
    let list: Vec<(i32, &str)> = found_fds.iter().map(|(fd, t)| (*fd, t.as_str())).collect();
    let found = publish(&list);
    let (recs, ctty) = if dmtcp::barrier("pty:published") {
        collect(&found, |fd| {
            ttys.iter().find(|t| t.fd == fd).map_or(0, |t| t.flags)
        })
    } else {
        (Vec::new(), None)
    };
    SAVED.with(|s| *s = Saved { ttys, recs, ctty });
}

fn restart() {
    let ttys = SAVED.with(|s| core::mem::take(&mut s.ttys));
    for t in &ttys {
        if fds::installed_by_restart(t.fd) {
            // A pty of the job, re-made by dmtcp_restart: the program's flags.
            // SAFETY: flags of a pty end dmtcp_restart gave us.
            unsafe {
                libc::fcntl(
                    t.fd,
                    libc::F_SETFD,
                    if t.cloexec { libc::FD_CLOEXEC } else { 0 },
                );
                libc::fcntl(
                    t.fd,
                    libc::F_SETFL,
                    t.flags & (libc::O_NONBLOCK | libc::O_APPEND),
                );
            }
        } else if t.fd > 2 {
            // A terminal beyond stdio: give it the terminal we run on, if any
            // (fds 0-2 keep what dmtcp_restart got).
            // SAFETY: open of a literal path, then our fd onto the program's number.
            unsafe {
                let n = libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if n >= 0 {
                    fds::move_fd(n, t.fd, t.cloexec);
                }
            }
        }
    }
    SAVED.with(|s| s.ttys = ttys);
}

/// The plugin. It comes before the file plugin: at restart (reverse
/// order) it runs after the file plugin closed what this process
/// inherited, so the terminals it opens stay.
pub struct PtyPlugin;

impl Plugin for PtyPlugin {
    fn name(&self) -> &'static str {
        "pty"
    }
    fn event(&self, ev: Event) {
        match ev {
            Event::PreCheckpoint => checkpoint(),
            Event::Resume => put_back_all(),
            Event::Restart => {
                restart();
                put_back_all();
            }
            _ => {}
        }
    }
    fn claims_fd(&self, d: &FdDesc) -> bool {
        is_tty(d.fd)
    }
    fn keeps_fd(&self, fd: i32) -> bool {
        fds::installed_by_restart(fd)
    }
    fn records(&self, tree: &mut Tree) {
        SAVED.with(|s| {
            tree.ptys = s.recs.clone();
            tree.ctty = s.ctty.clone();
        });
    }
}
