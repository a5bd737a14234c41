//! `softib`: run programs on the software InfiniBand device.
//!
//! ```text
//! softib exec [--devices N] [--idle-exit SECS] -- CMD [ARGS...]
//! softib daemon [--devices N] [--idle-exit SECS] [--addr IPV4]
//! softib status
//! ```
//! `exec` starts this node's device service if none runs, puts the drop-in
//! `libibverbs.so.1` first in `LD_LIBRARY_PATH`, points `SYSFS_PATH` (unless
//! set) at a sysfs-like tree of the service's devices (see [`sysfs`]) and
//! runs CMD in place of itself. `daemon` runs the service in the foreground. `status` prints
//! the devices of the running service.

use softib::{daemon, paths, proto, sys, sysfs};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: softib exec [--devices N] [--idle-exit SECS] -- CMD [ARGS...]
       softib daemon [--devices N] [--idle-exit SECS] [--addr IPV4]
       softib status

environment: SOFTIB_DIR (default /tmp/softib) holds <hostname>/softibd.sock and
fabric/ (shared by the nodes of one fabric); SOFTIB_SOCKET, SOFTIB_FABRIC
override each; SOFTIB_IDLE_EXIT is exec's default for --idle-exit (30).
exec sets SYSFS_PATH to <socket dir>/sysfs, which describes the devices as
/sys/class/infiniband would, unless SYSFS_PATH is already set.";

struct Opts {
    devices: u32,
    idle_exit: u64,
    addr: Option<std::net::Ipv4Addr>,
    rest: Vec<OsString>,
}

