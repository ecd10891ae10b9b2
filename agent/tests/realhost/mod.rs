//! The real-Nix host of `real_nix.rs` (docs/testing.md): a Debian root
//! with one Nix version, a mock dashboard, and a configuration repository
//! whose flake builds real systems; the activation programs' stand-ins; and
//! what the tests read back from the real store and profiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::common::realnix::{NixRoot, nix_system};
use crate::common::*;
use nixfleet_mock_dashboard::{Frame, MockDashboard};
use serde_json::Value;

pub const HOST: &str = "cmdhost";
/// Home Manager's configuration name: `<user>@<host>`.
pub const HM_USER: &str = "alice";
pub const FEATURES: &str = "--extra-experimental-features 'nix-command flakes'";

/// A host with real Nix: the root, the dashboard, and a configuration
/// repository whose flake builds real systems.
pub struct Host {
    pub root: NixRoot,
    pub dash: MockDashboard,
    pub fx: Fixture,
    /// The system profile (`NIXFLEET_SYSTEM_PROFILE`).
    pub profile: PathBuf,
    /// What `/run/current-system` is on NixOS (`NIXFLEET_CURRENT_SYSTEM`).
    pub current: PathBuf,
    /// Each activation appends `<action> <system>` here.
    pub activations: PathBuf,
    /// The system the host booted (built before the agent starts).
    pub booted: String,
    /// What makes this host's derivations its own.
    pub salt: String,
    /// Its agents switch Home Manager generations (`alice@cmdhost`).
    pub home_manager: std::cell::Cell<bool>,
}

/// The flake: `hello-<hello>` and the systems holding it; the NixOS
/// system's activation exits with `exit`. `salt` makes every derivation
/// this host's own: nothing another test (or an earlier run) built is in
/// the store already.
pub fn flake(salt: &str, hello: &str, exit: i32) -> String {
    flake_with(salt, hello, exit, true)
}

/// [`flake`], whose NixOS system has its activation program only when
/// `activation` (without it, it is not a system `nixos-rebuild` would
/// switch to).
pub fn flake_with(salt: &str, hello: &str, exit: i32, activation: bool) -> String {
    let system = nix_system();
    let install = if activation {
        "cp ${./nixos/switch-to-configuration} $out/bin/switch-to-configuration\n        chmod +x $out/bin/switch-to-configuration"
    } else {
        "echo 'no activation program' > $out/README"
    };
    format!(
        r#"{{
  outputs = {{ self }}:
    let
      sh = name: script: deps: builtins.derivation {{
        inherit name deps;
        system = "{system}";
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = "/usr/bin:/bin";
        salt = "{salt}";
      }};
      hello = sh "hello-{hello}" ''
        mkdir -p $out/bin
        printf '#!/bin/sh\necho hello {hello}\n' > $out/bin/hello
        chmod +x $out/bin/hello
      '' [ ];
      toplevel = sh "nixos-system-{HOST}-26.05" ''
        mkdir -p $out/bin
        ln -s ${{hello}} $out/sw
        echo 26.05 > $out/nixos-version
        {install}
        echo {exit} > $out/exit-code
      '' [ hello ];
      home = sh "home-manager-generation" ''
        mkdir -p $out
        ln -s ${{hello}} $out/home-path
        cp ${{./home/activate}} $out/activate
        chmod +x $out/activate
      '' [ hello ];
    in
    {{
      nixosConfigurations.{HOST}.config.system.build.toplevel = toplevel;
      homeConfigurations."{HM_USER}@{HOST}".activationPackage = home;
    }};
}}
"#
    )
}

/// The stand-in for NixOS's `switch-to-configuration`: what the real one
/// does where the agent looks.
fn switch_to_configuration(current: &Path, log: &Path) -> String {
    format!(
        r#"#!/bin/sh
sys=$(cd "$(dirname "$0")/.." && pwd -P)
case "$1" in
  dry-activate)
    echo "would restart the following units: hello.service" >&2
    exit 0 ;;
  switch|test)
    code=$(cat "$sys/exit-code")
    if [ "$code" = 1 ]; then
      # the boot loader is installed first: nothing switched
      echo "Failed to install bootloader" >&2
      exit 1
    fi
    echo "activating the configuration..." >&2
    ln -sfn "$sys" '{current}'
    echo "$1 $sys" >> '{log}'
    echo "the following new units were started: hello.service" >&2
    exit "$code" ;;
  boot)
    echo "boot $sys" >> '{log}'
    exit 0 ;;
  *)
    echo "Usage: switch-to-configuration [switch|boot|test|dry-activate]" >&2
    exit 1 ;;
