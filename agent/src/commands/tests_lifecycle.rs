//! Unit tests of the commands module, continued (`tests.rs` has the
//! harness): pulls in both modes, restarts and shutdown with a command
//! running, run logs, and switch records left by an earlier process.

use super::tests::*;
use super::*;
use std::fs;
use std::path::PathBuf;

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
    f.commands.shutdown(false).await;
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
