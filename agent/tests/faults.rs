//! End-to-end: faults the agent recovers from (issue "Faults"), with the real
//! agent binary against the mock dashboard, asserting on the one true status
//! each command gets.

mod common;

use std::time::Duration;

use common::*;
use nixfleet_mock_dashboard::{Frame, MockDashboard};

const HOST: &str = "faulty";

async fn status_of(dash: &MockDashboard, command: &str, after: u64) -> Frame {
    status_for(dash, HOST, command, after).await
}

async fn pull(dash: &MockDashboard) -> (Frame, Vec<String>) {
    let after = dash.last_seq();
    dash.send_command(HOST, "pull").await.expect("send");
    let st = status_of(dash, "pull", after).await;
    let lines = dash
        .frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > after && f.seq < st.seq)
        .map(|f| f.payload["line"].as_str().unwrap_or("").to_owned())
        .collect();
    (st, lines)
}

fn message(f: &Frame) -> &str {
    f.payload["message"].as_str().unwrap_or("")
}

/// An agent in isolated mode on a bare origin of the fixture; returns it with
/// the path of its clone once it has cloned.
async fn isolated(dash: &MockDashboard, fx: &Fixture) -> (Agent, std::path::PathBuf) {
    let bare = bare_origin(fx);
    let agent = AgentBuilder::new(&dash.ws_url(), HOST, fx)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
        .spawn();
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("heartbeat"))
            .into_iter()
            .find(|f| f.payload["generation"] == short7(&fx.head))
    })
    .await
    .expect("cloned");
    (agent, fx.state.join("repo"))
}

/// Dates a file an hour back, as a lock a killed git left a while ago.
fn an_hour_old(path: &std::path::Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// A recent lock that nobody holds in the agent's own clone: no git runs
/// there but the agent's, so it was left by one that died; it goes at once
/// (before, the pull was refused until the lock was two minutes old).
#[tokio::test]
async fn a_recent_unheld_lock_in_the_agents_own_clone_goes_at_once() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let (_agent, clone) = isolated(&dash, &fx).await;
    let lock = clone.join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let (st, lines) = pull(&dash).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert!(!lock.exists(), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("removed a stale git lock") && l.contains("index.lock")),
        "{lines:?}"
    );
    assert_no_violations(&dash);
}

