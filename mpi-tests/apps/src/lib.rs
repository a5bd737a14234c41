//! What the MPI programs share: their command line, progress lines and the
//! checksum of the final state that a bare run must reproduce exactly.
//!
//! Every program takes `STEPS SLEEP_MS EXPECTED_RANKS`: it runs STEPS
//! steps, sleeps SLEEP_MS after each (so a test can checkpoint it in the
//! middle), refuses to run with another world size (a program started by
//! the other MPI's launcher runs as N copies of rank 0), prints
//! `step <k>` on rank 0 every 10 steps and `CHECKSUM <hex>` at the end.

use mpi::collective::SystemOperation;
use mpi::traits::*;

#[cfg(feature = "mpio")]
pub mod h5mpio;
pub mod rma;

/// The command line of every program.
pub struct Args {
    pub steps: u32,
    pub sleep_ms: u64,
}

/// Parse the arguments and check the world size; exits with a message on
/// a bad command line or a wrong world size.
pub fn args(world: &mpi::topology::SimpleCommunicator) -> Args {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize| a.get(i).and_then(|s| s.parse::<u64>().ok());
    let (Some(steps), Some(sleep_ms), Some(ranks)) = (num(1), num(2), num(3)) else {
        eprintln!("usage: {} STEPS SLEEP_MS EXPECTED_RANKS", a[0]);
        std::process::exit(2);
    };
    if world.size() as u64 != ranks {
        eprintln!(
            "world size {} but {ranks} ranks expected (started by the other MPI's launcher?)",
            world.size()
        );
        std::process::exit(3);
    }
    Args {
        steps: steps as u32,
        sleep_ms,
    }
}

/// End of step `k`: progress on rank 0, then the pause.
pub fn step_done(world: &mpi::topology::SimpleCommunicator, k: u32, a: &Args) {
    if world.rank() == 0 && k.is_multiple_of(10) {
        println!("step {k}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    std::thread::sleep(std::time::Duration::from_millis(a.sleep_ms));
}

/// FNV-1a over the bytes of `words`.
pub fn fnv(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Gather every rank's checksum on rank 0 and print the checksum of them
/// all, in rank order.
pub fn finish(world: &mpi::topology::SimpleCommunicator, mine: u64) {
    let root = world.process_at_rank(0);
    if world.rank() == 0 {
        let mut all = vec![0u64; world.size() as usize];
        root.gather_into_root(&mine, &mut all[..]);
        println!("CHECKSUM {:016x}", fnv(all));
    } else {
        root.gather_into(&mine);
    }
}

/// The HDF5 writers' field: `FIELD_N` values per rank, each step a
/// smoothing sweep and the Allreduce of the sum over all ranks (kept, and
/// folded into the first value).
pub struct Field {
    pub u: Vec<f64>,
    sums: Vec<u64>,
}

/// Values of the field per rank.
pub const FIELD_N: usize = 4096;

impl Field {
    pub fn new(rank: i32) -> Self {
        Field {
            u: (0..FIELD_N)
                .map(|i| ((i * 37 + rank as usize * 101) % 97) as f64)
                .collect(),
            sums: Vec::new(),
        }
    }

    /// One step (collective: every rank calls it).
    pub fn step(&mut self, world: &mpi::topology::SimpleCommunicator) {
        let u = &mut self.u;
        let prev = u.clone();
        for i in 1..FIELD_N - 1 {
            u[i] = 0.5 * prev[i] + 0.25 * (prev[i - 1] + prev[i + 1]);
        }
        let local: f64 = u.iter().sum();
        let mut total = 0f64;
        world.all_reduce_into(&local, &mut total, SystemOperation::sum());
        u[0] = total % 1000.0;
        self.sums.push(total.to_bits());
    }

    /// Run `a.steps` steps, handing the field to `store` after every 10th
    /// (step numbers 9, 19, ...) as dataset `step_<k>`; a failed store
    /// ends the program (exit 6).
    pub fn run(
        &mut self,
        world: &mpi::topology::SimpleCommunicator,
        a: &Args,
        mut store: impl FnMut(&str, &Self) -> Result<(), String>,
    ) {
        for k in 0..a.steps {
            self.step(world);
            if k % 10 == 9 {
                if let Err(e) = store(&format!("step_{k:04}"), self) {
                    eprintln!("rank {}: storing step {k}: {e}", world.rank());
                    std::process::exit(6);
                }
            }
            step_done(world, k, a);
        }
    }

    /// This rank's checksum of the field and every step's sum.
    pub fn checksum(&self) -> u64 {
        fnv(self
            .u
            .iter()
            .map(|x| x.to_bits())
            .chain(self.sums.iter().copied()))
    }
}
