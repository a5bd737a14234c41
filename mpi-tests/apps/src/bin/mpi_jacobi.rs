//! A 2-D Jacobi (heat) solver, rows split across ranks: each step the halo
//! rows go to the neighbours with non-blocking sends and receives (waited
//! for all at once), then a sweep and an Allreduce of the residual.
use mpi::collective::SystemOperation;
use mpi::traits::*;

const NX: usize = 256;
const ROWS: usize = 64;

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let (rank, size) = (world.rank(), world.size());
    // Rows 1..=ROWS are ours; rows 0 and ROWS+1 are halos.
    let mut u = vec![0f64; (ROWS + 2) * NX];
    let mut next = u.clone();
    for r in 1..=ROWS {
        for c in 0..NX {
            u[r * NX + c] = ((rank as usize * ROWS + r) * 31 + c * 17) as f64 % 101.0;
        }
    }
    let mut residuals = Vec::new();
    for k in 0..a.steps {
        let (top, bottom) = u.split_at_mut((ROWS + 1) * NX);
        let (halo_top, body) = top.split_at_mut(NX);
        let first = &body[..NX];
        let last = &body[(ROWS - 1) * NX..ROWS * NX];
        let halo_bottom = &mut bottom[..NX];
        mpi::request::multiple_scope(4, |scope, coll| {
            if rank > 0 {
                let up = world.process_at_rank(rank - 1);
                coll.add(up.immediate_send(scope, first));
                coll.add(up.immediate_receive_into(scope, &mut halo_top[..]));
            }
            if rank + 1 < size {
                let down = world.process_at_rank(rank + 1);
                coll.add(down.immediate_send(scope, last));
                coll.add(down.immediate_receive_into(scope, &mut halo_bottom[..]));
            }
            let mut done = Vec::new();
            coll.wait_all(&mut done);
        });
        let mut local = 0f64;
        for r in 1..=ROWS {
            let boundary = (rank == 0 && r == 1) || (rank + 1 == size && r == ROWS);
            for c in 0..NX {
                let i = r * NX + c;
                next[i] = if boundary || c == 0 || c == NX - 1 {
                    u[i]
                } else {
                    0.25 * (u[i - NX] + u[i + NX] + u[i - 1] + u[i + 1])
                };
                local += (next[i] - u[i]).abs();
            }
        }
        std::mem::swap(&mut u, &mut next);
        let mut total = 0f64;
        world.all_reduce_into(&local, &mut total, SystemOperation::sum());
        residuals.push(total.to_bits());
        mpi_apps::step_done(&world, k, &a);
    }
    let field = u[NX..(ROWS + 1) * NX].iter().map(|x| x.to_bits());
    mpi_apps::finish(&world, mpi_apps::fnv(field.chain(residuals)));
}
