# Options of `services.nixfleet-agent`, shared by the NixOS module
# (./nixos) and the nix-darwin module (./darwin), together with the
# assertions and warnings that hold on both platforms and the part of the
# agent's environment that does not depend on the platform.
#
# The agent is configured entirely through environment variables; the
# contract is docs/configuration.md. Nothing secret is ever put into the
# environment: the token and the ssh key are passed as files (systemd
# credentials on NixOS, file paths on nix-darwin).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;

  cfg = config.services.nixfleet-agent;

  # Where the agent keeps its own clone in isolated mode (`$STATE/repo`).
  # The NixOS module's StateDirectory and the nix-darwin module's
  # NIXFLEET_STATE_DIR both resolve to this directory.
  stateDir = cfg.stateDirectory;

  repoDirEffective = if cfg.repoDir != null then cfg.repoDir else "${stateDir}/repo";

  repoModeProblem = if cfg.repoUrl == null then "neither is set" else "both are set";

  systemHostName =
    let
      name = config.networking.hostName or null;
    in
    if name == null || name == "" then null else name;

  isAbsolute = path: lib.hasPrefix "/" path;

  isInStore = path: lib.hasPrefix "${builtins.storeDir}/" path;

  # nixpkgs' type for secrets (since late 2025); the same rule on an older lib
  # that a configuration's nixpkgs may bring.
  fallbackExternalPath = types.addCheck types.str (path: isAbsolute path && !isInStore path);
  externalPath = types.externalPath or fallbackExternalPath;

  # trustedSigners: key files (paths, copied to the store: they are public)
  # and allowed-signers lines, which go into one file of their own.
  isKeyFile = signer: builtins.isPath signer || isAbsolute signer;
  signerLines = lib.filter (signer: !isKeyFile signer) cfg.trustedSigners;
  signerFiles =
    map (signer: "${signer}") (lib.filter isKeyFile cfg.trustedSigners)
    ++ lib.optional (signerLines != [ ]) (
      pkgs.writeText "nixfleet-allowed-signers" (lib.concatLines signerLines)
    );

  isColour = colour: builtins.match "#[0-9a-fA-F]{6}" colour != null;

  isShortHostName = name: builtins.match "[A-Za-z0-9][A-Za-z0-9_-]*" name != null;

  # "ws://host:port/path" -> "host" (brackets kept for IPv6 literals; a
  # literal "]" is written unescaped, POSIX regular expressions have no "\]").
  wsHost =
    url:
    let
      m = builtins.match "ws://(\\[[0-9A-Fa-f:.]*]|[^/:?#]*).*" url;
    in
    if m == null then "" else builtins.head m;

  isLoopbackHost =
    host:
    builtins.elem host [
      "localhost"
      "[::1]"
    ]
    || builtins.match "127(\\.[0-9]+){3}" host != null
    || lib.hasSuffix ".localhost" host;
