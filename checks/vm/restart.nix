# `restart`: the agent exits with status 101, systemd starts it again after
# RestartSec (RestartForceExitStatus=101) and the new process registers again.
{ mkTest, ... }:

mkTest {
  name = "restart";
  testScript = ''
    start()
    wait_frame("register")

    pid_before = unit_property("MainPID")
    restarts_before = int(unit_property("NRestarts"))

    after = last_seq()
    send("restart")

    agent.wait_until_succeeds(
        f"test $(systemctl show --property NRestarts --value {UNIT}) -gt {restarts_before}",
        timeout=60,
    )
    agent.wait_for_unit(UNIT)
    pid_after = unit_property("MainPID")
    assert pid_after not in ("0", pid_before), (pid_before, pid_after)
    agent.succeed(f"journalctl --unit {UNIT} --grep 'status=101'")

    reg = wait_frame("register", after)
    wait_frame("heartbeat", reg["seq"])
    wait_connected()
    no_violations()
  '';
}
