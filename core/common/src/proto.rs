//! The coordinator protocol: one JSON object per line over TCP.
//!
//! Workers (processes of the job, through the preload library) and command
//! clients (`dmtcp_command`) connect and introduce themselves with `Hello`.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Who is connecting.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    /// A process of the job.
    Worker,
    /// `dmtcp_command` and similar one-shot clients.
    Command,
}

/// A command from `dmtcp_command`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Cmd {
    Status,
    List,
    Checkpoint,
    /// Reply only once every image is written.
    BlockingCheckpoint,
    /// Checkpoint, then kill the job.
    KillAfterCheckpoint,
    Kill,
    Quit,
    Interval(u32),
}

/// Messages to the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum ToCoord {
    Hello {
        role: Role,
        pid: i32,
        hostname: String,
        program: String,
        uniq_id: String,
        /// Set when the process comes back from an image.
        restarting: bool,
        /// Computation id from the image (restart only).
        comp_id: Option<String>,
        generation: u32,
        /// Processes in the checkpointed computation (restart only).
        num_peers: u32,
    },
    Command { cmd: Cmd },
    /// This worker reached the named barrier.
    Barrier { name: String },
    /// This worker finished writing its image.
    CkptDone { image: String, bytes: u64, error: Option<String> },
    /// The program asked for a checkpoint (dmtcp_checkpoint()).
    RequestCkpt,
    /// Publish `val` under (`db`, `key`) in the computation's name service.
    KvPut { db: String, key: Vec<u8>, val: Vec<u8> },
    /// Look up (`db`, `key`); answered with `KvValue`.
    KvGet { db: String, key: Vec<u8> },
}

/// One peer, as `dmtcp_command --list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: u64,
    pub program: String,
    pub pid: i32,
    pub hostname: String,
    pub uniq_id: String,
    pub state: String,
}

/// Messages from the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum FromCoord {
    Welcome {
        comp_id: String,
        generation: u32,
        interval: u32,
        /// Directory all images go to, when the coordinator has one.
        ckpt_dir: Option<String>,
    },
    /// Start a checkpoint of the given generation.
    DoCheckpoint { generation: u32, ckpt_dir: Option<String>, num_peers: u32 },
    /// Every participant reached the barrier.
    BarrierDone {
        name: String,
        /// How many processes took part (the final count of a checkpoint round).
        #[serde(default)]
        count: u32,
        /// At "checkpointed": every process of the round wrote its image,
        /// which may now replace the previous generation's.
        #[serde(default)]
        commit: bool,
    },
    /// Exit now.
    Kill,
    /// Answer to a `Command`.
    Reply(Reply),
    /// The connection is refused (for instance a worker of another computation).
    Refused { reason: String },
    /// Answer to `KvGet` (None when the key is unknown).
    KvValue { val: Option<Vec<u8>> },
}

/// Answer to a command.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    /// DMTCP's status names: DMT_COORD_SUCCESS, DMT_COORD_ERROR, ...
    pub status: String,
    pub num_peers: u32,
    pub running: bool,
    pub interval: u32,
    pub comp_id: String,
    pub generation: u32,
    pub peers: Vec<PeerInfo>,
    pub message: Option<String>,
    /// Image paths of the last completed checkpoint.
    pub images: Vec<String>,
}

/// Longest line either side accepts (the newline excluded). The largest
/// messages are name-service values (`KvPut`/`KvValue`: a plugin's value
/// travels as a JSON array of numbers, up to 4 bytes per byte) and the
/// coordinator's `Reply` with every peer (a few hundred bytes each): 16 MiB
/// holds values of 4 MiB and replies for tens of thousands of processes.
pub const MAX_LINE: usize = 16 << 20;

/// What is wrong with a line of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message longer than {max} bytes without a newline (the protocol's limit)")]
    LineTooLong { max: usize },
    #[error("message of {len} bytes is longer than the protocol's limit of {max} bytes")]
    MessageTooLong { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl From<ProtoError> for std::io::Error {
    fn from(e: ProtoError) -> std::io::Error {
        let kind = match e {
            ProtoError::MessageTooLong { .. } => std::io::ErrorKind::InvalidInput,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// One message as a JSON line (with its newline); refused when longer than
/// [`MAX_LINE`], which the other side would not read.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut line = serde_json::to_vec(msg)?;
    if line.len() > MAX_LINE {
        return Err(ProtoError::MessageTooLong { len: line.len(), max: MAX_LINE });
    }
    line.push(b'\n');
    Ok(line)
}

/// Write one message as a JSON line.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let line = encode(msg)?;
    w.write_all(&line)?;
    w.flush()
}

/// Read one JSON-line message; `Ok(None)` at end of stream. A line longer
/// than [`MAX_LINE`] is an error (kind `InvalidData`, a [`ProtoError`]
/// inside) after at most `MAX_LINE` bytes plus the reader's buffer were
/// taken from `r`: the stream is then out of step and should be dropped.
pub fn recv<R: BufRead, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    match read_line(r, MAX_LINE)? {
        None => Ok(None),
        Some(line) => serde_json::from_slice(&line).map(Some).map_err(|e| ProtoError::Malformed(e).into()),
    }
}

/// The next line of `r` without its newline (the last line may lack one),
/// at most `max` bytes; None at end of stream.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(ProtoError::LineTooLong { max }.into());
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take + done as usize);
        if done {
            return Ok(Some(line));
        }
    }
}

