//! End-to-end: the commands (protocol.md's command, output, status,
//! command_rejected, test_progress and kill_command sections), with the real
//! agent binary against the mock dashboard, real git repositories in temp
//! dirs and fake `nixos-rebuild` / `darwin-rebuild` / `nix` scripts first on
//! `PATH`. Every wait is on an event (a frame, a log line, a file the fake
//! tools write, a process exit), with a timeout that only fires when broken.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nixfleet_mock_dashboard::{Frame, MockDashboard};
use serde_json::{Value, json};

const HOST: &str = "cmdhost";

/// A host test script `hosts/<HOST>/tests/<name>` in `repo`.
fn test_script(repo: &Path, name: &str, body: &str) {
    host_test(repo, HOST, name, body);
}

/// An agent against `dash` in legacy mode on the fixture's repo, fakes on PATH.
fn agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes) -> AgentBuilder {
    AgentBuilder::new(&dash.ws_url(), HOST, fx).with_fakes(fakes)
}

/// An agent in isolated mode: its own clone of `bare` in `<state>/repo`.
fn isolated_agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes, bare: &Path) -> AgentBuilder {
    agent(dash, fx, fakes)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
}

/// Waits for a heartbeat carrying the fixture's HEAD: the agent's first start
/// in isolated mode has cloned the origin.
async fn cloned(dash: &MockDashboard, fx: &Fixture) {
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("heartbeat"))
            .into_iter()
            .find(|f| f.payload["generation"] == short7(&fx.head))
    })
    .await
    .expect("a heartbeat with the cloned generation");
}

async fn registered(dash: &MockDashboard) -> u64 {
    wait_register(dash, HOST, 0).await.1
}

async fn command(dash: &MockDashboard, name: &str) -> u64 {
    let seq = dash.last_seq();
    dash.send_command(HOST, name).await.expect("send command");
    seq
}

async fn kill_command(dash: &MockDashboard, signal: &str, pid: i64) -> u64 {
    let seq = dash.last_seq();
    let frame = json!({"type": "kill_command", "payload": {"signal": signal, "pid": pid}});
    dash.send_text(HOST, &frame.to_string())
        .await
        .expect("send kill_command");
    seq
}

async fn next(dash: &MockDashboard, kind: &str, after: u64) -> Frame {
    dash.wait_frame(HOST, kind, after, WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {kind} after seq {after}; frames: {:#?}",
                dash.frames(HOST, None)
            )
        })
}

async fn status(dash: &MockDashboard, after: u64) -> Frame {
    next(dash, "status", after).await
}

/// Waits for an output line equal to `line` after `after`.
async fn output_line(dash: &MockDashboard, line: &str, after: u64) -> Frame {
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("output"))
            .into_iter()
            .find(|f| f.seq > after && f.payload["line"] == line)
    })
    .await
    .unwrap_or_else(|| panic!("no output line {line:?}"))
}

fn outputs(dash: &MockDashboard, after: u64, before: u64) -> Vec<Value> {
    dash.frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > after && f.seq < before)
        .map(|f| f.payload)
        .collect()
}