esac
"#,
        current = current.display(),
        log = log.display()
    )
}

/// A Home Manager generation's `activate`, as Home Manager's does it: Nix
/// makes its profile directory (`nix-env -q`), the profile goes where Home
/// Manager's `setupVars` puts it, and the generation is set with `nix-env`.
fn home_activate(log: &Path) -> String {
    format!(
        r#"#!/bin/sh
set -e
gen=$(cd "$(dirname "$0")" && pwd -P)
nix-env -q >/dev/null 2>&1 || true
state=${{XDG_STATE_HOME:-$HOME/.local/state}}
global=${{NIX_STATE_DIR:-/nix/var/nix}}/profiles/per-user/$USER
if [ -d "$state/nix/profiles" ]; then dir=$state/nix/profiles
elif [ -d "$global" ]; then dir=$global
else echo "Could not find suitable profile directory, tried $state/nix/profiles and $global" >&2; exit 1
fi
nix-env --profile "$dir/home-manager" --set "$gen"
echo "activate $gen" >> '{log}'
# `home-manager switch -b <ext>`: files in the way are moved aside
echo "backup-ext ${{HOME_MANAGER_BACKUP_EXT:-none}}" >> '{log}'
echo "Activating home-manager configuration done"
"#,
        log = log.display()
    )
}

impl Host {
    /// The host on `suite`'s Nix, booted into the flake's first system
    /// (hello 1.0): built with the real Nix, generation 1 of the system
    /// profile, and the running system. `None` when the root is missing
    /// (skipped with a message).
    pub async fn new(suite: &'static str) -> Option<Host> {
        Host::booted_with(suite, 0).await
    }

