//! Batch systems (SLURM): how `srun` is run for a computation.
//!
//! `dmtcp_launch srun [options] prog args` execs `dmtcp_srun --srun srun --
//! [options] prog args`, which execs the real srun outside the computation
//! with every task wrapped: `srun [options] dmtcp_launch --join-coordinator
//! --coord-host H --coord-port P --ckptdir D prog args`. srun and slurmstepd
//! are never in an image; the tasks are the computation.

pub mod srunargs;
