//! A software InfiniBand device.
//!
//! Device state lives in a per-node service (`softib daemon`, see [`daemon`]),
//! as a real HCA's lives in the adapter: a process using the device talks to
//! it through a Unix socket (one connection per opened device context) with
//! the messages of [`proto`], and reads completions from a shared ring
//! ([`ring`]) without system calls. The drop-in `libibverbs.so.1`
//! (ib-plugin/verbs) is that client. Services of different nodes reach each
//! other over TCP; each port has its own LID, found through a fabric
//! directory shared by the nodes ([`daemon::fabric`]).

pub mod daemon;
pub mod paths;
pub mod proto;
pub mod ring;
pub mod sys;
pub mod sysfs;
