//! One-sided RMA with fences: each step every rank puts a block into the
//! next rank's window and gets one from the previous rank's, then mixes
//! what arrived into its state.
use mpi::traits::*;

const BLOCK: usize = 1024;

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let (rank, size) = (world.rank(), world.size());
    let mut exposed = vec![0u64; 2 * BLOCK];
    let mut state: Vec<u64> = (0..BLOCK as u64)
        .map(|i| i * 2654435761 + rank as u64)
        .collect();
    let mut got = vec![0u64; BLOCK];
    let mut acc = Vec::new();
    {
        let win = mpi_apps::rma::Window::new(&world, &mut exposed);
        win.fence();
        for k in 0..a.steps {
            let outgoing: Vec<u64> = state
                .iter()
                .map(|x| x.rotate_left(k % 64) ^ k as u64)
                .collect();
            win.put(&outgoing, (rank + 1) % size, 0);
            win.fence();
            win.get(&mut got, (rank + size - 1) % size, 0);
            win.fence();
            for (s, g) in state.iter_mut().zip(&got) {
                *s = s.wrapping_mul(31).wrapping_add(*g);
            }
            acc.push(mpi_apps::fnv(state.iter().copied()));
            mpi_apps::step_done(&world, k, &a);
        }
        win.fence();
    }
    mpi_apps::finish(&world, mpi_apps::fnv(acc));
}
