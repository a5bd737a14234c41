//! A field that evolves each step (a smoothing sweep plus the Allreduce
//! of its sum) and is stored every 10 steps as a new dataset of the
//! rank's HDF5 file (`field_<rank>.h5` in the working directory, per-rank
//! files through the serial HDF5 library), which stays open the whole run.
use mpi::collective::SystemOperation;
use mpi::traits::*;

const N: usize = 4096;

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let rank = world.rank();
    let file = match hdf5_metno::File::create(format!("field_{rank}.h5")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot create field_{rank}.h5: {e}");
            std::process::exit(5);
        }
    };
    let mut u: Vec<f64> = (0..N)
        .map(|i| ((i * 37 + rank as usize * 101) % 97) as f64)
        .collect();
    let mut sums = Vec::new();
    for k in 0..a.steps {
        let prev = u.clone();
        for i in 1..N - 1 {
            u[i] = 0.5 * prev[i] + 0.25 * (prev[i - 1] + prev[i + 1]);
        }
        let local: f64 = u.iter().sum();
        let mut total = 0f64;
        world.all_reduce_into(&local, &mut total, SystemOperation::sum());
        u[0] = total % 1000.0;
        sums.push(total.to_bits());
        if k % 10 == 9 {
            let stored = file
                .new_dataset::<f64>()
                .shape(N)
                .create(format!("step_{k:04}").as_str())
                .and_then(|d| d.write_raw(&u))
                .and_then(|_| file.flush());
            if let Err(e) = stored {
                eprintln!("rank {rank}: storing step {k}: {e}");
                std::process::exit(6);
            }
        }
        mpi_apps::step_done(&world, k, &a);
    }
    drop(file);
    mpi_apps::finish(
        &world,
        mpi_apps::fnv(u.iter().map(|x| x.to_bits()).chain(sums)),
    );
}
