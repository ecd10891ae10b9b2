//! How a NixOS system is activated outside the agent's unit: the way
//! nixos-rebuild 26.05 (`nixos-rebuild-ng`) does it, in a transient unit of
//! its own started with `systemd-run`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::record::Record;

/// Where transient units are started: systemd is the service manager
/// (`sd_booted`: `/run/systemd/system` exists).
const SYSTEMD_RUNTIME: &str = "/run/systemd/system";

/// How NixOS's own `nixos-rebuild` (nixpkgs 26.05, `nixos-rebuild-ng`) runs
/// `switch-to-configuration`: in a transient unit of its own, outside the
/// caller's sandbox and cgroup. The agent's unit has `ProtectSystem=full`
/// (read-only `/etc` and `/boot`, which activation writes) and
/// `KillMode=process`; in a transient unit the activation gets PID 1's
/// environment, a writable system, and outlives whatever happens to the
/// agent's unit meanwhile. `--wait --pipe` make it behave like a child: its
/// output comes back, its exit code decides.
pub(super) fn activation(switch: &Path, unit: &str) -> (PathBuf, Vec<OsString>, &'static str) {
    let direct = || {
        (
            switch.to_path_buf(),
            vec![OsString::from("switch")],
            "directly (systemd is not the service manager here, or systemd-run is missing)",
        )
    };
    if !Path::new(SYSTEMD_RUNTIME).is_dir() {
        return direct();
    }
    let Some(systemd_run) = on_path("systemd-run") else {
        return direct();
    };
    let mut args: Vec<OsString> = Vec::new();
    for name in [
        "LOCALE_ARCHIVE",
        "NIXOS_INSTALL_BOOTLOADER",
        "NIXOS_NO_CHECK",
    ] {
        args.push("-E".into());
        args.push(name.into());
    }
    for flag in [
        "--collect",
        "--no-ask-password",
        "--pipe",
        "--quiet",
        "--service-type=exec",
        "--wait",
    ] {
        args.push(flag.into());
    }
    args.push(format!("--unit={unit}").into());
    args.push(switch.as_os_str().to_owned());
    args.push("switch".into());
    (
        systemd_run,
        args,
        "in a transient unit (systemd-run), as nixos-rebuild does",
    )
}

/// A transient unit name used once: a stale unit of an earlier attempt
/// ("already loaded") can never block this one.
pub(super) fn unit_name(record: &Record) -> String {
    let id: String = record
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "nixfleet-agent-rollback-{id}-{}-{nanos:x}",
        std::process::id()
    )
}

/// The first executable `name` in `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
