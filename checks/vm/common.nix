# The two machines every VM scenario starts from, and the Python helpers
# the scenarios share.
#
# - `dashboard` runs the mock dashboard (checks/mock-dashboard) as a service
#   on port 8000. The test script drives it through its HTTP control API
#   with curl and jq (docs/mock-dashboard.md).
# - `agent` runs the NixOS module under test in isolated mode: `repoUrl` is a
#   bare git repository on the same machine, created at boot, and the token
#   is written by a oneshot before the agent starts, the way agenix or
#   sops-nix would. The token is random and made at boot, so it is in no
#   Nix expression and in no store path; the test script reads it from the
#   agent and gives it to the dashboard before starting it ("enrolling").
#
# Timing knobs (docs/configuration.md) keep the scenarios short: a 2 s
# heartbeat, a 200 ms reconnect backoff base and a 2 s stop grace.
{
  pkgs,
  nixosModule,
  mockDashboard,
  version,
}:

{
  name,
  testScript,
  agentConfig ? { },
}:

let
  inherit (pkgs) lib;

  tokenDir = "/run/nixfleet-agent-token";
  # Written by the host test scripts; read by the scenarios.
  flagDir = "/run/nixfleet-vm-test";

  hostTest = name: text: pkgs.writeText name text;

  # hosts/agent/tests of the fixture repository. `test` must run exactly
  # the executable *.sh files, in name order: T00, T01, T02, helper.
  hostTests = {
    # `stop` needs a long-running command. This test sleeps only while the
    # flag file exists, so the `stop` scenario creates the flag, sends
    # `test` and stops it, and every other scenario gets a quick pass.
    "T00-slow.sh" = hostTest "T00-slow.sh" ''
      #!/bin/sh
      if [ -e ${flagDir}/slow ]; then
        echo "T00: sleeping until stopped"
        sleep 867
      fi
      echo "T00 ok"
    '';
    # Records the environment a test script gets from the agent.
    "T01-env.sh" = hostTest "T01-env.sh" ''
      #!/bin/sh
      env > ${flagDir}/T01.env
      echo "T01 ok"
    '';
    "T02-fail.sh" = hostTest "T02-fail.sh" ''
      #!/bin/sh
      echo "T02: failing on purpose" >&2
      exit 1
    '';
    # Not executable: must not run.
    "T03-disabled.sh" = hostTest "T03-disabled.sh" ''
      #!/bin/sh
      touch ${flagDir}/T03.ran
    '';
    # Executable and not T*.sh: runs too, as upstream runs every *.sh.
    "helper.sh" = hostTest "helper.sh" ''
      #!/bin/sh
      touch ${flagDir}/helper.ran
      echo "helper ok"
    '';
  };

  installHostTests = lib.concatStringsSep "\n" (
    lib.mapAttrsToList (
      file: source:
      let
        mode = if file == "T03-disabled.sh" then "0644" else "0755";
      in
      ''install -m ${mode} ${source} "$work/hosts/agent/tests/${file}"''
    ) hostTests
  );

  prelude = ''
    import json
    import shlex

    AGENT_VERSION = "${version}"
    TOKEN_FILE = "${tokenDir}/token"
    FLAGS = "${flagDir}"
    API = "http://127.0.0.1:8000"
    UNIT = "nixfleet-agent.service"


    def api(path, method="GET", body=None):
        """Calls the mock dashboard's control API (on the dashboard machine)."""
        # quoted: an unquoted `&` would put curl in the background (exit 0 always)
        cmd = f"curl --silent --show-error --fail -X {method} {shlex.quote(API + path)}"
        if body is not None:
            cmd += " -H 'Content-Type: application/json' --data " + shlex.quote(json.dumps(body))
        out = dashboard.succeed(cmd)
        return json.loads(out) if out.strip() else None


    def wait_api(path, jq_filter, timeout=60):
        """Waits until `jq -e FILTER` holds for GET path; returns jq's output."""
        return dashboard.wait_until_succeeds(
            f"curl --silent --fail {shlex.quote(API + path)} | jq -ec {shlex.quote(jq_filter)}",
            timeout=timeout,
        )


    def frames(kind, after=0):
        return api(f"/api/hosts/agent/frames?type={kind}&after={after}")


    def last_seq():
        """The newest seq the dashboard has recorded for the agent, 0 if none."""
        return max((f["seq"] for f in api("/api/hosts/agent/frames")), default=0)


    def wait_frame(kind, after=0, cond="true", timeout=60):
        """Waits for the first frame of a type with seq > after matching a jq condition."""
        out = wait_api(
            f"/api/hosts/agent/frames?type={kind}&after={after}",
            f"map(select({cond})) | first",
            timeout,
        )
        return json.loads(out)


    def send(command):
        assert api("/api/hosts/agent/command", "POST", {"command": command}) == {"sent": True}


    def wait_connected(timeout=120):
        wait_api("/api/hosts", 'any(.[]; .hostname == "agent" and .connected)', timeout)


    def unit_property(prop):
        return agent.succeed(f"systemctl show --property {prop} --value {UNIT}").strip()


    def no_violations():
        violations = api("/api/violations")
        assert violations == [], f"protocol violations: {violations}"


    def publish_system(target, message):
        """Commits a flake whose nixosConfigurations.agent is the system `target`.

        The flake has no inputs: its toplevel is a derivation that links to
        `target`, a system already in the VM's store. The builder and the
        target are written into flake.nix as plain strings, so the VM builds
        it without the sandbox (flakeSystemSettings).
        """
        sh = agent.succeed("readlink -f /run/current-system/sw/bin/sh").strip()
        ln = agent.succeed("readlink -f /run/current-system/sw/bin/ln").strip()
        system = agent.succeed("nix-instantiate --eval --expr builtins.currentSystem").strip()
        flake = f"""{{
          outputs = _: {{
            nixosConfigurations.agent.config.system.build.toplevel = derivation {{
              name = "nixfleet-vm-system";
              system = {system};
              builder = "{sh}";
              args = [ "-c" "{ln} -s {target} $out" ];
            }};
          }};
        }}
        """
        agent.succeed(
            "rm -rf /tmp/work",
            "git clone -q /srv/fleet.git /tmp/work",
            f"printf '%s' {shlex.quote(flake)} > /tmp/work/flake.nix",
            "git -C /tmp/work add flake.nix",
            f"git -C /tmp/work -c user.name=test -c user.email=test@example.com commit -qm {shlex.quote(message)}",
            "git -C /tmp/work push -q origin HEAD:main",
        )


    def start(allow_reboot=False):
        """Boots both machines, enrolls the agent's token and waits for it to connect."""
        dashboard.start()
        agent.start(allow_reboot=allow_reboot)
        agent.wait_for_unit(UNIT)
        token = agent.succeed(f"cat {TOKEN_FILE}").strip()
        assert len(token) >= 32, "the token oneshot wrote no token"
        dashboard.wait_for_unit("multi-user.target")
        dashboard.succeed(
            f"(umask 077; printf '%s' {shlex.quote(token)} > /run/mock-dashboard-token)",
            "systemctl start mock-dashboard.service",
        )
        dashboard.wait_for_open_port(8000)
        wait_connected()
        return token


  '';
