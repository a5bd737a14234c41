//! The connection to the coordinator, kept at a fixed, protected fd number so
//! that after a restart the same object works on the new socket.

use super::fds::PROTECTED_FD_BASE;
use dmtcp_common::proto::{FromCoord, ToCoord};
use std::io::{BufReader, Read, Write};

/// The fd the coordinator socket lives at.
pub const COORD_FD: i32 = PROTECTED_FD_BASE + 1;

/// Raw fd reader/writer (no ownership: the fd is the library's for life).
pub struct Fd(pub i32);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: reading into a live buffer.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match dmtcp_sys::write_all(self.0, buf) {
            0 => Ok(buf.len()),
            e => Err(std::io::Error::from_raw_os_error(-e as i32)),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The coordinator link.
pub struct Coord {
    reader: BufReader<Fd>,
    /// Checkpoint requests that arrived while a barrier or a name-service
    /// query waited for its own answer (a new round may start while the
    /// last one's resume hooks still wait at a barrier): the main loop
    /// takes them first.
    held: std::collections::VecDeque<FromCoord>,
}

impl Coord {
    /// Take over `fd` (moved to COORD_FD, close-on-exec).
    pub fn adopt(fd: i32) -> Coord {
        if fd != COORD_FD {
            // SAFETY: dup2/close of fds we own.
            unsafe {
                super::fdguard::dup_own(fd, COORD_FD);
                libc::close(fd);
            }
        }
        // SAFETY: fcntl on our fd.
        unsafe { libc::fcntl(COORD_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        Coord {
            reader: BufReader::new(Fd(COORD_FD)),
            held: Default::default(),
        }
    }

    /// Forget buffered input (after a restart the socket is a new one).
    pub fn reset(&mut self) {
        self.reader = BufReader::new(Fd(COORD_FD));
        self.held.clear();
    }

    /// Is input already buffered or held (so poll would not report it)?
    pub fn buffered(&self) -> bool {
        !self.held.is_empty() || !self.reader.buffer().is_empty()
    }

    pub fn send(&mut self, m: &ToCoord) -> std::io::Result<()> {
        dmtcp_common::proto::send(&mut Fd(COORD_FD), m)
    }

    /// The next message: a held one first, else from the connection.
    pub fn recv(&mut self) -> std::io::Result<Option<FromCoord>> {
        match self.held.pop_front() {
            Some(m) => Ok(Some(m)),
            None => self.recv_wire(),
        }
    }

    /// The next message from the connection.
    fn recv_wire(&mut self) -> std::io::Result<Option<FromCoord>> {
        dmtcp_common::proto::recv(&mut self.reader)
    }

    /// Wait for the answer `want` picks out; a checkpoint request that
    /// comes first is held for the main loop, other messages are stale
    /// and dropped; Kill ends the process. None if the link is gone.
    fn answer<T>(&mut self, want: impl Fn(FromCoord) -> Result<T, FromCoord>) -> Option<T> {
        loop {
            match self.recv_wire() {
                Ok(Some(FromCoord::Kill)) => dmtcp_sys::exit_group(0),
                Ok(Some(m)) => match want(m) {
                    Ok(t) => return Some(t),
                    Err(m @ FromCoord::DoCheckpoint { .. }) => self.held.push_back(m),
                    // A forked round ended (it may come while this waits
                    // at a barrier of the next steps of its own round).
                    Err(FromCoord::Settled { generation, commit }) => {
                        super::capi::settled(generation, commit)
                    }
                    Err(_) => {}
                },
                _ => return None,
            }
        }
    }
}

/// The connection, shared by the checkpoint thread and the plugin hooks it
/// runs (never used by user threads).
pub static LINK: super::flock::FLock<Option<Coord>> = super::flock::FLock::new(None);

/// Install the connection (start-up).
pub fn install(c: Coord) {
    LINK.with(|l| *l = Some(c));
}

/// Use the connection; None before it is installed.
pub fn with<R>(f: impl FnOnce(&mut Coord) -> R) -> Option<R> {
    LINK.with(|l| l.as_mut().map(f))
}

/// Send a message (false if there is no connection or it failed).
pub fn send(m: &ToCoord) -> bool {
    with(|c| c.send(m).is_ok()).unwrap_or(false)
}

/// Receive the next message.
pub fn recv() -> std::io::Result<Option<FromCoord>> {
    with(|c| c.recv()).unwrap_or(Ok(None))
}

/// How many processes took part in the last barrier (0 if not told).
pub static LAST_COUNT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// The last barrier's verdict on the round ("checkpointed": every process
/// wrote its image, so the images may replace the previous generation).
pub static LAST_COMMIT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Reach the named barrier and wait for every participant; Kill ends the
/// process. False if the coordinator is gone.
#[allow(clippy::result_large_err)] // `answer`'s closure hands back what it does not want
pub fn barrier(name: &str) -> bool {
    if !send(&ToCoord::Barrier { name: name.into() }) {
        return false;
    }
    let got = with(|c| {
        c.answer(|m| match m {
            FromCoord::BarrierDone {
                name: n,
                count,
                commit,
            } if n == name => Ok(Some((count, commit))),
            // The round was given up (a process did not suspend in time).
            FromCoord::RoundFailed { .. } => Ok(None),
            other => Err(other),
        })
    })
    .flatten()
    .flatten();
    let Some((count, commit)) = got else {
        return false;
    };
    LAST_COUNT.store(count, core::sync::atomic::Ordering::SeqCst);
    LAST_COMMIT.store(commit, core::sync::atomic::Ordering::SeqCst);
    true
}

/// Look a key up in the computation's name service.
#[allow(clippy::result_large_err)] // `answer`'s closure, as in barrier
pub fn kv_get(db: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
    if !send(&ToCoord::KvGet {
        db: db.into(),
        key: key.to_vec(),
    }) {
        return None;
    }
    with(|c| {
        c.answer(|m| match m {
            FromCoord::KvValue { val } => Ok(val),
            other => Err(other),
        })
    })
    .flatten()
}

/// One page of a listing of the computation's name service (see
/// `ToCoord::KvList`).
#[allow(clippy::result_large_err)] // `answer`'s closure, as in kv_get
pub fn kv_list(
    db: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    max: u32,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if !send(&ToCoord::KvList {
        db: db.into(),
        prefix: prefix.to_vec(),
        after: after.map(<[u8]>::to_vec),
        max,
    }) {
        return None;
    }
    with(|c| {
        c.answer(|m| match m {
            FromCoord::KvEntries { entries } => Ok(entries),
            other => Err(other),
        })
    })
    .flatten()
}
