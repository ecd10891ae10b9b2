//! End-to-end: every operation the real dashboard's UI sends (protocol.md's
//! command table; upstream `ops/registry.go`) beyond pull/switch/test:
//! rollback, reboot, kill, check-version, refresh-lock, refresh-system,
//! refresh-git, test discovery, and the names that are refused. The real agent
//! binary against the mock dashboard, with fake tools first on `PATH`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nixfleet_mock_dashboard::{Frame, MockDashboard};
use serde_json::Value;

const HOST: &str = "ophost";

fn agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes) -> AgentBuilder {
    AgentBuilder::new(&dash.ws_url(), HOST, fx).with_fakes(fakes)
}

fn test_script(repo: &Path, name: &str, body: &str, mode: u32) {
    let path = host_test(repo, HOST, name, body);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Sends `command`; returns the seq before it.
async fn send(dash: &MockDashboard, command: &str) -> u64 {
    let seq = dash.last_seq();
    dash.send_command(HOST, command).await.expect("send");
    seq
}

/// The first `status` after `after` for `command`.
async fn status_of(dash: &MockDashboard, command: &str, after: u64) -> Frame {
    status_for(dash, HOST, command, after).await
}

fn outputs(dash: &MockDashboard, after: u64) -> Vec<String> {
    dash.frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > after)
        .map(|f| s(&f.payload, "line").to_owned())
        .collect()
}

/// The System compartment of the first heartbeat after `after`.
async fn system_after(dash: &MockDashboard, after: u64) -> Value {
    dash.wait_frame(HOST, "heartbeat", after, WAIT)
        .await
        .expect("a heartbeat")
        .payload["update_status"]["system"]
        .clone()
}

#[tokio::test]
async fn rollback_activates_the_profiles_previous_generation_detached_and_restarts() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let old = fakes
        .store
        .join("11111111111111111111111111111111-nixos-system-old");
    fakes.generations(&[&old, &fakes.system]);
    let mut a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let d = dash.dispatch(HOST, "rollback", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = status_of(&dash, "rollback", 0).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "message"), "Rollback succeeded");
    // the profile goes back one generation, and that system is activated
    assert_eq!(
        fakes.read("nix-env.argv"),
        format!("-p\n{}\n--rollback\n", fakes.profile.display())
    );
    assert_eq!(std::fs::canonicalize(&fakes.profile).unwrap(), old);
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
    let system = system_after(&dash, st.seq).await;
    assert_eq!(system["status"], "ok");
    assert_eq!(system["message"], "Rollback succeeded");
    // the hub completes a rollback at the heartbeat after its status
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(
        a.wait_exit(WAIT).await.code(),
        Some(101),
        "restart on the rolled-back binary"
    );
    assert_no_violations(&dash);
}

