# `test` runs every executable hosts/agent/tests/*.sh of the repository in
# name order (as upstream does), streams their output, reports progress after
# each script and a final result; a non-executable *.sh does not run and is
# listed as skipped.
{ mkTest, ... }:

mkTest {
  name = "host-tests";
  testScript = ''
    start()
    wait_frame("register")

    after = last_seq()
    send("test")

    final = wait_frame("test_progress", after, ".payload.running == false")["payload"]
    assert final["total"] == 4 and final["passed"] == 3, final
    assert final["result"] == "3/4 passed", final

    progress = [f["payload"] for f in frames("test_progress", after)]
    assert [q["current"] for q in progress] == [1, 2, 3, 4], progress
    assert [q["running"] for q in progress] == [True, True, True, False], progress

    done = wait_frame("status", after, '.payload.command == "test"')
    status = done["payload"]
    assert status["status"] == "error", status

    with subtest("output is streamed line by line, stderr marked as error"):
        out = wait_frame("output", after, '.payload.line == "T01 ok"')["payload"]
        assert out["stream"] == "stdout" and out["is_error"] is False and out["command"] == "test", out
        err = wait_frame("output", after, '.payload.line == "T02: failing on purpose"')["payload"]
        assert err["stream"] == "stderr" and err["is_error"] is True, err

    with subtest("every executable *.sh ran; the other is listed as skipped"):
        agent.succeed(f"test -e {FLAGS}/T01.env")
        agent.succeed(f"test -e {FLAGS}/helper.ran")
        agent.fail(f"test -e {FLAGS}/T03.ran")
        wait_frame("output", after, '.payload.line == "[nixfleet-agent] skipped (not executable): T03-disabled.sh"')

    with subtest("back to idle"):
        wait_frame("heartbeat", done["seq"], ".payload.pending_command == null and .payload.command_pid == null")

    no_violations()
  '';
}