fn switch_records(state: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state.join("switch"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

// ---------------------------------------------------------------- pull

#[tokio::test]
async fn pull_updates_the_generation() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let _agent = isolated_agent(&dash, &fx, &fakes, &bare).spawn();
    registered(&dash).await;
    // the agent cloned on its first start
    cloned(&dash, &fx).await;

    let new = commit_file(&fx.repo, "hosts/cmdhost/configuration.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    let after = command(&dash, "pull").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "command"), "pull");
    assert_eq!(p["exit_code"], 0);
    assert_eq!(s(p, "message"), format!("Pull: Updated to {}", &new[..7]));
    assert_eq!(s(p, "generation"), short7(&new));
    // output of git was streamed for the command before its status
    let out = outputs(&dash, after, st.seq);
    assert!(!out.is_empty());
    assert!(out.iter().all(|o| o["command"] == "pull"));
    // heartbeats carry the new generation
    let hb = next(&dash, "heartbeat", st.seq).await;
    assert_eq!(s(&hb.payload, "generation"), short7(&new));
    assert!(hb.payload["pending_command"].is_null());

    // again: nothing new
    let after = command(&dash, "pull").await;
    let st = status(&dash, after).await;
    assert_eq!(
        s(&st.payload, "message"),
        format!("Pull: Already at {}", &new[..7])
    );
    assert_no_violations(&dash);
}

/// Upstream's own isolated-repository test (`t12_isolated_repo_test.go`):
/// the agent's clone is private (0700) wherever it lives, and `register`
/// carries the clone's HEAD as `git rev-parse --short=7 HEAD`.
#[tokio::test]
async fn own_clone_outside_the_state_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let clone = fx.tmp.path().join("srv").join("nixcfg");
    let _agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
        .env("NIXFLEET_REPO_DIR", clone.to_str().unwrap())
        .spawn();
    let (reg, _) = wait_register(&dash, HOST, 0).await;
    let short = git(&clone, &["rev-parse", "--short=7", "HEAD"]);
    assert_eq!(reg["generation"], short.as_str(), "{reg}");
    assert_eq!(reg["repo_dir"], clone.to_str().unwrap());
    let mode = std::fs::metadata(&clone).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the agent's clone is not private: {mode:o}");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pull_of_a_broken_origin_fails_with_a_useful_message() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let _agent = isolated_agent(&dash, &fx, &fakes, &bare).spawn();
    registered(&dash).await;
    cloned(&dash, &fx).await;

    // the origin disappears
    std::fs::rename(&bare, fx.tmp.path().join("gone.git")).unwrap();
    let after = command(&dash, "pull").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "error", "{p}");
    assert_ne!(p["exit_code"], 0);
    let msg = s(p, "message");
    assert!(
        msg.starts_with("Pull failed: `git fetch origin main`"),
        "{msg}"
    );
    assert!(
        msg.contains("does not appear to be a git repository"),
        "{msg}"
    );
    assert_eq!(s(p, "generation"), short7(&fx.head));
    assert_no_violations(&dash);
}

// ---------------------------------------------------------------- switch

#[tokio::test]
async fn switch_success_exits_with_the_restart_code() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "command"), "switch");
    assert_eq!(s(p, "generation"), short7(&fx.head));
    // built first, then exactly that store path activated
    let link = fx.state.join("built-system");
    assert_eq!(
        fakes.read("nix-build.argv"),
        format!(
            "--extra-experimental-features nix-command flakes build --print-out-paths --out-link {} {}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel\n",
            link.display(),
            fx.repo.display()
        )
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), fakes.system);
    assert_eq!(
        fakes.read("nix-env.argv"),
        format!(
            "-p\n{}\n--set\n{}\n",
            fakes.profile.display(),
            fakes.system.display()
        )
    );
    assert_eq!(std::fs::canonicalize(&fakes.profile).unwrap(), fakes.system);
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
    // its output was streamed, stderr marked as such
    let out = outputs(&dash, after, st.seq);
    let building = out
        .iter()
        .find(|o| {
            o["line"]
                == "building '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-new-26.05.drv'..."
        })
        .expect("stderr line");
    assert_eq!(building["stream"], "stderr");
    assert_eq!(building["is_error"], true);
    assert!(
        out.iter()
            .any(|o| o["line"] == "switched" && o["stream"] == "stdout")
    );

    let exit = agent.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(101));
    assert_no_violations(&dash);
}

#[tokio::test]
async fn home_manager_switch_builds_and_runs_the_generations_activate() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let mut agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_SWITCH_TOOL", "home-manager")
        .env("NIXFLEET_HOME_MANAGER_USER", "alice")
        .spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(
        fakes.built_installable(),
        format!(
            "{}#homeConfigurations.\"alice@{HOST}\".activationPackage",
            fx.repo.display()
        )
    );
    // the generation's own `activate` (no arguments) links its profile; the
    // agent sets no system profile
    assert_eq!(fakes.read("rebuild.argv"), "\n");
    assert!(!fakes.file("nix-env.argv").exists());
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
}

