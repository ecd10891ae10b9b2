#!/usr/bin/env bash
# The resource budget (docs/benchmarks.md), measured on the build the flake
# ships: on Linux with glibc, the agent linked statically against glibc
# (flake.nix, `staticGlibc`), built as the flake builds it (`cargo build
# --release -p nixfleet-agent`: no dev-dependency features, which `cargo
# bench` would unify into the binary). Elsewhere the plain release build.
# Arguments and BUDGET_* variables pass through to the benchmark; a
# BUDGET_AGENT already set is measured instead.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu)
    # as flake.nix links it: static glibc, relative relocations packed
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
    # --target keeps build scripts and proc-macros dynamically linked; a
    # target dir of its own, so that it and the bench's build never
    # rebuild each other
    target=(--target "$host")
    shipped="target/shipped/$host/release/nixfleet-agent"
    ;;
  *)
    target=()
    shipped="target/shipped/release/nixfleet-agent"
    ;;
esac
if [ -z "${BUDGET_AGENT:-}" ]; then
  cargo build --release --locked "${target[@]}" --target-dir target/shipped -p nixfleet-agent
  export BUDGET_AGENT="$PWD/$shipped"
fi
exec cargo bench --locked "${target[@]}" -p nixfleet-agent --bench budget "$@"
