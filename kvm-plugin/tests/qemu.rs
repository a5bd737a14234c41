//! An unmodified `qemu-system-x86_64 -enable-kvm -nographic -no-reboot`
//! under `dmtcp_launch --kvm`, running a firmware payload of our own
//! (tests/qemu/fw.S, assembled here with `as` and `ld`: real mode, PIC and
//! PIT, a checksum per block printed on the serial port): checkpointed,
//! killed, restarted, checkpointed and killed again, restarted again; the
//! serial output must equal a bare run's, and QEMU ends with status 0
//! (the firmware resets the machine, which -no-reboot turns into an exit).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/qemu-system-x86_64");
    if p.exists() {
        Some(p)
    } else {
        panic!(
            "qemu-system-x86_64 is not installed (Debian's qemu-system-x86; .ci/run installs it)"
        )
    }
}

/// Assemble tests/qemu/fw.S into a 64 KiB flat image in `dir`.
fn firmware(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qemu/fw.S");
    let obj = dir.join("fw.o");
    let bin = dir.join("fw.bin");
    let st = Command::new("as")
        .arg("--32")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("as");
    assert!(st.success(), "as {}", src.display());
    let st = Command::new("ld")
        .args(["-m", "elf_i386", "-Ttext", "0", "--oformat", "binary", "-o"])
        .arg(&bin)
        .arg(&obj)
        .status()
        .expect("ld");
    assert!(st.success(), "ld");
    assert_eq!(std::fs::metadata(&bin).unwrap().len(), 65536);
    bin
}

#[test]
fn qemu_guest_survives_checkpoint_kill_and_restart() {
    if !kvm_usable() {
        return;
    }
    let Some(qemu) = qemu() else { return };
    let mut job = Job::new("qemu").env("DMTCP_KVM_DEBUG", "1");
    let fw = firmware(&job.dir);
    let q = qemu.display().to_string();
    let fw = fw.display().to_string();
    let args = [
        q.as_str(),
        "-enable-kvm",
        "-nographic",
        "-no-reboot",
        "-m",
        "16",
        "-bios",
        fw.as_str(),
    ];
    let bare = run_bare(&args);
    assert!(bare.contains("done csum"), "bare run: {bare}");
    job.launch(&args, &["--kvm"]);
    job.wait_for("block 08 ");
    job.checkpoint();
    job.wait_for("block 14 ");
    job.checkpoint();
    job.kill();
    job.restart();
    job.wait_for("block 30 ");
    job.checkpoint();
    job.kill();
    job.restart();
    job.wait_for("done csum");
    job.wait_success();
    assert_eq!(job.output(), bare, "{}", job.diag());
    assert_eq!(
        job.read("err.txt").matches("restored: 1 vCPU(s)").count(),
        2,
        "{}",
        job.diag()
    );
}
