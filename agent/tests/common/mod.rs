//! Shared harness of the end-to-end tests: the real `nixfleet-agent` binary as
//! a process, a mock dashboard on loopback, and real git repositories in
//! temporary directories. Waiting is always on events (frames, events, log
//! lines, process exit), each with a generous timeout that only fires when
//! something is broken.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixfleet_mock_dashboard::{MockDashboard, Options};

pub mod cmdhost;
mod fakes;
pub mod realnix;
#[allow(unused_imports)]
pub use fakes::{Fakes, write_exec};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The agent binary the tests start: this crate's build, or the one
/// `NIXFLEET_TEST_AGENT` names (CI's second pass runs the e2e tests against
/// the build the flake ships: `checks/build-shipped.sh`).
pub fn agent_binary() -> PathBuf {
    std::env::var_os("NIXFLEET_TEST_AGENT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nixfleet-agent")))
}

/// The token the mock accepts by default.
pub const TOKEN: &str = "test-token";
/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Starts a mock dashboard on a free loopback port.
pub async fn dashboard() -> MockDashboard {
    MockDashboard::start(Options::default())
        .await
        .expect("start mock dashboard")
}

/// Starts a mock dashboard on a given address (to restart one on the same port).
pub async fn dashboard_at(addr: std::net::SocketAddr) -> MockDashboard {
    MockDashboard::start(Options {
        listen: addr,
        ..Options::default()
    })
    .await
    .expect("restart mock dashboard on the same address")
}

/// Runs git in `dir`, panicking on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A configuration repository with one commit holding a `flake.lock`.
pub fn config_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("mkdir repo");
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("flake.lock"), "{\"nodes\":{},\"version\":7}\n").expect("write lock");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Adds a commit to `dir` and returns its hash.
/// The `generation` the wire carries for `commit`: its short hash, as
/// upstream's integration test computes it (`git rev-parse --short=7`, which
/// in these small repositories is the first 7 characters).
pub fn short7(commit: &str) -> &str {
    assert_eq!(commit.len(), 40, "not a full commit id: {commit:?}");
    &commit[..7]
}

pub fn commit_file(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, content).expect("write file");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", name]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A bare origin cloned from the fixture's repo, which gets it as `origin`
/// to push to. Returns the bare repository's path.
pub fn bare_origin(fx: &Fixture) -> PathBuf {
    let bare = fx.tmp.path().join("origin.git");
    git(
        fx.tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            fx.repo.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(
        &fx.repo,
        &["remote", "add", "origin", bare.to_str().unwrap()],
    );
    bare
}

/// Everything an agent process needs on disk.
pub struct Fixture {
    /// Owns the temporary directory.
    pub tmp: tempfile::TempDir,
    /// The configuration repository (legacy mode: used in place).
    pub repo: PathBuf,
    /// The agent's state directory.
    pub state: PathBuf,
    /// Where StaSysMo files would be (empty unless a test writes them).
    pub stasysmo: PathBuf,
    /// HEAD of `repo` at creation.
    pub head: String,
}

impl Fixture {
    /// A fresh fixture with a committed configuration repository.
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("repo");
        let head = config_repo(&repo);
        let state = tmp.path().join("state");
        let stasysmo = tmp.path().join("stasysmo");
        std::fs::create_dir_all(&stasysmo).expect("mkdir stasysmo");
        Fixture {
            tmp,
            repo,
            state,
            stasysmo,
            head,
        }
    }
}

/// Builds the environment of one agent process. The process starts with an
/// empty environment plus exactly these variables.
pub struct AgentBuilder {
    env: BTreeMap<String, String>,
    /// Run inside this real-Nix root, with this directory bound in.
    root: Option<(realnix::NixRoot, PathBuf)>,
}

impl AgentBuilder {
    /// Defaults for tests: legacy mode on the fixture's repo, interval 1 s,
    /// fast backoff, debug logs.
    pub fn new(url: &str, host: &str, fx: &Fixture) -> AgentBuilder {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_string(), v.to_string());
        };
        set("NIXFLEET_URL", url);
        set("NIXFLEET_TOKEN", TOKEN);
        set("NIXFLEET_HOSTNAME", host);
        set("NIXFLEET_REPO_DIR", path_str(&fx.repo));
        set("NIXFLEET_STATE_DIR", path_str(&fx.state));
        // the space guard runs on every switch, and refuses nothing on a
        // machine with a nearly full disk (its own test sets it)
        set("NIXFLEET_MIN_FREE_SPACE", "1");
        set("NIXFLEET_STASYSMO_DIR", path_str(&fx.stasysmo));
        set("NIXFLEET_INTERVAL", "1");
        set("NIXFLEET_LOG_LEVEL", "debug");
        set("NIXFLEET_BACKOFF_BASE_MS", "100");
        set("NIXFLEET_HOST_TYPE", "nixos");
        set("PATH", &std::env::var("PATH").unwrap_or_default());
        set("HOME", path_str(fx.tmp.path()));
        AgentBuilder { env, root: None }
    }

    /// Runs the agent inside `root` (`common/realnix.rs`), with `dir` (the
    /// test's directory, under `/tmp`) bound in at its own path and the
    /// root's `PATH`.
    pub fn in_root(mut self, root: &realnix::NixRoot, dir: &Path) -> AgentBuilder {
        self.root = Some((root.clone(), dir.to_path_buf()));
        self.env("PATH", realnix::ROOT_PATH)
    }

    /// Sets a variable.
    pub fn env(mut self, key: &str, value: &str) -> AgentBuilder {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// With the fake tools first on `PATH`, their store and system profile,
    /// and a 2 s stop grace period.
    pub fn with_fakes(self, fakes: &Fakes) -> AgentBuilder {
        self.env("PATH", &fakes.path_env())
            .env("NIXFLEET_STOP_GRACE_MS", "2000")
            .env("NIXFLEET_NIX_STORE", path_str(&fakes.store))
            .env("NIXFLEET_SYSTEM_PROFILE", path_str(&fakes.profile))
    }

    /// Removes a variable.
    pub fn without(mut self, key: &str) -> AgentBuilder {
        self.env.remove(key);
        self
    }

    /// The command, for tests that run it to completion themselves.
    pub fn command(&self) -> Command {
        let binary = agent_binary();
        let mut cmd = match &self.root {
            None => Command::new(&binary),
            Some((root, dir)) => {
                let mut cmd = Command::new("/usr/bin/unshare");
                let inside = Path::new(realnix::AGENT_IN_ROOT);
                cmd.args(root.args(
                    &[(binary.as_path(), inside), (dir, dir)],
                    inside.as_os_str(),
                    &[],
                ));
                cmd
            }
        };
        cmd.env_clear().envs(&self.env).stdin(Stdio::null());
        cmd
    }

    /// Starts the agent, capturing its log.
    pub fn spawn(self) -> Agent {
        let mut cmd = self.command();
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn nixfleet-agent");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("agent: {line}");
                sink.push(line);
            }
            sink.close();
        });
        Agent { child, log }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The agent's captured stderr.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    closed: Mutex<bool>,
    notify: Notify,
}

