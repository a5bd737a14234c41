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
    for (mark, after) in [("tick 20\r\n", "tick 30\r\n"), ("tick 50\r\n", "tick 60\r\n"), ("tick 90\r\n", "tick 100\r\n")] {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(job.output(), bare);
}
