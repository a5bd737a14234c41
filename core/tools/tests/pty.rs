//! Pseudo-terminals across checkpoint/restart: a program on a pty that
//! `script` (in the job too) drives, with its own terminal settings and
//! window size; after three restarts the terminal still has them, is still
//! the program's controlling terminal, and its group is in the foreground.

mod common;
use common::*;

#[test]
fn program_under_script_keeps_its_terminal() {
    let prog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/ptyprog.py");
    let cmd = format!("python3 {} 150", prog.display());
    let args = ["script", "-q", "-e", "-c", cmd.as_str(), "/dev/null"];
    let bare = run_bare(&args);
    assert!(bare.ends_with("done\r\n"), "{bare:?}");
    let mut job = Job::new("pty");
    job.launch(&args, &[]);
    for (mark, after) in [
        ("tick 20\r\n", "tick 30\r\n"),
        ("tick 50\r\n", "tick 60\r\n"),
        ("tick 90\r\n", "tick 100\r\n"),
    ] {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// Output a pty's master had not read yet is kept: through a checkpoint
/// the program survives and through a restart, the master reads exactly
/// what was waiting (as processed by the terminal when it was written).
#[test]
fn unread_pty_output_survives_checkpoint_and_restart() {
    let prog = c_program("ptypending");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p, "150"]);
    assert!(
        bare.ends_with("waiting output (32 bytes): first waiting line\\r\nsecond one\\r\nend\n"),
        "{bare:?}"
    );
    let mut job = Job::new("ptypending");
    job.launch(&[p, "150"], &[]);
    job.wait_for("tick 20\n");
    job.checkpoint();
    job.cycle("tick 50\n", "tick 60\n");
    job.wait_success();
    assert_eq!(job.output(), bare);
}