/// The [`ProtoError`] inside an error of [`recv`] or [`send`], if any.
pub fn proto_error(e: &std::io::Error) -> Option<&ProtoError> {
    e.get_ref().and_then(|i| i.downcast_ref::<ProtoError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut buf = Vec::new();
        send(&mut buf, &ToCoord::Command { cmd: Cmd::Interval(5) }).unwrap();
        send(&mut buf, &FromCoord::BarrierDone { name: "suspended".into(), count: 2, commit: false }).unwrap();
        let mut r = std::io::BufReader::new(&buf[..]);
        match recv::<_, ToCoord>(&mut r).unwrap() {
            Some(ToCoord::Command { cmd: Cmd::Interval(5) }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(recv::<_, FromCoord>(&mut r).unwrap(), Some(FromCoord::BarrierDone { .. })));
        assert!(recv::<_, FromCoord>(&mut r).unwrap().is_none());
    }

    /// A stream of `a`s with no newline, `limit` bytes long.
    struct Endless {
        given: usize,
        limit: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = b.len().min(self.limit - self.given);
            b[..n].fill(b'a');
            self.given += n;
            Ok(n)
        }
    }

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let limit = 64 << 20;
        let mut r = std::io::BufReader::new(Endless { given: 0, limit });
        let e = recv::<_, ToCoord>(&mut r).unwrap_err();
        let taken = r.get_ref().given;
        assert!(taken <= (16 << 20) + (64 << 10), "{taken} bytes taken for one line");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("without a newline"), "{e}");
        assert!(matches!(proto_error(&e), Some(ProtoError::LineTooLong { .. })), "{e:?}");
    }

    #[test]
    fn lines_up_to_the_limit_are_read() {
        // A JSON string of exactly MAX_LINE bytes, read through a small buffer.
        let body = "b".repeat(MAX_LINE - 2);
        let mut data = format!("\"{body}\"\n").into_bytes();
        data.extend_from_slice(b"\"x\"");
        let mut r = std::io::BufReader::with_capacity(1000, &data[..]);
        assert_eq!(recv::<_, String>(&mut r).unwrap().map(|s| s.len()), Some(MAX_LINE - 2));
        // The last line may lack its newline.
        assert_eq!(recv::<_, String>(&mut r).unwrap().as_deref(), Some("x"));
        assert!(recv::<_, String>(&mut r).unwrap().is_none());
        // One byte more is refused.
        let data = format!("\"{body}b\"\n").into_bytes();
        let e = recv::<_, String>(&mut std::io::BufReader::new(&data[..])).unwrap_err();
        assert!(matches!(proto_error(&e), Some(ProtoError::LineTooLong { max: MAX_LINE })), "{e:?}");
    }

    #[test]
    fn messages_over_the_limit_are_not_sent() {
        // A value of 4 MiB of 255s is 16 MiB of JSON: too long.
        let big = ToCoord::KvPut { db: "d".into(), key: vec![], val: vec![255; 4 << 20] };
        let mut out = Vec::new();
        let e = send(&mut out, &big).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(matches!(proto_error(&e), Some(ProtoError::MessageTooLong { .. })), "{e:?}");
        assert!(out.is_empty(), "part of a refused message was written");
        // 3 MiB fits.
        let ok = ToCoord::KvPut { db: "d".into(), key: vec![], val: vec![255; 3 << 20] };
        send(&mut out, &ok).unwrap();
        let back: ToCoord = recv(&mut std::io::BufReader::new(&out[..])).unwrap().unwrap();
        assert!(matches!(back, ToCoord::KvPut { val, .. } if val.len() == 3 << 20));
    }

    #[test]
    fn malformed_lines_are_errors() {
        let e = recv::<_, ToCoord>(&mut std::io::BufReader::new(&b"{not json}\n"[..])).unwrap_err();
        assert!(matches!(proto_error(&e), Some(ProtoError::Malformed(_))), "{e:?}");
        let e = recv::<_, ToCoord>(&mut std::io::BufReader::new(&b"\"\xff\xfe\"\n"[..])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
