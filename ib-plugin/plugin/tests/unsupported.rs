//! What the plugin does not virtualize (extended QPs and CQs, XRC, memory
//! windows, on-demand paging, multicast) is refused with EOPNOTSUPP that
//! the program sees, under `dmtcp_launch --ib`; the plugin says so on
//! stderr; plain objects still work.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn unsupported_features_are_refused() {
    let j = Job::new("unsupported");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/unsupported.c");
    let bin = j.dir.join("unsupported");
    let st = Command::new("cc")
        .args(["-O0", "-g", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-libverbs")
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {}", src.display());
    let mut j = j;
    j.launch("prog", bin.to_str().unwrap(), &[]);
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    assert!(out.contains("all refused"), "{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("refused ")).count(),
        7,
        "{out}"
    );
    assert!(
        err.contains("not supported under checkpointing"),
        "the plugin did not say why:\n{err}"
    );
}

/// Without `--ib`, a program using verbs is told at its first checkpoint
/// that its device state will not survive a restart.
#[test]
fn verbs_without_the_plugin_are_warned_about() {
    let mut j = Job::new("no-ib");
    j.ib = false;
    let port = free_port();
    let server = j.launch(
        "server",
        "ibv_rc_pingpong",
        &["-d", "softib0", "-p", &port.to_string()],
    );
    j.wait_listening(server, port);
    j.checkpoint();
    let err = j.read("server.err");
    assert_eq!(
        err.matches("without the InfiniBand plugin").count(),
        1,
        "{err}"
    );
    j.checkpoint();
    let err = j.read("server.err");
    assert_eq!(
        err.matches("without the InfiniBand plugin").count(),
        1,
        "warned more than once:\n{err}"
    );
}
