{
  description = "NixFleet agent: connects NixOS, nix-darwin and Home Manager hosts to a NixFleet dashboard";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    nix-darwin = {
      url = "github:nix-darwin/nix-darwin/nix-darwin-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    # Only for checks.*.home-manager-module: the module itself needs nothing
    # of it (Home Manager evaluates it).
    home-manager = {
      url = "github:nix-community/home-manager/release-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nix-darwin,
      home-manager,
    }:
    let
      inherit (nixpkgs) lib;

      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # Only the Darwin systems the pinned nixpkgs still has: nixpkgs 26.11
      # drops x86_64-darwin, and the flake evaluates with and without it
      # (checks.*.flake-outputs).
      darwinSystems = lib.filter (system: nixpkgs.legacyPackages ? ${system}) [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = lib.genAttrs (linuxSystems ++ darwinSystems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};

      version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;

      # Reported to the dashboard as `source_commit`; empty when the flake has
      # no commit (e.g. a tarball without git metadata). Only the stamp
      # (`stampAgent`) depends on it: the builds, the e2e tests and the VM
      # tests stay the same from one commit to the next unless their sources
      # change (checks.*.flake-outputs).
      sourceCommit = self.rev or self.dirtyRev or "";

      # One function for both crates of the workspace; `callPackage`d by the
      # overlay, so it builds with whichever nixpkgs it is applied to.
      mkWorkspaceCrate =
        {
          pname,
          description,
          cargoTestFlags,
          staticGlibc ? false,
        }:
        {
          lib,
          stdenv,
          rustPlatform,
          git,
          glibc,
        }:
        let
          # The agent runs on every host forever: linked statically against
          # glibc it idles at ~2.8 MiB resident instead of ~4 MiB, as the
          # shared pages of libc, libm and ld.so go away (docs/benchmarks.md).
          # nixpkgs' cargo hooks pass --target, so proc-macros still link
          # dynamically. A static glibc resolves names through files and DNS
          # only (no NSS plug-ins), which is all the agent needs.
          linkStatic = staticGlibc && stdenv.hostPlatform.isLinux && stdenv.hostPlatform.isGnu;
        in
        rustPlatform.buildRustPackage {
          inherit pname version cargoTestFlags;

          # Only what cargo needs, so that editing docs or Nix files does not
          # rebuild the agent.
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./agent
              ./checks/mock-dashboard
            ];
          };

          cargoLock.lockFile = ./Cargo.lock;

          cargoBuildFlags = [
            "-p"
            pname
          ];
          nativeCheckInputs = [ git ];
          # git, used by the tests, wants a writable HOME.
          preCheck = ''
            export HOME="$TMPDIR/home"
            mkdir -p "$HOME"
          '';

          buildInputs = lib.optionals linkStatic [ glibc.static ];

          # Static glibc, and the static-pie's relative relocations packed
          # (DT_RELR, glibc >= 2.36, binutils >= 2.38 or lld): 0.13 MiB
          # smaller, 0.15 MiB less idle memory (docs/benchmarks.md).
          env = lib.optionalAttrs linkStatic {
            RUSTFLAGS = "-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs";
          };

          meta = {
            inherit description;
            homepage = "https://github.com/nixfleet/nixfleet-agent";
            license = lib.licenses.mit;
            mainProgram = pname;
            platforms = lib.platforms.linux ++ lib.platforms.darwin;
          };
        };

      # The package's own check phase runs the unit tests only; the
      # end-to-end suite is the separate check `e2e`. Built without the
      # commit; `stampAgent` adds it.
      agentPackage = mkWorkspaceCrate {
        pname = "nixfleet-agent";
        description = "Agent connecting a NixOS or nix-darwin host to a NixFleet dashboard";
        staticGlibc = true;
        cargoTestFlags = [
          "-p"
          "nixfleet-agent"
          "--lib"
          "--bins"
        ];
      };

      mockDashboardPackage = mkWorkspaceCrate {
        pname = "nixfleet-mock-dashboard";
        description = "The dashboard side of the NixFleet agent protocol, for tests and demos";
        cargoTestFlags = [
          "-p"
          "nixfleet-mock-dashboard"
          "--lib"
          "--bins"
        ];
      };

      # The agent as installed: a copy of the built binary with the commit
      # next to it, in $out/share/nixfleet-agent/source-commit, where the
      # agent reads it at start (host::STAMP). A copy, not a link: the agent
      # finds the stamp from its own resolved path. Cheap to rebuild per commit.
      stampAgent =
        pkgs: agent:
        pkgs.runCommand "nixfleet-agent-${version}"
          {
            inherit version;
            pname = "nixfleet-agent";
            inherit (agent) meta;
            passthru.unstamped = agent;
          }
          ''
            mkdir -p "$out/bin" "$out/share/nixfleet-agent"
            cp ${lib.getExe agent} "$out/bin/nixfleet-agent"
            printf '%s\n' ${lib.escapeShellArg sourceCommit} > "$out/share/nixfleet-agent/source-commit"
          '';

      # The end-to-end suite (agent/tests): the real agent binary against the
      # mock dashboard on loopback, with real git repositories.
      e2eCheck =
        pkgs: agent:
        agent.overrideAttrs (_: {
          pname = "nixfleet-agent-e2e";
          # `--test=*` rather than `--test '*'`: the flags are word-split by
          # the check hook, and a bare `*` could be globbed to file names.
          cargoTestFlags = [
            "-p"
            "nixfleet-agent"
            "--test=*"
          ];
          nativeCheckInputs = [
            pkgs.bash
            pkgs.git
          ];
          __darwinAllowLocalNetworking = true;
          preCheck = ''
            export HOME="$TMPDIR/home"
            mkdir -p "$HOME"
            export GIT_CONFIG_NOSYSTEM=1
            export GIT_AUTHOR_NAME="NixFleet test" GIT_COMMITTER_NAME="NixFleet test"
            export GIT_AUTHOR_EMAIL="test@nixfleet.invalid" GIT_COMMITTER_EMAIL="test@nixfleet.invalid"
          '';
        });

      # nixosModules.default / darwinModules.default: the platform module,
      # with the package defaulting to this flake's build for the host.
      withFlakePackage =
        module:
        { lib, pkgs, ... }:
        {
          imports = [ module ];
          services.nixfleet-agent.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.nixfleet-agent
              or (stampAgent pkgs (pkgs.callPackage agentPackage { }))
          );
        };
    in
    {
      overlays.default = final: prev: {
        nixfleet-agent = stampAgent final (final.callPackage agentPackage { });
        nixfleet-mock-dashboard = final.callPackage mockDashboardPackage { };
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          nixfleet-agent = stampAgent pkgs (pkgs.callPackage agentPackage { });
        in
        {
          inherit nixfleet-agent;
          default = nixfleet-agent;
          mock-dashboard = pkgs.callPackage mockDashboardPackage { };
        }
      );

      apps = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          inherit (self.packages.${system}) nixfleet-agent mock-dashboard;
          demo = pkgs.writeShellApplication {
            name = "nixfleet-demo";
            # the demo makes a git repository and its fake tools use coreutils
            runtimeInputs = [
              pkgs.git
              pkgs.coreutils
            ];
            text = ''
              exec ${lib.getExe mock-dashboard} demo --agent ${lib.getExe nixfleet-agent} "$@"
            '';
          };
        in
        {
          default = {
            type = "app";
            program = lib.getExe nixfleet-agent;
            meta.description = "Run the NixFleet agent (configured by NIXFLEET_* variables)";
          };
          demo = {
            type = "app";
            program = lib.getExe demo;
            meta.description = "Mock dashboard and agent on a throw-away repository, live";
          };
        }
      );

      nixosModules = {
        nixfleet-agent = withFlakePackage ./modules/nixos;
        default = self.nixosModules.nixfleet-agent;
      };

      darwinModules = {
        nixfleet-agent = withFlakePackage ./modules/darwin;
        default = self.darwinModules.nixfleet-agent;
      };

      homeManagerModules = {
        nixfleet-agent = withFlakePackage ./modules/home-manager;
        default = self.homeManagerModules.nixfleet-agent;
      };

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          isLinux = builtins.elem system linuxSystems;
          # The agent as built, without the commit's stamp.
          unstamped = self.packages.${system}.nixfleet-agent.unstamped;

          everywhere = {
            nixfleet-agent = self.packages.${system}.nixfleet-agent;
            mock-dashboard = self.packages.${system}.mock-dashboard;
            e2e = e2eCheck pkgs unstamped;

            formatting =
              pkgs.runCommand "nixfleet-formatting"
                {
                  nativeBuildInputs = [ pkgs.nixfmt ];
                  src = lib.fileset.toSource {
                    root = ./.;
                    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
                  };
                }
                ''
                  cd "$src"
                  find . -name '*.nix' -print0 | xargs -0 nixfmt --check
                  touch "$out"
                '';

            # The nix-darwin module, evaluated into a real nix-darwin system:
            # on a Mac for itself, from Linux for aarch64-darwin (the Darwin
            # platform every nixpkgs release keeps).
            darwin-module = import ./checks/eval/darwin.nix {
              inherit pkgs nix-darwin;
              darwinModule = self.darwinModules.default;
              darwinSystem = if builtins.elem system darwinSystems then system else "aarch64-darwin";
            };

            # Evaluation only: a new commit changes the agent's stamp and
            # nothing else, and the flake evaluates without x86_64-darwin.
            flake-outputs = import ./checks/eval/flake-outputs.nix {
              inherit
                pkgs
                system
                nixpkgs
                nix-darwin
                home-manager
                ;
              flake = import ./flake.nix;
            };
          };

          linuxOnly = {
            nixos-module = import ./checks/eval/nixos.nix {
              inherit pkgs nixpkgs system;
              nixosModule = self.nixosModules.default;
            };

            # Home Manager's own launchd and systemd-user modules with ours:
            # the macOS agent (evaluated) and the Linux user units (built).
            home-manager-module = import ./checks/eval/home-manager.nix {
              inherit pkgs nixpkgs home-manager;
              homeManagerModule = self.homeManagerModules.default;
            };
          };

          # With the unstamped agent, so that a commit that changes no source
          # of theirs leaves them as they are.
          vmTests = import ./checks/vm {
            inherit pkgs version;
            nixosModule = {
              imports = [ self.nixosModules.default ];
              services.nixfleet-agent.package = unstamped;
            };
            mockDashboard = self.packages.${system}.mock-dashboard;
          };
        in
        lib.mergeAttrsList [
          everywhere
          (lib.optionalAttrs isLinux linuxOnly)
          (lib.optionalAttrs isLinux vmTests)
        ]
      );

      formatter = forAllSystems (system: (pkgsFor system).nixfmt-tree);

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.cargo
              pkgs.clippy
              pkgs.rustc
              pkgs.rustfmt
              pkgs.rust-analyzer
              pkgs.git
              pkgs.curl
              pkgs.jq
              pkgs.nixfmt
            ];
            RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
          };
        }
      );
    };
}
