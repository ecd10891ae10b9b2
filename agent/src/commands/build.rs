//! A switch's phases (docs/commands.md, "A switch, phase by phase"): build the
//! configuration without activating it, show the preview, check `/boot`,
//! then activate exactly the store path that was built — never a second
//! evaluation that could pick another commit.
//!
//! 1. **Build**: `nix build --print-out-paths --out-link <state>/built-system
//!    <installable>`. The out-link is a GC root: a garbage collection between
//!    the build and the activation cannot take the system away (the next
//!    build replaces it).
//! 2. **Preview** (`changes.rs`): package changes, closure size, the units
//!    the activation stops, starts, restarts and reloads, the reboot need,
//!    the switch inhibitors.
//! 3. **`/boot`** (NixOS, when `/boot` is a filesystem of its own): the new
//!    kernel and initrd that are not copied yet must fit.
//! 4. **Activate** under the switch supervisor (`deploy/activation.rs`): the
//!    system profile is set to the path, then NixOS `switch-to-configuration
//!    switch` through `systemd-run`, nix-darwin and Home Manager `activate`,
//!    watched by the rollback watchdog. A NixOS system whose switch
//!    inhibitors changed is installed with `switch-to-configuration boot`
//!    instead, not activated.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::preview::mib;
use super::refresh::{running_system, system_installable};
use super::switches::{CACHE_BYPASS, Switched, switch_word};
use super::*;
use crate::deploy::{Action, Kind, Target, activate_argv};

/// The GC root of the last built system, in the state directory.
const BUILT_LINK: &str = "built-system";

/// The built system named by the last line of `nix build --print-out-paths`:
/// a directory in `store`, or why not.
pub(super) fn built_path(stdout: &str, store: &Path) -> Result<PathBuf, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("nix build printed no store path")?;
    let path = PathBuf::from(line);
    let inside = path.strip_prefix(store).ok().filter(|rest| {
        let mut parts = rest.components();
        matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        )
    });
    if inside.is_none() {
        return Err(format!(
            "nix build printed {line:?}, which is not a path in the Nix store {}",
            store.display()
        ));
    }
    if !path.is_dir() {
        return Err(format!("the built system {line} is not a directory"));
    }
    Ok(path)
}

impl Run {
    /// Builds, previews, checks and activates `flake`'s configuration for
    /// `command`; `plan` is what the dry run said.
    pub(super) async fn build_and_activate(
        &mut self,
        command: CommandName,
        flake: &str,
        plan: &super::preview::Plan,
    ) -> Result<Switched, Report> {
        let config = self.inner().config.clone();
        let what = switch_word(command);
        let kind = Kind::of(config.switch_tool);
        let installable = system_installable(config.switch_tool, flake, &config.hostname);
        self.begin_system();
        let system = self.build_system(command, &installable).await?;
        let home = self.inner().env.get("HOME").map(PathBuf::from);
        let (tool, current_link) = (config.switch_tool, config.current_system.clone());
        let current = tokio::task::spawn_blocking(move || {
            running_system(tool, &current_link, home.as_deref())
        })
        .await
        .ok()
        .flatten();
        let changes = self
            .show_preview(kind, plan, current.as_deref(), &system)
            .await;
        if kind == Kind::NixOs {
            self.guard_boot(what, &system).await?;
        }
        let action = if changes.inhibited.is_empty() {
            Action::Switch
        } else {
            Action::Boot
        };
        let argv = activate_argv(
            kind,
            action,
            &config.rollback.system_profile,
            &Target::System(system.clone()),
        )
        .map_err(|e| {
            Report::error(
                NOT_RUN,
                format!(
                    "{what} failed: cannot name the agent's own binary for the activation: {e}"
                ),
            )
        })?;
        self.sink
            .note(format!(
                "[nixfleet-agent] activating {} ({})…",
                system.display(),
                action.as_str()
            ))
            .await;
        self.boot_only = action == Action::Boot;
        let switched = self
            .detached(command, argv, action == Action::Switch)
            .await?;
        Ok(match (action, switched) {
            (Action::Boot, Switched::Done(_)) => Switched::Done(format!(
                "{what} installed for the next boot: {}; reboot to activate it",
                changes.inhibited.join("; ")
            )),
            (_, switched) => switched,
        })
    }

