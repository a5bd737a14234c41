//! The coordinator protocol: one JSON object per line over TCP.
//!
//! Workers (processes of the job, through the preload library) and command
//! clients (`dmtcp_command`) connect and introduce themselves with `Hello`.
//!
//! A message is one variant of [`ToCoord`] or [`FromCoord`], written as a
//! JSON object naming the variant under `"t"` and its fields beside it:
//! `{"t":"Barrier","name":"suspended"}`, `{"t":"Kill"}`. The enums are
//! plain (externally tagged) serde enums; [`encode`] and [`recv`] move the
//! variant's name into the object and back (see [`decode`] for why serde's
//! own `#[serde(tag = "t")]` is not used).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::{BufRead, Write};

/// Who is connecting.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    /// A process of the job.
    Worker,
    /// `dmtcp_command` and similar one-shot clients.
    Command,
    /// The forked child that writes the image of a process of the job
    /// (forked checkpointing): it names its process by `uniq_id` and the
    /// round by `generation` in its `Hello`, reports `Writing` and
    /// `CkptDone` for it, and gets the round's verdict
    /// (`BarrierDone` "checkpointed"). Not a process of the job.
    Writer,
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
        /// The answer to the coordinator's `Challenge`:
        /// HMAC-SHA256(secret, nonce) in hex (see [`crate::auth`]).
        #[serde(default)]
        auth: Option<String>,
    },
    Command {
        cmd: Cmd,
    },
    /// This worker reached the named barrier.
    Barrier {
        name: String,
    },
    /// This worker finished writing its image.
    CkptDone {
        image: String,
        bytes: u64,
        error: Option<String>,
        /// CRC-32 of the whole image file (for the generation's manifest).
        #[serde(default)]
        crc32: u32,
        /// The image header's own CRC.
        #[serde(default)]
        header_crc: u32,
    },
    /// Still writing its image (`bytes` so far): sent every second while
    /// the image is written, so that the coordinator can tell a slow
    /// writer from a stopped process.
    Writing {
        bytes: u64,
    },
    /// The program asked for a checkpoint (dmtcp_checkpoint()).
    RequestCkpt,
    /// Publish `val` under (`db`, `key`) in the computation's name service.
    KvPut {
        db: String,
        key: Vec<u8>,
        val: Vec<u8>,
    },
    /// Look up (`db`, `key`); answered with `KvValue`.
    KvGet {
        db: String,
        key: Vec<u8>,
    },
    /// List the entries of `db` whose key begins with `prefix`, in key
    /// order, from the first key after `after` (from the first with
    /// `prefix` when None); answered with `KvEntries`, whose records
    /// (8 bytes each besides key and value) add up to at most `max` bytes
    /// and [`KV_LIST_MAX`] (but hold at least one entry when any is left).
    KvList {
        db: String,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        max: u32,
    },
}

/// The most bytes of records one `KvEntries` answer holds (each byte is up
/// to 4 bytes of JSON: 12 MiB of a [`MAX_LINE`] of 16 MiB); a single entry
/// larger than that is still sent alone.
pub const KV_LIST_MAX: usize = 3 << 20;

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
pub enum FromCoord {
    Welcome {
        comp_id: String,
        generation: u32,
        interval: u32,
        /// Directory all images go to, when the coordinator has one.
        ckpt_dir: Option<String>,
    },
    /// Start a checkpoint of the given generation.
    DoCheckpoint {
        generation: u32,
        ckpt_dir: Option<String>,
        num_peers: u32,
        /// The coordinator takes images written by forked children
        /// (`Role::Writer` connections) in this round: a process launched
        /// with forked checkpointing may fork its writer.
        #[serde(default)]
        fork: bool,
    },
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
    /// The first message of every connection: the client answers with
    /// HMAC-SHA256(secret, nonce) in its `Hello` (see [`crate::auth`]).
    Challenge { nonce: String },
    /// Exit now.
    Kill,
    /// Answer to a `Command`.
    Reply(Reply),
    /// The connection is refused (for instance a worker of another computation).
    Refused { reason: String },
    /// Answer to `KvGet` (None when the key is unknown).
    KvValue { val: Option<Vec<u8>> },
    /// Answer to `KvList`: (key, value) in key order; empty when no entry
    /// is left.
    KvEntries { entries: Vec<(Vec<u8>, Vec<u8>)> },
    /// The round this process is in (or whose barrier it reached) was given
    /// up before every process suspended: no image is written; resume.
    RoundFailed { reason: String },
    /// To the processes of a round whose images forked writers wrote, once
    /// the last writer has reported (they were released at "committed"
    /// before that): whether generation `generation` was committed. A
    /// program waiting in `dmtcp_checkpoint()` returns then.
    Settled { generation: u32, commit: bool },
    /// To a blocking checkpoint's client while the round runs: `written`
    /// of `total` processes have written their images, `bytes` in all.
    Progress {
        written: u32,
        total: u32,
        bytes: u64,
    },
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
    #[error("not a protocol message (a variant serialized as neither \"Name\" nor {{\"Name\":{{...}}}})")]
    NotAMessage,
}

