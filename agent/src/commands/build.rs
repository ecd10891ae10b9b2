//! A switch's phases (docs/commands.md, "A switch, phase by phase"): build the
//! configuration without activating it, show the preview, check `/boot`,
//! then activate exactly the store path that was built — never a second
//! evaluation that could pick another commit.
//!
//! 1. **Build**: `nix build --json --out-link <state>/built-system
//!    <installable>` (what every supported Nix has: `--print-out-paths` came
//!    with Nix 2.9; `darwin-rebuild` reads the out-link the same way). The
//!    out-link is a GC root: a garbage collection between the build and the
//!    activation cannot take the system away (the next build replaces it).
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
use super::switches::{CACHE_BYPASS, NO_LOCAL_BUILDS, Switched, nix_options, switch_word};
use super::*;
use crate::deploy::{Action, BUILT_LINK, Kind, Target, activate_argv};

/// The output `out` of the one derivation `nix build --json` built, as it
/// prints it on every supported Nix: `[{"drvPath": …, "outputs": {"out":
/// "/nix/store/…"}, …}]`.
fn json_out_path(stdout: &str) -> Result<String, String> {
    let said = || {
        format!(
            "`nix build --json` printed {:?}, which names no built path",
            crate::util::clip(stdout.trim(), 300)
        )
    };
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|_| said())?;
    match value.as_array().map(Vec::as_slice) {
        Some([one]) => one["outputs"]["out"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(said),
        _ => Err(said()),
    }
}

/// The built system named by `nix build --json`: a directory in `store`, or
/// why not.
pub(super) fn built_path(stdout: &str, store: &Path) -> Result<PathBuf, String> {
    let line = json_out_path(stdout)?;
    let line = line.as_str();
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
        // before anything points at it: the profile, the boot loader
        if let Err(why) = kind.check_system(&system) {
            crate::deploy::drop_built_link(&config.state_dir);
            return Err(Report::error(
                NOT_RUN,
                format!("{what} refused: {why}; nothing was set or activated"),
            ));
        }
        let env = self.inner().env.clone();
        let (tool, current_link) = (config.switch_tool, config.current_system.clone());
        let current =
            tokio::task::spawn_blocking(move || running_system(tool, &current_link, &env))
                .await
                .ok()
                .flatten();
        let changes = self
            .show_preview(kind, plan, current.as_deref(), &system)
            .await;
        if kind == Kind::NixOs
            && let Err(refused) = self.guard_boot(what, &system).await
        {
            // a refused system is not kept from the garbage collector
            crate::deploy::drop_built_link(&config.state_dir);
            return Err(refused);
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
            config.rollback.activation_timeout,
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
        Ok(match action {
            Action::Boot => Switched(format!(
                "{what} installed for the next boot: {}; reboot to activate it",
                changes.inhibited.join("; ")
            )),
            _ => switched,
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

    /// `nix build` of `installable`, its output streamed (the build log is
    /// on stderr; stdout holds only the JSON): the built system.
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
            OsStr::new("--json"),
            OsStr::new("--out-link"),
            link.as_os_str(),
        ];
        if command == CommandName::ForceRebuild {
            // A cached "not in the binary cache" answer can keep serving an
            // old build (upstream P7220): forget negative lookups for this run.
            self.sink
                .note(format!(
                    "[nixfleet-agent] force rebuild: {}",
                    CACHE_BYPASS.join(" ")
                ))
                .await;
        }
        if !config.guard.build_on_host {
            self.sink
                .note(format!(
                    "[nixfleet-agent] substitute-only host (buildOnHost is off): {}",
                    NO_LOCAL_BUILDS.join(" ")
                ))
                .await;
        }
        // the dry run's options too (switches::nix_options)
        args.extend(
            nix_options(command, config.guard.build_on_host)
                .into_iter()
                .map(OsStr::new),
        );
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
        let system = tokio::task::spawn_blocking(move || built_path(&stdout, &store))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|why| Report::error(NOT_RUN, format!("{what} failed: {why}")))?;
        self.sink
            .note(format!("[nixfleet-agent] built {}", system.display()))
            .await;
        Ok(system)
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
        // what Nix 2.8 prints, and what Nix 2.26 adds (times)
        let json = |out: &str| {
            serde_json::json!([{"drvPath": "/nix/store/x.drv", "outputs": {"out": out}}])
                .to_string()
        };
        let out = json(&system.display().to_string());
        assert_eq!(built_path(&out, &store).unwrap(), system);
        let timed = format!(
            "[{{\"drvPath\":\"/nix/store/x.drv\",\"outputs\":{{\"out\":\"{}\"}},\"startTime\":1,\"stopTime\":2}}]\n",
            system.display()
        );
        assert_eq!(built_path(&timed, &store).unwrap(), system);
        let err = built_path("", &store).unwrap_err();
        assert!(err.contains("nix build --json"), "{err}");
        // a plain path (what --print-out-paths printed) is not the JSON
        assert!(built_path(&format!("{}\n", system.display()), &store).is_err());
        assert!(built_path("[]", &store).is_err());
        // two derivations built: not one system
        let one = serde_json::json!({"drvPath": "/nix/store/x.drv", "outputs": {"out": system}});
        let two = serde_json::json!([one, one]).to_string();
        assert!(built_path(&two, &store).is_err());
        assert!(built_path(r#"[{"outputs": {"dev": "/x"}}]"#, &store).is_err());
        assert!(built_path(&json("/etc"), &store).is_err());
        let escape = json(&format!("{}/../x", store.display()));
        assert!(built_path(&escape, &store).is_err());
        let parent = json(&format!("{}/..", store.display()));
        assert!(built_path(&parent, &store).is_err());
        // a name may hold dots
        let dotted = store.join("cccc-hello..2");
        std::fs::create_dir_all(&dotted).unwrap();
        assert_eq!(
            built_path(&json(&dotted.display().to_string()), &store).unwrap(),
            dotted
        );
        let missing = json(&format!("{}/bbbb-gone", store.display()));
        assert!(built_path(&missing, &store).is_err());
        let nested = json(&format!("{}/sub", system.display()));
        assert!(built_path(&nested, &store).is_err());
    }
}
