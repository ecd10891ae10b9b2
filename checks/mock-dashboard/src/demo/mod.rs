//! The demo: a dashboard, the real agent and a throw-away configuration
//! repository, with a live transcript of what crosses the wire on stdout.
//!
//! [`run`] makes a configuration repository, a fake Nix store and fake
//! `nix` / `nix-env` scripts in a temporary directory, starts a
//! [`MockDashboard`] on a free loopback port and the agent binary, and walks
//! through registration, heartbeats, `pull`, `test` with progress, `stop` of a
//! long test run and a SIGTERM. Every step waits for its answer with a
//! timeout; a step whose answer does not come says so in the transcript, is
//! listed in [`DemoOutcome::unanswered`], and the demo goes on.
//!
//! The `demo` command of `nixfleet-mock-dashboard` is [`find_agent`] and
//! [`run`]; the agent crate's `tests/demo.rs` runs it against the real agent.
//!
//! ```no_run
//! # async fn demo() {
//! use nixfleet_mock_dashboard::demo;
//!
//! let agent = demo::find_agent(None).expect("the agent binary");
//! let outcome = demo::run(agent).await;
//! assert!(outcome.success(), "{outcome:#?}");
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Event, Frame, MockDashboard, Op, Options, Violation};

mod find;
mod fixture;
mod ops;
mod process;
mod show;
mod stream;
mod switch;

use find::absolute;
pub use find::find_agent;
use fixture::{LOCK_V1, LOCK_V2, T01, T02, git, t03, write_script};
use process::{Exit, Launch, signal};
use show::{code, summarize, text};

/// The demo host's name.
const HOST: &str = "demo-host";

/// How long the agent may take to show that it works on a command (the
/// protocol's budget from dispatch to the first output is 2 s; a heartbeat
/// shows the pending command within a second).
const FIRST_SIGN: Duration = Duration::from_secs(5);

/// The agent binary's file name.
const AGENT_NAME: &str = "nixfleet-agent";

/// The environment variable [`find_agent`] looks at after `--agent`.
const AGENT_VAR: &str = "NIXFLEET_AGENT_BIN";

/// What to do when the agent binary is not found.
const HINT: &str = "Run `cargo build` first (it puts both programs in target/debug), \
                    or give --agent PATH, or set NIXFLEET_AGENT_BIN.";

/// How a demo run went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoOutcome {
    /// The protocol violations the dashboard recorded, oldest first.
    pub violations: Vec<Violation>,
    /// The steps whose expected answer never came (or came wrong), one line
    /// each, e.g. ``3. pull: no `status` for pull (no answer within 5 s)``.
    pub unanswered: Vec<String>,
    /// Why the demo itself could not do its part (temporary files, git, the
    /// dashboard, starting the agent), when it could not; the first such
    /// problem.
    pub setup_error: Option<String>,
}

impl DemoOutcome {
    /// No violation, every step answered, no setup problem.
    pub fn success(&self) -> bool {
        self.violations.is_empty() && self.unanswered.is_empty() && self.setup_error.is_none()
    }
}

/// Run the demo with the agent binary `agent`, printing the transcript to
/// stdout as it happens; takes about 5 s with an agent that answers every
/// step. Needs `git` and a tokio runtime with timers, I/O and processes
/// enabled; the temporary directory is removed at the end.
pub async fn run(agent: PathBuf) -> DemoOutcome {
    let agent = absolute(agent);
    let dir = std::env::temp_dir().join(format!(
        "nixfleet-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let outcome = match Demo::prepare(&dir, agent).await {
        Ok(mut demo) => demo.run().await,
        Err(e) => DemoOutcome {
            setup_error: Some(format!("setting up failed: {e}")),
            ..DemoOutcome::default()
        },
    };
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            eprintln!("(could not remove {}: {e})", dir.display());
        }
        _ => {}
    }
    outcome
}

/// Something recorded by the dashboard, in sequence order.
enum Item {
    Frame(Frame),
    Event(Event),
    Violation(Violation),
}

