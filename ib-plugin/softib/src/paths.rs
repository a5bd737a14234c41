//! Where a node's service listens and where the fabric directory is.
//!
//! `SOFTIB_DIR` (default `/tmp/softib`) holds one directory per node, named
//! by the host name (the test rig gives each node its own), with the
//! service's socket, and `fabric/`, shared by all nodes, which maps each
//! LID to the TCP address of the service that owns it.

use std::path::PathBuf;

/// Root directory of the device's run-time files.
pub fn root() -> PathBuf {
    std::env::var_os("SOFTIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/softib"))
}

/// This host's name (the node's name inside the test rig).
pub fn hostname() -> String {
    crate::sys::hostname().unwrap_or_else(|| "localhost".into())
}

/// The node's service socket: `SOFTIB_SOCKET`, else `<root>/<host>/softibd.sock`.
pub fn socket() -> PathBuf {
    if let Some(p) = std::env::var_os("SOFTIB_SOCKET") {
        return PathBuf::from(p);
    }
    root().join(hostname()).join("softibd.sock")
}

/// The fabric directory: `SOFTIB_FABRIC`, else `<root>/fabric`.
pub fn fabric() -> PathBuf {
    std::env::var_os("SOFTIB_FABRIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fabric"))
}
