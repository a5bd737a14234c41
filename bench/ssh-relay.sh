#!/usr/bin/env bash
# Throughput of the ssh plugin's relay next to plain ssh, on a testrig rig
# (root): BYTES (default 1 GB) of zeros from node0 through `ssh node1 cat
# >/dev/null`, best of RUNS (default 3) wall times, each including the ssh
# login. Usage: bench/ssh-relay.sh [BYTES] [RUNS]  (after cargo build --release --workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
bytes=${1:-1000000000}
runs=${2:-3}
bin=$PWD/target/release
info=$(mktemp)
"$bin/testrig" up 2 --sshd >"$info" &
rig=$!
trap 'kill $rig 2>/dev/null; wait $rig 2>/dev/null; rm -f "$info"' EXIT
until grep -q '^# ready' "$info"; do kill -0 $rig || exit 1; sleep 0.1; done
pid=$(sed -n 's/^TESTRIG_NODE0_PID=//p' "$info")
cfg=$(sed -n 's/^TESTRIG_SSH_CONFIG=//p' "$info")
shared=$(sed -n 's/^TESTRIG_SHARED_DIR=//p' "$info")
node0() { nsenter -t "$pid" -n -u -m -i --wd="$shared" "$@"; }
best() {
  local b=
  for _ in $(seq "$runs"); do
    local s=$(date +%s.%N)
    node0 "$@" >/dev/null
    local t=$(echo "$(date +%s.%N) - $s" | bc)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}
pipe="head -c $bytes /dev/zero | ssh -F $cfg node1 'cat >/dev/null'"
plain=$(best bash -c "$pipe")
relay=$(best "$bin/dmtcp_launch" --new-coordinator -p 0 -c "$shared" bash -c "$pipe")
mbs() { echo "scale=0; $bytes / $1 / 1000000" | bc; }
echo "plain ssh:   $plain s  ($(mbs "$plain") MB/s)"
echo "relay:       $relay s  ($(mbs "$relay") MB/s)"
echo "relay/plain: $(echo "scale=2; $plain / $relay" | bc)"
