//! Small helpers around external tools and /proc.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Absolute path of `name` found in PATH or in the usual system directories
/// (sshd lives in /usr/sbin, which a non-root PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn require_program(name: &str, package: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| {
        format!("`{name}` not found in PATH nor /usr/sbin: install it (apt-get install {package})")
    })
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: impl AsRef<OsStr>) -> String {
    let s = s.as_ref().to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `ip [-n netns] [-force] -batch -` with the given lines.
pub fn ip_batch(netns: Option<&str>, lines: &[String], force: bool) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run `ip` (install iproute2)")?;
    let mut input = lines.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output()?;
    if !out.status.success() && !force {
        bail!(
            "ip -batch failed ({}): {}\ninput:\n{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pids of all processes whose network namespace is the one bound at `ns_file`
/// (the same test as `ip netns pids`). Zombies have no namespace and are not listed.
pub fn pids_in_netns(ns_file: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(ns_file) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.dev() == target.dev() && m.ino() == target.ino())
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process in the namespace until none is left.
pub fn kill_netns_processes(ns_file: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = pids_in_netns(ns_file);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "processes {pids:?} in {} survive SIGKILL",
                ns_file.display()
            );
        }
        // kill(1) reports pids that vanished meanwhile: ignore its status.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until none of `paths` exists.
pub fn wait_gone(paths: &[PathBuf], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still present after {timeout:?}: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hex form of an IPv4 socket address as printed in /proc/net/tcp.
fn proc_net_tcp_addr(addr: std::net::Ipv4Addr, port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_le_bytes(addr.octets()))
}

/// Whether the network namespace of process `pid` has a TCP socket listening
/// on `addr:port`.
pub fn is_listening(pid: u32, addr: std::net::Ipv4Addr, port: u16) -> bool {
    let want = proc_net_tcp_addr(addr, port);
    listening_where(pid, &["tcp"], |local| local == want)
}

/// Whether the network namespace of process `pid` has a TCP socket (IPv4 or
/// IPv6) listening on `port`, at any address. A probe that does not connect:
/// servers that accept one connection only (ibv_rc_pingpong, perftest) would
/// take a probe connection for their client.
pub fn is_listening_on_port(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    listening_where(pid, &["tcp", "tcp6"], |local| local.ends_with(&want))
}

/// Whether one of `/proc/<pid>/net/<table>` lists a listening socket whose
/// local address (as the table prints it) passes `matches`.
fn listening_where(pid: u32, tables: &[&str], matches: impl Fn(&str) -> bool) -> bool {
    tables.iter().any(|t| {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{t}")) else {
            return false;
        };
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && matches(f[1]) && f[3] == "0A"
        })
    })
}

/// Home directory of root from /etc/passwd (sshd uses that, not $HOME).
pub fn root_home() -> PathBuf {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2] == "0").then(|| PathBuf::from(f[5]))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Fails unless we run as root (uid 0).
pub fn require_root() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        bail!("testrig needs root (network namespaces, mounts); effective uid is {euid}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_hex() {
        assert_eq!(
            proc_net_tcp_addr(std::net::Ipv4Addr::new(10, 231, 250, 2), 22),
            "02FAE70A:0016"
        );
    }

    #[test]
    fn missing_program_names_its_package() {
        let e = require_program("testrig-no-such-daemon", "openssh-server").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("testrig-no-such-daemon")
                && msg.contains("apt-get install openssh-server"),
            "{msg}"
        );
        assert!(find_program("sh").is_some());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
