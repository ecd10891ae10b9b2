//! Real Nix for the end-to-end tests: a Debian root per Nix version
//! (bookworm's 2.8, trixie's 2.26, sid's 2.34), made once by
//! `checks/realnix/make-root.sh` and kept in `NIXFLEET_NIX_ROOTS` (default
//! `/var/cache/nixfleet-agent-tests`), and the way the agent runs in one: in
//! a mount namespace of its own (`unshare --mount`), `chroot`ed into the
//! root with `/dev`, `/proc`, a fresh `/tmp`, the test's directory and the
//! agent's binary bound in at the same paths. Nix there has its own store
//! (`<root>/nix/store`), no daemon, no sandbox and no binary cache.
//!
//! A root that is missing is made when the tests run as root with
//! `debootstrap`; else the test says how to get it and is skipped, unless
//! `NIXFLEET_REAL_NIX=require` (CI), which fails it.

use std::ffi::{OsStr, OsString};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian suites whose Nix the tests run, and the Nix each ships.
pub const SUITES: [(&str, &str); 3] = [("bookworm", "2.8"), ("trixie", "2.26"), ("sid", "2.34")];

/// What the host twin's root has besides Nix and git: the container's
/// systemd, its system bus, `kill`, and the PAM module that gives a user
/// manager its runtime directory.
pub const TWIN_PACKAGES: &[&str] = &["systemd", "dbus", "procps", "libpam-systemd"];

/// Where the agent's binary appears inside a root.
pub const AGENT_IN_ROOT: &str = "/tmp/nixfleet-agent-bin/nixfleet-agent";

/// `PATH` inside a root (and for `unshare`, `mount`, `chroot` outside it).
pub const ROOT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A Debian root with one version of Nix.
#[derive(Debug, Clone)]
pub struct NixRoot {
    /// The Debian suite.
    pub suite: &'static str,
    /// The Nix version its nix-bin ships (major.minor).
    pub nix: &'static str,
    /// The root's directory.
    pub dir: PathBuf,
    /// The Debian packages it has besides Nix, git and the base system.
    pub extra: &'static [&'static str],
}

/// Mounts what a command in a root needs, then runs it there:
/// `sh -c SCRIPT sh ROOT SRC DST … -- PROGRAM ARGS…`.
const ENTER: &str = r#"set -e
r=$1; shift
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
while [ "$1" != -- ]; do
  src=$1; dst=$2; shift 2
  if [ -d "$src" ]; then mkdir -p "$r$dst"; else mkdir -p "$r$(dirname "$dst")"; : > "$r$dst"; fi
  mount --bind "$src" "$r$dst"
done
shift
exec chroot "$r" "$@"
"#;

fn roots_dir() -> PathBuf {
    std::env::var_os("NIXFLEET_NIX_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixfleet-agent-tests"))
}

fn required() -> bool {
    std::env::var("NIXFLEET_REAL_NIX").is_ok_and(|v| v == "require")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(name: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(std::env::split_paths(ROOT_PATH))
        .any(|d| d.join(name).is_file())
}

/// The script that makes a root.
fn make_root_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../checks/realnix/make-root.sh")
}

impl NixRoot {
    /// The root of `suite`, made now when missing and possible; `None`
    /// (with a message on how to get it) when it cannot be had here and is
    /// not required.
    pub fn get(suite: &'static str) -> Option<NixRoot> {
        let nix = SUITES
            .iter()
            .find(|(s, _)| *s == suite)
            .map(|(_, v)| *v)
            .expect("a known suite");
        NixRoot::get_or_make(suite, suite, nix, &[], required())
    }

    /// The host twin's root (`agent/tests/twin/`): trixie's Nix with the
    /// container's own systemd, D-Bus and procps, in `twin` beside the
    /// others; made like them, and required where `required` says so.
    pub fn twin(required: bool) -> Option<NixRoot> {
        NixRoot::get_or_make("twin", "trixie", "2.26", TWIN_PACKAGES, required)
    }

