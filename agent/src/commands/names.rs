//! The closed set of command names the dashboard may send.

/// The commands the dashboard may ask for.
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
    /// `stop`.
    Stop,
    /// `restart`.
    Restart,
}

impl CommandName {
    /// Every command.
    pub const ALL: [CommandName; 7] = [
        CommandName::Pull,
        CommandName::Switch,
        CommandName::PullSwitch,
        CommandName::Test,
        CommandName::Update,
        CommandName::Stop,
        CommandName::Restart,
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
            CommandName::Stop => "stop",
            CommandName::Restart => "restart",
        }
    }
}
