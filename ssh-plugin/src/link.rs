//! The relay between dmtcp_ssh and dmtcp_sshd: framed streams over the
//! real ssh's stdin/stdout, and the drain that makes a checkpoint see no
//! byte in flight.
//!
//! A frame is `type (1 byte) | length (4 bytes, little endian) | payload`.
//! Before a checkpoint (PRESUSPEND, program threads still running) each
//! side stops reading its local inputs, sends `DRAIN` after everything it
//! had queued, and keeps reading the link until the peer's `DRAIN`: what
//! arrives meanwhile stays in the relay's buffers, which are part of the
//! image, and is delivered after resume or restart.
#![allow(dead_code)]

use crate::sys;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

pub const HELLO: u8 = 1;
pub const STDIN: u8 = 2;
pub const STDOUT: u8 = 3;
pub const STDERR: u8 = 4;
/// End of a stream: payload one byte, 0 = stdin, 1 = stdout, 2 = stderr.
pub const EOF: u8 = 5;
/// The remote command exited: payload its code (i32 LE).
pub const EXIT: u8 = 6;
/// dmtcp_ssh → dmtcp_sshd: deliver this signal (i32 LE) to the command.
pub const SIGNAL: u8 = 7;
/// The remote command was killed by this signal (i32 LE).
pub const KILLED: u8 = 8;
/// Checkpoint marker: nothing follows it until the checkpoint is over.
pub const DRAIN: u8 = 9;

/// Largest payload of a data frame.
pub const MAX_FRAME: usize = 64 * 1024;
/// Stop reading a source while this much waits to be written.
const HIGH_WATER: usize = 4 << 20;

/// Bytes waiting to be written to one fd.
#[derive(Default)]
pub struct Queue {
    buf: Vec<u8>,
    start: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn push(&mut self, b: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(b);
    }
    pub fn push_frame(&mut self, ty: u8, payload: &[u8]) {
        self.push(&[ty]);
        self.push(&(payload.len() as u32).to_le_bytes());
        self.push(payload);
    }
    /// Read up to MAX_FRAME bytes from `fd` as one frame of type `ty`
    /// (nothing queued when the read gives nothing).
    fn read_frame(&mut self, fd: RawFd, ty: u8) -> io::Result<usize> {
        let head = self.buf.len();
        self.push(&[ty, 0, 0, 0, 0]);
        let head = if self.buf.len() == 5 { 0 } else { head };
        match read_append(fd, &mut self.buf, MAX_FRAME) {
            Ok(n) if n > 0 => {
                self.buf[head + 1..head + 5].copy_from_slice(&(n as u32).to_le_bytes());
                Ok(n)
            }
            r => {
                self.buf.truncate(head);
                r
            }
        }
    }

