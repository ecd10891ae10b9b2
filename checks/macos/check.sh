#!/usr/bin/env bash
# Type-checks the agent for both Apple targets (aarch64-apple-darwin,
# x86_64-apple-darwin) with clippy -D warnings, on Linux, without a Mac:
# cargo check and clippy link nothing. The one C compile on the way, ring's
# build script, runs on Debian's clang in freestanding mode with the three
# stub headers in include/ (they serve this check only; nothing compiled with
# them is ever linked or run).
#
# Needs: rustup targets aarch64-apple-darwin and x86_64-apple-darwin, clang.
# Usage: checks/macos/check.sh        (from anywhere inside the repository)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

targets=(aarch64-apple-darwin x86_64-apple-darwin)
installed=$(rustup target list --installed)
for target in "${targets[@]}"; do
  if ! grep -qx "$target" <<<"$installed"; then
    echo "macos check: the Rust target $target is missing (rustup target add $target)" >&2
    exit 1
  fi
done
if ! command -v clang >/dev/null 2>&1; then
  echo "macos check: clang is missing (apt-get install clang)" >&2
  exit 1
fi
resource=$(clang -print-resource-dir)
for target in "${targets[@]}"; do
  var=${target//-/_}
  export "CC_$var=clang"
  export "CFLAGS_$var=-ffreestanding -nostdinc -isystem $resource/include -isystem $here/include"
  echo "macos check: clippy -D warnings for $target"
  cargo clippy -p nixfleet-agent --all-targets --locked --target "$target" -- -D warnings
done
echo "macos check: both Apple targets type-check and pass clippy"
