# Renders the systemd user units the Home Manager module generates on Linux
# for the reference user (home-manager/reference.nix) with nothing but a
# nixpkgs lib: the module is evaluated with lib.evalModules against a stub of
# the few Home Manager options it reads and sets, and the units are written
# the way Home Manager's modules/systemd.nix writes them (fields that are null
# or an empty list dropped, then empty sections; lib.generators.toINI with
# lists as repeated keys and booleans as true/false: sections and keys
# sorted). Every store path is /nix/store/<32 zeros>-<package name>, the form
# compare_units.py normalises the real rendering to.
#
# Used by render.sh to write the golden user units the host twin's lingering
# user runs; the flake's home-manager-module check compares them with the
# real Home Manager's rendering.
{
  lib,
  module ? ../../modules/home-manager/default.nix,
  reference ? import ./home-manager/reference.nix,
}:

let
  hash = "00000000000000000000000000000000";
  pkg = name: {
    type = "derivation";
    outPath = "/nix/store/${hash}-${name}";
    inherit name;
    meta.mainProgram = name;
  };
  pkgs =
    lib.genAttrs [
      "git"
      "gnupg"
      "home-manager"
      "openssh"
      "systemd"
    ] pkg
    // {
      stdenv.hostPlatform.isDarwin = false;
    };

  units = lib.mkOption {
    type = lib.types.attrsOf (lib.types.attrsOf (lib.types.attrsOf lib.types.unspecified));
    default = { };
  };

  homeManagerStub =
    { lib, ... }:
    {
      options = with lib; {
        home.username = mkOption { default = "alice"; };
        home.homeDirectory = mkOption { default = "/home/alice"; };
        nix.package = mkOption { default = pkg "nix"; };
        systemd.user.services = units;
        systemd.user.paths = units;
        launchd.agents = mkOption {
          type = types.attrsOf types.unspecified;
          default = { };
        };
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };
    };

  evaluated = lib.evalModules {
    class = "homeManager";
    specialArgs = { inherit pkgs; };
    modules = [
      homeManagerStub
      module
      {
        services.nixfleet-agent = reference // {
          package = pkg "nixfleet-agent";
        };
      }
    ];
  };
  inherit (evaluated) config;

  failed = builtins.filter (a: !a.assertion) config.assertions;

  # modules/systemd.nix: finalUnit, then toSystemdIni
  finalUnit =
    unit:
    lib.filterAttrs (_: section: section != { }) (
      lib.mapAttrs (_: lib.filterAttrs (_: value: value != null && value != [ ])) unit
    );
  toSystemdIni = lib.generators.toINI {
    listsAsDuplicateKeys = true;
    mkKeyValue =
      key: value:
      let
        value' = if lib.isBool value then (if value then "true" else "false") else toString value;
      in
      "${key}=${value'}";
  };
  render =
    suffix:
    lib.mapAttrs' (name: unit: lib.nameValuePair "${name}.${suffix}" (toSystemdIni (finalUnit unit)));
in
if failed != [ ] then
  throw "the reference user fails the module's assertions: ${toString (map (a: a.message) failed)}"
else
  render "service" config.systemd.user.services // render "path" config.systemd.user.paths
