# The real switch path: `pull-switch` through the dashboard's lifecycle
# builds `<clone>#nixosConfigurations.agent.config.system.build.toplevel`
# and activates exactly the built path (the system profile, then
# `switch-to-configuration switch` through `systemd-run`); the
# status is `pull-switch` ok, the agent exits 101 and systemd starts it on
# the new generation, which registers again. Then `rollback` goes back.
#
# VM tests have no network and no binary cache, so the second system is
# already in the VM's store: the specialisation `next` of the booted system,
# published in the fixture repository by `publish_system` (./common.nix).
# `/etc/nixfleet-generation` tells the systems apart.
{ mkTest, flakeSystemSettings, ... }:

mkTest {
  name = "switch";
  agentConfig =
    { lib, ... }:
    {
      environment.etc."nixfleet-generation".text = lib.mkDefault "booted";
      specialisation.next.configuration = {
        environment.etc."nixfleet-generation".text = "next";
      };
      nix.settings = flakeSystemSettings;
    };
  testScript = ''
    start()
    wait_frame("register")
    profile = "/nix/var/nix/profiles/system"
    # the booted system is a generation of the profile, for the rollback
    agent.succeed(f"nix-env -p {profile} --set $(readlink -f /run/current-system)")
    booted = agent.succeed("readlink -f /run/current-system").strip()
    target = agent.succeed("readlink -f /run/current-system/specialisation/next").strip()
    publish_system(target, "the next system")
    assert agent.succeed("cat /etc/nixfleet-generation").strip() == "booted"

    def restarts():
        return int(unit_property("NRestarts"))

    with subtest("pull-switch activates the flake's system; exit 101 restarts the agent"):
        before = restarts()
        after = last_seq()
        result = api("/api/dispatch", "POST", {"op": "pull-switch", "hosts": ["agent"]})
        op = result["results"][0]
        assert op["status"] == "EXECUTING", result
        done = wait_frame("status", after, '.payload.command == "pull-switch"', timeout=600)
        assert done["payload"]["status"] == "ok", done
        # reported by the agent that ran it, once the new generation passed
        # its health checks, before it restarted
        assert done["payload"]["message"].endswith("the new generation passed its health checks"), done
        agent.wait_until_succeeds(f"test $(systemctl show --property NRestarts --value {UNIT}) -gt {before}", timeout=60)
        # the new generation's agent registers (the hub's op: SUCCESS), which
        # confirms the switch to the watchdog
        wait_frame("register", done["seq"])
        agent.wait_until_succeeds("grep -qx confirmed /var/lib/nixfleet-agent/switch/*/verdict", timeout=60)
        wait_api("/api/ops?host=agent", f'any(.[]; .id == "{op["command_id"]}" and .status == "SUCCESS")')
        wait_frame("heartbeat", done["seq"], '.payload.update_status.system.status == "ok"')
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == "next"
        assert agent.succeed("readlink -f /run/current-system").strip() == target

    with subtest("rollback returns to the booted system"):
        before = restarts()
        after = last_seq()
        result = api("/api/dispatch", "POST", {"op": "rollback", "hosts": ["agent"]})
        assert result["results"][0]["status"] == "EXECUTING", result
        done = wait_frame("status", after, '.payload.command == "rollback"', timeout=300)
        assert done["payload"]["status"] == "ok", done
        agent.wait_until_succeeds(f"test $(systemctl show --property NRestarts --value {UNIT}) -gt {before}", timeout=60)
        # the new generation registers first, then confirms and reports
        wait_frame("register", after)
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == "booted"
        assert agent.succeed("readlink -f /run/current-system").strip() == booted

    no_violations()
  '';
}
