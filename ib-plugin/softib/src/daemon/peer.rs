//! Links between the services of different nodes.
//!
//! A service sends packets for a remote LID over one persistent TCP
//! connection per LID, opened lazily by a writer thread: it looks the LID
//! up in the fabric directory, connects, then writes the frames queued on
//! the link's channel (the service lock is never held while writing). A
//! reader thread on the same connection applies the acks the remote
//! service sends back. The remote side answers on the connection a packet
//! came in on, so acks of one QP come back in order.
//!
//! Frames are a little-endian `u32` length and a bincode [`PeerMsg`]; the
//! connecting side starts with [`PeerMsg::Hello`]. Anything malformed
//! closes the connection. When a link fails (unknown LID, connection
//! refused or broken), every RC request waiting for an ack on it is lost:
//! it completes with RETRY_EXC_ERR once its requester's retry budget is
//! spent; the LID is not tried again for [`DEAD_LID_HOLD`].

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bincode::Options;
use crossbeam_channel::{Receiver, TryRecvError};
use serde::{Deserialize, Serialize};

use super::datapath::{self, Ack, Packet};
use super::state::{ConnHandle, Link, Origin, Shared, State};

/// First frame of a link: magic and version.
const MAGIC: u64 = 0x736f_6674_6962_2f31;
const PEER_VERSION: u32 = 1;
/// Largest frame: the largest message and some room for its header.
const MAX_FRAME: u64 = crate::proto::MAX_MSG_SIZE + 4096;
/// How long a LID that could not be reached fails at once.
const DEAD_LID_HOLD: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BUF_BYTES: usize = 256 * 1024;

/// Messages between services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum PeerMsg {
    Hello {
        magic: u64,
        version: u32,
    },
    /// A packet for a QP of the receiving service.
    Deliver(Packet),
    /// The answer to a packet this side delivered.
    Ack(Ack),
}

fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME)
}

/// Writes one frame.
pub(crate) fn write_frame(w: &mut impl Write, msg: &PeerMsg) -> io::Result<()> {
    let o = options();
    let len = o
        .serialized_size(msg)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let len = u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    w.write_all(&len.to_le_bytes())?;
    o.serialize_into(w, msg)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Reads one frame; `None` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read) -> io::Result<Option<PeerMsg>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as u64;
    if len > MAX_FRAME {
        return Err(io::ErrorKind::InvalidData.into());
    }
    // Grows with what actually arrives, whatever the length claims.
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    options()
        .deserialize(&body)
        .map(Some)
        .map_err(|_| io::ErrorKind::InvalidData.into())
}

/// Queues `msg` on the link of `lid`, opening the link if there is none.
/// Returns the link's id, or `None` if the LID is known to be unreachable.
pub(crate) fn send_to_lid(st: &mut State, lid: u16, msg: PeerMsg) -> Option<u64> {
    if let Some(&until) = st.dead_lids.get(&lid) {
        if Instant::now() < until {
            return None;
        }
        st.dead_lids.remove(&lid);
    }
    if let Some(l) = st.links.get(&lid) {
        if l.tx.send(msg).is_ok() {
            return Some(l.id);
        }
        return None;
    }
    let shared = st.shared.upgrade()?;
    if shared.stop.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    let id = st.next_id();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _ = tx.send(msg);
    st.links.insert(lid, Link { id, tx });
    let spawned = std::thread::Builder::new()
        .name(format!("softib-link-{lid:04x}"))
        .spawn(move || link_thread(shared, id, lid, rx));
    if spawned.is_err() {
        st.links.remove(&lid);
        return None;
    }
    Some(id)
}

/// Removes link `id` (if still there) and fails its outstanding requests;
/// `dead`: the LID could not be reached at all.
fn fail_link(shared: &Shared, id: u64, dead: Option<u16>) {
    let mut st = shared.lock();
    st.links.retain(|_, l| l.id != id);
    st.conns.remove(&id);
    if let Some(lid) = dead {
        st.dead_lids.insert(lid, Instant::now() + DEAD_LID_HOLD);
    }
    datapath::fail_link_entries(&mut st, id);
}

