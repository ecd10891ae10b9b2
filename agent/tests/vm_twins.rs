//! Twins of the NixOS VM tests (`checks/vm/`), which cannot run on machines
//! without a Nix binary cache. Every VM scenario has a cargo end-to-end twin
//! that runs here with the real binary against the mock dashboard:
//!
//! | VM scenario (`checks/vm/*.nix`) | cargo twin |
//! | --- | --- |
//! | `register` | [`vm_register_twin`] (isolated mode, clone, fields, online, private dirs); `connection.rs`: `registers_with_every_field_then_heartbeats_at_once`, `five_heartbeats_in_five_seconds_and_generation_is_reread` |
//! | `host-tests` | `commands.rs`: `test_runs_all_pass_some_fail_and_none`; `operations.rs`: `tests_are_every_executable_sh_and_the_others_are_listed_as_skipped` |
//! | `pull` | `commands.rs`: `pull_updates_the_generation` |
//! | `stop` | `commands.rs`: `stop_kills_the_process_tree_and_the_agent_takes_a_new_command`, `a_second_command_is_rejected`, `heartbeats_carry_the_running_command` |
//! | `restart` | [`vm_restart_twin`]; `host_twin.rs`: `twin_unit_registers_runs_restarts_rotates_the_token_and_closes_1000` |
//! | `config-error` | `cli.rs`: `invalid_configuration_exits_78_naming_the_variable` |
//! | `dashboard-restart` | `connection.rs`: `dashboard_restarted_agent_registers_again` |
//! | `token-secrecy` | [`vm_token_secrecy_twin`]; `connection.rs`: `the_token_never_reaches_the_log` |
//! | `switch` | `host_twin.rs`: `twin_switch_is_confirmed_and_a_failed_health_check_is_rolled_back`; `dashboard_row.rs`: `pull_switch_moves_system_through_outdated_and_working_to_ok`, `pull_switch_test_through_the_lifecycle_with_the_right_compartments`; `operations.rs`: `rollback_activates_the_profiles_previous_generation_detached_and_restarts` |
//! | `auto-rollback` | `host_twin.rs` (under the module's unit and a real systemd): `twin_switch_is_confirmed_and_a_failed_health_check_is_rolled_back`, `twin_a_dead_new_agent_is_rolled_back_inhibitors_wait_for_a_boot_a_failed_unit_stays`; `watchdog.rs`: `a_new_agent_that_cannot_reach_the_dashboard_is_rolled_back_once`, `the_window_survives_a_reboot_of_the_supervisor` |
//! | `preview` | `preview.rs`: `a_switch_is_refused_when_the_store_would_fill_up`, `a_switch_is_refused_when_the_new_kernel_does_not_fit_in_boot`, `a_switch_builds_then_previews_then_activates_exactly_what_it_built`, `changed_switch_inhibitors_install_the_system_for_the_next_boot`; `host_twin.rs` (a real systemd and NixOS's switch-to-configuration-ng, /boot a filesystem of its own): `twin_switch_is_confirmed_and_a_failed_health_check_is_rolled_back`, `twin_a_dead_new_agent_is_rolled_back_inhibitors_wait_for_a_boot_a_failed_unit_stays` |
//! | `rollback` | `operations.rs`: `rollback_activates_the_profiles_previous_generation_detached_and_restarts`, `a_rollback_survives_an_agent_restart_and_is_reported_once` |
//! | `reboot` | `operations.rs`: `reboot_while_a_test_runs_stops_it_then_reports_after_the_boot`, `reboot_failures_are_reported_with_their_output` |
//!
//! [`every_vm_scenario_has_a_twin_that_exists`] keeps this table true: every
//! scenario of `checks/vm/default.nix` is listed, and every test it names
//! exists in the file it names.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use nixfleet_mock_dashboard::MockDashboard;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn status_after(dash: &MockDashboard, host: &str, after: u64) -> serde_json::Value {
    dash.wait_frame(host, "status", after, WAIT)
        .await
        .expect("status")
        .payload
}

