//! The tools' command-line behaviour, and bad input.

mod common;
use common::*;

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn command_without_coordinator_exits_2() {
    let port = unused_port().to_string();
    let o = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &port, "-s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("Coordinator not found"),
        "{:?}",
        text(&o)
    );
    let o = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &port, "--json", "-s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command_status"], "DMT_COORD_NOT_FOUND");
    assert_eq!(v["schema_version"], 1);
}

#[test]
fn status_text_and_json() {
    let prog = c_program("threads");
    let mut job = Job::new("status");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("step 1\n");
    let o = job.command(&["-s"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    let peers = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("NUM_PEERS="))
        .expect("NUM_PEERS line");
    assert_eq!(peers, "1", "{out}");
    let running = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("RUNNING="))
        .expect("RUNNING line");
    assert_eq!(running, "yes");
    assert!(
        out.lines().any(|l| l.trim().starts_with("CKPT_INTERVAL=")),
        "{out}"
    );
    assert!(out.starts_with("Coordinator:\n  Host: "), "{out}");
    let o = job.command(&["--json", "-s"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["command"], "DMT_STATUS");
    assert_eq!(v["command_status"], "DMT_COORD_SUCCESS");
    assert_eq!(v["num_peers"], 1);
    assert_eq!(v["running"], true);
    assert!(v["checkpoint_interval"].is_i64());
    let o = job.command(&["-i", "7"]);
    assert!(o.status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&job.command(&["--json", "-s"]).stdout).unwrap();
    assert_eq!(v["checkpoint_interval"], 7);
    let (list, _) = text(&job.command(&["-l"]));
    assert!(list.contains("threads"), "{list}");
}

#[test]
fn interval_checkpoints_happen_by_themselves() {
    let prog = c_program("memcheck");
    let mut job = Job::new("interval");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("step 1 ok");
    assert!(job.command(&["-i", "1"]).status.success());
    let deadline = std::time::Instant::now() + TIMEOUT;
    while job.images().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no interval checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    job.wait_success();
}

#[test]
fn unknown_options_are_refused_with_usage() {
    for t in [
        "dmtcp_launch",
        "dmtcp_restart",
        "dmtcp_command",
        "dmtcp_coordinator",
    ] {
        let o = tool(t).arg("--no-such-option").output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}: {err}");
        assert!(
            err.contains("unexpected argument '--no-such-option'") && err.contains("Usage"),
            "{t}: {err}"
        );
    }
}

#[test]
fn old_name_still_works_and_warns() {
    let o = tool("dmtcp_checkpoint").arg("--help").output().unwrap();
    assert!(o.status.success());
    assert!(text(&o).1.contains("deprecated"));
}

#[test]
fn launch_join_without_coordinator_fails_clearly() {
    let port = unused_port().to_string();
    let o = tool("dmtcp_launch")
        .args(["-j", "-h", "127.0.0.1", "-p", &port, "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("Coordinator not found"),
        "{:?}",
        text(&o)
    );
}

/// A launch refused for a bad plugin path, a program that is not there or
/// not executable, leaves no coordinator behind (one started for it would
/// wait for ever on its port, and later launches would join it).
#[test]
fn refused_launches_leave_no_coordinator() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let not_exec = dir.join(format!("not-executable-{}", std::process::id()));
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--with-plugin", "relative.so", "true"],
            1,
            "absolute path",
        ),
        (&["/nonexistent/program"], 127, "cannot run"),
        (&["no-such-program-on-path-xyz"], 127, "cannot run"),
        (&[not_exec.to_str().unwrap()], 126, "cannot run"),
    ];
    for (args, code, msg) in cases {
        let port = unused_port().to_string();
        let o = tool("dmtcp_launch")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {:?}", text(&o));
        assert!(text(&o).1.contains(msg), "{args:?}: {:?}", text(&o));
        let st = tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &port, "-s"])
            .output()
            .unwrap();
        assert_eq!(
            st.status.code(),
            Some(2),
            "{args:?}: a coordinator listens on {port}: {:?}",
            text(&st)
        );
    }
    let _ = std::fs::remove_file(&not_exec);
}

