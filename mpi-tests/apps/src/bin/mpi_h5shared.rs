//! The HDF5 writer's field (a smoothing sweep plus the Allreduce of its
//! sum each step) stored every 10 steps in ONE file shared by all ranks
//! (`field.h5` in the working directory), opened through the MPI-IO
//! driver of parallel HDF5 for the whole run: each stored step is a new
//! dataset of `ranks * N` values, created by all ranks together, each
//! rank writing its `N` with one collective write. Built only with the
//! `mpio` feature, against an HDF5 built for the same MPI (docs/mpi.md).
use mpi::traits::*;
use mpi_apps::{Field, FIELD_N};

fn main() {
    let universe = mpi::initialize().expect("MPI init");
    let world = universe.world();
    let a = mpi_apps::args(&world);
    let rank = world.rank();
    let size = world.size() as usize;
    let fail = |what: &str, e: &dyn std::fmt::Display, code: i32| -> ! {
        eprintln!("rank {rank}: {what}: {e}");
        std::process::exit(code);
    };
    let file = mpi_apps::h5mpio::create("field.h5", &world)
        .unwrap_or_else(|e| fail("cannot create field.h5", &e, 5));
    let coll = mpi_apps::h5mpio::Collective::new().unwrap_or_else(|e| fail("transfer list", &e, 5));
    let mut field = Field::new(rank);
    field.run(&world, &a, |name, f| {
        file.new_dataset::<f64>()
            .shape(size * FIELD_N)
            .create(name)
            .and_then(|d| coll.write(&d, rank as usize * FIELD_N, &f.u))
            .and_then(|_| file.flush())
            .map_err(|e| e.to_string())
    });
    drop(coll);
    drop(file);
    mpi_apps::finish(&world, field.checksum());
}
