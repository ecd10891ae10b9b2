# `reboot` as the UI sends it: the agent announces it, reboots the machine
# with `systemctl reboot`, and after the boot it registers again and reports
# the reboot's status (`ok` "Rebooted: …"), exactly once.
{ mkTest, ... }:

mkTest {
  name = "reboot";
  testScript = ''
    start(allow_reboot=True)
    wait_frame("register")
    boot_before = agent.succeed("cat /proc/sys/kernel/random/boot_id").strip()

    after = last_seq()
    result = api("/api/dispatch", "POST", {"op": "reboot", "hosts": ["agent"], "totp": "000000"})
    assert result["results"][0]["status"] == "EXECUTING", result
    wait_frame("output", after, '.payload.command == "reboot" and (.payload.line | contains("reboot requested"))')

    with subtest("the machine reboots"):
        agent.wait_for_console_text("reboot: Restarting system", timeout=120)
        # the driver's own reboot() does the same after it pressed the keys
        agent.connected = False
        agent.wait_for_unit(UNIT)
        assert agent.succeed("cat /proc/sys/kernel/random/boot_id").strip() != boot_before

    with subtest("the agent comes back and reports the reboot once"):
        # the token oneshot makes a new token at every boot: enroll it
        token = agent.succeed(f"cat {TOKEN_FILE}").strip()
        api("/api/tokens", "POST", {"token": token})
        done = wait_frame("status", after, '.payload.command == "reboot"', timeout=180)
        assert done["payload"]["status"] == "ok", done
        assert done["payload"]["message"].startswith("Rebooted"), done
        wait_frame("heartbeat", done["seq"])
        statuses = [f for f in frames("status", after) if f["payload"]["command"] == "reboot"]
        assert len(statuses) == 1, statuses

    no_violations()
  '';
}
