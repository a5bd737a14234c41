//! Internal plugin "timers": interval timers (alarm/setitimer), POSIX
//! timers (timer_create) and pending signals across a restart.
//!
//! At checkpoint time (user threads suspended) it records the remaining
//! time and interval of the three interval timers, every POSIX timer of the
//! process as /proc/self/timers lists it (id, signal, value, notification,
//! clock) with its timer_gettime, and the signals pending for the whole
//! process. After a restart the restored process (a fresh one, with no
//! timers) re-creates the POSIX timers at the same ids, in order, with
//! throw-away timers filling gaps, arms everything with the remaining
//! times, and raises the pending signals again; signals pending for one
//! thread are raised by that thread itself (the engine, when it resumes). A
//! checkpoint that is only resumed changes nothing: the kernel kept it all.
//!
//! Real-time signals queued for the process come back as often as they
//! were queued, in order, with their values (taken out with
//! `rt_sigtimedwait` at checkpoint time and queued again at once).
//!
//! Real-time signals queued for one thread are kept the same way by the
//! thread itself when it suspends (the engine).
//!
//! Limits: timers of clocks that count CPU time of another
//! process are not re-created.

use crate::engine::iface::{self as dmtcp, Event, Plugin};
use dmtcp_sys::{nr, syscall3};
use std::sync::Mutex;

#[derive(Clone, Copy, Default)]
struct PosixTimer {
    id: i32,
    signo: i32,
    value: u64,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID (with `tid`).
    notify: i32,
    tid: i32,
    clock: i32,
    spec: [libc::timespec; 2],
}

#[derive(Default)]
struct Saved {
    itimers: Vec<(i32, libc::itimerval)>,
    timers: Vec<PosixTimer>,
    /// Real-time signals queued for the process, every instance with its
    /// siginfo (value, sender), in queue order.
    queued: Vec<RawInfo>,
}

/// A kernel siginfo (128 bytes) kept as plain words.
#[derive(Clone, Copy)]
#[repr(C)]
struct RawInfo([u64; 16]);
const _: () = assert!(core::mem::size_of::<RawInfo>() == core::mem::size_of::<libc::siginfo_t>());

impl RawInfo {
    fn signo(&self) -> i32 {
        self.0[0] as u32 as i32
    }
    fn code(&self) -> i32 {
        (self.0[1] & 0xffff_ffff) as u32 as i32
    }
}

/// Queue `info` for our own process again: with its siginfo where the
/// kernel lets us (sigqueue-style codes), else as a plain kill.
fn requeue(info: &RawInfo) {
    let pid = dmtcp_sys::getpid() as usize;
    let sig = info.signo() as usize;
    // SAFETY: rt_sigqueueinfo reads our 128-byte siginfo; kill takes numbers.
    unsafe {
        if info.code() >= 0
            || dmtcp_sys::syscall3(
                nr::RT_SIGQUEUEINFO,
                pid,
                sig,
                info as *const RawInfo as usize,
            ) < 0
        {
            syscall3(nr::KILL, pid, sig, 0);
        }
    }
}

/// Take every queued instance of the real-time signals pending for the
/// process (shown by `pending`), in order, and queue them again at once:
/// the process keeps them, and the image has their values.
fn capture_queued(pending: u64, skip: i32) -> Vec<RawInfo> {
    let mut out = Vec::new();
    for sig in 34..=64i32 {
        if sig == skip || pending & (1u64 << (sig - 1)) == 0 {
            continue;
        }
        let set: u64 = 1u64 << (sig - 1);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let first = out.len();
        loop {
            let mut info = RawInfo([0; 16]);
            // SAFETY: rt_sigtimedwait reads our set and timeout, writes `info`.
            let r = unsafe {
                dmtcp_sys::syscall6(
                    nr::RT_SIGTIMEDWAIT,
                    &set as *const u64 as usize,
                    &mut info as *mut RawInfo as usize,
                    &zero as *const libc::timespec as usize,
                    8,
                    0,
                    0,
                )
            };
            if r != sig as isize {
                break;
            }
            out.push(info);
        }
        for info in &out[first..] {
            requeue(info);
        }
    }
    out
}

pub struct TimerPlugin {
    saved: Mutex<Saved>,
}

impl TimerPlugin {
    pub fn new() -> Self {
        TimerPlugin {
            saved: Mutex::new(Saved::default()),
        }
    }
}

const SIGEV_THREAD_ID: i32 = 4;

