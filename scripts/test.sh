#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
cargo test --release --workspace "$@"
