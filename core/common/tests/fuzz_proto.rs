//! Property tests of the coordinator protocol's decoder (proto::recv and
//! proto::decode, used by the coordinator for `ToCoord` and by the preload
//! library and dmtcp_command for `FromCoord`): random bytes, messages with
//! bytes changed, cut short or spliced, valid JSON of the wrong shape,
//! overlong lines and deep nesting give an error (or a message that
//! encodes back to itself), never a panic, a hang or memory out of
//! proportion to the line. `DMTCP_FUZZ_CASES=n` sets the cases per
//! property (bench/fuzz.sh runs many more).

mod support;

use dmtcp_common::proto::{
    self, decode, encode, recv, Cmd, FromCoord, Message, PeerInfo, Reply, Role, ToCoord, MAX_LINE,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::BufReader;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec(prop::sample::select(&b"ab/_.-x0"[..]), 0..12)
            .prop_map(|b| String::from_utf8(b).unwrap()),
        1 => any::<String>(),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..40)
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        Just(Cmd::Status),
        Just(Cmd::List),
        Just(Cmd::Checkpoint),
        Just(Cmd::BlockingCheckpoint),
        Just(Cmd::KillAfterCheckpoint),
        Just(Cmd::Kill),
        Just(Cmd::Quit),
        any::<u32>().prop_map(Cmd::Interval),
    ]
}

fn to_coord() -> impl Strategy<Value = ToCoord> {
    prop_oneof![
        (
            any::<bool>(),
            any::<i32>(),
            text(),
            text(),
            text(),
            any::<bool>(),
            option::of(text()),
            any::<u32>(),
            any::<u32>(),
            option::of(text())
        )
            .prop_map(
                |(
                    w,
                    pid,
                    hostname,
                    program,
                    uniq_id,
                    restarting,
                    comp_id,
                    generation,
                    num_peers,
                    auth,
                )| {
                    ToCoord::Hello {
                        role: if w { Role::Worker } else { Role::Command },
                        pid,
                        hostname,
                        program,
                        uniq_id,
                        restarting,
                        comp_id,
                        generation,
                        num_peers,
                        auth,
                    }
                }
            ),
        cmd().prop_map(|cmd| ToCoord::Command { cmd }),
        text().prop_map(|name| ToCoord::Barrier { name }),
        (
            text(),
            any::<u64>(),
            option::of(text()),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(image, bytes, error, crc32, header_crc)| ToCoord::CkptDone {
                    image,
                    bytes,
                    error,
                    crc32,
                    header_crc
                }
            ),
        Just(ToCoord::RequestCkpt),
        (text(), bytes(), bytes()).prop_map(|(db, key, val)| ToCoord::KvPut { db, key, val }),
        (text(), bytes()).prop_map(|(db, key)| ToCoord::KvGet { db, key }),
        (text(), bytes(), option::of(bytes()), any::<u32>()).prop_map(
            |(db, prefix, after, max)| ToCoord::KvList {
                db,
                prefix,
                after,
                max
            }
        ),
    ]
}