/// Parse /proc/self/timers.
fn list_timers() -> Vec<PosixTimer> {
    let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let (k, v) = line
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim()))
            .unwrap_or(("", ""));
        match k {
            "ID" => {
                out.extend(cur.take());
                cur = Some(PosixTimer {
                    id: v.parse().unwrap_or(-1),
                    ..Default::default()
                });
            }
            "signal" => {
                if let (Some(t), Some((s, val))) = (cur.as_mut(), v.split_once('/')) {
                    t.signo = s.parse().unwrap_or(0);
                    t.value = u64::from_str_radix(val, 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((how, who))) = (cur.as_mut(), v.split_once('/')) {
                    // "signal/tid.N": a signal to thread N (SIGEV_THREAD_ID);
                    // "signal/pid.N": to the process.
                    t.notify = match how {
                        "none" => libc::SIGEV_NONE,
                        _ => libc::SIGEV_SIGNAL,
                    } | if who.starts_with("tid") {
                        SIGEV_THREAD_ID
                    } else {
                        0
                    };
                    t.tid = who
                        .rsplit('.')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
            "ClockID" => {
                if let Some(t) = cur.as_mut() {
                    t.clock = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out.retain(|t| t.id >= 0);
    out.sort_by_key(|t| t.id);
    out
}

/// The kernel's struct sigevent (64 bytes on x86-64).
#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}
const _: () = assert!(core::mem::size_of::<KSigevent>() == 64);

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, ...)` (Linux 6.15): while on,
/// timer_create takes the id to give from its output argument.
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

/// Create a timer like `t`; in restore-ids mode with the id `t` had.
fn create(t: &PosixTimer) -> i32 {
    let ev = KSigevent {
        value: t.value,
        signo: t.signo,
        notify: t.notify,
        tid: t.tid,
        _pad: [0; 11],
    };
    let mut id: i32 = t.id;
    // SAFETY: timer_create reads our sigevent and writes the new id.
    let r = unsafe {
        syscall3(
            nr::TIMER_CREATE,
            t.clock as usize,
            &ev as *const KSigevent as usize,
            &mut id as *mut i32 as usize,
        )
    };
    if r < 0 {
        -1
    } else {
        id
    }
}

impl Plugin for TimerPlugin {
    fn name(&self) -> &'static str {
        "timers"
    }
    fn event(&self, ev: Event) {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::PreCheckpoint => {
                let pending = dmtcp::process_pending();
                dmtcp::set_process_pending(pending);
                s.queued = capture_queued(pending, dmtcp::ckpt_signal());
                s.itimers.clear();
                for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
                    // SAFETY: a zeroed itimerval for getitimer to fill.
                    let mut v: libc::itimerval = unsafe { core::mem::zeroed() };
                    // SAFETY: getitimer writes our struct.
                    if unsafe { libc::getitimer(which, &mut v) } != 0 {
                        continue;
                    }
                    let armed = v.it_value.tv_sec != 0 || v.it_value.tv_usec != 0;
                    let periodic = v.it_interval.tv_sec != 0 || v.it_interval.tv_usec != 0;
                    // A periodic timer that has just expired reads 0 until
                    // its signal is taken (the kernel re-arms it then): it
                    // is still armed, next due one interval after that
                    // signal, which is pending and raised again at restart.
                    if !armed && periodic {
                        v.it_value = v.it_interval;
                    }
                    if armed || periodic {
                        s.itimers.push((which, v));
                    }
                }
                s.timers = list_timers();
                for t in s.timers.iter_mut() {
                    // SAFETY: timer_gettime writes two timespecs.
                    unsafe {
                        syscall3(
                            nr::TIMER_GETTIME,
                            t.id as usize,
                            t.spec.as_mut_ptr() as usize,
                            0,
                        )
                    };
                }
            }
            Event::Restart => {
                let mut dummies = Vec::new();
                // Where the kernel lets us name the id, every timer gets its
                // own (any id, however large); else ids come in order from
                // 0 in a fresh process, and gaps are filled.
                // SAFETY: a prctl on our own process.
                let explicit = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } == 0;
                for t in &s.timers {
                    let mut id = create(t);
                    while !explicit && id >= 0 && id < t.id {
                        // Unarmed, deleted below.
                        dummies.push(id);
                        id = create(t);
                    }
                    if id != t.id {
                        dmtcp::warn(format_args!("POSIX timer {} came back as {id}", t.id));
                        continue;
                    }
                    // SAFETY: timer_settime reads our itimerspec.
                    unsafe {
                        syscall3(nr::TIMER_SETTIME, id as usize, 0, t.spec.as_ptr() as usize)
                    };
                }
                if explicit {
                    // SAFETY: back to the normal way of giving ids.
                    unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
                }
                for d in dummies {
                    // SAFETY: deleting a placeholder timer we created.
                    unsafe { syscall3(nr::TIMER_DELETE, d as usize, 0, 0) };
                }
                for (which, v) in &s.itimers {
                    // SAFETY: setitimer reads our struct.
                    unsafe { libc::setitimer(*which, v, core::ptr::null_mut()) };
                }
                let ckpt_bit = 1u64 << (dmtcp::ckpt_signal() - 1);
                let mut shared = dmtcp::saved_process_pending() & !ckpt_bit;
                for q in &s.queued {
                    shared &= !(1u64 << (q.signo() - 1));
                }
                for sig in 1..=64usize {
                    if shared & (1u64 << (sig - 1)) != 0 {
                        // SAFETY: signalling our own process.
                        unsafe { syscall3(nr::KILL, dmtcp_sys::getpid() as usize, sig, 0) };
                    }
                }
                for q in &s.queued {
                    requeue(q);
                }
            }
            _ => {}
        }
    }
}