/// Nothing to go back to: nix-env's own refusal, exactly one `error`,
/// nothing activated.
#[tokio::test]
async fn a_rollback_without_a_previous_generation_fails_with_nix_envs_reason() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.generations(&[&fakes.system]);
    let mut a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    send(&dash, "rollback").await;
    let st = status_of(&dash, "rollback", 0).await;
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    assert_eq!(st.payload["exit_code"], 1, "{}", st.payload);
    let message = s(&st.payload, "message");
    assert!(
        message.starts_with("Rollback failed: `nixfleet-agent --activate nixos switch ")
            && message.contains("error: no generation older than the current (1) exists"),
        "{message}"
    );
    assert!(
        !fakes.file("rebuild.argv").exists(),
        "nothing was activated"
    );
    assert!(a.child.try_wait().unwrap().is_none(), "the agent stays");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_rollback_survives_an_agent_restart_and_is_reported_once() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let old = fakes
        .store
        .join("11111111111111111111111111111111-darwin-system-old");
    fakes.generations(&[&old, &fakes.system]);
    fakes.touch("rebuild.wait");
    let mut a = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_SWITCH_TOOL", "darwin-rebuild")
        .spawn();
    wait_register(&dash, HOST, 0).await;
    send(&dash, "rollback").await;
    file_appears(&fakes.file("rebuild.waiting")).await;
    a.signal(libc::SIGKILL);
    a.wait_exit(WAIT).await;
    let seen = dash.last_seq();
    let _b = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_SWITCH_TOOL", "darwin-rebuild")
        .spawn();
    wait_register(&dash, HOST, seen).await;
    fakes.touch("rebuild.go");
    let st = status_of(&dash, "rollback", seen).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    // nix-darwin: the previous generation's `activate`
    assert_eq!(std::fs::canonicalize(&fakes.profile).unwrap(), old);
    assert_eq!(fakes.read("rebuild.argv"), "\n");
    let statuses = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "rollback")
        .count();
    assert_eq!(statuses, 1, "reported once");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn home_manager_rollback_activates_the_previous_generation() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let profiles = fx.tmp.path().join(".local/state/nix/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    for n in [4, 5] {
        let generation = fx.tmp.path().join(format!("hm-gen-{n}"));
        write_exec(
            &generation.join("activate"),
            &format!(
                "#!/bin/sh\necho activating {n}\necho {n} > {}\n",
                fakes.file("activated").display()
            ),
        );
        std::os::unix::fs::symlink(&generation, profiles.join(format!("home-manager-{n}-link")))
            .unwrap();
    }
    std::os::unix::fs::symlink("home-manager-5-link", profiles.join("home-manager")).unwrap();
    let hm = || agent(&dash, &fx, &fakes).env("NIXFLEET_SWITCH_TOOL", "home-manager");
    let mut a = hm().spawn();
    wait_register(&dash, HOST, 0).await;
    let sent = send(&dash, "rollback").await;
    // the rollback is watched (the current generation is on record): the
    // agent checks the generation it activated, reports, then restarts;
    // the next one only has to reach the dashboard
    let st = status_of(&dash, "rollback", sent).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(
        s(&st.payload, "message"),
        "Rollback succeeded; the new generation passed its health checks"
    );
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));
    assert_eq!(fakes.read("activated"), "4\n");
    let b = hm().spawn();
    assert!(
        b.log
            .wait_for("rollback (reported before the restart) ended: Ok", WAIT)
            .await
    );
    let statuses = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "rollback")
        .count();
    assert_eq!(statuses, 1, "reported once");
    assert_no_violations(&dash);
}

/// A fake `systemctl` (and `shutdown`) recording its arguments; `mode` is
/// `ok` (exits 0), `fail` (an error, exit 1) or `reboot` (exits 0 after
/// giving the host a new boot id, as a reboot would).
fn fake_reboot(fakes: &Fakes, boot_id: &Path, mode: &str) {
    let d = fakes.dir.display();
    let body = match mode {
        "fail" => "echo 'Failed to reboot: Access denied' >&2\nexit 1".to_string(),
        "reboot" => format!("echo new-boot > {}", boot_id.display()),
        _ => "exit 0".to_string(),
    };
    for tool in ["systemctl", "shutdown"] {
        write_exec(
            &fakes.bin.join(tool),
            &format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> {d}/reboot.argv\n{body}\n"),
        );
    }
}

fn reboot_agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes, boot_id: &Path) -> AgentBuilder {
    agent(dash, fx, fakes).env("NIXFLEET_BOOT_ID_FILE", boot_id.to_str().unwrap())
}