/// Make one good image, then hand dmtcp_restart damaged copies of it:
/// damage in the header, the index, the metadata (behind recomputed
/// checksums), a chunk's record and a chunk's bytes each gives exit status
/// 1 and one line on stderr naming the place, the file untouched.
#[test]
fn damaged_images_are_refused_cleanly() {
    use dmtcp_common::image::{reseal, Image};
    let prog = c_program("memcheck");
    let mut job = Job::new("damaged");
    job.launch(&[prog.to_str().unwrap()], &["--no-gzip"]);
    job.wait_for("step 2 ok");
    job.checkpoint_and_kill();
    let img = job.images().pop().expect("an image");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600,
        "images are private"
    );
    let good = std::fs::read(&img).unwrap();
    let (index_offset, meta_len, chunks) = {
        let i = Image::open(&img).unwrap();
        let o = i.header.index_offset as usize;
        let meta_len = u64::from_le_bytes(good[o..o + 8].try_into().unwrap()) as usize;
        (o, meta_len, i.chunks)
    };
    // The middle chunk, damaged in the middle of its stored bytes.
    let (k, n) = (chunks.len() / 2, chunks.len());
    let c = chunks[k];
    let table = (index_offset + 16 + meta_len).next_multiple_of(8);
    let edit = |f: &dyn Fn(&mut Vec<u8>), seal: bool| {
        let mut b = good.clone();
        f(&mut b);
        if seal {
            reseal(&mut b);
        }
        b
    };
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "truncated".into(),
        ),
        (
            "foreign",
            b"#!/bin/sh\necho not an image\n".to_vec(),
            "not a DMTCP-rs checkpoint image".into(),
        ),
        (
            "empty",
            Vec::new(),
            "not a DMTCP-rs checkpoint image".into(),
        ),
        (
            "header",
            edit(&|b| b[20] ^= 0x10, false),
            "corrupt: header: checksum mismatch".into(),
        ),
        (
            "index",
            edit(
                &|b| {
                    let n = b.len();
                    b[n - 20] ^= 0xff
                },
                false,
            ),
            "corrupt: index: checksum mismatch".into(),
        ),
        (
            "metadata",
            edit(&|b| b[index_offset + 16] = b'[', true),
            "corrupt: metadata: unreadable".into(),
        ),
        (
            "chunk-record",
            edit(
                &|b| {
                    b[table + 40 * k + 8..table + 40 * k + 16]
                        .copy_from_slice(&(1u64 << 62).to_le_bytes())
                },
                true,
            ),
            format!("corrupt: chunk {k}: a length of {} bytes", 1u64 << 62),
        ),
        (
            "chunk-bytes",
            edit(
                &|b| {
                    let mid = (c.file_off + c.stored_len / 2) as usize;
                    for x in &mut b[mid..mid + 64] {
                        *x ^= 0x5a;
                    }
                },
                false,
            ),
            format!(
                "corrupt: chunk {k} of {n} (memory at {:#x}): checksum mismatch",
                c.addr
            ),
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = job.dir.join(format!("ckpt_{name}.dmtcp"));
        std::fs::write(&path, &bytes).unwrap();
        // A damaged chunk of memory: refused up front with `--verify
        // before` (by default it is found as the page server fills it:
        // lazyz.rs).
        let verify = if name == "chunk-bytes" {
            "before"
        } else {
            "on-fill"
        };
        let (code, err) = restart_output(&job, &path, verify);
        assert_eq!(
            code,
            Some(1),
            "{name}: exit status (None: killed or hung): {err}"
        );
        assert!(
            err.lines().count() == 1 && err.starts_with("dmtcp_restart: ") && err.contains(&expect),
            "{name}: one line saying {expect:?} expected: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: the image file was modified"
        );
    }
    // A FIFO is refused at once (opening it for reading would wait for a writer).
    let fifo = job.dir.join("ckpt_fifo.dmtcp");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (code, err) = restart_output(&job, &fifo, "on-fill");
    assert_eq!(code, Some(1), "fifo: {err}");
    assert!(err.contains("not a regular file"), "{err}");
    let o = tool("dmtcp_restart")
        .arg(job.dir.join("no-such.dmtcp"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("No such file"), "{:?}", text(&o));
    // The good image is intact and still restarts.
    assert_eq!(std::fs::read(&img).unwrap(), good);
    job.restart();
    job.wait_success();
}

