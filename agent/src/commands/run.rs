//! One run of a command on its task: its steps, and how it is reported.

use super::*;

/// Runs one step; a non-zero exit or a failed start is the failure report.
pub(super) async fn step(
    sink: &Sink,
    ctl: &Control,
    env: &ChildEnv,
    what: &str,
    program: &OsStr,
    args: &[&OsStr],
    cwd: &Path,
) -> Result<StepResult, Report> {
    if ctl.stop_cause().is_some() {
        return Err(Report::error(NOT_RUN, format!("{what}: not started")));
    }
    let spec = Spec { program, args, cwd };
    match run_step(sink, ctl, env, &spec).await {
        Err(e) => Err(Report::error(
            127,
            format!(
                "{what} failed: cannot start {}: {e}",
                program.to_string_lossy()
            ),
        )),
        Ok(r) => exited(what, &spec, r),
    }
}

/// A step that ran: its result, or the failure report of a non-zero exit
/// (the command line and the output's tail).
pub(super) fn exited(what: &str, spec: &Spec<'_>, r: StepResult) -> Result<StepResult, Report> {
    if r.code == 0 {
        return Ok(r);
    }
    Err(Report::error(
        r.code,
        failed_message(
            what,
            &spec.label(),
            r.code,
            &failure_tail(&r.stderr, &r.stdout),
        ),
    ))
}

/// One run of a command on its task.
pub(super) struct Run {
    pub(super) commands: Commands,
    pub(super) sink: Sink,
    pub(super) ctl: Arc<Control>,
    /// The switch record this run started or adopted, marked reported at the end.
    pub(super) record: Option<Record>,
    /// Whether the run began a system phase (System is `working`).
    pub(super) switched: bool,
    /// Whether its system was installed for the next boot only.
    pub(super) boot_only: bool,
    /// System as it was when the system phase began: what it is again when
    /// the switch is stopped before it activated anything.
    pub(super) system_before: Option<crate::compartments::Check>,
    /// The test run's dots, once it began.
    pub(super) test_dots: Option<TestDots>,
    /// The commit whose signature this run verified (a `pull-switch`'s pull),
    /// so that its switch does not verify it again.
    pub(super) verified: Option<String>,
}

