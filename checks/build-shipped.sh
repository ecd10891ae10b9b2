#!/usr/bin/env bash
# Builds the agent as the flake ships it and prints the binary's path: on
# Linux with glibc linked statically against glibc, with its relative
# relocations packed (flake.nix, `staticGlibc`), as `cargo build --release
# -p nixfleet-agent` builds it (no dev-dependency features, which `cargo
# bench` would unify into the binary); elsewhere the plain release build.
# Used by checks/budget.sh (what it measures) and .ci/run (the e2e tests'
# second pass). Cargo's output goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu)
    # as flake.nix links it: static glibc, relative relocations packed;
    # --target keeps build scripts and proc-macros dynamically linked; a
    # target dir of its own, so that it and the other builds never rebuild
    # each other
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
    target=(--target "$host")
    shipped="target/shipped/$host/release/nixfleet-agent"
    ;;
  *)
    target=()
    shipped="target/shipped/release/nixfleet-agent"
    ;;
esac
cargo build --release --locked "${target[@]}" --target-dir target/shipped -p nixfleet-agent >&2
echo "$PWD/$shipped"