/// Run `dmtcp_restart -j --verify VERIFY` on `image` against the job's
/// coordinator, within a minute: its exit code (None if killed by a signal
/// or if it hung) and stderr.
fn restart_output(job: &Job, image: &std::path::Path, verify: &str) -> (Option<i32>, String) {
    let err_path = image.with_extension("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut child = tool("dmtcp_restart")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .args(["--verify", verify])
        .arg(image)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut child, std::time::Duration::from_secs(60));
    (
        st.and_then(|s| s.code()),
        std::fs::read_to_string(&err_path).unwrap(),
    )
}

/// The restorer must be a static executable (no interpreter, no dynamic
/// section) whose every loadable segment, bss included, lies inside the
/// window each checkpointed process keeps reserved.
#[test]
fn restorer_lives_inside_the_reserved_window() {
    let elf = std::fs::read(bin_dir().join("dmtcp_restorer")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    assert_eq!(u16_at(16), 2, "ET_EXEC expected (not PIE)");
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54), u16_at(56));
    let (lo, hi) = (
        dmtcp_sys::RESTORER_BASE as u64,
        (dmtcp_sys::RESTORER_BASE + dmtcp_sys::RESTORER_SIZE) as u64,
    );
    let mut loads = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(ph);
        assert!(
            kind != 3 && kind != 2,
            "PT_INTERP/PT_DYNAMIC present: not static"
        );
        if kind == 1 {
            let (vaddr, memsz) = (u64_at(ph + 16), u64_at(ph + 40));
            assert!(
                vaddr >= lo && vaddr + memsz <= hi,
                "segment {vaddr:#x}+{memsz:#x} outside the window"
            );
            loads += 1;
        }
    }
    assert!(loads >= 2);
}

/// Untouched and all-zero memory is not written: a process holding 512 MiB
/// of it makes an image of a few MiB, and gets it back as zeroes.
#[test]
fn untouched_and_zero_memory_is_not_written() {
    let mut job = Job::new("zeros");
    let script = "import mmap, time, sys\n\
                  a = mmap.mmap(-1, 256 << 20)\n\
                  b = mmap.mmap(-1, 256 << 20)\n\
                  for i in range(0, 256 << 20, 4096): b[i] = 0\n\
                  a[12345] = 7\n\
                  print('ready', flush=True)\n\
                  time.sleep(2)\n\
                  print('RESULT', a[12345], sum(a[0:1 << 20]), b.find(b'\\x01'), flush=True)\n";
    job.launch(&["python3", "-c", script], &["--no-gzip"]);
    job.wait_for("ready");
    job.checkpoint_and_kill();
    let img = job.images().pop().unwrap();
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(
        size < 48 << 20,
        "image of {size} bytes for 512 MiB of zero/untouched memory"
    );
    job.restart();
    job.wait_success();
    assert!(job.output().contains("RESULT 7 7 -1"), "{}", job.output());
}