    /// Write what the fd takes now; Err on a broken fd.
    fn flush_some(&mut self, fd: RawFd) -> io::Result<()> {
        while !self.is_empty() {
            match sys::write(fd, &self.buf[self.start..]) {
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

/// Read at most this much from the link at once.
const LINK_READ: usize = 256 * 1024;

/// Read up to `max` bytes from `fd` onto the end of `buf`.
fn read_append(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let old = buf.len();
    buf.resize(old + max, 0);
    let r = sys::read(fd, &mut buf[old..]);
    buf.truncate(old + *r.as_ref().unwrap_or(&0));
    r
}

/// A local fd the relay writes to.
pub struct Out {
    pub fd: RawFd,
    pub q: Queue,
    /// Close the fd once the queue is empty (end of stream).
    pub close_when_empty: bool,
    pub closed: bool,
}

impl Out {
    pub fn new(fd: RawFd) -> Out {
        sys::set_nonblock(fd, true);
        sys::grow_pipe(fd);
        Out {
            fd,
            q: Queue::default(),
            close_when_empty: false,
            closed: false,
        }
    }
    pub fn send(&mut self, b: &[u8]) {
        if !self.closed {
            self.q.push(b);
        }
    }
}

/// Where the bytes read from a source go.
#[derive(Clone, Copy)]
pub enum Dest {
    /// Into frames of this type on the link.
    Link(u8),
    /// Straight to local output `n`.
    Local(usize),
}

pub struct Source {
    pub fd: RawFd,
    pub dest: Dest,
    pub open: bool,
}

impl Source {
    pub fn new(fd: RawFd, dest: Dest) -> Source {
        sys::set_nonblock(fd, true);
        sys::grow_pipe(fd);
        Source {
            fd,
            dest,
            open: true,
        }
    }
}

/// What a side does with what the relay sees.
pub trait Role {
    /// A frame from the peer (never DRAIN).
    fn frame(&mut self, r: &mut Relay, ty: u8, data: &[u8]);
    /// Source `idx` reached its end.
    fn source_eof(&mut self, r: &mut Relay, idx: usize);
    /// The wake fd was poked (a signal), outside a drain.
    fn wake(&mut self, r: &mut Relay);
    /// The link ended (read side).
    fn link_lost(&mut self, r: &mut Relay);
    /// After a restart: put a new link at `r.link_in`/`r.link_out`.
    fn reconnect(&mut self, r: &mut Relay) -> io::Result<()>;
}

/// The relay's state (all of it is saved in the image).
pub struct Relay {
    pub link_in: RawFd,
    pub link_out: RawFd,
    inbuf: Vec<u8>,
    pub linkq: Queue,
    pub outs: Vec<Out>,
    pub srcs: Vec<Source>,
    pub in_dead: bool,
    pub out_dead: bool,
    /// End the loop.
    pub done: bool,
    /// End the loop once everything queued for the link is written.
    pub closing: bool,
    draining: bool,
    peer_marker: bool,
}

/// A short name in a fixed buffer: what the restart hooks use, which run
/// while the program's threads are suspended (no allocation there).
pub struct Name {
    buf: [u8; 256],
    len: usize,
}

impl Name {
    pub const fn new() -> Name {
        Name {
            buf: [0; 256],
            len: 0,
        }
    }
    /// Append (cut at the buffer's end).
    pub fn push(&mut self, b: &[u8]) -> &mut Name {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Fill with `f` (it returns the length it wrote).
    pub fn fill(&mut self, f: impl FnOnce(&mut [u8]) -> usize) {
        self.len = f(&mut self.buf).min(self.buf.len());
    }
}

/// The abstract socket where a restored dmtcp_sshd waits for its session.
pub fn socket_name(session: &[u8]) -> Name {
    let mut n = Name::new();
    n.push(b"dmtcp-ssh-").push(session);
    n
}

/// Wakes the relay's poll (hooks and signal handlers write to it).
pub static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Signals received, one bit each (for `Role::wake`).
pub static SIGNALS: AtomicU64 = AtomicU64::new(0);

pub extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALS.fetch_or(1 << sig, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        sys::eventfd_poke(fd);
    }
}

/// Take the signals received since the last call.
pub fn take_signals() -> Vec<i32> {
    let bits = SIGNALS.swap(0, Ordering::SeqCst);
    (1..64).filter(|s| bits & (1 << s) != 0).collect()
}

impl Relay {
    pub fn new(link_in: RawFd, link_out: RawFd) -> io::Result<Relay> {
        let wake = sys::eventfd()?;
        WAKE_FD.store(wake, Ordering::SeqCst);
        sys::set_nonblock(link_in, true);
        sys::set_nonblock(link_out, true);
        sys::grow_pipe(link_in);
        sys::grow_pipe(link_out);
        Ok(Relay {
            link_in,
            link_out,
            inbuf: Vec::new(),
            linkq: Queue::default(),
            outs: Vec::new(),
            srcs: Vec::new(),
            in_dead: false,
            out_dead: false,
            done: false,
            closing: false,
            draining: false,
            peer_marker: false,
        })
    }

    pub fn send(&mut self, ty: u8, payload: &[u8]) {
        if !self.out_dead {
            self.linkq.push_frame(ty, payload);
        }
    }

    pub fn send_i32(&mut self, ty: u8, v: i32) {
        self.send(ty, &v.to_le_bytes());
    }

    /// A new link after a restart: non-blocking, nothing half-read.
    pub fn relinked(&mut self) {
        sys::set_nonblock(self.link_in, true);
        sys::set_nonblock(self.link_out, true);
        sys::grow_pipe(self.link_in);
        sys::grow_pipe(self.link_out);
        self.in_dead = false;
        self.out_dead = false;
    }

    fn pending_out(&self) -> usize {
        self.outs.iter().map(|o| o.q.len()).sum()
    }

    /// Run until the role says done. Checkpoint phases come through CTL.
    pub fn run(&mut self, role: &mut dyn Role) {
        CTL.start();
        self.run_loop(role);
        CTL.finish();
    }

    fn run_loop(&mut self, role: &mut dyn Role) {
        let wake = WAKE_FD.load(Ordering::SeqCst);
        loop {
            if self.closing && (self.linkq.is_empty() || self.out_dead) {
                self.done = true;
            }
            if self.done {
                return;
            }
            if !self.draining && CTL.drain_requested() {
                self.draining = true;
                self.send(DRAIN, &[]);
            }
            if self.draining
                && (self.linkq.is_empty() || self.out_dead)
                && (self.peer_marker || self.in_dead)
            {
                let restarted = CTL.drained_wait();
                self.draining = false;
                self.peer_marker = false;
                if restarted {
                    self.inbuf.clear();
                    if let Err(e) = role.reconnect(self) {
                        eprintln!("dmtcp_ssh: cannot reconnect the ssh session after restart: {e}");
                        self.in_dead = true;
                        self.out_dead = true;
                        role.link_lost(self);
                    }
                }
                // What was signalled during the drain (a child's exit).
                role.wake(self);
                continue;
            }
            // Poll set: wake, link in, link out, sources, outputs.
            let mut pfd: Vec<libc::pollfd> =
                Vec::with_capacity(3 + self.srcs.len() + self.outs.len());
            let ev = |fd: RawFd, events: libc::c_short| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            pfd.push(ev(wake, libc::POLLIN));
            let want_in = !self.in_dead && (self.draining || self.pending_out() < HIGH_WATER);
            pfd.push(ev(if want_in { self.link_in } else { -1 }, libc::POLLIN));
            let want_out = !self.out_dead && !self.linkq.is_empty();
            pfd.push(ev(if want_out { self.link_out } else { -1 }, libc::POLLOUT));
            let read_src = !self.draining && self.linkq.len() < HIGH_WATER;
            for s in &self.srcs {
                let on = read_src
                    && s.open
                    && match s.dest {
                        Dest::Local(n) => self.outs[n].q.len() < HIGH_WATER,
                        Dest::Link(_) => true,
                    };
                pfd.push(ev(if on { s.fd } else { -1 }, libc::POLLIN));
            }
            for o in &self.outs {
                let on = !o.closed && !o.q.is_empty();
                pfd.push(ev(if on { o.fd } else { -1 }, libc::POLLOUT));
            }
            match sys::poll(&mut pfd, -1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("dmtcp_ssh: poll: {e}");
                    self.done = true;
                    continue;
                }
            }
            let ready = |p: &libc::pollfd, ev: libc::c_short| {
                p.revents & (ev | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            };
            if ready(&pfd[0], libc::POLLIN) {
                sys::eventfd_clear(wake);
                if !self.draining {
                    role.wake(self);
                }
            }
            if ready(&pfd[2], libc::POLLOUT) && self.linkq.flush_some(self.link_out).is_err() {
                self.out_dead = true;
            }
            if ready(&pfd[1], libc::POLLIN) {
                self.read_link(role);
            }
            let base = 3;
            for i in 0..self.srcs.len() {
                if ready(&pfd[base + i], libc::POLLIN) {
                    self.read_source(role, i);
                }
            }
            let base = base + self.srcs.len();
            for i in 0..self.outs.len() {
                if ready(&pfd[base + i], libc::POLLOUT) {
                    let o = &mut self.outs[i];
                    if o.q.flush_some(o.fd).is_err() {
                        o.closed = true;
                        o.q = Queue::default();
                    }
                }
            }
            for o in &mut self.outs {
                if o.close_when_empty && o.q.is_empty() && !o.closed {
                    sys::close(o.fd);
                    o.closed = true;
                }
            }
        }
    }

    fn read_link(&mut self, role: &mut dyn Role) {
        let mut buf = std::mem::take(&mut self.inbuf);
        match read_append(self.link_in, &mut buf, LINK_READ) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                self.inbuf = buf;
                return;
            }
            Ok(0) | Err(_) => {
                self.inbuf = buf;
                self.in_dead = true;
                if !self.draining {
                    role.link_lost(self);
                }
                return;
            }
            Ok(_) => {}
        }
        let mut at = 0;
        while buf.len() - at >= 5 {
            let ty = buf[at];
            let len =
                u32::from_le_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
            if buf.len() - at - 5 < len {
                break;
            }
            let data = &buf[at + 5..at + 5 + len];
            if ty == DRAIN {
                self.peer_marker = true;
            } else {
                role.frame(self, ty, data);
            }
            at += 5 + len;
        }
        buf.drain(..at);
        self.inbuf = buf;
    }

    fn read_source(&mut self, role: &mut dyn Role, i: usize) {
        let fd = self.srcs[i].fd;
        let r = match self.srcs[i].dest {
            Dest::Link(ty) if !self.out_dead => self.linkq.read_frame(fd, ty),
            Dest::Link(_) => read_append(fd, &mut Vec::new(), MAX_FRAME),
            Dest::Local(o) => read_append(fd, &mut self.outs[o].q.buf, LINK_READ),
        };
        match r {
            Ok(0) => {
                self.srcs[i].open = false;
                role.source_eof(self, i);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => {
                self.srcs[i].open = false;
                role.source_eof(self, i);
            }
        }
    }

    /// Write every local output out (blocking), e.g. before exiting.
    pub fn flush_outputs(&mut self) {
        for o in &mut self.outs {
            if !o.closed {
                sys::set_nonblock(o.fd, false);
                let _ = sys::write_all(o.fd, &o.q.buf[o.q.start..]);
                o.q = Queue::default();
            }
        }
    }
}

/// The relay's side of the checkpoint: the plugin's hooks (checkpoint
/// thread) meet the relay loop (main thread) here.
pub struct Ctl {
    m: Mutex<CtlState>,
    cv: Condvar,
}

struct CtlState {
    /// The relay loop runs (it answers drain requests).
    active: bool,
    /// A drain is asked for and not done yet.
    req: bool,
    /// This checkpoint round asked for a drain (so its end releases the relay).
    in_round: bool,
    /// The end of the drained round, for the relay to take: 1 resumed,
    /// 2 restarted. Only the relay clears it: a new round's PRESUSPEND may
    /// come before the relay ran again after RESUME.
    phase: u32,
}

pub static CTL: Ctl = Ctl {
    m: Mutex::new(CtlState {
        active: false,
        req: false,
        in_round: false,
        phase: 0,
    }),
    cv: Condvar::new(),
};

impl Ctl {
    fn lock(&self) -> std::sync::MutexGuard<'_, CtlState> {
        self.m.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The relay loop is about to run: drain requests from now on wait for it.
    pub fn start(&self) {
        self.lock().active = true;
    }
    fn finish(&self) {
        let mut g = self.lock();
        g.active = false;
        g.req = false;
        self.cv.notify_all();
    }
    fn drain_requested(&self) -> bool {
        self.lock().req
    }
    /// The drain is done: release the hook, wait for the end of the
    /// checkpoint. True if this process was restarted. A new drain request
    /// instead of an end (a round that stopped without RESUME) also ends
    /// the wait: the relay drains again.
    fn drained_wait(&self) -> bool {
        let mut g = self.lock();
        g.req = false;
        self.cv.notify_all();
        while g.phase == 0 && !g.req {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        let r = g.phase == 2;
        g.phase = 0;
        r
    }
    /// PRESUSPEND hook: have the relay drain the link, wait until it has.
    pub fn presuspend(&self) {
        let mut g = self.lock();
        if !g.active {
            return;
        }
        g.req = true;
        g.in_round = true;
        self.cv.notify_all();
        let fd = WAKE_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            sys::eventfd_poke(fd);
        }
        while g.req && g.active {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
    /// RESUME / RESTART hook: let the relay go on.
    pub fn resume(&self, restarted: bool) {
        let mut g = self.lock();
        if g.in_round {
            g.in_round = false;
            g.phase = if restarted { 2 } else { 1 };
            self.cv.notify_all();
        }
    }
}
