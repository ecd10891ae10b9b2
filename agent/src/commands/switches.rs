//! The commands that switch the system: `switch`, `pull-switch`, `update`,
//! `rollback`, and the switches an earlier agent process left behind. Each
//! runs detached under the switch supervisor (`deploy/supervisor.rs`), so it
//! survives the agent's own restart and its result is reported once.
//!
//! `rollback` switches to the previous generation: on NixOS and nix-darwin
//! the system profile goes back one generation (`nix-env --rollback`, as
//! `nixos-rebuild switch --rollback` and `darwin-rebuild switch --rollback`
//! do) and that system is activated the one way every switch is
//! (`deploy/activation.rs`); Home Manager runs the `activate` of the
//! generation before the current one in its profile directory (where Home
//! Manager keeps it: [`crate::host::home_manager_profiles`]). Like a switch it exits
//! [`EXIT_RESTART`](crate::config::EXIT_RESTART) after reporting success, so
//! that the agent runs the rolled-back binary: the hub completes a `rollback`
//! at the heartbeat after its status (its post-check wants System `ok`),
//! which the agent sends before it exits.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::SwitchTool;
use crate::deploy::{Action, Kind, Target, activate_argv, confirm};

/// The options `force-rebuild` adds to the rebuild (`nixos-rebuild`,
/// `darwin-rebuild` and `home-manager` pass `--option` on to Nix).
pub(super) const CACHE_BYPASS: [&str; 3] = ["--option", "narinfo-cache-negative-ttl", "0"];

/// `--max-jobs 0`: Nix builds nothing here (a substitute-only host: what is
/// missing must come from a binary cache, or the build fails).
pub(super) const NO_LOCAL_BUILDS: [&str; 2] = ["--max-jobs", "0"];

/// The Nix options of `command`'s dry run and build alike, so that the plan
/// is made with what the build will use: `force-rebuild`'s cache bypass,
/// and on a substitute-only host (`buildOnHost = false`) no local builds.
pub(super) fn nix_options(command: CommandName, build_on_host: bool) -> Vec<&'static str> {
    let mut options = Vec::new();
    if command == CommandName::ForceRebuild {
        options.extend(CACHE_BYPASS);
    }
    if !build_on_host {
        options.extend(NO_LOCAL_BUILDS);
    }
    options
}

/// How the System compartment names a command's system phase.
pub(super) fn system_label(command: CommandName) -> &'static str {
    match command {
        CommandName::PullSwitch => "Pull+Switch",
        CommandName::Update => "Update+Switch",
        CommandName::Rollback => "Rollback",
        CommandName::ForceRebuild => "Force rebuild",
        _ => "Switch",
    }
}

/// How a status names the system change itself ("Switch succeeded").
pub(super) fn switch_word(command: CommandName) -> &'static str {
    match command {
        CommandName::Rollback => "Rollback",
        CommandName::ForceRebuild => "Force rebuild",
        _ => "Switch",
    }
}

/// The outcome of a followed switch: `Ok(message)` or the failure report.
pub(super) fn switch_report(record: &Record, ended: Ended) -> Result<String, Report> {
    let what = switch_word(Commands::record_command(record));
    match ended {
        Ended::Exit(0) => Ok(format!("{what} succeeded")),
        Ended::Unrecorded(0) => Ok(format!(
            "{what} succeeded (its exit code reached the agent through the supervisor's exit status: the switch record could not be written)"
        )),
        Ended::Exit(code) | Ended::Unrecorded(code) => Err(Report::error(
            code,
            failed_message(what, &record.label(), code, &record.tail()),
        )),
        Ended::Vanished => {
            // Neither the record nor the supervisor tells how the tool ended:
            // say so, never "failed".
            let tail = record.tail();
            let mut message = format!(
                "{what} result unknown: the switch supervisor ended without recording the exit code of `{}`",
                record.label()
            );
            if !tail.is_empty() {
                message.push_str(":\n");
                message.push_str(&tail);
            }
            let mut report = Report::error(NOT_RUN, message);
            report.outcome = Outcome::Warning;
            Err(report)
        }
    }
}

/// A switch that did not fail: the message of its status (a watched
/// switch's too: its health checks ran before the agent leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Switched(pub(super) String);

impl Switched {
    /// The run's report: `before` (what came first, a pull's result) and the
    /// switch.
    pub(super) fn report(self, before: Option<&str>) -> Report {
        match before {
            None => Report::ok(self.0).with_restart(),
            Some(b) => Report::ok(format!("{b}; {}", self.0)).with_restart(),
        }
    }
}

