# Renders the units the NixOS module generates for the reference host
# (reference.nix) with nothing but a nixpkgs lib: the module is evaluated with
# lib.evalModules against a stub of the few NixOS options it reads and sets,
# and the units are written the way NixOS's systemd-lib.nix writes them
# (Environment= lines first, JSON-quoted and sorted by name, with NixOS's
# global LOCALE_ARCHIVE and TZDIR and the default service path; then the
# serviceConfig attributes sorted by name, lists as repeated lines). Every
# store path is /nix/store/<32 zeros>-<package name without its version>,
# the form checks/twin/compare_units.py normalises the real rendering to.
#
# Used by render.sh to write the golden files the host twin boots; the
# flake's nixos-module check compares them with the real NixOS rendering.
{
  lib,
  module ? ../../modules/nixos/default.nix,
  reference ? import ./reference.nix,
}:

let
  hash = "00000000000000000000000000000000";
  pkg = name: {
    type = "derivation";
    outPath = "/nix/store/${hash}-${name}";
    inherit name;
    meta.mainProgram = name;
  };
  pkgs = lib.genAttrs [
    "bash"
    "coreutils"
    "findutils"
    "git"
    "gnugrep"
    "gnupg"
    "gnused"
    "gnutar"
    "gzip"
    "xz"
  ] pkg;

  # NixOS's globalEnvironment (i18n.glibcLocales, time zone data).
  globalEnvironment = {
    LOCALE_ARCHIVE = "${pkg "glibc-locales"}/lib/locale/locale-archive";
    TZDIR = "${pkg "tzdata"}/share/zoneinfo";
  };
  defaultPath = [
    pkgs.coreutils
    pkgs.findutils
    pkgs.gnugrep
    pkgs.gnused
    (pkg "systemd")
  ];

  unitOption =
    with lib.types;
    oneOf [
      bool
      int
      str
      (listOf (oneOf [
        bool
        int
        str
      ]))
    ];

  serviceModule =
    { config, ... }:
    {
      options = with lib; {
        description = mkOption { default = ""; };
        documentation = mkOption { default = [ ]; };
        wants = mkOption { default = [ ]; };
        after = mkOption { default = [ ]; };
        wantedBy = mkOption { default = [ ]; };
        restartIfChanged = mkOption { default = true; };
        stopIfChanged = mkOption { default = true; };
        path = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        environment = mkOption {
          type = types.attrsOf types.str;
          default = { };
        };
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        serviceConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
      };
      config.path = lib.mkAfter defaultPath;
    };

  pathModule = {
    options = with lib; {
      description = mkOption { default = ""; };
      wantedBy = mkOption { default = [ ]; };
      pathConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };

  nixosStub =
    { lib, ... }:
    {
      options = with lib; {
        systemd.services = mkOption {
          type = types.attrsOf (types.submodule serviceModule);
          default = { };
        };
        systemd.paths = mkOption {
          type = types.attrsOf (types.submodule pathModule);
          default = { };
        };
        systemd.package = mkOption { default = pkg "systemd"; };
        programs.ssh.package = mkOption { default = pkg "openssh"; };
        nix.package = mkOption { default = pkg "nix"; };
        system.build = mkOption {
          type = types.attrsOf types.unspecified;
          default = { };
        };
        networking.hostName = mkOption { default = "twin"; };
        networking.proxy.envVars = mkOption { default = { }; };
        environment.etc = mkOption {
          type = types.attrsOf (types.submodule { options.text = mkOption { type = types.lines; }; });
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
      config.system.build.nixos-rebuild = pkg "nixos-rebuild-ng";
    };

  evaluated = lib.evalModules {
    class = "nixos";
    specialArgs = { inherit pkgs; };
    modules = [
      nixosStub
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

  toOption =
    value:
    if value == true then
      "true"
    else if value == false then
      "false"
    else
      toString value;
  section =
    attrs:
    lib.concatStrings (
      lib.mapAttrsToList (
        name: value: lib.concatMapStrings (v: "${name}=${toOption v}\n") (lib.toList value)
      ) attrs
    );
  nonEmpty = attrs: lib.filterAttrs (_: v: v != [ ] && v != "") attrs;

  serviceText =
    s:
    let
      environment =
        globalEnvironment
        // s.environment
        // {
          PATH = "${lib.makeBinPath s.path}:${lib.makeSearchPathOutput "bin" "sbin" s.path}";
        };
    in
    "[Unit]\n"
    + section (
      nonEmpty {
        Description = s.description;
        Documentation = toString s.documentation;
        Wants = toString s.wants;
        After = toString s.after;
      }
      // lib.optionalAttrs (!s.restartIfChanged) { X-RestartIfChanged = false; }
      // lib.optionalAttrs (!s.stopIfChanged) { X-StopIfChanged = false; }
      // s.unitConfig
    )
    + "\n[Service]\n"
    + lib.concatMapStrings (n: "Environment=${builtins.toJSON "${n}=${environment.${n}}"}\n") (
      builtins.attrNames environment
    )
    + section s.serviceConfig;

  pathText =
    p:
    "[Unit]\n"
    + section (nonEmpty {
      Description = p.description;
    })
    + "\n[Path]\n"
    + section p.pathConfig;
in
if failed != [ ] then
  throw "the reference host fails the module's assertions: ${toString (map (a: a.message) failed)}"
else
  lib.mapAttrs' (name: s: lib.nameValuePair "${name}.service" (serviceText s)) config.systemd.services
  // lib.mapAttrs' (name: p: lib.nameValuePair "${name}.path" (pathText p)) config.systemd.paths
