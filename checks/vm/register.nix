# Registration and heartbeats: the agent clones the repository, registers
# with everything the module configured, sends its first heartbeat at once
# and then one every `interval` seconds; the dashboard sees it online.
{ mkTest, ... }:

mkTest {
  name = "register";
  testScript = ''
    start()

    reg = wait_frame("register")
    p = reg["payload"]
    assert p["hostname"] == "agent", p
    assert p["host_type"] == "nixos", p
    assert p["agent_version"].startswith(AGENT_VERSION), p
    assert p["heartbeat_interval"] == 2, p
    assert p["location"] == "cloud", p
    assert p["device_type"] == "server", p
    assert p["theme_color"] == "#3366cc", p
    assert p["repo_url"] == "file:///srv/fleet.git", p
    assert p["repo_dir"] == "/var/lib/nixfleet-agent/repo", p
    assert p["nixpkgs_version"] != "", p
    head = agent.succeed("git -C /srv/fleet.git rev-parse main").strip()
    assert len(p["generation"]) >= 7 and head.startswith(p["generation"]), (p, head)

    with subtest("the first heartbeat follows at once, then one every 2 s"):
        hb = wait_frame("heartbeat", reg["seq"])["payload"]
        assert hb["pending_command"] is None and hb["command_pid"] is None, hb
        assert head.startswith(hb["generation"]), hb
        wait_api(f"/api/hosts/agent/frames?type=heartbeat&after={reg['seq']}", "length >= 4", timeout=30)
        wait_api("/api/hosts", 'any(.[]; .hostname == "agent" and .online and .heartbeat_interval == 2)')

    with subtest("isolated mode: the agent's own clone, state and logs private"):
        clone = agent.succeed("git -C /var/lib/nixfleet-agent/repo rev-parse HEAD").strip()
        assert clone == head, (clone, head)
        agent.succeed("test $(stat -c %a /var/lib/nixfleet-agent) = 700")
        agent.succeed("test $(stat -c %a /var/log/nixfleet-agent) = 700")

    no_violations()
  '';
}