/// nix-darwin: the same phases without the NixOS-only parts (no dry
/// activation, no /boot): the system profile, then the system's `activate`.
#[tokio::test]
async fn a_darwin_switch_sets_the_profile_and_runs_the_built_systems_activate() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(
        fakes.file("units.would"),
        "would start the following units: x.service\n",
    )
    .unwrap();
    let mut agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_HOST_TYPE", "macos")
        .spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(
        fakes.built_installable(),
        format!(
            "{}#darwinConfigurations.\"{HOST}\".system",
            fx.repo.display()
        )
    );
    assert_eq!(
        fakes.read("nix-env.argv"),
        format!(
            "-p\n{}\n--set\n{}\n",
            fakes.profile.display(),
            fakes.system.display()
        )
    );
    // `activate`, with no arguments
    assert_eq!(fakes.read("rebuild.argv"), "\n");
    let out = outputs(&dash, after, st.seq);
    assert!(
        out.iter()
            .any(|o| o["line"] == "[nixfleet-agent] ── end of preview ──"),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| {
            let line = o["line"].as_str().unwrap_or_default();
            line.contains("would start") || line.starts_with("[nixfleet-agent] /boot")
        }),
        "{out:?}"
    );
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&dash);
}

#[tokio::test]
async fn switch_failure_reports_the_stderr_tail() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("build.fail");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "error", "{p}");
    assert_eq!(p["exit_code"], 1);
    let msg = s(p, "message");
    assert!(msg.starts_with("Switch failed"), "{msg}");
    assert!(
        msg.contains("error: attribute 'frobnicator' missing"),
        "{msg}"
    );
    assert!(
        !fakes.file("rebuild.argv").exists(),
        "nothing was activated"
    );
    assert!(
        !fakes.file("nix-env.argv").exists(),
        "the profile was not set"
    );
    // the agent stays: heartbeats go on, idle
    let hb = next(&dash, "heartbeat", st.seq).await;
    assert!(hb.payload["pending_command"].is_null());
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn many_switches_back_to_back_each_get_their_true_status() {
    // Faults #3: the agent and the switch supervisor both write
    // supervisor.pid; a shared temporary name made one rename fail and a
    // failing switch was reported as "cannot write to the switch record".
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    for round in 0..12 {
        let fail = round % 3 != 2;
        if fail {
            fakes.touch("rebuild.fail");
        } else {
            let _ = std::fs::remove_file(fakes.file("rebuild.fail"));
        }
        let after = command(&dash, "switch").await;
        let st = status(&dash, after).await;
        let p = &st.payload;
        let msg = s(p, "message");
        assert!(!msg.contains("cannot write"), "round {round}: {msg}");
        if fail {
            assert_eq!(s(p, "status"), "error", "round {round}: {p}");
            assert_eq!(p["exit_code"], 1, "round {round}: {p}");
            assert!(
                msg.contains("Failed to install bootloader"),
                "round {round}: {msg}"
            );
        } else {
            assert_eq!(s(p, "status"), "ok", "round {round}: {p}");
            assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
            let seen = dash.last_seq();
            agent = agent_again(&dash, &fx, &fakes);
            wait_register(&dash, HOST, seen).await;
        }
    }
    let statuses = dash.frames(HOST, Some("status")).len();
    assert_eq!(statuses, 12, "exactly one status per switch");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pull_switch_stops_at_a_failed_pull() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let _agent = isolated_agent(&dash, &fx, &fakes, &bare).spawn();
    registered(&dash).await;
    cloned(&dash, &fx).await;
    std::fs::remove_dir_all(&bare).unwrap();
    let after = command(&dash, "pull-switch").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "error", "{p}");
    assert_eq!(s(p, "command"), "pull-switch");
    assert!(s(p, "message").starts_with("Pull failed"), "{p}");
    // the status is final, so a switch would have run before it
    assert!(!fakes.file("rebuild.argv").exists(), "the switch ran");
    assert!(switch_records(&fx.state).is_empty());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pull_switch_and_update_switch_after_their_first_step() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let mut agent = isolated_agent(&dash, &fx, &fakes, &bare).spawn();
    registered(&dash).await;
    cloned(&dash, &fx).await;
    let new = commit_file(&fx.repo, "x.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    let after = command(&dash, "pull-switch").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(
        s(p, "message"),
        format!("Pull: Updated to {}; Switch succeeded", &new[..7])
    );
    assert_eq!(s(p, "generation"), short7(&new));
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));

    // the next agent process: update
    std::fs::remove_file(fakes.file("rebuild.argv")).unwrap();
    let mut agent = isolated_agent(&dash, &fx, &fakes, &bare).spawn();
    let (_, reg) = wait_register(&dash, HOST, st.seq).await;
    let after = command(&dash, "update").await.max(reg);
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "command"), "update");
    assert_eq!(
        fakes.read("nix.argv"),
        "--extra-experimental-features\nnix-command flakes\nflake\nupdate\n"
    );
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_switch_outlives_a_killed_agent_and_is_reported_by_the_next_start() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    output_line(&dash, "activating the configuration...", after).await;
    file_appears(&fakes.file("rebuild.waiting")).await;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(WAIT).await;
    let killed_at = dash.last_seq();

    // the switch goes on without any agent and finishes
    fakes.touch("rebuild.go");
    let records = switch_records(&fx.state);
    assert_eq!(records.len(), 1, "{records:?}");
    file_appears(&records[0].join("exit")).await;
    assert!(fakes.file("rebuild.done").exists());

    // the next agent process reports it, once
    let mut agent = agent_again(&dash, &fx, &fakes);
    let (_, reg) = wait_register(&dash, HOST, killed_at).await;
    let st = status(&dash, reg).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "command"), "switch");
    assert!(s(p, "message").contains("earlier agent process"), "{p}");
    // it does not restart again for a switch that finished before it started
    let hb = next(&dash, "heartbeat", st.seq).await;
    assert!(hb.payload["pending_command"].is_null());
    assert!(agent.child.try_wait().unwrap().is_none());

    // a third start reports nothing more
    agent.signal(libc::SIGTERM);
    agent.wait_exit(WAIT).await;
    let before = dash.last_seq();
    let _agent = agent_again(&dash, &fx, &fakes);
    let (_, reg) = wait_register(&dash, HOST, before).await;
    next(&dash, "heartbeat", reg).await;
    next(&dash, "heartbeat", reg + 1).await;
    assert!(
        dash.frames(HOST, Some("status"))
            .iter()
            .all(|f| f.seq < before),
        "reported twice"
    );
    assert_no_violations(&dash);
}

