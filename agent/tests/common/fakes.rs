//! Fake `nix`, `nix-env`, a built system and the rebuild tools for the
//! end-to-end tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Fixture;

/// Fake tools in `<tmp>/bin`, controlled by files in `<tmp>/fake`; they print
/// what the real ones print where the agent reads it.
/// - `nix build --dry-run`: prints `nix.plan` (what Nix's `printMissing`
///   prints) and appends its argv to `nix-dry-run.argv`, or fails with
///   `nix.plan.fail`.
/// - `nix --version`: prints `nix.version` (default `nix (Nix) 2.34.0`, as
///   Nix 2.34 prints it).
/// - `nix build --json --out-link L …`: appends its argv to
///   `nix-build.argv`, prints a build line on stderr, links `L` and prints
///   Nix's JSON naming the built system's store path ([`Fakes::system`], or
///   the path in `nix.out`);
///   with `build.wait` it announces `build.waiting` and waits for
///   `build.go`; with `build.fail` it fails like an evaluation error (exit 1).
/// - `nix store diff-closures`: prints `nix.diff`; `nix path-info
///   --closure-size`: prints `nix.sizes`.
/// - any other `nix` (`flake update`): argv to `nix.argv`.
/// - `nix-env -p P --set S`: argv to `nix-env.argv`, and `P` becomes a link
///   to a new generation link `P-<n>-link` → `S`, as nix-env makes it;
///   `nix-env -p P --rollback`: `P` names the generation before (or fails
///   as nix-env does when there is none).
/// - the built system's `bin/switch-to-configuration <action>` and its
///   `activate` (nix-darwin, Home Manager): `dry-activate` prints
///   `units.would` on stderr; anything else writes its argv to
///   `rebuild.argv`, prints "activating the configuration..." on stderr,
///   points the link named in `current.link` (if any) at the system unless
///   the action is `boot`;
///   with `rebuild.wait`, announces `rebuild.waiting` and waits for
///   `rebuild.go`; prints "starting the following units: nginx.service" on
///   stderr and "switched"; with `rebuild.fail`, fails like a boot loader
///   installation (exit 1); at the end touches `rebuild.done`.
pub struct Fakes {
    /// Directory of the fake tools (first on `PATH`).
    pub bin: PathBuf,
    /// Directory of the files that control them.
    pub dir: PathBuf,
    /// The fake Nix store (`NIXFLEET_NIX_STORE`).
    pub store: PathBuf,
    /// The system profile (`NIXFLEET_SYSTEM_PROFILE`).
    pub profile: PathBuf,
    /// The store path the fake `nix build` builds by default.
    pub system: PathBuf,
    /// The fake activation (`bin/switch-to-configuration`, `activate`).
    activate: String,
}

/// The store directory's name of the default built system.
pub const BUILT: &str = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-new-26.05";

