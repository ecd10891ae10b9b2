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
//! - `GIT_SSH_COMMAND`: `ssh` in batch mode with the host-key policy of
//!   [`SshSettings`] (strict for servers in the system's known hosts, trust on
//!   first use into `<state>/ssh_known_hosts` for others unless known hosts are
//!   required) and, when one is configured, `-i '<key>'`; every path
//!   single-quoted for the shell that git runs it through.
//!
//! Nothing else passes: no `NIXFLEET_*` variable (the token above all), no
//! `CREDENTIALS_DIRECTORY`, no variable the agent's own service manager set for
//! it alone.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::config::SshSettings;

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
    "NIX_STATE_DIR",
    // access tokens for private flake inputs, and any other Nix setting of
    // the host's owner
    "NIX_CONFIG",
    // what `home-manager switch -b <ext>` sets: the first file in the way
    // of a Home Manager activation is moved aside, not a failure
    "HOME_MANAGER_BACKUP_EXT",
    "XDG_STATE_HOME",
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
    /// Run the child as this user and group instead of the agent's.
    user: Option<(u32, u32)>,
}

impl ChildEnv {
    /// Builds the environment from the agent's own (`lookup`), the state
    /// directory (default `HOME`, and the trust-on-first-use known hosts) and
    /// the ssh settings.
    pub fn build(
        lookup: &dyn Fn(&str) -> Option<OsString>,
        state_dir: &Path,
        ssh: &SshSettings,
    ) -> ChildEnv {
        let mut vars: Vec<(OsString, OsString)> = Vec::new();
        for name in PASSED {
            if let Some(value) = lookup(name) {
                vars.push((OsString::from(name), value));
            }
        }
        // the owner's additions (NIXFLEET_PASS_ENV, checked at start)
        let extra = lookup("NIXFLEET_PASS_ENV")
            .and_then(|v| crate::config::pass_names(&v.to_string_lossy()).ok())
            .unwrap_or_default();
        for name in extra {
            let managed = ["PATH", "HOME", "GIT_TERMINAL_PROMPT", "GIT_SSH_COMMAND"];
            if PASSED.contains(&name.as_str()) || managed.contains(&name.as_str()) {
                continue;
            }
            if let Some(value) = lookup(&name) {
                vars.push((OsString::from(&name), value));
            }
        }
        vars.push((OsString::from("PATH"), path_with_extras(lookup("PATH"))));
        let home = lookup("HOME")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| state_dir.as_os_str().to_owned());
        vars.push((OsString::from("HOME"), home));
        vars.push((OsString::from("GIT_TERMINAL_PROMPT"), OsString::from("0")));
        vars.push((
            OsString::from("GIT_SSH_COMMAND"),
            ssh_command(ssh, state_dir),
        ));
        ChildEnv { vars, user: None }
    }

    /// The same environment with `safe.directory` set to `dir` for every git
    /// the child runs (`GIT_CONFIG_COUNT`, command scope, which git honours
    /// for that setting): the agent, as root, reads a checkout that belongs
    /// to another user without any system git configuration.
    ///
    /// That checkout's `.git/config` is its owner's to write, and git as root
    /// must not run what it names: command scope overrides it for the
    /// settings that start programs (`core.fsmonitor` on `git status`, hooks,
    /// the signature programs of `verify-commit`), and `GIT_OPTIONAL_LOCKS=0`
    /// keeps root's git from writing the owner's index.
    pub fn with_safe_directory(mut self, dir: &Path) -> ChildEnv {
        let settings: [(&str, &OsStr); 6] = [
            ("safe.directory", dir.as_os_str()),
            ("core.fsmonitor", OsStr::new("false")),
            ("core.hooksPath", OsStr::new("/dev/null")),
            ("gpg.program", OsStr::new("gpg")),
            ("gpg.ssh.program", OsStr::new("ssh-keygen")),
            ("gpg.x509.program", OsStr::new("gpgsm")),
        ];
        self.vars.push((
            OsString::from("GIT_CONFIG_COUNT"),
            OsString::from(settings.len().to_string()),
        ));
        for (i, (key, value)) in settings.iter().enumerate() {
            self.vars
                .push((format!("GIT_CONFIG_KEY_{i}").into(), OsString::from(key)));
            self.vars
                .push((format!("GIT_CONFIG_VALUE_{i}").into(), value.to_os_string()));
        }
        self.vars
            .push((OsString::from("GIT_OPTIONAL_LOCKS"), OsString::from("0")));
        self
    }

    /// The environment for a child run as `owner`: its uid and primary group,
    /// its `HOME`, `USER` and `LOGNAME`, and none of the agent's ssh settings
    /// (the owner's own ssh configuration, keys and known hosts apply).
    pub fn as_owner(&self, owner: &super::owner::Account) -> ChildEnv {
        let mut vars: Vec<(OsString, OsString)> = self
            .vars
            .iter()
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                // the owner's own git configuration applies to the owner's git
                !matches!(
                    &*k,
                    "HOME" | "USER" | "LOGNAME" | "GIT_SSH_COMMAND" | "GIT_OPTIONAL_LOCKS"
                ) && !k.starts_with("GIT_CONFIG_")
            })
            .cloned()
            .collect();
        vars.push((OsString::from("HOME"), owner.home.clone().into_os_string()));
        vars.push((OsString::from("USER"), OsString::from(&owner.name)));
        vars.push((OsString::from("LOGNAME"), OsString::from(&owner.name)));
        ChildEnv {
            vars,
            user: Some((owner.uid, owner.gid)),
        }
    }

    /// Builds the environment from the agent's process environment.
    pub fn from_process(state_dir: &Path, ssh: &SshSettings) -> ChildEnv {
        ChildEnv::build(&|name| std::env::var_os(name), state_dir, ssh)
    }

    /// The environment for the agent's children under `config`: from the
    /// process environment, and in legacy mode with the checkout marked safe
    /// ([`ChildEnv::with_safe_directory`]).
    pub fn for_config(config: &crate::config::Config) -> ChildEnv {
        let env = ChildEnv::from_process(&config.state_dir, &config.ssh);
        match config.repo_mode {
            crate::config::RepoMode::Legacy => env.with_safe_directory(&config.repo_dir),
            crate::config::RepoMode::Isolated { .. } => env,
        }
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

    /// The value of one variable, owned (for lookups such as
    /// [`crate::host::home_manager_profile`]).
    pub fn var(&self, name: &str) -> Option<OsString> {
        self.get(name).map(OsStr::to_os_string)
    }

    /// Replaces a tokio command's environment with this one (and its user,
    /// for [`ChildEnv::as_owner`]).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear();
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = self.user {
            // std drops root's supplementary groups when it sets the uid
            cmd.uid(uid).gid(gid);
        }
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

/// Where servers trusted on first use are remembered.
pub const TOFU_KNOWN_HOSTS: &str = "ssh_known_hosts";

/// The `GIT_SSH_COMMAND`: batch mode (never prompt), only the configured key,
/// and the host-key policy. `GlobalKnownHostsFile` is the system's file, so a
/// server listed there is checked against it and a changed key is refused.
/// Other servers are accepted on first contact into the agent's own file
/// (`accept-new`: the daemon has nobody to ask), or refused when known hosts
/// are required (`yes`, with no file of the agent's own).
fn ssh_command(ssh: &SshSettings, state_dir: &Path) -> OsString {
    let mut cmd = OsString::from("ssh");
    if let Some(key) = &ssh.key {
        cmd.push(" -i ");
        cmd.push(shell_quote(key.as_os_str()));
        cmd.push(" -o IdentitiesOnly=yes");
    }
    cmd.push(" -o BatchMode=yes -o GlobalKnownHostsFile=");
    cmd.push(shell_quote(ssh.system_known_hosts.as_os_str()));
    if ssh.require_known_hosts {
        cmd.push(" -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes");
    } else {
        cmd.push(" -o UserKnownHostsFile=");
        cmd.push(shell_quote(state_dir.join(TOFU_KNOWN_HOSTS).as_os_str()));
        cmd.push(" -o StrictHostKeyChecking=accept-new");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(key: Option<&str>, require: bool) -> SshSettings {
        SshSettings {
            key: key.map(Into::into),
            system_known_hosts: "/etc/ssh/ssh_known_hosts".into(),
            require_known_hosts: require,
        }
    }

    fn build(vars: &[(&str, &str)], key: Option<&str>) -> ChildEnv {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        ChildEnv::build(
            &move |name| map.get(name).cloned(),
            Path::new("/var/lib/nixfleet-agent"),
            &settings(key, false),
        )
    }

    /// Root's git in a checkout another user owns does not run what that
    /// user's `.git/config` names (real git, a real repository).
    #[test]
    fn git_with_a_safe_directory_runs_nothing_the_checkout_config_names() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let marker = tmp.path().join("ran");
        let evil = tmp.path().join("evil.sh");
        std::fs::write(&evil, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
        let git = |args: &[&str], env: &[(OsString, OsString)]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(&repo)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("HOME", tmp.path())
                .output()
                .unwrap()
        };
        std::fs::create_dir_all(&repo).unwrap();
        for args in [
            &["init", "-q"][..],
            &["config", "user.email", "a@b"],
            &["config", "user.name", "a"],
        ] {
            assert!(git(args, &[]).status.success());
        }
        std::fs::write(repo.join("f"), "x").unwrap();
        git(&["add", "f"], &[]);
        git(&["commit", "-qm", "f"], &[]);
        let evil = evil.to_str().unwrap();
        git(&["config", "core.fsmonitor", evil], &[]);
        git(&["config", "gpg.ssh.program", evil], &[]);
        git(&["config", "gpg.program", evil], &[]);
        // the configuration works as its owner wrote it
        git(&["status", "--porcelain"], &[]);
        assert!(
            marker.exists(),
            "the fixture's fsmonitor did not run at all"
        );
        std::fs::remove_file(&marker).unwrap();

        let env = build(&[], None).with_safe_directory(&repo);
        let out = git(&["status", "--porcelain"], env.vars());
        assert!(out.status.success(), "{out:?}");
        let _ = git(&["verify-commit", "HEAD"], env.vars());
        assert!(
            !marker.exists(),
            "root's git ran a program the checkout's config names"
        );
        // the owner's own git gets the owner's configuration
        let owner = crate::exec::owner::Account {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
        };
        let theirs = env.as_owner(&owner);
        assert!(
            theirs
                .vars()
                .iter()
                .all(|(k, _)| !k.to_string_lossy().starts_with("GIT_CONFIG"))
        );
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
        assert!(
            !env.get("GIT_SSH_COMMAND")
                .unwrap()
                .to_string_lossy()
                .contains(" -i ")
        );
    }

    /// Home Manager's backup extension and Nix's settings reach the
    /// operations; the owner may name more, never the agent's own.
    #[test]
    fn nix_config_home_manager_backups_and_named_variables_pass() {
        let env = build(
            &[
                ("NIX_CONFIG", "access-tokens = github.com=x"),
                ("HOME_MANAGER_BACKUP_EXT", "bak"),
                ("NIXFLEET_PASS_ENV", "AWS_PROFILE, CACHIX_AUTH_TOKEN"),
                ("AWS_PROFILE", "fleet"),
                ("CACHIX_AUTH_TOKEN", "c"),
                ("OTHER", "no"),
                ("NIXFLEET_TOKEN", "s3cret"),
            ],
            None,
        );
        assert_eq!(
            env.get("NIX_CONFIG"),
            Some(OsStr::new("access-tokens = github.com=x"))
        );
        assert_eq!(env.get("HOME_MANAGER_BACKUP_EXT"), Some(OsStr::new("bak")));
        assert_eq!(env.get("AWS_PROFILE"), Some(OsStr::new("fleet")));
        assert_eq!(env.get("CACHIX_AUTH_TOKEN"), Some(OsStr::new("c")));
        assert_eq!(env.get("OTHER"), None);
        assert_eq!(env.get("NIXFLEET_PASS_ENV"), None);
        // a list naming the agent's own is refused whole (the configuration
        // says so at start)
        let env = build(
            &[
                ("NIXFLEET_PASS_ENV", "NIXFLEET_TOKEN AWS_PROFILE"),
                ("AWS_PROFILE", "x"),
                ("NIXFLEET_TOKEN", "s3cret"),
            ],
            None,
        );
        assert_eq!(env.get("NIXFLEET_TOKEN"), None);
        assert_eq!(env.get("AWS_PROFILE"), None);
        assert!(crate::config::pass_names("CREDENTIALS_DIRECTORY").is_err());
        assert!(crate::config::pass_names("A=B").is_err());
        assert!(crate::config::pass_names("1X").is_err());
        assert_eq!(
            crate::config::pass_names(" A,B  C ").unwrap(),
            ["A", "B", "C"]
        );
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
                "ssh -i '/run/keys/it'\\''s key' -o IdentitiesOnly=yes -o BatchMode=yes -o GlobalKnownHostsFile='/etc/ssh/ssh_known_hosts' -o UserKnownHostsFile='/var/lib/nixfleet-agent/ssh_known_hosts' -o StrictHostKeyChecking=accept-new"
            )
        );
    }

    #[test]
    fn required_known_hosts_leave_no_file_of_its_own() {
        let env = ChildEnv::build(&|_| None, Path::new("/s"), &settings(None, true));
        assert_eq!(
            env.get("GIT_SSH_COMMAND").unwrap(),
            OsStr::new(
                "ssh -o BatchMode=yes -o GlobalKnownHostsFile='/etc/ssh/ssh_known_hosts' -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
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
