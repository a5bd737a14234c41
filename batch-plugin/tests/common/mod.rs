//! Helpers of the SLURM tests (real SLURM on the test rig).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use testrig::Rig;

pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    testrig::wait_for(what, timeout, check).unwrap()
}

pub fn bin(name: &str) -> PathBuf {
    dmtcp_testkit::bin_dir(&[name]).join(name)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The lines of task `t` ("task<t> <i>"), in order.
pub fn task_lines(out: &str, t: usize) -> Vec<String> {
    let prefix = format!("task{t} ");
    out.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// Runs `script` with sh on node0, stdout and stderr into files of `dir`;
/// returns the child.
pub fn sh(rig: &Rig, dir: &Path, name: &str, script: &str) -> std::process::Child {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    rig.node(0)
        .command("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

/// `dmtcp_command -p port args` on node0: its stdout, and whether it
/// succeeded (exit code 2: no coordinator there).
pub fn dmtcp_command(rig: &Rig, port: &str, args: &[&str]) -> (String, Option<i32>) {
    let o = rig
        .node(0)
        .command(bin("dmtcp_command"))
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        o.status.code(),
    )
}

/// The number of processes the coordinator counts, when all run.
pub fn running_peers(rig: &Rig, port: &str) -> Option<usize> {
    let (s, _) = dmtcp_command(rig, port, &["-s"]);
    if !s.contains("RUNNING=yes") {
        return None;
    }
    s.lines()
        .find_map(|l| l.trim().strip_prefix("NUM_PEERS="))
        .and_then(|v| v.parse().ok())
}

/// Runs `cmd` with sh on node0 and returns its stdout.
pub fn on_node0(rig: &Rig, cmd: &str) -> String {
    let o = rig
        .node(0)
        .command("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The last "CHECKSUM x" line's x.
pub fn checksum(out: &str) -> Option<String> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("CHECKSUM "))
        .map(String::from)
}

/// The program names and hosts of `dmtcp_command -l`'s lines
/// ("<n>, <program>[<pid>]@<host>, ...").
pub fn listed(list: &str) -> Vec<(String, String)> {
    list.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let at = l.find('@')?;
            let host: String = l[at + 1..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '.')
                .collect();
            let before = &l[..at];
            let open = before.rfind('[')?;
            let prog = before[..open]
                .rsplit([' ', ','])
                .next()
                .unwrap_or("")
                .to_string();
            Some((prog, host))
        })
        .collect()
}

/// [`wait_for`], with `diag()` in the failure's message.
pub fn wait_diag<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Option<T>,
    diag: impl Fn() -> String,
) -> T {
    testrig::wait_for(what, timeout, check).unwrap_or_else(|e| panic!("{e}{}", diag()))
}