impl Run {
    /// The Nix the operations run, named in the output; `Err` (nothing
    /// run) when there is none on `PATH`, it fails, prints no version, or is
    /// older than [`crate::host::NIX_MINIMUM`].
    pub(super) async fn require_nix(&mut self, command: CommandName) -> Result<(), Report> {
        let env = self.inner().env.clone();
        let found = tokio::task::spawn_blocking(move || crate::host::require_nix(env.vars()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match found {
            Ok(nix) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] {} (Nix {})",
                        nix.line,
                        nix.number()
                    ))
                    .await;
                Ok(())
            }
            Err(why) => Err(Report::error(
                NOT_RUN,
                format!("{} refused: {why}", command.as_str()),
            )),
        }
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.commands.inner
    }

    pub(super) async fn git(&self, what: &str, args: &[&str]) -> Result<StepResult, Report> {
        self.git_in(&self.inner().env, what, args).await
    }

    /// `git` in the repository with the environment (and user) `env`.
    pub(super) async fn git_in(
        &self,
        env: &ChildEnv,
        what: &str,
        args: &[&str],
    ) -> Result<StepResult, Report> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let inner = self.inner();
        step(
            &self.sink,
            &self.ctl,
            env,
            what,
            OsStr::new("git"),
            &args,
            &inner.config.repo_dir,
        )
        .await
    }

    /// The compartments and the last dots after the run (before its status,
    /// so that the heartbeat after the status carries them).
    pub(super) fn settle_row(&self, report: &Report) {
        let row = self.commands.row();
        match CommandName::parse(self.ctl.name()) {
            Some(CommandName::Test) => {
                if let Some(dots) = &self.test_dots {
                    row.tests_result(dots, report.outcome, &report.message);
                }
            }
            Some(c) if self.switched && self.boot_only && report.outcome == Outcome::Ok => {
                row.system_installed_for_boot(switch_word(c))
            }
            // stopped while it built or previewed: nothing was activated
            Some(_)
                if self.switched
                    && self.record.is_none()
                    && report.outcome == Outcome::Stopped
                    && self.system_before.is_some() =>
            {
                if let Some(before) = self.system_before.clone() {
                    row.system_unchanged(before);
                }
            }
            Some(c) if self.switched => {
                row.system_result(system_label(c), report.outcome, report.exit_code)
            }
            _ => {}
        }
    }

    /// A watched switch succeeded: no status (the new generation's agent
    /// reports it), System stays `working`, what came before the switch is
    /// kept in the record for that status, and the agent exits for the
    /// restart on the new generation.
    fn defer(self, report: Report) {
        let inner = self.inner();
        let prefix = report.message.trim().trim_end_matches(';').trim();
        if let Some(record) = &self.record
            && !prefix.is_empty()
            && let Err(e) = record.write_file("prefix", prefix.as_bytes())
        {
            tracing::warn!("cannot keep the switch's prefix in its record: {e}");
        }
        self.sink.log().note(&format!(
            "[nixfleet-agent] {} switched; the next agent process confirms it or it is rolled back",
            self.ctl.name()
        ));
        tracing::info!(
            "{} switched; waiting for the new generation to confirm",
            self.ctl.name()
        );
        self.commands.release(&self.ctl);
        inner.exiting.store(true, Ordering::SeqCst);
        inner.state.request_exit(EXIT_RESTART);
        self.ctl.finish();
    }

    /// Ends the confirmation of a watched switch whose one status the
    /// process that ran it already sent: what the new generation came to
    /// goes to the output, the command's log and the System compartment,
    /// never to a second status; then a restart if it asks for one.
    pub(super) async fn finish_quietly(self, report: Report) {
        let inner = self.inner();
        let command = self.ctl.name().to_string();
        self.sink
            .note(format!(
                "[nixfleet-agent] {command}, reported before the restart: {}",
                report.message
            ))
            .await;
        tracing::info!(
            "{command} (reported before the restart) ended: {:?}",
            report.outcome
        );
        self.settle_row(&report);
        if let Some(record) = &self.record
            && let Err(e) = crate::deploy::confirm::mark_settled(record)
        {
            tracing::warn!(
                "cannot mark the switch record {} as settled: {e}; a later start shows its end again",
                record.dir().display()
            );
        }
        if report.restart {
            inner.exiting.store(true, Ordering::SeqCst);
        }
        self.commands.release(&self.ctl);
        if report.restart {
            inner.state.request_exit(EXIT_RESTART);
        }
        self.ctl.finish();
    }

    /// Reports the run: the slot is released first, then the status queued;
    /// a switch's status is written to the undelivered statuses before its
    /// record is marked reported (a kill or power loss in between must leave
    /// the status somewhere); then (after a successful switch) the agent is
    /// asked to exit for a restart.
    pub(super) async fn finish(self, mut report: Report) {
        if let Some(cause) = self.ctl.stop_cause()
            && report.outcome != Outcome::Ok
        {
            report.outcome = Outcome::Stopped;
            report.restart = false;
            report.message = match &report.stop_detail {
                Some(detail) => format!("{} ({detail})", stopped_message(cause)),
                None => stopped_message(cause).to_string(),
            };
        }
        let inner = self.inner();
        let command = self.ctl.name().to_string();
        if report.deferred {
            self.defer(report);
            return;
        }
        self.sink.log().note(&format!(
            "[nixfleet-agent] {command} ended: {:?} (exit {}): {}",
            report.outcome, report.exit_code, report.message
        ));
        tracing::info!(
            "{command} ended: {:?} (exit {})",
            report.outcome,
            report.exit_code
        );
        self.settle_row(&report);
        let restart = report.restart;
        if restart {
            // from the moment the slot is free, a command is refused ("the
            // agent is restarting") instead of started and then stopped by
            // the restart: a dashboard that sends the next command as soon
            // as it sees this status gets a true answer
            inner.exiting.store(true, Ordering::SeqCst);
        }
        self.commands.release(&self.ctl);
        self.commands.send_status(report, &command);
        if let Some(record) = self.record.clone() {
            let (out, dir) = (inner.out.clone(), inner.config.state_dir.clone());
            let persisted = tokio::task::spawn_blocking(move || {
                crate::undelivered::flush(&out, &dir);
                record.mark_reported();
                deploy::prune(&dir.join("switch"), deploy::KEEP_RECORDS);
            })
            .await;
            if let Err(e) = persisted {
                tracing::warn!("keeping the switch's status failed: {e}");
            }
        }
        if restart {
            inner.state.request_exit(EXIT_RESTART);
        }
        self.ctl.finish();
    }
}
