//! The compartment clicks of the UI: `refresh-lock`, `refresh-system`,
//! `refresh-git` (upstream `commands.go`, `status.go`).
//!
//! - `refresh-lock` measures the Lock compartment now, prints it, status `ok`.
//! - `refresh-system` decides, by evaluation only (no build), whether the
//!   running system is what the repository's configuration builds: `nix eval
//!   --raw` of the configuration's output path (`nixosConfigurations.<name>
//!   .config.system.build.toplevel`, `darwinConfigurations.<name>.system`, or
//!   `homeConfigurations.<name>.activationPackage`) against the store path of
//!   `/run/current-system` (Home Manager: the current generation). System
//!   becomes `ok`, `outdated`, or `error` with the evaluation's tail; the
//!   status is `ok` with the result. It runs like any command: output
//!   streamed, stoppable, one at a time.
//! - `refresh-git`: git status is computed by the dashboard; status `ok`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::*;
use crate::compartments::{Check, Level, Part};
use crate::config::SwitchTool;

/// The attribute under the flake whose `outPath` is the system `tool` would
/// switch to, for the configuration `name`.
pub fn system_attr(tool: SwitchTool, name: &str) -> String {
    let quoted = format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""));
    match tool {
        SwitchTool::NixosRebuild => {
            format!("nixosConfigurations.{quoted}.config.system.build.toplevel.outPath")
        }
        SwitchTool::DarwinRebuild => format!("darwinConfigurations.{quoted}.system.outPath"),
        SwitchTool::HomeManager => {
            format!("homeConfigurations.{quoted}.activationPackage.outPath")
        }
    }
}

/// The installable `tool` would switch to for `flake` (`<ref>#<name>`, or a
/// bare reference and `hostname`): the configuration's system derivation.
pub fn system_installable(tool: SwitchTool, flake: &str, hostname: &str) -> String {
    let (repo, name) = flake.rsplit_once('#').unwrap_or((flake, hostname));
    let attr = system_attr(tool, name);
    format!("{repo}#{}", attr.strip_suffix(".outPath").unwrap_or(&attr))
}

/// The link that names the system the host runs: `current_system`, or for
/// Home Manager its profile where Home Manager keeps it
/// ([`crate::host::home_manager_profile`], read from the operations'
/// environment `env`).
pub fn running_link(
    tool: SwitchTool,
    current_system: &Path,
    env: &ChildEnv,
) -> Result<PathBuf, String> {
    match tool {
        SwitchTool::HomeManager => crate::host::home_manager_profile(&|n| env.var(n)),
        _ => Ok(current_system.to_path_buf()),
    }
}

/// The store path the host runs now: [`running_link`]'s target.
pub fn running_system(tool: SwitchTool, current_system: &Path, env: &ChildEnv) -> Option<PathBuf> {
    std::fs::canonicalize(running_link(tool, current_system, env).ok()?).ok()
}

fn short_path(p: &str) -> &str {
    p.strip_prefix("/nix/store/").unwrap_or(p)
}

impl Run {
    pub(super) async fn refresh_lock(&mut self) -> Report {
        self.sink
            .note("[nixfleet-agent] refreshing the lock status…".to_string())
            .await;
        let check = self.commands.refresh_lock().await;
        let text = format!("Lock: {} ({})", check.status.as_str(), check.message);
        self.sink.note(format!("[nixfleet-agent] {text}")).await;
        Report::ok(text)
    }

    pub(super) async fn refresh_git(&mut self) -> Report {
        let text = "git status is computed by the dashboard";
        self.sink.note(format!("[nixfleet-agent] {text}")).await;
        Report::ok(text.to_string())
    }

    pub(super) async fn refresh_system(&mut self) -> Report {
        let config = self.inner().config.clone();
        let store = self.inner().state.compartments().clone();
        let installable = format!(
            "{}.outPath",
            system_installable(config.switch_tool, &config.flake, &config.hostname)
        );
        let args: [&OsStr; 5] = [
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
            OsStr::new("eval"),
            OsStr::new("--raw"),
            OsStr::new(&installable),
        ];
        let inner = self.inner();
        let wanted = step(
            &self.sink,
            &self.ctl,
            &inner.env,
            "Evaluation",
            OsStr::new("nix"),
            &args,
            &config.repo_dir,
        )
        .await;
        let running = running_system(config.switch_tool, &config.current_system, &inner.env);
        let check = match (&wanted, &running) {
            (Err(r), _) => Check::now(Level::Error, r.message.clone()),
            (Ok(out), Some(running)) => {
                let wanted = out.stdout.text();
                let wanted = wanted.trim();
                let running = running.to_string_lossy();
                if wanted == running {
                    Check::now(
                        Level::Ok,
                        format!(
                            "System is the repository's configuration ({})",
                            short_path(wanted)
                        ),
                    )
                } else {
                    Check::now(
                        Level::Outdated,
                        format!(
                            "System differs from the repository's configuration: running {}, the configuration is {}",
                            short_path(&running),
                            short_path(wanted)
                        ),
                    )
                }
            }
            (Ok(_), None) => Check::now(
                Level::Error,
                format!(
                    "cannot read the running system ({})",
                    running_link(config.switch_tool, &config.current_system, &inner.env)
                        .map_or_else(|why| why, |link| link.display().to_string())
                ),
            ),
        };
        if self.ctl.stop_cause().is_some() {
            // stopped: finish() reports it; the compartment keeps what it had
            return Report::error(NOT_RUN, "System check stopped".to_string());
        }
        let text = format!("System: {} ({})", check.status.as_str(), check.message);
        store.set(Part::System, check);
        self.sink.note(format!("[nixfleet-agent] {text}")).await;
        Report::ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_per_tool_with_the_name_quoted() {
        assert_eq!(
            system_attr(SwitchTool::NixosRebuild, "hsb0"),
            "nixosConfigurations.\"hsb0\".config.system.build.toplevel.outPath"
        );
        assert_eq!(
            system_attr(SwitchTool::DarwinRebuild, "mba"),
            "darwinConfigurations.\"mba\".system.outPath"
        );
        assert_eq!(
            system_attr(SwitchTool::HomeManager, "me@mba"),
            "homeConfigurations.\"me@mba\".activationPackage.outPath"
        );
        assert_eq!(
            system_attr(SwitchTool::NixosRebuild, "a\"b"),
            "nixosConfigurations.\"a\\\"b\".config.system.build.toplevel.outPath"
        );
    }
}
