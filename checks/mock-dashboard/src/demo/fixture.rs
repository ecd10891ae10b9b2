//! The demo's throw-away configuration repository: test scripts, fake
//! Nix tools and systems, two `flake.lock`s, and git without the user's configuration.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// Quote for a POSIX shell.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Write an executable script.
pub(super) fn write_script(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Run git in `dir` with a fixed identity and without the user's configuration.
pub(super) async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "NixFleet demo")
        .env("GIT_AUTHOR_EMAIL", "demo@nixfleet.invalid")
        .env("GIT_COMMITTER_NAME", "NixFleet demo")
        .env("GIT_COMMITTER_EMAIL", "demo@nixfleet.invalid")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(super) const T01: &str =
    "#!/bin/sh\necho 'T01 ping: reaching the configuration'\necho 'T01 ping: pong'\nexit 0\n";

pub(super) const T02: &str =
    "#!/bin/sh\nfor i in 1 2 3; do\n  echo \"T02 slow: step $i of 3\"\n  sleep 0.3\ndone\nexit 0\n";

/// A fake `nix` that prints what Nix prints where the agent reads it: the
/// dry run (`printMissing`), the build (its out-link and the store path of
/// `built` on stdout), `store diff-closures` and `path-info --closure-size`,
/// so that the switch's preview has something to show.
pub(super) fn nix(previous: &Path, built: &Path) -> String {
    let (previous, built) = (
        sh_quote(&previous.to_string_lossy()),
        sh_quote(&built.to_string_lossy()),
    );
    format!(
        r#"#!/bin/sh
if [ "$1" = --version ]; then
  echo 'nix (Nix) 2.34.0'
  exit 0
fi
prev=
building=
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then
    cat >&2 <<'EOF'
these 2 derivations will be built:
  /nix/store/0i8lx7xq5vq4n5jqm3pw6a2dz1zc9m8y-nixos-system-demo-host-26.05.drv
  /nix/store/1k9vj3w7b2a8m0c6xhq4s5d7f8g9h0j2-etc.drv
these 3 paths will be fetched (4.20 MiB download, 17.80 MiB unpacked):
  /nix/store/2m4n6p8q0r2s4t6v8w0x2y4z6a8b0c2d-hello-2.12.2
  /nix/store/3n5p7q9r1s3t5v7w9x1y3z5a7b9c1d3f-nginx-1.28.0
  /nix/store/4p6q8r0s2t4v6w8x0y2z4a6b8c0d2f4g-openssl-3.5.1
EOF
    exit 0
  fi
  [ "$prev" = --out-link ] && ln -sfn {built} "$arg"
  case "$prev $arg" in
    "store diff-closures")
      printf '%s\n' 'hello: ∅ → 2.12.2, +268.9 KiB' 'nginx: 1.26.3 → 1.28.0, +102.4 KiB' 'nano: 8.4 → ∅, -2876.3 KiB'
      exit 0 ;;
    "path-info --closure-size")
      printf '%s\t%s\n' {previous} 1073741824 {built} 1090519040
      exit 0 ;;
    "build --json") building=1 ;;
  esac
  prev="$arg"
done
if [ -n "$building" ]; then
  echo "building '/nix/store/0i8lx7xq5vq4n5jqm3pw6a2dz1zc9m8y-nixos-system-demo-host-26.05.drv'..." >&2
  printf '[{{"drvPath":"/nix/store/0i8lx7xq5vq4n5jqm3pw6a2dz1zc9m8y-nixos-system-demo-host-26.05.drv","outputs":{{"out":"%s"}}}}]\n' {built}
  exit 0
fi
echo 'nix (demo fake): nothing to do' >&2
"#
    )
}

