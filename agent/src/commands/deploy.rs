//! The commands that switch the system: `switch`, `pull-switch`, `update`,
//! and the switches an earlier agent process left behind.

use super::*;

/// How the System compartment names a command's system phase.
pub(super) fn system_label(command: CommandName) -> &'static str {
    match command {
        CommandName::PullSwitch => "Pull+Switch",
        CommandName::Update => "Update+Switch",
        _ => "Switch",
    }
}

/// The outcome of a followed switch: `Ok(message)` or the failure report.
pub(super) fn switch_report(record: &Record, ended: Ended) -> Result<String, Report> {
    match ended {
        Ended::Exit(0) => Ok("Switch succeeded".to_string()),
        Ended::Exit(code) => Err(Report::error(
            code,
            failed_message("Switch", &record.label(), code, &record.tail()),
        )),
        Ended::Vanished => {
            let tail = record.tail();
            let mut message =
                "Switch failed: the switch supervisor ended without recording an exit code"
                    .to_string();
            if !tail.is_empty() {
                message.push_str(":\n");
                message.push_str(&tail);
            }
            Err(Report::error(NOT_RUN, message))
        }
    }
}

impl Run {
    pub(super) async fn switch(&mut self, command: CommandName) -> Result<String, Report> {
        if self.ctl.stop_cause().is_some() {
            return Err(Report::error(NOT_RUN, "Switch: not started".to_string()));
        }
        self.commands.row().begin(Phase::System);
        self.switched = true;
        let config = self.inner().config.clone();
        let argv = switch::argv(config.switch_tool.program(), &config.flake);
        let root = config.state_dir.join("switch");
        let record = Record::create(&root, command.as_str(), &argv).map_err(|e| {
            Report::error(
                NOT_RUN,
                format!(
                    "Switch failed: cannot prepare the switch record in {}: {e}",
                    root.display()
                ),
            )
        })?;
        self.record = Some(record.clone());
        self.ctl.set_detached();
        let child = record
            .spawn_supervisor(&self.inner().env, &config.repo_dir)
            .map_err(|e| {
                Report::error(
                    127,
                    format!("Switch failed: cannot start the switch supervisor: {e}"),
                )
            })?;
        if let Some(pid) = child.id() {
            self.ctl.publish_pid(pid);
        }
        let ended = switch::follow(&record, &self.sink, &self.ctl, Some(child), false).await;
        switch_report(&record, ended)
    }

    pub(super) async fn pull_switch(&mut self) -> Result<Report, Report> {
        let pulled = self.pull().await?;
        let switched = self
            .switch(CommandName::PullSwitch)
            .await
            .map_err(|r| r.after(&pulled))?;
        Ok(Report::ok(format!("{pulled}; {switched}")).with_restart())
    }

    pub(super) async fn update(&mut self) -> Result<Report, Report> {
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
        Ok(Report::ok(format!("{updated}; {switched}")).with_restart())
    }
}

impl Commands {
    /// Switches an earlier agent process left behind: report or adopt.
    pub(super) fn recover_switches(&self) {
        let root = self.inner.config.state_dir.join("switch");
        for record in switch::pending(&root) {
            if let Some(code) = record.exit_code() {
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
        switch::prune(&root, switch::KEEP_RECORDS);
    }

    pub(super) fn record_command(record: &Record) -> CommandName {
        match CommandName::parse(&record.command()) {
            Some(c @ (CommandName::Switch | CommandName::PullSwitch | CommandName::Update)) => c,
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
        record.mark_reported();
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
            let log = Arc::new(RunLog::create(&this.inner.config.log_dir, command.as_str()));
            let run = Run {
                commands: this.clone(),
                sink: Sink::new(command.as_str(), Some(this.inner.out.clone()), log),
                ctl,
                record: Some(record.clone()),
                switched: true,
                test_dots: None,
            };
            run.sink
                .note(format!(
                    "[nixfleet-agent] following `{}`, started by an earlier agent process",
                    record.label()
                ))
                .await;
            let ended = switch::follow(&record, &run.sink, &run.ctl, None, true).await;
            let report = switch_report(&record, ended)
                .map(|m| Report::ok(m).with_restart())
                .unwrap_or_else(|r| r);
            run.finish(report);
        });
        true
    }
}