#[tokio::test]
async fn vm_register_twin() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let bare = bare_origin(&fx);
    let _agent = AgentBuilder::new(&dash.ws_url(), "agent", &fx)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
        .env("NIXFLEET_INTERVAL", "1")
        .env("NIXFLEET_LOCATION", "cloud")
        .env("NIXFLEET_THEME_COLOR", "#3366cc")
        .spawn();

    // the first start clones before registering, so the register carries HEAD
    let (reg, seq) = wait_register(&dash, "agent", 0).await;
    assert_eq!(reg["repo_url"], bare.to_str().unwrap());
    let clone = fx.state.join("repo");
    assert_eq!(reg["repo_dir"], clone.to_str().unwrap());
    assert_eq!(reg["generation"], short7(&fx.head));
    assert_eq!(reg["location"], "cloud");
    assert_eq!(reg["theme_color"], "#3366cc");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), fx.head);

    dash.wait_until(WAIT, |d| {
        d.frames("agent", Some("heartbeat"))
            .into_iter()
            .filter(|f| f.seq > seq)
            .nth(3)
    })
    .await
    .expect("four heartbeats");
    assert!(
        dash.hosts()
            .iter()
            .any(|h| h.hostname == "agent" && h.online && h.heartbeat_interval == 1),
        "{:?}",
        dash.hosts()
    );
    assert_eq!(mode(&fx.state), 0o700, "state directory not private");
    assert_eq!(
        mode(&fx.state.join("logs")),
        0o700,
        "log directory not private"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn vm_restart_twin() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let builder = || AgentBuilder::new(&dash.ws_url(), "agent", &fx);
    let mut first = builder().spawn();
    let first_pid = first.pid();
    let (_, seq) = wait_register(&dash, "agent", 0).await;
    dash.send_command("agent", "restart").await.unwrap();
    let status = status_after(&dash, "agent", seq).await;
    assert_eq!(status["command"], "restart");
    assert_eq!(status["status"], "ok");
    // exit 101: the service manager's cue (RestartForceExitStatus=101)
    let exit = first.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(101));
    let closed = dash
        .wait_event("closed", Some("agent"), seq, WAIT)
        .await
        .expect("clean close before the restart");
    assert_eq!(closed.code, Some(1000));

    // what systemd does next: start it again; it registers and heartbeats
    let second = builder().spawn();
    assert_ne!(second.pid(), first_pid);
    let (_, seq) = wait_register(&dash, "agent", closed.seq).await;
    dash.wait_frame("agent", "heartbeat", seq, WAIT)
        .await
        .expect("heartbeats resume");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn vm_token_secrecy_twin() {
    const SECRET: &str = "tok-3f9a1c7e55b2";
    let dash = MockDashboard::start(nixfleet_mock_dashboard::Options {
        tokens: vec![SECRET.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let fx = Fixture::new();
    // a token file, as agenix/sops-nix or LoadCredential provide it
    let secrets = fx.tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("token"), format!("{SECRET}\n")).unwrap();
    // a host test that shows everything a child can see of its environment
    commit_file(
        &fx.repo,
        "hosts/agent/tests/T01-env.sh",
        "#!/bin/sh\nenv\ncat /proc/$PPID/cmdline | tr '\\0' ' '; echo\n",
    );
    let script = fx.repo.join("hosts/agent/tests/T01-env.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let agent = AgentBuilder::new(&dash.ws_url(), "agent", &fx)
        .without("NIXFLEET_TOKEN")
        .env("CREDENTIALS_DIRECTORY", secrets.to_str().unwrap())
        .env("NIXFLEET_LOG_LEVEL", "trace")
        .spawn();
    let (_, seq) = wait_register(&dash, "agent", 0).await;

    // not in the agent's environment or argv
    let pid = agent.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(SECRET));
    assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET));

    // not in a child's environment
    dash.send_command("agent", "test").await.unwrap();
    let status = status_after(&dash, "agent", seq).await;
    assert_eq!(status["status"], "ok", "{status}");
    let lines: Vec<String> = dash
        .frames("agent", Some("output"))
        .iter()
        .map(|f| f.payload["line"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("PATH=")),
        "the test printed its environment: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(SECRET)),
        "token reached a child"
    );
    assert!(
        lines.iter().all(|l| !l.starts_with("NIXFLEET_")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("CREDENTIALS_DIRECTORY="))
    );

    // not in the log, nor in anything the agent wrote to its state directory
    assert!(!agent.log.text().contains(SECRET));
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", SECRET])
        .arg(&fx.state)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "token written to {}",
        String::from_utf8_lossy(&grep.stdout)
    );
    assert_no_violations(&dash);
}

#[test]
fn every_vm_scenario_has_a_twin_that_exists() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vm = std::fs::read_to_string(here.join("../checks/vm/default.nix")).unwrap();
    let scenarios: Vec<&str> = vm
        .lines()
        .filter_map(|l| l.trim().strip_prefix("vm-"))
        .filter_map(|l| l.split_once(" = scenario ").map(|(name, _)| name))
        .collect();
    assert!(scenarios.len() >= 10, "{scenarios:?}");
    let table = include_str!("vm_twins.rs");
    for name in scenarios {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("//! | `{name}` |")))
            .unwrap_or_else(|| panic!("VM scenario {name} has no twin in the table"));
        let twins = row.rsplit('|').nth(1).unwrap_or_default();
        // "`file.rs`: `a`, `b`; `other.rs`: `c`" and "[`in_this_file`] (notes)":
        // code spans ending in .rs name the file of the spans after them
        let mut file = "vm_twins.rs".to_string();
        let mut named = 0;
        for span in twins.split('`').skip(1).step_by(2) {
            if span.ends_with(".rs") {
                file = span.to_string();
                continue;
            }
            let source = std::fs::read_to_string(here.join("tests").join(&file))
                .unwrap_or_else(|e| panic!("{name}: twin file {file}: {e}"));
            assert!(
                source.contains(&format!("async fn {span}(")),
                "{name}: no test {span} in {file}"
            );
            named += 1;
        }
        assert!(named > 0, "{name}: the row names no test");
    }
}