    /// [`Host::new`], whose booted system's activation exits with `exit`
    /// when it runs (1: its boot loader cannot be installed).
    pub async fn booted_with(suite: &'static str, exit: i32) -> Option<Host> {
        let root = NixRoot::get(suite)?;
        let tmp = tempfile::Builder::new()
            .prefix("nixfleet-realnix-")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let dir = tmp.path().to_path_buf();
        let repo = dir.join("repo");
        let profile = dir.join("profiles/system");
        let current = dir.join("current-system");
        let activations = dir.join("activations");
        std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        write_exec(
            &repo.join("nixos/switch-to-configuration"),
            &switch_to_configuration(&current, &activations),
        );
        write_exec(&repo.join("home/activate"), &home_activate(&activations));
        std::fs::write(
            repo.join("flake.lock"),
            "{\"nodes\":{\"root\":{}},\"root\":\"root\",\"version\":7}\n",
        )
        .unwrap();
        let salt = dir.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::write(repo.join("flake.nix"), flake(&salt, "1.0", exit)).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "hello 1.0"]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        let booted_link = dir.join("booted");
        root.sh(
            &dir,
            &format!(
                "nix {FEATURES} build --out-link {booted} '{repo}#nixosConfigurations.{HOST}.config.system.build.toplevel' && nix-env -p {profile} --set $(readlink {booted}) && ln -s $(readlink {booted}) {current}",
                booted = booted_link.display(),
                repo = repo.display(),
                profile = profile.display(),
                current = current.display()
            ),
        );
        let booted = root.resolve(&dir, &booted_link);
        let state = dir.join("state");
        let stasysmo = dir.join("stasysmo");
        std::fs::create_dir_all(&stasysmo).unwrap();
        let fx = Fixture {
            tmp,
            repo,
            state,
            stasysmo,
            head,
        };
        Some(Host {
            root,
            dash: dashboard().await,
            fx,
            profile,
            current,
            activations,
            booted,
            salt,
            home_manager: std::cell::Cell::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        self.fx.tmp.path()
    }

    /// The agent inside the root, on this host's profile and running system.
    pub fn agent(&self) -> AgentBuilder {
        let agent = AgentBuilder::new(&self.dash.ws_url(), HOST, &self.fx)
            .in_root(&self.root, self.dir())
            .env("USER", "root")
            .env("NIXFLEET_STOP_GRACE_MS", "2000")
            .env("NIXFLEET_CURRENT_SYSTEM", self.current.to_str().unwrap())
            .env("NIXFLEET_SYSTEM_PROFILE", self.profile.to_str().unwrap());
        if self.home_manager.get() {
            agent
                .env("NIXFLEET_SWITCH_TOOL", "home-manager")
                .env("NIXFLEET_HOME_MANAGER_USER", HM_USER)
                .env("HOME_MANAGER_BACKUP_EXT", "bak")
        } else {
            agent
        }
    }

    /// Commits the flake with `hello` and the activation's exit code.
    pub fn commit(&self, hello: &str, exit: i32) -> String {
        commit_file(&self.fx.repo, "flake.nix", &flake(&self.salt, hello, exit))
    }

    /// Runs `script` in the root (as the test's host), returns stdout.
    pub fn sh(&self, script: &str) -> String {
        self.root.sh(self.dir(), script)
    }

    /// The store path `link` names.
    pub fn resolve(&self, link: &Path) -> String {
        self.root.resolve(self.dir(), link)
    }

    /// The system profile's generations (`nix-env --list-generations`):
    /// their numbers, and the current one.
    pub fn generations(&self, profile: &Path) -> (Vec<u32>, u32) {
        let out = self.sh(&format!(
            "nix-env -p '{}' --list-generations",
            profile.display()
        ));
        let mut all = Vec::new();
        let mut current = 0;
        for line in out.lines() {
            let n: u32 = line.split_whitespace().next().unwrap().parse().unwrap();
            all.push(n);
            if line.contains("(current)") {
                current = n;
            }
        }
        (all, current)
    }

    /// The store path the flake's NixOS system evaluates to now.
    pub fn evaluated(&self) -> String {
        self.sh(&format!(
            "nix {FEATURES} eval --raw '{}#nixosConfigurations.{HOST}.config.system.build.toplevel.outPath'",
            self.fx.repo.display()
        ))
    }

    /// Whether the store holds `path` (a store path inside the root).
    pub fn in_store(&self, path: &str) -> bool {
        self.root.outside(Path::new(path)).exists()
    }

    /// The GC roots that keep `path` alive (`nix-store --query --roots`).
    pub fn roots_of(&self, path: &str) -> String {
        self.sh(&format!("nix-store --query --roots '{path}'"))
    }

    pub fn activations(&self) -> String {
        std::fs::read_to_string(&self.activations).unwrap_or_default()
    }

    /// The output lines of the command between `after` and `until`.
    pub fn output(&self, after: u64, until: u64) -> Vec<String> {
        self.dash
            .frames(HOST, Some("output"))
            .into_iter()
            .filter(|f| f.seq > after && f.seq < until)
            .map(|f| f.payload["line"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The first output line after `after` containing `needle`.
    pub async fn line(&self, after: u64, needle: &str) -> String {
        let found = self
            .dash
            .wait_until(WAIT, |d| {
                d.frames(HOST, Some("output"))
                    .into_iter()
                    .filter(|f| f.seq > after)
                    .filter_map(|f| f.payload["line"].as_str().map(str::to_string))
                    .find(|l| l.contains(needle))
            })
            .await;
        found.unwrap_or_else(|| {
            panic!(
                "no output line with {needle:?} on Nix {}; output: {:#?}",
                self.root.nix,
                self.output(after, u64::MAX)
            )
        })
    }

    /// After the command sent at `after`: lets the agent exit for its
    /// restart (101), starts the next agent process as systemd would, and
    /// returns the command's status (sent before the restart) once the next
    /// agent registered.
    pub async fn restarted(&self, agent: &mut Agent, after: u64) -> (Frame, Agent) {
        let exit = agent.wait_exit(WAIT * 3).await;
        assert_eq!(
            exit.code(),
            Some(101),
            "the agent restarts into the new system (Nix {}); output: {:#?}",
            self.root.nix,
            self.output(after, u64::MAX)
        );
        let next = self.agent().spawn();
        let st = self
            .dash
            .wait_frame(HOST, "status", after, WAIT * 3)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no status on Nix {}; output: {:#?}",
                    self.root.nix,
                    self.output(after, u64::MAX)
                )
            });
        wait_register(&self.dash, HOST, st.seq).await;
        (st, next)
    }
}

pub fn text(p: &Value, key: &str) -> String {
    p[key].as_str().unwrap_or_default().to_string()
}

/// A host test directory's script: `hosts/<HOST>/<dir>/<name>`.
pub fn host_test_dir(repo: &Path, dir: &str, name: &str, body: &str) {
    let path = repo.join("hosts").join(HOST).join(dir).join(name);
    write_exec(&path, &format!("#!/bin/sh\n{body}\n"));
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", name]);
}