impl Run {
    pub(super) async fn switch(&mut self, command: CommandName) -> Result<Switched, Report> {
        let config = self.inner().config.clone();
        let pin = |commit: &str| trust::pinned_flake(&config.repo_dir, &config.flake, commit);
        let pinnable = pin("0").is_some();
        let verified = self.check_head(system_label(command), pinnable).await?;
        // with signatures required, the verified commit itself is built
        let flake = verified
            .as_deref()
            .and_then(pin)
            .unwrap_or_else(|| config.flake.clone());
        let plan = self
            .preview_and_guard(
                system_label(command),
                &flake,
                &nix_options(command, config.guard.build_on_host),
            )
            .await?;
        self.build_and_activate(command, &flake, &plan).await
    }

    pub(super) async fn rollback(&mut self) -> Result<Report, Report> {
        let config = self.inner().config.clone();
        let argv = match config.switch_tool {
            SwitchTool::HomeManager => {
                let env = &self.inner().env;
                let activate = crate::host::home_manager_profiles(&|n| env.var(n))
                    .and_then(|dir| previous_home_manager_generation(&dir))
                    .map_err(|why| Report::error(NOT_RUN, format!("Rollback failed: {why}")))?;
                self.sink
                    .note(format!(
                        "[nixfleet-agent] rolling back to {}",
                        activate.display()
                    ))
                    .await;
                vec![activate.into_os_string()]
            }
            // the profile's previous generation, then the one activation
            // path (deploy/activation.rs), as `nixos-rebuild switch
            // --rollback` and `darwin-rebuild switch --rollback` do
            tool => activate_argv(
                Kind::of(tool),
                Action::Switch,
                &config.rollback.system_profile,
                &Target::PreviousGeneration,
                config.rollback.activation_timeout,
            )
            .map_err(|e| {
                Report::error(
                    NOT_RUN,
                    format!(
                        "Rollback failed: cannot name the agent's own binary for the activation: {e}"
                    ),
                )
            })?,
        };
        self.detached(CommandName::Rollback, argv, true)
            .await
            .map(|switched| switched.report(None))
    }

    /// Runs `argv` under the switch supervisor and follows it to its end;
    /// `watched`: the rollback watchdog guards it (a switch that changes the
    /// running system).
    pub(super) async fn detached(
        &mut self,
        command: CommandName,
        argv: Vec<OsString>,
        watched: bool,
    ) -> Result<Switched, Report> {
        let what = switch_word(command);
        if self.ctl.stop_cause().is_some() {
            return Err(Report::error(NOT_RUN, format!("{what}: not started")));
        }
        self.begin_system();
        let config = self.inner().config.clone();
        let root = config.state_dir.join("switch");
        // made (and synced) on the blocking pool: the disk never holds up
        // the runtime thread
        let (r, a) = (root.clone(), argv.clone());
        let made = tokio::task::spawn_blocking(move || Record::create(&r, command.as_str(), &a))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let record = made.map_err(|e| {
            Report::error(
                NOT_RUN,
                format!(
                    "{what} failed: cannot prepare the switch record in {}: {e}",
                    root.display()
                ),
            )
        })?;
        self.record = Some(record.clone());
        if watched {
            self.prepare_watch(&record).await;
        }
        self.ctl.set_detached();
        let child = record
            .spawn_supervisor(&self.inner().env, &config.repo_dir)
            .map_err(|e| {
                Report::error(
                    127,
                    format!("{what} failed: cannot start the switch supervisor: {e}"),
                )
            })?;
        if let Some(pid) = child.id() {
            self.ctl.publish_pid(pid);
        }
        let ended = deploy::follow(&record, &self.sink, &self.ctl, Some(child), false).await;
        if let Ended::Exit(code) = ended
            && let Some(watch) = confirm::watched(&record, code)
        {
            return self
                .check_before_leaving(command, &record, &watch)
                .await
                .map(Switched);
        }
        switch_report(&record, ended).map(Switched)
    }

    /// Whether the switch that ended so (followed by an agent that did not
    /// start it: the one that did died on the way) is watched: it is
    /// reported by the next agent process, once the new generation confirmed
    /// it (or it was rolled back). Says so in the output.
    async fn watched(&self, record: &Record, ended: Ended) -> bool {
        let Ended::Exit(code) = ended else {
            return false;
        };
        let Some(watch) = confirm::watched(record, code) else {
            return false;
        };
        self.sink
            .note(format!(
                "[nixfleet-agent] switched; the agent restarts, and the new generation's agent confirms the switch within {} s or it is rolled back",
                watch.deadline.as_secs()
            ))
            .await;
        true
    }