    /// The system phase begins (System `working`, its dots at 0), once.
    pub(super) fn begin_system(&mut self) {
        if !self.switched {
            self.system_before = Some(self.inner().state.compartments().get().system);
            self.commands.row().begin(Phase::System);
            self.switched = true;
        }
    }

    /// `nix build` of `installable`, its output streamed: the built system.
    async fn build_system(
        &mut self,
        command: CommandName,
        installable: &str,
    ) -> Result<PathBuf, Report> {
        let config = self.inner().config.clone();
        let what = switch_word(command);
        let link = config.state_dir.join(BUILT_LINK);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
            OsStr::new("build"),
            OsStr::new("--print-out-paths"),
            OsStr::new("--out-link"),
            link.as_os_str(),
        ];
        if command == CommandName::ForceRebuild {
            // A cached "not in the binary cache" answer can keep serving an
            // old build (upstream P7220): forget negative lookups for this run.
            args.extend(CACHE_BYPASS.iter().map(OsStr::new));
            self.sink
                .note(format!(
                    "[nixfleet-agent] force rebuild: {}",
                    CACHE_BYPASS.join(" ")
                ))
                .await;
        }
        args.push(OsStr::new(installable));
        self.sink
            .note(format!("[nixfleet-agent] building {installable}…"))
            .await;
        let inner = self.inner();
        let built = step(
            &self.sink,
            &self.ctl,
            &inner.env,
            what,
            OsStr::new("nix"),
            &args,
            &config.repo_dir,
        )
        .await?;
        let stdout = built.stdout.text();
        let store = config.guard.nix_store.clone();
        tokio::task::spawn_blocking(move || built_path(&stdout, &store))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|why| Report::error(NOT_RUN, format!("{what} failed: {why}")))
    }

    /// Refuses a NixOS switch whose new kernel and initrd do not fit in a
    /// `/boot` of its own.
    async fn guard_boot(&mut self, what: &str, system: &Path) -> Result<(), Report> {
        let boot = self.inner().config.guard.boot_dir.clone();
        let system = system.to_path_buf();
        let measured = tokio::task::spawn_blocking(move || {
            if !crate::host::separate_filesystem(&boot, Path::new("/")) {
                return None;
            }
            let need = crate::host::boot_need(&system, &boot);
            Some((boot.clone(), need, crate::host::free_bytes(&boot)))
        })
        .await
        .ok()
        .flatten();
        let Some((boot, need, free)) = measured else {
            return Ok(());
        };
        let free = match free {
            Ok(free) => free,
            Err(e) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] no /boot check: cannot measure {}: {e}",
                        boot.display()
                    ))
                    .await;
                return Ok(());
            }
        };
        if need.bytes > free {
            return Err(Report::error(
                NOT_RUN,
                format!(
                    "{what} refused: {} has {} free; the new kernel and initrd need {}; delete old generations first: nix-collect-garbage --delete-older-than 14d, then switch again (the boot loader removes their entries)",
                    boot.display(),
                    mib(free),
                    mib(need.bytes)
                ),
            ));
        }
        self.sink
            .note(format!(
                "[nixfleet-agent] /boot: {} free, the new kernel and initrd need {}",
                mib(free),
                mib(need.bytes)
            ))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_path_is_a_directory_in_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let system = store.join("aaaa-nixos-system-web");
        std::fs::create_dir_all(&system).unwrap();
        let out = format!("{}\n", system.display());
        assert_eq!(built_path(&out, &store).unwrap(), system);
        assert!(built_path("", &store).is_err());
        assert!(built_path("/etc\n", &store).is_err());
        let escape = format!("{}/../x\n", store.display());
        assert!(built_path(&escape, &store).is_err());
        let parent = format!("{}/..\n", store.display());
        assert!(built_path(&parent, &store).is_err());
        // a name may hold dots
        let dotted = store.join("cccc-hello..2");
        std::fs::create_dir_all(&dotted).unwrap();
        assert_eq!(
            built_path(&format!("{}\n", dotted.display()), &store).unwrap(),
            dotted
        );
        let missing = format!("{}/bbbb-gone\n", store.display());
        assert!(built_path(&missing, &store).is_err());
        let nested = format!("{}/sub\n", system.display());
        assert!(built_path(&nested, &store).is_err());
    }
}
