//! Diagnostics for a job that hangs: where each thread of its processes
//! sits (kernel state, wait channel, signals, and user stacks with gdb
//! when it is installed). Self-contained: the ssh/MPI rig harness
//! (ssh-plugin/tests/common) includes this file too.

use std::path::Path;
use std::process::Stdio;

fn proc_file(pid: i32, tid: i32, f: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}")).unwrap_or_default()
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn tasks(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    v.sort();
    v
}

/// One line per thread (name, state, kernel wait channel, syscall number,
/// blocked and pending signals) and its kernel stack; threads sharing one
/// wait channel and name are summarised past the first few.
fn thread_lines(pid: i32) -> String {
    let mut out = String::new();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for tid in tasks(pid) {
        let status = proc_file(pid, tid, "status");
        let comm = proc_file(pid, tid, "comm").trim().to_string();
        let state = status_field(&status, "State:");
        let wchan = proc_file(pid, tid, "wchan");
        let syscall = proc_file(pid, tid, "syscall")
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let key = format!("{comm} {state} {wchan} {syscall}");
        let n = seen.entry(key).or_default();
        *n += 1;
        if *n > 3 {
            continue;
        }
        out.push_str(&format!(
            "  tid {tid} {comm:?} {state} wchan={wchan} syscall={syscall} SigBlk={} SigPnd={} ShdPnd={}\n",
            status_field(&status, "SigBlk:"),
            status_field(&status, "SigPnd:"),
            status_field(&status, "ShdPnd:")
        ));
        for l in proc_file(pid, tid, "stack").lines().take(4) {
            out.push_str(&format!("      {l}\n"));
        }
    }
    for (k, n) in seen.iter().filter(|(_, n)| **n > 3) {
        out.push_str(&format!("  ... {} more thread(s) like: {k}\n", n - 3));
    }
    out
}

/// User-space stacks of a process with gdb (if installed; small processes
/// only), without the library's idle writer threads.
fn gdb_stacks(pid: i32) -> String {
    if tasks(pid).len() > 64 || !Path::new("/usr/bin/gdb").exists() {
        return String::new();
    }
    let o = std::process::Command::new("timeout")
        .args([
            "-k",
            "3",
            "15",
            "gdb",
            "-nx",
            "-batch",
            "-p",
            &pid.to_string(),
            "-ex",
            "set pagination off",
            "-ex",
            "thread apply all bt 12",
        ])
        .stdin(Stdio::null())
        .output();
    let Ok(o) = o else { return String::new() };
    let text = String::from_utf8_lossy(&o.stdout);
    let mut blocks: Vec<Vec<String>> = Vec::new();
    for l in text.lines() {
        if l.starts_with("Thread ") {
            blocks.push(vec![l.to_string()]);
        } else if l.starts_with('#') {
            // Frames inside core/std (atomics, closures) say little.
            let f = l
                .split_once(" in ")
                .or_else(|| l.split_once("  "))
                .map_or(l, |x| x.1);
            if f.starts_with("core::") || f.starts_with("std::") || f.starts_with("alloc::") {
                continue;
            }
            if let Some(b) = blocks.last_mut() {
                b.push(l.to_string());
            }
        }
    }
    blocks
        .iter()
        .filter(|b| !b.iter().any(|l| l.contains("writer::writer_main")))
        .flatten()
        .map(|l| format!("    {}\n", l.chars().take(180).collect::<String>()))
        .collect()
}

pub fn stuck_report_of(roots: &[i32]) -> String {
    stuck_report_with_stacks(roots, 4)
}

/// The same, with user stacks of the first `stacks` processes.
pub fn stuck_report_with_stacks(roots: &[i32], stacks: usize) -> String {
    let mut pids: Vec<i32> = roots.iter().flat_map(|&r| descendants(r)).collect();
    pids.sort();
    pids.dedup();
    let mut out = String::from("--- threads of the job\n");
    for (i, pid) in pids.iter().enumerate() {
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        out.push_str(&format!("process {pid}: {}\n", cmd.trim()));
        out.push_str(&thread_lines(*pid));
        if i < stacks {
            out.push_str(&gdb_stacks(*pid));
        }
    }
    out
}

/// Every process below `pid` (from /proc, as this test sees pids).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|x| x.parse::<i32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}