impl Fakes {
    /// Fake tools for the fixture.
    pub fn new(fx: &Fixture) -> Fakes {
        let bin = fx.tmp.path().join("bin");
        let dir = fx.tmp.path().join("fake");
        let store = fx.tmp.path().join("store");
        let profile = fx.tmp.path().join("profiles/system");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
        let d = dir.display();
        let activate = format!(
            r#"#!/bin/sh
if [ "$1" = dry-activate ]; then
  [ -e {d}/units.would ] && cat {d}/units.would >&2
  exit 0
fi
printf '%s\n' "$@" > {d}/rebuild.argv
echo "activating the configuration..." >&2
# the activation points /run/current-system at the system (a test names
# its link in current.link)
if [ -e {d}/current.link ] && [ "$1" != boot ]; then
  sys=$(cd "$(dirname "$0")" && pwd -P)
  [ "$(basename "$sys")" = bin ] && sys=$(dirname "$sys")
  ln -sfn "$sys" "$(cat {d}/current.link)"
fi
if [ -e {d}/rebuild.wait ]; then
  touch {d}/rebuild.waiting
  # ends with its test: gone with the test's directory
  while [ ! -e {d}/rebuild.go ]; do [ -d {d} ] || exit 1; sleep 0.02; done
fi
echo "starting the following units: nginx.service" >&2
if [ -e {d}/rebuild.fail ]; then
  echo "Failed to install bootloader" >&2
  exit 1
fi
echo "switched"
touch {d}/rebuild.done
"#
        );
        let system = store.join(BUILT);
        write_exec(&system.join("bin/switch-to-configuration"), &activate);
        write_exec(&system.join("activate"), &activate);
        std::fs::write(system.join("nixos-version"), "26.05.fake\n").unwrap();
        std::fs::write(
            system.join("darwin-version"),
            "{\"darwinLabel\":\"26.05.fake\"}\n",
        )
        .unwrap();
        let sys = system.display();
        write_exec(
            &bin.join("nix"),
            &format!(
                r#"#!/bin/sh
if [ "$1" = --version ]; then
  if [ -e {d}/nix.version ]; then cat {d}/nix.version; else echo 'nix (Nix) 2.34.0'; fi
  exit 0
fi
out_link=
prev=
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then
    printf '%s\n' "$*" >> {d}/nix-dry-run.argv
    if [ -e {d}/nix.plan.fail ]; then
      echo "error: attribute 'frobnicator' missing" >&2
      exit 1
    fi
    [ -e {d}/nix.plan ] && cat {d}/nix.plan >&2
    exit 0
  fi
  [ "$prev" = --out-link ] && out_link="$arg"
  case "$prev $arg" in
    "store diff-closures") [ -e {d}/nix.diff ] && cat {d}/nix.diff; exit 0 ;;
    "path-info --closure-size") [ -e {d}/nix.sizes ] && cat {d}/nix.sizes; exit 0 ;;
  esac
  prev="$arg"
done
case " $* " in
  *" build "*)
    printf '%s\n' "$*" >> {d}/nix-build.argv
    if [ -e {d}/build.wait ]; then
      touch {d}/build.waiting
      while [ ! -e {d}/build.go ]; do [ -d {d} ] || exit 1; sleep 0.02; done
    fi
    if [ -e {d}/build.fail ]; then
      echo "error: attribute 'frobnicator' missing" >&2
      echo "(use '--show-trace' to show detailed location information)" >&2
      exit 1
    fi
    out={sys}
    [ -e {d}/nix.out ] && out=$(cat {d}/nix.out)
    echo "building '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-new-26.05.drv'..." >&2
    [ -n "$out_link" ] && ln -sfn "$out" "$out_link"
    printf '[{{"drvPath":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-new-26.05.drv","outputs":{{"out":"%s"}},"startTime":0,"stopTime":0}}]\n' "$out"
    exit 0 ;;
esac
printf '%s\n' "$@" > {d}/nix.argv
echo 'updated input nixpkgs' >&2
"#
            ),
        );
        write_exec(
            &bin.join("nix-env"),
            &format!(
                r#"#!/bin/sh
printf '%s\n' "$@" > {d}/nix-env.argv
if [ "$1" = -p ] && [ "$3" = --set ]; then
  n=1
  while [ -e "$2-$n-link" ] || [ -L "$2-$n-link" ]; do n=$((n+1)); done
  ln -s "$4" "$2-$n-link" && ln -sfn "$(basename "$2")-$n-link" "$2"
  exit $?
fi
if [ "$1" = -p ] && [ "$3" = --rollback ]; then
  base=$(basename "$2")
  cur=$(readlink "$2"); n=${{cur#"$base"-}}; n=${{n%-link}}
  m=$((n - 1))
  while [ "$m" -gt 0 ] && [ ! -L "$2-$m-link" ]; do m=$((m - 1)); done
  if [ "$m" -le 0 ]; then
    echo "error: no generation older than the current ($n) exists" >&2
    exit 1
  fi
  echo "switching profile from version $n to $m" >&2
  ln -sfn "$base-$m-link" "$2"
  exit 0
fi
echo "error: unsupported fake nix-env call: $*" >&2
exit 1
"#
            ),
        );
        Fakes {
            bin,
            dir,
            store,
            profile,
            system,
            activate,
        }
    }

    /// Makes `dir` a system the fake activation activates, and what the
    /// fake `nix build` builds.
    pub fn build_system_at(&self, dir: &Path) {
        self.system_at(dir);
        std::fs::write(self.file("nix.out"), dir.to_str().unwrap()).unwrap();
    }

    /// Makes `dir` a system the fake activation activates.
    pub fn system_at(&self, dir: &Path) {
        write_exec(&dir.join("bin/switch-to-configuration"), &self.activate);
        write_exec(&dir.join("activate"), &self.activate);
        // what a NixOS system and a nix-darwin system hold beside them
        std::fs::write(dir.join("nixos-version"), "26.05.fake\n").unwrap();
        std::fs::write(
            dir.join("darwin-version"),
            "{\"darwinLabel\":\"26.05.fake\"}\n",
        )
        .unwrap();
    }

    /// The system profile with one generation per system, in order, as
    /// nix-env makes them (`system-<n>-link`); the last is current.
    pub fn generations(&self, systems: &[&Path]) {
        let name = self.profile.file_name().unwrap().to_str().unwrap();
        for (i, system) in systems.iter().enumerate() {
            self.system_at(system);
            let link = self
                .profile
                .with_file_name(format!("{name}-{}-link", i + 1));
            std::os::unix::fs::symlink(system, link).unwrap();
        }
        let _ = std::fs::remove_file(&self.profile);
        std::os::unix::fs::symlink(format!("{name}-{}-link", systems.len()), &self.profile)
            .unwrap();
    }

    /// `PATH` with the fakes first.
    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// A control file.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a control file.
    pub fn touch(&self, name: &str) {
        std::fs::write(self.file(name), "").unwrap();
    }

    /// The installable the last `nix build` built (its last argument).
    pub fn built_installable(&self) -> String {
        let argv = self.read("nix-build.argv");
        let last = argv.lines().last().unwrap_or_default();
        last.rsplit(' ').next().unwrap_or_default().to_string()
    }

    /// Reads a control file (empty when missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }
}

/// Writes an executable script.
pub fn write_exec(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
