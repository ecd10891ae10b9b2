# Evaluation check of the Home Manager module with Home Manager's own
# launchd and systemd-user modules (the flake's home-manager input):
# - macOS (aarch64-darwin, evaluated from Linux): the launchd agent's
#   configuration as Home Manager's launchd module type-checks it, and its
#   plist rendered from it;
# - Linux: the user units Home Manager writes (built: they are small text
#   files for this platform);
# - a token path written with `~` is refused;
# - the host twin's golden user units (checks/twin/home-manager/) are what
#   Home Manager renders for its reference user.
# check_home_manager.py asserts on them.
{
  pkgs,
  nixpkgs,
  home-manager,
  homeManagerModule,
}:

let
  inherit (pkgs) lib;

  settings = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    repoUrl = "git@github.com:example/nixcfg.git";
    hostname = "mac-1";
    rollbackDeadline = 300;
  };

  homeFor =
    system: home: extra:
    home-manager.lib.homeManagerConfiguration {
      pkgs = nixpkgs.legacyPackages.${system};
      modules = [
        homeManagerModule
        {
          home.username = "alice";
          home.homeDirectory = home;
          home.stateVersion = "26.05";
          services.nixfleet-agent = settings // {
            tokenFile = "${home}/.config/nixfleet/token";
          };
        }
        extra
      ];
    };

  mac = (homeFor "aarch64-darwin" "/Users/alice" { }).config;
  linux = (homeFor pkgs.stdenv.hostPlatform.system "/home/alice" { }).config;

  agent = mac.launchd.agents.nixfleet-agent;
  tilde = homeFor "aarch64-darwin" "/Users/alice" {
    services.nixfleet-agent.tokenFile = lib.mkForce "~/.config/nixfleet/token";
  };
  tildeRefused =
    !(builtins.tryEval (builtins.deepSeq tilde.config.services.nixfleet-agent.tokenFile null)).success;

  ours = lib.filter (lib.hasInfix "services.nixfleet-agent");
  failedAssertions =
    config: ours (map (a: a.message) (lib.filter (a: !a.assertion) config.assertions));

  facts = {
    launchdEnabled = agent.enable;
    launchd = agent.config;
    plist = lib.generators.toPlist { escape = true; } agent.config;
    inherit tildeRefused;
    macAssertions = failedAssertions mac;
    linuxAssertions = failedAssertions linux;
    linuxHasLaunchd = linux.launchd.agents ? nixfleet-agent;
    macHasUserUnit = mac.systemd.user.services ? nixfleet-agent;
  };
  unit = name: linux.xdg.configFile."systemd/user/${name}".source;

  # the host twin's reference user (checks/twin/home-manager/), rendered by
  # the real Home Manager: its golden user units must be the same
  twinUser =
    (home-manager.lib.homeManagerConfiguration {
      pkgs = nixpkgs.legacyPackages.${pkgs.stdenv.hostPlatform.system};
      modules = [
        homeManagerModule
        {
          home.username = "alice";
          home.homeDirectory = "/home/alice";
          home.stateVersion = "26.05";
          services.nixfleet-agent = import ../twin/home-manager/reference.nix;
        }
      ];
    }).config;
  twinUnits = map (name: "${name}=${twinUser.xdg.configFile."systemd/user/${name}".source}") [
    "nixfleet-agent.service"
    "nixfleet-agent-token.path"
    "nixfleet-agent-token-changed.service"
  ];
in
pkgs.runCommand "nixfleet-home-manager-module-check"
  {
    nativeBuildInputs = [ pkgs.python3 ];
    facts = builtins.unsafeDiscardStringContext (builtins.toJSON facts);
    passAsFile = [ "facts" ];
  }
  ''
    PYTHONPATH=${./lib} python3 ${./check_home_manager.py} "$factsPath" \
      ${unit "nixfleet-agent.service"} \
      ${unit "nixfleet-agent-token.path"} \
      ${unit "nixfleet-agent-token-changed.service"}
    PYTHONPATH=${./lib} python3 ${../twin/compare_units.py} ${../twin/home-manager} ${lib.escapeShellArgs twinUnits}
    touch $out
  ''
