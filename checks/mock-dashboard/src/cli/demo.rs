//! `demo`: a dashboard, the real agent and a throw-away configuration
//! repository, with a live transcript of what crosses the wire.
//!
//! Every step waits for what it expects with a timeout; a step whose answer
//! does not come says so and the demo goes on.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use nixfleet_mock_dashboard::{Event, Frame, MockDashboard, Options, Violation};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::option_value;

/// The demo host's name.
const HOST: &str = "demo-host";

/// How long the agent may take to show that it works on a command (the
/// protocol's budget from dispatch to the first output is 2 s; a heartbeat
/// shows the pending command within a second).
const FIRST_SIGN: Duration = Duration::from_secs(5);

/// The agent binary's file name.
const AGENT_NAME: &str = "nixfleet-agent";

/// Parsed `demo` arguments.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DemoOptions {
    agent: Option<PathBuf>,
}

/// Parse `[--agent PATH]`.
pub(crate) fn parse(args: &[String]) -> Result<DemoOptions, String> {
    let mut agent = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = option_value("--agent", arg, &mut it)? {
            agent = Some(PathBuf::from(v));
        } else {
            return Err(format!("unknown argument `{arg}`"));
        }
    }
    Ok(DemoOptions { agent })
}

/// Run the demo; exit 0 when the agent broke no protocol rule.
pub(crate) async fn run(opts: DemoOptions) -> ExitCode {
    let agent = match find_agent(opts.agent) {
        Ok(a) => a,
        Err(hint) => {
            eprintln!("nixfleet-mock-dashboard demo: {hint}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!(
        "nixfleet-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let code = match Demo::prepare(&dir, agent).await {
        Ok(mut demo) => demo.run().await,
        Err(e) => {
            eprintln!("nixfleet-mock-dashboard demo: setting up failed: {e}");
            ExitCode::FAILURE
        }
    };
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("(could not remove {}: {e})", dir.display());
    }
    code
}

/// The agent: `--agent`, `$NIXFLEET_AGENT_BIN`, next to this program, on `PATH`.
fn find_agent(arg: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = arg {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("--agent {}: no such file", path.display()))
        };
    }
    if let Some(path) = std::env::var_os("NIXFLEET_AGENT_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "NIXFLEET_AGENT_BIN={}: no such file",
                path.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(AGENT_NAME)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(AGENT_NAME));
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "the agent binary `{AGENT_NAME}` was not found (not next to this program, not on PATH).\n\
                 Run `cargo build` first (it puts both programs in target/debug), \
                 or give --agent PATH, or set NIXFLEET_AGENT_BIN."
            )
        })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Quote for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Write an executable script.
