//! Integration tests of the rig: need root, iproute2, util-linux and (for the
//! sshd test) openssh-server + openssh-client.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use testrig::{names, Rig};

const PROBE: &str = env!("CARGO_BIN_EXE_testrig");

fn exists(path: impl AsRef<Path>) -> bool {
    path.as_ref().exists()
}

/// Starts `testrig serve addr count` in `node` and waits until it listens.
fn serve(node: &testrig::Node, addr: &str, count: usize) -> std::process::Child {
    let mut server = node
        .command(PROBE)
        .args(["serve", addr, &count.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    server
}

fn connect(node: &testrig::Node, target: &str, msg: &str) -> String {
    let out = node
        .command(PROBE)
        .args(["connect", target, msg])
        .output()
        .expect("spawn client");
    assert!(
        out.status.success(),
        "connect from {} to {target} failed: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn two_nodes_talk_over_tcp_by_address_and_name() {
    let rig = Rig::up(2).unwrap();
    let (n0, n1) = (rig.node(0), rig.node(1));
    let mut server = serve(n1, &format!("{}:7000", n1.addr()), 2);
    assert_eq!(
        connect(n0, &format!("{}:7000", n1.addr()), "hello"),
        "node1 hello"
    );
    assert_eq!(connect(n0, "node1:7000", "by-name"), "node1 by-name");
    assert!(server.wait().unwrap().success());
    // And the other way round, on the wildcard address.
    let mut server = serve(n0, "0.0.0.0:7001", 1);
    assert_eq!(connect(n1, "node0:7001", "back"), "node0 back");
    assert!(server.wait().unwrap().success());
}

#[test]
fn nodes_are_isolated_from_the_host_network() {
    let rig = Rig::up(1).unwrap();
    let links = rig.node(0).sh("ls /sys/class/net").unwrap();
    let mut links: Vec<&str> = links.split_whitespace().collect();
    links.sort();
    assert_eq!(links, ["eth0", "lo"]);
    // Only the rig's subnet is reachable: no default route.
    let route = rig.node(0).sh("ip -4 route").unwrap();
    let routes: Vec<&str> = route.lines().collect();
    assert_eq!(routes.len(), 1, "{route}");
    assert!(
        routes[0].starts_with(&format!("{} dev eth0 ", rig.subnet())),
        "{route}"
    );
}

#[test]
fn hostnames_differ_and_names_resolve() {
    let rig = Rig::up(3).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for node in rig.nodes() {
        assert_eq!(node.sh("hostname").unwrap().trim(), node.name());
        let peer = rig.node((node.index() + 1) % 3);
        let resolved = node.sh(&format!("getent hosts {}", peer.name())).unwrap();
        assert_eq!(
            resolved.split_whitespace().next(),
            Some(peer.addr().to_string().as_str())
        );
    }
    // The host keeps its name.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host
    );
}

#[test]
fn command_keeps_working_directory_args_and_env() {
    let rig = Rig::up(1).unwrap();
    let out = rig
        .node(0)
        .command("sh")
        .args(["-c", "pwd; echo \"$1\"; echo $TESTRIG_T", "sh", "two words"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TESTRIG_T", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!("{}\ntwo words\nx\n", env!("CARGO_MANIFEST_DIR"))
    );
    // The directory is looked up in the node: a private /tmp path of the host is not there.
    let host_only = format!("/tmp/testrig-host-only-{}", std::process::id());
    std::fs::create_dir_all(&host_only).unwrap();
    let out = rig
        .node(0)
        .command("true")
        .current_dir(&host_only)
        .output()
        .unwrap();
    std::fs::remove_dir(&host_only).unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no directory"));
    // A missing program is reported like by a shell.
    let out = rig.node(0).command("no-such-program-xyz").output().unwrap();
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn private_tmp_and_shared_dir() {
    let rig = Rig::up(2).unwrap();
    let (n0, n1) = (rig.node(0), rig.node(1));
    n0.sh("echo mine > /tmp/node0-only && echo shm > /dev/shm/seg && touch /run/x")
        .unwrap();
    assert!(n0.sh("cat /tmp/node0-only /dev/shm/seg").unwrap() == "mine\nshm\n");
    n1.sh("test ! -e /tmp/node0-only && test ! -e /dev/shm/seg && test ! -e /run/x")
        .unwrap();
    assert!(!exists("/tmp/node0-only") && !exists("/dev/shm/seg") && !exists("/run/x"));
    assert!(exists(n0.tmp_dir().unwrap().join("node0-only")));
    // The shared directory is the same everywhere.
    let shared = rig.shared_dir();
    n1.sh(&format!("echo from-node1 > {}/f", shared.display()))
        .unwrap();
    assert_eq!(
        n0.sh(&format!("cat {}/f", shared.display())).unwrap(),
        "from-node1\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("f")).unwrap(),
        "from-node1\n"
    );
    // So is a /tmp path shared on request.
    let extra = format!("/tmp/testrig-share-test-{}", std::process::id());
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(format!("{extra}/f"), "host\n").unwrap();
    let rig2 = Rig::builder(1).share(&extra).up().unwrap();
    assert_eq!(
        rig2.node(0).sh(&format!("cat {extra}/f")).unwrap(),
        "host\n"
    );
    drop(rig2);
    std::fs::remove_dir_all(&extra).unwrap();
}

#[test]
fn concurrent_rigs_do_not_collide() {
    let rigs: Vec<Rig> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| Rig::up(2).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ids: Vec<u32> = rigs.iter().map(Rig::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids {ids:?}");
    let mut subnets: Vec<String> = rigs.iter().map(Rig::subnet).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3);
    for (i, rig) in rigs.iter().enumerate() {
        let port = 7100 + i;
        let (n0, n1) = (rig.node(0), rig.node(1));
        let mut server = serve(n1, &format!("0.0.0.0:{port}"), 1);
        assert_eq!(connect(n0, &format!("node1:{port}"), "x"), "node1 x");
        server.wait().unwrap();
        // No route to another rig's nodes.
        let other = rigs[(i + 1) % 3].node(1).addr();
        let out = n0
            .command(PROBE)
            .args(["connect", &format!("{other}:{port}"), "x"])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[test]
fn teardown_leaves_nothing_and_kills_node_processes() {
    let t = Instant::now();
    let rig = Rig::up(3).unwrap();
    let up = t.elapsed();
    let id = rig.id();
    let dir = rig.dir().to_path_buf();
    let netns: Vec<String> = rig.nodes().iter().map(|n| n.netns().to_string()).collect();
    let mut sleeper = rig
        .node(2)
        .command("sh")
        .args(["-c", "echo in; exec sleep 1000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sleeper.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "in\n");
    let t = Instant::now();
    rig.down().unwrap();
    let down = t.elapsed();
    eprintln!("3 nodes: up {up:?}, down {down:?}");
    // Killed by the teardown.
    assert!(!sleeper.wait().unwrap().success());
    for ns in &netns {
        assert!(!exists(format!("/run/netns/{ns}")), "{ns} left");
    }
    assert!(!exists(format!("/sys/class/net/{}", names::bridge(id))));
    for k in 0..3 {
        assert!(!exists(format!("/sys/class/net/{}", names::veth(id, k))));
    }
    assert!(!exists(&dir));
}

#[test]
fn sshd_round_trip() {
    let rig = Rig::builder(2)
        .sshd(true)
        .up()
        .unwrap_or_else(|e| panic!("rig with sshd: {e:#}"));
    let t = Instant::now();
    let out = rig.ssh(0, 1).arg("hostname").output().unwrap();
    eprintln!("ssh node0 -> node1: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node1");
    // The remote shell read the node's minimal ~/.bashrc, not root's.
    let out = rig
        .ssh(1, 0)
        .arg("echo $TESTRIG_NODE:${PYENV_SHELL:-none}")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if Path::new(&testrig_root_bashrc()).exists() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node0:none");
    }
    // Plain ssh from the node with the config, by address, and to itself.
    let cfg = rig.ssh_config();
    let script = format!(
        "ssh -F {cfg} {a1} hostname && ssh -F {cfg} node0 hostname",
        cfg = cfg.display(),
        a1 = rig.node(1).addr()
    );
    assert_eq!(rig.node(0).sh(&script).unwrap(), "node1\nnode0\n");
    // sshd listens only on its node's address.
    let refused = rig
        .node(1)
        .command("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

fn testrig_root_bashrc() -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let home = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some("0"))
        .and_then(|l| l.split(':').nth(5))
        .unwrap_or("/root");
    format!("{home}/.bashrc")
}

/// Identity of a namespace file, interface or directory, so that the checks
/// below are not fooled by a concurrent test process reusing a freed rig id.
fn identity(path: &str) -> Option<String> {
    if let Some(ifname) = path.strip_prefix("/sys/class/net/") {
        return std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex")).ok();
    }
    std::fs::metadata(path)
        .ok()
        // Inode numbers get reused at once: add the birth time.
        .map(|m| format!("{}:{}:{:?}", m.dev(), m.ino(), m.created().ok()))
}

/// Whether `pid` runs (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            state != Some("Z")
        })
        .unwrap_or(false)
}

/// Starts `testrig up N`, reads its description up to '# ready'.
/// Returns the process, the paths of its objects with their identities, and
/// the anchors' pids.
fn cli_up(n: usize) -> (std::process::Child, Vec<(String, String)>, Vec<u32>) {
    let mut up = Command::new(PROBE)
        .args(["up", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut paths = Vec::new();
    let mut pids = Vec::new();
    for line in BufReader::new(up.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let (key, value) = line.split_once('=').unwrap_or((&line, ""));
        match key {
            "TESTRIG_DIR" => paths.push(value.to_string()),
            "TESTRIG_BRIDGE" => paths.push(format!("/sys/class/net/{value}")),
            k if k.ends_with("_NETNS") => paths.push(format!("/run/netns/{value}")),
            k if k.ends_with("_PID") => pids.push(value.parse().unwrap()),
            _ => {}
        }
        if line == "# ready" {
            break;
        }
    }
    assert_eq!(paths.len(), 2 + n);
    assert_eq!(pids.len(), n);
    let paths = paths
        .into_iter()
        .map(|p| {
            let id = identity(&p).unwrap_or_else(|| panic!("{p} missing"));
            (p, id)
        })
        .collect();
    (up, paths, pids)
}

fn assert_gone(paths: &[(String, String)], pids: &[u32]) {
    for (path, id) in paths {
        // Gone, or another rig's by now.
        assert_ne!(identity(path).as_ref(), Some(id), "{path} left");
    }
    for pid in pids {
        assert!(!alive(*pid), "anchor {pid} alive");
    }
}

#[test]
fn cli_up_then_cleanup_after_its_owner_was_killed() {
    let (mut up, paths, pids) = cli_up(2);
    // SIGKILL: no teardown; the rig is left behind, with its anchors.
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(pids.iter().all(|p| alive(*p)));
    let out = Command::new(PROBE).arg("cleanup").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (Another test process may have removed it first, when it took the id.)
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_gone(&paths, &pids);
}

#[test]
fn cli_up_tears_down_on_sigterm() {
    let (mut up, paths, pids) = cli_up(1);
    assert!(Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(up.wait().unwrap().success());
    assert_gone(&paths, &pids);
}
