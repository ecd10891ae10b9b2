# `pull` after a new commit: the agent's clone is reset to the new
# origin/main (local changes and stray files discarded), the status names
# the new generation and heartbeats report it from then on.
{ mkTest, ... }:

mkTest {
  name = "pull";
  testScript = ''
    start()
    old = wait_frame("register")["payload"]["generation"]

    agent.succeed(
        "git clone -q /srv/fleet.git /tmp/work",
        "echo 'second commit' >> /tmp/work/README.md",
        "git -C /tmp/work -c user.name=test -c user.email=test@example.com commit -qam 'second commit'",
        "git -C /tmp/work push -q origin HEAD:main",
    )
    new = agent.succeed("git -C /srv/fleet.git rev-parse main").strip()
    assert not new.startswith(old), (old, new)

    # Isolated mode owns its clone: `pull` discards what was changed there.
    agent.succeed(
        "touch /var/lib/nixfleet-agent/repo/stray-file",
        "echo local-change >> /var/lib/nixfleet-agent/repo/README.md",
    )

    after = last_seq()
    send("pull")
    done = wait_frame("status", after, '.payload.command == "pull"')
    status = done["payload"]
    assert status["status"] == "ok" and status["exit_code"] == 0, status
    assert len(status["generation"]) >= 7 and new.startswith(status["generation"]), (status, new)
    assert new[:7] in status["message"], status

    agent.succeed(f"test $(git -C /var/lib/nixfleet-agent/repo rev-parse HEAD) = {new}")
    agent.fail("test -e /var/lib/nixfleet-agent/repo/stray-file")
    agent.fail("grep -q local-change /var/lib/nixfleet-agent/repo/README.md")

    wait_frame("heartbeat", done["seq"], f'.payload.generation as $g | "{new}" | startswith($g)')
    no_violations()
  '';
}
