# `rollback` as the UI sends it: the system profile goes back one generation
# (`nix-env --rollback`, as `nixos-rebuild switch --rollback` does) and that
# system is activated through `systemd-run`, detached; the status is
# `rollback` ok, the agent exits 101 and registers again, and the system is
# the previous generation.
#
# Two different systems are in the VM's store without a build: the booted
# one and its specialisation `previous`. The test makes them generations 1
# (`previous`) and 2 (booted) of the system profile, so that the rollback has
# somewhere to go; `/etc/nixfleet-generation` tells them apart.
{ mkTest, ... }:

mkTest {
  name = "rollback";
  agentConfig =
    { lib, ... }:
    {
      environment.etc."nixfleet-generation".text = lib.mkDefault "booted";
      specialisation.previous.configuration = {
        environment.etc."nixfleet-generation".text = "previous";
      };
    };
  testScript = ''
    start()
    wait_frame("register")
    profile = "/nix/var/nix/profiles/system"
    agent.succeed(
        f"nix-env -p {profile} --set $(readlink -f /run/current-system/specialisation/previous)",
        f"nix-env -p {profile} --set $(readlink -f /run/current-system)",
    )
    assert agent.succeed("cat /etc/nixfleet-generation").strip() == "booted"
    restarts_before = int(unit_property("NRestarts"))

    after = last_seq()
    result = api("/api/dispatch", "POST", {"op": "rollback", "hosts": ["agent"]})
    op = result["results"][0]
    assert op["status"] == "EXECUTING", result

    with subtest("the rollback reports ok and the agent restarts on exit 101"):
        done = wait_frame("status", after, '.payload.command == "rollback"', timeout=300)
        assert done["payload"]["status"] == "ok", done
        wait_frame("heartbeat", done["seq"], '.payload.update_status.system.status == "ok"')
        agent.wait_until_succeeds(
            f"test $(systemctl show --property NRestarts --value {UNIT}) -gt {restarts_before}",
            timeout=60,
        )
        # the new generation registers first, then confirms and reports
        wait_frame("register", after)
        wait_api("/api/ops?host=agent", f'any(.[]; .id == "{op["command_id"]}" and .status == "SUCCESS")')

    with subtest("the system is the previous generation"):
        assert agent.succeed("cat /etc/nixfleet-generation").strip() == "previous"
        agent.succeed(f"test $(readlink {profile}) = system-1-link")

    no_violations()
  '';
}
