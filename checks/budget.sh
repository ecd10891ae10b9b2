#!/usr/bin/env bash
# The resource budget (docs/benchmarks.md), measured on the build the flake
# ships: on Linux with glibc, the agent linked statically against glibc
# (flake.nix, `staticGlibc`). Elsewhere the plain release build.
# Arguments and BUDGET_* variables pass through to the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu)
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
    # --target keeps build scripts and proc-macros dynamically linked
    exec cargo bench --target "$host" -p nixfleet-agent --bench budget "$@"
    ;;
  *)
    exec cargo bench -p nixfleet-agent --bench budget "$@"
    ;;
esac
