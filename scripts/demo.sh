#!/usr/bin/env bash
# Demo: launch a program under dmtcp_launch (which starts an embedded
# coordinator), checkpoint it, kill it, restart it from its image, and show
# that it continues exactly where it was and ends like an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The serial HDF5 for the MPI test programs, as scripts/test.sh builds them
# (Debian's hdf5.pc may name the parallel one).
[ -d /usr/lib/x86_64-linux-gnu/hdf5/serial ] && export HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/serial
cargo build --release --workspace --quiet
B=$PWD/target/release
work=$(mktemp -d /tmp/dmtcp-demo.XXXXXX)
cc -O1 -o "$work/counter" examples/counter.c
cd "$work"
export DMTCP_COORD_PORT=${DMTCP_COORD_PORT:-$(( 20000 + RANDOM % 20000 ))}

echo "== a bare run, for reference"
./counter 8 > bare.txt; tail -1 bare.txt

echo "== dmtcp_launch ./counter 8 (a coordinator starts in the background)"
"$B/dmtcp_launch" ./counter 8 > out.txt &
launched=$!
until grep -q "step  3" out.txt 2>/dev/null; do sleep 0.2; done
cat out.txt
echo "== dmtcp_command --bcheckpoint"
"$B/dmtcp_command" --bcheckpoint
ls -l ckpt_*.dmtcp dmtcp_restart_script.sh
until grep -q "step  5" out.txt; do sleep 0.2; done
echo "== kill -9 the program at: $(tail -1 out.txt)"
kill -9 "$launched"; wait "$launched" 2>/dev/null || true

echo "== dmtcp_restart ckpt_*.dmtcp  (it goes on from step 3, rewriting its output file from there)"
"$B/dmtcp_restart" ckpt_counter_*.dmtcp
cat out.txt
if cmp -s out.txt bare.txt; then
  echo "== OK: the restarted run's output is identical to the uninterrupted run's"
else
  echo "== MISMATCH between restarted and bare output"; diff bare.txt out.txt; exit 1
fi
rm -rf "$work"
