# nix-darwin: `services.nixfleet-agent` as a launchd daemon.
#
# The agent runs as root because a system's activation must. launchd
# cannot hand secrets to a daemon the way systemd credentials do, so the
# plist holds only the *path* of the token file and the agent reads it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixfleet-agent;

  stateDir = "/var/lib/nixfleet-agent";
  commandLogDir = "/var/log/nixfleet-agent";
  logFile = "/var/log/nixfleet-agent.log";

  # launchd gives a daemon no useful PATH. Explicit packages first, then the
  # system profile (darwin-rebuild, and whatever the host's tests use), the
  # default profile (a Nix installed outside nix-darwin) and macOS itself.
  searchPath = lib.concatStringsSep ":" (
    map (p: "${p}/bin") (
      [ pkgs.git ]
      ++ lib.optional cfg.requireSignedCommits pkgs.gnupg
      ++ lib.optional config.nix.enable config.nix.package
      ++ [ config.system.build.darwin-rebuild ]
    )
    ++ [
      "/run/current-system/sw/bin"
      "/nix/var/nix/profiles/default/bin"
      "/usr/local/bin"
      "/usr/bin"
      "/bin"
      "/usr/sbin"
      "/sbin"
    ]
  );

  # Where the agent writes its PID for newsyslog's signal.
  pidFile = "/var/run/nixfleet-agent.pid";

  # Only paths and settings: the agent reads the token from its file.
  platformEnvironment = lib.filterAttrs (_: value: value != null) {
    HOME = "/var/root";
    PATH = searchPath;
    # Builds of a switch go through nix-daemon, as darwin-rebuild's do (and
    # the NixOS module's).
    NIX_REMOTE = "daemon";
    # The system's bundle, which holds the CAs added with `security.pki`
    # (nix-darwin sets the same variable for every shell).
    NIX_SSL_CERT_FILE =
      config.environment.variables.NIX_SSL_CERT_FILE or "/etc/ssl/certs/ca-certificates.crt";
    NIXFLEET_TOKEN_FILE = cfg.tokenFile;
    NIXFLEET_SSH_KEY = cfg.sshKeyFile;
    NIXFLEET_STATE_DIR = stateDir;
    # launchd has no watchdog: the agent watches its own runtime
    NIXFLEET_WATCHDOG_SEC = toString cfg.watchdogSec;
    NIXFLEET_LOG_DIR = commandLogDir;
    # Reopened on SIGHUP, which newsyslog sends after a rotation.
    NIXFLEET_LOG_FILE = logFile;
    NIXFLEET_PID_FILE = pidFile;
  };
in
{
  # Importing it into a NixOS configuration fails with a clear error.
  _class = "darwin";

  imports = [
    ../common.nix
    ../system-gitconfig.nix
  ];

  config = lib.mkIf cfg.enable {
    launchd.daemons.nixfleet-agent = {
      # Neither `script` nor `command`: nix-darwin wraps those in `/bin/sh -c`
      # (with `/bin/wait4path /nix/store`). The agent is started directly.
      serviceConfig = {
        ProgramArguments = [ (lib.getExe cfg.package) ];

        EnvironmentVariables = lib.mergeAttrsList [
          platformEnvironment
          cfg.agentEnvironment
          cfg.environment
        ];

        RunAtLoad = true;
        # Restart whenever the agent exits (after exit 101, "switched, restart
        # me" or the `restart` command, and after failures) as long as the Nix
        # store exists. At boot the store's volume may be mounted only after
        # launchd loads its jobs; the first spawn then fails, and launchd
        # starts the agent as soon as /nix/store appears, which is what
        # nix-darwin's wait4path wrapper would otherwise wait for.
        # launchd has no equivalent of systemd's RestartPreventExitStatus, so
        # a configuration error (exit 78) is retried every ThrottleInterval
        # seconds; the log says why.
        KeepAlive.PathState."/nix/store" = true;
        ThrottleInterval = 10;
        # Start the agent the moment its secret appears or changes (as
        # nix-darwin's cachix-agent does), instead of retrying exit 78 every
        # ThrottleInterval until agenix or sops-nix have written it. A
        # running agent reads a rotated token file by itself.
        WatchPaths = [ cfg.tokenFile ];
        # When the daemon stops or is reloaded (darwin-rebuild reloads it when
        # its plist changes), launchd would kill its whole process group. A
        # running switch must survive that, so leave the
        # group alone; the agent terminates its other children itself.
        AbandonProcessGroup = true;
        # Like nix-darwin's nix-daemon: builds started here must not be
        # throttled as background work.
        ProcessType = "Interactive";

        StandardOutPath = logFile;
        StandardErrorPath = logFile;
      };
    };

    # Created before launchd (re)loads the daemon: nix-darwin runs
    # `extraActivation` ahead of its `launchd` activation step.
    system.activationScripts.extraActivation.text = ''
      # nixfleet-agent: state and per-command logs, readable by root only.
      mkdir -p ${stateDir} ${commandLogDir}
      chown root:wheel ${stateDir} ${commandLogDir}
      chmod 0700 ${stateDir} ${commandLogDir}
      if [ ! -e ${logFile} ]; then
        touch ${logFile}
      fi
      chown root:wheel ${logFile}
      chmod 0640 ${logFile}
    '';

    # Rotate the daemon's log. launchd opened the file for the agent once;
    # newsyslog renames it, then signals the PID in the agent's pid file with
    # SIGHUP (1), on which the agent reopens NIXFLEET_LOG_FILE as its stdout
    # and stderr. Older copies are compressed (J); the agent has let go of
    # them by then.
    environment.etc."newsyslog.d/nixfleet-agent.conf".text = ''
      # logfilename                 [owner:group]  mode  count  size(KB)  when  flags  [pid_file]  [sig_num]
      ${logFile}   root:wheel     640   5      10240     *     J      ${pidFile}  1
    '';
  };
}