fn agent_again(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes) -> Agent {
    agent(dash, fx, fakes).spawn()
}

#[tokio::test]
async fn a_running_switch_is_adopted_by_the_next_agent() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    command(&dash, "switch").await;
    file_appears(&fakes.file("rebuild.waiting")).await;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(WAIT).await;
    let killed_at = dash.last_seq();

    // the next agent finds it still running: shows it, streams the rest, reports
    let mut agent = agent_again(&dash, &fx, &fakes);
    let (_, reg) = wait_register(&dash, HOST, killed_at).await;
    let hb = next(&dash, "heartbeat", reg).await;
    assert_eq!(hb.payload["pending_command"], "switch", "{}", hb.payload);
    assert!(hb.payload["command_pid"].as_i64().unwrap() > 1);
    // busy with it
    let after = command(&dash, "pull").await;
    let rej = next(&dash, "command_rejected", after).await;
    assert_eq!(rej.payload["current_command"], "switch");

    fakes.touch("rebuild.go");
    let st = status(&dash, reg).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "command"), "switch");
    let out = outputs(&dash, reg, st.seq);
    assert!(
        out.iter()
            .any(|o| o["line"] == "starting the following units: nginx.service"),
        "{out:?}"
    );
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&dash);
}

#[tokio::test]
async fn stop_reaches_a_detached_switch() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    file_appears(&fakes.file("rebuild.waiting")).await;
    let hb = dash
        .wait_until(WAIT, |d| {
            d.frames(HOST, Some("heartbeat"))
                .into_iter()
                .find(|f| f.seq > after && f.payload["pending_command"] == "switch")
        })
        .await
        .expect("a heartbeat showing the switch");
    let shown_pid = hb.payload["command_pid"].as_i64().unwrap();
    let stop_at = command(&dash, "stop").await;
    let st = status(&dash, stop_at).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "stopped", "{p}");
    assert_eq!(s(p, "command"), "switch");
    assert_eq!(s(p, "message"), "Stopped by user");
    assert!(pid_gone(shown_pid as i32).await);
    assert!(!fakes.file("rebuild.done").exists());
    // a stopped switch is no success: no restart, and reported once
    let hb = next(&dash, "heartbeat", st.seq).await;
    assert!(hb.payload["pending_command"].is_null());
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    // marked reported once its status is kept in undelivered.json
    let records = switch_records(&fx.state);
    assert!(!records.is_empty());
    for record in records {
        file_appears(&record.join("reported")).await;
    }
    assert_no_violations(&dash);
}

