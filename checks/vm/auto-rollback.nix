# The rollback watchdog: `switch` to a generation whose agent cannot reach
# the dashboard (the specialisation `cut-off` points the agent at a port
# nobody listens on). The switch itself succeeds, the agent that ran it
# checks the new generation (no health check fails), reports the `switch`
# once (`ok`, before it leaves) and restarts on the new generation, which
# never registers; after the deadline the switch supervisor switches back
# to the recorded store path of the booted system (its
# switch-to-configuration, and the system profile set back to it). The
# booted generation's agent registers again and says so in System (`error`
# "rolled back to <generation>: …"), with no second status. The deadline
# is the smallest the module allows (100 s: the dashboard's 90 s reconnect
# window, in which a rolled-back agent would turn the switch into SUCCESS).
# The VM boots through systemd-boot, so the rollback's activation must also
# install the boot loader: its default entry is the booted system again
# (an activation inside the agent's read-only sandbox could do neither; the
# host twin, agent/tests/host_twin.rs, asserts the same under the real unit).
{
  mkTest,
  flakeSystemSettings,
  systemdBoot,
}:

mkTest {
  name = "auto-rollback";
  agentConfig =
    { lib, ... }:
    {
      environment.etc."nixfleet-generation".text = lib.mkDefault "booted";
      imports = [ systemdBoot ];
      services.nixfleet-agent.rollbackDeadline = 100;
      specialisation.cut-off.configuration = {
        environment.etc."nixfleet-generation".text = "cut-off";
        services.nixfleet-agent.url = lib.mkForce "ws://dashboard:9/ws";
      };
      nix.settings = flakeSystemSettings;
    };
  testScript = ''
    start()
    wait_frame("register")
    profile = "/nix/var/nix/profiles/system"
    agent.succeed(f"nix-env -p {profile} --set $(readlink -f /run/current-system)")
    booted = agent.succeed("readlink -f /run/current-system").strip()
    cut_off = agent.succeed("readlink -f /run/current-system/specialisation/cut-off").strip()
    publish_system(cut_off, "a generation that cannot reach the dashboard")
    send("pull")
    wait_frame("status", 0, '.payload.command == "pull" and .payload.status == "ok"')

    after = last_seq()
    send("switch")

    with subtest("the new generation runs but never reaches the dashboard"):
        agent.wait_until_succeeds("grep -qx cut-off /etc/nixfleet-generation", timeout=600)

    with subtest("the supervisor switches back to the recorded system"):
        agent.wait_until_succeeds("grep -qx booted /etc/nixfleet-generation", timeout=240)
        assert agent.succeed("readlink -f /run/current-system").strip() == booted
        assert agent.succeed(f"readlink -f {profile}").strip() == booted

    with subtest("the boot loader's default entry is the booted system again"):
        default = agent.succeed("sed -n 's/^default //p' /boot/loader/loader.conf").strip()
        entry = agent.succeed(f"cat /boot/loader/entries/{default}")
        assert f"init={booted}/init" in entry, entry

    with subtest("the switch was reported once, before the agent left; System says it was rolled back"):
        done = wait_frame("status", after, '.payload.command == "switch"', timeout=120)
        status = done["payload"]
        assert status["status"] == "ok", status
        generation = booted.split("/")[-1]
        hb = wait_frame("heartbeat", done["seq"], '.payload.update_status.system.status == "error"', timeout=240)
        message = hb["payload"]["update_status"]["system"]["message"]
        assert message.startswith(f"rolled back to {generation}: "), hb
        reports = frames("status", after)
        assert len([f for f in reports if f["payload"]["command"] == "switch"]) == 1, reports

    no_violations()
  '';
}
