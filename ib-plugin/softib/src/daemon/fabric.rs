//! The fabric directory: how services of different nodes find each other.
//!
//! Every port's LID is a file in the directory, named by the LID in four
//! lowercase hex digits and holding `<ip>:<port>\n`, the TCP address of the
//! service that owns the port. A service picks its LIDs at random and
//! creates their files exclusively (a complete temporary file hard-linked to
//! the final name, which fails if the name exists, so a reader never sees a
//! half-written file); a file left by a service that died (its address
//! refuses connections) is replaced.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Error;

/// Largest unicast LID.
const MAX_LID: u16 = 0xBFFF;

/// Path of `lid`'s file.
pub fn lid_path(fabric: &Path, lid: u16) -> PathBuf {
    fabric.join(format!("{lid:04x}"))
}

/// The service address registered for `lid`.
pub fn lookup(fabric: &Path, lid: u16) -> io::Result<SocketAddr> {
    let text = std::fs::read_to_string(lid_path(fabric, lid))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad fabric entry"))
}

/// True when nothing accepts connections at `addr` any more (the service
/// that registered it is gone).
fn is_stale(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
    }
}

/// Registers a fresh random LID (none of `taken`) for `addr`; returns it.
pub(crate) fn register(fabric: &Path, addr: SocketAddr, taken: &[u16]) -> Result<u16, Error> {
    let io_err = |what: &str, e| Error::Io {
        what: format!("{what} in {}", fabric.display()),
        source: e,
    };
    std::fs::create_dir_all(fabric).map_err(|e| io_err("creating the fabric directory", e))?;
    let content = format!("{addr}\n");
    let tmp = fabric.join(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        crate::sys::random_u64()
    ));
    std::fs::write(&tmp, &content).map_err(|e| io_err("writing a LID file", e))?;
    let result = (|| {
        for _ in 0..10_000 {
            let lid = (crate::sys::random_u64() % MAX_LID as u64) as u16 + 1;
            if taken.contains(&lid) {
                continue;
            }
            let path = lid_path(fabric, lid);
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => return Ok(lid),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Replace the file of a service that is gone; an entry
                    // being written or unreadable counts as in use.
                    if lookup(fabric, lid).map(is_stale).unwrap_or(false) {
                        let _ = std::fs::remove_file(&path);
                        if std::fs::hard_link(&tmp, &path).is_ok() {
                            return Ok(lid);
                        }
                    }
                }
                Err(e) => return Err(io_err("creating a LID file", e)),
            }
        }
        Err(Error::NoLid(fabric.to_path_buf()))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Removes `lid`'s file if it is still ours (holds `addr`).
pub(crate) fn unregister(fabric: &Path, lid: u16, addr: SocketAddr) {
    if lookup(fabric, lid).ok() == Some(addr) {
        let _ = std::fs::remove_file(lid_path(fabric, lid));
    }
}