#[tokio::test]
async fn sigterm_leaves_a_running_switch_alone() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    command(&dash, "switch").await;
    file_appears(&fakes.file("rebuild.waiting")).await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(0));
    let stopped_at = dash.last_seq();
    // the switch was not touched: it goes on when released
    fakes.touch("rebuild.go");
    file_appears(&fakes.file("rebuild.done")).await;
    let _agent = agent_again(&dash, &fx, &fakes);
    let (_, reg) = wait_register(&dash, HOST, stopped_at).await;
    let st = status(&dash, reg).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "command"), "switch");
    assert_no_violations(&dash);
}

// ---------------------------------------------------------------- test

#[tokio::test]
async fn test_runs_all_pass_some_fail_and_none() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;

    // none
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    assert_eq!(s(&st.payload, "message"), "no tests");
    let tp = dash.frames(HOST, Some("test_progress"));
    assert_eq!(tp.len(), 1);
    assert_eq!(
        tp[0].payload,
        json!({"current": 0, "total": 0, "passed": 0, "running": false, "result": "no tests"})
    );

    // all pass
    test_script(&fx.repo, "T01-network.sh", "echo network ok");
    test_script(&fx.repo, "T02-disk.sh", "echo disk ok");
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "message"), "2/2 passed");
    let tp: Vec<Value> = dash
        .frames(HOST, Some("test_progress"))
        .into_iter()
        .filter(|f| f.seq > after)
        .map(|f| f.payload)
        .collect();
    assert_eq!(
        tp,
        vec![
            json!({"current": 1, "total": 2, "passed": 1, "running": true, "result": ""}),
            json!({"current": 2, "total": 2, "passed": 2, "running": false, "result": "2/2 passed"}),
        ]
    );

    // some fail
    test_script(
        &fx.repo,
        "T03-broken.sh",
        "echo 'service x is down' >&2; exit 3",
    );
    test_script(&fx.repo, "T04-fine.sh", "true");
    test_script(&fx.repo, "T05-also-broken.sh", "exit 1");
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "error", "{p}");
    assert_eq!(
        s(p, "message"),
        "3/5 passed; failed: T03-broken.sh, T05-also-broken.sh"
    );
    let last = next(&dash, "test_progress", after).await;
    assert_eq!(last.payload["total"], 5);
    let last = dash.frames(HOST, Some("test_progress")).pop().unwrap();
    assert_eq!(
        last.payload,
        json!({"current": 5, "total": 5, "passed": 3, "running": false, "result": "3/5 passed"})
    );
    assert!(last.seq < st.seq);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn heartbeats_carry_the_running_command() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    // "end" is printed a second before the script exits, so that it is on the
    // wire while the run still runs: a heartbeat may overtake output that is
    // still queued when a run ends, and one written in that moment is idle
    test_script(
        &fx.repo,
        "T01-slow.sh",
        "echo start; sleep 5; echo end; sleep 1",
    );
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    let started = output_line(&dash, "start", after).await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    // while the script runs (between its first and last line): after it
    // exits, no process runs until the status, and a heartbeat says so
    let ended = output_line(&dash, "end", started.seq).await;
    let busy: Vec<Value> = dash
        .frames(HOST, Some("heartbeat"))
        .into_iter()
        .filter(|f| f.seq > started.seq && f.seq < ended.seq)
        .map(|f| f.payload)
        .collect();
    assert!(busy.len() >= 3, "only {} heartbeats during 5 s", busy.len());
    for hb in &busy {
        assert_eq!(hb["pending_command"], "test", "{hb}");
        assert!(hb["command_pid"].as_i64().unwrap() > 1, "{hb}");
    }
    let idle = next(&dash, "heartbeat", st.seq).await;
    assert!(idle.payload["pending_command"].is_null());
    assert!(idle.payload["command_pid"].is_null());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_second_command_is_rejected() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let go = fx.tmp.path().join("go");
    test_script(
        &fx.repo,
        "T01-waits.sh",
        &format!(
            "echo waiting; while [ ! -e {0} ]; do [ -d \"$(dirname {0})\" ] || exit 1; sleep 0.02; done",
            go.display()
        ),
    );
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    let waiting = output_line(&dash, "waiting", after).await;
    let hb = next(&dash, "heartbeat", waiting.seq).await;
    let pid = hb.payload["command_pid"].as_i64().unwrap();

    let rejected_after = command(&dash, "switch").await;
    let rej = next(&dash, "command_rejected", rejected_after).await;
    assert_eq!(
        rej.payload,
        json!({"reason": "command already running", "current_command": "test", "current_pid": pid})
    );
    // the running one is unaffected and finishes normally
    std::fs::write(&go, "").unwrap();
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    assert_eq!(s(&st.payload, "command"), "test");
    assert!(
        !fakes.file("rebuild.argv").exists(),
        "the rejected switch ran"
    );
    assert_eq!(dash.frames(HOST, Some("status")).len(), 1);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn stop_kills_the_process_tree_and_the_agent_takes_a_new_command() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let pids = fx.tmp.path().join("pids");
    test_script(
        &fx.repo,
        "T01-tree.sh",
        &format!(
            "sh -c 'sleep 1000 & echo $! > {p}.tmp; mv {p}.tmp {p}; wait' &\necho started\nwait",
            p = pids.display()
        ),
    );
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    output_line(&dash, "started", after).await;
    file_appears(&pids).await;
    let grandchild: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let stop_at = command(&dash, "stop").await;
    let st = status(&dash, stop_at).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "stopped", "{p}");
    assert_eq!(s(p, "command"), "test");
    assert!(s(p, "message").starts_with("Stopped by user"), "{p}");
    assert!(
        pid_gone(grandchild).await,
        "grandchild {grandchild} survived"
    );
    let tp = dash.frames(HOST, Some("test_progress")).pop().unwrap();
    assert_eq!(tp.payload["running"], false);
    assert_eq!(tp.payload["passed"], 0);

    // a new command runs
    test_script(&fx.repo, "T01-tree.sh", "echo quick");
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);

    // stop while idle says so
    let after = command(&dash, "stop").await;
    let st = status(&dash, after).await;
    assert_eq!(
        (
            s(&st.payload, "status"),
            s(&st.payload, "command"),
            s(&st.payload, "message")
        ),
        ("error", "stop", "no command running")
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn kill_command_sigkill_and_foreign_pids() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(
        &fx.repo,
        "T01-stubborn.sh",
        "trap '' TERM; echo started; while :; do sleep 0.1; done",
    );
    let _agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_STOP_GRACE_MS", "600000")
        .spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    let started = output_line(&dash, "started", after).await;
    let hb = next(&dash, "heartbeat", started.seq).await;
    let pid = hb.payload["command_pid"].as_i64().unwrap();

    // another process is never signalled
    let k = kill_command(&dash, "SIGKILL", 1).await;
    let st = status(&dash, k).await;
    assert_eq!(
        (s(&st.payload, "status"), s(&st.payload, "command")),
        ("error", "kill_command")
    );
    let hb = next(&dash, "heartbeat", st.seq).await;
    assert_eq!(hb.payload["pending_command"], "test");

    // SIGTERM is ignored by the script (and the grace is long)…
    kill_command(&dash, "SIGTERM", pid).await;
    // …SIGKILL is not
    let k = kill_command(&dash, "SIGKILL", 0).await;
    let st = status(&dash, k).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "stopped", "{p}");
    assert_eq!(s(p, "command"), "test");
    assert_eq!(p["exit_code"], 128 + 9);
    assert!(pid_gone(pid as i32).await);
    assert_no_violations(&dash);
}

