#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit and integration),
# then prints one summary line: "<n> passed, <m> failed".
set -euo pipefail
cd "$(dirname "$0")/.."
# HDF5 (mpi-tests/apps): Debian installs a serial and an OpenMPI-parallel
# library side by side, and its hdf5.pc alternative picks the parallel
# one once that is installed. Each build names its own: the serial one
# for the workspace (and for the tests, which must not rebuild it)...
hdf5_root=/usr/lib/x86_64-linux-gnu/hdf5
export HDF5_DIR=$hdf5_root/serial
cargo build --release --workspace
# The rsmpi programs once more, built against MPICH (mpi-tests' MPICH tests).
MPICC=mpicc.mpich cargo build --release -p mpi-apps --bins --target-dir target/mpich
# ...and the parallel one for the collective HDF5 writer (MPI-IO, OpenMPI).
HDF5_DIR=$hdf5_root/openmpi cargo build --release -p mpi-apps --features mpio --bin mpi_h5shared \
  --target-dir target/h5mpi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1)} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1)} END {print s + 0}' "$log")
echo
echo "$passed passed, $failed failed"
exit "$status"
