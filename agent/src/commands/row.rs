//! What a run changes in the dashboard's host row: the System and Tests
//! compartments (protocol.md's transition table, upstream `commands.go`) and
//! the Status column's progress dots (`operation_progress`, at the phase
//! boundaries upstream's agent uses: pull 0/4 → 4/4, system 0/3 → 3/3, tests
//! one dot per script, at most [`MAX_TEST_DOTS`]).
//!
//! Progress frames go through the outbox, like `status`: in order after the
//! output before them, and the last one before the run's `status`.

use crate::compartments::{Check, Level, Part, Store};
use crate::outbound::Outbound;
use crate::protocol::{
    MAX_TEST_DOTS, OperationProgress, Outcome, Outgoing, PhaseProgress, Progress, TestsProgress,
};

/// Steps of the pull phase, as upstream counts them.
pub const PULL_STEPS: u32 = 4;
/// Steps of the system phase, as upstream counts them.
pub const SYSTEM_STEPS: u32 = 3;

/// The host row of one agent: its compartments and the outbox for the dots.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The compartments.
    pub store: &'a Store,
    /// Where progress frames go.
    pub out: &'a Outbound,
}

/// The phases a run moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching the configuration.
    Pull,
    /// Building and activating a system (switch, rollback).
    System,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseEnd {
    /// It did what it should.
    Complete,
    /// It failed or was stopped.
    Failed,
}