    fn get_or_make(
        name: &str,
        suite: &'static str,
        nix: &'static str,
        extra: &'static [&'static str],
        required: bool,
    ) -> Option<NixRoot> {
        let dir = roots_dir().join(name);
        let root = NixRoot {
            suite,
            nix,
            dir,
            extra,
        };
        if root.ready() {
            return Some(root);
        }
        let how = format!(
            "as root with debootstrap: bash checks/realnix/make-root.sh {suite} {} {}",
            root.dir.display(),
            extra.join(" ")
        );
        if !is_root() || !on_path("debootstrap") || !on_path("unshare") {
            assert!(
                !required,
                "a Nix {} root at {} is required and cannot be made here (needs root, debootstrap, unshare); make it {how}",
                root.nix,
                root.dir.display()
            );
            eprintln!(
                "SKIPPED: real Nix {} ({name}): no root at {}; make it {how}",
                root.nix,
                root.dir.display()
            );
            return None;
        }
        // one maker at a time, across test threads and test processes
        std::fs::create_dir_all(roots_dir()).expect("roots directory");
        let lock = std::fs::File::create(roots_dir().join(format!("{name}.lock"))).expect("lock");
        // SAFETY: flock on a file we own; released when `lock` closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        if !root.ready() {
            eprintln!("making the Nix {} root ({name}): {how}", root.nix);
            let ok = Command::new("bash")
                .arg(make_root_script())
                .arg(suite)
                .arg(&root.dir)
                .args(extra)
                .status()
                .expect("run make-root.sh")
                .success();
            assert!(ok, "make-root.sh {suite} failed; its message is above");
        }
        Some(root)
    }

    /// Made, with its extra packages (the marker names them).
    fn ready(&self) -> bool {
        std::fs::read_to_string(self.dir.join(".nixfleet-root-ready"))
            .is_ok_and(|made| made == self.extra.join(" "))
    }

    /// A command that runs `program args` inside the root, with each
    /// `(source, target)` of `binds` mounted (targets under `/tmp`).
    pub fn command(&self, binds: &[(&Path, &Path)], program: &OsStr, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(self.args(binds, program, args));
        cmd
    }

    /// The program and arguments of [`NixRoot::command`] (for a command
    /// built elsewhere).
    pub fn args(
        &self,
        binds: &[(&Path, &Path)],
        program: &OsStr,
        args: &[&OsStr],
    ) -> Vec<OsString> {
        let mut v: Vec<OsString> = [
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            ENTER,
            "sh",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        v.push(self.dir.clone().into_os_string());
        for (src, dst) in binds {
            assert!(dst.starts_with("/tmp"), "a bind's target is under /tmp");
            v.push(src.as_os_str().to_owned());
            v.push(dst.as_os_str().to_owned());
        }
        v.push("--".into());
        v.push(program.to_owned());
        v.extend(args.iter().map(|a| a.to_os_string()));
        v
    }

    /// Runs `sh -c script` in the root with `dir` bound at its own path and
    /// a plain environment (`HOME` = `dir`); returns stdout, panicking
    /// (with stderr) when it fails.
    pub fn sh(&self, dir: &Path, script: &str) -> String {
        let out = self
            .command(
                &[(dir, dir)],
                OsStr::new("/bin/sh"),
                &[OsStr::new("-c"), OsStr::new(script)],
            )
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("HOME", dir)
            .env("USER", "root")
            .output()
            .expect("run a command in the root");
        assert!(
            out.status.success(),
            "in the {} root, `{script}` failed: {}",
            self.suite,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A path inside the root as seen from outside (`/nix/store/…` →
    /// `<root>/nix/store/…`).
    pub fn outside(&self, path: &Path) -> PathBuf {
        self.dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The store path `link` (a link chain inside the root) resolves to.
    pub fn resolve(&self, dir: &Path, link: &Path) -> String {
        self.sh(dir, &format!("readlink -f '{}'", link.display()))
    }
}

/// The system string of this machine, as Nix names it.
pub fn nix_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}
