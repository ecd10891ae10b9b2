//! What the host is and what a switch builds: the host type, the name
//! reported to the dashboard, the branch, the switch tool and the flake
//! reference (`NIXFLEET_HOST_TYPE`, `NIXFLEET_HOSTNAME`, `NIXFLEET_BRANCH`,
//! `NIXFLEET_SWITCH_TOOL`, `NIXFLEET_FLAKE`).

use std::path::Path;

use super::SwitchTool;
use super::parse::{ConfigError, Env, err};
use crate::host::HostType;

/// `NIXFLEET_HOST_TYPE`, else detected.
pub(super) fn host_type(env: &Env<'_>) -> Result<HostType, ConfigError> {
    let host_type = match env.get("NIXFLEET_HOST_TYPE") {
        None => HostType::detect(),
        Some(v) => match v.trim() {
            "nixos" => HostType::NixOs,
            "macos" => HostType::MacOs,
            other => {
                return Err(err(
                    "NIXFLEET_HOST_TYPE",
                    format!("{other:?} is not nixos or macos; unset it to detect the host type"),
                ));
            }
        },
    };
    Ok(host_type)
}

/// `NIXFLEET_HOSTNAME`, else the short host name.
pub(super) fn hostname(env: &Env<'_>) -> Result<String, ConfigError> {
    let hostname = match env.get("NIXFLEET_HOSTNAME") {
        Some(h) => {
            let h = h.trim().to_string();
            if h.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
            {
                return Err(err(
                    "NIXFLEET_HOSTNAME",
                    format!("{h:?} is not a host name; use letters, digits, '-' and '.'"),
                ));
            }
            h
        }
        None => crate::host::short_hostname(),
    };
    Ok(hostname)
}

/// `NIXFLEET_BRANCH`, else `main`.
pub(super) fn branch(env: &Env<'_>) -> Result<String, ConfigError> {
    let branch = env
        .get("NIXFLEET_BRANCH")
        .map(|b| b.trim().to_string())
        .unwrap_or_else(|| "main".to_string());
    if branch.starts_with('-') || branch.contains("..") || branch.contains(char::is_whitespace) {
        return Err(err(
            "NIXFLEET_BRANCH",
            format!("{branch:?} is not a branch name; use e.g. main"),
        ));
    }
    Ok(branch)
}

/// `NIXFLEET_SWITCH_TOOL`, else the platform's.
pub(super) fn switch_tool(env: &Env<'_>, host_type: HostType) -> Result<SwitchTool, ConfigError> {
    let switch_tool = match env.get("NIXFLEET_SWITCH_TOOL") {
        None => match host_type {
            HostType::NixOs => SwitchTool::NixosRebuild,
            HostType::MacOs => SwitchTool::DarwinRebuild,
        },
        Some(v) => match v.trim() {
            "nixos-rebuild" => SwitchTool::NixosRebuild,
            "darwin-rebuild" => SwitchTool::DarwinRebuild,
            "home-manager" => SwitchTool::HomeManager,
            other => {
                return Err(err(
                    "NIXFLEET_SWITCH_TOOL",
                    format!(
                        "{other:?} is not nixos-rebuild, darwin-rebuild or home-manager; unset it for the platform's default"
                    ),
                ));
            }
        },
    };
    Ok(switch_tool)
}

/// `NIXFLEET_FLAKE`, else `<repo_dir>#<hostname>` (Home Manager with
/// `NIXFLEET_HOME_MANAGER_USER`: `<repo_dir>#<user>@<hostname>`).
pub(super) fn flake(
    env: &Env<'_>,
    switch_tool: SwitchTool,
    hostname: &str,
    repo_dir: &Path,
) -> Result<String, ConfigError> {
    let flake = match env.get("NIXFLEET_FLAKE") {
        Some(f) => f.trim().to_string(),
        None => {
            // Home Manager hosts switch `<repo>#<hostname>` (upstream's
            // macOS fleet and the dashboard's help text);
            // NIXFLEET_HOME_MANAGER_USER selects `<repo>#<user>@<hostname>`.
            let target = match (switch_tool, env.get("NIXFLEET_HOME_MANAGER_USER")) {
                (SwitchTool::HomeManager, Some(user)) => format!("{}@{hostname}", user.trim()),
                _ => hostname.to_string(),
            };
            format!("{}#{target}", repo_dir.display())
        }
    };
    if flake.starts_with('-') {
        return Err(err(
            "NIXFLEET_FLAKE",
            format!("{flake:?} is not a flake reference; use e.g. /etc/nixos#myhost"),
        ));
    }
    Ok(flake)
}
