# `stop` while a command runs: a second command is rejected without
# disturbing the first; `stop` terminates the running test and all its
# children, reports `stopped`, and the agent goes back to idle.
#
# The long-running command is `test` with the fixture's T00-slow.sh, which
# sleeps (`sleep 867`) only while the flag file FLAGS/slow exists.
{ mkTest, ... }:

mkTest {
  name = "stop";
  testScript = ''
    start()
    wait_frame("register")

    agent.succeed(f"touch {FLAGS}/slow")
    after = last_seq()
    send("test")

    # `sleep 86[7]` matches the sleep but not the pgrep command line itself.
    agent.wait_until_succeeds("pgrep -f 'sleep 86[7]'", timeout=60)
    hb = wait_frame("heartbeat", after, '.payload.pending_command == "test" and .payload.command_pid != null')
    pid = hb["payload"]["command_pid"]
    agent.succeed(f"kill -0 {pid}")

    with subtest("a command sent while busy is rejected; the running one goes on"):
        send("pull")
        rejected = wait_frame("command_rejected", after)["payload"]
        assert rejected["reason"] == "command already running", rejected
        assert rejected["current_command"] == "test", rejected
        assert rejected["current_pid"] == pid, (rejected, pid)
        agent.succeed("pgrep -f 'sleep 86[7]'")

    with subtest("stop terminates the command and its children"):
        send("stop")
        done = wait_frame("status", after, '.payload.command == "test"')
        assert done["payload"]["status"] == "stopped", done
        agent.wait_until_fails("pgrep -f 'sleep 86[7]'", timeout=30)
        agent.fail(f"kill -0 {pid}")

    with subtest("the agent is idle again and still the same process"):
        wait_frame("heartbeat", done["seq"], ".payload.pending_command == null and .payload.command_pid == null")
        assert unit_property("NRestarts") == "0"
        agent.succeed(f"systemctl is-active {UNIT}")

    agent.succeed(f"rm {FLAGS}/slow")
    no_violations()
  '';
}
