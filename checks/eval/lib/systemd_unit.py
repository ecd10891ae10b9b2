"""Reading systemd unit files and collecting failed assertions, for the
evaluation checks (check_unit.py, check_home_manager.py) and the golden-unit
comparison (checks/twin/compare_units.py). The checks run them with
PYTHONPATH pointing here (nixos.nix, home-manager.nix)."""

import json

failures = []


def check(condition, what):
    """Remembers `what` as a failure unless `condition` holds."""
    if not condition:
        failures.append(what)


def parse_unit(text):
    """Returns {section: [(key, value), ...]} of a systemd unit file."""
    sections = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        if current is None:
            raise SystemExit(f"a directive before any section: {line}")
        current.append((key, value))
    return sections


def values(section, key):
    """Every value of `key` in a section, in order."""
    return [v for k, v in section if k == key]


def environment(service):
    """The Environment= variables of a [Service] section (NixOS and Home
    Manager write Environment="NAME=value", JSON-quoted)."""
    env = {}
    for value in values(service, "Environment"):
        name, _, val = json.loads(value).partition("=")
        env[name] = val
    return env
