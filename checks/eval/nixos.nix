# Evaluation check of the NixOS module: evaluates real NixOS systems with
# the module, then asserts on the rendered unit file (check_unit.py) and on
# the module's assertions and warnings for valid and invalid settings.
# Nothing is built but a small Python script's run; the unit text is taken
# from the evaluation (its store references dropped), so the check does not
# need the agent built.
{
  pkgs,
  nixpkgs,
  system,
  nixosModule,
}:

let
  inherit (pkgs) lib;

  evalHost = evalNamedHost "web-1";
  evalNamedHost =
    hostName: settings:
    nixpkgs.lib.nixosSystem {
      modules = [
        nixosModule
        {
          nixpkgs.hostPlatform = system;
          system.stateVersion = "26.05";
          boot.loader.grub.enable = false;
          fileSystems."/" = {
            device = "/dev/vda";
            fsType = "ext4";
          };
          networking.hostName = hostName;
          services.nixfleet-agent = settings;
        }
      ];
    };

  valid = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    tokenFile = "/run/agenix/nixfleet-token";
    sshKeyFile = "/run/agenix/nixfleet-deploy-key";
    repoUrl = "git@github.com:example/nixcfg.git";
    themeColor = "#3366cc";
    environment.NIXFLEET_CA_FILE = "/etc/ssl/certs/fleet-ca.pem";
  };

  # Everything wrong at once: each must be reported.
  invalidSettings = {
    url = "https://fleet.example.com/ws";
    repoDir = "/home/alice/nixcfg";
    themeColor = "blue";
    hostname = "web-1.example.com";
    requireSignedCommits = true;
    rollbackDeadline = 60;
  };

  # Secret paths the options' type (types.externalPath) refuses: inside the
  # store, relative, and a Nix path literal (which would copy the secret
  # into the store).
  badSecretPaths = [
    { tokenFile = "/nix/store/00000000000000000000000000000000-token"; }
    { tokenFile = "run/agenix/nixfleet-token"; }
    { tokenFile = ./nixos.nix; }
    { sshKeyFile = "keys/deploy"; }
    { sshKeyFile = "/nix/store/00000000000000000000000000000000-key"; }
  ];
  # true where the evaluation of the setting fails, as it must
  refused =
    bad:
    let
      option = builtins.head (builtins.attrNames bad);
      evaluated = (evalHost (valid // bad)).config.services.nixfleet-agent.${option};
    in
    !(builtins.tryEval (builtins.deepSeq evaluated evaluated)).success;

  legacySettings = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    tokenFile = "/run/agenix/nixfleet-token";
    repoDir = "/home/alice/nixcfg";
  };

  loopbackUrls = [
    "ws://localhost:8000/ws"
    "ws://127.0.0.1:8000/ws"
    "ws://[::1]:8000/ws"
  ];

  host = evalHost valid;

  # The host twin's reference host (checks/twin/): its units as NixOS really
  # renders them, compared with the golden units the twin boots.
  twinUnits = (evalNamedHost "twin" (import ../twin/reference.nix)).config.systemd.units;
  twinUnitNames = [
    "nixfleet-agent.service"
    "nixfleet-agent-token.path"
    "nixfleet-agent-token-changed.service"
  ];
  twinUnitFiles = map (
    name:
    "${name}=${
      pkgs.writeText "twin-${name}" (builtins.unsafeDiscardStringContext twinUnits.${name}.text)
    }"
  ) twinUnitNames;
  service = host.config.systemd.services.nixfleet-agent;
  unit = host.config.systemd.units."nixfleet-agent.service";

  invalid = evalHost (valid // invalidSettings);
  noRepository = evalHost (builtins.removeAttrs valid [ "repoUrl" ]);
  legacy = evalHost legacySettings;
  disabled = evalHost (valid // { enable = false; });

  ours = lib.filter (lib.hasInfix "services.nixfleet-agent");
  failedAssertions =
    config: ours (map (a: a.message) (lib.filter (a: !a.assertion) config.assertions));
  warnings = config: ours config.warnings;
  warningsFor = url: warnings (evalHost (valid // { inherit url; })).config;

  facts = {
    inherit (service) restartIfChanged stopIfChanged;
    inherit (unit) wantedBy;
    nixpkgsVersion = lib.version;
    valid = {
      failedAssertions = failedAssertions host.config;
      warnings = warnings host.config;
    };
    invalid = {
      failedAssertions = failedAssertions invalid.config;
    };
    neitherRepo = failedAssertions noRepository.config;
    secretPathsRefused = map refused badSecretPaths;
    plainWsRemote = warningsFor "ws://dashboard.lan:8000/ws";
    plainWsLoopback = lib.concatMap warningsFor loopbackUrls;
    legacyEnvironment = legacy.config.systemd.services.nixfleet-agent.environment;
    legacyGitconfig = legacy.config.environment.etc.gitconfig.text or "";
    disabledHasService = disabled.config.systemd.services ? nixfleet-agent;
    tokenPath = host.config.systemd.paths.nixfleet-agent-token.pathConfig;
    tokenChanged = host.config.systemd.services.nixfleet-agent-token-changed.serviceConfig.ExecStart;
  };
in
pkgs.runCommand "nixfleet-nixos-module-check"
  {
    nativeBuildInputs = [ pkgs.python3 ];
    unitText = builtins.unsafeDiscardStringContext unit.text;
    facts = builtins.unsafeDiscardStringContext (builtins.toJSON facts);
    passAsFile = [
      "unitText"
      "facts"
    ];
  }
  ''
    PYTHONPATH=${./lib} python3 ${./check_unit.py} "$unitTextPath" "$factsPath"
    PYTHONPATH=${./lib} python3 ${../twin/compare_units.py} ${../twin} ${lib.escapeShellArgs twinUnitFiles}
    touch $out
  ''
