//! Running the agent's child processes: the environment every child gets
//! (never the token), the account a legacy checkout's git runs as, one run's
//! log file, and the runner that streams a process's output, tracks its
//! process group for `stop` and reports how it ended. The operations
//! (`commands/`) and the deploy machinery (`deploy/`) both build on it.

pub mod env;
pub mod owner;
pub mod runlog;
pub mod runner;