#[test]
fn kill_and_quit_commands() {
    let prog = c_program("memcheck");
    let mut job = Job::new("killquit");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("step 1 ok");
    assert!(job.command(&["-k"]).status.success());
    let mut p = job.proc.take().unwrap();
    wait_timeout(&mut p, TIMEOUT).expect("the process survived dmtcp_command -k");
    assert!(job.command(&["-q"]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        job.command(&["-s"]).status.code(),
        Some(2),
        "the coordinator survived -q"
    );
}

/// Images record the processor's instruction-set features; a restart on a
/// processor without one of them is refused with a clear message, and
/// `--no-strict-checking` restarts anyway.
#[test]
fn restart_on_a_processor_lacking_features_is_refused() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("cpuflags");
    job.launch(&[p], &[]);
    job.wait_for("step 4\n");
    job.checkpoint_and_kill();
    let img = job.images().pop().expect("an image");
    let here = dmtcp_common::cpu::isa_flags();
    let meta = dmtcp_common::image::Image::open(&img).unwrap().meta;
    assert_eq!(
        meta.cpu_flags, here,
        "the image records this processor's features"
    );
    // As if the image had been taken on a processor with one more feature.
    dmtcp_common::image::rewrite_meta(&img, |m| m.cpu_flags.push("dmtcp_test_feature".into()))
        .unwrap();
    let o = tool("dmtcp_restart")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .arg(&img)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("features this one lacks (dmtcp_test_feature)")
            && err.contains("--no-strict-checking"),
        "{err}"
    );
    job.restart_with(&[
        "--no-strict-checking".to_string(),
        img.display().to_string(),
    ]);
    job.wait_success();
    assert_eq!(job.output(), bare);
}

/// On a kernel without CONFIG_CHECKPOINT_RESTORE (its calls made to fail
/// with seccomp), dmtcp_launch says what a restart will lack, and the
/// program still runs under checkpoint control.
#[test]
fn launch_names_missing_kernel_features() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let port = unused_port();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kgaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = std::process::Command::new(c_program("nsdeny"))
        .args(["tidaddr,kcmp", "--"])
        .arg(bin_dir().join("dmtcp_launch"))
        .args(["--new-coordinator", "-p", &port.to_string(), p])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("lacks CONFIG_CHECKPOINT_RESTORE (prctl PR_GET_TID_ADDRESS")
            && err.contains("no kcmp"),
        "{err}"
    );
    assert_eq!(out, bare);
}

/// One logging scheme: with `dmtcp_launch -v` every process of the job
/// and the tools write a log file of their own in the temporary directory
/// (`<tmp>/dmtcp-<user>@<host>/<name>.<pid>.log`) with their notes and
/// debug detail (the checkpoint and its barriers, the restart); the
/// program's stderr gets none of it. Without `-v` or `DMTCP_LOG`, no log
/// file is written.
#[test]
fn verbose_runs_write_a_log_file_per_process() {
    let prog = c_program("threads");
    let p = prog.to_str().unwrap();
    let tmp = fresh_dir("logs-quiet");
    let mut job = Job::new("logs-quiet").env("DMTCP_TMPDIR", tmp.to_str().unwrap());
    job.launch(&[p], &[]);
    job.cycle("step 5\n", "step 8\n");
    job.wait_success();
    let none: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(none.is_empty(), "log files without -v: {none:?}");

    let tmp = fresh_dir("logs");
    let mut job = Job::new("logs").env("DMTCP_TMPDIR", tmp.to_str().unwrap());
    job.launch(&[p], &["-v"]);
    job.cycle("step 5\n", "step 8\n");
    job.wait_success();
    let dirs: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let logdir = dirs[0].path();
    let name = logdir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("dmtcp-") && name.contains('@'), "{name}");
    let files: Vec<(String, String)> = std::fs::read_dir(&logdir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    let of = |prefix: &str| -> Vec<&String> {
        files
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && n.ends_with(".log"))
            .map(|(_, t)| t)
            .collect()
    };
    assert_eq!(of("dmtcp_launch.").len(), 1, "{files:?}");
    let progs = of("threads.");
    assert!(!progs.is_empty(), "no log of the program: {files:?}");
    let all = progs
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("");
    for want in [
        "info checkpoint of generation 1: suspending",
        "debug barrier suspended: passed",
        "committed",
        "info restarted from generation 1",
    ] {
        assert!(
            all.contains(want),
            "{want:?} missing in the program's log:\n{all}"
        );
    }
    // Written suspended ("written (N bytes ...") or, the default where
    // memory allows, by a forked writer.
    assert!(
        all.contains("written (") || all.contains("image written by forked writer"),
        "no image written in the program's log:\n{all}"
    );
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(
        !err.contains("barrier"),
        "debug lines on the program's stderr: {err}"
    );
}