/// The built system's `switch-to-configuration` (and `activate`): its
/// `dry-activate` says what would change, like the real one.
const BUILT_ACTIVATION: &str = "#!/bin/sh\nif [ \"$1\" = dry-activate ]; then\n  echo 'would restart the following units: nginx.service' >&2\n  echo 'would start the following units: hello.service' >&2\n  exit 0\nfi\necho \"$(basename \"$0\") (demo fake) $*\"\necho 'activating the configuration...'\nexit 0\n";

pub(super) const LOCK_V1: &str = "{\n  \"nodes\": {\n    \"nixpkgs\": {\n      \"locked\": {\"rev\": \"abc1234\", \"type\": \"github\"}\n    },\n    \"root\": {\"inputs\": {\"nixpkgs\": \"nixpkgs\"}}\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";

pub(super) const LOCK_V2: &str = "{\n  \"nodes\": {\n    \"nixpkgs\": {\n      \"locked\": {\"rev\": \"def5678\", \"type\": \"github\"}\n    },\n    \"root\": {\"inputs\": {\"nixpkgs\": \"nixpkgs\"}}\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";

/// The system before the demo's switch, for the rollback watchdog, and the
/// one the switch builds.
pub(super) struct System {
    /// Stands for `/run/current-system` (a link to the system below).
    pub(super) current: PathBuf,
    /// Stands for `/nix/var/nix/profiles/system`.
    pub(super) profile: PathBuf,
    /// Stands for `/nix/store`.
    pub(super) store: PathBuf,
}

/// A fake system the watchdog would switch back to (its
/// `switch-to-configuration` and `activate` only say so), a link to it as
/// the current system, the system the switch builds, and fake `nix`,
/// `nix-env` and `systemctl` in `bin`, so that nothing of the real host is
/// read or changed.
pub(super) fn current_system(dir: &Path, bin: &Path) -> std::io::Result<System> {
    let store = dir.join("store");
    let system = store.join("0d3m0000000000000000000000000001-nixos-system-demo-host-1");
    let built = store.join("0d3m0000000000000000000000000002-nixos-system-demo-host-2");
    std::fs::create_dir_all(built.join("bin"))?;
    write_script(
        &built.join("bin").join("switch-to-configuration"),
        BUILT_ACTIVATION,
    )?;
    write_script(&built.join("activate"), BUILT_ACTIVATION)?;
    std::fs::write(built.join("nixos-version"), "26.05.demo\n")?;
    write_script(&bin.join("nix"), &nix(&system, &built))?;
    std::fs::create_dir_all(system.join("bin"))?;
    let fake = "#!/bin/sh\necho \"$(basename \"$0\") (demo fake: the watchdog rolls back) $*\"\n";
    write_script(&system.join("bin").join("switch-to-configuration"), fake)?;
    write_script(&system.join("activate"), fake)?;
    let current = dir.join("current-system");
    std::os::unix::fs::symlink(&system, &current)?;
    write_script(
        &bin.join("nix-env"),
        "#!/bin/sh\necho \"nix-env (demo fake) $*\"\n",
    )?;
    // no units to list: the failed-units check finds none
    write_script(&bin.join("systemctl"), "#!/bin/sh\nexit 0\n")?;
    Ok(System {
        current,
        profile: dir.join("profiles").join("system"),
        store,
    })
}

/// T03 runs long only once the flag file exists, so that the first test run stays short.
pub(super) fn t03(flag: &Path) -> String {
    let flag = sh_quote(&flag.to_string_lossy());
    format!(
        "#!/bin/sh\n\
         if [ ! -e {flag} ]; then\n  echo 'T03 long: quick this time'\n  exit 0\nfi\n\
         i=1\n\
         while [ $i -le 30 ]; do\n  echo \"T03 long: still running ($i s)\"\n  sleep 1\n  i=$((i + 1))\ndone\n\
         exit 0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(t03(Path::new("/tmp/x y/flag")).contains("[ ! -e '/tmp/x y/flag' ]"));
        assert_eq!(super::super::show::short("abcdef", 4), "abc…");
    }
}