in
{
  options.services.nixfleet-agent = {
    enable = lib.mkEnableOption "the NixFleet agent, the host side of a NixFleet dashboard";

    package = mkOption {
      type = types.package;
      default =
        pkgs.nixfleet-agent or (throw ''
          services.nixfleet-agent.package is not set and pkgs has no nixfleet-agent.
          Import the module from the flake (nixosModules.default /
          darwinModules.default), apply its overlays.default, or set the option.
        '');
      defaultText = lib.literalMD ''
        `packages.''${system}.nixfleet-agent` of the NixFleet flake when the module is
        imported from the flake, else `pkgs.nixfleet-agent` (from `overlays.default`)
      '';
      example = lib.literalExpression "inputs.nixfleet.packages.\${system}.nixfleet-agent";
      description = "The `nixfleet-agent` package to run.";
    };

    url = mkOption {
      type = types.str;
      example = "wss://fleet.example.com/ws";
      description = ''
        WebSocket URL of the NixFleet dashboard (`NIXFLEET_URL`). Use `wss://`;
        plain `ws://` sends the token unencrypted and is meant for loopback and
        tests only.
      '';
    };

    tokenFile = mkOption {
      # A string, never a Nix path literal (which would copy the secret into
      # the world-readable store), absolute and outside the store.
      type = externalPath;
      example = lib.literalExpression "config.age.secrets.nixfleet-token.path";
      description = ''
        Absolute path (a string, not a Nix path literal) of a file outside the
        Nix store, e.g. `config.age.secrets.nixfleet-token.path` (agenix) or
        `config.sops.secrets."nixfleet/token".path` (sops-nix), that holds the
        agent token, either bare or as a line
        `NIXFLEET_TOKEN=<token>`. It is typically provided by agenix or sops-nix.
        On NixOS it is handed to the service as the systemd credential `token`
        (`LoadCredential`), on nix-darwin and with Home Manager the agent reads
        the file itself (`NIXFLEET_TOKEN_FILE`). The token never appears in the
        unit, the plist, the process environment, the command line or the Nix
        store. Write the whole path: `~` is not expanded (launchd does not
        expand it), so a path that starts with `~` is refused; in Home Manager
        use e.g. `"''${config.home.homeDirectory}/.config/nixfleet/token"`.
      '';
    };

    repoUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "git@github.com:example/nixcfg.git";
      description = ''
        Git URL of the configuration repository (`NIXFLEET_REPO_URL`): *isolated
        mode*. The agent keeps its own clone in
        {file}`/var/lib/nixfleet-agent/repo` and `pull` resets it to
        `origin/<branch>`. Exactly one of `repoUrl` and `repoDir` must be set.
      '';
    };

    repoDir = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/home/alice/nixcfg";
      description = ''
        Path of an existing checkout of the configuration repository
        (`NIXFLEET_REPO_DIR`): *legacy mode*, `pull` runs `git pull` in it.
        Exactly one of `repoUrl` and `repoDir` must be set. If the checkout is
        not owned by root, mark it safe for root's git and Nix, e.g.
        `programs.git.config.safe.directory = [ "/home/alice/nixcfg" ];` on NixOS.
      '';
    };

    branch = mkOption {
      type = types.str;
      default = "main";
      example = "production";
      description = "Branch followed in isolated mode (`NIXFLEET_BRANCH`).";
    };

    interval = mkOption {
      type = types.ints.positive;
      default = 5;
      example = 10;
      description = ''
        Heartbeat interval in seconds (`NIXFLEET_INTERVAL`). 5 s is upstream's
        default and the rhythm the dashboard's "last seen" colours assume
        (green up to 10 s, yellow up to 50 s); a longer interval shows a healthy
        host yellow.
      '';
    };

    reportedVersion = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "3.2.0";
      description = ''
        What the agent reports to the dashboard as `agent_version`
        (`NIXFLEET_REPORTED_VERSION`). The dashboard compares it for equality
        with its own release and shows the host's Agent compartment red
        "outdated" when they differ. `null` reports the NixFleet release whose
        protocol this agent implements (3.1.5); set it only for a fleet on
        another dashboard release. The agent's own version is in
        `nixfleet-agent --version` and its start-up log line.
      '';
    };

    sshKeyFile = mkOption {
      type = types.nullOr externalPath;
      default = null;
      example = lib.literalExpression "config.age.secrets.nixfleet-deploy-key.path";
      description = ''
        Absolute path (a string) of a private ssh key outside the Nix store,
        e.g. `config.age.secrets.nixfleet-deploy-key.path`, used for
        `ssh://` and scp-style `repoUrl`s. On NixOS it is handed to the service as
        the systemd credential `ssh-key`, on nix-darwin and with Home Manager
        as `NIXFLEET_SSH_KEY` (a whole path: `~` is not expanded).
        A server listed in the system's known hosts
        (`programs.ssh.knownHosts`) is checked strictly against it; any other
        server is trusted on first use, unless `requireKnownHosts` is set.
      '';
    };

    requireKnownHosts = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Refuse git servers whose host key is not listed in the system's known
        hosts ({file}`/etc/ssh/ssh_known_hosts`, written by
        `programs.ssh.knownHosts`) instead of trusting them on first use
        (`NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS`). Either way a listed server is
        checked strictly, and a changed key is always refused.
      '';
    };

    trustedSigners = mkOption {
      type = types.listOf (types.either types.path types.str);
      default = [ ];
      example = lib.literalExpression ''
        [
          "alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8L0m1y0cXH0yUZ1V0W3q8yW2QfQ1hWm3b4n0x9zq1a"
          ./keys/bob.asc
        ]
      '';
      description = ''
        Keys whose commit signatures the agent trusts when
        `requireSignedCommits` is set (`NIXFLEET_TRUSTED_SIGNERS`). Each entry
        is an SSH allowed-signers line (`<principal> <key type> <key>`), or a
        file: an allowed-signers file, or an ASCII-armoured GPG public key.
        These are public keys, so Nix paths (copied to the store) are fine.
      '';
    };

    requireSignedCommits = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Deploy only commits signed by one of `trustedSigners`
        (`NIXFLEET_REQUIRE_SIGNED_COMMITS`): a `pull` leaves the checkout
        where it is when the new commit's signature does not verify, `switch`
        refuses to build an unverified HEAD (or one with changed tracked
        files on top), and `update` is refused, as it would deploy a
        `flake.lock` that no signed commit holds.
      '';
    };

    allowForcePush = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Let a `pull` in isolated mode follow a branch whose new tip does not
        descend from the current commit: a force-push, or a branch reset to
        an older commit (`NIXFLEET_ALLOW_FORCE_PUSH`). Off, such a pull is
        refused with a status naming both commits.
      '';
    };

    rollbackOnFailure = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Switch back automatically when a switch cuts the host off
        (`NIXFLEET_ROLLBACK_ON_FAILURE`): after `switch`, `pull-switch`,
        `update` or `rollback`, the agent of the new generation must register
        with the dashboard and pass the host's health checks
        (`hosts/<host>/health/*.sh` in the repository and, on NixOS, no
        failed unit that was active before) within `rollbackDeadline`
        seconds; otherwise the detached switch supervisor activates the
        recorded previous system again and the switch is reported as
        `error` "rolled back to <generation>: <reason>". Never retried.
      '';
    };

    rollbackDeadline = mkOption {
      type = types.ints.between 1 86400;
      default = 120;
      example = 300;
      description = ''
        Seconds the new generation has to confirm a switch
        (`NIXFLEET_ROLLBACK_DEADLINE`), counted from the end of the switch.
        A reboot inside the window pauses it: the agent resumes the check
        after the boot for the rest of it. At least 100: the dashboard
        waits 90 s for a switched host's agent to come back and calls the
        switch a success when any agent registers in that time, so a
        rollback inside that window would show a rolled-back switch as
        SUCCESS.
      '';
    };

    metrics = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Serve Prometheus metrics at `http://<listenAddress>/metrics`
          (`NIXFLEET_METRICS_LISTEN`): connected, reconnects, the last
          heartbeat's age, operations by command and outcome, the last
          switch's time, duration and outcome, the generation, needs-reboot,
          automatic rollbacks, the watchdog, output lines and bytes streamed
          and dropped, the outbox. Off by default: nothing listens. See
          docs/monitoring.md for the metrics and alert rules.
        '';
      };
      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1:4244";
        example = "0.0.0.0:4244";
        description = ''
          Address and port the metrics endpoint listens on; loopback by
          default (the endpoint has no authentication: expose it on a
          network you trust, or put a proxy with TLS in front). The
          firewall is not opened.
        '';
      };
    };

    watchdogSec = mkOption {
      type = types.ints.between 0 86400;
      default = 60;
      example = 0;
      description = ''
        Seconds without a sign of life after which the agent counts as hung
        and is started again; 0 turns the watchdog off. On NixOS and with
        Home Manager on Linux the unit is `Type=notify` with this
        `WatchdogSec=`: the agent tells systemd it is alive from its
        runtime's own timer every half of it, and systemd restarts it when
        that stops. launchd has no watchdog: on macOS the agent watches its
        own runtime (`NIXFLEET_WATCHDOG_SEC`) and exits, for launchd's
        `KeepAlive` to start it again. A switch in flight survives the
        restart, as it survives any other. At least 5 when on.
      '';
    };

    activationTimeout = mkOption {
      type = types.ints.between 1 86400;
      default = 900;
      example = 1800;
      description = ''
        Seconds a switch's activation (`switch-to-configuration`, `activate`)
        may run before it is stopped (`NIXFLEET_ACTIVATION_TIMEOUT`): a hung
        activation (a unit whose start never ends) would otherwise hold the
        switch, and the agent, forever. On NixOS its transient unit is
        stopped with `systemctl stop`; what the host then runs decides the
        outcome (a switched host is watched and checked as always), and the
        status is an error with exit code 124.
      '';
    };

    minFreeSpace = mkOption {
      type = types.ints.unsigned;
      default = 2048;
      example = 8192;
      description = ''
        MiB the Nix store's filesystem must keep free on top of what a switch
        unpacks (`NIXFLEET_MIN_FREE_SPACE`): a switch that would leave less is
        refused before anything is fetched, with the figures and what to do.
        `0` turns the guard off. On NixOS a separate `/boot` is guarded too,
        always: a new kernel and initrd that do not fit refuse the switch
        before it activates.
      '';
    };

    buildOnHost = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether a switch may build derivations on this host
        (`NIXFLEET_BUILD_ON_HOST`). `false` makes the host substitute-only: a
        switch whose dry run shows derivations to build here (a binary cache
        that lacks them) is refused before building, naming how many and the
        first few.
      '';
    };

    hostname = mkOption {
      type = types.nullOr types.str;
      default = systemHostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      example = "web-1";
      description = ''
        Name reported to the dashboard (`NIXFLEET_HOSTNAME`) and, by default, the
        attribute of `nixosConfigurations`/`darwinConfigurations` that `switch`
        builds. `null` lets the agent detect it (the short host name; on macOS
        the LocalHostName).
      '';
    };

    location = mkOption {
      type = types.enum [
        "home"
        "work"
        "cloud"
      ];
      default = "home";
      example = "cloud";
      description = "Where the host lives, as shown by the dashboard (`NIXFLEET_LOCATION`).";
    };

    deviceType = mkOption {
      type = types.enum [
        "server"
        "desktop"
        "laptop"
        "gaming"
      ];
      default = "server";
      example = "laptop";
      description = "Kind of machine, as shown by the dashboard (`NIXFLEET_DEVICE_TYPE`).";
    };

    themeColor = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "#e5a50a";
      description = "Colour of the host in the dashboard, `#rrggbb` (`NIXFLEET_THEME_COLOR`).";
    };

    nixpkgsVersion = mkOption {
      type = types.nullOr types.str;
      default = lib.version;
      defaultText = lib.literalExpression "lib.version";
      example = "26.05.20260708.74cc63f";
      description = ''
        nixpkgs version reported to the dashboard when the agent cannot read it
        from {file}`/run/current-system` (`NIXFLEET_NIXPKGS_VERSION`). The
        default is the version of the nixpkgs the system is built from; `null`
        leaves the variable unset.
      '';
    };

    logLevel = mkOption {
      type = types.enum [
        "error"
        "warn"
        "info"
        "debug"
        "trace"
      ];
      default = "info";
      example = "debug";
      description = "Verbosity of the agent's own log (`NIXFLEET_LOG_LEVEL`).";
    };

    flake = mkOption {
      type = types.nullOr types.str;
      default = if cfg.flakeAttribute == null then null else "${repoDirEffective}#${cfg.flakeAttribute}";
      defaultText = lib.literalMD ''
        `"<repoDir>#<hostname>"` (Home Manager: `"<repoDir>#<user>@<hostname>"`),
        where `<repoDir>` is `repoDir` or, in isolated mode, the agent's clone
        {file}`/var/lib/nixfleet-agent/repo` (Home Manager:
        {file}`~/.local/state/nixfleet-agent/repo`); `null` (the agent's own
        default) when `hostname` is `null`
      '';
      example = "/var/lib/nixfleet-agent/repo#web-1";
      description = ''
        Flake reference that `switch` builds and activates (`NIXFLEET_FLAKE`),
        e.g. for a host whose configuration attribute is not its host name.
      '';
    };

    passEnvironment = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z_][A-Za-z0-9_]*");
      default = [ ];
      example = [
        "AWS_PROFILE"
        "CACHIX_AUTH_TOKEN"
      ];
      description = ''
        Variables of the agent's environment that also reach the programs its
        operations run (`NIXFLEET_PASS_ENV`), besides the ones that always do
        (the locale, `NIX_CONFIG`, `NIX_REMOTE`, `HOME_MANAGER_BACKUP_EXT`,
        proxies, CA bundles: docs/configuration.md). Set their values with
        `environment`, or for secrets with an environment file of the service
        (never in the Nix store). The agent's own variables (`NIXFLEET_*`, the
        token among them) never pass.
      '';
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        NIXFLEET_CA_FILE = "/etc/ssl/certs/fleet-ca.pem";
      };
      description = ''
        Extra environment variables for the agent; they override the ones the
        module sets. They end up in the world-readable unit file or plist and in
        the Nix store, so never put a secret here.
      '';
    };

    stateDirectory = mkOption {
      type = types.str;
      default = "/var/lib/nixfleet-agent";
      internal = true;
      description = ''
        Where the platform module keeps the agent's state (its clone among
        it): the system's directory, or the user's with Home Manager.
      '';
    };

    flakeAttribute = mkOption {
      type = types.nullOr types.str;
      default = cfg.hostname;
      defaultText = lib.literalExpression "hostname";
      internal = true;
      description = ''
        The configuration attribute `flake` names by default: the host name,
        or `<user>@<hostname>` with Home Manager.
      '';
    };

    agentEnvironment = mkOption {
      type = types.attrsOf types.str;
      internal = true;
      readOnly = true;
      description = ''
        The platform-independent part of the agent's environment, derived from
        the options above. The platform modules add their own variables and
        then `environment`.
      '';
    };
  };

  config = lib.mkMerge [
    {
      # Unset options (null) leave their variable out: the agent's default.
      services.nixfleet-agent.agentEnvironment = lib.filterAttrs (_: value: value != null) {
        NIXFLEET_URL = cfg.url;
        NIXFLEET_REPO_URL = cfg.repoUrl;
        NIXFLEET_REPO_DIR = cfg.repoDir;
        NIXFLEET_BRANCH = if cfg.repoUrl != null then cfg.branch else null;
        NIXFLEET_INTERVAL = toString cfg.interval;
        NIXFLEET_REPORTED_VERSION = cfg.reportedVersion;
        NIXFLEET_HOSTNAME = cfg.hostname;
        NIXFLEET_LOCATION = cfg.location;
        NIXFLEET_DEVICE_TYPE = cfg.deviceType;
        NIXFLEET_THEME_COLOR = cfg.themeColor;
        NIXFLEET_NIXPKGS_VERSION = cfg.nixpkgsVersion;
        NIXFLEET_LOG_LEVEL = cfg.logLevel;
        NIXFLEET_FLAKE = cfg.flake;
        NIXFLEET_PASS_ENV =
          if cfg.passEnvironment == [ ] then null else lib.concatStringsSep " " cfg.passEnvironment;
        NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS = if cfg.requireKnownHosts then "1" else null;
        NIXFLEET_TRUSTED_SIGNERS =
          if signerFiles == [ ] then null else lib.concatStringsSep ":" signerFiles;
        NIXFLEET_REQUIRE_SIGNED_COMMITS = if cfg.requireSignedCommits then "1" else null;
        NIXFLEET_ALLOW_FORCE_PUSH = if cfg.allowForcePush then "1" else null;
        NIXFLEET_ROLLBACK_ON_FAILURE = if cfg.rollbackOnFailure then null else "0";
        NIXFLEET_ROLLBACK_DEADLINE = toString cfg.rollbackDeadline;
        NIXFLEET_ACTIVATION_TIMEOUT = toString cfg.activationTimeout;
        NIXFLEET_MIN_FREE_SPACE = toString cfg.minFreeSpace;
        NIXFLEET_METRICS_LISTEN = if cfg.metrics.enable then cfg.metrics.listenAddress else null;
        NIXFLEET_BUILD_ON_HOST = if cfg.buildOnHost then null else "0";
      };
    }

    (lib.mkIf cfg.enable {
      assertions = [
        {
          # the hub's reconnect window (lifecycle.go: ReconnectTimeout for
          # switch, 90 s) and a margin for the old agent's start
          assertion = cfg.rollbackDeadline >= 100;
          message = ''
            services.nixfleet-agent.rollbackDeadline must be at least 100
            seconds; got ${toString cfg.rollbackDeadline}. The dashboard waits
            90 s for a switched host's agent and calls the switch a success when
            any agent registers in that time: a watchdog rollback inside that
            window would let the rolled-back agent turn it into SUCCESS.
          '';
        }
        {
          assertion = cfg.watchdogSec == 0 || cfg.watchdogSec >= 5;
          message = ''
            services.nixfleet-agent.watchdogSec must be 0 (off) or at least 5
            seconds; got ${toString cfg.watchdogSec}.
          '';
        }
        {
          assertion = cfg.requireSignedCommits -> cfg.trustedSigners != [ ];
          message = ''
            services.nixfleet-agent.requireSignedCommits needs at least one key
            in services.nixfleet-agent.trustedSigners (an SSH allowed-signers
            line, an allowed-signers file or a GPG public key file).
          '';
        }
        {
          assertion = builtins.match "wss?://[^/?#]+.*" cfg.url != null;
          message = ''
            services.nixfleet-agent.url must be a WebSocket URL starting with
            wss:// (or ws:// for loopback and tests), e.g.
            "wss://fleet.example.com/ws"; got "${cfg.url}".
          '';
        }
        {
          assertion = (cfg.repoUrl == null) != (cfg.repoDir == null);
          message = ''
            Set exactly one of services.nixfleet-agent.repoUrl (isolated mode: the
            agent keeps its own clone) and services.nixfleet-agent.repoDir (legacy
            mode: an existing checkout); ${repoModeProblem}.
          '';
        }
        {
          assertion = cfg.repoDir == null || isAbsolute cfg.repoDir;
          message = ''
            services.nixfleet-agent.repoDir must be an absolute path;
            got "${toString cfg.repoDir}".
          '';
        }
        {
          assertion = cfg.themeColor == null || isColour cfg.themeColor;
          message = ''
            services.nixfleet-agent.themeColor must be a colour written #rrggbb,
            e.g. "#e5a50a"; got "${toString cfg.themeColor}".
          '';
        }
        {
          assertion = cfg.hostname == null || isShortHostName cfg.hostname;
          message = ''
            services.nixfleet-agent.hostname must be a short host name (letters,
            digits, '-' and '_', no domain); got "${toString cfg.hostname}".
          '';
        }
      ];

      warnings =
        let
          host = wsHost cfg.url;
        in
        lib.optional (lib.hasPrefix "ws://" cfg.url && !isLoopbackHost host) ''
          services.nixfleet-agent.url uses unencrypted ws:// to ${host}: the agent
          token and all command output cross the network in clear text. Use wss://.
        '';
    })
  ];
}
