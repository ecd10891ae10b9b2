"""Asserts on the systemd unit the NixOS module renders (see nixos.nix).

Usage: check_unit.py UNIT_FILE FACTS_JSON
"""

import json
import sys

from systemd_unit import check, environment, failures, parse_unit, values


def main():
    text = open(sys.argv[1]).read()
    facts = json.load(open(sys.argv[2]))
    unit = parse_unit(text)
    u = unit.get("Unit", [])
    s = unit.get("Service", [])
    install = unit.get("Install", [])

    check("network-online.target" in " ".join(values(u, "After")), "After=network-online.target")
    check("network-online.target" in " ".join(values(u, "Wants")), "Wants=network-online.target")
    check(values(u, "X-StopOnRemoval") == ["false"], "X-StopOnRemoval=false")
    check("multi-user.target" in facts["wantedBy"], "wantedBy multi-user.target")
    check(
        facts["tokenPath"] == {"PathChanged": "/run/agenix/nixfleet-token", "Unit": "nixfleet-agent-token-changed.service"},
        f"a path unit watches the token file: {facts['tokenPath']}",
    )
    check(
        facts["tokenChanged"].endswith("/bin/systemctl try-restart nixfleet-agent.service"),
        f"a changed token restarts the agent: {facts['tokenChanged']}",
    )
    check("multi-user.target" in " ".join(values(install, "WantedBy")), "WantedBy=multi-user.target")

    check(facts["restartIfChanged"] is False, "restartIfChanged = false")
    check(facts["stopIfChanged"] is False, "stopIfChanged = false")
    check(values(s, "X-RestartIfChanged") == ["false"], "X-RestartIfChanged=false")
    check(values(s, "X-StopIfChanged") == ["false"], "X-StopIfChanged=false")

    exec_start = values(s, "ExecStart")
    check(
        len(exec_start) == 1 and exec_start[0].endswith("/bin/nixfleet-agent"),
        f"ExecStart runs the agent binary directly: {exec_start}",
    )
    check(values(s, "Restart") == ["always"], "Restart=always")
    check(len(values(s, "RestartSec")) == 1, "RestartSec set")
    check(values(s, "RestartForceExitStatus") == ["101"], "RestartForceExitStatus=101")
    check(values(s, "RestartPreventExitStatus") == ["78"], "RestartPreventExitStatus=78")
    check(values(s, "KillMode") == ["process"], "KillMode=process")
    check(values(s, "Type") == ["notify"], "Type=notify (readiness, watchdog, status line)")
    check(values(s, "WatchdogSec") == ["60s"], "WatchdogSec=60s by default")

    credentials = values(s, "LoadCredential")
    check(
        sorted(credentials)
        == sorted(
            [
                "token:/run/agenix/nixfleet-token",
                "ssh-key:/run/agenix/nixfleet-deploy-key",
            ]
        ),
        f"LoadCredential for token and ssh-key: {credentials}",
    )
    check(values(s, "StateDirectory") == ["nixfleet-agent"], "StateDirectory=nixfleet-agent")
    check(values(s, "StateDirectoryMode") == ["0700"], "StateDirectoryMode=0700")
    check(values(s, "LogsDirectory") == ["nixfleet-agent"], "LogsDirectory=nixfleet-agent")
    check(values(s, "LogsDirectoryMode") == ["0700"], "LogsDirectoryMode=0700")
    check(values(s, "NoNewPrivileges") == ["true"], "NoNewPrivileges=true")
    check(
        not values(s, "ExecStartPre"),
        "no ExecStartPre (it would defeat RestartPreventExitStatus=78)",
    )
    check(values(s, "ProtectSystem") == ["full"], "ProtectSystem=full")
    for absent in ("PrivateTmp", "ProtectHome", "ProtectKernelTunables", "SystemCallFilter", "User"):
        check(not values(s, absent), f"{absent} is not set (it would break a switch)")

    # Nothing secret in the unit: no EnvironmentFile, no token variable.
    check(not values(s, "EnvironmentFile"), "no EnvironmentFile=")
    env = environment(s)
    check("NIXFLEET_TOKEN" not in env, "no NIXFLEET_TOKEN in Environment=")
    check("NIXFLEET_TOKEN_FILE" not in env, "no NIXFLEET_TOKEN_FILE (LoadCredential instead)")
    check("NIXFLEET_SSH_KEY" not in env, "no NIXFLEET_SSH_KEY (LoadCredential instead)")

    expected = {
        "NIXFLEET_URL": "wss://fleet.example.com/ws",
        "NIXFLEET_REPO_URL": "git@github.com:example/nixcfg.git",
        "NIXFLEET_BRANCH": "main",
        "NIXFLEET_INTERVAL": "5",
        "NIXFLEET_HOSTNAME": "web-1",
        "NIXFLEET_LOCATION": "home",
        "NIXFLEET_DEVICE_TYPE": "server",
        "NIXFLEET_THEME_COLOR": "#3366cc",
        "NIXFLEET_LOG_LEVEL": "info",
        "NIXFLEET_FLAKE": "/var/lib/nixfleet-agent/repo#web-1",
        "NIXFLEET_NIXPKGS_VERSION": facts["nixpkgsVersion"],
        "NIXFLEET_CA_FILE": "/etc/ssl/certs/fleet-ca.pem",
        "HOME": "/root",
        "NIX_REMOTE": "daemon",
        # the rollback watchdog is on by default, with its 120 s window
        "NIXFLEET_ROLLBACK_DEADLINE": "120",
        # a hung activation is stopped after 15 minutes by default
        "NIXFLEET_ACTIVATION_TIMEOUT": "900",
        # the space guard keeps 2 GiB free by default
        "NIXFLEET_MIN_FREE_SPACE": "2048",
    }
    for name, value in expected.items():
        check(env.get(name) == value, f"Environment {name}={value!r}, got {env.get(name)!r}")
    check("NIXFLEET_REPO_DIR" not in env, "no NIXFLEET_REPO_DIR in isolated mode")
    for off in (
        "NIXFLEET_ROLLBACK_ON_FAILURE",
        "NIXFLEET_PASS_ENV",
        "NIXFLEET_REQUIRE_SIGNED_COMMITS",
        "NIXFLEET_TRUSTED_SIGNERS",
        "NIXFLEET_ALLOW_FORCE_PUSH",
        "NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS",
        "NIXFLEET_BUILD_ON_HOST",
    ):
        check(off not in env, f"{off} left to the agent's default: {env.get(off)!r}")
    path = env.get("PATH", "").split(":")
    for tool in ("git", "openssh", "nix", "nixos-rebuild"):
        check(
            any(f"-{tool}-" in p or p.endswith(f"-{tool}/bin") for p in path),
            f"PATH has {tool}: {path}",
        )

    legacy = facts["legacyEnvironment"]
    check(legacy.get("NIXFLEET_REPO_DIR") == "/home/alice/nixcfg", "legacy: NIXFLEET_REPO_DIR")
    check(legacy.get("NIXFLEET_FLAKE") == "/home/alice/nixcfg#web-1", "legacy: NIXFLEET_FLAKE")
    check("NIXFLEET_REPO_URL" not in legacy, "legacy: no NIXFLEET_REPO_URL")
    gitconfig = facts["legacyGitconfig"]
    check(
        "[safe]" in gitconfig and "directory = /home/alice/nixcfg" in gitconfig,
        f"legacy: /etc/gitconfig marks the checkout safe for Nix's libgit2:\n{gitconfig}",
    )

    check(facts["valid"]["failedAssertions"] == [], f"valid settings pass: {facts['valid']}")
    check(facts["valid"]["warnings"] == [], f"wss:// gives no warning: {facts['valid']}")
    failed = "\n".join(facts["invalid"]["failedAssertions"])
    for fragment in (
        "url must be a WebSocket URL",
        "both are set",
        "themeColor must be a colour",
        "hostname must be a short host name",
        "requireSignedCommits needs at least one key",
        "rollbackDeadline must be at least 100",
    ):
        check(fragment in failed, f"invalid settings report {fragment!r}:\n{failed}")
    check(
        len(facts["invalid"]["failedAssertions"]) == 6,
        f"exactly six failed assertions: {facts['invalid']['failedAssertions']}",
    )
    check(
        facts["secretPathsRefused"] == [True] * 5,
        f"tokenFile/sshKeyFile in the store, relative or a path literal are type errors: {facts['secretPathsRefused']}",
    )
    check(
        any("neither is set" in m for m in facts["neitherRepo"]),
        f"no repository reported: {facts['neitherRepo']}",
    )
    check(
        len(facts["plainWsRemote"]) == 1 and "dashboard.lan" in facts["plainWsRemote"][0],
        f"ws:// to another host warns: {facts['plainWsRemote']}",
    )
    check(facts["plainWsLoopback"] == [], f"ws:// to loopback does not warn: {facts['plainWsLoopback']}")
    check(facts["disabledHasService"] is False, "no service when disabled")

    if failures:
        print("NixOS module check failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        print("\nrendered unit:\n" + text, file=sys.stderr)
        sys.exit(1)
    print("NixOS module: all checks passed")


main()
