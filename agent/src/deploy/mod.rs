//! The deploy machinery: what makes a switch finish, be reported once, and
//! be rolled back when its new generation is not healthy, whatever happens to
//! the agent process meanwhile.
//!
//! - [`record`]: the switch record, the directory a switch leaves behind;
//! - [`supervisor`]: the detached process that runs the switch tool, and the
//!   agent's side that follows it;
//! - [`watch`]: what a switch is watched against, taken before it starts;
//! - [`watchdog`]: the rollback watchdog (the verdict, the deadline, the
//!   rollback);
//! - `activation`: activating a NixOS system outside the agent's sandbox.
//!
//! The operations in `commands/` (`switch`, `pull-switch`, `update`,
//! `force-rebuild`, `rollback`, and the confirmation by the next agent
//! process) call it through [`Record`], [`supervisor::follow`] and the
//! watchdog's verdict functions.

pub mod activation;
pub mod record;
pub mod supervisor;
pub mod watch;
pub mod watchdog;

pub use activation::{
    ACTIVATE_FLAG, Action, Kind, activate_argv, activate_main, activation, transient_unit,
};
pub use record::{EXIT_NOT_STARTED, KEEP_RECORDS, POLL, Record, SUPERVISE_FLAG, pending, prune};
pub use supervisor::{Ended, argv, follow, supervise_main};
