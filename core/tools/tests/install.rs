//! scripts/install.sh: DMTCP's layout under a prefix, relocatable. The
//! installed copy, moved to another directory after the install, runs the
//! demo's cycle (launch with its own coordinator, checkpoint, SIGKILL,
//! restart) with only its own files.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_text(file: &Path, pat: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains(pat)
    {
        assert!(
            Instant::now() < deadline,
            "no {pat:?} in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn installed_copy_moved_elsewhere_checkpoints_and_restarts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let top = fresh_dir("install");
    let first = top.join("opt/dmtcp-rs/0.1.0");
    let o = Command::new("bash")
        .arg(repo.join("scripts/install.sh"))
        .arg("--prefix")
        .arg(&first)
        .arg("--from")
        .arg(bin_dir())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Relocatable: the tree works from wherever it is moved to.
    let prefix = top.join("elsewhere");
    std::fs::rename(&first, &prefix).unwrap();
    for f in [
        "bin/dmtcp_launch",
        "bin/dmtcp_checkpoint",
        "bin/dmtcp_command",
        "bin/dmtcp_restart",
        "bin/dmtcp_coordinator",
        "bin/dmtcp_ssh",
        "bin/dmtcp_sshd",
        "bin/dmtcp_srun",
        "lib/dmtcp/libdmtcp.so",
        "lib/dmtcp/libdmtcp_ssh.so",
        "lib/dmtcp/libdmtcp_tun.so",
        "lib/dmtcp/libdmtcp_batch.so",
        "lib/dmtcp/libdmtcp_ib.so",
        "lib/dmtcp/libdmtcp_kvm.so",
        "lib/dmtcp/dmtcp_restorer",
        "include/dmtcp.h",
        "share/man/man1/dmtcp_launch.1",
        "share/man/man1/dmtcp_command.1",
        "share/bash-completion/completions/dmtcp_restart",
        "share/doc/dmtcp-rs/docs/user-guide.md",
    ] {
        let p = prefix.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is missing or empty", p.display());
    }
    let bin = prefix.join("bin");
    let work = top.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // A program using the interface compiles against the installed header.
    let st = Command::new("cc")
        .arg("-c")
        .arg("-I")
        .arg(prefix.join("include"))
        .arg(repo.join("examples/api.c"))
        .arg("-o")
        .arg(work.join("api.o"))
        .status()
        .unwrap();
    assert!(st.success(), "examples/api.c against the installed dmtcp.h");
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(work.join("counter"))
        .arg(repo.join("examples/counter.c"))
        .status()
        .unwrap();
    assert!(st.success());
    let bare = Command::new(work.join("counter"))
        .arg("6")
        .output()
        .unwrap();
    let port = unused_port().to_string();
    let out = work.join("out.txt");
    let mut launched = Command::new(bin.join("dmtcp_launch"))
        .args(["./counter", "6"])
        .env("DMTCP_COORD_PORT", &port)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    wait_text(&out, "step  2");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", launched.id())).unwrap();
    let lib = prefix.join("lib/dmtcp/libdmtcp.so");
    assert!(
        maps.contains(&lib.display().to_string()),
        "the program does not run with {}",
        lib.display()
    );
    let o = Command::new(bin.join("dmtcp_command"))
        .arg("--bcheckpoint")
        .env("DMTCP_COORD_PORT", &port)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_text(&out, "step  4");
    let _ = launched.kill();
    let _ = launched.wait();
    let imgs: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt_counter_") && n.ends_with(".dmtcp"))
        .collect();
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    let mut r = Command::new(bin.join("dmtcp_restart"))
        .args(&imgs)
        .env("DMTCP_COORD_PORT", &port)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut r, Duration::from_secs(60)).expect("the restart did not end");
    assert!(st.success(), "restart: {st}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        String::from_utf8_lossy(&bare.stdout),
        "the restarted run's output differs from a bare run's"
    );
    let _ = std::fs::remove_dir_all(&top);
}