// ---------------------------------------------------------------- output

#[tokio::test]
async fn every_line_of_a_100000_line_command_in_order() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(&fx.repo, "T01-chatty.sh", "seq 1 100000");
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    let lines: Vec<String> = outputs(&dash, after, st.seq)
        .into_iter()
        .map(|o| s(&o, "line").to_string())
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(lines.len(), 100_000, "lines were lost");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &(i + 1).to_string(), "out of order at {i}");
    }
    // nothing after the status
    assert!(
        dash.frames(HOST, Some("output"))
            .iter()
            .all(|f| f.seq < st.seq)
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn output_while_the_dashboard_is_down_then_the_status_after_it_returns() {
    let dash = dashboard().await;
    let addr = dash.addr();
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let go = fx.tmp.path().join("go");
    test_script(
        &fx.repo,
        "T01-offline.sh",
        &format!(
            "echo before; while [ ! -e {0} ]; do [ -d \"$(dirname {0})\" ] || exit 1; sleep 0.02; done; for i in $(seq 1 200); do echo during $i; done",
            go.display()
        ),
    );
    let agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    output_line(&dash, "before", after).await;

    dash.shutdown().await;
    assert!(agent.log.wait_for("connection lost", WAIT).await);
    std::fs::write(&go, "").unwrap();
    assert!(
        agent.log.wait_for("test ended", WAIT).await,
        "the command did not finish while the dashboard was down"
    );

    let dash = dashboard_at(addr).await;
    let (_, reg) = wait_register(&dash, HOST, 0).await;
    let st = status(&dash, reg).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "command"), "test");
    assert_eq!(s(p, "message"), "1/1 passed");
    let during: Vec<String> = outputs(&dash, 0, st.seq)
        .into_iter()
        .map(|o| s(&o, "line").to_string())
        .filter(|l| l.starts_with("during "))
        .collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("during {i}")).collect();
    assert_eq!(during, expected);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn children_get_a_clean_environment() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(&fx.repo, "T01-env.sh", "env");
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "test").await;
    let st = status(&dash, after).await;
    let lines: Vec<String> = outputs(&dash, after, st.seq)
        .into_iter()
        .map(|o| s(&o, "line").to_string())
        .collect();
    assert!(lines.iter().any(|l| l.starts_with("PATH=")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "GIT_TERMINAL_PROMPT=0"),
        "{lines:?}"
    );
    for l in &lines {
        assert!(!l.starts_with("NIXFLEET_"), "leaked: {l}");
        assert!(!l.contains(TOKEN), "token leaked: {l}");
    }
}

