//! The Nix the agent's operations run, and where Home Manager keeps its
//! profile.
//!
//! - [`NixVersion`]: what `nix --version` printed, parsed (Nix, Lix and
//!   Determinate Nix name themselves differently; each carries the Nix
//!   version it is compatible with), checked against [`MINIMUM`].
//! - [`home_manager_profile`]: the profile directory Home Manager's own
//!   activation chooses (`modules/lib-bash/activation-init.sh`, `setupVars`).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

/// The oldest Nix the agent supports: the oldest one its tests run
/// (Debian bookworm's 2.8). Every interface it uses is there: `nix build
/// --json --out-link`, `--dry-run`, `nix store diff-closures`, `nix
/// path-info --closure-size`, `nix eval --raw`, `nix flake update`, `nix-env
/// --set` and `--rollback`, all behind `--extra-experimental-features
/// 'nix-command flakes'`.
pub const MINIMUM: (u32, u32) = (2, 8);

/// How long `nix --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The Nix found on the operations' `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixVersion {
    /// The line `nix --version` printed, e.g. `nix (Nix) 2.26.3`.
    pub line: String,
    /// The Nix version it carries: major, minor, patch.
    pub version: (u32, u32, u32),
}

impl NixVersion {
    /// Parses what `nix --version` prints: `nix (Nix) 2.8.0`, `nix (Lix,
    /// like Nix) 2.91.1`, `nix (Determinate Nix 3.6.2) 2.29.0`, a
    /// `2.34.0pre…` or `2.18.1+2` build. The version is the last word that
    /// starts with a digit (Determinate's own version comes before Nix's).
    pub fn parse(text: &str) -> Option<NixVersion> {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
        if !line.starts_with("nix ") {
            return None;
        }
        let word = line
            .split_whitespace()
            .rev()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut numbers = word.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(NixVersion {
            line: line.to_string(),
            version: (major, minor, patch),
        })
    }

    /// Whether it is at least [`MINIMUM`].
    pub fn supported(&self) -> bool {
        (self.version.0, self.version.1) >= MINIMUM
    }

    /// The version as `major.minor.patch`.
    pub fn number(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

/// The minimum as people write it (`2.8`).
pub fn minimum() -> String {
    format!("{}.{}", MINIMUM.0, MINIMUM.1)
}

/// Runs `nix --version` with exactly `env` (the operations' environment, so
/// the same `nix` they would run) and returns what it found, or a message
/// naming what went wrong: not on `PATH`, failed, printed something that
/// is not a version.
pub fn detect(env: &[(OsString, OsString)]) -> Result<NixVersion, String> {
    let args = [OsStr::new("--version")];
    let out = crate::bounded::run("nix", &args, env, VERSION_TIMEOUT).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "nix is not on PATH".to_string()
        } else {
            format!("cannot run `nix --version`: {e}")
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`nix --version` failed ({}): {}",
            out.status,
            crate::util::clip(stderr.trim(), 300)
        ));
    }
    NixVersion::parse(&stdout).ok_or_else(|| {
        format!(
            "`nix --version` printed {:?}, which names no Nix version",
            crate::util::clip(stdout.trim(), 200)
        )
    })
}

/// The Nix the operations run, if it is one the agent supports; else the
/// sentence that says what was found and what is needed.
pub fn require(env: &[(OsString, OsString)]) -> Result<NixVersion, String> {
    let found =
        detect(env).map_err(|why| format!("{why}; the agent needs Nix {} or later", minimum()))?;
    if found.supported() {
        Ok(found)
    } else {
        Err(format!(
            "this host runs Nix {} (`{}`); the agent needs Nix {} or later",
            found.number(),
            found.line,
            minimum()
        ))
    }
}

/// The directory of Home Manager's profile (`home-manager`,
/// `home-manager-<n>-link`), chosen as Home Manager's activation chooses
/// it: `${XDG_STATE_HOME:-$HOME/.local/state}/nix/profiles` when that
/// directory exists (Nix 2.14 and later make it), else
/// `${NIX_STATE_DIR:-/nix/var/nix}/profiles/per-user/$USER` when that one
/// does; `Err` names both when neither does. `var` reads the user's
/// environment.
pub fn home_manager_profiles(var: &dyn Fn(&str) -> Option<OsString>) -> Result<PathBuf, String> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let state_home = match set("XDG_STATE_HOME") {
        Some(dir) => dir,
        None => set("HOME")
            .ok_or("HOME is not set: cannot find the Home Manager profile")?
            .join(".local/state"),
    };
    let user_profiles = state_home.join("nix/profiles");
    if user_profiles.is_dir() {
        return Ok(user_profiles);
    }
    let global = set("NIX_STATE_DIR")
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix"))
        .join("profiles/per-user");
    let global_profiles = set("USER").map(|user| global.join(user));
    if let Some(dir) = global_profiles.as_ref().filter(|d| d.is_dir()) {
        return Ok(dir.clone());
    }
    Err(format!(
        "no Home Manager profile directory: neither {} nor {} exists",
        user_profiles.display(),
        global_profiles
            .unwrap_or_else(|| global.join("$USER (USER is not set)"))
            .display()
    ))
}

