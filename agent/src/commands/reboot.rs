//! `reboot` (the UI's TOTP-protected Reboot; upstream `commands.go`
//! `handleReboot`), accepted while busy.
//!
//! 1. An output line announces it.
//! 2. A running command is stopped the way `stop` does (its status
//!    `stopped`, "Stopped: the host reboots (reboot)").
//! 3. A record with this boot's identity goes to `<state>/reboot.json`.
//! 4. The reboot tool runs, found through the children's `PATH`: `systemctl
//!    reboot` on NixOS, `shutdown -r now` on macOS.
//!
//! Exactly one `status` follows, from whichever process knows the truth: the
//! tool failing (status `error` with its output) or the host still up
//! [`Timing::reboot_wait`](crate::config::Timing) after it succeeded (status
//! `error`) is reported at once; a reboot that happened is reported by the
//! agent after the boot (status `ok` "Rebooted: …"), which finds the record
//! with another boot identity. A second `reboot` while one is under way is
//! refused; it never runs twice for one request.

use std::ffi::OsStr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;
use crate::host::{HostType, boot_identity};

/// The reboot record's file name in the state directory.
pub const RECORD: &str = "reboot.json";

/// A reboot the agent asked for and has not reported yet.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    /// The boot it was asked in.
    boot: String,
    /// When, RFC 3339 UTC.
    requested_at: String,
}

/// The reboot tool for the host type.
fn tool(host_type: HostType) -> (&'static str, &'static [&'static str]) {
    match host_type {
        HostType::NixOs => ("systemctl", &["reboot"]),
        HostType::MacOs => ("shutdown", &["-r", "now"]),
    }
}

fn write_record(path: &Path, pending: &Pending) -> std::io::Result<()> {
    let text = serde_json::to_vec(pending).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &text)
}

fn read_record(path: &Path) -> Option<Result<Pending, String>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    if let Err(e) = file.take(4096).read_to_end(&mut text) {
        return Some(Err(e.to_string()));
    }
    Some(serde_json::from_slice(&text).map_err(|e| e.to_string()))
}

impl Commands {
    /// `reboot` from the dashboard.
    pub(super) fn reboot(&self) {
        if self.inner.rebooting.swap(true, Ordering::SeqCst) {
            self.reply_error("reboot", "a reboot is already under way".to_string());
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(report) = this.reboot_run().await {
                this.inner.rebooting.store(false, Ordering::SeqCst);
                this.send_status(report, "reboot");
            }
        });
    }

    /// Returns the failure to report, or waits forever once the host goes down.
    async fn reboot_run(&self) -> Option<Report> {
        let config = self.inner.config.clone();
        let (program, args) = tool(config.host_type);
        let label = format!("{program} {}", args.join(" "));
        let log = Arc::new(RunLog::create_off_thread(&config.log_dir, "reboot").await);
        let sink = Sink::new("reboot", Some(self.inner.out.clone()), log);
        sink.note(format!(
            "[nixfleet-agent] reboot requested: the host reboots now (`{label}`)"
        ))
        .await;
        if let Some(ctl) = self.current() {
            tracing::info!("stopping {} before the reboot", ctl.name());
            self.stop_run(ctl.clone(), StopCause::Reboot, libc::SIGTERM);
            let limit = config.timing.stop_grace + Duration::from_secs(2);
            let _ = tokio::time::timeout(limit, ctl.wait_done()).await;
        }
        let record = config.state_dir.join(RECORD);
        let pending = Pending {
            boot: boot_identity(&config.boot_id_file),
            requested_at: crate::compartments::rfc3339(std::time::SystemTime::now()),
        };
        if let Err(e) = write_record(&record, &pending) {
            // Without it the next boot cannot confirm; the reboot still runs.
            tracing::warn!("cannot write {}: {e}", record.display());
        }
        let argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let spec = Spec {
            program: OsStr::new(program),
            args: &argv,
            cwd: &config.state_dir,
        };
        let ctl = Control::new("reboot", None);
        let failure = match run_step(&sink, &ctl, &self.inner.env, &spec).await {
            Err(e) => Some(Report::error(
                127,
                format!("Reboot failed: cannot start {program}: {e}"),
            )),
            Ok(r) if r.code != 0 => Some(Report::error(
                r.code,
                failed_message(
                    "Reboot",
                    &label,
                    r.code,
                    &failure_tail(&r.stderr, &r.stdout),
                ),
            )),
            Ok(_) => None,
        };
        if failure.is_none() {
            tokio::time::sleep(config.timing.reboot_wait).await;
        }
        let _ = std::fs::remove_file(&record);
        Some(failure.unwrap_or_else(|| {
            Report::error(
                NOT_RUN,
                format!(
                    "Reboot failed: the host is still up {} s after `{label}` succeeded",
                    config.timing.reboot_wait.as_secs()
                ),
            )
        }))
    }

    /// At start: the status of a reboot an earlier agent process asked for.
    pub(super) fn report_reboot(&self) {
        let config = &self.inner.config;
        let record = config.state_dir.join(RECORD);
        let Some(pending) = read_record(&record) else {
            return;
        };
        let report = match pending {
            Ok(p) if p.boot != boot_identity(&config.boot_id_file) => Report::ok(format!(
                "Rebooted: the host is back (reboot requested at {})",
                p.requested_at
            )),
            Ok(p) => Report::error(
                NOT_RUN,
                format!(
                    "Reboot failed: the host did not restart (requested at {}; only the agent restarted)",
                    p.requested_at
                ),
            ),
            Err(why) => {
                tracing::warn!("ignoring the unreadable reboot record: {why}");
                let _ = std::fs::remove_file(&record);
                return;
            }
        };
        tracing::info!("reporting the reboot asked for by an earlier agent process");
        self.send_status(report, "reboot");
        // the status is kept before the record that asked for it goes
        crate::undelivered::flush(&self.inner.out, &config.state_dir);
        let _ = std::fs::remove_file(&record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_identity_comes_from_the_file_else_the_boot_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot_id");
        std::fs::write(&file, "abc\n").unwrap();
        assert_eq!(boot_identity(&file), "abc");
        assert!(boot_identity(&dir.path().join("none")).starts_with("booted at "));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORD);
        let p = Pending {
            boot: "b1".into(),
            requested_at: "2026-12-01T21:27:05Z".into(),
        };
        write_record(&path, &p).unwrap();
        assert_eq!(read_record(&path), Some(Ok(p)));
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(read_record(&path), Some(Err(_))));
        assert_eq!(read_record(&dir.path().join("missing")), None);
    }
}
