//! The closed set of command names the dashboard may send, and the busy
//! rules: which ones run while another command runs. Every name is matched
//! exactly; nothing else is ever executed.

/// The commands the dashboard may ask for (upstream `ops/registry.go`, plus
/// `pull-switch`, `update` and `kill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    /// `pull`.
    Pull,
    /// `switch`.
    Switch,
    /// `pull-switch`.
    PullSwitch,
    /// `test`.
    Test,
    /// `update`.
    Update,
    /// `rollback`.
    Rollback,
    /// `stop`.
    Stop,
    /// `kill` (the UI's Kill button).
    Kill,
    /// `restart`.
    Restart,
    /// `reboot`.
    Reboot,
    /// `check-version`.
    CheckVersion,
    /// `refresh-lock`.
    RefreshLock,
    /// `refresh-system`.
    RefreshSystem,
    /// `refresh-git`.
    RefreshGit,
}

/// How a command relates to the one running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Takes the slot: refused with `command_rejected` while another runs.
    Exclusive,
    /// Acts on the running command (`stop`, `kill`): works while busy; an
    /// error "no command running" when idle.
    OnRunning,
    /// Works while busy and ends the running command first (`restart`,
    /// `reboot`).
    Preempts,
}

impl CommandName {
    /// Every command.
    pub const ALL: [CommandName; 14] = [
        CommandName::Pull,
        CommandName::Switch,
        CommandName::PullSwitch,
        CommandName::Test,
        CommandName::Update,
        CommandName::Rollback,
        CommandName::Stop,
        CommandName::Kill,
        CommandName::Restart,
        CommandName::Reboot,
        CommandName::CheckVersion,
        CommandName::RefreshLock,
        CommandName::RefreshSystem,
        CommandName::RefreshGit,
    ];

    /// The command with exactly this name, if any.
    pub fn parse(name: &str) -> Option<CommandName> {
        CommandName::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::Pull => "pull",
            CommandName::Switch => "switch",
            CommandName::PullSwitch => "pull-switch",
            CommandName::Test => "test",
            CommandName::Update => "update",
            CommandName::Rollback => "rollback",
            CommandName::Stop => "stop",
            CommandName::Kill => "kill",
            CommandName::Restart => "restart",
            CommandName::Reboot => "reboot",
            CommandName::CheckVersion => "check-version",
            CommandName::RefreshLock => "refresh-lock",
            CommandName::RefreshSystem => "refresh-system",
            CommandName::RefreshGit => "refresh-git",
        }
    }

    /// The busy rule (upstream `commands.go`: stop, restart and reboot work
    /// while busy; the UI's Kill is a stop).
    pub fn busy(self) -> Busy {
        match self {
            CommandName::Stop | CommandName::Kill => Busy::OnRunning,
            CommandName::Restart | CommandName::Reboot => Busy::Preempts,
            _ => Busy::Exclusive,
        }
    }

    /// Whether the command switches the system (runs detached, survives the
    /// agent, and is followed by a restart on success).
    pub fn switches(self) -> bool {
        matches!(
            self,
            CommandName::Switch
                | CommandName::PullSwitch
                | CommandName::Update
                | CommandName::Rollback
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for c in CommandName::ALL {
            assert_eq!(CommandName::parse(c.as_str()), Some(c));
        }
        for bad in [
            "",
            "Pull",
            "pull ",
            "bump-flake",
            "force-rebuild",
            "kill_command",
            "../x",
        ] {
            assert_eq!(CommandName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_stop_kill_restart_and_reboot_work_while_busy() {
        let while_busy: Vec<&str> = CommandName::ALL
            .into_iter()
            .filter(|c| c.busy() != Busy::Exclusive)
            .map(CommandName::as_str)
            .collect();
        assert_eq!(while_busy, ["stop", "kill", "restart", "reboot"]);
    }
}
