//! Unit tests of the commands module: [`Commands`] driven frame by frame,
//! with a fake writer collecting what it sends. (The switch needs the real
//! binary as its supervisor and is covered by `agent/tests/commands.rs`.)

use super::*;
use crate::outbound::{self, OutboundRx};
use crate::protocol::Output;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command as StdCommand;
use std::time::Instant;

struct Fixture {
    tmp: tempfile::TempDir,
    commands: Commands,
    state: Arc<AgentState>,
    frames: Arc<Mutex<Vec<Outgoing>>>,
    repo: PathBuf,
}

const HOST: &str = "testhost";

fn fixture(extra: &[(&str, String)]) -> Fixture {
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
async fn fake_writer(out: Arc<Outbound>, rx: OutboundRx, frames: Arc<Mutex<Vec<Outgoing>>>) {
    let OutboundRx {
        mut control,
        mut output,
    } = rx;
    loop {
        tokio::select! {
            Some(f) = control.recv() => lock(&frames).push(f),
            Some(line) = output.recv() => {
                out.note_consumed(1, line.weight());
                lock(&frames).push(line.into_frame());
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
    fn send(&self, name: &str) {
        self.commands.handle(Incoming::Command {
            command: name.to_string(),
        });
    }

    fn kill(&self, signal: &str, pid: i64) {
        self.commands.handle(Incoming::KillCommand {
            signal: signal.to_string(),
            pid,
        });
    }

    fn frames(&self) -> Vec<Outgoing> {
        lock(&self.frames).clone()
    }

    /// The frames of one kind, unwrapped.
    fn pick<T>(&self, kind: impl FnMut(Outgoing) -> Option<T>) -> Vec<T> {
        self.frames().into_iter().filter_map(kind).collect()
    }

    fn statuses(&self) -> Vec<Status> {
        self.pick(|f| match f {
            Outgoing::Status(s) => Some(s),
            _ => None,
        })
    }

    fn progress(&self) -> Vec<TestProgress> {
        self.pick(|f| match f {
            Outgoing::TestProgress(p) => Some(p),
            _ => None,
        })
    }

    fn output(&self) -> Vec<Output> {
        self.pick(|f| match f {
            Outgoing::Output(o) => Some(o),
            _ => None,
        })
    }

    /// Waits (polling the recorded frames) until `n` statuses arrived.
    async fn wait_statuses(&self, n: usize) -> Vec<Status> {
        self.wait_until("statuses", |f| f.statuses().len() >= n)
            .await;
        self.statuses()
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&Fixture) -> bool) {
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

    fn script(&self, name: &str, body: &str) {
        let dir = host_tests::tests_dir(&self.repo, HOST);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
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
fn origin(root: &Path) -> (PathBuf, PathBuf) {
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

fn push_commit(work: &Path, file: &str) -> String {
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

#[tokio::test]
async fn legacy_pull_updates_the_generation() {
    let f = fixture(&[]);
    let (_bare, work) = origin(f.tmp.path());
    git(
        f.tmp.path(),
        &[
            "clone",
            work.join("../origin.git").to_str().unwrap(),
            f.repo.to_str().unwrap(),
        ],
    );
    f.send("pull");
    let s = f.wait_statuses(1).await;
    let head = git(&f.repo, &["rev-parse", "HEAD"]);
    assert_eq!(s[0].status, Outcome::Ok, "{}", s[0].message);
    assert_eq!(s[0].message, format!("Pull: Already at {}", &head[..7]));

    let new = push_commit(&work, "second.nix");
    f.send("pull");
    let s = f.wait_statuses(2).await;
    assert_eq!(s[1].message, format!("Pull: Updated to {}", &new[..7]));
    assert_eq!(s[1].generation, &new[..7]);
    assert_eq!(f.state.snapshot().generation, &new[..7]);
}

#[tokio::test]
async fn isolated_clone_pull_and_broken_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = origin(tmp.path());
    let f = fixture(&[("NIXFLEET_REPO_URL", bare.display().to_string())]);
    f.commands.startup().await;
    let first = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(
        host::git_head_commit(&f.repo).as_deref(),
        Some(first.as_str())
    );
    assert!(f.state.running().is_none());

    // local damage is wiped by pull
    fs::write(f.repo.join("flake.nix"), "local edit").unwrap();
    fs::write(f.repo.join("stray.txt"), "untracked").unwrap();
    let new = push_commit(&work, "hosts.nix");
    f.send("pull");
    let s = f.wait_statuses(1).await;
    assert_eq!(s[0].status, Outcome::Ok, "{}", s[0].message);
    assert_eq!(s[0].message, format!("Pull: Updated to {}", &new[..7]));
    assert_eq!(s[0].generation, &new[..7]);
    assert_eq!(
        fs::read_to_string(f.repo.join("flake.nix")).unwrap(),
        "{ }\n"
    );
    assert!(!f.repo.join("stray.txt").exists());

    // origin gone: a useful message
    fs::rename(&bare, tmp.path().join("moved.git")).unwrap();
    f.send("pull");
    let s = f.wait_statuses(2).await;
    assert_eq!(s[1].status, Outcome::Error);
    assert!(
        s[1].message
            .starts_with("Pull failed: `git fetch origin main` exited with"),
        "{}",
        s[1].message
    );
    assert!(
        s[1].message
            .contains("does not appear to be a git repository"),
        "{}",
        s[1].message
    );
    assert_eq!(s[1].generation, &new[..7]);
}

#[tokio::test]
async fn isolated_startup_with_unreachable_origin_does_not_fail() {
    let f = fixture(&[("NIXFLEET_REPO_URL", "/nonexistent/origin.git".to_string())]);
    f.commands.startup().await;
    assert!(!f.repo.join(".git").exists());
    assert!(f.state.running().is_none());
    f.send("pull");
    let s = f.wait_statuses(1).await;
    assert_eq!(s[0].status, Outcome::Error);
    assert!(
        s[0].message
            .starts_with("Pull failed: Clone failed: `git clone"),
        "{}",
        s[0].message
    );
}

#[tokio::test]
async fn restart_stops_the_running_command_first() {
    let f = fixture(&[]);
    let started = f.path("started");
    f.script(
        "T01-hangs.sh",
        &format!("touch {}; sleep 1000", started.display()),
    );
    f.send("test");
    f.wait_until("the test to start", |_| started.exists())
        .await;
    f.send("restart");
    let code = tokio::time::timeout(Duration::from_secs(20), f.state.exit_requested())
        .await
        .unwrap();
    assert_eq!(code, EXIT_RESTART);
    let s = f.wait_statuses(2).await;
    assert_eq!(
        (s[0].command.as_str(), s[0].status),
        ("test", Outcome::Stopped)
    );
    assert!(
        s[0].message.starts_with("Stopped: the agent is restarting"),
        "{}",
        s[0].message
    );
    assert_eq!(
        (s[1].command.as_str(), s[1].status),
        ("restart", Outcome::Ok)
    );
    // no new command once exiting
    f.send("pull");
    let s = f.wait_statuses(3).await;
    assert_eq!(s[2].status, Outcome::Error);
}

#[tokio::test]
async fn shutdown_terminates_the_running_command() {
    let f = fixture(&[]);
    let started = f.path("started");
    f.script(
        "T01-hangs.sh",
        &format!("touch {}; sleep 1000", started.display()),
    );
    f.send("test");
    f.wait_until("the test to start", |_| started.exists())
        .await;
    let pid = f.state.running().unwrap().pid;
    f.commands.shutdown().await;
    assert!(f.state.running().is_none());
    assert!(runner::tests::gone(pid as i32), "the test survived");
}

#[tokio::test]
async fn each_run_has_a_log_file() {
    let f = fixture(&[]);
    f.script("T01-x.sh", "echo logged-line; echo err-line >&2");
    f.send("test");
    f.wait_statuses(1).await;
    let logs: Vec<PathBuf> = fs::read_dir(f.tmp.path().join("state/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1);
    let text = fs::read_to_string(&logs[0]).unwrap();
    assert!(
        text.contains("logged-line\n") && text.contains("err-line\n"),
        "{text}"
    );
    assert!(text.contains("test ended: Ok"), "{text}");
}

#[tokio::test]
async fn finished_switch_records_are_reported_once_at_startup() {
    let f = fixture(&[]);
    let root = f.tmp.path().join("state/switch");
    let ok = Record::create(&root, "switch", &deploy::argv("nixos-rebuild", "x#y")).unwrap();
    ok.write_file("exit", b"0").unwrap();
    let failed =
        Record::create(&root, "pull-switch", &deploy::argv("nixos-rebuild", "x#y")).unwrap();
    fs::write(
        failed.dir().join("stderr.log"),
        "building...\nerror: boom\n",
    )
    .unwrap();
    failed.write_file("exit", b"1").unwrap();
    // a record whose supervisor is gone without an exit code
    let vanished = Record::create(&root, "update", &deploy::argv("nixos-rebuild", "x#y")).unwrap();
    vanished.write_file("supervisor.pid", b"999999999").unwrap();

    f.commands.startup().await;
    let s = f.wait_statuses(3).await;
    assert_eq!(
        (s[0].command.as_str(), s[0].status),
        ("switch", Outcome::Ok)
    );
    assert_eq!(
        (s[1].command.as_str(), s[1].status),
        ("pull-switch", Outcome::Error)
    );
    assert!(s[1].message.contains("error: boom"), "{}", s[1].message);
    assert_eq!(s[1].exit_code, 1);
    // not known: said so, never "failed"
    assert_eq!(
        (s[2].command.as_str(), s[2].status),
        ("update", Outcome::Warning)
    );
    assert!(s[2].message.contains("result unknown"), "{}", s[2].message);
    assert!(!s[2].message.contains("failed"), "{}", s[2].message);
    assert!(deploy::pending(&root).is_empty());

    // a second start reports nothing more
    f.commands.startup().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.statuses().len(), 3);
}
