#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit and integration),
# then prints one summary line: "<n> passed, <m> failed".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
# The rsmpi programs once more, built against MPICH (mpi-tests' MPICH tests).
MPICC=mpicc.mpich cargo build --release -p mpi-apps --bins --target-dir target/mpich
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1)} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1)} END {print s + 0}' "$log")
echo
echo "$passed passed, $failed failed"
exit "$status"
