# The token reaches the agent only as a systemd credential. It is absent
# from the unit file, the unit's environment, the process environment
# (/proc/PID/environ), its argv (/proc/PID/cmdline), the environment of the
# commands it runs, its logs, its state and the Nix store.
{ mkTest, ... }:

mkTest {
  name = "token-secrecy";
  testScript = ''
    token = start()
    wait_frame("register")
    quoted = shlex.quote(token)


    def assert_no_token(text, where):
        assert token not in text, f"the token leaked into {where}"


    def assert_not_found(paths, where):
        """grep exits 1 when nothing matched: 0 (found) and 2 (error) both fail."""
        rc, _ = agent.execute(f"grep -rqF -- {quoted} {paths}")
        assert rc == 1, f"the token leaked into {where}, or grep failed (exit {rc})"


    with subtest("systemd holds the token as a credential"):
        agent.succeed(f"test -f /run/credentials/{UNIT}/token")
        unit = agent.succeed(f"systemctl cat {UNIT}")
        assert "LoadCredential=token:" + TOKEN_FILE in unit, unit
        assert "EnvironmentFile" not in unit, unit
        assert "NIXFLEET_TOKEN=" not in unit, unit

    with subtest("not in the unit file or the unit's environment"):
        assert_no_token(unit, "the unit file")
        assert_no_token(agent.succeed(f"systemctl show {UNIT}"), "the unit's properties")

    pid = unit_property("MainPID")

    with subtest("not in the process environment or argv"):
        environ = agent.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert_no_token(environ, "/proc/PID/environ")
        assert "NIXFLEET_TOKEN=" not in environ, environ
        assert_no_token(agent.succeed(f"tr '\\0' ' ' < /proc/{pid}/cmdline"), "/proc/PID/cmdline")

    with subtest("not in the environment of the commands it runs"):
        after = last_seq()
        send("test")
        wait_frame("test_progress", after, ".payload.running == false")
        child_env = agent.succeed(f"cat {FLAGS}/T01.env")
        assert_no_token(child_env, "a host test's environment")
        assert "NIXFLEET_TOKEN" not in child_env, child_env

    with subtest("not in the logs or the state"):
        assert_no_token(agent.succeed(f"journalctl --unit {UNIT} --output cat"), "the journal")
        assert_not_found("/var/log/nixfleet-agent /var/lib/nixfleet-agent", "logs and state")

    with subtest("not in the Nix store"):
        # The closure of the unit (the agent, its configuration, its PATH)
        # and whatever was added to the store at run time.
        unit_path = agent.succeed(f"readlink -f /etc/systemd/system/{UNIT}").strip()
        assert unit_path.startswith("/nix/store/"), unit_path
        # its own step: a failing nix-store fails the test here, instead of
        # leaving grep to search the working directory
        closure = agent.succeed(f"nix-store --query --requisites {unit_path}").split()
        assert closure, "an empty closure"
        assert_not_found(" ".join(closure), "the unit's closure")
        if agent.execute("test -d /nix/.rw-store")[0] == 0:
            assert_not_found("/nix/.rw-store", "store paths added at run time")

    no_violations()
  '';
}