impl Row<'_> {
    fn send(&self, progress: Progress) {
        self.out
            .reliable(Outgoing::OperationProgress(OperationProgress { progress }));
    }

    /// A phase begins: its dots start at 0; a system phase makes System `working`.
    pub fn begin(&self, phase: Phase) {
        match phase {
            Phase::Pull => self.send(Progress {
                pull: Some(PhaseProgress {
                    current: 0,
                    total: PULL_STEPS,
                    status: "in_progress",
                }),
                ..Progress::default()
            }),
            Phase::System => {
                self.store.set(
                    Part::System,
                    Check::now(Level::Working, "Switch in progress…"),
                );
                self.send(Progress {
                    system: Some(PhaseProgress {
                        current: 0,
                        total: SYSTEM_STEPS,
                        status: "in_progress",
                    }),
                    ..Progress::default()
                });
            }
        }
    }

    /// A phase ends: all dots on success, none (status `error`) otherwise.
    pub fn end(&self, phase: Phase, how: PhaseEnd) {
        let total = match phase {
            Phase::Pull => PULL_STEPS,
            Phase::System => SYSTEM_STEPS,
        };
        let p = match how {
            PhaseEnd::Complete => PhaseProgress {
                current: total,
                total,
                status: "complete",
            },
            PhaseEnd::Failed => PhaseProgress {
                current: 0,
                total,
                status: "error",
            },
        };
        let progress = match phase {
            Phase::Pull => Progress {
                pull: Some(p),
                ..Progress::default()
            },
            Phase::System => Progress {
                system: Some(p),
                ..Progress::default()
            },
        };
        self.send(progress);
    }

    /// A pull moved HEAD: the running system is behind the repository.
    pub fn pulled_new_commit(&self) {
        self.store.set(
            Part::System,
            Check::now(Level::Outdated, "Pull completed - rebuild needed"),
        );
    }

    /// A system phase (switch, pull-switch, update, rollback) ended with
    /// `outcome`; `what` names it for the message ("Switch", "Rollback").
    pub fn system_result(&self, what: &str, outcome: Outcome, exit_code: i32) {
        match outcome {
            // a switch whose result cannot be known (`warning`)
            Outcome::Warning if exit_code != 0 => {
                self.store.set(
                    Part::System,
                    Check::now(Level::Unknown, format!("{what} result unknown")),
                );
                self.end(Phase::System, PhaseEnd::Failed);
            }
            Outcome::Ok | Outcome::Warning => {
                self.store.set(
                    Part::System,
                    Check::now(Level::Ok, format!("{what} succeeded")),
                );
                self.store.set(
                    Part::Tests,
                    Check::now(
                        Level::Outdated,
                        "Tests not run — run Test to verify the system",
                    ),
                );
                self.end(Phase::System, PhaseEnd::Complete);
            }
            Outcome::Error => {
                self.store.set(
                    Part::System,
                    Check::now(Level::Error, format!("{what} failed (exit {exit_code})")),
                );
                self.end(Phase::System, PhaseEnd::Failed);
            }
            Outcome::Stopped => {
                self.store.set(
                    Part::System,
                    Check::now(
                        Level::Unknown,
                        format!(
                            "{what} stopped before it finished: the system may be partly switched"
                        ),
                    ),
                );
                self.end(Phase::System, PhaseEnd::Failed);
            }
        }
    }

    /// A system phase installed a system for the next boot without
    /// activating it: System `ok` saying so (the heartbeat adds the reboot
    /// need), the dots complete; Tests stay, the running system is the same.
    pub fn system_installed_for_boot(&self, what: &str) {
        self.store.set(
            Part::System,
            Check::now(Level::Ok, format!("{what} installed for the next boot")),
        );
        self.end(Phase::System, PhaseEnd::Complete);
    }

    /// A system phase ended before it changed the system (stopped while it
    /// built): System is `before` again, the dots end.
    pub fn system_unchanged(&self, before: Check) {
        self.store.set(Part::System, before);
        self.end(Phase::System, PhaseEnd::Failed);
    }

    /// A test run begins with `total` scripts.
    pub fn tests_begin(&self, total: usize) {
        self.store
            .set(Part::Tests, Check::now(Level::Working, "Tests running…"));
        self.tests_dots(&TestDots::new(total), "in_progress");
    }

    /// Sends the tests dots with `status`.
    pub fn tests_dots(&self, dots: &TestDots, status: &'static str) {
        self.send(Progress {
            tests: Some(TestsProgress {
                current: dots.current,
                total: dots.results.len() as u32,
                results: dots.results.clone(),
                status,
            }),
            ..Progress::default()
        });
    }

    /// A test run ended with `outcome` and the run's summary `message`.
    pub fn tests_result(&self, dots: &TestDots, outcome: Outcome, message: &str) {
        let (level, status) = match outcome {
            Outcome::Ok | Outcome::Warning => (Level::Ok, "complete"),
            Outcome::Error => (Level::Error, "error"),
            Outcome::Stopped => (Level::Unknown, "error"),
        };
        let message = if outcome == Outcome::Stopped {
            format!("Tests stopped before they finished: {message}")
        } else {
            message.to_string()
        };
        self.store.set(Part::Tests, Check::now(level, message));
        self.tests_dots(dots, status);
    }
}

/// One dot per test script, at most [`MAX_TEST_DOTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDots {
    /// Scripts finished among the shown ones.
    pub current: u32,
    /// `pass`, `fail` or `pending` per shown script.
    pub results: Vec<&'static str>,
}

impl TestDots {
    /// `total` scripts, none run yet.
    pub fn new(total: usize) -> TestDots {
        TestDots {
            current: 0,
            results: vec!["pending"; total.min(MAX_TEST_DOTS)],
        }
    }

    /// Script number `index` (from 0) passed or failed.
    pub fn record(&mut self, index: usize, passed: bool) {
        if let Some(slot) = self.results.get_mut(index) {
            *slot = if passed { "pass" } else { "fail" };
            self.current = self.current.max(index as u32 + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_capped_at_eight() {
        let mut dots = TestDots::new(11);
        assert_eq!(dots.results.len(), MAX_TEST_DOTS);
        dots.record(0, true);
        dots.record(1, false);
        dots.record(9, true); // past the shown ones: not drawn
        assert_eq!(dots.current, 2);
        assert_eq!(&dots.results[..3], &["pass", "fail", "pending"]);
    }
}