/// Writes frames from `rx` until the channel closes or writing fails;
/// flushes whenever the channel is empty.
fn write_loop(stream: TcpStream, rx: &Receiver<PeerMsg>, first: Option<PeerMsg>) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(BUF_BYTES, stream);
    if let Some(m) = first {
        write_frame(&mut w, &m)?;
    }
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                w.flush()?;
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return w.flush(),
                }
            }
            Err(TryRecvError::Disconnected) => return w.flush(),
        };
        write_frame(&mut w, &msg)?;
    }
}

/// The writer side of an outgoing link.
fn link_thread(shared: Arc<Shared>, id: u64, lid: u16, rx: Receiver<PeerMsg>) {
    let stream = super::fabric::lookup(&shared.fabric, lid)
        .and_then(|addr| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT));
    let stream = match stream {
        Ok(s) => s,
        Err(_) => return fail_link(&shared, id, Some(lid)),
    };
    let _ = stream.set_nodelay(true);
    let (reader, handle) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(r), Ok(h)) => (r, h),
        _ => return fail_link(&shared, id, Some(lid)),
    };
    {
        let mut st = shared.lock();
        if shared.stop.load(std::sync::atomic::Ordering::SeqCst)
            || !st.links.values().any(|l| l.id == id)
        {
            drop(st);
            return fail_link(&shared, id, None);
        }
        st.conns.insert(id, ConnHandle::Tcp(handle));
    }
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("softib-ack-{lid:04x}"))
        .spawn(move || {
            let _ = ack_loop(&sh, reader);
            fail_link(&sh, id, None);
        });
    if spawned.is_err() {
        return fail_link(&shared, id, None);
    }
    let shutdown = stream.try_clone();
    let _ = write_loop(
        stream,
        &rx,
        Some(PeerMsg::Hello {
            magic: MAGIC,
            version: PEER_VERSION,
        }),
    );
    if let Ok(s) = shutdown {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    fail_link(&shared, id, None);
}

/// Reads acks from an outgoing link.
fn ack_loop(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    let mut r = BufReader::with_capacity(BUF_BYTES, stream);
    loop {
        let batch = read_batch(&mut r)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut st = shared.lock();
        for m in batch {
            match m {
                PeerMsg::Ack(a) => datapath::apply_ack(&mut st, a),
                _ => return Err(io::ErrorKind::InvalidData.into()),
            }
        }
    }
}

/// Reads one frame, then more while they are already buffered (one lock
/// for several frames). Empty at end of stream.
fn read_batch(r: &mut BufReader<TcpStream>) -> io::Result<Vec<PeerMsg>> {
    let mut out = Vec::new();
    match read_frame(r)? {
        Some(m) => out.push(m),
        None => return Ok(out),
    }
    while out.len() < 256 && r.buffer().len() >= 4 {
        match read_frame(r)? {
            Some(m) => out.push(m),
            None => break,
        }
    }
    Ok(out)
}

/// Serves an inbound connection from another service: delivers its
/// packets, sends acks back through a writer thread.
pub(crate) fn serve_inbound(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (Ok(writer), Ok(handle)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let id = {
        let mut st = shared.lock();
        let id = st.next_id();
        st.conns.insert(id, ConnHandle::Tcp(handle));
        id
    };
    let mut r = BufReader::with_capacity(BUF_BYTES, stream);
    let hello = matches!(
        read_frame(&mut r),
        Ok(Some(PeerMsg::Hello {
            magic: MAGIC,
            version: PEER_VERSION
        }))
    );
    if hello {
        let (tx, rx) = crossbeam_channel::unbounded();
        shared.lock().inbound.insert(id, tx);
        let spawned = std::thread::Builder::new()
            .name("softib-peer-w".into())
            .spawn(move || {
                let shutdown = writer.try_clone();
                let _ = write_loop(writer, &rx, None);
                if let Ok(s) = shutdown {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            });
        if spawned.is_ok() {
            let _ = deliver_loop(&shared, id, &mut r);
        }
    }
    let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
    let mut st = shared.lock();
    st.inbound.remove(&id);
    st.conns.remove(&id);
    datapath::drop_origin(&mut st, Origin::Conn(id));
}

fn deliver_loop(shared: &Shared, id: u64, r: &mut BufReader<TcpStream>) -> io::Result<()> {
    loop {
        let batch = read_batch(r)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut st = shared.lock();
        for m in batch {
            match m {
                PeerMsg::Deliver(p) => datapath::deliver(&mut st, Origin::Conn(id), p),
                _ => return Err(io::ErrorKind::InvalidData.into()),
            }
        }
    }
}
