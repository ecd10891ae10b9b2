//! End-to-end: the switches (`switch`, `pull-switch`, `update`, a switch's
//! detached run across agent restarts, `stop` of a switch), with the real
//! agent binary against the mock dashboard, real git repositories in temp
//! dirs and fake `nix`, `nix-env` and `switch-to-configuration` first on
//! `PATH` (`common/fakes.rs`). Every wait is on an event (a frame, a file the
//! fake tools write, a process exit), with a timeout that only fires when
//! broken. The phases of a switch and its guards: `preview.rs`.

mod common;

use common::cmdhost::*;
use common::*;
use nixfleet_mock_dashboard::MockDashboard;

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
            "--extra-experimental-features nix-command flakes build --json --out-link {} {}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel\n",
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

/// A nix-darwin system built before 25.05 has a legacy `activate-user`,
/// which darwin-rebuild runs as `$SUDO_USER` (and refuses without one);
/// the agent cannot tell that user, so it refuses the switch before the
/// profile moves, instead of skipping the per-user part in silence.
#[tokio::test]
async fn a_darwin_system_with_a_legacy_activate_user_is_refused_before_the_profile_moves() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    write_exec(
        &fakes.system.join("activate-user"),
        "#!/bin/sh\necho per-user defaults\n",
    );
    let _agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_HOST_TYPE", "macos")
        .spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    let message = s(&st.payload, "message");
    assert!(
        message.starts_with("Switch refused: ")
            && message.contains("legacy `activate-user`")
            && message.ends_with("nothing was set or activated"),
        "{message}"
    );
    assert!(
        !fakes.file("nix-env.argv").exists(),
        "the profile was not touched"
    );
    assert!(!fakes.file("rebuild.argv").exists(), "nothing activated");
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

/// `stop` (and the UI's Kill) while the switch activates is refused with
/// the reason: stopping an activation part-way leaves the host
/// half-switched, and on NixOS it would not even stop it (the activation
/// goes on in systemd's transient unit, so a "stopped" status would lie).
/// The switch ends on its own and gets its one true status.
#[tokio::test]
async fn stop_is_refused_while_the_switch_activates() {
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
    assert_eq!(s(p, "command"), "stop", "{p}");
    assert_eq!(s(p, "status"), "error", "{p}");
    assert!(
        s(p, "message")
            .starts_with("switch is activating the new system and cannot be stopped part-way"),
        "{p}"
    );
    // the UI's Kill (kill_command with the shown pid) the same
    let kill_at = kill_command(&dash, "SIGTERM", shown_pid).await;
    let st = status(&dash, kill_at).await;
    assert_eq!(s(&st.payload, "command"), "kill_command", "{}", st.payload);
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    // the activation goes on and ends: the switch's one status is its own
    fakes.touch("rebuild.go");
    let done = dash
        .wait_until(WAIT, |d| {
            d.frames(HOST, Some("status"))
                .into_iter()
                .find(|f| f.seq > after && f.payload["command"] == "switch")
        })
        .await
        .expect("the switch's status");
    assert_eq!(s(&done.payload, "status"), "ok", "{}", done.payload);
    assert!(fakes.file("rebuild.done").exists());
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
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

/// The agent stopped (SIGTERM: `systemctl restart`, a deploy of the agent)
/// while a dispatched switch still builds: nothing was activated, and the
/// hub's operation is ERROR before the process exits — not SUCCESS at the
/// next process's reconnect (lifecycle.go completes a switch cut off while
/// EXECUTING at the next register, and ignores a status after it).
#[tokio::test]
async fn a_switch_stopped_while_it_builds_is_an_error_at_the_hub_before_the_agent_exits() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("build.wait");
    let mut agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    let d = dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let id = d.command_id.expect("id");
    file_appears(&fakes.file("build.waiting")).await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(0));
    // the process is gone: what the hub shows now is what it keeps
    let op = dash.op(&id).expect("op");
    assert_eq!(op.status, "ERROR", "{op:?}");
    let st = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .find(|f| f.payload["command"] == "switch")
        .expect("the status came from this process");
    assert!(
        s(&st.payload, "message").starts_with("Stopped: the agent is shutting down"),
        "{}",
        st.payload
    );
    assert!(!fakes.file("nix-env.argv").exists(), "nothing activated");
    assert!(!fakes.file("rebuild.argv").exists(), "nothing activated");
    // the next process reconnects: the op stays ERROR, no second status
    let _b = agent_again(&dash, &fx, &fakes);
    wait_register(&dash, HOST, st.seq).await;
    assert_eq!(dash.op(&id).expect("op").status, "ERROR");
    let statuses = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "switch")
        .count();
    assert_eq!(statuses, 1, "reported once");
    assert_no_violations(&dash);
}

/// An activation that hangs (nixpkgs#378535: a unit whose start never
/// ends) is stopped at its deadline (`NIXFLEET_ACTIVATION_TIMEOUT`) instead
/// of holding the switch forever: the status is an error with timeout(1)'s
/// 124 and says so; what the host runs decides the rest (here nothing was
/// switched, so nothing is watched).
#[tokio::test]
async fn a_hung_activation_is_stopped_at_its_deadline() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.wait");
    let mut agent = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_ACTIVATION_TIMEOUT", "1")
        .spawn();
    registered(&dash).await;
    let after = command(&dash, "switch").await;
    let st = status(&dash, after).await;
    let p = &st.payload;
    assert_eq!(s(p, "status"), "error", "{p}");
    assert_eq!(p["exit_code"], 124, "{p}");
    let message = s(p, "message");
    assert!(
        message.contains("the activation did not end within 1 s: stopping it")
            && message.ends_with(
                "the activation was stopped after 1 s; what the host runs decides the outcome"
            ),
        "{message}"
    );
    // the label leaves the deadline out
    assert!(
        message.starts_with("Switch failed: `nixfleet-agent --activate nixos switch ")
            && !message.contains("--timeout="),
        "{message}"
    );
    assert!(!fakes.file("rebuild.done").exists());
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent stays");
    assert_no_violations(&dash);
}
