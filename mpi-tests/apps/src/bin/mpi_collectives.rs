//! All-to-all, broadcast and gather each step: every rank sends a block to
//! every other, rank 0 broadcasts a seed derived from what it gathered.
use mpi::traits::*;

const BLOCK: usize = 512;

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let (rank, size) = (world.rank(), world.size() as usize);
    let root = world.process_at_rank(0);
    let mut seed: u64 = 12345;
    let mut state: u64 = rank as u64 + 1;
    let mut acc = Vec::new();
    for k in 0..a.steps {
        let send: Vec<u64> = (0..size * BLOCK)
            .map(|i| state.wrapping_mul(i as u64 + 1) ^ seed ^ k as u64)
            .collect();
        let mut recv = vec![0u64; size * BLOCK];
        world.all_to_all_into(&send[..], &mut recv[..]);
        state = mpi_apps::fnv(recv.iter().copied());
        if rank == 0 {
            let mut all = vec![0u64; size];
            root.gather_into_root(&state, &mut all[..]);
            seed = mpi_apps::fnv(all);
        } else {
            root.gather_into(&state);
        }
        root.broadcast_into(&mut seed);
        acc.push(state ^ seed);
        mpi_apps::step_done(&world, k, &a);
    }
    mpi_apps::finish(&world, mpi_apps::fnv(acc));
}