    pub(super) async fn pull_switch(&mut self) -> Result<Report, Report> {
        let pulled = self.pull().await?;
        let switched = self
            .switch(CommandName::PullSwitch)
            .await
            .map_err(|r| r.after(&pulled))?;
        Ok(switched.report(Some(&pulled)))
    }

    pub(super) async fn update(&mut self) -> Result<Report, Report> {
        if self.inner().config.trust.require_signed {
            return Err(Report::error(
                NOT_RUN,
                "Update refused: only signed commits are deployed, and `nix flake update` would deploy a flake.lock that no signed commit holds; update the lock in the repository, sign the commit, then pull-switch".to_string(),
            ));
        }
        let args: [&OsStr; 4] = [
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
            OsStr::new("flake"),
            OsStr::new("update"),
        ];
        let inner = self.inner();
        step(
            &self.sink,
            &self.ctl,
            &inner.env,
            "Update",
            OsStr::new("nix"),
            &args,
            &inner.config.repo_dir,
        )
        .await?;
        self.inner().state.request_refresh();
        let updated = "Update: flake inputs updated";
        let switched = self
            .switch(CommandName::Update)
            .await
            .map_err(|r| r.after(updated))?;
        Ok(switched.report(Some(updated)))
    }
}

impl Commands {
    /// Switches an earlier agent process left behind: report or adopt.
    pub(super) fn recover_switches(&self) {
        let root = self.inner.config.state_dir.join("switch");
        for record in deploy::pending(&root) {
            if let Some(code) = record.exit_code() {
                if let Some(watch) = confirm::watched(&record, code) {
                    if !self.confirm_switch(record.clone(), watch) {
                        tracing::warn!(
                            "another switch is already followed; {} stays for the next start",
                            record.dir().display()
                        );
                    }
                    continue;
                }
                self.report_record(&record, Ended::Exit(code));
            } else if record.supervisor_alive() {
                if !self.adopt(record.clone()) {
                    tracing::warn!(
                        "another switch is already followed; {} stays for the next start",
                        record.dir().display()
                    );
                }
            } else {
                self.report_record(&record, Ended::Vanished);
            }
        }
        // reported before the agent left, their checks passed: the new
        // generation's agent has to reach the dashboard (no second status)
        for (record, watch) in confirm::awaiting_new_agent(&root) {
            if !self.confirm_switch(record.clone(), watch) {
                tracing::warn!(
                    "another switch is already followed; {} stays for the next start",
                    record.dir().display()
                );
            }
        }
        deploy::prune(&root, deploy::KEEP_RECORDS);
    }

    pub(super) fn record_command(record: &Record) -> CommandName {
        match CommandName::parse(&record.command()) {
            Some(c) if c.switches() => c,
            _ => CommandName::Switch,
        }
    }

    /// Reports a switch that ended while no agent was watching.
    pub(super) fn report_record(&self, record: &Record, ended: Ended) {
        let command = Self::record_command(record);
        tracing::info!(
            "reporting the switch {} left by an earlier agent process: {ended:?}",
            record.dir().display()
        );
        let mut report = switch_report(record, ended)
            .map(Report::ok)
            .unwrap_or_else(|r| r);
        report
            .message
            .push_str(" (started by an earlier agent process)");
        self.row()
            .system_result(system_label(command), report.outcome, report.exit_code);
        self.send_status(report, command.as_str());
        // at start, before connecting: the status is kept before the record
        // stops counting
        crate::undelivered::flush(&self.inner.out, &self.inner.config.state_dir);
        record.mark_reported();
    }

    /// The run of a switch record an earlier agent process left, saying so
    /// in its output ("[nixfleet-agent] following `…`, started by an earlier
    /// agent process").
    pub(super) async fn earlier_run(
        &self,
        command: CommandName,
        ctl: Arc<Control>,
        record: &Record,
        doing: &str,
        done: &str,
    ) -> Run {
        let log =
            Arc::new(RunLog::create_off_thread(&self.inner.config.log_dir, command.as_str()).await);
        let run = Run {
            commands: self.clone(),
            sink: Sink::new(command.as_str(), Some(self.inner.out.clone()), log),
            ctl,
            record: Some(record.clone()),
            switched: true,
            boot_only: false,
            system_before: None,
            test_dots: None,
            verified: None,
        };
        run.sink
            .note(format!(
                "[nixfleet-agent] {doing} `{}`, {done} by an earlier agent process",
                record.label()
            ))
            .await;
        run
    }

