"""Asserts on the launchd plist the nix-darwin module renders (see darwin.nix).

Usage: check_plist.py PLIST FACTS_JSON
"""

import json
import plistlib
import sys

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


def main():
    raw = open(sys.argv[1], "rb").read()
    facts = json.load(open(sys.argv[2]))
    plist = plistlib.loads(raw)

    check(facts["failedAssertions"] == [], f"no failed assertions: {facts['failedAssertions']}")
    check(
        not any("nixfleet-agent" in w for w in facts["warnings"]),
        f"no warning about the agent: {facts['warnings']}",
    )

    check(plist.get("Label") == "org.nixos.nixfleet-agent", f"Label: {plist.get('Label')}")
    check(facts["label"] == plist.get("Label"), "the plist is the daemon's")

    args = plist.get("ProgramArguments", [])
    check(
        len(args) == 1 and args[0].startswith("/nix/store/") and args[0].endswith("/bin/nixfleet-agent"),
        f"ProgramArguments is the agent binary alone, no shell wrapper: {args}",
    )
    check("Program" not in plist, "no Program key")

    check(
        plist.get("KeepAlive") == {"PathState": {"/nix/store": True}},
        f"KeepAlive while /nix/store exists: {plist.get('KeepAlive')}",
    )
    check(plist.get("ThrottleInterval") == 10, f"ThrottleInterval: {plist.get('ThrottleInterval')}")
    check(
        plist.get("WatchPaths") == ["/run/agenix/nixfleet-token"],
        f"WatchPaths on the token file: {plist.get('WatchPaths')}",
    )
    check(plist.get("RunAtLoad") is True, f"RunAtLoad: {plist.get('RunAtLoad')}")
    check(plist.get("AbandonProcessGroup") is True, f"AbandonProcessGroup: {plist.get('AbandonProcessGroup')}")
    check(plist.get("StandardOutPath") == "/var/log/nixfleet-agent.log", "StandardOutPath")
    check(plist.get("StandardErrorPath") == "/var/log/nixfleet-agent.log", "StandardErrorPath")
    check("UserName" not in plist, "runs as root (darwin-rebuild switch needs it)")

    env = plist.get("EnvironmentVariables", {})
    expected = {
        "NIXFLEET_URL": "wss://fleet.example.com/ws",
        "NIXFLEET_TOKEN_FILE": "/run/agenix/nixfleet-token",
        "NIXFLEET_SSH_KEY": "/run/agenix/nixfleet-deploy-key",
        "NIXFLEET_REPO_URL": "git@github.com:example/nixcfg.git",
        "NIXFLEET_BRANCH": "main",
        "NIXFLEET_STATE_DIR": "/var/lib/nixfleet-agent",
        "NIXFLEET_LOG_DIR": "/var/log/nixfleet-agent",
        "NIXFLEET_HOSTNAME": "mac-1",
        "NIXFLEET_FLAKE": "/var/lib/nixfleet-agent/repo#mac-1",
        "NIXFLEET_DEVICE_TYPE": "laptop",
        "NIXFLEET_INTERVAL": "5",
        "NIXFLEET_LOG_FILE": "/var/log/nixfleet-agent.log",
        "NIXFLEET_PID_FILE": "/var/run/nixfleet-agent.pid",
        "NIXFLEET_NIXPKGS_VERSION": facts["nixpkgsVersion"],
        "HOME": "/var/root",
        # the system's bundle (security.pki), not pkgs.cacert's
        "NIX_SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        # builds go through nix-daemon, as darwin-rebuild's do
        "NIX_REMOTE": "daemon",
        "NIXFLEET_REQUIRE_SIGNED_COMMITS": "1",
        "NIXFLEET_ROLLBACK_DEADLINE": "300",
        "NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS": "1",
        # the guards' options reach the plist
        "NIXFLEET_MIN_FREE_SPACE": "8192",
        "NIXFLEET_BUILD_ON_HOST": "0",
        # launchd has no watchdog: the agent's own, at the default
        "NIXFLEET_WATCHDOG_SEC": "60",
    }
    for name, value in expected.items():
        check(env.get(name) == value, f"EnvironmentVariables {name}={value!r}, got {env.get(name)!r}")
    check("NIXFLEET_TOKEN" not in env, "no NIXFLEET_TOKEN: the plist holds only the token's path")
    check("NIXFLEET_REPO_DIR" not in env, "no NIXFLEET_REPO_DIR in isolated mode")

    signers = env.get("NIXFLEET_TRUSTED_SIGNERS", "")
    check(
        signers.startswith("/nix/store/") and signers.endswith("-nixfleet-allowed-signers"),
        f"the allowed-signers lines are one file in the store: {signers!r}",
    )
    check("NIXFLEET_ROLLBACK_ON_FAILURE" not in env, "the rollback watchdog stays on")
    path = env.get("PATH", "").split(":")
    for needle in ("-git-", "-nix-", "darwin-rebuild", "-gnupg-"):
        check(any(needle in p for p in path), f"PATH finds {needle.strip('-')}: {path}")
    for directory in ("/run/current-system/sw/bin", "/usr/bin", "/bin"):
        check(directory in path, f"PATH has {directory}: {path}")

    activation = facts["activation"]
    check(
        "chmod 0700 /var/lib/nixfleet-agent /var/log/nixfleet-agent" in activation,
        f"activation makes the state and log directories 0700:\n{activation}",
    )

    entries = [
        line.split()
        for line in facts["newsyslog"].splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    check(len(entries) == 1, f"one newsyslog entry: {entries}")
    if entries:
        fields = entries[0]
        check(fields[0] == "/var/log/nixfleet-agent.log", f"newsyslog rotates the log: {fields}")
        check(len(fields) == 9 and fields[2] == "640", f"newsyslog: mode 640, 9 fields: {fields}")
        # the agent reopens its log on SIGHUP (1), signalled through its pid file
        check("N" not in fields[6], f"newsyslog signals the agent: {fields}")
        check(fields[7:] == ["/var/run/nixfleet-agent.pid", "1"], f"newsyslog pid file and SIGHUP: {fields}")

    if failures:
        print("nix-darwin module check failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        print("\nrendered plist:\n" + raw.decode(), file=sys.stderr)
        sys.exit(1)
    print("nix-darwin module: all checks passed")


main()
