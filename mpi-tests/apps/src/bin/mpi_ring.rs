//! A ring of point-to-point messages: each step every rank passes a value
//! to the next rank and folds in what the previous one sent.
use mpi::traits::*;

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let (rank, size) = (world.rank(), world.size());
    let next = world.process_at_rank((rank + 1) % size);
    let prev = world.process_at_rank((rank + size - 1) % size);
    let mut v: u64 = rank as u64 * 7919 + 1;
    let mut acc: Vec<u64> = Vec::new();
    for k in 0..a.steps {
        let out = v.wrapping_mul(6364136223846793005).wrapping_add(k as u64);
        let (got, _): (u64, _) = mpi::point_to_point::send_receive(&out, &next, &prev);
        v = got ^ (v >> 7);
        acc.push(v);
        mpi_apps::step_done(&world, k, &a);
    }
    mpi_apps::finish(&world, mpi_apps::fnv(acc));
}