    /// Follows a switch still running from an earlier agent process.
    pub(super) fn adopt(&self, record: Record) -> bool {
        let command = Self::record_command(&record);
        let Some(ctl) = self.claim(command) else {
            return false;
        };
        if let Some(pid) = record.supervisor_pid() {
            ctl.publish_pid(pid);
        }
        tracing::info!(
            "adopting the running switch {} of an earlier agent process",
            record.dir().display()
        );
        let this = self.clone();
        tokio::spawn(async move {
            let run = this
                .earlier_run(command, ctl, &record, "following", "started")
                .await;
            let ended = deploy::follow(&record, &run.sink, &run.ctl, None, true).await;
            if run.watched(&record, ended).await {
                run.finish(Report::watched(None)).await;
                return;
            }
            let report = switch_report(&record, ended)
                .map(|m| Report::ok(m).with_restart())
                .unwrap_or_else(|r| r);
            run.finish(report).await;
        });
        true
    }
}

/// The `activate` of the Home Manager generation a `rollback` goes to, in
/// the profile directory `dir` ([`crate::host::home_manager_profiles`]):
/// the newest generation before the current one that holds another
/// configuration. A Home Manager activation always makes a new generation,
/// so after a rollback the current generation is a copy of an older one;
/// the next rollback walks back from that older one (as `nix-env
/// --rollback` walks back a system profile) instead of toggling between
/// the last two.
pub fn previous_home_manager_generation(dir: &Path) -> Result<PathBuf, String> {
    let number = |name: &str| -> Option<u64> {
        name.strip_prefix("home-manager-")?
            .strip_suffix("-link")?
            .parse()
            .ok()
    };
    let current = std::fs::read_link(dir.join("home-manager"))
        .ok()
        .and_then(|t| t.file_name().and_then(|n| number(&n.to_string_lossy())))
        .ok_or_else(|| format!("no Home Manager profile in {}", dir.display()))?;
    let link = |n: u64| dir.join(format!("home-manager-{n}-link"));
    // every generation with the configuration it holds (its store path)
    let mut generations: Vec<(u64, Option<PathBuf>)> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| number(&e.file_name().to_string_lossy()))
        .map(|n| (n, std::fs::read_link(link(n)).ok()))
        .collect();
    generations.sort();
    let held = generations
        .iter()
        .find(|(n, _)| *n == current)
        .and_then(|(_, p)| p.clone());
    // the generation this one is a copy of (the oldest with its path), if any
    let origin = generations
        .iter()
        .find(|(n, p)| *n < current && held.is_some() && *p == held)
        .map_or(current, |(n, _)| *n);
    let previous = generations
        .iter()
        .rev()
        .find(|(n, p)| *n < origin && (held.is_none() || *p != held))
        .map(|(n, _)| *n)
        .ok_or_else(|| format!("no Home Manager generation before {current}"))?;
    let activate = link(previous).join("activate");
    if activate.is_file() {
        Ok(activate)
    } else {
        Err(format!("{} is missing", activate.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_home_manager_generation() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".local/state/nix/profiles");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(previous_home_manager_generation(&dir).is_err());
        for n in [3, 7, 9] {
            let g = home.path().join(format!("gen{n}"));
            std::fs::create_dir_all(&g).unwrap();
            std::fs::write(g.join("activate"), "#!/bin/sh\n").unwrap();
            std::os::unix::fs::symlink(&g, dir.join(format!("home-manager-{n}-link"))).unwrap();
        }
        std::os::unix::fs::symlink("home-manager-9-link", dir.join("home-manager")).unwrap();
        let prev = previous_home_manager_generation(&dir).unwrap();
        assert!(
            prev.ends_with("home-manager-7-link/activate"),
            "{}",
            prev.display()
        );
        // a rollback to 7 made generation 10, a copy of 7: the next rollback
        // walks back to 3, never toggles to 9
        std::os::unix::fs::symlink(home.path().join("gen7"), dir.join("home-manager-10-link"))
            .unwrap();
        std::fs::remove_file(dir.join("home-manager")).unwrap();
        std::os::unix::fs::symlink("home-manager-10-link", dir.join("home-manager")).unwrap();
        let prev = previous_home_manager_generation(&dir).unwrap();
        assert!(
            prev.ends_with("home-manager-3-link/activate"),
            "{}",
            prev.display()
        );
        // and from a copy of the oldest there is nothing before
        std::os::unix::fs::symlink(home.path().join("gen3"), dir.join("home-manager-11-link"))
            .unwrap();
        std::fs::remove_file(dir.join("home-manager")).unwrap();
        std::os::unix::fs::symlink("home-manager-11-link", dir.join("home-manager")).unwrap();
        assert!(previous_home_manager_generation(&dir).is_err());
    }
}
