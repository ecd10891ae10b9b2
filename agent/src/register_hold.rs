//! Holding back the agent's `register` while it would lie to the dashboard.
//!
//! NixFleet 3.1.5's lifecycle (`lifecycle.go`) calls a `switch` or
//! `pull-switch` a SUCCESS at the first `register` after the agent's socket
//! went away mid-switch, and ignores any status after that. When the process
//! that ran a switch died on the way (its own activation killed it: nix-darwin
//! and Home Manager reload their launchd agents) and the next process finds
//! the new generation failing its checks, a register inside the hub's
//! reconnect window (90 s) would turn a rolled-back switch into SUCCESS. So
//! such a process runs the health checks before it registers, and after a
//! failure no process of the agent registers until the window has passed:
//! the hub then records TIMEOUT ("verify host manually"), never SUCCESS.
//!
//! The hold until a time is a file in the state directory
//! ([`hold_until`]), so that it outlives the restart onto the rolled-back
//! generation; the hold while the checks run is in [`crate::state`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file that holds the register back until the time it names.
const FILE: &str = "register-hold";

/// How long after the hub's window a held register waits more (the old
/// agent's disconnect came before the activation ended; clocks drift).
pub const MARGIN: Duration = Duration::from_secs(5);

/// No process of the agent registers before `until` (blocking, small).
pub fn hold_until(state_dir: &Path, until: SystemTime) -> std::io::Result<()> {
    let secs = until
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    crate::atomic::write(&state_dir.join(FILE), secs.to_string().as_bytes())
}

/// How long the register is still held back by the file, if it is; a hold
/// that has passed is removed.
pub fn remaining(state_dir: &Path) -> Option<Duration> {
    let path = state_dir.join(FILE);
    let text = crate::util::read_capped(&path, 64).ok()?;
    let until = UNIX_EPOCH + Duration::from_millis(text.trim().parse().ok()?);
    match until.duration_since(SystemTime::now()) {
        Ok(left) if !left.is_zero() => Some(left),
        _ => {
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_its_time_then_goes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remaining(dir.path()), None);
        hold_until(dir.path(), SystemTime::now() + Duration::from_secs(60)).unwrap();
        let left = remaining(dir.path()).unwrap();
        assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
        hold_until(dir.path(), SystemTime::now() - Duration::from_secs(1)).unwrap();
        assert_eq!(remaining(dir.path()), None);
        assert!(!dir.path().join(FILE).exists(), "a passed hold is removed");
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(remaining(dir.path()), None);
    }
}