impl Item {
    fn seq(&self) -> u64 {
        match self {
            Item::Frame(f) => f.seq,
            Item::Event(e) => e.seq,
            Item::Violation(v) => v.seq,
        }
    }

    fn frame(&self, kind: &str) -> Option<&Frame> {
        match self {
            Item::Frame(f) if f.kind == kind => Some(f),
            _ => None,
        }
    }

    fn event(&self, kind: &str) -> Option<&Event> {
        match self {
            Item::Event(e) if e.kind == kind => Some(e),
            _ => None,
        }
    }
}

struct Demo {
    dash: MockDashboard,
    repo: PathBuf,
    flag: PathBuf,
    t0: Instant,
    /// Highest seq printed.
    cursor: u64,
    pid: Option<u32>,
    /// `Some` once the agent exited.
    exited: watch::Receiver<Option<Exit>>,
    /// How to start the agent (again, after a switch).
    launch: Launch,
    /// Why the last wait or send came back empty-handed.
    last_miss: Option<String>,
    /// See [`DemoOutcome::unanswered`].
    unanswered: Vec<String>,
    /// See [`DemoOutcome::setup_error`].
    setup_error: Option<String>,
}

impl Demo {
    /// Make the repository and the fake tools, start the dashboard and the agent.
    async fn prepare(dir: &Path, agent: PathBuf) -> Result<Demo, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let repo = dir.join("config");
        let tests = repo.join("hosts").join(HOST).join("tests");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&tests).map_err(|e| io("creating the demo directory", e))?;
        std::fs::create_dir_all(&bin).map_err(|e| io("creating the demo directory", e))?;
        std::fs::write(repo.join("flake.lock"), LOCK_V1).map_err(|e| io("flake.lock", e))?;
        write_script(&tests.join("T01-ping.sh"), T01).map_err(|e| io("T01-ping.sh", e))?;
        write_script(&tests.join("T02-slow.sh"), T02).map_err(|e| io("T02-slow.sh", e))?;
        let system = fixture::current_system(dir, &bin).map_err(|e| io("the demo's system", e))?;
        git(&repo, &["init", "-q"]).await?;
        git(&repo, &["symbolic-ref", "HEAD", "refs/heads/main"]).await?;
        git(&repo, &["add", "-A"]).await?;
        git(
            &repo,
            &[
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "-m",
                "demo: first configuration",
            ],
        )
        .await?;
        let first = git(&repo, &["rev-parse", "--short=7", "HEAD"]).await?;
        let path = match std::env::var_os("PATH") {
            Some(p) => {
                let mut dirs = vec![bin.clone()];
                dirs.extend(std::env::split_paths(&p));
                std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))?
            }
            None => bin.clone().into_os_string(),
        };

        let dash = MockDashboard::start(Options::default())
            .await
            .map_err(|e| format!("starting the dashboard: {e}"))?;
        let env: Vec<(String, OsString)> = [
            ("NIXFLEET_URL", OsString::from(dash.ws_url())),
            ("NIXFLEET_TOKEN", OsString::from(crate::DEFAULT_TOKEN)),
            ("NIXFLEET_REPO_URL", repo.clone().into_os_string()),
            ("NIXFLEET_REPO_DIR", dir.join("clone").into_os_string()),
            ("NIXFLEET_STATE_DIR", dir.join("state").into_os_string()),
            ("NIXFLEET_HOSTNAME", OsString::from(HOST)),
            ("NIXFLEET_INTERVAL", OsString::from("1")),
            ("NIXFLEET_STOP_GRACE_MS", OsString::from("2000")),
            ("NIXFLEET_LOG_LEVEL", OsString::from("warn")),
            // the rollback watchdog guards the switch (fixture::current_system)
            ("NIXFLEET_CURRENT_SYSTEM", system.current.into_os_string()),
            ("NIXFLEET_SYSTEM_PROFILE", system.profile.into_os_string()),
            ("NIXFLEET_ROLLBACK_DEADLINE", OsString::from("30")),
            // the switch's space guard measures the demo's own directory
            // and keeps 64 MiB free there (2 GiB on a real host)
            ("NIXFLEET_NIX_STORE", system.store.into_os_string()),
            ("NIXFLEET_MIN_FREE_SPACE", OsString::from("64")),
            ("PATH", path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let launch = Launch {
            agent,
            dir: dir.to_path_buf(),
            env,
        };
        let process = match launch.start() {
            Ok(p) => p,
            Err(e) => {
                dash.shutdown().await;
                return Err(e);
            }
        };
        let pid = process.pid;
        println!("NixFleet demo: the agent against a mock dashboard");
        println!("  dashboard      {}", dash.ws_url());
        println!(
            "  agent          {} (pid {})",
            launch.agent().display(),
            pid.map_or("?".into(), |p| p.to_string())
        );
        println!("  config repo    {} (commit {first})", repo.display());
        println!("  host           {HOST}, heartbeat every 1 s");
        println!(
            "  ← agent to dashboard   → dashboard to agent   lines with | are the agent's own log"
        );
        Ok(Demo {
            dash,
            flag: dir.join("long-test"),
            repo,
            t0: Instant::now(),
            cursor: 0,
            pid,
            exited: process.exited,
            launch,
            last_miss: None,
            unanswered: Vec::new(),
            setup_error: None,
        })
    }

    /// Every step, the summary, then the dashboard is shut down.
    async fn run(&mut self) -> DemoOutcome {
        self.step("1. the agent connects and registers");
        let connected = self
            .wait_for(Duration::from_secs(20), |i| i.event("connected").is_some())
            .await;
        if connected.is_some() {
            self.show_row();
            self.steps_2_to_7().await;
        } else {
            self.missed("1. register: the agent did not register");
        }
        self.step("8. SIGTERM: the agent says goodbye");
        self.terminate().await;
        let outcome = self.summary();
        self.dash.clone().shutdown().await;
        outcome
    }

    async fn steps_2_to_7(&mut self) {
        self.step("2. heartbeats, every second");
        let mut beats = 0;
        let three = self
            .wait_for(Duration::from_secs(6), |i| {
                beats += usize::from(i.frame("heartbeat").is_some());
                beats >= 3
            })
            .await;
        if three.is_none() {
            self.missed(&format!("2. heartbeats: {beats} of 3"));
        }

        self.step("3. pull (dispatched as the UI does): a new commit in the repository");
        match self.push_commit().await {
            Ok(commit) => {
                self.note(&format!(
                    "committed {commit} (adds T03-long.sh, updates flake.lock); the dashboard's desired state is now {commit}"
                ));
                self.show_row();
                if let Some(status) = self.operation("3.", "pull", 20).await {
                    let generation = text(&status.payload, "generation");
                    let n = generation.len().min(commit.len());
                    if generation.is_empty()
                        || !generation.get(..n).is_some_and(|g| commit.starts_with(g))
                    {
                        self.missed(&format!(
                            "3. pull: the status has generation {generation:?}, expected {commit}"
                        ));
                    }
                }
            }
            Err(e) => {
                self.note(&format!("could not commit: {e}"));
                self.setup_failed(format!("committing to the demo repository failed: {e}"));
            }
        }

        self.step("4. switch (dispatched): activate it, check it, report it; the agent restarts on the new system, whose agent reaching the dashboard confirms it");
        self.switch_and_restart().await;

        self.step("5. test (dispatched): the host's test scripts, with progress");
        let mut progress = 0;
        let mut dots = 0;
        let status = self
            .operation_with("5.", "test", 20, |i| {
                progress += usize::from(i.frame("test_progress").is_some());
                dots += usize::from(i.frame("operation_progress").is_some());
            })
            .await;
        if status.is_some() && (progress == 0 || dots == 0) {
            self.missed("5. test: no `test_progress` or `operation_progress` before the status");
        }

        self.step("6. the host row now");
        self.show_row();
        let expected = [
            ("agent", "ok"),
            ("git", "ok"),
            ("lock", "ok"),
            ("system", "ok"),
            ("tests", "ok"),
        ];
        match self.dash.host(HOST) {
            Some(h) => {
                let row = [
                    &h.row.agent,
                    &h.row.git,
                    &h.row.lock,
                    &h.row.system,
                    &h.row.tests,
                ];
                for ((name, want), got) in expected.iter().zip(row) {
                    if got.status != *want {
                        self.missed(&format!(
                            "6. row: {name} is {}, expected {want}",
                            got.status
                        ));
                    }
                }
            }
            None => self.missed("6. row: the dashboard does not know the host"),
        }

        self.step("7. a long test run, stopped by the dashboard");
        if let Err(e) = std::fs::write(&self.flag, "") {
            self.note(&format!("cannot make T03 long: {e}"));
            self.setup_failed(format!("making T03 long failed: {e}"));
        }
        if !self.send("test").await {
            self.missed("7. test: the command was not sent");
            return;
        }
        let long_line = self
            .wait_for_answer(Duration::from_secs(20), |i| {
                i.frame("output").is_some_and(|f| {
                    f.payload["line"]
                        .as_str()
                        .is_some_and(|l| l.contains("T03 long: still running"))
                })
            })
            .await;
        if long_line.is_none() {
            self.missed("7. test: no output line of the long T03");
            return;
        }
        if !self.send("stop").await {
            self.missed("7. stop: the command was not sent");
            return;
        }
        let status = self
            .wait_for_answer(Duration::from_secs(10), |i| i.frame("status").is_some())
            .await;
        match status {
            Some(Item::Frame(f)) if f.payload["status"] == "stopped" => {
                self.note("the agent reports the run as stopped");
            }
            Some(Item::Frame(f)) => {
                self.note(&format!(
                    "expected status \"stopped\", got {}",
                    f.payload["status"]
                ));
                self.missed(&format!(
                    "7. stop: the status is {}, expected \"stopped\"",
                    f.payload["status"]
                ));
            }
            _ => self.missed("7. stop: no `status` after stop"),
        }
    }

    /// Commit T03 and a new flake.lock to the repository the agent pulls from.
    async fn push_commit(&self) -> Result<String, String> {
        let tests = self.repo.join("hosts").join(HOST).join("tests");
        write_script(&tests.join("T03-long.sh"), &t03(&self.flag))
            .map_err(|e| format!("T03-long.sh: {e}"))?;
        std::fs::write(self.repo.join("flake.lock"), LOCK_V2)
            .map_err(|e| format!("flake.lock: {e}"))?;
        git(&self.repo, &["add", "-A"]).await?;
        git(
            &self.repo,
            &[
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "-m",
                "demo: add a long test",
            ],
        )
        .await?;
        let full = git(&self.repo, &["rev-parse", "HEAD"]).await?;
        // The dashboard's desired state, as upstream publishes it in version.json.
        self.dash.set_remote(Some(crate::Remote {
            commit: full,
            lock_hash: sha256_hex(LOCK_V2.as_bytes()),
        }));
        git(&self.repo, &["rev-parse", "--short=7", "HEAD"]).await
    }

    /// Send a command and print it; false when it could not be sent.
    async fn send(&mut self, command: &str) -> bool {
        self.drain();
        self.last_miss = None;
        self.line("→", "command", command);
        match self.dash.send_command(HOST, command).await {
            Ok(()) => true,
            Err(e) => {
                self.note(&format!("could not send: {e}"));
                self.last_miss = Some(format!("could not send: {e}"));
                false
            }
        }
    }

    async fn terminate(&mut self) {
        self.drain();
        let early = self.exited.borrow().as_ref().map(|e| e.how.clone());
        if let Some(how) = early {
            self.missed(&format!("6. SIGTERM: the agent had already exited ({how})"));
            return;
        }
        let Some(pid) = self.pid else {
            self.missed("6. SIGTERM: the agent's pid is unknown");
            return;
        };
        self.line("→", "SIGTERM", &format!("to pid {pid}"));
        signal(pid, "TERM").await;
        let ended = self
            .wait_for(Duration::from_secs(7), |i| {
                i.event("closed").is_some() || i.event("disconnected").is_some()
            })
            .await;
        let closed = self
            .dash
            .events()
            .iter()
            .any(|e| e.kind == "closed" && e.host.as_deref() == Some(HOST));
        // An agent that never registered is recorded as such already.
        let connected = self.dash.events().iter().any(|e| e.kind == "connected");
        if connected && ended.is_none() {
            self.missed("6. SIGTERM: the connection did not end");
        } else if connected && !closed {
            self.missed("6. SIGTERM: the connection ended without a close frame from the agent");
        }
        self.last_miss = None;
        let exit = self.wait_exit(Duration::from_secs(7)).await;
        match exit {
            Some(exit) => {
                self.note(&format!("the agent exited: {}", exit.how));
                if !exit.success() {
                    self.missed(&format!(
                        "6. SIGTERM: the agent exited with {}, expected exit status 0",
                        exit.how
                    ));
                }
            }
            None => {
                self.note("the agent did not exit within 7 s; killing it");
                self.missed("6. SIGTERM: the agent did not exit within 7 s");
                signal(pid, "KILL").await;
                // Let it go before its directory is removed.
                let _ = self.wait_exit(Duration::from_secs(5)).await;
            }
        }
    }

    fn summary(&mut self) -> DemoOutcome {
        self.drain();
        println!("\n── summary ──");
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for f in self
            .dash
            .frames("", None)
            .into_iter()
            .chain(self.dash.frames(HOST, None))
        {
            *by_kind.entry(f.kind).or_default() += 1;
        }
        let total: usize = by_kind.values().sum();
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("frames from the agent: {total} ({})", kinds.join(", "));
        let mut events: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.dash.events() {
            *events.entry(e.kind).or_default() += 1;
        }
        let events: Vec<String> = events.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("connection events: {}", events.join(", "));
        let violations = self.dash.violations();
        if violations.is_empty() {
            println!("protocol violations: none");
        } else {
            println!("protocol violations: {}", violations.len());
            for v in &violations {
                println!("  frame {}: {}", v.seq, v.message);
            }
        }
        if self.unanswered.is_empty() {
            println!("steps without their answer: none");
        } else {
            println!("steps without their answer: {}", self.unanswered.len());
            for u in &self.unanswered {
                println!("  {u}");
            }
        }
        DemoOutcome {
            violations,
            unanswered: std::mem::take(&mut self.unanswered),
            setup_error: self.setup_error.take(),
        }
    }
}

/// SHA-256 in lowercase hex.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `item` shows the agent working on a command.
fn shows_work(item: &Item) -> bool {
    match item {
        Item::Frame(f) => match f.kind.as_str() {
            "output" | "status" | "test_progress" | "operation_progress" | "command_rejected" => {
                true
            }
            "heartbeat" => f.payload["pending_command"].is_string(),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_success() {
        assert!(DemoOutcome::default().success());
        let unanswered = DemoOutcome {
            unanswered: vec!["3. pull: no `status` for pull".into()],
            ..DemoOutcome::default()
        };
        assert!(!unanswered.success());
        let violation = DemoOutcome {
            violations: vec![Violation {
                host: None,
                seq: 1,
                message: "x".into(),
            }],
            ..DemoOutcome::default()
        };
        assert!(!violation.success());
        let setup = DemoOutcome {
            setup_error: Some("git".into()),
            ..DemoOutcome::default()
        };
        assert!(!setup.success());
    }

    #[test]
    fn the_demo_future_is_send() {
        fn send<T: Send>(_: &T) {}
        send(&run(PathBuf::from("/nonexistent")));
    }
}