fn from_coord() -> impl Strategy<Value = FromCoord> {
    let peer = (any::<u64>(), text(), any::<i32>(), text(), text(), text()).prop_map(
        |(id, program, pid, hostname, uniq_id, state)| PeerInfo {
            id,
            program,
            pid,
            hostname,
            uniq_id,
            state,
        },
    );
    let reply = (
        any::<bool>(),
        text(),
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        text(),
        any::<u32>(),
        vec(peer, 0..3),
        option::of(text()),
        vec(text(), 0..3),
    )
        .prop_map(
            |(
                ok,
                status,
                num_peers,
                running,
                interval,
                comp_id,
                generation,
                peers,
                message,
                images,
            )| Reply {
                ok,
                status,
                num_peers,
                running,
                interval,
                comp_id,
                generation,
                peers,
                message,
                images,
            },
        );
    prop_oneof![
        (text(), any::<u32>(), any::<u32>(), option::of(text())).prop_map(
            |(comp_id, generation, interval, ckpt_dir)| FromCoord::Welcome {
                comp_id,
                generation,
                interval,
                ckpt_dir
            }
        ),
        (
            any::<u32>(),
            option::of(text()),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(generation, ckpt_dir, num_peers, fork)| FromCoord::DoCheckpoint {
                    generation,
                    ckpt_dir,
                    num_peers,
                    fork
                }
            ),
        (text(), any::<u32>(), any::<bool>()).prop_map(|(name, count, commit)| {
            FromCoord::BarrierDone {
                name,
                count,
                commit,
            }
        }),
        text().prop_map(|nonce| FromCoord::Challenge { nonce }),
        Just(FromCoord::Kill),
        reply.prop_map(FromCoord::Reply),
        text().prop_map(|reason| FromCoord::Refused { reason }),
        option::of(bytes()).prop_map(|val| FromCoord::KvValue { val }),
        vec((bytes(), bytes()), 0..4).prop_map(|entries| FromCoord::KvEntries { entries }),
        text().prop_map(|reason| FromCoord::RoundFailed { reason }),
        (any::<u32>(), any::<bool>())
            .prop_map(|(generation, commit)| FromCoord::Settled { generation, commit }),
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(written, total, bytes)| {
            FromCoord::Progress {
                written,
                total,
                bytes,
            }
        }),
    ]
}

/// A message's line without its newline.
fn line_of<T: Message>(m: &T) -> Vec<u8> {
    let mut l = encode(m).unwrap();
    assert_eq!(l.pop(), Some(b'\n'));
    l
}

/// Decode `line` as both kinds of message. Whatever decodes must encode
/// to a line that decodes to the same message again (nothing half-read
/// is let through), and fit the protocol's limit.
fn decode_both(line: &[u8]) -> (bool, bool) {
    fn one<T: Message>(line: &[u8]) -> bool {
        match decode::<T>(line) {
            Ok(m) => {
                let again = line_of(&m);
                assert!(again.len() <= MAX_LINE);
                let m2: T = decode(&again).expect("a decoded message decodes again");
                assert_eq!(line_of(&m2), again, "a message changed on its way round");
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                false
            }
        }
    }
    (one::<ToCoord>(line), one::<FromCoord>(line))
}

/// One change to a line.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

