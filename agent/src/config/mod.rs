//! The agent's configuration: environment and credentials in, a validated
//! [`Config`] out. Every variable is documented in `docs/configuration.md`.
//!
//! Anything invalid is a [`ConfigError`] that names the variable and the fix;
//! `main` turns it into exit status 78 (`EX_CONFIG`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::HostType;

/// Exit status for an invalid configuration (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: i32 = 78;
/// Exit status that asks the service manager for a restart (after a switch or `restart`).
pub const EXIT_RESTART: i32 = 101;

/// Where the configuration repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoMode {
    /// The agent keeps its own clone of `url` in `dir`.
    Isolated {
        /// Git URL of the configuration repository.
        url: String,
    },
    /// An existing checkout that `pull` updates with `git pull`.
    Legacy,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Detail for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `tracing` filter directive for this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Which tool `switch` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchTool {
    /// `nixos-rebuild switch --flake <repo>#<host>`.
    NixosRebuild,
    /// `darwin-rebuild switch --flake <repo>#<host>`.
    DarwinRebuild,
    /// `home-manager switch --flake <repo>#<user>@<host>`.
    HomeManager,
}

impl SwitchTool {
    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            SwitchTool::NixosRebuild => "nixos-rebuild",
            SwitchTool::DarwinRebuild => "darwin-rebuild",
            SwitchTool::HomeManager => "home-manager",
        }
    }
}

/// Timing knobs; defaults are the protocol's, tests lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// WebSocket ping interval (10 s).
    pub ping_interval: Duration,
    /// Silence after which the connection is dead (45 s).
    pub read_deadline: Duration,
    /// First reconnect delay (1 s); the cap is 60 times this.
    pub backoff_base: Duration,
    /// SIGTERM → SIGKILL grace for `stop` (10 s).
    pub stop_grace: Duration,
    /// How long output waits on a dashboard that makes no progress (5 s).
    pub stall_timeout: Duration,
    /// How long the host may stay up after a successful reboot command
    /// before `reboot` reports that it did not happen (120 s).
    pub reboot_wait: Duration,
    /// How long the dashboard waits for a switched host's agent to register
    /// again before its switch is TIMEOUT (`lifecycle.go`: 90 s).
    pub hub_reconnect_window: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_interval: Duration::from_secs(10),
            read_deadline: Duration::from_secs(45),
            backoff_base: Duration::from_secs(1),
            stop_grace: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(5),
            reboot_wait: Duration::from_secs(120),
            hub_reconnect_window: Duration::from_secs(90),
        }
    }
}

/// The agent's own version (from Cargo.toml), shown by `--version`, `--check`,
/// `check-version` and the start-up log line. The dashboard is sent
/// [`Config::reported_version`] instead (see [`PROTOCOL_RELEASE`]).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The NixFleet release whose protocol this agent implements. The dashboard
/// compares `agent_version` with its own release for equality (upstream
/// `handlers.go`: `AgentVersion != Version` makes the Agent compartment red
/// "outdated"), so this, not the crate version, is what `register` reports
/// unless `NIXFLEET_REPORTED_VERSION` says otherwise.
pub const PROTOCOL_RELEASE: &str = "3.1.5";

/// The running system's profile link on NixOS and nix-darwin.
pub const CURRENT_SYSTEM: &str = "/run/current-system";

/// The booted system of NixOS.
pub const BOOTED_SYSTEM: &str = "/run/booted-system";

