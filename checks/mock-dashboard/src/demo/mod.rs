//! The demo: a dashboard, the real agent and a throw-away configuration
//! repository, with a live transcript of what crosses the wire on stdout.
//!
//! [`run`] makes a configuration repository and fake `nixos-rebuild` /
//! `darwin-rebuild` scripts in a temporary directory, starts a
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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::{Event, Frame, MockDashboard, Options, Violation};

mod find;
mod fixture;
mod show;

use find::absolute;
pub use find::find_agent;
use fixture::{LOCK_V1, LOCK_V2, REBUILD, T01, T02, git, t03, write_script};
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

/// How the agent process ended.
#[derive(Clone)]
struct Exit {
    /// As `ExitStatus` shows it, e.g. "exit status: 0".
    how: String,
    /// Exit status 0.
    success: bool,
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
        for tool in ["nixos-rebuild", "darwin-rebuild"] {
            write_script(&bin.join(tool), REBUILD).map_err(|e| io(tool, e))?;
        }
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
        let mut cmd = Command::new(&agent);
        // Nothing from the caller's own agent setup may leak in.
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("NIXFLEET_")
                || matches!(
                    n.as_ref(),
                    "CREDENTIALS_DIRECTORY"
                        | "STATE_DIRECTORY"
                        | "LOGS_DIRECTORY"
                        | "JOURNAL_STREAM"
                )
            {
                cmd.env_remove(&name);
            }
        }
        cmd.env("NIXFLEET_URL", dash.ws_url())
            .env("NIXFLEET_TOKEN", crate::DEFAULT_TOKEN)
            .env("NIXFLEET_REPO_URL", &repo)
            .env("NIXFLEET_REPO_DIR", dir.join("clone"))
            .env("NIXFLEET_STATE_DIR", dir.join("state"))
            .env("NIXFLEET_HOSTNAME", HOST)
            .env("NIXFLEET_INTERVAL", "1")
            .env("NIXFLEET_STOP_GRACE_MS", "2000")
            .env("NIXFLEET_LOG_LEVEL", "warn")
            .env("PATH", path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                dash.shutdown().await;
                return Err(format!("starting {}: {e}", agent.display()));
            }
        };
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(echo_lines(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(echo_lines(err));
        }
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit {
                    how: status.to_string(),
                    success: status.success(),
                },
                Err(e) => Exit {
                    how: format!("unknown ({e})"),
                    success: false,
                },
            };
            exit_tx.send_replace(Some(exit));
        });

        println!("NixFleet demo: the agent against a mock dashboard");
        println!("  dashboard      {}", dash.ws_url());
        println!(
            "  agent          {} (pid {})",
            agent.display(),
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
            exited,
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
            self.steps_2_to_5().await;
        } else {
            self.missed("1. register: the agent did not register");
        }
        self.step("6. SIGTERM: the agent says goodbye");
        self.terminate().await;
        let outcome = self.summary();
        self.dash.clone().shutdown().await;
        outcome
    }

    async fn steps_2_to_5(&mut self) {
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

        self.step("3. pull: a new commit in the configuration repository");
        match self.push_commit().await {
            Ok(commit) => {
                self.note(&format!(
                    "committed {commit} (adds T03-long.sh, updates flake.lock)"
                ));
                if let Some(status) = self.command_and_status("3.", "pull", 20, |_| ()).await {
                    self.expect_ok("3. pull", &status);
                    let generation = text(&status.payload, "generation");
                    let n = generation.len().min(commit.len());
                    if !generation.is_empty()
                        && generation.get(..n).is_some_and(|g| commit.starts_with(g))
                    {
                        self.note(&format!("the agent is now on {commit}"));
                    } else {
                        self.note(&format!("expected generation {commit}, got {generation:?}"));
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

        self.step("4. test: the host's test scripts, with progress");
        let mut progress = 0;
        let status = self
            .command_and_status("4.", "test", 20, |i| {
                progress += usize::from(i.frame("test_progress").is_some());
            })
            .await;
        if let Some(status) = status {
            self.expect_ok("4. test", &status);
            if progress == 0 {
                self.missed("4. test: no `test_progress` before the status");
            }
        }

        self.step("5. a long test run, stopped by the dashboard");
        if let Err(e) = std::fs::write(&self.flag, "") {
            self.note(&format!("cannot make T03 long: {e}"));
            self.setup_failed(format!("making T03 long failed: {e}"));
        }
        if !self.send("test").await {
            self.missed("5. test: the command was not sent");
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
            self.missed("5. test: no output line of the long T03");
            return;
        }
        if !self.send("stop").await {
            self.missed("5. stop: the command was not sent");
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
                    "5. stop: the status is {}, expected \"stopped\"",
                    f.payload["status"]
                ));
            }
            _ => self.missed("5. stop: no `status` after stop"),
        }
    }

    /// Record a step whose expected answer did not come, with the reason the
    /// last wait gave up when there is one.
    fn missed(&mut self, what: &str) {
        let entry = match self.last_miss.take() {
            Some(why) => format!("{what} ({why})"),
            None => what.to_owned(),
        };
        self.unanswered.push(entry);
    }

    /// Record that the demo could not do its own part (the first such problem).
    fn setup_failed(&mut self, what: String) {
        self.setup_error.get_or_insert(what);
    }

    /// Record `status` when it is not `ok`.
    fn expect_ok(&mut self, step: &str, status: &Frame) {
        let p = &status.payload;
        if p["status"] != "ok" {
            self.note(&format!("expected status \"ok\", got {}", p["status"]));
            self.missed(&format!(
                "{step}: the status is {} (exit {}, {:?}), expected \"ok\"",
                p["status"],
                p["exit_code"],
                text(p, "message")
            ));
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
        git(&self.repo, &["rev-parse", "--short=7", "HEAD"]).await
    }

    /// Send `command` and wait for its `status`, showing every item on the way
    /// to `seen` as well; `None` (recorded as unanswered under `step`, e.g.
    /// "3.") when it does not come.
    async fn command_and_status(
        &mut self,
        step: &str,
        command: &str,
        timeout_s: u64,
        mut seen: impl FnMut(&Item),
    ) -> Option<Frame> {
        if !self.send(command).await {
            self.missed(&format!("{step} {command}: the command was not sent"));
            return None;
        }
        let item = self
            .wait_for_answer(Duration::from_secs(timeout_s), |i| {
                seen(i);
                i.frame("status")
                    .is_some_and(|f| f.payload["command"] == command)
            })
            .await;
        match item {
            Some(Item::Frame(f)) => Some(f),
            _ => {
                self.missed(&format!("{step} {command}: no `status` for {command}"));
                None
            }
        }
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
        let mut exited = self.exited.clone();
        let exit = tokio::time::timeout(Duration::from_secs(7), exited.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|exit| (*exit).clone());
        self.drain();
        match exit {
            Some(exit) => {
                self.note(&format!("the agent exited: {}", exit.how));
                if !exit.success {
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
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), exited.wait_for(Option::is_some))
                        .await;
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

    /// Wait until an item passes `pred`, printing everything on the way.
    /// `None` after `timeout` (said so in the transcript) or when the agent exited.
    async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        self.wait_inner(timeout, None, pred).await
    }

    /// Like [`wait_for`](Self::wait_for) right after sending a command: gives
    /// up after [`FIRST_SIGN`] already when the agent shows no sign of working
    /// on it (no output, progress, status, rejection, nor a heartbeat with a
    /// pending command), so that a missing feature costs seconds, not minutes.
    async fn wait_for_answer(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        let working = AtomicBool::new(false);
        self.wait_inner(timeout, Some(&working), |i| {
            if shows_work(i) {
                working.store(true, Ordering::Relaxed);
            }
            pred(i)
        })
        .await
    }

    async fn wait_inner(
        &mut self,
        timeout: Duration,
        working: Option<&AtomicBool>,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        self.last_miss = None;
        let start = tokio::time::Instant::now();
        loop {
            let mut found = None;
            for item in self.drain() {
                if found.is_none() && pred(&item) {
                    found = Some(item);
                }
            }
            if found.is_some() {
                return found;
            }
            let exit = self.exited.borrow().as_ref().map(|e| e.how.clone());
            if let Some(how) = exit {
                self.note(&format!("the agent exited ({how})"));
                self.last_miss = Some(format!("the agent exited with {how}"));
                return None;
            }
            let limit = match working {
                Some(w) if !w.load(Ordering::Relaxed) => timeout.min(FIRST_SIGN),
                _ => timeout,
            };
            let cursor = self.cursor;
            let mut exited = self.exited.clone();
            let left = (start + limit).saturating_duration_since(tokio::time::Instant::now());
            let news = tokio::select! {
                n = self.dash.wait_until(left, |d| (d.last_seq() > cursor).then_some(())) => n.is_some(),
                _ = exited.wait_for(Option::is_some) => true,
            };
            if !news {
                self.drain();
                self.note(&format!(
                    "(no answer from the agent within {} s — this part is not implemented yet?)",
                    limit.as_secs()
                ));
                self.last_miss = Some(format!("no answer within {} s", limit.as_secs()));
                return None;
            }
        }
    }

    /// Print everything recorded since the last call, in order; return it.
    fn drain(&mut self) -> Vec<Item> {
        let hi = self.dash.last_seq();
        let after = self.cursor;
        if hi <= after {
            return Vec::new();
        }
        let in_range = |seq: u64| seq > after && seq <= hi;
        let mut items: Vec<Item> = Vec::new();
        for host in ["", HOST] {
            items.extend(
                self.dash
                    .frames(host, None)
                    .into_iter()
                    .filter(|f| in_range(f.seq))
                    .map(Item::Frame),
            );
        }
        items.extend(
            self.dash
                .events()
                .into_iter()
                .filter(|e| in_range(e.seq))
                .map(Item::Event),
        );
        items.extend(
            self.dash
                .violations()
                .into_iter()
                .filter(|v| in_range(v.seq))
                .map(Item::Violation),
        );
        // A violation sorts right after its frame.
        items.sort_by_key(|i| (i.seq(), matches!(i, Item::Violation(_))));
        self.cursor = hi;
        for item in &items {
            self.print(item);
        }
        items
    }

    fn print(&self, item: &Item) {
        match item {
            Item::Frame(f) => {
                let at = f.received.saturating_duration_since(self.t0);
                self.line_at(at, "←", &f.kind, &summarize(&f.kind, &f.payload));
            }
            Item::Event(e) => {
                let (arrow, what, detail) = match e.kind.as_str() {
                    "connected" => (
                        "→",
                        "registered",
                        format!("host_id={}", e.host.as_deref().unwrap_or("?")),
                    ),
                    "closed" => (
                        "←",
                        "close",
                        format!(
                            "code={} reason={:?}",
                            code(e.code),
                            e.reason.as_deref().unwrap_or("")
                        ),
                    ),
                    "replaced" => (
                        "→",
                        "close",
                        format!("code={} (replaced by a newer connection)", code(e.code)),
                    ),
                    "rejected" => ("→", "HTTP 401", e.reason.clone().unwrap_or_default()),
                    _ => ("·", "socket ended", e.reason.clone().unwrap_or_default()),
                };
                self.line(arrow, what, &detail);
            }
            Item::Violation(v) => println!("{:>9}  !! protocol violation: {}", "", v.message),
        }
    }

    fn line(&self, arrow: &str, what: &str, detail: &str) {
        self.line_at(self.t0.elapsed(), arrow, what, detail);
    }

    fn line_at(&self, at: Duration, arrow: &str, what: &str, detail: &str) {
        println!("{:>8.3}s {arrow} {what:<16} {detail}", at.as_secs_f64());
    }

    fn step(&mut self, title: &str) {
        self.drain();
        println!("\n── {title}");
    }

    fn note(&self, text: &str) {
        println!("{:>9}  {text}", "");
    }
}

/// Whether `item` shows the agent working on a command.
fn shows_work(item: &Item) -> bool {
    match item {
        Item::Frame(f) => match f.kind.as_str() {
            "output" | "status" | "test_progress" | "command_rejected" => true,
            "heartbeat" => f.payload["pending_command"].is_string(),
            _ => false,
        },
        _ => false,
    }
}

/// Send a signal with kill(1).
async fn signal(pid: u32, name: &str) {
    let result = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        println!("(cannot run kill: {e})");
    }
}

/// Print the agent's own output, marked.
async fn echo_lines(stream: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{:>9}  | {line}", "");
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
