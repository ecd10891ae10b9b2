//! The settings that make deploys safe: git's ssh host-key policy, which
//! commits may be deployed, and the rollback watchdog.

use std::path::PathBuf;
use std::time::Duration;

use super::parse::{ConfigError, Env, absolute_path, err, flag};

/// git's ssh: the key and the host-key policy.
///
/// A server listed in the system's known hosts (`NIXFLEET_SSH_KNOWN_HOSTS`,
/// default `/etc/ssh/ssh_known_hosts`, written by `programs.ssh.knownHosts`)
/// is checked strictly against it. Any other server is trusted on first use
/// and remembered in `<state>/ssh_known_hosts`, unless
/// `NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS` is set: then only the system's known
/// hosts count and an unlisted server is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// Private key for git, if any.
    pub key: Option<PathBuf>,
    /// The system's known hosts file.
    pub system_known_hosts: PathBuf,
    /// Refuse servers that are not in the system's known hosts.
    pub require_known_hosts: bool,
}

impl Default for SshSettings {
    /// No key, the system's known hosts, trust on first use for others.
    fn default() -> SshSettings {
        SshSettings {
            key: None,
            system_known_hosts: PathBuf::from(SYSTEM_KNOWN_HOSTS),
            require_known_hosts: false,
        }
    }
}

/// Which commits may be deployed (docs/commands.md, "Trusted commits").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSettings {
    /// Deploy only commits signed by one of `signers`
    /// (`NIXFLEET_REQUIRE_SIGNED_COMMITS`).
    pub require_signed: bool,
    /// SSH allowed-signers files and ASCII-armoured GPG public key files
    /// (`NIXFLEET_TRUSTED_SIGNERS`, absolute paths separated by `:`).
    pub signers: Vec<PathBuf>,
    /// Accept a branch that does not descend from the current commit in
    /// isolated mode (`NIXFLEET_ALLOW_FORCE_PUSH`).
    pub allow_force_push: bool,
}

/// The guards of a switch (docs/commands.md, "A switch, phase by phase").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    /// Free space the Nix store's filesystem keeps on top of what a switch
    /// unpacks (`NIXFLEET_MIN_FREE_SPACE`, MiB, default 2048; 0: no guard).
    pub min_free_bytes: u64,
    /// Whether a switch may build derivations on this host
    /// (`NIXFLEET_BUILD_ON_HOST`, default on); off: substitute-only.
    pub build_on_host: bool,
    /// The Nix store whose filesystem is measured (`NIXFLEET_NIX_STORE`,
    /// default `/nix/store`); a built system must lie in it.
    pub nix_store: PathBuf,
    /// Where NixOS's boot loader copies kernels and initrds
    /// (`NIXFLEET_BOOT_DIR`, default `/boot`), guarded when it is a
    /// filesystem of its own.
    pub boot_dir: PathBuf,
}

/// Default of [`GuardSettings::min_free_bytes`]: 2 GiB.
pub const DEFAULT_MIN_FREE_MIB: u64 = 2048;

pub(super) fn guard_settings(env: &Env<'_>) -> Result<GuardSettings, ConfigError> {
    Ok(GuardSettings {
        min_free_bytes: match env.get("NIXFLEET_MIN_FREE_SPACE") {
            None => DEFAULT_MIN_FREE_MIB * 1024 * 1024,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(mib) if mib <= 1 << 30 => mib * 1024 * 1024,
                _ => {
                    return Err(err(
                        "NIXFLEET_MIN_FREE_SPACE",
                        format!(
                            "{v:?} is not a number of MiB (0 turns the guard off); unset it for {DEFAULT_MIN_FREE_MIB}"
                        ),
                    ));
                }
            },
        },
        build_on_host: flag(env, "NIXFLEET_BUILD_ON_HOST", true)?,
        nix_store: absolute_path(env, "NIXFLEET_NIX_STORE")?
            .unwrap_or_else(|| PathBuf::from("/nix/store")),
        boot_dir: absolute_path(env, "NIXFLEET_BOOT_DIR")?
            .unwrap_or_else(|| PathBuf::from("/boot")),
    })
}

/// The rollback watchdog (docs/commands.md, "Automatic rollback").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackSettings {
    /// Switch back when the new generation does not confirm
    /// (`NIXFLEET_ROLLBACK_ON_FAILURE`, default on).
    pub enabled: bool,
    /// How long the new generation has to register and pass its health
    /// checks (`NIXFLEET_ROLLBACK_DEADLINE`, seconds, default 120).
    pub deadline: Duration,
    /// The system profile set back on a rollback (`NIXFLEET_SYSTEM_PROFILE`).
    pub system_profile: PathBuf,
    /// How long a switch's activation may run before it is stopped
    /// (`NIXFLEET_ACTIVATION_TIMEOUT`, seconds, default 900).
    pub activation_timeout: Duration,
}

impl Default for RollbackSettings {
    fn default() -> RollbackSettings {
        RollbackSettings {
            enabled: true,
            deadline: Duration::from_secs(120),
            system_profile: PathBuf::from(SYSTEM_PROFILE),
            activation_timeout: Duration::from_secs(900),
        }
    }
}

/// The system profile of NixOS and nix-darwin.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// The system-wide known hosts file of NixOS and nix-darwin.
pub const SYSTEM_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

pub(super) fn trust_settings(env: &Env<'_>) -> Result<TrustSettings, ConfigError> {
    const VAR: &str = "NIXFLEET_TRUSTED_SIGNERS";
    let mut signers = Vec::new();
    for part in env.get(VAR).unwrap_or_default().split(':') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let path = PathBuf::from(part);
        if !path.is_absolute() {
            return Err(err(VAR, format!("{part:?} is not an absolute path")));
        }
        if let Err(e) = std::fs::metadata(&path) {
            return Err(err(
                VAR,
                format!("cannot read {part}: {e}; name existing key files"),
            ));
        }
        signers.push(path);
    }
    let require_signed = flag(env, "NIXFLEET_REQUIRE_SIGNED_COMMITS", false)?;
    if require_signed && signers.is_empty() {
        return Err(err(
            "NIXFLEET_REQUIRE_SIGNED_COMMITS",
            "signed commits are required but NIXFLEET_TRUSTED_SIGNERS names no key file; name the allowed-signers or GPG public key files to trust",
        ));
    }
    Ok(TrustSettings {
        require_signed,
        signers,
        allow_force_push: flag(env, "NIXFLEET_ALLOW_FORCE_PUSH", false)?,
    })
}

pub(super) fn rollback_settings(env: &Env<'_>) -> Result<RollbackSettings, ConfigError> {
    let defaults = RollbackSettings::default();
    Ok(RollbackSettings {
        enabled: flag(env, "NIXFLEET_ROLLBACK_ON_FAILURE", true)?,
        deadline: seconds(env, "NIXFLEET_ROLLBACK_DEADLINE", defaults.deadline)?,
        system_profile: absolute_path(env, "NIXFLEET_SYSTEM_PROFILE")?
            .unwrap_or_else(|| PathBuf::from(SYSTEM_PROFILE)),
        activation_timeout: seconds(
            env,
            "NIXFLEET_ACTIVATION_TIMEOUT",
            defaults.activation_timeout,
        )?,
    })
}

/// A number of seconds from 1 to 86400 in `var`, or `default` when unset.
fn seconds(env: &Env<'_>, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(secs) if (1..=86_400).contains(&secs) => Ok(Duration::from_secs(secs)),
            _ => Err(err(
                var,
                format!(
                    "{v:?} is not a number of seconds from 1 to 86400; unset it for {}",
                    default.as_secs()
                ),
            )),
        },
    }
}
