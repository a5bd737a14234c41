#!/usr/bin/env bash
# The long runs of the fuzz tests of the image reader and the coordinator
# protocol's decoder (core/common/tests/fuzz_image.rs, fuzz_proto.rs) and
# of the restart script's arguments (core/tools/tests/fuzz_script.rs, which
# runs the script once a case: about 45 cases a second): the same
# properties as in CI, with many more cases each.
#
#   bench/fuzz.sh [cases] [script-cases]
#       (defaults: 100000 cases per property, 10000 script cases)
#
# Each property draws its cases from a new random seed every run; a
# failure prints the smallest input proptest shrank it to. Add such an
# input to core/common/tests/corpus/ (with its expected message) once the
# reader is fixed. Results go in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
script_cases=${2:-10000}
nice cargo build --release --workspace
nice cargo test --release -p dmtcp-common --test fuzz_image --test fuzz_proto --no-run
nice cargo test --release -p dmtcp --test fuzz_script --no-run
start=$(date +%s)
DMTCP_FUZZ_CASES=$cases nice cargo test --release -p dmtcp-common \
  --test fuzz_image --test fuzz_proto -- --test-threads 2
echo "fuzz: $cases cases per property in $(( $(date +%s) - start )) s"
start=$(date +%s)
DMTCP_FUZZ_CASES=$script_cases nice cargo test --release -p dmtcp --test fuzz_script
echo "fuzz: $script_cases restart script cases in $(( $(date +%s) - start )) s"
