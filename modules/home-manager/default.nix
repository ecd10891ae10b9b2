# Home Manager: `services.nixfleet-agent` for one user, for hosts whose
# configuration is a user's Home Manager generation (macOS without
# nix-darwin, or Linux): a launchd agent on macOS, a systemd user service on
# Linux. The agent runs as the user, switches with
# `home-manager switch --flake <repo>#<user>@<host>` (no root, no sudo) and
# reads the token from its file itself; the token is never in the plist, the
# unit, the environment or the store.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixfleet-agent;
  inherit (pkgs.stdenv.hostPlatform) isDarwin;

  home = config.home.homeDirectory;
  user = config.home.username;
  stateDir = "${home}/.local/state/nixfleet-agent";
  logFile = "${home}/Library/Logs/nixfleet-agent.log";

  # What the commands need (git, ssh, nix, home-manager), then the user's and
  # the system's profiles and the OS itself: launchd gives an agent no useful
  # PATH, and a systemd user manager only a minimal one.
  searchPath = lib.concatStringsSep ":" (
    map (p: "${p}/bin") (
      [
        pkgs.git
        pkgs.openssh
        pkgs.home-manager
      ]
      ++ lib.optional cfg.requireSignedCommits pkgs.gnupg
      ++ lib.optional (config.nix.package != null) config.nix.package
    )
    ++ [
      "${home}/.nix-profile/bin"
      "/etc/profiles/per-user/${user}/bin"
      "/run/current-system/sw/bin"
      "/nix/var/nix/profiles/default/bin"
      "/usr/local/bin"
      "/usr/bin"
      "/bin"
      "/usr/sbin"
      "/sbin"
    ]
  );

  # Only paths and settings: the agent reads the token from its file.
  environment = lib.mergeAttrsList [
    (lib.filterAttrs (_: value: value != null) {
      HOME = home;
      PATH = searchPath;
      NIXFLEET_TOKEN_FILE = cfg.tokenFile;
      NIXFLEET_SSH_KEY = cfg.sshKeyFile;
      NIXFLEET_STATE_DIR = stateDir;
      NIXFLEET_SWITCH_TOOL = "home-manager";
      # `home-manager switch --flake <repo>#<user>@<host>`
      NIXFLEET_HOME_MANAGER_USER = user;
    })
    (lib.optionalAttrs isDarwin {
      # launchd opens the log once; the agent keeps it below 10 MiB itself
      # (no newsyslog rotates a user's log), keeping one older file beside it.
      NIXFLEET_LOG_FILE = logFile;
      NIXFLEET_LOG_MAX_SIZE = "10";
      # launchd has no watchdog: the agent watches its own runtime
      NIXFLEET_WATCHDOG_SEC = toString cfg.watchdogSec;
    })
    cfg.agentEnvironment
    cfg.environment
  ];
in
{
  # Importing it into a NixOS or nix-darwin configuration fails clearly.
  _class = "homeManager";

  imports = [ ../common.nix ];

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        services.nixfleet-agent = {
          stateDirectory = stateDir;
          flakeAttribute = lib.mkDefault (if cfg.hostname == null then null else "${user}@${cfg.hostname}");
        };
      }

      (lib.mkIf isDarwin {
        launchd.agents.nixfleet-agent = {
          enable = true;
          config = {
            # Home Manager starts every agent through
            # `/bin/sh -c "/bin/wait4path /nix/store && exec …"`; the `exec`
            # leaves the agent itself as the job's process.
            ProgramArguments = [ (lib.getExe cfg.package) ];
            EnvironmentVariables = environment;
            RunAtLoad = true;
            # Restart whenever the agent exits: after exit 101 ("switched,
            # restart me", `restart`) and after failures. launchd has no
            # RestartPreventExitStatus: a configuration error (exit 78) is
            # retried every ThrottleInterval seconds, and the log says why.
            KeepAlive = true;
            ThrottleInterval = 10;
            # Start the agent the moment its secret appears or changes.
            WatchPaths = [ cfg.tokenFile ];
            # Home Manager's activation reloads a changed agent (bootout, then
            # bootstrap) in the middle of the very switch the agent runs
            # (upstream's P1920): the switch runs in a session of its own and
            # must survive it, so launchd leaves the process group alone; the
            # next agent reports the switch's one status.
            AbandonProcessGroup = true;
            ProcessType = "Interactive";
            StandardOutPath = logFile;
            StandardErrorPath = logFile;
          };
        };
      })

      (lib.mkIf (!isDarwin) {
        systemd.user.services.nixfleet-agent = {
          Unit = {
            Description = "NixFleet agent";
            Documentation = [ "https://github.com/nixfleet/nixfleet-agent/blob/main/docs/nix.md" ];
            # The agent must survive the very switch it runs: Home Manager's
            # activation keeps the running agent, which restarts itself on
            # the new generation (exit 101) once the switch succeeded.
            X-SwitchMethod = "keep-old";
          };
          Service = {
            # ready, alive and what it does, as in the NixOS unit
            Type = "notify";
            ExecStart = lib.getExe cfg.package;
            Environment = lib.mapAttrsToList (name: value: builtins.toJSON "${name}=${value}") environment;
            Restart = "always";
            RestartSec = "5s";
            # 101: "restart me"; 78: invalid configuration, restarting would
            # only loop.
            RestartForceExitStatus = "101";
            RestartPreventExitStatus = "78";
            # A running `home-manager switch` outlives an agent restart.
            KillMode = "process";
            TimeoutStopSec = "30s";
          }
          // lib.optionalAttrs (cfg.watchdogSec > 0) {
            WatchdogSec = "${toString cfg.watchdogSec}s";
          };
          Install.WantedBy = [ "default.target" ];
        };

        # A rotated token: restart the agent so that it reads the new one at
        # once (it also rereads the file when the dashboard refuses it).
        systemd.user.paths.nixfleet-agent-token = {
          Unit.Description = "Watch the NixFleet agent's token file";
          Path = {
            PathChanged = cfg.tokenFile;
            Unit = "nixfleet-agent-token-changed.service";
          };
          Install.WantedBy = [ "default.target" ];
        };
        systemd.user.services.nixfleet-agent-token-changed = {
          Unit.Description = "Restart the NixFleet agent for its new token";
          Service = {
            Type = "oneshot";
            ExecStart = "${pkgs.systemd}/bin/systemctl --user try-restart nixfleet-agent.service";
          };
        };
      })
    ]
  );
}
