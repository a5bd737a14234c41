//! Shared memory across checkpoint/restart: a ring buffer in
//! MAP_SHARED|MAP_ANONYMOUS memory between a forked producer and its
//! parent, guarded by process-shared semaphores in that memory, and a
//! counter in a POSIX shared memory object; three restarts.

mod common;
use common::*;

#[test]
fn shared_memory_ring_with_semaphores_across_restarts() {
    let prog = c_program("shmring");
    let p = prog.to_str().unwrap();
    let bare = cycles_match_bare(
        "shmring",
        &[p, "40000"],
        &[],
        &[
            ("got 5000\n", "got 10000\n"),
            ("got 15000\n", "got 20000\n"),
            ("got 25000\n", "got 30000\n"),
        ],
    );
    assert!(bare.contains("child exit 0"), "{bare}");
}

/// Files a job maps from a temporary directory (as an MPI library's
/// session directory) come back when the directory is gone at restart (as
/// on another host, or after the library's cleanup): `dmtcp_restart`
/// creates the files again and their contents are those of the
/// checkpoint; a Unix listener bound in that directory is bound again.
#[test]
fn mapped_files_in_a_deleted_temp_dir_come_back() {
    let prog = c_program("tmpmap");
    let p = prog.to_str().unwrap();
    let tmp = |tag: &str| format!("/tmp/dmtcp-test-tmpmap-{tag}-{}", std::process::id());
    let (bare_dir, dir) = (tmp("bare"), tmp("job"));
    let bare = run_bare(&[p, &bare_dir, "150"]);
    let _ = std::fs::remove_dir_all(&bare_dir);
    assert!(bare.contains("child exit 0\nseg 150 ro abcde\n"), "{bare}");
    let mut job = Job::new("tmpmap");
    job.launch(&[p, &dir, "150"], &[]);
    job.wait_for("step 50\n");
    job.checkpoint();
    job.wait_for("step 80\n");
    job.kill();
    std::fs::remove_dir_all(&dir).unwrap();
    job.restart();
    job.wait_success();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(job.output(), bare);
}
