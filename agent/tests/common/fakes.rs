//! Fake `nixos-rebuild`, `darwin-rebuild` and `nix` for the end-to-end tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Fixture;

/// Fake tools in `<tmp>/bin`, controlled by files in `<tmp>/fake`:
/// - `nixos-rebuild`/`darwin-rebuild`: write their argv to `rebuild.argv`,
///   print a line on stdout and stderr; with `rebuild.wait` present, announce
///   `rebuild.waiting` and wait for `rebuild.go`; with `rebuild.fail`, print an
///   error on stderr and exit 1.
/// - `nix`: writes its argv to `nix.argv`; `nix build --dry-run` prints
///   `nix.plan` (what Nix's dry run prints) and appends its argv to
///   `nix-dry-run.argv`, or fails with `nix.plan.fail`.
pub struct Fakes {
    /// Directory of the fake tools (first on `PATH`).
    pub bin: PathBuf,
    /// Directory of the files that control them.
    pub dir: PathBuf,
}

impl Fakes {
    /// Fake tools for the fixture.
    pub fn new(fx: &Fixture) -> Fakes {
        let bin = fx.tmp.path().join("bin");
        let dir = fx.tmp.path().join("fake");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let rebuild = format!(
            r#"#!/bin/sh
printf '%s\n' "$@" > {d}/rebuild.argv
echo "building the system configuration..." >&2
echo "these 3 derivations will be built"
if [ -e {d}/rebuild.wait ]; then
  touch {d}/rebuild.waiting
  # ends with its test: gone with the test's directory
  while [ ! -e {d}/rebuild.go ]; do [ -d {d} ] || exit 1; sleep 0.02; done
  echo "activating the configuration..."
fi
if [ -e {d}/rebuild.fail ]; then
  echo "error: attribute 'frobnicator' missing" >&2
  echo "(use '--show-trace' to show detailed location information)" >&2
  exit 1
fi
echo "switched"
touch {d}/rebuild.done
"#
        );
        for tool in ["nixos-rebuild", "darwin-rebuild"] {
            write_exec(&bin.join(tool), &rebuild);
        }
        // `nix build --dry-run`: what Nix's printMissing prints, from
        // `nix.plan` (nothing missing without it), its argv appended to
        // `nix-dry-run.argv`; `nix.plan.fail`: an evaluation error, exit 1.
        // Anything else (`nix flake update`): argv to `nix.argv`.
        write_exec(
            &bin.join("nix"),
            &format!(
                r#"#!/bin/sh
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
done
printf '%s\n' "$@" > {d}/nix.argv
echo 'updated input nixpkgs' >&2
"#
            ),
        );
        Fakes { bin, dir }
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