/// Linux's identity of the current boot.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Default heartbeat interval: upstream's module and agent default, and the
/// rhythm the dashboard's "last seen" colours assume (≤ 10 s green).
pub const DEFAULT_INTERVAL_SECS: u64 = 5;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Dashboard WebSocket URL (`ws://` or `wss://`).
    pub url: String,
    /// The agent's token, as read at start.
    pub token: Token,
    /// Where it was read from (read again after a 401 and every minute).
    pub token_source: TokenSource,
    /// Isolated (own clone) or legacy (existing checkout).
    pub repo_mode: RepoMode,
    /// Local path of the configuration repository.
    pub repo_dir: PathBuf,
    /// Branch followed in isolated mode.
    pub branch: String,
    /// Heartbeat interval in seconds (≥ 1; default [`DEFAULT_INTERVAL_SECS`]).
    pub interval_secs: u64,
    /// Where the metrics endpoint listens (`NIXFLEET_METRICS_LISTEN`,
    /// `host:port`); `None`: off, nothing listens.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The agent's own watchdog (`NIXFLEET_WATCHDOG_SEC`, for launchd, which
    /// has none): exit when the runtime stalls this long. `None`: off (and
    /// always off under systemd's own watchdog).
    pub watchdog: Option<Duration>,
    /// What `register` reports as `agent_version` (default [`PROTOCOL_RELEASE`]).
    pub reported_version: String,
    /// How git's ssh authenticates and checks host keys.
    pub ssh: SshSettings,
    /// Which commits may be deployed.
    pub trust: TrustSettings,
    /// The rollback watchdog.
    pub rollback: RollbackSettings,
    /// The guards before a switch (free space, local builds).
    pub guard: GuardSettings,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Name reported to the dashboard.
    pub hostname: String,
    /// `nixos` or `macos`.
    pub host_type: HostType,
    /// `home`, `work` or `cloud`.
    pub location: String,
    /// `server`, `desktop`, `laptop` or `gaming`.
    pub device_type: String,
    /// `#rrggbb` or empty.
    pub theme_color: String,
    /// Configured nixpkgs version (used when it cannot be detected).
    pub nixpkgs_version: Option<String>,
    /// Flake reference that `switch` builds.
    pub flake: String,
    /// Tool that `switch` runs.
    pub switch_tool: SwitchTool,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// Directory of the per-command log files.
    pub log_dir: PathBuf,
    /// Extra CA certificates (PEM) for the dashboard's TLS.
    pub ca_file: Option<PathBuf>,
    /// Where StaSysMo's metric files are, if not the default.
    pub stasysmo_dir: Option<PathBuf>,
    /// The running system's profile link (`/run/current-system`), read by
    /// `refresh-system` and `check-version`.
    pub current_system: PathBuf,
    /// The booted system's link (`/run/booted-system`, `NIXFLEET_BOOTED_SYSTEM`),
    /// compared with `current_system` for `needs_reboot` (NixOS).
    pub booted_system: PathBuf,
    /// A log file to reopen on SIGHUP (`NIXFLEET_LOG_FILE`, nix-darwin).
    pub log_file: Option<PathBuf>,
    /// The size past which the agent rotates `log_file` itself
    /// (`NIXFLEET_LOG_MAX_SIZE`, MiB; Home Manager on macOS, where no
    /// newsyslog rotates a user's log).
    pub log_max_bytes: Option<u64>,
    /// Where to write the agent's PID (`NIXFLEET_PID_FILE`, for newsyslog).
    pub pid_file: Option<PathBuf>,
    /// What identifies this boot (Linux: `/proc/sys/kernel/random/boot_id`;
    /// where it does not exist, the boot time is used), read by `reboot`.
    pub boot_id_file: PathBuf,
    /// Timing knobs.
    pub timing: Timing,
}

