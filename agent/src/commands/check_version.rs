//! `check-version` (the UI's click on the Agent compartment; upstream
//! `commands.go` `handleCheckVersion`): is the running agent the one the
//! current system would start?
//!
//! The installed binary is, in this order: NixOS, the `ExecStart=` program of
//! `nixfleet-agent.service` in the current system
//! (`<current-system>/etc/systemd/system/`); nix-darwin, the first
//! `ProgramArguments` entry of `/Library/LaunchDaemons/org.nixos.nixfleet-agent.plist`;
//! else `nixfleet-agent` on the children's `PATH`. Both binaries are compared
//! by SHA-256 (the store path alone can hide a rebuilt binary), and shown with
//! their `--version`. Status `ok` "running=… installed=…", or `warning`
//! "mismatch: running=… installed=…"; no installed binary is an `error`.

use std::ffi::OsStr;
use std::path::PathBuf;

use super::*;
use crate::host::HostType;

/// nix-darwin's plist of the agent's daemon.
pub const DARWIN_PLIST: &str = "/Library/LaunchDaemons/org.nixos.nixfleet-agent.plist";

/// The program of an `ExecStart=` line of a systemd unit (its first word,
/// without the `@-:+!` prefixes).
pub fn exec_start(unit: &str) -> Option<PathBuf> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .filter_map(|v| v.split_whitespace().next())
        .map(|p| p.trim_start_matches(['@', '-', ':', '+', '!']))
        .find(|p| p.starts_with('/'))
        .map(PathBuf::from)
}

/// The first `ProgramArguments` string of a launchd plist (XML).
pub fn plist_program(plist: &str) -> Option<PathBuf> {
    let rest = &plist[plist.find("<key>ProgramArguments</key>")?..];
    let start = rest.find("<string>")? + "<string>".len();
    let end = rest[start..].find("</string>")?;
    let p = rest[start..start + end].trim();
    p.starts_with('/').then(|| PathBuf::from(p))
}

/// Where the installed agent is, and how it was found.
fn installed(config: &Config, env: &ChildEnv) -> Result<(PathBuf, String), String> {
    let mut looked = Vec::new();
    let unit = config
        .current_system
        .join("etc/systemd/system/nixfleet-agent.service");
    if config.host_type == HostType::NixOs {
        if let Some(p) = std::fs::read_to_string(&unit)
            .ok()
            .and_then(|u| exec_start(&u))
        {
            return Ok((p, format!("ExecStart of {}", unit.display())));
        }
        looked.push(unit.display().to_string());
    } else {
        if let Some(p) = std::fs::read_to_string(DARWIN_PLIST)
            .ok()
            .and_then(|u| plist_program(&u))
        {
            return Ok((p, format!("ProgramArguments of {DARWIN_PLIST}")));
        }
        looked.push(DARWIN_PLIST.to_string());
    }
    let path = env.get("PATH").unwrap_or_default();
    for dir in std::env::split_paths(path) {
        let candidate = dir.join("nixfleet-agent");
        if candidate.is_file() {
            return Ok((candidate, "the first nixfleet-agent on PATH".to_string()));
        }
    }
    looked.push("nixfleet-agent on PATH".to_string());
    Err(format!(
        "no installed nixfleet-agent found (looked at {})",
        looked.join(", ")
    ))
}

/// "0.1.0 (sha256 1a2b3c4d)".
fn describe(version: &str, hash: &str) -> String {
    format!("{version} (sha256 {})", &hash[..hash.len().min(12)])
}

impl Run {
    pub(super) async fn check_version(&mut self) -> Result<Report, Report> {
        let config = self.inner().config.clone();
        let env = self.inner().env.clone();
        let found = tokio::task::spawn_blocking(move || {
            // the running image (on Linux even when its file was replaced)
            let running = host::executable_hash();
            let installed =
                installed(&config, &env).map(|(path, how)| (host::file_sha256(&path), path, how));
            (running, installed)
        })
        .await
        .map_err(|e| Report::error(NOT_RUN, format!("check-version failed: {e}")))?;
        let (running_hash, installed) = found;
        let running_hash = running_hash.unwrap_or_else(|| "unknown".to_string());
        let (installed_hash, path, how) =
            installed.map_err(|m| Report::error(NOT_RUN, format!("check-version: {m}")))?;
        let Some(installed_hash) = installed_hash else {
            return Err(Report::error(
                NOT_RUN,
                format!("check-version: cannot read {}", path.display()),
            ));
        };
        self.sink
            .note(format!(
                "[nixfleet-agent] running: {} {}",
                crate::config::VERSION,
                running_hash
            ))
            .await;
        self.sink
            .note(format!(
                "[nixfleet-agent] installed: {} ({how})",
                path.display()
            ))
            .await;
        let args = [OsStr::new("--version")];
        let inner = self.inner();
        let out = step(
            &self.sink,
            &self.ctl,
            &inner.env,
            "check-version",
            path.as_os_str(),
            &args,
            &inner.config.state_dir,
        )
        .await?;
        let text = out.stdout.text();
        let version = text
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .strip_prefix("nixfleet-agent ")
            .unwrap_or(text.trim());
        let version = version.split(" (").next().unwrap_or(version);
        let running = describe(crate::config::VERSION, &running_hash);
        let installed = describe(version, &installed_hash);
        if running_hash == installed_hash {
            Ok(Report::ok(format!(
                "running={running} installed={installed}"
            )))
        } else {
            let mut report = Report::ok(format!(
                "mismatch: running={running} installed={installed}; restart the agent to run the installed one"
            ));
            report.outcome = Outcome::Warning;
            Ok(report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_takes_the_program() {
        let unit = "[Service]\nExecStartPre=/nix/store/x/bin/check\nExecStart=@/nix/store/abc-nixfleet-agent/bin/nixfleet-agent nixfleet-agent\n";
        assert_eq!(
            exec_start(unit),
            Some(PathBuf::from(
                "/nix/store/abc-nixfleet-agent/bin/nixfleet-agent"
            ))
        );
        assert_eq!(exec_start("ExecStart=relative\n"), None);
    }

    #[test]
    fn plist_program_is_the_first_argument() {
        let plist = "<dict><key>Label</key><string>org.nixos.nixfleet-agent</string>\
                     <key>ProgramArguments</key><array><string>/nix/store/d-agent/bin/nixfleet-agent</string></array></dict>";
        assert_eq!(
            plist_program(plist),
            Some(PathBuf::from("/nix/store/d-agent/bin/nixfleet-agent"))
        );
        assert_eq!(plist_program("<dict></dict>"), None);
    }

    #[test]
    fn descriptions_are_short() {
        assert_eq!(
            describe("0.1.0", &"a".repeat(64)),
            "0.1.0 (sha256 aaaaaaaaaaaa)"
        );
    }
}
