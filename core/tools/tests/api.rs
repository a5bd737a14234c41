//! The program interface (include/dmtcp.h) with and without the checkpointer.

mod common;
use common::*;

fn build_example() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("api-{}", std::process::id()));
    if !out.exists() {
        let st = std::process::Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-I"])
            .arg(root.join("include"))
            .arg("-o")
            .arg(&out)
            .arg(root.join("examples/api.c"))
            .status()
            .unwrap();
        assert!(st.success(), "examples/api.c does not compile against include/dmtcp.h");
    }
    out
}

#[test]
fn without_the_checkpointer_calls_report_not_present() {
    let prog = build_example();
    let out = run_bare(&[prog.to_str().unwrap()]);
    assert!(out.contains("enabled=0 generation=-1"), "{out}");
    assert!(out.contains("checkpoint returned not-present"), "{out}");
    assert!(out.contains("status not-present"), "{out}");
    assert!(out.contains("section end") && out.contains("RESULT 819"), "{out}");
}

#[test]
fn program_checkpoints_itself_and_learns_it_was_restarted() {
    let prog = build_example();
    let mut job = Job::new("api-self");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("checkpoint returned after-checkpoint generation=1");
    assert!(job.output().contains("enabled=1 generation=0"), "{}", job.output());
    assert_eq!(job.images().len(), 1);
    job.wait_for("step 5\n");
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(out.contains("checkpoint returned after-restart generation=1"), "{out}");
    assert!(!out.contains("after-checkpoint"), "the restarted run rewrote the file from the checkpoint on: {out}");
    assert!(out.contains("status ok peers=1") && out.contains("RESULT 819"), "{out}");
}

#[test]
fn checkpoint_waits_for_a_disabled_section() {
    let prog = build_example();
    let mut job = Job::new("api-section");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("section begin");
    // Requested inside the section: it must happen only after the section ends.
    let o = job.command(&["-bc"]);
    assert!(o.status.success());
    assert!(job.output().contains("section end"), "the checkpoint completed inside the disabled section: {}", job.output());
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert_eq!(out.matches("section end").count(), 1, "{out}");
    assert!(out.contains("RESULT 819"), "{out}");
}
