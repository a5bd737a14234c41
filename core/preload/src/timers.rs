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
//! thread are raised by that thread itself (`threads::reapply`). A
//! checkpoint that is only resumed changes nothing: the kernel kept it all.
//!
//! Limits: a real-time signal queued several times comes back once, and
//! without its value; timers of clocks that count CPU time of another
//! process are not re-created.

use crate::plugin::{Event, Plugin};
use crate::threads;
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
}

pub struct TimerPlugin {
    saved: Mutex<Saved>,
}

impl TimerPlugin {
    pub fn new() -> Self {
        TimerPlugin { saved: Mutex::new(Saved::default()) }
    }
}

const TIMER_GETTIME: usize = 224;
const TIMER_SETTIME: usize = 223;
const TIMER_CREATE: usize = 222;
const TIMER_DELETE: usize = 226;
const SIGEV_THREAD_ID: i32 = 4;

/// Parse /proc/self/timers.
fn list_timers() -> Vec<PosixTimer> {
    let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let (k, v) = line.split_once(':').map(|(k, v)| (k.trim(), v.trim())).unwrap_or(("", ""));
        match k {
            "ID" => {
                out.extend(cur.take());
                cur = Some(PosixTimer { id: v.parse().unwrap_or(-1), ..Default::default() });
            }
            "signal" => {
                if let (Some(t), Some((s, val))) = (cur.as_mut(), v.split_once('/')) {
                    t.signo = s.parse().unwrap_or(0);
                    t.value = u64::from_str_radix(val, 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((how, who))) = (cur.as_mut(), v.split_once('/')) {
                    t.notify = match how {
                        "thread" => SIGEV_THREAD_ID,
                        "none" => libc::SIGEV_NONE,
                        _ => libc::SIGEV_SIGNAL,
                    };
                    t.tid = who.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
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

fn create(t: &PosixTimer) -> i32 {
    let ev = KSigevent { value: t.value, signo: t.signo, notify: t.notify, tid: t.tid, _pad: [0; 11] };
    let mut id: i32 = -1;
    // SAFETY: timer_create reads our sigevent and writes the new id.
    let r = unsafe {
        syscall3(TIMER_CREATE, t.clock as usize, &ev as *const KSigevent as usize, &mut id as *mut i32 as usize)
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
                threads::SHARED_PENDING.store(threads::sigpending(), core::sync::atomic::Ordering::SeqCst);
                s.itimers.clear();
                for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
                    // SAFETY: a zeroed itimerval for getitimer to fill.
                    let mut v: libc::itimerval = unsafe { core::mem::zeroed() };
                    // SAFETY: getitimer writes our struct.
                    if unsafe { libc::getitimer(which, &mut v) } == 0 && (v.it_value.tv_sec != 0 || v.it_value.tv_usec != 0) {
                        s.itimers.push((which, v));
                    }
                }
                s.timers = list_timers();
                for t in s.timers.iter_mut() {
                    // SAFETY: timer_gettime writes two timespecs.
                    unsafe { syscall3(TIMER_GETTIME, t.id as usize, t.spec.as_mut_ptr() as usize, 0) };
                }
            }
            Event::Restart => {
                let mut dummies = Vec::new();
                for t in &s.timers {
                    // Ids come in order from 0 in a fresh process: fill gaps.
                    let mut id = create(t);
                    while id >= 0 && id < t.id {
                        // Unarmed, deleted below.
                        dummies.push(id);
                        id = create(t);
                    }
                    if id != t.id {
                        crate::log::warn(format_args!("POSIX timer {} came back as {id}", t.id));
                        continue;
                    }
                    // SAFETY: timer_settime reads our itimerspec.
                    unsafe { syscall3(TIMER_SETTIME, id as usize, 0, t.spec.as_ptr() as usize) };
                }
                for d in dummies {
                    // SAFETY: deleting a placeholder timer we created.
                    unsafe { syscall3(TIMER_DELETE, d as usize, 0, 0) };
                }
                for (which, v) in &s.itimers {
                    // SAFETY: setitimer reads our struct.
                    unsafe { libc::setitimer(*which, v, core::ptr::null_mut()) };
                }
                let ckpt_bit = 1u64 << (threads::CKPT_SIGNAL.load(core::sync::atomic::Ordering::SeqCst) - 1);
                let shared = threads::SHARED_PENDING.load(core::sync::atomic::Ordering::SeqCst) & !ckpt_bit;
                for sig in 1..=64usize {
                    if shared & (1u64 << (sig - 1)) != 0 {
                        // SAFETY: signalling our own process.
                        unsafe { syscall3(nr::KILL, dmtcp_sys::getpid() as usize, sig, 0) };
                    }
                }
            }
            _ => {}
        }
    }
}