/// Bytes that matter to JSON, so edits reach past the first syntax error.
const JSONISH: &[u8] = b"{}[]\",:\\ 0123456789-+.eEtrufalsn\x00\xff\xc3\n";

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(JSONISH)];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(a, b)| Edit::Flip(a, b)),
        (any::<usize>(), byte.clone()).prop_map(|(a, b)| Edit::Set(a, b)),
        (any::<usize>(), vec(byte, 1..8)).prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1usize..16).prop_map(|(a, n)| Edit::Delete(a, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(line: &mut Vec<u8>, e: &Edit) {
    let at = |a: usize, len: usize| if len == 0 { 0 } else { a % len };
    match e {
        Edit::Flip(a, b) if !line.is_empty() => {
            let i = at(*a, line.len());
            line[i] ^= 1 << b;
        }
        Edit::Set(a, b) if !line.is_empty() => {
            let i = at(*a, line.len());
            line[i] = *b;
        }
        Edit::Insert(a, b) => {
            let i = at(*a, line.len() + 1);
            line.splice(i..i, b.iter().copied());
        }
        Edit::Delete(a, n) if !line.is_empty() => {
            let i = at(*a, line.len());
            line.drain(i..(i + n).min(line.len()));
        }
        Edit::Truncate(a) => line.truncate(at(*a, line.len() + 1)),
        _ => {}
    }
}

/// Field names of the messages, for objects that look nearly right.
const KEYS: &[&str] = &[
    "t",
    "role",
    "pid",
    "hostname",
    "program",
    "uniq_id",
    "restarting",
    "comp_id",
    "generation",
    "num_peers",
    "auth",
    "nonce",
    "cmd",
    "name",
    "image",
    "bytes",
    "error",
    "crc32",
    "header_crc",
    "db",
    "key",
    "val",
    "interval",
    "ckpt_dir",
    "count",
    "commit",
    "reason",
    "ok",
    "status",
    "running",
    "peers",
    "message",
    "images",
    "id",
    "state",
    "zz",
];
const VARIANTS: &[&str] = &[
    "Hello",
    "Command",
    "Barrier",
    "CkptDone",
    "RequestCkpt",
    "KvPut",
    "KvGet",
    "KvList",
    "Welcome",
    "DoCheckpoint",
    "BarrierDone",
    "Kill",
    "Reply",
    "Refused",
    "KvValue",
    "KvEntries",
    "RoundFailed",
    "Progress",
    "Interval",
    "Status",
    "",
    "hello",
];

/// Any JSON value, its strings and keys drawn mostly from the protocol's own.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(255), Just(256), Just(u32::MAX as u64 + 1)]
            .prop_map(Value::from),
        prop::sample::select(VARIANTS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A top-level object with a tag (usually a real variant) and fields of
/// the protocol's names with values of any type.
fn near_message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(VARIANTS),
        vec((prop::sample::select(KEYS), json_value()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(t, fields, tag_first)| {
            let mut m = serde_json::Map::new();
            if tag_first {
                m.insert("t".into(), json!(t));
            }
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            if !tag_first {
                m.entry("t").or_insert(json!(t));
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(support::config(512))]

    /// Every message comes back as itself, whatever the reader's buffer size.
    #[test]
    fn messages_round_trip(a in to_coord(), b in from_coord(), cap in 1usize..64) {
        let mut wire = encode(&a).unwrap();
        wire.extend(encode(&b).unwrap());
        let mut r = BufReader::with_capacity(cap, &wire[..]);
        let a2: ToCoord = recv(&mut r).unwrap().unwrap();
        let b2: FromCoord = recv(&mut r).unwrap().unwrap();
        prop_assert!(recv::<_, ToCoord>(&mut r).unwrap().is_none());
        prop_assert_eq!(line_of(&a2), line_of(&a));
        prop_assert_eq!(line_of(&b2), line_of(&b));
    }

    /// Messages with bytes flipped, set, inserted, deleted or cut off.
    #[test]
    fn damaged_messages_are_errors_or_messages(
        a in to_coord(), b in from_coord(), to in any::<bool>(), edits in vec(edit(), 1..5)
    ) {
        let good = if to { line_of(&a) } else { line_of(&b) };
        let mut line = good.clone();
        for e in &edits {
            apply(&mut line, e);
        }
        let (as_to, as_from) = decode_both(&line);
        let decoded = if to { as_to } else { as_from };
        prop_assert!(decoded || line != good);
    }

    /// A message cut anywhere is an error, through recv too (the end of
    /// the stream ends the line).
    #[test]
    fn messages_cut_short_are_errors(a in to_coord(), b in from_coord(), cut in any::<usize>()) {
        for good in [line_of(&a), line_of(&b)] {
            let at = cut % good.len();
            prop_assert_eq!(decode_both(&good[..at]), (false, false));
            let r = recv::<_, ToCoord>(&mut BufReader::new(&good[..at]));
            if at == 0 {
                prop_assert!(r.unwrap().is_none());
            } else {
                prop_assert!(r.is_err());
            }
        }
    }

    /// Random bytes, read as a stream of lines: recv ends (at the end of the
    /// stream or at an error), with at most one message a line.
    #[test]
    fn random_streams_end_without_panic(
        mut data in vec(any::<u8>(), 0..2048),
        newlines in vec(any::<usize>(), 0..8),
        cap in 1usize..128,
    ) {
        for n in newlines {
            if !data.is_empty() {
                let i = n % data.len();
                data[i] = b'\n';
            }
        }
        let lines = data.split(|&b| b == b'\n').count();
        let mut r = BufReader::with_capacity(cap, &data[..]);
        let mut got = 0;
        loop {
            match recv::<_, ToCoord>(&mut r) {
                Ok(Some(_)) => got += 1,
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(proto::proto_error(&e).is_some(), "{e}");
                    break;
                }
            }
            prop_assert!(got <= lines);
        }
    }

    /// Valid JSON of nearly the right shape: real variant names, real field
    /// names, values of any type.
    #[test]
    fn json_of_the_wrong_shape_is_an_error_or_a_message(v in near_message(), any_v in json_value()) {
        decode_both(&serde_json::to_vec(&v).unwrap());
        decode_both(&serde_json::to_vec(&any_v).unwrap());
    }
}

/// Lines of the largest size the protocol takes, built to be as costly as
/// a line can be for a tree-building decoder (many small values, where
/// the message keeps none or one byte of each): reading one costs memory
/// for the line and what the message holds, not per value. Before the
/// decoder read the tag apart, serde buffered every value (some 50 bytes
/// each): 400 MiB for one such line, in each connection's thread.
#[test]
fn memory_follows_the_message_not_the_number_of_values() {
    let fill = |pre: &str, item: &str, post: &str| {
        let mut s = String::with_capacity(MAX_LINE);
        s.push_str(pre);
        while s.len() + item.len() + post.len() < MAX_LINE {
            s.push_str(item);
        }
        s.pop();
        s.push_str(post);
        s.push('\n');
        s.into_bytes()
    };
    let shapes = [
        (
            "bytes of a value",
            fill(r#"{"t":"KvPut","db":"d","key":[],"val":["#, "0,", "]}"),
        ),
        (
            "an unknown key",
            fill(r#"{"t":"RequestCkpt","x":["#, "0,", "]}"),
        ),
        (
            "the tag last",
            fill(r#"{"x":["#, "0,", r#"],"t":"RequestCkpt"}"#),
        ),
        (
            "empty objects",
            fill(r#"{"t":"Barrier","name":"n","x":["#, "{},", "]}"),
        ),
        ("many keys", fill(r#"{"t":"Kill","#, r#""a":0,"#, "}")),
        (
            "an unknown variant",
            fill(r#"{"x":["#, "0,", r#"],"t":"Nope"}"#),
        ),
        (
            "peers",
            fill(
                r#"{"t":"Reply","ok":true,"status":"","num_peers":0,"running":true,"interval":0,"comp_id":"","generation":0,"message":null,"images":[],"peers":["#,
                r#"{"id":0,"program":"","pid":0,"hostname":"","uniq_id":"","state":""},"#,
                "]}",
            ),
        ),
    ];
    for (name, line) in shapes {
        assert!(
            line.len() <= MAX_LINE + 1 && line.len() > MAX_LINE - 100,
            "{name}"
        );
        for to in [true, false] {
            let (res, peak) = support::peak_during(|| {
                let mut r = BufReader::new(&line[..]);
                if to {
                    recv::<_, ToCoord>(&mut r).map(|m| m.is_some())
                } else {
                    recv::<_, FromCoord>(&mut r).map(|m| m.is_some())
                }
            });
            // The line itself (grown by doubling: up to 1.5 times), and
            // what the message holds: at most the peers of a Reply (136
            // bytes each, from 70 of JSON), twice over while their Vec grows.
            assert!(
                peak <= 5 * MAX_LINE,
                "{name} ({}): {} MiB to read a line of {} MiB ({:?})",
                if to { "ToCoord" } else { "FromCoord" },
                peak >> 20,
                line.len() >> 20,
                res.map_err(|e| e.to_string())
            );
        }
    }
}

/// Nesting as deep as a line allows, in skipped and in typed places, read
/// on a thread with a quarter of the coordinator's connection stack: the
/// decoder neither recurses on skipped values nor past serde_json's depth
/// limit on typed ones.
#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let half = MAX_LINE / 2 - 64;
    let nest = |pre: &str, open: &str, close: &str, post: &str| {
        let n = half / open.len().max(close.len());
        let mut s = String::from(pre);
        s.push_str(&open.repeat(n));
        s.push('0');
        s.push_str(&close.repeat(n));
        s.push_str(post);
        s.into_bytes()
    };
    let lines = [
        (nest(r#"{"t":"RequestCkpt","x":"#, "[", "]", "}"), true),
        (nest(r#"{"x":"#, r#"{"a":"#, "}", r#","t":"Kill"}"#), true),
        (nest(r#"{"t":"Barrier","name":"#, "[", "]", "}"), false),
        (nest(r#"{"t":"Reply","peers":"#, "[", "]", "}"), false),
        (
            nest(r#"{"t":"KvPut","db":"d","key":[],"val":"#, "[", "]", "}"),
            false,
        ),
        (
            nest(r#"{"t":"Welcome","ckpt_dir":"#, r#"{"a":"#, "}", "}"),
            false,
        ),
        (nest("", "[", "]", ""), false),
    ];
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            for (i, (line, ok)) in lines.iter().enumerate() {
                let (to, from) = decode_both(line);
                assert!(!(to && from), "line {i} decoded as both kinds");
                assert_eq!(to || from, *ok, "line {i}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Lines over the limit, alone or after good ones, in one read or many:
/// an error once the limit is passed, with the good messages before it.
#[test]
fn overlong_lines_after_good_ones_are_refused() {
    let good = encode(&ToCoord::RequestCkpt).unwrap();
    for (n_good, extra, newline) in [
        (0, 1, true),
        (3, 1, false),
        (1, 4096, true),
        (2, MAX_LINE, false),
    ] {
        let mut data = good.repeat(n_good);
        data.extend(std::iter::repeat_n(b' ', MAX_LINE + extra));
        if newline {
            data.push(b'\n');
        }
        let mut r = BufReader::with_capacity(777, &data[..]);
        for _ in 0..n_good {
            assert!(matches!(
                recv::<_, ToCoord>(&mut r),
                Ok(Some(ToCoord::RequestCkpt))
            ));
        }
        let e = recv::<_, ToCoord>(&mut r).unwrap_err();
        assert!(
            matches!(
                proto::proto_error(&e),
                Some(proto::ProtoError::LineTooLong { .. })
            ),
            "{e}"
        );
    }
    // A line of only blanks up to the limit is a malformed line, not a hang.
    let mut data = vec![b' '; MAX_LINE];
    data.push(b'\n');
    let e = recv::<_, FromCoord>(&mut BufReader::new(&data[..])).unwrap_err();
    assert!(
        matches!(
            proto::proto_error(&e),
            Some(proto::ProtoError::Malformed(_))
        ),
        "{e}"
    );
}

/// What recv gives for a whole stream: the messages it read, then "OK" at
/// the end of the stream or the error that stopped it.
fn replay<T: Message>(data: &[u8]) -> (usize, String) {
    let mut r = BufReader::with_capacity(64, data);
    let mut n = 0;
    loop {
        match recv::<_, T>(&mut r) {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, "OK".into()),
            Err(e) => return (n, e.to_string()),
        }
    }
}

/// tests/corpus/proto: every stream is listed in its `expect` file with
/// the kind of message it is read as, how many messages come first, and
/// "OK" or a piece of the error that ends it.
#[test]
fn the_protocol_corpus_gives_the_expected_results() {
    for (p, line) in support::corpus("proto") {
        let name = p.file_name().unwrap().to_string_lossy();
        let mut f = line.splitn(3, ' ');
        let (kind, n, want) = (
            f.next().unwrap(),
            f.next().unwrap().parse::<usize>().unwrap(),
            f.next().unwrap_or("").trim(),
        );
        let data = std::fs::read(&p).unwrap();
        let got = match kind {
            "to" => replay::<ToCoord>(&data),
            "from" => replay::<FromCoord>(&data),
            k => panic!("{name}: kind {k}"),
        };
        assert!(
            got.0 == n && got.1.contains(want) && (want == "OK") == (got.1 == "OK"),
            "{name}: want {n} then {want:?}, got {got:?}"
        );
    }
}
