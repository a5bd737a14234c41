//! A connection to the node's softib service: requests with answers under a
//! lock, posts (no answer) without one.

use softib::proto::{self, Req, Resp};
use softib::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

pub(crate) struct Conn {
    pub(crate) fd: OwnedFd,
    lock: Mutex<()>,
}

fn bad_answer() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "softib: malformed answer from the service",
    )
}

impl Conn {
    /// Connects to the service and checks the protocol version.
    pub(crate) fn open() -> io::Result<Conn> {
        let path = softib::paths::socket();
        let fd = sys::connect_seqpacket(&path)?;
        let c = Conn {
            fd,
            lock: Mutex::new(()),
        };
        match c
            .call(&Req::Hello {
                version: proto::VERSION,
            })?
            .0
        {
            Resp::Hello { version } if version == proto::VERSION => Ok(c),
            Resp::Hello { version } => Err(io::Error::other(format!(
                "softib: the service at {} speaks protocol {version}, this library {}",
                path.display(),
                proto::VERSION
            ))),
            _ => Err(bad_answer()),
        }
    }

    /// Sends a request and waits for its answer (and the fd it may carry).
    pub(crate) fn call(&self, req: &Req) -> io::Result<(Resp, Option<OwnedFd>)> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        sys::send_packet(self.fd.as_raw_fd(), &proto::encode(req), None)?;
        let mut buf = vec![0u8; 64 * 1024];
        let (n, fd) = sys::recv_packet(self.fd.as_raw_fd(), &mut buf)?;
        drop(guard);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "softib: the service closed the device",
            ));
        }
        let resp = proto::decode::<Resp>(&buf[..n]).ok_or_else(bad_answer)?;
        Ok((resp, fd))
    }

    /// A request answered with Ok or an errno: returns 0 or the errno.
    pub(crate) fn call_status(&self, req: &Req) -> i32 {
        match self.call(req) {
            Ok((Resp::Ok, _)) => 0,
            Ok((Resp::Err(e), _)) => e,
            Ok(_) => libc::EPROTO,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Sends a request that has no answer.
    pub(crate) fn post(&self, req: &Req) -> i32 {
        match sys::send_packet(self.fd.as_raw_fd(), &proto::encode(req), None) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Asks the service for its devices; `Err` when there is no service.
pub(crate) fn query_devices() -> io::Result<Vec<proto::DevInfo>> {
    let c = Conn::open()?;
    match c.call(&Req::QueryDevices)?.0 {
        Resp::Devices(d) => Ok(d),
        _ => Err(bad_answer()),
    }
}