/// In a checkout the agent does not own (legacy mode), an old unheld lock is
/// reported with what to do, never deleted.
#[tokio::test]
async fn a_lock_in_a_legacy_checkout_is_reported_never_removed() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let _bare = bare_origin(&fx);
    let _agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    wait_register(&dash, HOST, 0).await;
    let lock = fx.repo.join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    an_hour_old(&lock);
    let (st, lines) = pull(&dash).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    assert!(lock.exists(), "the lock in the user's checkout was deleted");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("index.lock exists and no process holds it")
                && l.contains("never deletes files in a checkout it does not own")),
        "{lines:?}"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn locks_left_by_a_killed_git_are_removed_before_a_pull() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let (_agent, clone) = isolated(&dash, &fx).await;
    // what a git killed mid-pull left behind, a while ago
    for lock in [".git/index.lock", ".git/refs/heads/main.lock"] {
        std::fs::write(clone.join(lock), "").unwrap();
        an_hour_old(&clone.join(lock));
    }
    let new = commit_file(&fx.repo, "hosts/faulty/a.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    let (st, lines) = pull(&dash).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(message(&st), format!("Pull: Updated to {}", &new[..7]));
    for lock in ["index.lock", "main.lock"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("removed a stale git lock") && l.contains(lock)),
            "{lock}: {lines:?}"
        );
    }
    assert!(!clone.join(".git/index.lock").exists());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_lock_a_running_process_holds_is_left_alone() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let (_agent, clone) = isolated(&dash, &fx).await;
    let lock = clone.join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    an_hour_old(&lock);
    // a "git" still at work: it holds its lock file open
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<'{}'; echo ready; exec sleep 300",
            lock.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let (st, _) = pull(&dash).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    assert!(message(&st).contains("index.lock"), "{}", message(&st));
    assert!(lock.exists(), "a held lock was removed");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // once nobody holds it, the next pull recovers by itself
    let (st, _) = pull(&dash).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_broken_clone_of_our_own_is_cloned_again() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let (_agent, clone) = isolated(&dash, &fx).await;
    let new = commit_file(&fx.repo, "hosts/faulty/b.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    // garbage HEAD and a corrupt index
    std::fs::write(clone.join(".git/HEAD"), "garbage\n").unwrap();
    std::fs::write(clone.join(".git/index"), "not an index").unwrap();
    let (st, lines) = pull(&dash).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert!(
        message(&st).starts_with(&format!("Pull: Updated to {}", &new[..7])),
        "{}",
        message(&st)
    );
    assert!(message(&st).contains("cloned again"), "{}", message(&st));
    assert!(lines.iter().any(|l| l.contains("is broken")), "{lines:?}");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), new);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_broken_legacy_checkout_is_reported_never_deleted() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let _agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    wait_register(&dash, HOST, 0).await;
    std::fs::write(fx.repo.join(".git/HEAD"), "garbage\n").unwrap();
    let (st, _) = pull(&dash).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    assert!(
        message(&st).contains("never deletes a checkout"),
        "{}",
        message(&st)
    );
    assert!(fx.repo.join(".git").is_dir() && fx.repo.join("flake.lock").is_file());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_git_killed_mid_pull_does_not_wedge_the_next_pull() {
    // the real thing: a git fetch killed with SIGKILL while it holds a lock
    let dash = dashboard().await;
    let fx = Fixture::new();
    let (_agent, clone) = isolated(&dash, &fx).await;
    let mut git_child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && exec 3>.git/index.lock && echo locked && exec sleep 300",
            clone.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(git_child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    git_child.kill().unwrap(); // SIGKILL: the lock stays
    git_child.wait().unwrap();
    let lock = clone.join(".git/index.lock");
    assert!(lock.exists());
    // the next pull, right away: nobody holds it, so it is stale
    let (st, _) = tokio::time::timeout(Duration::from_secs(30), pull(&dash))
        .await
        .unwrap();
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert!(!lock.exists());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_after_a_401() {
    let dash = MockDashboard::start(nixfleet_mock_dashboard::Options {
        tokens: vec!["old-token-1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let fx = Fixture::new();
    let file = fx.tmp.path().join("token");
    std::fs::write(&file, "old-token-1\n").unwrap();
    let agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .without("NIXFLEET_TOKEN")
        .env("NIXFLEET_TOKEN_FILE", file.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;

    // agenix/sops-nix rewrite the secret; the dashboard takes only the new one
    std::fs::write(&file, "new-token-2\n").unwrap();
    dash.add_token("new-token-2");
    dash.remove_token("old-token-1");
    let seen = dash.last_seq();
    dash.disconnect(HOST, 1006).await;
    let rejected = dash
        .wait_event("rejected", None, seen, WAIT)
        .await
        .expect("the old token is refused once");
    let connected = dash
        .wait_event("connected", Some(HOST), rejected.seq, WAIT)
        .await
        .expect("the new token is read and accepted");
    assert!(connected.seq > rejected.seq);
    assert!(agent.log.wait_for("the token file changed", WAIT).await);
    let log = agent.log.text();
    assert!(
        !log.contains("new-token-2") && !log.contains("old-token-1"),
        "{log}"
    );
    assert_no_violations(&dash);
}

/// A test script that ends when `flag` appears.
fn waiting_test(fx: &Fixture, flag: &std::path::Path) {
    let path = fx
        .repo
        .join("hosts")
        .join(HOST)
        .join("tests")
        .join("T01-wait.sh");
    write_exec(
        &path,
        &format!(
            "#!/bin/sh\necho waiting\nwhile [ ! -e '{}' ]; do [ -d '{}' ] || exit 1; sleep 0.02; done\necho done\n",
            flag.display(),
            fx.tmp.path().display()
        ),
    );
}

fn statuses_for(dash: &MockDashboard, command: &str) -> Vec<Frame> {
    dash.frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == command)
        .collect()
}

#[tokio::test]
async fn a_status_written_into_a_dying_connection_is_sent_again() {
    // The status reaches the socket, but the dashboard never reads it (it
    // stopped reading, then the connection dies): no pong confirms it, so the
    // agent writes it again after reconnecting.
    let dash = dashboard().await;
    let fx = Fixture::new();
    let flag = fx.tmp.path().join("go");
    waiting_test(&fx, &flag);
    let agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    wait_register(&dash, HOST, 0).await;
    let after = dash.last_seq();
    dash.send_command(HOST, "test").await.expect("send");
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("output"))
            .into_iter()
            .find(|f| f.seq > after && f.payload["line"] == "waiting")
    })
    .await
    .expect("the test runs");
    dash.pause(HOST);
    std::fs::write(&flag, "").unwrap();
    // written into the socket, which the paused dashboard does not read
    assert!(
        agent.log.wait_for("status of test written", WAIT).await,
        "{}",
        agent.log.text()
    );
    let seen = dash.last_seq();
    dash.disconnect(HOST, 1006).await;
    let (_, reg) = wait_register(&dash, HOST, seen).await;
    let st = status_of(&dash, "test", reg).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(statuses_for(&dash, "test").len(), 1, "delivered once");
    assert!(
        agent
            .log
            .wait_for("sent again after reconnecting", WAIT)
            .await
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn undelivered_statuses_survive_an_agent_restart() {
    let dash = dashboard().await;
    let addr = dash.addr();
    let fx = Fixture::new();
    let flag = fx.tmp.path().join("go");
    waiting_test(&fx, &flag);
    let mut agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    wait_register(&dash, HOST, 0).await;
    dash.send_command(HOST, "test").await.expect("send");
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("output"))
            .into_iter()
            .find(|f| f.payload["line"] == "waiting")
    })
    .await
    .expect("the test runs");
    // the dashboard goes away; the test finishes meanwhile
    dash.clone().shutdown().await;
    std::fs::write(&flag, "").unwrap();
    assert!(agent.log.wait_for("test ended", WAIT).await);
    assert!(agent.log.wait_for("reconnecting in", WAIT).await);
    // the agent is restarted (an upgrade, a crash, a reboot)
    agent.signal(libc::SIGTERM);
    agent.wait_exit(WAIT).await;
    assert!(
        fx.state.join("undelivered.json").is_file(),
        "kept in the state directory"
    );
    let dash = dashboard_at(addr).await;
    let again = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    let (_, reg) = wait_register(&dash, HOST, 0).await;
    let st = status_of(&dash, "test", reg).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(st.payload["message"], "1/1 passed");
    // confirmed by the dashboard's pong: the file goes
    assert!(
        again.log.wait_for("every status is confirmed", WAIT).await,
        "{}",
        again.log.text()
    );
    assert!(!fx.state.join("undelivered.json").exists());
    assert_eq!(statuses_for(&dash, "test").len(), 1);
    assert_no_violations(&dash);
}

/// A small tmpfs at a directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None`, with a message saying so, where this machine cannot mount.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_switch_on_a_disk_that_fills_up_reports_the_tools_real_result() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let state = fx.tmp.path().join("small-state");
    let Some(_mount) = Tmpfs::mount(&state, "2m") else {
        return;
    };
    // a rebuild that fills the disk the switch record lives on, then succeeds
    write_exec(
        &fakes.bin.join("nixos-rebuild"),
        &format!(
            "#!/bin/sh\necho building\nhead -c 100000000 /dev/zero > '{}/filler' 2>/dev/null\necho done\nexit 0\n",
            state.display()
        ),
    );
    let mut agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_STATE_DIR", state.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let after = dash.last_seq();
    dash.send_command(HOST, "switch").await.expect("send");
    let st = status_of(&dash, "switch", after).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(st.payload["exit_code"], 0, "{}", st.payload);
    assert!(
        message(&st).starts_with("Switch succeeded"),
        "{}",
        message(&st)
    );
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    let _ = std::fs::remove_file(state.join("filler"));
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_switch_whose_result_cannot_be_known_says_unknown_never_failed() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let _agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let after = dash.last_seq();
    dash.send_command(HOST, "switch").await.expect("send");
    file_appears(&fakes.file("rebuild.waiting")).await;
    // the supervisor dies (SIGKILL) without recording anything
    let record = std::fs::read_dir(fx.state.join("switch"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("the switch record");
    let supervisor: i32 = std::fs::read_to_string(record.join("supervisor.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on a pid this test's agent started; no memory involved.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    let st = status_of(&dash, "switch", after).await;
    assert_eq!(st.payload["status"], "warning", "{}", st.payload);
    assert!(message(&st).contains("result unknown"), "{}", message(&st));
    assert!(!message(&st).contains("failed"), "{}", message(&st));
    let hb = dash
        .wait_frame(HOST, "heartbeat", st.seq, WAIT)
        .await
        .expect("heartbeat");
    assert_eq!(hb.payload["update_status"]["system"]["status"], "unknown");
    // the orphaned tool goes on; let it finish before its directory goes
    fakes.touch("rebuild.go");
    file_appears(&fakes.file("rebuild.done")).await;
    assert_no_violations(&dash);
}

/// Polls for `pred` on a file's content (files give no event to wait on).
async fn file_holds(path: &std::path::Path, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| pred(&t)) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_log_file_is_reopened_on_sighup_after_a_rotation() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let log = fx.tmp.path().join("nixfleet-agent.log");
    let pid_file = fx.tmp.path().join("nixfleet-agent.pid");
    // launchd's StandardErrorPath: the agent's stderr is the log file
    let mut child = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .env("NIXFLEET_LOG_FILE", log.to_str().unwrap())
        .env("NIXFLEET_PID_FILE", pid_file.to_str().unwrap())
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_register(&dash, HOST, 0).await;
    assert!(file_holds(&log, |t| t.contains("registered")).await);
    assert!(file_holds(&pid_file, |t| t.trim() == child.id().unwrap().to_string()).await);

    // newsyslog: rename, then signal the pid in the pid file
    let rotated = fx.tmp.path().join("nixfleet-agent.log.0");
    std::fs::rename(&log, &rotated).unwrap();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the agent this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(
        file_holds(&log, |t| t.contains("SIGHUP: reopened the log file")).await,
        "a fresh log file"
    );
    // what the agent logs from now on goes to the new file, not the rotated one
    let rotated_len = std::fs::metadata(&rotated).unwrap().len();
    dash.send_command(HOST, "refresh-git").await.expect("send");
    assert!(file_holds(&log, |t| t.contains("command refresh-git")).await);
    assert_eq!(std::fs::metadata(&rotated).unwrap().len(), rotated_len);
    // SIGHUP does not end the agent; SIGTERM does, and the pid file goes
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!pid_file.exists());
    assert_no_violations(&dash);
}
