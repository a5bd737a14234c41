//! Dirty-page tracking for incremental images (userfaultfd write-protect
//! and PAGEMAP_SCAN): chunks of memory not written since the previous
//! image are taken from it without being read. A program that changes its
//! memory between checkpoints in the ways the tracking must not miss
//! (tests/c/dirtymem.c: single bytes in otherwise clean chunks, read(2)
//! into a buffer, MADV_DONTNEED, munmap + mmap at the same place, mremap
//! over another mapping, a forked child, a userfaultfd of its own; it
//! checks all of its memory every 20 ms) is checkpointed three times,
//! killed, and restarted from the third and from the second (incremental)
//! generation, each time checking every byte. The tracking must have been
//! used (the stats file `DMTCP_DIRTY_STATS` counts the chunks taken
//! unread) except where it is turned off.

mod common;
use common::*;
use std::path::PathBuf;

struct Dirty {
    job: Job,
    ctl: PathBuf,
    stats: PathBuf,
    /// Processes of the job (2 with a forked child).
    procs: usize,
}

impl Dirty {
    fn launch(mode: &str, env: &[(&str, &str)]) -> Dirty {
        // Images written with the program suspended (the default forks
        // where memory allows; the forked_* tests force it).
        Dirty::launch_opts(mode, env, &["--no-forked-ckpt"])
    }

    fn launch_opts(mode: &str, env: &[(&str, &str)], opts: &[&str]) -> Dirty {
        let prog = c_program("dirtymem");
        let job =
            Job::with_coordinator_args(&format!("dirty-{mode}"), &["--keep-generations", "0"]);
        let stats = job.dir.join("stats");
        let mut job = job.env("DMTCP_DIRTY_STATS", stats.to_str().unwrap());
        for (k, v) in env {
            job = job.env(k, v);
        }
        let ctl = job.dir.join("ctl");
        std::fs::write(&ctl, "0").unwrap();
        job.launch(&[prog.to_str().unwrap(), mode, ctl.to_str().unwrap()], opts);
        job.wait_for("phase 0 done\n");
        Dirty {
            job,
            ctl,
            stats,
            procs: 1,
        }
    }

    /// The next phase; waits until every process has made its change.
    fn change(&mut self, phase: u32) {
        std::fs::write(&self.ctl, phase.to_string()).unwrap();
        let pat = format!("phase {phase} done\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.job.output().matches(&pat).count() < self.procs {
            assert!(
                std::time::Instant::now() < deadline,
                "no {pat:?}{}",
                self.job.diag()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!self.job.output().contains("BAD"), "{}", self.job.diag());
    }

    /// Stats lines of generation `g`: (unread, hashed, rewritten) summed
    /// over the job's processes, and how many processes reported.
    fn stats_of(&self, g: u32) -> (u64, u64, u64, usize) {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let mut sum = (0, 0, 0, 0);
        for l in text.lines() {
            let Some(rest) = l.strip_prefix(&format!("generation {g}: ")) else {
                continue;
            };
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().unwrap())
                .collect();
            sum.0 += n[0];
            sum.1 += n[1];
            sum.2 += n[2];
            sum.3 += 1;
        }
        sum
    }

    /// Restart generation `g` (its directory), tell the program to end
    /// and check its last word: every byte as at phase `phase`.
    fn restart_and_check(&mut self, g: u32, phase: u32) {
        let dirs = committed(&self.job.ckpt);
        let dir = &dirs
            .iter()
            .find(|(n, _)| *n == g)
            .unwrap_or_else(|| panic!("no generation {g}: {dirs:?}"))
            .1;
        std::fs::write(&self.ctl, "end").unwrap();
        // (The restarted program writes on into out.txt.)
        let want = format!("OK phase {phase}\n");
        let before = self.job.output().matches(&want).count();
        self.job
            .restart_with(&["--restartdir".into(), dir.display().to_string()]);
        self.job.wait_success();
        let out = self.job.output();
        assert_eq!(
            out.matches(&want).count(),
            before + self.procs,
            "generation {g}{}",
            self.job.diag()
        );
        assert!(!out.contains("BAD"), "{out}");
    }
}

/// Checkpoints after phases 0, 1, 2 (generations 1, 2, 3), killed;
/// restarted from 3, then from 2. Returns the stats of 2 and 3.
fn three_generations(
    mode: &str,
    procs_after_1: usize,
    env: &[(&str, &str)],
) -> [(u64, u64, u64, usize); 2] {
    three_generations_opts(mode, procs_after_1, env, &["--no-forked-ckpt"])
}

fn three_generations_opts(
    mode: &str,
    procs_after_1: usize,
    env: &[(&str, &str)],
    opts: &[&str],
) -> [(u64, u64, u64, usize); 2] {
    let mut d = Dirty::launch_opts(mode, env, opts);
    d.job.checkpoint();
    d.procs = procs_after_1;
    d.change(1);
    d.job.checkpoint();
    d.change(2);
    d.job.checkpoint();
    d.job.kill();
    let s = [d.stats_of(2), d.stats_of(3)];
    for (g, st) in [(2, s[0]), (3, s[1])] {
        assert_eq!(
            st.3,
            d.procs,
            "generation {g}: one stats line a process{}",
            d.job.diag()
        );
    }
    d.restart_and_check(3, 2);
    d.restart_and_check(2, 1);
    s
}

/// Tracking on: most chunks of generations 2 and 3 are not read.
fn engaged(s: [(u64, u64, u64, usize); 2]) {
    for (g, (unread, hashed, _, _)) in [(2, s[0]), (3, s[1])] {
        assert!(
            unread > 0 && unread > hashed / 4,
            "generation {g}: {unread} chunks unread, {hashed} hashed: the tracking was not used"
        );
    }
}