impl From<ProtoError> for std::io::Error {
    fn from(e: ProtoError) -> std::io::Error {
        let kind = match e {
            ProtoError::MessageTooLong { .. } | ProtoError::NotAMessage => {
                std::io::ErrorKind::InvalidInput
            }
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// A message of the protocol: [`ToCoord`] or [`FromCoord`]. Their
/// variants are unit, struct or newtype-of-a-struct variants, and no
/// field is named `"t"` (the key that names the variant on the wire).
pub trait Message: Serialize + DeserializeOwned {}
impl Message for ToCoord {}
impl Message for FromCoord {}

/// One message as a JSON line (with its newline); refused when longer than
/// [`MAX_LINE`], which the other side would not read.
pub fn encode<T: Message>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut line = serde_json::to_vec(msg)?;
    inline_tag(&mut line)?;
    if line.len() > MAX_LINE {
        return Err(ProtoError::MessageTooLong {
            len: line.len(),
            max: MAX_LINE,
        });
    }
    line.push(b'\n');
    Ok(line)
}

/// serde_json writes a variant of a plain enum as `"Name"` (unit) or
/// `{"Name":{fields}}` (struct, or newtype of a struct); the wire has
/// `{"t":"Name"}` and `{"t":"Name",fields}`. Variant names are Rust
/// identifiers (no quote, no escape), so the first `":` ends the name.
fn inline_tag(json: &mut Vec<u8>) -> Result<(), ProtoError> {
    let head = |name: &[u8], more: bool| {
        let mut h = b"{\"t\":\"".to_vec();
        h.extend_from_slice(name);
        h.push(b'"');
        if more {
            h.push(b',');
        }
        h
    };
    if json.len() >= 2 && json.starts_with(b"\"") && json.ends_with(b"\"") {
        let name = json[1..json.len() - 1].to_vec();
        *json = head(&name, false);
        json.push(b'}');
        return Ok(());
    }
    let name_end = json
        .get(2..)
        .and_then(|s| s.windows(2).position(|w| w == b"\":"))
        .map(|p| p + 2)
        .filter(|&e| json.starts_with(b"{\"") && json.get(e + 2) == Some(&b'{'))
        .filter(|_| json.ends_with(b"}}"))
        .ok_or(ProtoError::NotAMessage)?;
    // `{"Name":{` becomes `{"t":"Name",` (no comma before `}` when there
    // are no fields), and the outer object's `}` goes.
    json.pop();
    let more = json.len() > name_end + 4;
    let name = json[2..name_end].to_vec();
    json.splice(..name_end + 3, head(&name, more));
    Ok(())
}

/// Write one message as a JSON line.
pub fn send<W: Write, T: Message>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let line = encode(msg)?;
    w.write_all(&line)?;
    w.flush()
}

/// Read one JSON-line message; `Ok(None)` at end of stream. A line longer
/// than [`MAX_LINE`] is an error (kind `InvalidData`, a [`ProtoError`]
/// inside) after at most `MAX_LINE` bytes plus the reader's buffer were
/// taken from `r`: the stream is then out of step and should be dropped.
/// So is a line that is not a message of type `T` ([`decode`]).
pub fn recv<R: BufRead, T: Message>(r: &mut R) -> std::io::Result<Option<T>> {
    match read_line(r, MAX_LINE)? {
        None => Ok(None),
        Some(line) => decode(&line)
            .map(Some)
            .map_err(|e| ProtoError::Malformed(e).into()),
    }
}

/// Decode one line (without its newline) as a message.
///
/// serde's internally tagged enums (`#[serde(tag = "t")]`) read a whole
/// object into a tree of values before they look at the tag, some 50 bytes
/// for each value of the line (a 16 MiB line of `0,0,0...` took 400 MiB,
/// in every connection's thread of the coordinator). Here the line is read
/// twice instead: once for the tag alone (the other values are skipped,
/// not kept), then straight into the variant, whose own fields skip the
/// `"t"` key like any key they do not know. Memory then follows what the
/// message holds, not how many values its line has; skipped values, however
/// deeply nested, take no stack (serde_json skips them without recursion).
pub fn decode<T: Message>(line: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let msg = T::deserialize(Tagged { line, de: &mut de })?;
    de.end()?;
    Ok(msg)
}

type JsonDe<'de> = serde_json::Deserializer<serde_json::de::SliceRead<'de>>;

/// The variant name of the object in `line`.
fn tag_of(line: &[u8]) -> Result<Cow<'_, str>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        t: Cow<'a, str>,
    }
    if line.iter().find(|b| !b" \t\r\n".contains(b)) != Some(&b'{') {
        return Err(de::Error::custom("a message is a JSON object"));
    }
    Ok(serde_json::from_slice::<Head>(line)?.t)
}

