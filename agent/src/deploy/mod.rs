//! The deploy machinery: what makes a switch finish, be reported once, and
//! be rolled back when its new generation is not healthy, whatever happens to
//! the agent process meanwhile.
//!
//! - `record`: the switch record, the directory a switch leaves behind;
//! - `supervisor`: the detached process that runs the switch's activation,
//!   and the agent's side that follows it;
//! - `activation`: the one way a built system is activated (the system
//!   profile, then `switch-to-configuration` through `systemd-run`, or
//!   `activate`), for a switch and for the watchdog's rollback;
//! - `watch`: what a switch is watched against, taken before it starts;
//! - `watchdog`: the rollback watchdog (the verdict, the deadline, the
//!   rollback), run by the supervisor;
//! - [`confirm`]: the record's side of a watched switch for the operations:
//!   preparing it, and what its verdict comes to.
//!
//! The operations in `commands/` (`switch`, `pull-switch`, `update`,
//! `force-rebuild`, `rollback`, and the confirmation by the next agent
//! process) use only what is exported here: a [`Record`] to start under the
//! supervisor ([`Record::spawn_supervisor`]) and [`follow`], the activation's
//! command line ([`activate_argv`]), and [`confirm`].

mod activation;
pub mod confirm;
mod record;
mod supervisor;
mod watch;
mod watchdog;

pub use activation::{
    ACTIVATE_FLAG, Action, Kind, Target, activate_argv, activate_main, activation, transient_unit,
};
pub use record::{KEEP_RECORDS, POLL, Record, SUPERVISE_FLAG, pending, prune};
pub use supervisor::{Ended, argv, follow, supervise_main};
pub use watch::units;
pub use watchdog::{BUILT_LINK, Verdict, Watch, drop_built_link};
