#!/bin/bash
# The application's pause during a checkpoint, with and without forked
# checkpointing: bench/c/pausegap.c fills MIB MiB with random data and
# measures the longest gap in its own loop (the pause, seen from inside);
# `dmtcp_command -bc` measures the time until the generation is committed.
# Images raw (--no-gzip: random data does not compress), O_DIRECT.
# Usage: bench/pause.sh [MIB...]   (default 1024)
# PAUSE_WRITE_PCT=P: the program writes P pages of every 100 in its loop
# (default 100: all its memory, the worst case for a forked write; 0: none).
# PAUSE_MODES: which launches, in order (default "normal forked"): normal
# (--no-forked-ckpt), forked (--forked-ckpt), default (neither option).
set -e
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/../target/release
export PATH=$bin:$PATH
work=$(mktemp -d /tmp/pausebench.XXXXXX)
cc -O2 -o "$work/pausegap" "$here/c/pausegap.c"
echo "| memory | mode | pause (largest gap in the program's loop) | -bc until committed | image |"
echo "| --- | --- | --- | --- | --- |"
for mib in ${@:-1024}; do
  for mode in ${PAUSE_MODES:-normal forked}; do
    opts=(--no-gzip)
    case "$mode" in
      forked) opts+=(--forked-ckpt) ;;
      normal) opts+=(--no-forked-ckpt) ;;
      default) ;;
      *) echo "unknown mode $mode (normal, forked, default)" >&2; exit 2 ;;
    esac
    rm -rf "$work/ck"; mkdir -p "$work/ck"
    dmtcp_coordinator -q -q -p 0 --port-file "$work/port" --exit-on-last > "$work/coord.log" 2>&1 &
    while [ ! -s "$work/port" ]; do sleep 0.05; done
    port=$(cat "$work/port"); rm -f "$work/port"
    dmtcp_launch -q -j -p "$port" --ckptdir "$work/ck" "${opts[@]}" "$work/pausegap" "$mib" 25 "${PAUSE_WRITE_PCT:-100}" > "$work/out" 2> "$work/err" &
    app=$!
    until grep -q ready "$work/out"; do sleep 0.1; done
    sleep 2
    t0=$(date +%s.%N)
    dmtcp_command -p "$port" -bc > /dev/null
    t1=$(date +%s.%N)
    wait $app
    gap=$(awk '/maxgap_ms/ {print $2}' "$work/out")
    size=$(du -m "$work"/ck/ckpt_*.dmtcp | awk '{print $1}')
    printf "| %d MiB | %s | %s ms | %s s | %s MiB |\n" "$mib" "$mode" "$gap" "$(awk -v a="$t0" -v b="$t1" "BEGIN {printf \"%.2f\", b - a}")" "$size"
    sleep 0.5
  done
done
rm -rf "$work"
