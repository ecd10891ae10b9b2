//! The clean environment every child of the agent gets.
//!
//! A child starts from an empty environment (`env_clear`) and receives only the
//! variables on [`PASSED`], taken from the agent's own environment, plus:
//!
//! - `PATH`: the agent's, with the well-known Nix system directories appended
//!   when missing (so `git`, `nix` and the rebuild tools are found under a bare
//!   launchd `PATH` too); a fixed default when the agent has none.
//! - `HOME`: the agent's, or the agent's state directory when unset (systemd
//!   sets no `HOME` for a root service; git and nix want one).
//! - `GIT_TERMINAL_PROMPT=0`: git never waits for a password on a terminal that
//!   is not there.
//! - `GIT_SSH_COMMAND`, when an SSH key is configured: `ssh -i '<key>'` with the
//!   key path single-quoted for the shell that git runs it through.
//!
//! Nothing else passes: no `NIXFLEET_*` variable (the token above all), no
//! `CREDENTIALS_DIRECTORY`, no variable the agent's own service manager set for
//! it alone.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Variables passed through from the agent's environment when set.
pub const PASSED: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LOCALE_ARCHIVE",
    "TZ",
    "TZDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TMPDIR",
    "NIX_PATH",
    "NIX_REMOTE",
    "NIX_CONF_DIR",
    "NIX_SSL_CERT_FILE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Directories appended to `PATH` when missing: NixOS (`/run/wrappers/bin` for
/// setuid wrappers), nix-darwin and the Nix default profile, then the usual
/// system directories.
pub const EXTRA_PATH: &[&str] = &[
    "/run/wrappers/bin",
    "/run/current-system/sw/bin",
    "/nix/var/nix/profiles/default/bin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
];

/// A child environment, computed once and applied to every child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildEnv {
    vars: Vec<(OsString, OsString)>,
}

impl ChildEnv {
    /// Builds the environment from the agent's own (`lookup`), the state
    /// directory (default `HOME`) and the configured SSH key.
    pub fn build(
        lookup: &dyn Fn(&str) -> Option<OsString>,
        state_dir: &Path,
        ssh_key: Option<&Path>,
    ) -> ChildEnv {
        let mut vars: Vec<(OsString, OsString)> = Vec::new();
        for name in PASSED {
            if let Some(value) = lookup(name) {
                vars.push((OsString::from(name), value));
            }
        }
        vars.push((OsString::from("PATH"), path_with_extras(lookup("PATH"))));
        let home = lookup("HOME")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| state_dir.as_os_str().to_owned());
        vars.push((OsString::from("HOME"), home));
        vars.push((OsString::from("GIT_TERMINAL_PROMPT"), OsString::from("0")));
        if let Some(key) = ssh_key {
            vars.push((OsString::from("GIT_SSH_COMMAND"), ssh_command(key)));
        }
        ChildEnv { vars }
    }

    /// Builds the environment from the agent's process environment.
    pub fn from_process(state_dir: &Path, ssh_key: Option<&Path>) -> ChildEnv {
        ChildEnv::build(&|name| std::env::var_os(name), state_dir, ssh_key)
    }

    /// The variables, in the order they are set.
    pub fn vars(&self) -> &[(OsString, OsString)] {
        &self.vars
    }

    /// The value of one variable, if set.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// Replaces a tokio command's environment with this one.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear();
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
    }
}

/// `PATH` with every [`EXTRA_PATH`] directory it lacks appended.
fn path_with_extras(path: Option<OsString>) -> OsString {
    let path = path.unwrap_or_default();
    let mut parts: Vec<Vec<u8>> = path
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    for extra in EXTRA_PATH {
        if !parts.iter().any(|p| p.as_slice() == extra.as_bytes()) {
            parts.push(extra.as_bytes().to_vec());
        }
    }
    OsString::from_vec(parts.join(&b':'))
}

/// Quotes `value` for a POSIX shell: single quotes, with `'` written as `'\''`.
pub fn shell_quote(value: &OsStr) -> OsString {
    let mut quoted = Vec::with_capacity(value.len() + 2);
    quoted.push(b'\'');
    for &b in value.as_bytes() {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    OsString::from_vec(quoted)
}

/// The `GIT_SSH_COMMAND` for a key: batch mode (never prompt), only this key,
/// and new host keys accepted on first contact (the daemon has nobody to ask;
/// a changed key is still refused).
fn ssh_command(key: &Path) -> OsString {
    let mut cmd = OsString::from("ssh -i ");
    cmd.push(shell_quote(key.as_os_str()));
    cmd.push(" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(vars: &[(&str, &str)], key: Option<&str>) -> ChildEnv {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        ChildEnv::build(
            &move |name| map.get(name).cloned(),
            Path::new("/var/lib/nixfleet-agent"),
            key.map(Path::new),
        )
    }

    #[test]
    fn secrets_never_pass() {
        let env = build(
            &[
                ("NIXFLEET_TOKEN", "s3cret"),
                ("NIXFLEET_TOKEN_FILE", "/run/agenix/t"),
                ("NIXFLEET_URL", "wss://x/ws"),
                ("CREDENTIALS_DIRECTORY", "/run/credentials/x"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
                ("LANG", "C.UTF-8"),
            ],
            None,
        );
        for (k, v) in env.vars() {
            let k = k.to_string_lossy();
            assert!(!k.starts_with("NIXFLEET"), "{k} passed");
            assert!(k != "CREDENTIALS_DIRECTORY" && k != "AWS_SECRET_ACCESS_KEY");
            assert!(!v.to_string_lossy().contains("s3cret"));
        }
        assert_eq!(env.get("LANG"), Some(OsStr::new("C.UTF-8")));
        assert_eq!(env.get("GIT_TERMINAL_PROMPT"), Some(OsStr::new("0")));
        assert_eq!(env.get("GIT_SSH_COMMAND"), None);
    }

    #[test]
    fn path_keeps_order_and_appends_nix_dirs() {
        let env = build(&[("PATH", "/tmp/fakes:/usr/bin")], None);
        let path = env.get("PATH").unwrap().to_string_lossy().into_owned();
        assert!(
            path.starts_with("/tmp/fakes:/usr/bin:/run/wrappers/bin:"),
            "{path}"
        );
        assert!(path.contains("/run/current-system/sw/bin"));
        assert_eq!(
            path.split(':').filter(|p| *p == "/usr/bin").count(),
            1,
            "{path}"
        );
        let empty = build(&[], None);
        assert!(
            empty
                .get("PATH")
                .unwrap()
                .to_string_lossy()
                .starts_with("/run/wrappers/bin:")
        );
    }

    #[test]
    fn home_defaults_to_state_dir() {
        assert_eq!(
            build(&[], None).get("HOME"),
            Some(OsStr::new("/var/lib/nixfleet-agent"))
        );
        assert_eq!(
            build(&[("HOME", "/root")], None).get("HOME"),
            Some(OsStr::new("/root"))
        );
    }

    #[test]
    fn ssh_key_is_quoted() {
        let env = build(&[], Some("/run/keys/it's key"));
        assert_eq!(
            env.get("GIT_SSH_COMMAND").unwrap(),
            OsStr::new(
                "ssh -i '/run/keys/it'\\''s key' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
            )
        );
    }

    #[test]
    fn quoted_path_survives_a_real_shell() {
        let tricky = OsStr::new("/tmp/a b/$(touch x)/'q'\"/;`id`");
        let script = {
            let mut s = OsString::from("printf %s ");
            s.push(shell_quote(tricky));
            s
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(out.stdout, tricky.as_bytes());
    }
}