fn write_script(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Run git in `dir` with a fixed identity and without the user's configuration.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "NixFleet demo")
        .env("GIT_AUTHOR_EMAIL", "demo@nixfleet.invalid")
        .env("GIT_COMMITTER_NAME", "NixFleet demo")
        .env("GIT_COMMITTER_EMAIL", "demo@nixfleet.invalid")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const T01: &str =
    "#!/bin/sh\necho 'T01 ping: reaching the configuration'\necho 'T01 ping: pong'\nexit 0\n";

const T02: &str =
    "#!/bin/sh\nfor i in 1 2 3; do\n  echo \"T02 slow: step $i of 3\"\n  sleep 0.3\ndone\nexit 0\n";

const REBUILD: &str = "#!/bin/sh\necho \"$(basename \"$0\") (demo fake) $*\"\necho 'building the system configuration...'\necho 'activating the configuration...'\nexit 0\n";

const LOCK_V1: &str = "{\n  \"nodes\": {\n    \"nixpkgs\": {\n      \"locked\": {\"rev\": \"abc1234\", \"type\": \"github\"}\n    },\n    \"root\": {\"inputs\": {\"nixpkgs\": \"nixpkgs\"}}\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";

const LOCK_V2: &str = "{\n  \"nodes\": {\n    \"nixpkgs\": {\n      \"locked\": {\"rev\": \"def5678\", \"type\": \"github\"}\n    },\n    \"root\": {\"inputs\": {\"nixpkgs\": \"nixpkgs\"}}\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";

/// T03 runs long only once the flag file exists, so that the first test run stays short.
fn t03(flag: &Path) -> String {
    let flag = sh_quote(&flag.to_string_lossy());
    format!(
        "#!/bin/sh\n\
         if [ ! -e {flag} ]; then\n  echo 'T03 long: quick this time'\n  exit 0\nfi\n\
         i=1\n\
         while [ $i -le 30 ]; do\n  echo \"T03 long: still running ($i s)\"\n  sleep 1\n  i=$((i + 1))\ndone\n\
         exit 0\n"
    )
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
    /// `Some(description)` once the agent exited.
    exited: watch::Receiver<Option<String>>,
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

        let dash = MockDashboard::start(Options::default())
            .await
            .map_err(|e| format!("starting the dashboard: {e}"))?;
        let path = match std::env::var_os("PATH") {
            Some(p) => {
                let mut dirs = vec![bin.clone()];
                dirs.extend(std::env::split_paths(&p));
                std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))?
            }
            None => bin.clone().into_os_string(),
        };
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
            .env("NIXFLEET_TOKEN", nixfleet_mock_dashboard::DEFAULT_TOKEN)
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
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", agent.display()))?;
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(echo_lines(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(echo_lines(err));
        }
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            exit_tx.send_replace(Some(how));
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
        })
    }

    async fn run(&mut self) -> ExitCode {
        self.step("1. the agent connects and registers");
        let connected = self
            .wait_for(Duration::from_secs(20), |i| i.event("connected").is_some())
            .await;
        if connected.is_some() {
            self.step("2. heartbeats, every second");
            let mut beats = 0;
            self.wait_for(Duration::from_secs(6), |i| {
                beats += usize::from(i.frame("heartbeat").is_some());
                beats >= 3
            })
            .await;

            self.step("3. pull: a new commit in the configuration repository");
            match self.push_commit().await {
                Ok(commit) => {
                    self.note(&format!(
                        "committed {commit} (adds T03-long.sh, updates flake.lock)"
                    ));
                    if let Some(status) = self.command_and_status("pull", 20, |_| true).await {
                        let generation = status.payload["generation"].as_str().unwrap_or_default();
                        if !generation.is_empty()
                            && commit.starts_with(&generation[..generation.len().min(commit.len())])
                        {
                            self.note(&format!("the agent is now on {commit}"));
                        } else {
                            self.note(&format!("expected generation {commit}, got {generation:?}"));
                        }
                    }
                }
                Err(e) => self.note(&format!("could not commit: {e}")),
            }

            self.step("4. test: the host's test scripts, with progress");
            self.command_and_status("test", 20, |_| true).await;

            self.step("5. a long test run, stopped by the dashboard");
            if let Err(e) = std::fs::write(&self.flag, "") {
                self.note(&format!("cannot make T03 long: {e}"));
            }
            self.send("test").await;
            let long_line = self
                .wait_for_answer(Duration::from_secs(20), |i| {
                    i.frame("output").is_some_and(|f| {
                        f.payload["line"]
                            .as_str()
                            .is_some_and(|l| l.contains("T03 long: still running"))
                    })
                })
                .await;
            if long_line.is_some() {
                self.send("stop").await;
                let status = self
                    .wait_for_answer(Duration::from_secs(10), |i| i.frame("status").is_some())
                    .await;
                if let Some(Item::Frame(f)) = status {
                    if f.payload["status"] == "stopped" {
                        self.note("the agent reports the run as stopped");
                    } else {
                        self.note(&format!(
                            "expected status \"stopped\", got {}",
                            f.payload["status"]
                        ));
                    }
                }
            }
        }

        self.step("6. SIGTERM: the agent says goodbye");
        self.terminate().await;
        self.summary()
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

    /// Send `command`, wait for its `status` (that also passes `accept`).
    async fn command_and_status(
        &mut self,
        command: &str,
        timeout_s: u64,
        accept: impl Fn(&Frame) -> bool,
    ) -> Option<Frame> {
        if !self.send(command).await {
            return None;
        }
        let item = self
            .wait_for_answer(Duration::from_secs(timeout_s), |i| {
                i.frame("status")
                    .is_some_and(|f| f.payload["command"] == command && accept(f))
            })
            .await?;
        match item {
            Item::Frame(f) => Some(f),
            _ => None,
        }
    }

    /// Send a command and print it; false when it could not be sent.
    async fn send(&mut self, command: &str) -> bool {
        self.drain();
        self.line("→", "command", command);
        match self.dash.send_command(HOST, command).await {
            Ok(()) => true,
            Err(e) => {
                self.note(&format!("could not send: {e}"));
                false
            }
        }
    }

    async fn terminate(&mut self) {
        let Some(pid) = self.pid else { return };
        if self.exited.borrow().is_some() {
            self.drain();
            return;
        }
        self.drain();
        self.line("→", "SIGTERM", &format!("to pid {pid}"));
        signal(pid, "TERM").await;
        self.wait_for(Duration::from_secs(7), |i| {
            i.event("closed").is_some() || i.event("disconnected").is_some()
        })
        .await;
        let mut exited = self.exited.clone();
        let waited =
            tokio::time::timeout(Duration::from_secs(7), exited.wait_for(Option::is_some)).await;
        self.drain();
        match waited {
            Ok(Ok(how)) => {
                let how = how.clone().unwrap_or_default();
                self.note(&format!("the agent exited: {how}"));
            }
            _ => {
                self.note("the agent did not exit within 7 s; killing it");
                signal(pid, "KILL").await;
            }
        }
    }

    fn summary(&mut self) -> ExitCode {
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
            ExitCode::SUCCESS
        } else {
            println!("protocol violations: {}", violations.len());
            for v in &violations {
                println!("  frame {}: {}", v.seq, v.message);
            }
            ExitCode::FAILURE
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
        let working = Cell::new(false);
        self.wait_inner(timeout, Some(&working), |i| {
            if shows_work(i) {
                working.set(true);
            }
            pred(i)
        })
        .await
    }

    async fn wait_inner(
        &mut self,
        timeout: Duration,
        working: Option<&Cell<bool>>,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
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
            if let Some(how) = self.exited.borrow().clone() {
                self.note(&format!("the agent exited ({how})"));
                return None;
            }
            let limit = match working {
                Some(w) if !w.get() => timeout.min(FIRST_SIGN),
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

fn code(c: Option<u16>) -> String {
    c.map_or("-".to_owned(), |c| c.to_string())
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

/// Cut to `max` characters.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn text<'a>(p: &'a Value, key: &str) -> &'a str {
    p[key].as_str().unwrap_or("?")
}

/// A commit as `git log --oneline` shows it.
fn generation(p: &Value) -> String {
    text(p, "generation").chars().take(7).collect()
}

/// One line about a frame.
fn summarize(kind: &str, p: &Value) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = match kind {
        "register" => write!(
            s,
            "hostname={} {} agent={} os={} gen={} interval={}s location={} device={}",
            text(p, "hostname"),
            text(p, "host_type"),
            text(p, "agent_version"),
            text(p, "os_version"),
            generation(p),
            p["heartbeat_interval"],
            text(p, "location"),
            text(p, "device_type"),
        ),
        "heartbeat" => {
            let metrics = match &p["metrics"] {
                Value::Object(m) => {
                    let num = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    format!(
                        "cpu={:.1}% ram={:.1}% load={:.2}",
                        num("cpu"),
                        num("ram"),
                        num("load")
                    )
                }
                _ => "metrics=null".to_owned(),
            };
            let pending = match (p["pending_command"].as_str(), p["command_pid"].as_i64()) {
                (Some(c), Some(pid)) => format!("{c} (pid {pid})"),
                (Some(c), None) => c.to_owned(),
                _ => "-".to_owned(),
            };
            write!(s, "gen={} {metrics} pending={pending}", generation(p))
        }
        "output" => write!(
            s,
            "[{}{}] {}",
            text(p, "command"),
            if p["stream"] == "stderr" {
                ", stderr"
            } else {
                ""
            },
            short(text(p, "line"), 100)
        ),
        "status" => write!(
            s,
            "{} {} exit={} gen={} {:?}",
            text(p, "command"),
            text(p, "status"),
            p["exit_code"],
            generation(p),
            short(text(p, "message"), 80)
        ),
        "command_rejected" => write!(
            s,
            "{}: busy with {} (pid {})",
            text(p, "reason"),
            text(p, "current_command"),
            p["current_pid"]
        ),
        "test_progress" => write!(
            s,
            "{}/{} done, {} passed, {}: {}",
            p["current"],
            p["total"],
            p["passed"],
            if p["running"] == true {
                "running"
            } else {
                "finished"
            },
            short(text(p, "result"), 60)
        ),
        _ => write!(s, "{}", short(&p.to_string(), 100)),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_args() {
        assert_eq!(parse(&[]), Ok(DemoOptions { agent: None }));
        let a = vec!["--agent".to_owned(), "/x/agent".to_owned()];
        assert_eq!(
            parse(&a),
            Ok(DemoOptions {
                agent: Some(PathBuf::from("/x/agent"))
            })
        );
        assert!(parse(&["--nope".to_owned()]).is_err());
    }

    #[test]
    fn missing_agent_gives_a_hint() {
        let err = find_agent(Some(PathBuf::from("/nonexistent/nixfleet-agent")));
        assert!(err.is_err_and(|e| e.contains("no such file")));
    }

    #[test]
    fn summaries() {
        let hb = json!({"generation": "abcdef0123", "nixpkgs_version": "x",
            "pending_command": "test", "command_pid": 42,
            "metrics": {"cpu": 3.04, "ram": 40, "swap": 0, "load": 0.5}});
        assert_eq!(
            summarize("heartbeat", &hb),
            "gen=abcdef0 cpu=3.0% ram=40.0% load=0.50 pending=test (pid 42)"
        );
        let idle = json!({"generation": "abc1234", "pending_command": null, "command_pid": null, "metrics": null});
        assert_eq!(
            summarize("heartbeat", &idle),
            "gen=abc1234 metrics=null pending=-"
        );
        let out = json!({"line": "hello", "stream": "stderr", "command": "test", "is_error": true});
        assert_eq!(summarize("output", &out), "[test, stderr] hello");
        let st = json!({"status": "ok", "command": "pull", "exit_code": 0, "message": "Pull: Updated to abc1234", "generation": "abc1234"});
        assert_eq!(
            summarize("status", &st),
            "pull ok exit=0 gen=abc1234 \"Pull: Updated to abc1234\""
        );
        let tp =
            json!({"current": 2, "total": 3, "passed": 2, "running": true, "result": "T02 passed"});
        assert_eq!(
            summarize("test_progress", &tp),
            "2/3 done, 2 passed, running: T02 passed"
        );
        assert_eq!(summarize("weird", &json!({"a": 1})), "{\"a\":1}");
        // Missing fields do not break the transcript.
        assert_eq!(summarize("status", &json!({})), "? ? exit=null gen=? \"?\"");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(t03(Path::new("/tmp/x y/flag")).contains("[ ! -e '/tmp/x y/flag' ]"));
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