// ---------------------------------------------------------------- names

#[tokio::test]
async fn an_unknown_command_is_an_error_and_runs_nothing() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "frobnicate").await;
    let st = status(&dash, after).await;
    assert_eq!(
        st.payload,
        json!({"status": "error", "command": "frobnicate", "exit_code": -1,
               "message": "unknown command", "generation": short7(&fx.head)})
    );
    assert!(outputs(&dash, after, u64::MAX).is_empty());
    assert_no_violations(&dash);
}

/// `bump-flake` is in upstream's registry but no agent runs it: refused with
/// a status that says why and what to do instead, and nothing runs.
#[tokio::test]
async fn bump_flake_is_refused_with_the_reason() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "bump-flake").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    assert_eq!(st.payload["exit_code"], -1);
    let m = s(&st.payload, "message");
    assert!(m.starts_with("bump-flake is not run by this agent"), "{m}");
    assert!(m.contains("reset by the next pull"), "{m}");
    assert!(
        m.contains("update the input in the configuration repository"),
        "{m}"
    );
    assert!(outputs(&dash, after, u64::MAX).is_empty());
    assert!(!fakes.file("rebuild.argv").exists());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn paths_and_shell_text_as_command_names_run_nothing() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let pwned = fx.tmp.path().join("pwned");
    test_script(
        &fx.repo,
        "T01-marker.sh",
        &format!("touch {}", pwned.display()),
    );
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let names = [
        "/bin/sh".to_string(),
        format!("pull; touch {}", pwned.display()),
        format!("test && touch {}", pwned.display()),
        format!("$(touch {})", pwned.display()),
        "../x".to_string(),
        "../../usr/bin/nixos-rebuild".to_string(),
        "switch --flake /tmp/evil#x".to_string(),
        "test\n".to_string(),
    ];
    let first = dash.last_seq();
    for name in &names {
        dash.send_command(HOST, name).await.unwrap();
    }
    let statuses = dash
        .wait_until(WAIT, |d| {
            let st: Vec<Frame> = d
                .frames(HOST, Some("status"))
                .into_iter()
                .filter(|f| f.seq > first)
                .collect();
            (st.len() >= names.len()).then_some(st)
        })
        .await
        .expect("a status for every name");
    for st in &statuses {
        assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
        assert_eq!(s(&st.payload, "message"), "unknown command");
    }
    assert!(!pwned.exists(), "something ran");
    assert!(!fakes.file("rebuild.argv").exists(), "a switch ran");
    assert!(outputs(&dash, first, u64::MAX).is_empty());
    assert!(dash.frames(HOST, Some("test_progress")).is_empty());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn restart_exits_with_the_restart_code() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let after = command(&dash, "restart").await;
    let st = status(&dash, after).await;
    assert_eq!(
        (s(&st.payload, "status"), s(&st.payload, "command")),
        ("ok", "restart")
    );
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
}

#[tokio::test]
async fn legacy_mode_pull_is_git_pull_in_the_given_checkout() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    // the host's checkout (fx.repo) tracks a bare origin; another clone pushes
    let bare = bare_origin(&fx);
    let new = upstream_commit(&fx, &bare, "hosts/cmdhost/configuration.nix");

    let _agent = agent(&dash, &fx, &fakes).spawn(); // NIXFLEET_REPO_DIR only
    let (reg, _) = wait_register(&dash, HOST, 0).await;
    assert_eq!(s(&reg, "repo_url"), "");
    assert_eq!(s(&reg, "generation"), short7(&fx.head));

    let after = command(&dash, "pull").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "ok", "{p}");
    assert_eq!(s(p, "message"), format!("Pull: Updated to {}", &new[..7]));
    assert_eq!(s(p, "generation"), short7(&new));
    // the checkout itself moved: it is the one the host switches from
    assert_eq!(git(&fx.repo, &["rev-parse", "HEAD"]), new);
    assert_no_violations(&dash);
}
