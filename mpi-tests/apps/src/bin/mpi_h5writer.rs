//! A field that evolves each step (a smoothing sweep plus the Allreduce
//! of its sum) and is stored every 10 steps as a new dataset of the
//! rank's HDF5 file (`field_<rank>.h5` in the working directory, per-rank
//! files through the serial HDF5 library), which stays open the whole run.
use mpi::traits::*;
use mpi_apps::{Field, FIELD_N};

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
    let mut field = Field::new(rank);
    field.run(&world, &a, |name, f| {
        file.new_dataset::<f64>()
            .shape(FIELD_N)
            .create(name)
            .and_then(|d| d.write_raw(&f.u))
            .and_then(|_| file.flush())
            .map_err(|e| e.to_string())
    });
    drop(file);
    mpi_apps::finish(&world, field.checksum());
}