/// Home Manager's profile link (`<profiles>/home-manager`).
pub fn home_manager_profile(var: &dyn Fn(&str) -> Option<OsString>) -> Result<PathBuf, String> {
    home_manager_profiles(var).map(|dir| dir.join("home-manager"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_nix_lix_and_determinate() {
        let v = NixVersion::parse("nix (Nix) 2.8.0\n").unwrap();
        assert_eq!(v.version, (2, 8, 0));
        assert_eq!(v.line, "nix (Nix) 2.8.0");
        assert!(v.supported());
        let lix =
            NixVersion::parse("nix (Lix, like Nix) 2.91.1\nSystem type: x86_64-linux\n").unwrap();
        assert_eq!(lix.version, (2, 91, 1));
        let det = NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0").unwrap();
        assert_eq!(det.version, (2, 29, 0));
        let pre = NixVersion::parse("nix (Nix) 2.34.0pre20260101_abcdef").unwrap();
        assert_eq!(pre.version, (2, 34, 0));
        let plus = NixVersion::parse("nix (Nix) 2.18.1+2").unwrap();
        assert_eq!(plus.version, (2, 18, 1));
        let two = NixVersion::parse("nix (Nix) 2.6").unwrap();
        assert_eq!(two.version, (2, 6, 0));
        assert!(!two.supported());
        assert!(!NixVersion::parse("nix (Nix) 2.7.9").unwrap().supported());
        assert!(NixVersion::parse("nix (Nix) 3.0.0").unwrap().supported());
    }

    #[test]
    fn what_is_not_a_version() {
        assert_eq!(NixVersion::parse(""), None);
        assert_eq!(NixVersion::parse("hello"), None);
        assert_eq!(NixVersion::parse("nix (Nix) unknown"), None);
        assert_eq!(NixVersion::parse("nix 2"), None);
        assert_eq!(NixVersion::parse("git version 2.47.3"), None);
        assert_eq!(NixVersion::parse("nix (Nix) 99999999999.1"), None);
    }

    /// A `nix` in its own directory that runs `body`; the environment
    /// whose `PATH` is only that directory.
    fn fake_nix(tmp: &std::path::Path, body: &str) -> Vec<(OsString, OsString)> {
        use std::os::unix::fs::PermissionsExt;
        let bin = tmp.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let nix = bin.join("nix");
        std::fs::write(&nix, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&nix, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![("PATH".into(), bin.into_os_string())]
    }

    #[test]
    fn require_says_what_was_found_and_what_is_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = require(&[("PATH".into(), empty.into_os_string())]).unwrap_err();
        assert_eq!(err, "nix is not on PATH; the agent needs Nix 2.8 or later");
        let env = fake_nix(tmp.path(), "echo 'nix (Nix) 2.6.0'");
        assert_eq!(
            require(&env).unwrap_err(),
            "this host runs Nix 2.6.0 (`nix (Nix) 2.6.0`); the agent needs Nix 2.8 or later"
        );
        let env = fake_nix(tmp.path(), "echo 'frobnicator 1'");
        let err = require(&env).unwrap_err();
        assert!(
            err.contains("`nix --version` printed \"frobnicator 1\", which names no Nix version"),
            "{err}"
        );
        let env = fake_nix(tmp.path(), "echo 'error: cannot open /nix/var' >&2; exit 1");
        let err = require(&env).unwrap_err();
        assert!(err.contains("`nix --version` failed"), "{err}");
        assert!(err.contains("cannot open /nix/var"), "{err}");
        let env = fake_nix(tmp.path(), "echo 'nix (Nix) 2.28.4'");
        assert_eq!(require(&env).unwrap().version, (2, 28, 4));
    }

    fn vars(pairs: &[(&str, &std::path::Path)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn home_manager_profile_as_home_manager_finds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let state = tmp.path().join("nixstate");
        let user = std::path::Path::new("alice");
        let env = vars(&[("HOME", &home), ("NIX_STATE_DIR", &state), ("USER", user)]);
        // neither exists: both are named
        let err = home_manager_profile(&env).unwrap_err();
        assert!(err.contains(".local/state/nix/profiles"), "{err}");
        assert!(err.contains("profiles/per-user/alice"), "{err}");
        // Nix before 2.14: only the per-user directory
        let per_user = state.join("profiles/per-user/alice");
        std::fs::create_dir_all(&per_user).unwrap();
        assert_eq!(
            home_manager_profile(&env).unwrap(),
            per_user.join("home-manager")
        );
        // the user's own state directory wins once it exists
        let own = home.join(".local/state/nix/profiles");
        std::fs::create_dir_all(&own).unwrap();
        assert_eq!(
            home_manager_profile(&env).unwrap(),
            own.join("home-manager")
        );
        // XDG_STATE_HOME moves it
        let xdg = tmp.path().join("xdg");
        let env = vars(&[
            ("HOME", &home),
            ("NIX_STATE_DIR", &state),
            ("USER", user),
            ("XDG_STATE_HOME", &xdg),
        ]);
        assert_eq!(
            home_manager_profile(&env).unwrap(),
            per_user.join("home-manager"),
            "XDG_STATE_HOME/nix/profiles does not exist: the per-user one"
        );
        std::fs::create_dir_all(xdg.join("nix/profiles")).unwrap();
        assert_eq!(
            home_manager_profile(&env).unwrap(),
            xdg.join("nix/profiles/home-manager")
        );
        assert!(home_manager_profile(&|_| None).is_err());
    }
}