impl Log {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.notify.notify_waiters();
    }

    fn close(&self) {
        *self.closed.lock().unwrap() = true;
        self.notify.notify_waiters();
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until the agent's stderr has ended; true if it did.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self.closed.lock().unwrap() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until a line containing `needle` was logged; true if it was.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_nth(needle, 1, timeout).await
    }

    /// Waits until `n` lines containing `needle` were logged; true if they were.
    pub async fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= n
            {
                return true;
            }
            if *self.closed.lock().unwrap() {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// A running agent process; killed when dropped.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its stderr, line by line.
    pub log: Arc<Log>,
}

impl Agent {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("agent still running") as i32
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("agent did not exit in time")
            .expect("wait for agent")
    }
}

/// Waits for the next `register` from `host` after `after`, returning its payload and seq.
pub async fn wait_register(
    dash: &MockDashboard,
    host: &str,
    after: u64,
) -> (serde_json::Value, u64) {
    let f = dash
        .wait_frame(host, "register", after, WAIT)
        .await
        .unwrap_or_else(|| panic!("no register from {host}"));
    (f.payload, f.seq)
}

/// Asserts the dashboard recorded no protocol violation.
pub fn assert_no_violations(dash: &MockDashboard) {
    let v = dash.violations();
    assert!(v.is_empty(), "protocol violations: {v:#?}");
}

/// SHA-256 hex of a file, computed with `sha256sum` (not the agent's code).
pub fn sha256_file(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Waits for a file to appear (written by a fake tool or a test script).
pub async fn file_appears(path: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// True once `pid` is gone or a zombie (an orphan waiting to be reaped).
pub async fn pid_gone(pid: i32) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        };
        if gone {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first heartbeat from `host` after `after` whose payload satisfies
/// `pred`: its seq and payload.
pub async fn heartbeat_where(
    dash: &nixfleet_mock_dashboard::MockDashboard,
    host: &str,
    after: u64,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (u64, serde_json::Value) {
    dash.wait_until(WAIT, |d| {
        d.frames(host, Some("heartbeat"))
            .into_iter()
            .find(|f| f.seq > after && pred(&f.payload))
            .map(|f| (f.seq, f.payload))
    })
    .await
    .unwrap_or_else(|| panic!("no heartbeat with {what}"))
}

/// The string field `key` of a payload; panics when it is not a string.
pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// A host test script `hosts/<host>/tests/<name>` in `repo` (executable).
pub fn host_test(repo: &Path, host: &str, name: &str, body: &str) -> PathBuf {
    let path = repo.join("hosts").join(host).join("tests").join(name);
    write_exec(&path, &format!("#!/bin/sh\n{body}\n"));
    path
}

/// A new ed25519 key pair at `path` (and `path.pub`); returns the public
/// key as `<type> <base64>`.
pub fn ssh_keygen(path: &Path, comment: &str) -> String {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes the fixture's checkout track `bare` (legacy mode: the host's own
/// checkout), then commits `file` in another clone and pushes it; returns
/// the new commit, which a `pull` brings.
pub fn upstream_commit(fx: &Fixture, bare: &Path, file: &str) -> String {
    git(&fx.repo, &["fetch", "-q", "origin"]);
    git(&fx.repo, &["branch", "-q", "--set-upstream-to=origin/main"]);
    let other = fx.tmp.path().join("other");
    git(
        fx.tmp.path(),
        &["clone", "-q", path_str(bare), path_str(&other)],
    );
    let new = commit_file(&other, file, "{ }\n");
    git(&other, &["push", "-q", "origin", "main"]);
    new
}

/// The first `status` from `host` after `after` for `command`.
pub async fn status_for(
    dash: &MockDashboard,
    host: &str,
    command: &str,
    after: u64,
) -> nixfleet_mock_dashboard::Frame {
    dash.wait_until(WAIT, |d| {
        d.frames(host, Some("status"))
            .into_iter()
            .find(|f| f.seq > after && f.payload["command"] == command)
    })
    .await
    .unwrap_or_else(|| panic!("no status from {host} for {command}"))
}
