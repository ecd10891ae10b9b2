//! The closed set of command names the dashboard may send, and the busy
//! rules: which ones run while another command runs. Every name is matched
//! exactly; nothing else is ever executed.

/// The commands the dashboard may ask for (upstream `ops/registry.go` but
/// `bump-flake`, plus `pull-switch`, `update` and `kill`).
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
    /// `force-rebuild`: a switch that bypasses Nix's cached negative
    /// substituter lookups (upstream's registry: "Rebuild with cache bypass").
    ForceRebuild,
}

/// The one agent op of upstream's registry that this agent refuses on
/// purpose (upstream's own agent has no `bump-flake` either).
pub const BUMP_FLAKE: &str = "bump-flake";

/// Why `bump-flake` is refused: the status message.
pub const BUMP_FLAKE_REFUSED: &str = "bump-flake is not run by this agent: a flake input updated on the host is reset by the next pull of the agent's clone (or leaves a legacy checkout differing from its repository); update the input in the configuration repository (nix flake update <input>, commit, push), then pull-switch";

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
    pub const ALL: [CommandName; 15] = [
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
        CommandName::ForceRebuild,
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
            CommandName::ForceRebuild => "force-rebuild",
        }
    }

    /// Whether it runs Nix (`nix`, `nix-env`, an activation that does): it
    /// fails at once, before anything else, on a host without a supported
    /// Nix.
    pub fn needs_nix(self) -> bool {
        self.switches() || self == CommandName::RefreshSystem
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
                | CommandName::ForceRebuild
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
            "force-update",
            "Force-rebuild",
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
