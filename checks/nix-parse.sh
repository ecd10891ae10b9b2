#!/usr/bin/env bash
# Parses every tracked *.nix file with `nix-instantiate --parse` and fails if
# any of them has a syntax error. Needs git and nix-instantiate (Debian's
# nix-bin is enough: parsing needs no store and no network).
#
# Usage: checks/nix-parse.sh        (from anywhere inside the repository)
set -euo pipefail

cd "$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "nix-parse: nix-instantiate not found (apt-get install nix-bin)" >&2
  exit 2
fi

checked=0
failed=0
while IFS= read -r -d '' file; do
  checked=$((checked + 1))
  if ! output=$(nix-instantiate --parse -- "$file" 2>&1 >/dev/null); then
    failed=$((failed + 1))
    echo "nix-parse: $file: syntax error" >&2
    printf '%s\n' "$output" >&2
  fi
done < <(git ls-files -z -- '*.nix')

if [ "$checked" -eq 0 ]; then
  echo "nix-parse: no tracked .nix files found" >&2
  exit 1
fi
if [ "$failed" -ne 0 ]; then
  echo "nix-parse: $failed of $checked .nix files do not parse" >&2
  exit 1
fi
echo "nix-parse: all $checked .nix files parse"
