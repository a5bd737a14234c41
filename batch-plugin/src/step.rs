//! The link between `dmtcp_srun --relay` (srun's stand-in, a process of
//! the computation) and each `dmtcp_srun --task` (the parent of one task
//! of the step, a process of the computation on the task's node): a TCP
//! connection, made by the task side at start-up. Being a connection
//! between two processes of the computation, the engine drains it at a
//! checkpoint and makes it again at a restart, also between hosts.
//!
//! Frames, fixed size: `HELLO` (task → relay: the step's token as 32 hex
//! digits, the task's rank and the step's task count, u32 LE each), `EXIT`
//! (task → relay: the task's exit code, i32 LE), `KILLED` (task → relay:
//! the signal that killed it), `SIGNAL` (relay → task: deliver this signal
//! to the task).

pub const HELLO: u8 = b'H';
pub const EXIT: u8 = b'E';
pub const KILLED: u8 = b'K';
pub const SIGNAL: u8 = b'S';
/// The step's token: 16 random bytes as hex (in the environment srun
/// passes to the tasks, never on a command line).
pub const TOKEN_LEN: usize = 32;

/// Environment of the task side: where the relay listens (`host:port`).
pub const ENV_RELAY: &str = "DMTCP_SRUN_RELAY";
/// Environment of the task side: the step's token.
pub const ENV_TOKEN: &str = "DMTCP_SRUN_TOKEN";

#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Frame {
    Hello {
        token: [u8; TOKEN_LEN],
        rank: u32,
        ntasks: u32,
    },
    Exit(i32),
    Killed(i32),
    Signal(i32),
}

fn len_of(ty: u8) -> Option<usize> {
    match ty {
        HELLO => Some(1 + TOKEN_LEN + 8),
        EXIT | KILLED | SIGNAL => Some(5),
        _ => None,
    }
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + TOKEN_LEN + 8);
        match self {
            Frame::Hello {
                token,
                rank,
                ntasks,
            } => {
                v.push(HELLO);
                v.extend_from_slice(token);
                v.extend_from_slice(&rank.to_le_bytes());
                v.extend_from_slice(&ntasks.to_le_bytes());
            }
            Frame::Exit(c) | Frame::Killed(c) | Frame::Signal(c) => {
                v.push(match self {
                    Frame::Exit(_) => EXIT,
                    Frame::Killed(_) => KILLED,
                    _ => SIGNAL,
                });
                v.extend_from_slice(&c.to_le_bytes());
            }
        }
        v
    }
}

/// Bytes received so far, cut into frames.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame; Err for a byte that starts no frame (the
    /// connection is then not ours: drop it).
    pub fn next_frame(&mut self) -> Option<Result<Frame, u8>> {
        let ty = *self.buf.first()?;
        let Some(n) = len_of(ty) else {
            return Some(Err(ty));
        };
        if self.buf.len() < n {
            return None;
        }
        let f: Vec<u8> = self.buf.drain(..n).collect();
        let u = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        Some(Ok(match ty {
            HELLO => {
                let mut token = [0; TOKEN_LEN];
                token.copy_from_slice(&f[1..1 + TOKEN_LEN]);
                Frame::Hello {
                    token,
                    rank: u(1 + TOKEN_LEN),
                    ntasks: u(5 + TOKEN_LEN),
                }
            }
            EXIT => Frame::Exit(u(1) as i32),
            KILLED => Frame::Killed(u(1) as i32),
            _ => Frame::Signal(u(1) as i32),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let frames = [
            Frame::Hello {
                token: [b'a'; TOKEN_LEN],
                rank: 3,
                ntasks: 70000,
            },
            Frame::Exit(-2),
            Frame::Killed(9),
            Frame::Signal(15),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = Reader::default();
        let mut got = Vec::new();
        for b in bytes.chunks(3) {
            r.push(b);
            while let Some(f) = r.next_frame() {
                got.push(f.unwrap());
            }
        }
        assert_eq!(got, frames);
        r.push(b"X");
        assert_eq!(r.next_frame(), Some(Err(b'X')));
    }
}
