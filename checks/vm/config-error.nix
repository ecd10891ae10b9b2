# A configuration error (here NIXFLEET_INTERVAL=0, set by a runtime drop-in)
# makes the agent exit with status 78, and systemd does not restart it
# (RestartPreventExitStatus=78): no restart loop. Fixed, it starts again.
{ mkTest, ... }:

mkTest {
  name = "config-error";
  testScript = ''
    start()
    wait_frame("register")
    restarts_before = unit_property("NRestarts")

    agent.succeed(
        "mkdir -p /run/systemd/system/nixfleet-agent.service.d",
        "printf '[Service]\\nEnvironment=NIXFLEET_INTERVAL=0\\n' > /run/systemd/system/nixfleet-agent.service.d/broken.conf",
        "systemctl daemon-reload",
        f"systemctl restart {UNIT}",
    )
    agent.wait_until_succeeds(f"systemctl is-failed {UNIT}", timeout=30)
    assert unit_property("ExecMainStatus") == "78"
    agent.succeed(f"journalctl --unit {UNIT} --grep NIXFLEET_INTERVAL")

    # Longer than RestartSec (5 s): still failed, never restarted.
    agent.sleep(8)
    agent.succeed(f"systemctl is-failed {UNIT}")
    assert unit_property("NRestarts") == restarts_before

    after = last_seq()
    agent.succeed(
        "rm -r /run/systemd/system/nixfleet-agent.service.d",
        "systemctl daemon-reload",
        f"systemctl reset-failed {UNIT}",
        f"systemctl start {UNIT}",
    )
    wait_frame("register", after)
    no_violations()
  '';
}
