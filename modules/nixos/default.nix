# NixOS: `services.nixfleet-agent` as a systemd service.
#
# The agent runs as root because the commands it runs for the dashboard
# (a switch's build and activation, `nix flake update`, the host's test
# scripts)
# need root. Secrets reach it only as systemd credentials.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixfleet-agent;

  sshKeyCredential = lib.optional (cfg.sshKeyFile != null) "ssh-key:${cfg.sshKeyFile}";
in
{
  # Importing it into a nix-darwin configuration fails with a clear error.
  _class = "nixos";

  imports = [
    ../common.nix
    ../system-gitconfig.nix
  ];

  config = lib.mkIf cfg.enable {
    systemd.services.nixfleet-agent = {
      description = "NixFleet agent";
      documentation = [ "https://github.com/nixfleet/nixfleet-agent/blob/main/docs/nix.md" ];

      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];

      # The agent must survive the very switch it runs: never stop or restart
      # it during activation, and keep it running when a switch removes the
      # unit. It restarts itself on the new generation (exit status 101)
      # after a successful switch, or when the dashboard sends `restart`.
      restartIfChanged = false;
      stopIfChanged = false;
      unitConfig.X-StopOnRemoval = false;

      # What the commands need: git for pull, ssh for ssh:// repositories
      # (and ssh-keygen for SSH commit signatures), nix for the switch's
      # build, preview and profile (systemd-run for its activation is on
      # every unit's path), nixos-rebuild for the host's scripts (the
      # agent's own switch and rollback do not call it), a shell and the
      # basic tools for the host's test scripts and for fetching tarballs;
      # gpg for GPG commit signatures.
      path = [
        pkgs.bash
        pkgs.coreutils
        pkgs.git
        pkgs.gnutar
        pkgs.gzip
        pkgs.xz
        config.programs.ssh.package
        config.nix.package
        config.system.build.nixos-rebuild
      ]
      ++ lib.optional cfg.requireSignedCommits pkgs.gnupg;

      # Nothing secret here: this ends up in the world-readable unit file.
      environment = lib.mergeAttrsList [
        {
          HOME = "/root";
          # Builds of a switch go through nix-daemon (its scheduling, limits
          # and cgroups), not this unit's, as nix-darwin's darwin-rebuild does.
          NIX_REMOTE = "daemon";
        }
        config.networking.proxy.envVars
        cfg.agentEnvironment
        cfg.environment
      ];

      serviceConfig = {
        # No ExecStartPre=--check: systemd compares RestartPreventExitStatus=
        # with the main process's status only, so a failing ExecStartPre would
        # turn a configuration error into a restart loop. The agent itself
        # exits 78 with one line naming the variable, which `systemctl status`
        # shows among its last log lines.
        ExecStart = lib.getExe cfg.package;

        # The token and the ssh key are copied by systemd into
        # $CREDENTIALS_DIRECTORY (a private, non-swappable directory readable
        # only by this service), where the agent finds them as `token` and
        # `ssh-key`. The unit file only names the source paths.
        LoadCredential = [ "token:${cfg.tokenFile}" ] ++ sshKeyCredential;

        # $STATE_DIRECTORY (/var/lib/nixfleet-agent): the agent's clone and
        # switch records; $LOGS_DIRECTORY (/var/log/nixfleet-agent): one log
        # per command run. Command output may be sensitive, so both are 0700.
        StateDirectory = "nixfleet-agent";
        StateDirectoryMode = "0700";
        LogsDirectory = "nixfleet-agent";
        LogsDirectoryMode = "0700";
        WorkingDirectory = "/var/lib/nixfleet-agent";

        # The agent says when it is ready (its state recovered, not when the
        # dashboard answers), that it is alive (every half WatchdogSec, from
        # its runtime's own timer) and what it does (`systemctl status`).
        Type = "notify";
        Restart = "always";
        RestartSec = "5s";
        # 101: "restart me" after a successful switch or the `restart`
        # command; 78: invalid configuration, restarting would only loop.
        RestartForceExitStatus = "101";
        RestartPreventExitStatus = "78";

        # A switch activates under a supervisor in its own session so that it
        # outlives an agent restart. The default KillMode=control-group would
        # still kill it (and any other running command) whenever the unit
        # stops or restarts, e.g. on exit 101 right after the switch. With
        # KillMode=process systemd signals only the agent; the agent itself
        # terminates the other children it started when it gets SIGTERM.
        KillMode = "process";
        # Long enough for the agent's clean shutdown (close frame, at most 5 s).
        TimeoutStopSec = "30s";
      }
      // lib.optionalAttrs (cfg.watchdogSec > 0) {
        # A hung agent (no sign of life for this long) is killed and, by
        # Restart=always, started again.
        WatchdogSec = "${toString cfg.watchdogSec}s";
      }
      // {

        # Hardening (each with mkDefault: a host can adjust it without
        # mkForce). Everything set here is inherited by the commands the
        # agent starts: a switch's `nix build` (which evaluates and builds the
        # system as root, with root's local Nix store and build sandbox) and
        # `nix-env --set` of /nix/var/nix/profiles/system (the activation
        # itself runs in a transient unit that the agent starts with
        # systemd-run as nixos-rebuild does, outside this service), `nix flake
        # update`, git and the host's test scripts.
        # Only what leaves all of them working is enabled:
        # - Everything runs as root already and never gains privileges by
        #   executing setuid or setcap programs:
        NoNewPrivileges = lib.mkDefault true;
        # - A switch writes /nix, /root and the repository; /etc and /boot are
        #   written only by its transient activation unit:
        ProtectSystem = lib.mkDefault "full";
        # - Neither builds (run as nixbld users) nor tests need realtime
        #   scheduling:
        RestrictRealtime = lib.mkDefault true;

        # Deliberately absent, each because it would break a switch, a build
        # or the host's test scripts:
        # - ProtectSystem=strict: a switch writes /nix/store, /nix/var and
        #   /root/.cache, `update` and legacy checkouts write the repository.
        # - ProtectHome: /root is HOME for git and Nix (caches, known_hosts),
        #   legacy checkouts usually live under /home.
        # - PrivateTmp: a switch outlives an agent restart (see KillMode), but
        #   systemd deletes the old instance's private /tmp on restart, and
        #   with it the running build's temporary directories.
        # - ProtectKernelTunables, ProtectKernelLogs, ProtectProc, ProcSubset:
        #   they mask parts of /proc, and a masked /proc forbids the fresh
        #   procfs mount of root's Nix build sandbox; ProcSubset=pid would
        #   also hide /proc/meminfo and /proc/loadavg from the heartbeat.
        # - ProtectControlGroups, ProtectKernelModules, PrivateDevices,
        #   ProtectClock, DevicePolicy: Nix's optional cgroup support writes
        #   /sys/fs/cgroup, and the host's tests must see the real devices,
        #   modules and clock of the machine they test.
        # - ProtectHostname: the host's tests must see the real host name.
        # - PrivateNetwork, RestrictAddressFamilies, IPAddressDeny: the agent,
        #   git, ssh and Nix need the network; host tests probe it with
        #   whatever protocol they need.
        # - PrivateUsers, RestrictNamespaces: root's Nix build sandbox creates
        #   user, mount, network, PID and IPC namespaces.
        # - SystemCallFilter, SystemCallArchitectures=native, LockPersonality,
        #   MemoryDenyWriteExecute, RestrictSUIDSGID: seccomp filters are
        #   inherited by root's local builds; they would break i686 builds
        #   (32-bit syscalls, personality(2)), packages whose test suites use
        #   ptrace, mount or a JIT, and setuid wrappers in packages' outputs.
        # - CapabilityBoundingSet, User, DynamicUser: a switch needs root with
        #   every capability.
        # - UMask=0077: the repository, profiles and result links a switch or
        #   `update` creates would become unreadable to other users.
      };
    };

    # LoadCredential copies the token only when the service starts. When
    # agenix or sops-nix rewrite the secret, restart the agent so that it
    # gets the new one (as nixpkgs' hercules-ci-agent module does for its
    # secrets). A running switch survives the restart (KillMode=process) and
    # is adopted by the new process.
    systemd.paths.nixfleet-agent-token = {
      description = "Watch the NixFleet agent's token file";
      wantedBy = [ "multi-user.target" ];
      pathConfig = {
        PathChanged = cfg.tokenFile;
        Unit = "nixfleet-agent-token-changed.service";
      };
    };
    systemd.services.nixfleet-agent-token-changed = {
      description = "Restart the NixFleet agent for its new token";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${config.systemd.package}/bin/systemctl try-restart nixfleet-agent.service";
      };
    };
  };
}
