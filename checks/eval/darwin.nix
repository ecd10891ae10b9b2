# Evaluation check of the nix-darwin module: evaluates a real nix-darwin
# system (through the flake's nix-darwin input) with the module, and asserts
# on the launchd plist nix-darwin generates from it (check_plist.py), on
# the state directory's activation and on the log rotation entry.
#
# The plist text is taken from the evaluation with its store references
# dropped, so the check runs on Linux as well as on macOS and needs nothing
# built for Darwin.
{
  pkgs,
  nix-darwin,
  darwinModule,
  darwinSystem,
}:

let
  inherit (pkgs) lib;

  darwin = nix-darwin.lib.darwinSystem {
    modules = [
      darwinModule
      {
        nixpkgs.hostPlatform = darwinSystem;
        system.stateVersion = 6;
        networking.hostName = "mac-1";
        services.nixfleet-agent = {
          enable = true;
          url = "wss://fleet.example.com/ws";
          tokenFile = "/run/agenix/nixfleet-token";
          sshKeyFile = "/run/agenix/nixfleet-deploy-key";
          repoUrl = "git@github.com:example/nixcfg.git";
          deviceType = "laptop";
          # the safe-deploy options reach the plist
          requireSignedCommits = true;
          trustedSigners = [
            "alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8L0m1y0cXH0yUZ1V0W3q8yW2QfQ1hWm3b4n0x9zq1a"
          ];
          rollbackDeadline = 300;
          requireKnownHosts = true;
          minFreeSpace = 8192;
          buildOnHost = false;
        };
      }
    ];
  };

  inherit (darwin) config;
  daemon = config.launchd.daemons.nixfleet-agent;
  plistName = "${daemon.serviceConfig.Label}.plist";

  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  facts = {
    inherit failedAssertions;
    inherit (config) warnings;
    label = daemon.serviceConfig.Label;
    nixpkgsVersion = lib.version;
    activation = config.system.activationScripts.extraActivation.text;
    newsyslog = config.environment.etc."newsyslog.d/nixfleet-agent.conf".text;
  };
in
pkgs.runCommand "nixfleet-darwin-module-check"
  {
    nativeBuildInputs = [ pkgs.python3 ];
    plist = builtins.unsafeDiscardStringContext config.environment.launchDaemons.${plistName}.text;
    facts = builtins.unsafeDiscardStringContext (builtins.toJSON facts);
    passAsFile = [
      "plist"
      "facts"
    ];
  }
  ''
    python3 ${./check_plist.py} "$plistPath" "$factsPath"
    touch $out
  ''
