//! Pseudo-terminals whose master is held by a process of the job (a
//! terminal multiplexer, `script`, an `expect`-like driver): found at
//! checkpoint time for the file plugin, re-made by `dmtcp_restart`.
//!
//! Each end is named by the pty's number and this boot's id. Processes
//! holding a master publish it in the name service (database
//! `dmtcp:pty`) before the file plugin's barriers; after them, an end is
//! part of the job when its master was published. The slave side records
//! the termios settings and the window size, the master side the
//! foreground process group; the process's controlling terminal is
//! recorded when it is such a pty.

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
    target.strip_prefix("/dev/pts/").and_then(|n| n.parse().ok()).map(|n| (n, false))
}

/// Terminal fds that are pty ends: (fd, number, master?).
pub struct Found {
    ends: Vec<(i32, u32, bool)>,
    boot: String,
}

/// Find pty ends among the process's terminal fds and publish masters
/// (before the file plugin's first barrier).
pub fn publish(ttys: &[(i32, &str)]) -> Found {
    let ends: Vec<(i32, u32, bool)> = ttys.iter().filter_map(|&(fd, t)| pty_of(fd, t).map(|(n, m)| (fd, n, m))).collect();
    let boot = crate::boot_id();
    let pid = dmtcp_sys::getpid();
    for &(_, n, master) in &ends {
        if master {
            let key = format!("{boot}:{n}");
            crate::coord::send(&dmtcp_common::proto::ToCoord::KvPut { db: DB.into(), key: key.into_bytes(), val: pid.to_ne_bytes().to_vec() });
        }
    }
    Found { ends, boot }
}

/// The records of the ends whose master is in the job (after the file
/// plugin's barriers), and the controlling terminal's key if it is one.
pub fn collect(found: &Found, flags_of: impl Fn(i32) -> i32) -> (Vec<PtyRec>, Option<String>) {
    let mut out = Vec::new();
    let mut in_job: Vec<u32> = Vec::new();
    for &(fd, n, master) in &found.ends {
        let key = format!("{}:{n}", found.boot);
        let known = in_job.contains(&n) || master || crate::coord::kv_get(DB, key.as_bytes()).flatten().is_some();
        if !known {
            continue;
        }
        in_job.push(n);
        let mut r = PtyRec { fd, key, master, flags: flags_of(fd), ..Default::default() };
        // SAFETY: a zeroed termios/winsize for the ioctls to fill.
        let (mut tio, mut ws): (libc::termios, libc::winsize) = unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        // SAFETY: tcgetattr and TIOCGWINSZ write our structs.
        unsafe {
            if !master && libc::tcgetattr(fd, &mut tio) == 0 {
                // The struct was zeroed first, so its padding is initialised too.
                r.termios = core::slice::from_raw_parts(&tio as *const libc::termios as *const u8, core::mem::size_of::<libc::termios>()).to_vec();
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
                    r.fg = pg;
                }
                if libc::ioctl(fd, libc::FIONREAD, &mut pending) == 0 && pending > 0 {
                    crate::log::warn(format_args!(
                        "pty master fd {fd}: {pending} bytes of output not read yet will not survive a restart"
                    ));
                }
            }
        }
        out.push(r);
    }
    (out, ctty_key(&found.boot, &in_job))
}

/// The controlling terminal, if it is pty `n` of the job.
fn ctty_key(boot: &str, in_job: &[u32]) -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let tty_nr: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(4)?.parse().ok()?;
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    if !(136..=143).contains(&major) {
        return None;
    }
    let n = (major - 136) * 256 + minor;
    in_job.contains(&n).then(|| format!("{boot}:{n}"))
}
