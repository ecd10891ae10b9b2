//! Unit tests of the commands module: [`Commands`] driven frame by frame,
//! with a fake writer collecting what it sends. Pulls, restarts, shutdown, run logs and
//! switch records left behind: `tests_lifecycle.rs`. (The switch needs the real
//! binary as its supervisor and is covered by `agent/tests/switch.rs`.)

use super::*;
use crate::outbound::{self, OutboundRx};
use crate::protocol::Output;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::time::Instant;

pub(super) struct Fixture {
    pub(super) tmp: tempfile::TempDir,
    pub(super) commands: Commands,
    pub(super) state: Arc<AgentState>,
    pub(super) frames: Arc<Mutex<Vec<Outgoing>>>,
    pub(super) repo: PathBuf,
}

pub(super) const HOST: &str = "testhost";

pub(super) fn fixture(extra: &[(&str, String)]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut vars: HashMap<String, String> = [
        ("NIXFLEET_URL", "ws://127.0.0.1:1/ws".to_string()),
        ("NIXFLEET_TOKEN", "unit-test-token".to_string()),
        ("NIXFLEET_REPO_DIR", repo.display().to_string()),
        ("NIXFLEET_HOSTNAME", HOST.to_string()),
        ("NIXFLEET_HOST_TYPE", "nixos".to_string()),
        (
            "NIXFLEET_STATE_DIR",
            tmp.path().join("state").display().to_string(),
        ),
        ("NIXFLEET_STOP_GRACE_MS", "2000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.clone());
    }
    let config = Config::from_lookup(&move |name| vars.get(name).cloned()).unwrap();
    let config = Arc::new(config);
    let state = Arc::new(AgentState::default());
    let (out, rx) = outbound::lanes(Duration::from_secs(5));
    out.set_connected(true);
    let frames = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(fake_writer(out.clone(), rx, frames.clone()));
    let commands = Commands::new(config, state.clone(), out);
    Fixture {
        tmp,
        commands,
        state,
        frames,
        repo,
    }
}

/// Plays the connection's writer: takes output lines, control frames and the
/// outbox (in the order the real one does) and records them.
pub(super) async fn fake_writer(
    out: Arc<Outbound>,
    rx: OutboundRx,
    frames: Arc<Mutex<Vec<Outgoing>>>,
) {
    let OutboundRx {
        mut control,
        mut output,
    } = rx;
    loop {
        tokio::select! {
            Some(f) = control.recv() => lock(&frames).push(f),
            Some(lines) = output.recv() => {
                out.note_consumed(lines.count() as u64, lines.weight());
                lock(&frames).extend(lines.outputs().into_iter().map(Outgoing::Output));
            }
            _ = out.outbox_changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        while let Some((id, f)) = out.outbox_ready() {
            out.outbox_done(id);
            lock(&frames).push(f);
        }
    }
}

impl Fixture {
    pub(super) fn send(&self, name: &str) {
        self.commands.handle(Incoming::Command {
            command: name.to_string(),
        });
    }

    pub(super) fn kill(&self, signal: &str, pid: i64) {
        self.commands.handle(Incoming::KillCommand {
            signal: signal.to_string(),
            pid,
        });
    }

    pub(super) fn frames(&self) -> Vec<Outgoing> {
        lock(&self.frames).clone()
    }

    /// The frames of one kind, unwrapped.
    pub(super) fn pick<T>(&self, kind: impl FnMut(Outgoing) -> Option<T>) -> Vec<T> {
        self.frames().into_iter().filter_map(kind).collect()
    }

    pub(super) fn statuses(&self) -> Vec<Status> {
        self.pick(|f| match f {
            Outgoing::Status(s) => Some(s),
            _ => None,
        })
    }

    pub(super) fn progress(&self) -> Vec<TestProgress> {
        self.pick(|f| match f {
            Outgoing::TestProgress(p) => Some(p),
            _ => None,
        })
    }

    pub(super) fn output(&self) -> Vec<Output> {
        self.pick(|f| match f {
            Outgoing::Output(o) => Some(o),
            _ => None,
        })
    }

    /// Waits (polling the recorded frames) until `n` statuses arrived.
    pub(super) async fn wait_statuses(&self, n: usize) -> Vec<Status> {
        self.wait_until("statuses", |f| f.statuses().len() >= n)
            .await;
        self.statuses()
    }

    pub(super) async fn wait_until(&self, what: &str, cond: impl Fn(&Fixture) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; frames: {:#?}",
                self.frames()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(super) fn script(&self, name: &str, body: &str) {
        let dir = host_tests::tests_dir(&self.repo, HOST);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let out = StdCommand::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare origin with one commit on `main`, and a work clone that pushes.
pub(super) fn origin(root: &Path) -> (PathBuf, PathBuf) {
    let bare = root.join("origin.git");
    let work = root.join("work");
    fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--bare", "-b", "main"]);
    git(
        root,
        &["clone", bare.to_str().unwrap(), work.to_str().unwrap()],
    );
    git(&work, &["checkout", "-B", "main"]);
    fs::write(work.join("flake.nix"), "{ }\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-m", "first"]);
    git(&work, &["push", "origin", "main"]);
    (bare, work)
}

pub(super) fn push_commit(work: &Path, file: &str) -> String {
    fs::write(work.join(file), file).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-m", file]);
    git(work, &["push", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn command_names_are_a_closed_set() {
    for c in CommandName::ALL {
        assert_eq!(CommandName::parse(c.as_str()), Some(c));
    }
    for bad in [
        "",
        "PULL",
        " pull",
        "pull ",
        "pull\n",
        "/bin/sh",
        "../x",
        "pull; touch x",
        "$(id)",
        "pull-switch;",
        "kill_command",
    ] {
        assert_eq!(CommandName::parse(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn unknown_and_hostile_names_run_nothing() {
    let f = fixture(&[]);
    let pwned = f.path("pwned");
    let names = [
        "bogus".to_string(),
        "/bin/sh".to_string(),
        format!("pull; touch {}", pwned.display()),
        format!("$(touch {})", pwned.display()),
        "../x".to_string(),
        "x".repeat(1000),
    ];
    for name in &names {
        f.send(name);
    }
    let statuses = f.wait_statuses(names.len()).await;
    for (status, name) in statuses.iter().zip(&names) {
        assert_eq!(status.status, Outcome::Error);
        assert_eq!(status.message, "unknown command");
        assert_eq!(status.exit_code, NOT_RUN);
        assert_eq!(status.command, clip(name, MAX_ECHO));
    }
    assert!(f.state.running().is_none());
    assert!(!pwned.exists());
    assert!(f.output().is_empty());
}

#[tokio::test]
async fn stop_and_kill_while_idle() {
    let f = fixture(&[]);
    f.send("stop");
    f.kill("SIGKILL", 0);
    let s = f.wait_statuses(2).await;
    assert_eq!(
        (s[0].command.as_str(), s[0].status, s[0].message.as_str()),
        ("stop", Outcome::Error, "no command running")
    );
    assert_eq!(
        (s[1].command.as_str(), s[1].status, s[1].message.as_str()),
        ("kill_command", Outcome::Error, "no command running")
    );
}

#[tokio::test]
async fn test_run_all_pass_some_fail_none() {
    let f = fixture(&[]);
    // none
    f.send("test");
    let s = f.wait_statuses(1).await;
    assert_eq!(
        (s[0].status, s[0].message.as_str(), s[0].exit_code),
        (Outcome::Ok, "no tests", 0)
    );
    let p = f.progress();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].current, p[0].total, p[0].passed, p[0].running),
        (0, 0, 0, false)
    );
    assert_eq!(p[0].result, "no tests");

    // all pass
    f.script("T02-second.sh", "echo second; pwd");
    f.script("T01-first.sh", "echo first");
    f.send("test");
    let s = f.wait_statuses(2).await;
    assert_eq!(
        (s[1].status, s[1].message.as_str()),
        (Outcome::Ok, "2/2 passed")
    );
    let p = f.progress();
    assert_eq!(p.len(), 3);
    assert_eq!((p[1].current, p[1].passed, p[1].running), (1, 1, true));
    assert_eq!((p[2].current, p[2].passed, p[2].running), (2, 2, false));
    assert_eq!(p[2].result, "2/2 passed");
    let lines: Vec<String> = f.output().into_iter().map(|o| o.line).collect();
    let first = lines.iter().position(|l| l == "first").unwrap();
    let second = lines.iter().position(|l| l == "second").unwrap();
    assert!(first < second, "{lines:?}");
    // the working directory is the repository
    assert!(lines.contains(&f.repo.display().to_string()), "{lines:?}");

    // some fail
    f.script("T03-broken.sh", "echo 'it broke' >&2; exit 4");
    f.script("T04-fine.sh", "exit 0");
    f.script("T05-also-broken.sh", "exit 1");
    f.send("test");
    let s = f.wait_statuses(3).await;
    assert_eq!(s[2].status, Outcome::Error);
    assert_eq!(
        s[2].message,
        "3/5 passed; failed: T03-broken.sh, T05-also-broken.sh"
    );
    let last = f.progress().pop().unwrap();
    assert_eq!(
        (last.current, last.total, last.passed, last.running),
        (5, 5, 3, false)
    );
    assert_eq!(last.result, "3/5 passed");
    let err = f
        .output()
        .into_iter()
        .find(|o| o.line == "it broke")
        .unwrap();
    assert!(err.is_error);
    assert_eq!(err.command, "test");
}

#[tokio::test]
async fn busy_rejects_then_stop_keeps_partial_results() {
    let f = fixture(&[]);
    let started = f.path("started");
    f.script("T01-ok.sh", "exit 0");
    f.script(
        "T02-hangs.sh",
        &format!("touch {}; sleep 1000 & wait", started.display()),
    );
    f.script("T03-never.sh", "exit 0");
    f.send("test");
    f.wait_until("the hanging test", |_| started.exists()).await;
    let running = f.state.running().unwrap();
    assert_eq!(running.command, "test");
    assert!(running.pid > 1);

    f.send("pull");
    f.wait_until("command_rejected", |f| {
        f.frames()
            .iter()
            .any(|x| matches!(x, Outgoing::CommandRejected(_)))
    })
    .await;
    let rejected = f
        .frames()
        .into_iter()
        .find_map(|x| match x {
            Outgoing::CommandRejected(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(rejected.reason, "command already running");
    assert_eq!(rejected.current_command, "test");
    assert_eq!(rejected.current_pid, running.pid);
    assert!(f.statuses().is_empty(), "the running test was affected");

    f.send("stop");
    let s = f.wait_statuses(1).await;
    assert_eq!(s[0].status, Outcome::Stopped);
    assert_eq!(s[0].command, "test");
    assert!(
        s[0].message.starts_with("Stopped by user"),
        "{}",
        s[0].message
    );
    assert_eq!(s[0].exit_code, 128 + libc::SIGTERM);
    let last = f.progress().pop().unwrap();
    assert_eq!(
        (last.current, last.total, last.passed, last.running),
        (2, 3, 1, false)
    );
    assert_eq!(last.result, "1/3 passed (stopped)");
    assert!(f.state.running().is_none());
    assert!(!f.output().iter().any(|o| o.line.contains("T03-never.sh")));

    // idle again: a new command runs
    fs::remove_file(&started).unwrap();
    f.send("test");
    f.wait_until("the hanging test again", |_| started.exists())
        .await;
    assert_eq!(f.state.running().unwrap().command, "test");
    f.send("stop");
    let s = f.wait_statuses(2).await;
    assert_eq!(s[1].status, Outcome::Stopped);
}

#[tokio::test]
async fn kill_command_only_targets_the_running_command() {
    let f = fixture(&[("NIXFLEET_STOP_GRACE_MS", "600000".to_string())]);
    let started = f.path("started");
    f.script(
        "T01-ignores-term.sh",
        &format!(
            "trap '' TERM; touch {}; while :; do sleep 1; done",
            started.display()
        ),
    );
    f.send("test");
    f.wait_until("the test to start", |_| started.exists())
        .await;
    let pid = f.state.running().unwrap().pid;

    f.kill("SIGKILL", 1);
    f.kill("SIGKILL", i64::from(pid) + 100_000);
    f.kill("SIGHUP", 0);
    let s = f.wait_statuses(3).await;
    for st in &s {
        assert_eq!(
            (st.command.as_str(), st.status),
            ("kill_command", Outcome::Error)
        );
    }
    assert!(
        s[0].message.contains("not the running command"),
        "{}",
        s[0].message
    );
    assert!(
        s[2].message.contains("unsupported signal"),
        "{}",
        s[2].message
    );
    assert!(
        f.state.running().is_some(),
        "a refused kill stopped the command"
    );

    // SIGTERM is ignored by the script and the grace is long: still running
    f.kill("SIGTERM", i64::from(pid));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.state.running().is_some());
    f.kill("SIGKILL", 0);
    let s = f.wait_statuses(4).await;
    assert_eq!(s[3].status, Outcome::Stopped);
    assert_eq!(s[3].exit_code, 128 + libc::SIGKILL);
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace() {
    let f = fixture(&[("NIXFLEET_STOP_GRACE_MS", "300".to_string())]);
    let started = f.path("started");
    f.script(
        "T01-stubborn.sh",
        &format!(
            "trap '' TERM; touch {}; while :; do sleep 1; done",
            started.display()
        ),
    );
    f.send("test");
    f.wait_until("the test to start", |_| started.exists())
        .await;
    let t = Instant::now();
    f.send("stop");
    let s = f.wait_statuses(1).await;
    assert_eq!(s[0].status, Outcome::Stopped);
    assert_eq!(s[0].exit_code, 128 + libc::SIGKILL);
    assert!(t.elapsed() >= Duration::from_millis(300));
}
