"""Compares units rendered by the real NixOS with the golden units the host
twin boots (this directory), directive by directive.

Usage: PYTHONPATH=checks/eval/lib compare_units.py GOLDEN_DIR NAME=REAL_UNIT_FILE...

Store paths are normalised first: /nix/store/<hash>-<name>-<version> becomes
/nix/store/<32 zeros>-<name> (the version is cut at the first dash-separated
part that starts with a digit), the form render.nix writes. Comments, blank
lines and the order of lines within a section are ignored; everything else
must be the same. Exits 1 and names each difference otherwise.
"""

import pathlib
import re
import sys

from systemd_unit import parse_unit

ZEROS = "0" * 32
STORE = re.compile(r"/nix/store/[0-9a-z]{32}-([^/\s\":]+)")


def package_name(name):
    parts = name.split("-")
    for i, part in enumerate(parts):
        if i > 0 and part[:1].isdigit():
            return "-".join(parts[:i])
    return name


def normalise(text):
    return STORE.sub(lambda m: f"/nix/store/{ZEROS}-{package_name(m.group(1))}", text)


def directives(text):
    """{section: sorted [(key, value)]} of a unit file, store paths normalised."""
    return {name: sorted(lines) for name, lines in parse_unit(normalise(text)).items()}


def differences(name, golden, real):
    found = []
    for section in sorted(set(golden) | set(real)):
        g, r = golden.get(section, []), real.get(section, [])
        for key, value in g:
            if (key, value) not in r:
                found.append(f"{name} [{section}]: the real unit lacks {key}={value}")
        for key, value in r:
            if (key, value) not in g:
                found.append(f"{name} [{section}]: the golden unit lacks {key}={value}")
    return found


def main():
    golden_dir = pathlib.Path(sys.argv[1])
    found = []
    for pair in sys.argv[2:]:
        name, _, path = pair.partition("=")
        golden = directives((golden_dir / name).read_text())
        real = directives(pathlib.Path(path).read_text())
        found += differences(name, golden, real)
    for line in found:
        print(line)
    if found:
        print("render them again: checks/twin/render.sh NIXPKGS_LIB_DIR (see checks/twin/README.md)")
        sys.exit(1)
    print(f"the {len(sys.argv) - 2} golden units match the module's rendering")


if __name__ == "__main__":
    main()
