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
    let bare = cycles_match_bare("shmring", &[p, "40000"], &[], &[("got 5000\n", "got 10000\n"), ("got 15000\n", "got 20000\n"), ("got 25000\n", "got 30000\n")]);
    assert!(bare.contains("child exit 0"), "{bare}");
}
