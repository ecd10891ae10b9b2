//! End-to-end: the README's first command. `nixfleet-mock-dashboard demo`
//! runs this very demo (`nixfleet_mock_dashboard::demo::run`) against the
//! agent built next to it; here it runs against this crate's binary, and every
//! step must get its answer (register, heartbeats, `pull`, `test` with
//! progress, `stop`, a clean close on SIGTERM) without a protocol violation.
//!
//! The transcript goes to stdout, so it shows with `--nocapture` or when the
//! test fails.

use std::path::PathBuf;
use std::time::Duration;

use nixfleet_mock_dashboard::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_cleanly_against_the_real_agent() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_nixfleet-agent"));
    // The demo bounds every step itself (about 5 s when all goes well, under
    // two minutes when nothing answers); this only catches a hang.
    let outcome = tokio::time::timeout(Duration::from_secs(300), demo::run(agent))
        .await
        .expect("the demo finishes within 5 minutes");
    let mut problems = String::new();
    if let Some(e) = &outcome.setup_error {
        problems.push_str(&format!("\nthe demo could not set itself up: {e}"));
    }
    for step in &outcome.unanswered {
        problems.push_str(&format!("\nunanswered: {step}"));
    }
    for v in &outcome.violations {
        problems.push_str(&format!(
            "\nprotocol violation (frame {}): {}",
            v.seq, v.message
        ));
    }
    assert!(
        outcome.success(),
        "the demo (`cargo run -p nixfleet-mock-dashboard -- demo`) fails against the \
         real agent; the transcript is in the captured stdout above:{problems}"
    );
}