/// The deserializer a message enum is read from: it offers the line's
/// object as the variant its tag names.
struct Tagged<'a, 'de> {
    line: &'de [u8],
    de: &'a mut JsonDe<'de>,
}

impl<'de> de::Deserializer<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("protocol messages are enums"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let tag = tag_of(self.line)?;
        visitor.visit_enum(Variant { tag, de: self.de })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// One message's variant: its name, and the object holding its fields.
struct Variant<'a, 'de> {
    tag: Cow<'de, str>,
    de: &'a mut JsonDe<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), Self::Error> {
        let v = seed.deserialize(self.tag.as_ref().into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        de::IgnoredAny::deserialize(&mut *self.de).map(|_| ())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "tuple variants are not protocol messages",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_map(&mut *self.de, visitor)
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
        send(
            &mut buf,
            &ToCoord::Command {
                cmd: Cmd::Interval(5),
            },
        )
        .unwrap();
        send(
            &mut buf,
            &FromCoord::BarrierDone {
                name: "suspended".into(),
                count: 2,
                commit: false,
            },
        )
        .unwrap();
        let mut r = std::io::BufReader::new(&buf[..]);
        match recv::<_, ToCoord>(&mut r).unwrap() {
            Some(ToCoord::Command {
                cmd: Cmd::Interval(5),
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv::<_, FromCoord>(&mut r).unwrap(),
            Some(FromCoord::BarrierDone { .. })
        ));
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
        assert!(
            taken <= (16 << 20) + (64 << 10),
            "{taken} bytes taken for one line"
        );
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("without a newline"), "{e}");
        assert!(
            matches!(proto_error(&e), Some(ProtoError::LineTooLong { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn lines_up_to_the_limit_are_read() {
        // A message of exactly MAX_LINE bytes, read through a small buffer.
        let (pre, post) = (r#"{"t":"Barrier","name":""#, r#""}"#);
        let body = "b".repeat(MAX_LINE - pre.len() - post.len());
        let mut data = format!("{pre}{body}{post}\n").into_bytes();
        data.extend_from_slice(br#"{"t":"RequestCkpt"}"#);
        let mut r = std::io::BufReader::with_capacity(1000, &data[..]);
        match recv::<_, ToCoord>(&mut r).unwrap() {
            Some(ToCoord::Barrier { name }) => assert_eq!(name.len(), body.len()),
            other => panic!("{other:?}"),
        }
        // The last line may lack its newline.
        assert!(matches!(
            recv::<_, ToCoord>(&mut r).unwrap(),
            Some(ToCoord::RequestCkpt)
        ));
        assert!(recv::<_, ToCoord>(&mut r).unwrap().is_none());
        // One byte more is refused.
        let data = format!("{pre}{body}b{post}\n").into_bytes();
        let e = recv::<_, ToCoord>(&mut std::io::BufReader::new(&data[..])).unwrap_err();
        assert!(
            matches!(
                proto_error(&e),
                Some(ProtoError::LineTooLong { max: MAX_LINE })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn messages_over_the_limit_are_not_sent() {
        // A value of 4 MiB of 255s is 16 MiB of JSON: too long.
        let big = ToCoord::KvPut {
            db: "d".into(),
            key: vec![],
            val: vec![255; 4 << 20],
        };
        let mut out = Vec::new();
        let e = send(&mut out, &big).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            matches!(proto_error(&e), Some(ProtoError::MessageTooLong { .. })),
            "{e:?}"
        );
        assert!(out.is_empty(), "part of a refused message was written");
        // 3 MiB fits.
        let ok = ToCoord::KvPut {
            db: "d".into(),
            key: vec![],
            val: vec![255; 3 << 20],
        };
        send(&mut out, &ok).unwrap();
        let back: ToCoord = recv(&mut std::io::BufReader::new(&out[..]))
            .unwrap()
            .unwrap();
        assert!(matches!(back, ToCoord::KvPut { val, .. } if val.len() == 3 << 20));
    }

    /// The wire form is the one `#[serde(tag = "t")]` wrote (other
    /// versions' tools and tests speak it): the variant's name under "t".
    #[test]
    fn the_variant_is_named_under_t() {
        let line = |m: Result<Vec<u8>, ProtoError>| String::from_utf8(m.unwrap()).unwrap();
        assert_eq!(
            line(encode(&ToCoord::RequestCkpt)),
            "{\"t\":\"RequestCkpt\"}\n"
        );
        assert_eq!(
            line(encode(&ToCoord::Barrier { name: "x".into() })),
            "{\"t\":\"Barrier\",\"name\":\"x\"}\n"
        );
        assert_eq!(
            line(encode(&ToCoord::Command {
                cmd: Cmd::Interval(5)
            })),
            "{\"t\":\"Command\",\"cmd\":{\"Interval\":5}}\n"
        );
        assert_eq!(
            line(encode(&FromCoord::Reply(Reply::default()))),
            "{\"t\":\"Reply\",\"ok\":false,\"status\":\"\",\"num_peers\":0,\"running\":false,\"interval\":0,\
             \"comp_id\":\"\",\"generation\":0,\"peers\":[],\"message\":null,\"images\":[]}\n"
        );
        // A struct variant without fields, and what is not a variant.
        let mut b = b"{\"X\":{}}".to_vec();
        inline_tag(&mut b).unwrap();
        assert_eq!(b, b"{\"t\":\"X\"}");
        for bad in [&b"5"[..], b"\"", b"{\"X\":5}", b"[1]", b"{}", b""] {
            assert!(
                matches!(inline_tag(&mut bad.to_vec()), Err(ProtoError::NotAMessage)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_tag_may_stand_anywhere_and_unknown_keys_are_skipped() {
        let m: ToCoord = decode(br#" {"name":"n","x":[[{"y":[]}]],"t":"Barrier"} "#).unwrap();
        assert!(matches!(m, ToCoord::Barrier { name } if name == "n"));
        let m: FromCoord = decode(br#"{"z":1,"t":"Kill","w":{"t":"Welcome"}}"#).unwrap();
        assert!(matches!(m, FromCoord::Kill));
        let m: FromCoord = decode(br#"{"t":"Reply","ok":true,"status":"s","num_peers":1,"running":true,"interval":0,"comp_id":"c","generation":2,"peers":[],"message":null,"images":["i"],"extra":[1,2]}"#).unwrap();
        assert!(matches!(m, FromCoord::Reply(r) if r.ok && r.images == ["i"]));
    }

    #[test]
    fn lines_that_are_not_messages_are_errors() {
        for bad in [
            &br#"{"name":"n"}"#[..],                           // no tag
            br#"{"t":"Barrier","t":"Barrier","name":"n"}"#,    // two tags
            br#"{"t":"Nope"}"#,                                // no such variant
            br#"{"t":5}"#,                                     // a tag of the wrong type
            br#"{"t":"Barrier"}"#,                             // a field missing
            br#"{"t":"Barrier","name":5}"#,                    // a field of the wrong type
            br#"{"t":"Barrier","name":"n","name":"m"}"#,       // a field twice
            br#"{"t":"KvPut","db":"d","key":[256],"val":[]}"#, // not a byte
            br#"{"t":"Command","cmd":{"Interval":-1}}"#,
            br#"["Barrier","n"]"#, // an array, not an object
            br#""RequestCkpt""#,
            br#"{"t":"RequestCkpt"} {}"#, // more after the object
            br#"{"t":"RequestCkpt""#,     // cut short
            b"",
            b"null",
        ] {
            let e = decode::<ToCoord>(bad).map(|_| ()).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        let e = recv::<_, ToCoord>(&mut std::io::BufReader::new(&b"{not json}\n"[..])).unwrap_err();
        assert!(
            matches!(proto_error(&e), Some(ProtoError::Malformed(_))),
            "{e:?}"
        );
        let e =
            recv::<_, ToCoord>(&mut std::io::BufReader::new(&b"\"\xff\xfe\"\n"[..])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
