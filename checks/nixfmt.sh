#!/usr/bin/env bash
# Checks every tracked *.nix file with nixfmt (RFC 166 style, what the flake's
# `checks.formatting` applies) and fails on any file that is not formatted.
# The formatter is `../shared/tools/nixfmt` beside the checkout (it exists on
# the project's machines and in CI) or NIXFMT=/path/to/nixfmt; without either,
# it skips with one line saying so.
#
# Usage: checks/nixfmt.sh           (from anywhere inside the repository)
# Format: ../shared/tools/nixfmt FILE...
set -euo pipefail

cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"

fmt="${NIXFMT:-../shared/tools/nixfmt}"
if [ ! -x "$fmt" ]; then
  echo "nixfmt: skipped: no formatter at $fmt (set NIXFMT to a nixfmt 1.x)"
  exit 0
fi

mapfile -d '' files < <(git ls-files -z -- '*.nix')
if [ "${#files[@]}" -eq 0 ]; then
  echo "nixfmt: no tracked .nix files found" >&2
  exit 1
fi
if ! "$fmt" --check "${files[@]}"; then
  echo "nixfmt: format the files named above with $fmt FILE..." >&2
  exit 1
fi
echo "nixfmt: all ${#files[@]} .nix files are formatted"
