# Evaluation check of the flake's own outputs (nothing is built):
#
# 1. A new commit rebuilds only the agent's stamp. The outputs are evaluated
#    for two different commits (a change to docs/ is exactly that: a new
#    `self.rev`, and docs/ is in no derivation's source); the mock
#    dashboard, the e2e suite and every VM test keep their derivations, the
#    installed agent does not (its stamp names the commit).
# 2. The flake evaluates without x86_64-darwin (nixpkgs 26.11 drops it):
#    with a nixpkgs that lacks it, the Darwin outputs are aarch64-darwin's,
#    and the darwin-module check still evaluates.
{
  pkgs,
  system,
  nixpkgs,
  nix-darwin,
  home-manager,
  flake,
}:

let
  inherit (pkgs) lib;

  # The flake's outputs as Nix would compute them for a commit `rev`.
  outputsWith =
    { rev, nixpkgs }:
    let
      outputs = flake.outputs {
        self = outputs // {
          inherit rev;
        };
        inherit nixpkgs nix-darwin home-manager;
      };
    in
    outputs;

  at = rev: outputsWith { inherit rev nixpkgs; };
  first = at "1111111111111111111111111111111111111111";
  second = at "2222222222222222222222222222222222222222";

  drvOf = outputs: name: outputs.checks.${system}.${name}.drvPath;
  isCommitFree = name: name == "mock-dashboard" || name == "e2e" || lib.hasPrefix "vm-" name;
  commitFree = lib.filter isCommitFree (builtins.attrNames first.checks.${system});
  changed = lib.filter (name: drvOf first name != drvOf second name) commitFree;
  agentDrv = outputs: outputs.packages.${system}.nixfleet-agent.drvPath;

  withoutIntelMacs = outputsWith {
    rev = "3333333333333333333333333333333333333333";
    nixpkgs = nixpkgs // {
      legacyPackages = builtins.removeAttrs nixpkgs.legacyPackages [ "x86_64-darwin" ];
    };
  };
  intelFree = builtins.attrNames withoutIntelMacs.packages;
  darwinOutputs = lib.filter (lib.hasSuffix "-darwin") intelFree;
  # (on an Intel Mac itself there are no checks to evaluate without it)
  darwinCheck = withoutIntelMacs.checks.${system}.darwin-module or null;

  expectations = [
    {
      ok = changed == [ ];
      message = "a new commit changes ${lib.concatStringsSep ", " changed}";
    }
    {
      ok = agentDrv first != agentDrv second;
      message = "the installed agent does not name its commit";
    }
    {
      ok = builtins.elem "e2e" commitFree && builtins.elem "mock-dashboard" commitFree;
      message = "the checks to compare are missing";
    }
    {
      ok = darwinOutputs == [ "aarch64-darwin" ];
      message = "Darwin outputs without x86_64-darwin: ${toString darwinOutputs}";
    }
    {
      ok = system == "x86_64-darwin" || builtins.isString (darwinCheck.drvPath or null);
      message = "the darwin-module check does not evaluate without x86_64-darwin";
    }
  ];
  failures = map (e: e.message) (lib.filter (e: !e.ok) expectations);
in
if failures == [ ] then
  pkgs.runCommand "nixfleet-flake-outputs" { } ''
    echo "${toString (builtins.length commitFree)} checks do not depend on the commit" > "$out"
  ''
else
  throw "flake-outputs check failed:\n  - ${lib.concatStringsSep "\n  - " failures}"
