"""Asserts on the Home Manager module's launchd agent (macOS) and user units
(Linux), as Home Manager's own modules render them (see home-manager.nix).

Usage: check_home_manager.py FACTS_JSON AGENT_SERVICE TOKEN_PATH TOKEN_CHANGED_SERVICE
"""

import json
import plistlib
import sys

from systemd_unit import check, environment, failures, parse_unit, values


def check_launchd(facts):
    agent = facts["launchd"]
    check(facts["launchdEnabled"], "launchd.agents.nixfleet-agent is enabled")
    check(agent.get("Label") == "org.nix-community.home.nixfleet-agent", f"Label: {agent.get('Label')}")
    args = agent.get("ProgramArguments", [])
    check(len(args) == 1 and args[0].endswith("/bin/nixfleet-agent"), f"the agent run directly: {args}")
    check(agent.get("RunAtLoad") is True, "RunAtLoad")
    check(agent.get("KeepAlive") is True, "KeepAlive")
    check(agent.get("AbandonProcessGroup") is True, "AbandonProcessGroup (the switch survives the reload)")
    token = "/Users/alice/.config/nixfleet/token"
    check(agent.get("WatchPaths") == [token], f"WatchPaths: {agent.get('WatchPaths')}")
    log = "/Users/alice/Library/Logs/nixfleet-agent.log"
    check(agent.get("StandardOutPath") == log and agent.get("StandardErrorPath") == log, "logs in ~/Library/Logs")
    env = agent.get("EnvironmentVariables", {})
    check(env.get("NIXFLEET_TOKEN_FILE") == token, "the token by path")
    check("NIXFLEET_TOKEN" not in env, "no token in the plist")
    check(env.get("NIXFLEET_SWITCH_TOOL") == "home-manager", "home-manager switches")
    check(env.get("NIXFLEET_HOME_MANAGER_USER") == "alice", "<user>@<host>")
    check(
        env.get("NIXFLEET_FLAKE") == "/Users/alice/.local/state/nixfleet-agent/repo#alice@mac-1",
        f"NIXFLEET_FLAKE: {env.get('NIXFLEET_FLAKE')}",
    )
    check(env.get("NIXFLEET_STATE_DIR") == "/Users/alice/.local/state/nixfleet-agent", "state in the user's home")
    check(env.get("NIXFLEET_LOG_FILE") == log and env.get("NIXFLEET_LOG_MAX_SIZE") == "10", "the log is bounded")
    check(env.get("NIXFLEET_ROLLBACK_DEADLINE") == "300", "safe-deploy options reach the plist")
    check("home-manager" in env.get("PATH", ""), "home-manager on PATH")
    plist = plistlib.loads(facts["plist"].encode())
    check(plist.get("ProgramArguments") == args, "the rendered plist carries the configuration")
    check(facts["tildeRefused"], "a token path starting with ~ is refused")
    check(facts["macAssertions"] == [], f"assertions: {facts['macAssertions']}")
    check(not facts["macHasUserUnit"], "no systemd user unit on macOS")


def check_units(service_path, path_path, changed_path):
    unit = parse_unit(open(service_path).read())
    u, s, install = unit.get("Unit", []), unit.get("Service", []), unit.get("Install", [])
    check(values(u, "X-SwitchMethod") == ["keep-old"], "X-SwitchMethod=keep-old (the switch keeps the agent)")
    check(len(values(s, "ExecStart")) == 1 and values(s, "ExecStart")[0].endswith("/bin/nixfleet-agent"), "ExecStart")
    for key, value in [
        ("Restart", "always"),
        ("RestartForceExitStatus", "101"),
        ("RestartPreventExitStatus", "78"),
        ("KillMode", "process"),
        ("Type", "notify"),
        ("WatchdogSec", "60s"),
    ]:
        check(values(s, key) == [value], f"{key}={value}")
    check(values(install, "WantedBy") == ["default.target"], "WantedBy=default.target")
    env = environment(s)
    check(env.get("NIXFLEET_TOKEN_FILE") == "/home/alice/.config/nixfleet/token", "the token by path")
    check("NIXFLEET_TOKEN" not in env, "no token in the unit")
    check(env.get("NIXFLEET_SWITCH_TOOL") == "home-manager", "home-manager switches")
    check("NIXFLEET_LOG_FILE" not in env, "the journal keeps the log on Linux")
    path = parse_unit(open(path_path).read()).get("Path", [])
    check(values(path, "PathChanged") == ["/home/alice/.config/nixfleet/token"], "the token file is watched")
    check(values(path, "Unit") == ["nixfleet-agent-token-changed.service"], "a rotation restarts the agent")
    changed = parse_unit(open(changed_path).read()).get("Service", [])
    check(
        any(v.endswith("systemctl --user try-restart nixfleet-agent.service") for v in values(changed, "ExecStart")),
        "try-restart of the user's agent",
    )


def main():
    facts = json.load(open(sys.argv[1]))
    check_launchd(facts)
    check(facts["linuxAssertions"] == [], f"assertions: {facts['linuxAssertions']}")
    check(not facts["linuxHasLaunchd"], "no launchd agent on Linux")
    check_units(*sys.argv[2:5])
    for failure in failures:
        print("FAIL:", failure)
    if failures:
        sys.exit(1)
    print("home-manager module: all checks passed")


if __name__ == "__main__":
    main()
