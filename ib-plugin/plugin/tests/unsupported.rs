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
    let st = Command::new("cc").args(["-O0", "-g", "-Wall", "-o"]).arg(&bin).arg(&src).arg("-libverbs").status().expect("cc");
    assert!(st.success(), "compiling {}", src.display());
    let mut j = j;
    j.launch("prog", bin.to_str().unwrap(), &[]);
    j.wait_success();
    let (out, err) = (j.read("prog.out"), j.read("prog.err"));
    assert!(out.contains("all refused"), "{out}\n{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("refused ")).count(), 7, "{out}");
    assert!(err.contains("not supported under checkpointing"), "the plugin did not say why:\n{err}");
}