/// Parses options; `exec` may end them with a command. The service a
/// person starts with `daemon` stays up unless told otherwise; one that
/// `exec` starts leaves after SOFTIB_IDLE_EXIT (default 30) idle seconds.
fn parse(args: &[OsString], allow_cmd: bool) -> Result<Opts, String> {
    let idle_default = if allow_cmd {
        std::env::var("SOFTIB_IDLE_EXIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30)
    } else {
        0
    };
    let mut o = Opts {
        devices: 1,
        idle_exit: idle_default,
        addr: None,
        rest: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let mut value = |name: &str| -> Result<String, String> {
            i += 1;
            args.get(i)
                .map(|v| v.to_string_lossy().into_owned())
                .ok_or(format!("{name} needs a value"))
        };
        match a.as_str() {
            "--devices" => {
                o.devices = value("--devices")?
                    .parse()
                    .map_err(|_| "--devices takes a number from 1 to 16".to_string())?;
                if !(1..=16).contains(&o.devices) {
                    return Err("--devices takes a number from 1 to 16".into());
                }
            }
            "--idle-exit" => {
                o.idle_exit = value("--idle-exit")?
                    .parse()
                    .map_err(|_| "--idle-exit takes seconds".to_string())?
            }
            "--addr" => {
                o.addr = Some(
                    value("--addr")?
                        .parse()
                        .map_err(|_| "--addr takes an IPv4 address".to_string())?,
                )
            }
            "--" if allow_cmd => {
                o.rest = args[i + 1..].to_vec();
                return Ok(o);
            }
            s if allow_cmd && !s.starts_with('-') => {
                o.rest = args[i..].to_vec();
                return Ok(o);
            }
            s => return Err(format!("unknown option {s}")),
        }
        i += 1;
    }
    Ok(o)
}

/// The directory holding `libibverbs.so.1` (a link to the library built
/// next to this program), made on first use.
fn lib_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe.parent().ok_or("cannot find this program's directory")?;
    let lib = dir.join("libsoftib_verbs.so");
    if !lib.exists() {
        return Err(format!(
            "{} is missing: build the workspace (cargo build --release)",
            lib.display()
        ));
    }
    let libdir = dir.join("softib-lib");
    let link = libdir.join("libibverbs.so.1");
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new("../libsoftib_verbs.so")) {
        std::fs::create_dir_all(&libdir)
            .map_err(|e| format!("cannot create {}: {e}", libdir.display()))?;
        let tmp = libdir.join(format!(".libibverbs.so.1.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink("../libsoftib_verbs.so", &tmp)
            .map_err(|e| format!("cannot link {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &link).map_err(|e| format!("cannot link {}: {e}", link.display()))?;
    }
    Ok(libdir)
}

fn service_up(sock: &Path) -> bool {
    sys::connect_seqpacket(sock).is_ok()
}

/// Starts the node's service in the background unless one answers.
fn ensure_service(o: &Opts) -> Result<(), String> {
    let sock = paths::socket();
    if service_up(&sock) {
        return Ok(());
    }
    let dir = sock.parent().ok_or("bad socket path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("softibd.log"))
        .map_err(|e| format!("cannot open the service log in {}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--devices")
        .arg(o.devices.to_string())
        .arg("--idle-exit")
        .arg(o.idle_exit.to_string());
    if let Some(a) = o.addr {
        cmd.arg("--addr").arg(a.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    // The service must not inherit the program's preloads or library path.
    cmd.env_remove("LD_PRELOAD").env_remove("LD_LIBRARY_PATH");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the device service: {e}"))?;
    let t0 = Instant::now();
    let mut ours_stepped_aside = false;
    while t0.elapsed() < Duration::from_secs(20) {
        if service_up(&sock) {
            return Ok(());
        }
        if !ours_stepped_aside {
            if let Ok(Some(st)) = child.try_wait() {
                // A service that exits successfully at once found another
                // one (started by another exec at the same moment) taking
                // the socket: wait for that one to answer.
                if !st.success() {
                    return Err(format!(
                        "the device service exited ({st}); see {}",
                        dir.join("softibd.log").display()
                    ));
                }
                ours_stepped_aside = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "the device service did not come up at {}",
        sock.display()
    ))
}

fn exec(args: &[OsString]) -> Result<(), String> {
    let o = parse(args, true)?;
    if o.rest.is_empty() {
        return Err("exec needs a command".into());
    }
    let libdir = lib_dir()?;
    ensure_service(&o)?;
    let mut ld = libdir.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
        ld.push(":");
        ld.push(old);
    }
    let sock = std::path::absolute(paths::socket()).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&o.rest[0]);
    cmd.args(&o.rest[1..]).env("LD_LIBRARY_PATH", ld);
    // Programs that look for devices in sysfs (OpenMPI's openib BTL) find
    // them under SYSFS_PATH, which libibverbs' ibv_get_sysfs_path returns.
    if std::env::var_os("SYSFS_PATH").is_none_or(|v| v.is_empty()) {
        cmd.env("SYSFS_PATH", write_sysfs(&sock)?);
    }
    let err = cmd.env("SOFTIB_SOCKET", sock).exec();
    Err(format!("cannot run {}: {err}", o.rest[0].to_string_lossy()))
}

/// Asks the service at `sock` for its devices.
fn query_devices(sock: &Path) -> Result<Vec<proto::DevInfo>, String> {
    let fd = sys::connect_seqpacket(sock)
        .map_err(|e| format!("no device service at {}: {e}", sock.display()))?;
    let ask = |req: &proto::Req| -> Result<proto::Resp, String> {
        use std::os::fd::AsRawFd;
        sys::send_packet(fd.as_raw_fd(), &proto::encode(req), None).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let (n, _) = sys::recv_packet(fd.as_raw_fd(), &mut buf).map_err(|e| e.to_string())?;
        proto::decode(&buf[..n]).ok_or_else(|| "malformed answer".to_string())
    };
    ask(&proto::Req::Hello {
        version: proto::VERSION,
    })?;
    match ask(&proto::Req::QueryDevices)? {
        proto::Resp::Devices(devs) => Ok(devs),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Writes the sysfs-like tree of the service's devices next to its socket
/// (`<SOFTIB_DIR>/<host>/sysfs`) and returns its path.
fn write_sysfs(sock: &Path) -> Result<PathBuf, String> {
    let devs = query_devices(sock)?;
    let root = sock.parent().ok_or("bad socket path")?.join("sysfs");
    sysfs::write_tree(&root, &devs, &paths::hostname())
        .map_err(|e| format!("cannot write {}: {e}", root.display()))?;
    Ok(root)
}

fn status() -> Result<(), String> {
    let sock = paths::socket();
    let devs = query_devices(&sock)?;
    println!("service: {}", sock.display());
    for d in devs {
        println!("{}: lid {} guid {:016x}", d.name, d.lid, d.guid);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let sub = args
        .first()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r = match sub.as_str() {
        "exec" => exec(&args[1..]),
        "daemon" => parse(&args[1..], false).and_then(|o| {
            let opts = daemon::Options {
                devices: o.devices,
                socket: paths::socket(),
                fabric: paths::fabric(),
                idle_exit: (o.idle_exit > 0).then(|| Duration::from_secs(o.idle_exit)),
                addr: o.addr,
            };
            daemon::run(opts).map_err(|e| e.to_string())
        }),
        "status" => status(),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {sub:?}\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("softib: {e}");
            ExitCode::from(2)
        }
    }
}
