# The dashboard goes away and comes back: the agent keeps running (no
# service restart), reconnects with backoff, registers again and resumes
# its heartbeats.
{ mkTest, ... }:

mkTest {
  name = "dashboard-restart";
  testScript = ''
    start()
    wait_frame("register")
    restarts_before = unit_property("NRestarts")
    pid_before = unit_property("MainPID")

    dashboard.systemctl("stop mock-dashboard.service")
    # Several heartbeat intervals without a dashboard.
    dashboard.sleep(8)
    agent.succeed(f"systemctl is-active {UNIT}")

    # A fresh dashboard process: its record of frames starts empty.
    dashboard.systemctl("start mock-dashboard.service")
    dashboard.wait_for_open_port(8000)
    wait_connected(timeout=60)
    reg = wait_frame("register")
    assert reg["payload"]["hostname"] == "agent", reg
    wait_frame("heartbeat", reg["seq"])

    assert unit_property("NRestarts") == restarts_before
    assert unit_property("MainPID") == pid_before
    no_violations()
  '';
}