in
pkgs.testers.runNixOSTest {
  name = "nixfleet-agent-${name}";

  nodes = {
    dashboard =
      { pkgs, ... }:
      {
        networking.firewall.allowedTCPPorts = [ 8000 ];
        environment.systemPackages = [
          pkgs.curl
          pkgs.jq
        ];
        # Not started at boot: the test script starts it once the agent's
        # token is in /run/mock-dashboard-token, and restarts it at will.
        systemd.services.mock-dashboard = {
          description = "NixFleet mock dashboard";
          serviceConfig.ExecStart = lib.concatStringsSep " " [
            (lib.getExe mockDashboard)
            "serve"
            "--listen 0.0.0.0:8000"
            "--token-file /run/mock-dashboard-token"
          ];
        };
      };

    agent =
      { pkgs, ... }:
      {
        imports = [
          nixosModule
          agentConfig
        ];

        environment.systemPackages = [
          pkgs.git
          pkgs.jq
        ];

        systemd.tmpfiles.rules = [ "d ${flagDir} 0755 root root -" ];

        services.nixfleet-agent = {
          enable = true;
          # Plain ws:// to another machine: the module warns, which is fine here.
          url = "ws://dashboard:8000/ws";
          tokenFile = "${tokenDir}/token";
          repoUrl = "file:///srv/fleet.git";
          interval = 2;
          location = "cloud";
          themeColor = "#3366cc";
          logLevel = "debug";
          environment = {
            NIXFLEET_BACKOFF_BASE_MS = "200";
            NIXFLEET_STOP_GRACE_MS = "2000";
          };
        };

        # Stands in for agenix/sops-nix: a secret file that exists before the
        # agent starts and is readable by root only.
        systemd.services.nixfleet-agent-token = {
          description = "Write the NixFleet agent token";
          wantedBy = [ "multi-user.target" ];
          requiredBy = [ "nixfleet-agent.service" ];
          before = [ "nixfleet-agent.service" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            UMask = "0077";
          };
          script = ''
            mkdir -p ${tokenDir}
            od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > ${tokenDir}/token
          '';
        };

        # The configuration repository the agent follows (`repoUrl`).
        systemd.services.fleet-repo = {
          description = "Create the fleet configuration repository";
          wantedBy = [ "multi-user.target" ];
          requiredBy = [ "nixfleet-agent.service" ];
          before = [ "nixfleet-agent.service" ];
          path = [ pkgs.git ];
          environment = {
            HOME = "/root";
            GIT_AUTHOR_NAME = "fleet";
            GIT_AUTHOR_EMAIL = "fleet@example.com";
            GIT_COMMITTER_NAME = "fleet";
            GIT_COMMITTER_EMAIL = "fleet@example.com";
          };
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
          };
          script = ''
            if [ -e /srv/fleet.git ]; then
              exit 0
            fi
            work=$(mktemp -d)
            git init -q -b main "$work"
            mkdir -p "$work/hosts/agent/tests"
            ${installHostTests}
            echo "# fleet configuration" > "$work/README.md"
            git -C "$work" add -A
            git -C "$work" commit -q -m "initial fleet configuration"
            mkdir -p /srv
            git clone -q --bare "$work" /srv/fleet.git
            rm -rf "$work"
          '';
        };
      };
  };

  testScript = prelude + testScript;
}