mod deploy;
mod parse;
mod secrets;
mod system;
pub use deploy::{
    DEFAULT_MIN_FREE_MIB, GuardSettings, RollbackSettings, SYSTEM_KNOWN_HOSTS, SYSTEM_PROFILE,
    SshSettings, TrustSettings,
};
use deploy::{guard_settings, rollback_settings, trust_settings};
pub use parse::{ConfigError, pass_names};
use parse::{Env, absolute_path, err, flag, is_hex_color, millis, one_of};
pub use secrets::{Token, TokenSource, parse_token_file, redact_repo_url, redact_url};
use secrets::{token, url};

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, if set).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env { lookup };
        let url = url(&env)?;
        let (token, token_source) = token(&env)?;

        let interval_secs = match env.get("NIXFLEET_INTERVAL") {
            None => DEFAULT_INTERVAL_SECS,
            Some(v) => match v.trim().trim_end_matches('s').parse::<u64>() {
                Ok(n) if (1..=86_400).contains(&n) => n,
                _ => {
                    return Err(err(
                        "NIXFLEET_INTERVAL",
                        format!("{v:?} is not a whole number of seconds from 1 to 86400; e.g. 5"),
                    ));
                }
            },
        };

        let watchdog = match env.get("NIXFLEET_WATCHDOG_SEC") {
            None => None,
            Some(v) => match v.trim().trim_end_matches('s').parse::<u64>() {
                Ok(0) => None,
                Ok(n) if (5..=86_400).contains(&n) => Some(Duration::from_secs(n)),
                _ => {
                    return Err(err(
                        "NIXFLEET_WATCHDOG_SEC",
                        format!(
                            "{v:?} is not 0 (off) or a whole number of seconds from 5 to 86400; e.g. 60"
                        ),
                    ));
                }
            },
        };

        let metrics_listen = match env.get("NIXFLEET_METRICS_LISTEN") {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                err(
                    "NIXFLEET_METRICS_LISTEN",
                    format!("{v:?} is not an address and port; e.g. 127.0.0.1:4244"),
                )
            })?),
        };

        let reported_version = match env.get("NIXFLEET_REPORTED_VERSION") {
            None => PROTOCOL_RELEASE.to_string(),
            Some(v) => {
                let v = v.trim();
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-+_~".contains(c))
                {
                    return Err(err(
                        "NIXFLEET_REPORTED_VERSION",
                        format!(
                            "{:?} is not a release string (up to 64 letters, digits and . - + _ ~); set it to the dashboard's release, e.g. {PROTOCOL_RELEASE}",
                            v.chars().take(64).collect::<String>()
                        ),
                    ));
                }
                v.to_string()
            }
        };

        let log_level = match one_of(
            &env,
            "NIXFLEET_LOG_LEVEL",
            &["error", "warn", "info", "debug", "trace"],
            "info",
        )?
        .as_str()
        {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => LogLevel::Info,
        };
        let location = one_of(
            &env,
            "NIXFLEET_LOCATION",
            &["home", "work", "cloud"],
            "home",
        )?;
        let device_type = one_of(
            &env,
            "NIXFLEET_DEVICE_TYPE",
            &["server", "desktop", "laptop", "gaming"],
            "server",
        )?;
        let theme_color = env.get("NIXFLEET_THEME_COLOR").unwrap_or_default();
        let theme_color = theme_color.trim().to_string();
        if !theme_color.is_empty() && !is_hex_color(&theme_color) {
            return Err(err(
                "NIXFLEET_THEME_COLOR",
                format!(
                    "{theme_color:?} is not a #rrggbb colour; use e.g. #7aa2f7 or leave it unset"
                ),
            ));
        }

        let host_type = system::host_type(&env)?;
        let hostname = system::hostname(&env)?;

        let state_dir = env
            .get("NIXFLEET_STATE_DIR")
            .or_else(|| {
                env.get("STATE_DIRECTORY")
                    .map(|s| s.split(':').next().unwrap_or_default().to_string())
            })
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/nixfleet-agent"));
        let log_dir = env
            .get("NIXFLEET_LOG_DIR")
            .or_else(|| {
                env.get("LOGS_DIRECTORY")
                    .map(|s| s.split(':').next().unwrap_or_default().to_string())
            })
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("logs"));

        let explicit_dir = env
            .get("NIXFLEET_REPO_DIR")
            .or_else(|| env.get("NIXFLEET_NIXCFG"))
            .map(|d| PathBuf::from(d.trim()));
        let (repo_mode, repo_dir) = match (env.get("NIXFLEET_REPO_URL"), explicit_dir) {
            (Some(url), dir) => (
                RepoMode::Isolated {
                    url: url.trim().to_string(),
                },
                dir.unwrap_or_else(|| state_dir.join("repo")),
            ),
            (None, Some(dir)) => (RepoMode::Legacy, dir),
            (None, None) => {
                return Err(err(
                    "NIXFLEET_REPO_URL",
                    "no configuration repository; set NIXFLEET_REPO_URL (the agent keeps its own clone) or NIXFLEET_REPO_DIR (an existing checkout)",
                ));
            }
        };
        if !repo_dir.is_absolute() {
            return Err(err(
                "NIXFLEET_REPO_DIR",
                format!(
                    "{} is not an absolute path; use e.g. /etc/nixos",
                    repo_dir.display()
                ),
            ));
        }
        let branch = system::branch(&env)?;

        let switch_tool = system::switch_tool(&env, host_type)?;
        let flake = system::flake(&env, switch_tool, &hostname, &repo_dir)?;

        let ssh = SshSettings {
            key: env.get("NIXFLEET_SSH_KEY").map(PathBuf::from).or_else(|| {
                env.get("CREDENTIALS_DIRECTORY")
                    .map(|d| Path::new(&d).join("ssh-key"))
                    .filter(|p| p.exists())
            }),
            system_known_hosts: absolute_path(&env, "NIXFLEET_SSH_KNOWN_HOSTS")?
                .unwrap_or_else(|| PathBuf::from(SYSTEM_KNOWN_HOSTS)),
            require_known_hosts: flag(&env, "NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS", false)?,
        };
        if let Some(names) = env.get("NIXFLEET_PASS_ENV") {
            parse::pass_names(&names).map_err(|why| {
                err(
                    "NIXFLEET_PASS_ENV",
                    format!(
                        "{why}; list variable names such as NIX_CONFIG HOME_MANAGER_BACKUP_EXT"
                    ),
                )
            })?;
        }
        let trust = trust_settings(&env)?;
        let rollback = rollback_settings(&env)?;
        let guard = guard_settings(&env)?;
        let ca_file = env.get("NIXFLEET_CA_FILE").map(PathBuf::from);
        if let Some(ca) = &ca_file
            && let Err(e) = std::fs::metadata(ca)
        {
            return Err(err(
                "NIXFLEET_CA_FILE",
                format!(
                    "cannot read {}: {e}; point it at a PEM file or unset it",
                    ca.display()
                ),
            ));
        }

        let defaults = Timing::default();
        let timing = Timing {
            ping_interval: millis(&env, "NIXFLEET_PING_INTERVAL_MS", defaults.ping_interval)?,
            read_deadline: millis(&env, "NIXFLEET_READ_DEADLINE_MS", defaults.read_deadline)?,
            backoff_base: millis(&env, "NIXFLEET_BACKOFF_BASE_MS", defaults.backoff_base)?,
            stop_grace: millis(&env, "NIXFLEET_STOP_GRACE_MS", defaults.stop_grace)?,
            stall_timeout: millis(&env, "NIXFLEET_STALL_TIMEOUT_MS", defaults.stall_timeout)?,
            reboot_wait: millis(&env, "NIXFLEET_REBOOT_WAIT_MS", defaults.reboot_wait)?,
            hub_reconnect_window: millis(
                &env,
                "NIXFLEET_HUB_RECONNECT_WINDOW_MS",
                defaults.hub_reconnect_window,
            )?,
        };

        Ok(Config {
            url,
            token,
            token_source,
            repo_mode,
            repo_dir,
            branch,
            interval_secs,
            watchdog,
            metrics_listen,
            reported_version,
            ssh,
            trust,
            rollback,
            guard,
            log_level,
            hostname,
            host_type,
            location,
            device_type,
            theme_color,
            nixpkgs_version: env
                .get("NIXFLEET_NIXPKGS_VERSION")
                .map(|v| v.trim().to_string()),
            flake,
            switch_tool,
            state_dir,
            log_dir,
            ca_file,
            stasysmo_dir: env.get("NIXFLEET_STASYSMO_DIR").map(PathBuf::from),
            current_system: env
                .get("NIXFLEET_CURRENT_SYSTEM")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(CURRENT_SYSTEM)),
            booted_system: env
                .get("NIXFLEET_BOOTED_SYSTEM")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(BOOTED_SYSTEM)),
            log_file: absolute_path(&env, "NIXFLEET_LOG_FILE")?,
            log_max_bytes: match env.get("NIXFLEET_LOG_MAX_SIZE") {
                None => None,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(mib) if (1..=100_000).contains(&mib) => Some(mib * 1024 * 1024),
                    _ => {
                        return Err(err(
                            "NIXFLEET_LOG_MAX_SIZE",
                            format!(
                                "{v:?} is not a size in MiB from 1 to 100000; unset it for no bound"
                            ),
                        ));
                    }
                },
            },
            pid_file: absolute_path(&env, "NIXFLEET_PID_FILE")?,
            boot_id_file: env
                .get("NIXFLEET_BOOT_ID_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(BOOT_ID_FILE)),
            timing,
        })
    }

    /// The repository URL in isolated mode, empty in legacy mode.
    pub fn repo_url(&self) -> &str {
        match &self.repo_mode {
            RepoMode::Isolated { url } => url,
            RepoMode::Legacy => "",
        }
    }
}

/// Reads the log level alone, so logging can start before the rest is validated.
pub fn log_level_from_env() -> LogLevel {
    match std::env::var("NIXFLEET_LOG_LEVEL")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => LogLevel::Info,
    }
}

#[cfg(test)]
mod tests;