#[tokio::test]
async fn reboot_failures_are_reported_with_their_output() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let boot_id = fx.tmp.path().join("boot_id");
    std::fs::write(&boot_id, "first-boot\n").unwrap();
    fake_reboot(&fakes, &boot_id, "fail");
    let _a = reboot_agent(&dash, &fx, &fakes, &boot_id).spawn();
    wait_register(&dash, HOST, 0).await;
    let after = send(&dash, "reboot").await;
    let st = status_of(&dash, "reboot", after).await;
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    assert!(
        s(&st.payload, "message").contains("Access denied"),
        "{}",
        st.payload
    );
    assert!(
        outputs(&dash, after)
            .iter()
            .any(|l| l.contains("reboot requested"))
    );
    assert_eq!(fakes.read("reboot.argv"), "reboot\n");

    // a reboot command that succeeds but leaves the host up: an error, once
    fake_reboot(&fakes, &boot_id, "ok");
    let _ = std::fs::remove_file(fakes.file("reboot.argv"));
    drop(_a);
    let seen = dash.last_seq();
    let _b = reboot_agent(&dash, &fx, &fakes, &boot_id)
        .env("NIXFLEET_REBOOT_WAIT_MS", "3000")
        .spawn();
    wait_register(&dash, HOST, seen).await;
    let after = send(&dash, "reboot").await;
    // a second request while the first is under way runs nothing
    file_appears(&fakes.file("reboot.argv")).await;
    let again = send(&dash, "reboot").await;
    let refused = status_of(&dash, "reboot", again).await;
    assert!(
        s(&refused.payload, "message").contains("already under way"),
        "{}",
        refused.payload
    );
    let st = dash
        .wait_until(WAIT, |d| {
            d.frames(HOST, Some("status")).into_iter().find(|f| {
                f.seq > after
                    && f.payload["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("still up"))
            })
        })
        .await
        .expect("the still-up status");
    assert_eq!(s(&st.payload, "status"), "error");
    assert_eq!(fakes.read("reboot.argv"), "reboot\n", "the tool ran once");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn macos_reboots_with_shutdown() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let boot_id = fx.tmp.path().join("boot_id");
    std::fs::write(&boot_id, "first-boot\n").unwrap();
    fake_reboot(&fakes, &boot_id, "fail");
    let _a = reboot_agent(&dash, &fx, &fakes, &boot_id)
        .env("NIXFLEET_HOST_TYPE", "macos")
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let st = status_of(&dash, "reboot", send(&dash, "reboot").await).await;
    assert_eq!(s(&st.payload, "status"), "error");
    assert_eq!(fakes.read("reboot.argv"), "-r\nnow\n");
    assert!(
        s(&st.payload, "message").contains("`shutdown -r now` exited with 1"),
        "{}",
        st.payload
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn reboot_while_a_test_runs_stops_it_then_reports_after_the_boot() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let boot_id = fx.tmp.path().join("boot_id");
    std::fs::write(&boot_id, "first-boot\n").unwrap();
    fake_reboot(&fakes, &boot_id, "reboot");
    let pid_file = fx.tmp.path().join("child.pid");
    test_script(
        &fx.repo,
        "T01-long.sh",
        &format!(
            "sleep 1000 & echo $! > {}\necho started\nwait",
            pid_file.display()
        ),
        0o755,
    );
    let mut a = reboot_agent(&dash, &fx, &fakes, &boot_id).spawn();
    wait_register(&dash, HOST, 0).await;
    let after = send(&dash, "test").await;
    dash.wait_until(WAIT, |d| {
        outputs(d, after)
            .iter()
            .any(|l| l == "started")
            .then_some(())
    })
    .await
    .expect("the test started");
    file_appears(&pid_file).await;
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    send(&dash, "reboot").await;
    let stopped = status_of(&dash, "test", after).await;
    assert_eq!(
        s(&stopped.payload, "status"),
        "stopped",
        "{}",
        stopped.payload
    );
    assert!(
        s(&stopped.payload, "message").contains("reboot"),
        "{}",
        stopped.payload
    );
    assert!(pid_gone(child).await, "the test's tree is killed first");
    file_appears(&fakes.file("reboot.argv")).await;
    assert_eq!(fakes.read("reboot.argv"), "reboot\n");
    // the host goes down: systemd stops the agent
    a.signal(libc::SIGTERM);
    a.wait_exit(WAIT).await;
    assert!(
        !dash
            .frames(HOST, Some("status"))
            .iter()
            .any(|f| f.payload["command"] == "reboot"),
        "no status before the boot"
    );
    // after the boot the agent reports the reboot once
    let seen = dash.last_seq();
    let _b = reboot_agent(&dash, &fx, &fakes, &boot_id).spawn();
    let st = status_of(&dash, "reboot", seen).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert!(
        s(&st.payload, "message").starts_with("Rebooted"),
        "{}",
        st.payload
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn kill_stops_the_whole_tree_and_idle_says_so() {
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
        0o755,
    );
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    // the UI's path: dispatch, then Kill (the hub sends the command `kill`)
    let d = dash.dispatch(HOST, "test", false);
    file_appears(&pids).await;
    let grandchild: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    dash.kill(HOST).expect("kill");
    let st = status_of(&dash, "test", 0).await;
    assert_eq!(s(&st.payload, "status"), "stopped", "{}", st.payload);
    assert!(
        pid_gone(grandchild).await,
        "grandchild {grandchild} survived"
    );
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(
        op.status, "ERROR",
        "the hub ends a killed op as an error: {op:?}"
    );

    let after = send(&dash, "kill").await;
    let st = status_of(&dash, "kill", after).await;
    assert_eq!(s(&st.payload, "status"), "error");
    assert_eq!(s(&st.payload, "message"), "no command running");
    assert_no_violations(&dash);
}

/// A copy of the agent binary under `dir`.
fn installed_copy(dir: &Path) -> PathBuf {
    let path = dir.join("nixfleet-agent");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(agent_binary(), &path).unwrap();
    path
}

#[tokio::test]
async fn check_version_equal_mismatched_and_missing() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    // the unit of the current system starts a copy of this very binary
    let system = fx.tmp.path().join("system");
    let copy = installed_copy(&fx.tmp.path().join("store-a/bin"));
    let unit_dir = system.join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    std::fs::write(
        unit_dir.join("nixfleet-agent.service"),
        format!("[Service]\nExecStart={}\n", copy.display()),
    )
    .unwrap();
    let _a = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", system.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let st = status_of(&dash, "check-version", send(&dash, "check-version").await).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    let m = s(&st.payload, "message");
    assert!(
        m.starts_with("running=0.1.0 (sha256 ") && m.contains(" installed=0.1.0 (sha256 "),
        "{m}"
    );

    // another binary installed: a warning naming both
    write_exec(&copy, "#!/bin/sh\necho 'nixfleet-agent 0.2.0'\n");
    let st = status_of(&dash, "check-version", send(&dash, "check-version").await).await;
    assert_eq!(s(&st.payload, "status"), "warning", "{}", st.payload);
    assert!(
        s(&st.payload, "message").starts_with("mismatch: running=0.1.0"),
        "{}",
        st.payload
    );
    assert!(
        s(&st.payload, "message").contains("installed=0.2.0"),
        "{}",
        st.payload
    );
    assert_eq!(st.payload["exit_code"], 0);

    // no unit: the first nixfleet-agent on the children's PATH
    std::fs::remove_file(unit_dir.join("nixfleet-agent.service")).unwrap();
    let on_path = installed_copy(&fakes.bin);
    let st = status_of(&dash, "check-version", send(&dash, "check-version").await).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    std::fs::remove_file(on_path).unwrap();

    // nothing installed anywhere
    let st = status_of(&dash, "check-version", send(&dash, "check-version").await).await;
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    assert!(
        s(&st.payload, "message").contains("no installed nixfleet-agent"),
        "{}",
        st.payload
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn refresh_lock_and_refresh_git() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let after = send(&dash, "refresh-lock").await;
    let st = status_of(&dash, "refresh-lock", after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "message"), "Lock: ok (Updated today)");
    assert!(outputs(&dash, after).iter().any(|l| l.contains("Lock: ok")));
    let hb = dash
        .wait_frame(HOST, "heartbeat", st.seq, WAIT)
        .await
        .expect("heartbeat");
    assert_eq!(hb.payload["update_status"]["lock"]["status"], "ok");

    let st = status_of(&dash, "refresh-git", send(&dash, "refresh-git").await).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    assert_eq!(
        s(&st.payload, "message"),
        "git status is computed by the dashboard"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn refresh_system_compares_the_evaluation_with_the_running_system() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let running = fx.tmp.path().join("store/aaa-nixos-system");
    std::fs::create_dir_all(&running).unwrap();
    let current = fx.tmp.path().join("current-system");
    std::os::unix::fs::symlink(&running, &current).unwrap();
    // a fake `nix eval` printing the path in `eval.out`, or failing
    let d = fakes.dir.display();
    write_exec(
        &fakes.bin.join("nix"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'nix (Nix) 2.34.0'; exit 0; }}\n\
             printf '%s\\n' \"$@\" > {d}/nix.argv\n\
             if [ -e {d}/eval.fail ]; then echo \"error: attribute 'ophost' missing\" >&2; exit 1; fi\n\
             printf '%s' \"$(cat {d}/eval.out)\"\n"
        ),
    );
    std::fs::write(fakes.file("eval.out"), running.to_str().unwrap()).unwrap();
    let _a = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;

    let st = status_of(&dash, "refresh-system", send(&dash, "refresh-system").await).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(system_after(&dash, st.seq).await["status"], "ok");
    let argv = fakes.read("nix.argv");
    let installable = format!(
        "{}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel.outPath",
        fx.repo.display()
    );
    assert_eq!(
        argv,
        format!("--extra-experimental-features\nnix-command flakes\neval\n--raw\n{installable}\n")
    );

    std::fs::write(fakes.file("eval.out"), "/nix/store/bbb-nixos-system").unwrap();
    let st = status_of(&dash, "refresh-system", send(&dash, "refresh-system").await).await;
    assert_eq!(s(&st.payload, "status"), "ok");
    let system = system_after(&dash, st.seq).await;
    assert_eq!(system["status"], "outdated", "{system}");
    assert!(
        system["message"]
            .as_str()
            .unwrap()
            .contains("bbb-nixos-system"),
        "{system}"
    );

    fakes.touch("eval.fail");
    let st = status_of(&dash, "refresh-system", send(&dash, "refresh-system").await).await;
    assert_eq!(
        s(&st.payload, "status"),
        "ok",
        "the check ran; its result is the compartment"
    );
    let system = system_after(&dash, st.seq).await;
    assert_eq!(system["status"], "error", "{system}");
    assert!(
        system["message"]
            .as_str()
            .unwrap()
            .contains("attribute 'ophost' missing"),
        "{system}"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn tests_are_every_executable_sh_and_the_others_are_listed_as_skipped() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(&fx.repo, "network.sh", "echo net ok", 0o755);
    test_script(&fx.repo, "T01-disk.sh", "echo disk ok", 0o755);
    test_script(&fx.repo, "draft.sh", "exit 1", 0o644);
    test_script(&fx.repo, "notes.txt", "exit 1", 0o755);
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let after = send(&dash, "test").await;
    let st = status_of(&dash, "test", after).await;
    assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(s(&st.payload, "message"), "2/2 passed");
    let out = outputs(&dash, after);
    let ran: Vec<&String> = out.iter().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(ran, ["==> T01-disk.sh", "==> network.sh"]);
    assert!(
        out.iter()
            .any(|l| l == "[nixfleet-agent] skipped (not executable): draft.sh"),
        "{out:?}"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn names_outside_the_set_are_refused_and_run_nothing() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    // (`bump-flake` is refused with its reason: commands.rs)
    for name in ["force-update", "Force-rebuild", "Rollback", "reboot now"] {
        let st = status_of(&dash, name, send(&dash, name).await).await;
        assert_eq!(s(&st.payload, "status"), "error", "{name}");
        assert_eq!(s(&st.payload, "message"), "unknown command", "{name}");
    }
    assert!(!fakes.file("rebuild.argv").exists());
    assert_no_violations(&dash);
}

/// The status of a reboot an earlier process asked for is kept before the
/// reboot record that stands for it goes: at no moment is the result only in
/// memory (a kill or a power loss then loses nothing). The dashboard is down,
/// so the status can only be kept.
#[tokio::test]
async fn the_reboot_status_is_kept_before_its_record_goes() {
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let boot_id = fx.tmp.path().join("boot_id");
    std::fs::write(&boot_id, "second-boot\n").unwrap();
    std::fs::create_dir_all(&fx.state).unwrap();
    let record = fx.state.join("reboot.json");
    std::fs::write(
        &record,
        r#"{"boot":"first-boot","requested_at":"2026-12-01T21:27:05Z"}"#,
    )
    .unwrap();
    let undelivered = fx.state.join("undelivered.json");
    let _a = AgentBuilder::new("ws://127.0.0.1:9/ws", HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_BOOT_ID_FILE", boot_id.to_str().unwrap())
        .spawn();
    // the moment the record is gone, the status must be on disk already
    let deadline = std::time::Instant::now() + WAIT;
    while record.exists() {
        assert!(std::time::Instant::now() < deadline, "the record stays");
        std::thread::yield_now();
    }
    let kept = std::fs::read_to_string(&undelivered).unwrap_or_default();
    assert!(
        kept.contains("Rebooted: the host is back"),
        "the record went before its status was kept: {kept:?}"
    );
}
