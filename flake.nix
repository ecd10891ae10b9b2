{
  description = "NixFleet agent: connects NixOS and nix-darwin hosts to a NixFleet dashboard";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    nix-darwin = {
      url = "github:nix-darwin/nix-darwin/nix-darwin-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nix-darwin,
    }:
    let
      inherit (nixpkgs) lib;

      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      darwinSystems = [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = lib.genAttrs (linuxSystems ++ darwinSystems);
      pkgsFor = system: nixpkgs.legacyPackages.${system};

      version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;

      # Baked into the agent (option_env!("NIXFLEET_SOURCE_COMMIT")) and
      # reported to the dashboard as `source_commit`; empty when the flake
      # has no commit (e.g. a tarball without git metadata).
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

          env = {
            NIXFLEET_SOURCE_COMMIT = sourceCommit;
          }
          // lib.optionalAttrs linkStatic {
            RUSTFLAGS = "-C target-feature=+crt-static";
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
      # end-to-end suite is the separate check `e2e`.
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
              or (pkgs.callPackage agentPackage { })
          );
        };
    in
    {
      overlays.default = final: prev: {
        nixfleet-agent = final.callPackage agentPackage { };
        nixfleet-mock-dashboard = final.callPackage mockDashboardPackage { };
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          nixfleet-agent = pkgs.callPackage agentPackage { };
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

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          isLinux = builtins.elem system linuxSystems;

          everywhere = {
            nixfleet-agent = self.packages.${system}.nixfleet-agent;
            mock-dashboard = self.packages.${system}.mock-dashboard;
            e2e = e2eCheck pkgs self.packages.${system}.nixfleet-agent;

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

            # The nix-darwin module, evaluated into a real nix-darwin system
            # for the matching Darwin platform (also from Linux machines).
            darwin-module = import ./checks/eval/darwin.nix {
              inherit pkgs nix-darwin;
              darwinModule = self.darwinModules.default;
              darwinSystem = builtins.replaceStrings [ "-linux" ] [ "-darwin" ] system;
            };
          };

          linuxOnly = {
            nixos-module = import ./checks/eval/nixos.nix {
              inherit pkgs nixpkgs system;
              nixosModule = self.nixosModules.default;
            };
          };

          vmTests = import ./checks/vm {
            inherit pkgs version;
            nixosModule = self.nixosModules.default;
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
