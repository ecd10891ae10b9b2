#!/usr/bin/env bash
# Writes the golden units of the reference host (render.nix) into this
# directory, and the Home Manager module's user units of the reference user
# (render-home-manager.nix) into home-manager/. Needs nix-instantiate (Debian's nix-bin is enough) and a nixpkgs
# lib: a checkout of nixpkgs or of nix-community/nixpkgs.lib, given as its
# directory that holds lib/ (never commit it).
#
# Usage: checks/twin/render.sh NIXPKGS_LIB_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib_dir=${1:?usage: render.sh NIXPKGS_LIB_DIR (the directory that holds lib/)}
lib="import $(cd "$lib_dir" && pwd)/lib"
render() { # FILE DIR: the units FILE renders, written into DIR
  units=$(nix-instantiate --eval --strict --json --expr "import $here/$1 { lib = $lib; }")
  python3 - "$here/$2" "$units" <<'PY'
import json, pathlib, sys
here, units = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])
for name, text in sorted(units.items()):
    (here / name).write_text(text)
    print(f"wrote {here.name}/{name}")
PY
}
# the NixOS module's units, and the Home Manager module's user units
render render.nix .
render render-home-manager.nix home-manager