/// A forked writer writes from the fork's copy of memory and trusts the
/// tracking as a suspended write does (the parent hands it the pages
/// written between the write-protect and the fork); the next round trusts
/// its image. Restarts are exact.
#[test]
fn forked_rounds_use_tracking() {
    engaged(three_generations_opts("bytes", 1, &[], &["--forked-ckpt"]));
}

/// The same with the program forking a child of its own, which writes
/// its images with forked writers too.
#[test]
fn forked_rounds_of_a_forked_child() {
    engaged(three_generations_opts("fork", 2, &[], &["--forked-ckpt"]));
}

/// A page of a chunk the tracking proved clean, written after the
/// write-protect and before the writer's fork (here by the library,
/// `DMTCP_TEST_DIRTY_POKE`): the fork's copy has the new byte, the
/// parent's scan after the fork finds the page, and the forked writer
/// hashes and stores the chunk anew.
#[test]
fn forked_writer_rewrites_what_was_written_before_the_fork() {
    let addr = (0x3000_0000_0000u64 + 8 * (1 << 20) + 5 * 4096 + 123).to_string();
    let s = three_generations_opts(
        "poke",
        1,
        &[("DMTCP_TEST_DIRTY_POKE", &addr)],
        &["--forked-ckpt"],
    );
    engaged(s);
    assert_eq!((s[0].2, s[1].2), (1, 0), "{s:?}");
}

#[test]
fn single_bytes_in_clean_chunks() {
    engaged(three_generations("bytes", 1, &[]));
}

#[test]
fn read_into_a_buffer_is_a_write() {
    engaged(three_generations("read", 1, &[]));
}

#[test]
fn dontneed_pages_come_back_as_zero() {
    engaged(three_generations("dontneed", 1, &[]));
}

#[test]
fn munmap_mmap_and_mremap_over_another_mapping() {
    engaged(three_generations("remap", 1, &[]));
}

/// The child's first image is full (its memory is tracked from its own
/// first checkpoint on, not with its parent's userfaultfd); its second
/// is incremental with the tracking.
#[test]
fn forked_child_starts_untracked() {
    let s = three_generations("fork", 2, &[]);
    engaged(s);
}

/// A program registering its own userfaultfd over tracked memory gets it
/// (the range leaves the library's), and the range is hashed meanwhile.
#[test]
fn program_with_its_own_userfaultfd() {
    engaged(three_generations("uffd", 1, &[]));
}

/// Another process writes into the program's memory with
/// `process_vm_writev` (as the software InfiniBand device does): the
/// kernel takes the same write faults, so the pages count as written.
#[test]
fn process_vm_writev_from_another_process() {
    let mut d = Dirty::launch("pvw", &[]);
    d.job.checkpoint();
    for phase in 1..=2 {
        std::fs::write(&d.ctl, phase.to_string()).unwrap();
        let line = loop {
            let out = d.job.output();
            if let Some(l) = out.lines().filter(|l| l.starts_with("pvw ")).nth(phase - 1) {
                break l.to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let f: Vec<u64> = line[4..].split(' ').map(|w| w.parse().unwrap()).collect();
        let (pid, src, dst, len) = (f[0] as i32, f[1], f[2], f[3] as usize);
        let mut buf = vec![0u8; len];
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        let remote = |a: u64| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: reading the program's memory into our buffer of len bytes.
        let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote(src), 1, 0) };
        assert_eq!(r, len as isize, "process_vm_readv");
        // SAFETY: writing our buffer into the program's slot (it waits for it).
        let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote(dst), 1, 0) };
        assert_eq!(r, len as isize, "process_vm_writev");
        std::fs::write(&d.ctl, format!("written {phase}")).unwrap();
        d.job.wait_for(&format!("phase {phase} done\n"));
        d.job.checkpoint();
    }
    d.job.kill();
    let s = [d.stats_of(2), d.stats_of(3)];
    d.restart_and_check(3, 2);
    d.restart_and_check(2, 1);
    engaged(s);
}

/// A page of a chunk taken unread that is written while the image is
/// written (here by the library itself, `DMTCP_TEST_DIRTY_POKE`, as
/// another process could): the check after the writers finds it, and the
/// chunk is hashed and stored anew, so the restarted program has the
/// byte as it was when the image was done.
#[test]
fn written_while_the_image_is_written_is_rewritten() {
    let addr = (0x3000_0000_0000u64 + 8 * (1 << 20) + 5 * 4096 + 123).to_string();
    let s = three_generations("poke", 1, &[("DMTCP_TEST_DIRTY_POKE", &addr)]);
    engaged(s);
    // Generation 2 rewrote the poked chunk; in 3 it is clean again.
    assert_eq!((s[0].2, s[1].2), (1, 0), "{s:?}");
}

/// A process with a Linux AIO context (whose requests write buffers when
/// they complete, without a fault): nothing is taken unread.
#[test]
fn not_trusted_with_asynchronous_io() {
    let s = three_generations("aio", 1, &[]);
    for (g, (unread, hashed, _, _)) in [(2, s[0]), (3, s[1])] {
        assert_eq!(unread, 0, "generation {g}");
        assert!(hashed > 0, "generation {g}");
    }
}

/// `DMTCP_DIRTY_TRACKING=0`: every chunk is hashed, the result the same.
#[test]
fn turned_off_hashes_everything() {
    let s = three_generations("bytes", 1, &[("DMTCP_DIRTY_TRACKING", "0")]);
    for (g, (unread, hashed, _, _)) in [(2, s[0]), (3, s[1])] {
        assert_eq!(unread, 0, "generation {g}");
        assert!(hashed > 0, "generation {g}");
    }
}
