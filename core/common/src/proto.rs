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

/// Write one message as a JSON line.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Read one JSON-line message; `Ok(None)` at end of stream.
pub fn recv<R: BufRead, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line).map(Some).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut buf = Vec::new();
        send(&mut buf, &ToCoord::Command { cmd: Cmd::Interval(5) }).unwrap();
        send(&mut buf, &FromCoord::BarrierDone { name: "suspended".into(), count: 2 }).unwrap();
        let mut r = std::io::BufReader::new(&buf[..]);
        match recv::<_, ToCoord>(&mut r).unwrap() {
            Some(ToCoord::Command { cmd: Cmd::Interval(5) }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(recv::<_, FromCoord>(&mut r).unwrap(), Some(FromCoord::BarrierDone { .. })));
        assert!(recv::<_, FromCoord>(&mut r).unwrap().is_none());
    }
}
