//! What a switch is watched against, taken before it starts: the system (or
//! Home Manager generation) it would roll back to, and on NixOS the units
//! that are active (those that fail after the switch make it roll back).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::time::Duration;

use super::watchdog::{Kind, Watch};
use crate::config::Config;
use crate::exec::env::ChildEnv;

/// The units in `state` (`systemctl list-units --state=<state>`), or why not.
pub fn units(
    state: &str,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<BTreeSet<String>, String> {
    let filter = format!("--state={state}");
    let out = crate::bounded::run(
        "systemctl",
        &[
            OsStr::new("list-units"),
            OsStr::new(&filter),
            OsStr::new("--plain"),
            OsStr::new("--no-legend"),
            OsStr::new("--no-pager"),
        ],
        env,
        Duration::from_secs(20),
    )
    .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl list-units failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// What a switch would roll back to, or why it cannot be watched.
pub fn watch_for(config: &Config, env: &ChildEnv) -> Result<Watch, String> {
    let kind = Kind::of(config.switch_tool);
    let current = match kind {
        Kind::NixOs | Kind::Darwin => config.current_system.clone(),
        Kind::HomeManager => crate::host::home_manager_profile(&|n| env.var(n))?,
    };
    let previous = std::fs::canonicalize(&current)
        .map_err(|e| format!("cannot resolve {}: {e}", current.display()))?;
    let activation = match kind {
        Kind::NixOs => previous.join("bin/switch-to-configuration"),
        Kind::Darwin | Kind::HomeManager => previous.join("activate"),
    };
    if !activation.is_file() {
        return Err(format!("{} is missing", activation.display()));
    }
    Ok(Watch {
        previous,
        kind,
        profile: config.rollback.system_profile.clone(),
        deadline: config.rollback.deadline,
        current: Some(current),
    })
}
