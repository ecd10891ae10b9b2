//! End-to-end: the commands (protocol.md's command, output, status,
//! command_rejected, test_progress and kill_command sections), with the real
//! agent binary against the mock dashboard, real git repositories in temp
//! dirs and the fake tools first on `PATH`; the switches: `switch.rs`. Every wait is on an event (a frame, a log line, a file the fake
//! tools write, a process exit), with a timeout that only fires when broken.

mod common;

use common::cmdhost::*;
use common::*;
use nixfleet_mock_dashboard::Frame;
use serde_json::{Value, json};

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
