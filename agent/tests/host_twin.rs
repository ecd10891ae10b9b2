//! The host twin: the NixOS module's own units (`checks/twin/`, as the module
//! renders them for a reference host) booted under a real systemd in
//! `systemd-nspawn`, with the real agent binary as the unit's `ExecStart`,
//! against the mock dashboard on loopback (the container shares the host's
//! network). What the unit does to the agent's processes (its sandbox:
//! `ProtectSystem=full` makes `/etc` and `/boot` read-only; `KillMode=process`;
//! `Restart=always` with exit 101; `LoadCredential`; the token's path unit) is
//! real here, not assumed.
//!
//! Every system is activated by **NixOS's real `switch-to-configuration-ng`**
//! (`../shared/tools/switch-to-configuration-ng`, built from nixpkgs' 26.05
//! source, bound into the container's store): each system is a toplevel laid
//! out as the program wants one (its wrapper's environment, `activate`,
//! `install-bootloader`, `init-interface-version`, `etc/systemd/system` with
//! the units), and the container looks like NixOS to it (`/etc/NIXOS`, the
//! system bus with systemd and logind). So the rules of a real activation —
//! its lock, its pre-switch checks, which units it stops, restarts and starts,
//! its exit codes — are the real ones here. Where that program is missing, a
//! fake with the same exit codes stands in, and the test says so. The agent
//! runs it the way it runs it on NixOS: through `systemd-run` from the unit.
//!
//! **Nix is real**: the container runs Debian trixie's `/usr` (its systemd,
//! D-Bus and Nix 2.26, from the twin's root that `checks/realnix/make-root.sh`
//! makes once) with a store of its own. Every system is built by that Nix
//! from a flake in the configuration repository (`twin/system.rs`: real
//! derivations, the test commits which system it is), through
//! `nix-daemon` as NixOS runs it (Nix's own socket and service units;
//! `NIX_REMOTE=daemon` in the agent's unit); `nix-env` moves the real
//! system profile, and `nix-collect-garbage -d` collects the real store. The
//! store paths the golden units name (`/nix/store/<32 zeros>-…`: the tools
//! of the unit's `PATH`, the agent, the activation program) are made valid
//! and rooted, as a system's closure would be.
//!
//! **Home Manager's user service** runs under a real `systemd --user`: the
//! last test boots the twin with a lingering user, `alice`, whose Home
//! Manager generations (`twin/home.rs`) carry the Home Manager module's own
//! user units (`checks/twin/home-manager/`).
//!
//! `/boot` is a filesystem of its own (a 64 MiB tmpfs bound into the
//! container), as on a host with an EFI system partition: the switch's
//! `/boot` guard runs.
//!
//! Needs root, `systemd-nspawn` (Debian's `systemd-container`) and the
//! twin's root (made on first use with `debootstrap`). Without them the tests
//! say so and pass, unless `NIXFLEET_HOST_TWIN=require` (what `.ci/run`
//! sets), where they fail.

#![cfg(target_os = "linux")]

mod common;
mod twin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use twin::*;

/// Registered with the token from `LoadCredential` (the unit's environment
/// has none), heartbeats, a test run, `restart` by the dashboard, a token
/// rotated by the secret manager (the path unit restarts the agent, which
/// uses the new token), the status line systemd shows, a stopped agent
/// restarted by systemd's watchdog, and `systemctl stop` (SIGTERM): close
/// 1000.
#[tokio::test]
async fn twin_unit_registers_runs_restarts_rotates_the_token_and_closes_1000() {
    let Some(base) = twin_root() else {
        return;
    };
    let dash = dashboard().await;
    let fx = Fixture::new();
    host_test(&fx.repo, HOST, "T01-hello.sh", "echo hello from the twin");
    git(&fx.repo, &["add", "-A"]);
    git(&fx.repo, &["commit", "-qm", "tests"]);
    let twin = Twin::boot(base, &dash, &fx, "nixfleet-twin-1", 120).await;
    let (reg, seq) = match dash.wait_frame(HOST, "register", 0, SLOW).await {
        Some(f) => (f.payload, f.seq),
        None => panic!("no register; journal:\n{}", twin.journal()),
    };
    assert_eq!(reg["repo_dir"], "/srv/nixcfg");
    heartbeat_where(&dash, HOST, seq, "a heartbeat", |_| true).await;

    // a test run
    let sent = dash.last_seq();
    dash.send_command(HOST, "test").await.unwrap();
    let st = status_for(&dash, HOST, "test", sent).await;
    assert_eq!(
        st.payload["status"],
        "ok",
        "{}\n{}",
        st.payload,
        twin.journal()
    );
    assert_eq!(st.payload["message"], "1/1 passed");

    // restart: systemd starts the agent again (exit 101, RestartSec=5s)
    let sent = dash.last_seq();
    dash.send_command(HOST, "restart").await.unwrap();
    let st = status_for(&dash, HOST, "restart", sent).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    let again = dash.wait_frame(HOST, "register", st.seq, SLOW).await;
    assert!(
        again.is_some(),
        "not started again; journal:\n{}",
        twin.journal()
    );

    // the token rotated: only the new one is accepted from now on
    let seq = dash.last_seq();
    dash.add_token("rotated-token");
    dash.remove_token(&twin_token("nixfleet-twin-1"));
    write(&twin.secrets.join("nixfleet-token"), "rotated-token");
    let again = dash.wait_frame(HOST, "register", seq, SLOW).await;
    assert!(
        again.is_some(),
        "no register with the new token; journal:\n{}",
        twin.journal()
    );

    // stop: a long test and what it started are ended, as a tree
    host_test(
        &fx.repo,
        HOST,
        "T02-long.sh",
        "sleep 600 & echo $! > /twin/sleep.pid.tmp; mv /twin/sleep.pid.tmp /twin/sleep.pid; wait",
    );
    let sent = dash.last_seq();
    dash.send_command(HOST, "test").await.unwrap();
    file_appears(&twin.exchange.join("sleep.pid")).await;
    let sleeper = std::fs::read_to_string(twin.exchange.join("sleep.pid")).unwrap();
    let sleeper = sleeper.trim();
    let alive = |pid: &str| twin.exec(&["kill", "-0", pid]).status.success();
    assert!(alive(sleeper), "the test's child runs");
    dash.send_command(HOST, "stop").await.unwrap();
    let st = status_for(&dash, HOST, "test", sent).await;
    assert_eq!(st.payload["status"], "stopped", "{}", st.payload);
    // (a killed child is reaped by the container's systemd, its new parent)
    let deadline = std::time::Instant::now() + WAIT;
    while alive(sleeper) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(sleeper), "the test's child was stopped with it");

    // the status line systemd shows (`systemctl status`), from the agent
    let dashboard = dash.ws_url();
    let dashboard = dashboard
        .trim_start_matches("ws://")
        .trim_end_matches("/ws");
    // (sent on the agent's next tick after it registered)
    let want = format!("connected to {dashboard}; idle");
    let status_text = || {
        let out = twin.exec(&["systemctl", "show", "-P", "StatusText", "nixfleet-agent"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while status_text() != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_text(), want);

    // a hung agent (stopped: no sign of life) is killed by systemd's
    // watchdog (WatchdogSec, 5 s here) and started again
    let seq = dash.last_seq();
    let out = twin.exec(&["systemctl", "kill", "-s", "SIGSTOP", "nixfleet-agent"]);
    assert!(out.status.success(), "{out:?}");
    let again = dash.wait_frame(HOST, "register", seq, SLOW).await;
    assert!(
        again.is_some() && twin.journal().contains("Watchdog timeout"),
        "not restarted by the watchdog; journal:\n{}",
        twin.journal()
    );

    // systemctl stop: SIGTERM to the agent, a clean close
    let seq = dash.last_seq();
    let out = twin.exec(&["systemctl", "stop", "nixfleet-agent.service"]);
    assert!(out.status.success(), "{out:?}");
    let closed = dash.wait_event("closed", Some(HOST), seq, WAIT).await;
    assert_eq!(closed.and_then(|e| e.code), Some(1000));
    assert_no_violations(&dash);
}

/// `switch` under the real unit: the agent exits 101, systemd starts it
/// again, the new generation confirms, one status `ok`. Then a switch whose
/// new generation fails its health check: the old system is activated
/// again (its `/boot` and `/etc` writes done, in a transient unit outside the
/// agent's read-only sandbox) and one status `error` names the rollback.
#[tokio::test]
async fn twin_switch_is_confirmed_and_a_failed_health_check_is_rolled_back() {
    let Some(base) = twin_root() else {
        return;
    };
    let dash = dashboard().await;
    let fx = Fixture::new();
    let twin = Twin::boot(base, &dash, &fx, "nixfleet-twin-2", 40).await;
    if dash.wait_frame(HOST, "register", 0, SLOW).await.is_none() {
        panic!("no register; journal:\n{}", twin.journal());
    }

    // 0. a system whose kernel does not fit in /boot (a filesystem of its
    // own): refused after the build, nothing set or activated
    twin.next(System::named("big").kernel(128 << 20));
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let st = status_for(&dash, HOST, "switch", sent).await;
    let message = st.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Switch refused: /boot has ")
            && message.contains("the new kernel and initrd need 128.0 MiB"),
        "{message}\n{}",
        twin.journal()
    );
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-a");
    assert_eq!(twin.read("/boot/loader/default"), "nixos-system-twin-a");
    assert_eq!(twin.profile_system(), PathBuf::from(&twin.booted));

    // 1. a switch to b: built, previewed (its dry-activate run through
    // systemd-run, outside the unit's sandbox), activated, confirmed
    let b = twin.next(System::named("b").kernel(4096));
    let sent = dash.last_seq();
    let d = dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = status_for(&dash, HOST, "switch", sent).await;
    assert_eq!(
        st.payload["message"],
        "Switch succeeded; the new generation passed its health checks",
        "{}\n{}",
        st.payload,
        twin.journal()
    );
    // the hub's op: awaiting the reconnect, then SUCCESS when the new
    // generation's agent registers
    let op = dash.wait_op(d.command_id.as_deref().unwrap(), SLOW).await;
    assert_eq!(
        op.as_ref().map(|o| o.status),
        Some("SUCCESS"),
        "{op:?}\n{}",
        twin.journal()
    );
    let lines: Vec<String> = dash
        .frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > sent && f.seq < st.seq)
        .map(|f| f.payload["line"].as_str().unwrap_or_default().to_string())
        .collect();
    // the Nix it ran is the container's, reached through its daemon
    let nix = format!("[nixfleet-agent] {} (Nix ", twin.nix_version());
    assert!(
        lines.iter().any(|l| l.starts_with(&nix)),
        "no {nix:?} in {lines:?}"
    );
    let daemon = twin.exec(&["systemctl", "is-active", "nix-daemon.service"]);
    assert_eq!(String::from_utf8_lossy(&daemon.stdout).trim(), "active");
    for line in [
        "[nixfleet-agent] package changes:",
        "[nixfleet-agent]   would activate the configuration...",
        "[nixfleet-agent] reboot needed: kernel, initrd changed (after this switch)",
    ] {
        assert!(lines.iter().any(|l| l == line), "no {line:?} in {lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[nixfleet-agent] /boot: ") && l.ends_with("need 0.0 MiB")),
        "{lines:?}"
    );
    if twin.real_activation.is_some() {
        // NixOS's own program did it: it restarts the targets of the system
        assert!(
            lines
                .iter()
                .any(|l| l == "restarting sysinit-reactivation.target"),
            "{lines:?}"
        );
    }
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-b");
    assert_eq!(twin.read("/boot/loader/default"), "nixos-system-twin-b");

    // 2. a switch to c whose agent fails its health check, once the test
    // has collected the garbage with every old generation deleted
    // (`nix-collect-garbage -d`) while c runs on probation: b, the system
    // the rollback goes back to, is kept by the agent's root alone (it is
    // neither booted, running, nor a generation any more)
    host_check(
        &fx.repo,
        "fail.sh",
        "while [ ! -e /twin/collected ]; do sleep 0.1; done; echo 'the service does not answer'; exit 1",
    );
    twin.next(System::named("c"));
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let active = dash
        .wait_until(SLOW, |_| {
            (twin.read("/etc/nixos-generation") == "nixos-system-twin-c").then_some(())
        })
        .await;
    assert!(active.is_some(), "c is not activated\n{}", twin.journal());
    let gc = twin.exec(&["nix-collect-garbage", "-d"]);
    assert!(gc.status.success(), "{gc:?}");
    assert_eq!(
        generations(&twin.path("/nix/var/nix/profiles"), "system"),
        vec![3],
        "-d deleted every old generation"
    );
    assert!(
        twin.path(&b).join("bin/switch-to-configuration").exists(),
        "b was collected: {}",
        String::from_utf8_lossy(&gc.stdout)
    );
    write(&twin.exchange.join("collected"), "");
    let st = status_for(&dash, HOST, "switch", sent).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    let message = st.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "rolled back to {}: health check fail.sh failed",
            base_name(&b)
        )),
        "{message}\n{}",
        twin.journal()
    );
    // the old generation is active again and is the boot default
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-b");
    assert_eq!(twin.read("/boot/loader/default"), "nixos-system-twin-b");
    assert_eq!(twin.profile_system(), PathBuf::from(&b));
    let statuses = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.seq > sent && f.payload["command"] == "switch")
        .count();
    assert_eq!(statuses, 1, "one status");

    // 3. an activation that hangs is stopped at its deadline (20 s here):
    // its transient unit with `systemctl stop`, which ends
    // switch-to-configuration and what it started; nothing was switched
    host_check(&fx.repo, "fail.sh", "exit 0");
    twin.next(System::named("hang").hangs());
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let Some(st) = slow_status(&dash, HOST, "switch", sent).await else {
        panic!("no status for the hung switch:\n{}", twin.journal());
    };
    assert_eq!(st.payload["exit_code"], 124, "{}", st.payload);
    let message = st.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the activation did not end within 20 s: stopping its unit ")
            && message.ends_with(
                "the activation was stopped after 20 s; what the host runs decides the outcome"
            ),
        "{message}\n{}",
        twin.journal()
    );
    let hung = std::fs::read_to_string(twin.exchange.join("hang.pid")).unwrap_or_default();
    let hung = hung.trim();
    assert!(!hung.is_empty(), "the activation ran");
    let alive = twin.exec(&["kill", "-0", hung]).status.success();
    assert!(
        !alive,
        "the hung activation ({hung}) was stopped with its unit"
    );
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-b");
    let current = twin.exec(&["readlink", "/run/current-system"]);
    assert_eq!(String::from_utf8_lossy(&current.stdout).trim(), b);
    assert_no_violations(&dash);
}

/// 1. The new generation's agent never starts (its unit's `ExecStart`
///    fails): nothing can confirm the switch, so the supervisor, outside the
///    agent, rolls back at the deadline; the old generation's agent, started
///    by systemd again, reports the one status, then restarts onto the
///    rolled-back binary (a command sent meanwhile is refused, not stopped).
/// 2. Changed switch inhibitors: installed for the next boot only.
/// 3. A new unit that fails to start: switch-to-configuration-ng activates,
///    then exits 4; watched all the same, confirmed, one `error` status.
/// 4. `rollback`: the profile's previous generation, activated the same way.
#[tokio::test]
async fn twin_a_dead_new_agent_is_rolled_back_inhibitors_wait_for_a_boot_a_failed_unit_stays() {
    let Some(base) = twin_root() else {
        return;
    };
    let dash = dashboard().await;
    let fx = Fixture::new();
    let twin = Twin::boot(base, &dash, &fx, "nixfleet-twin-3", 12).await;
    let Some(reg) = dash.wait_frame(HOST, "register", 0, SLOW).await else {
        panic!("no register; journal:\n{}", twin.journal());
    };
    twin.next(
        System::named("broken").agent_drop_in("[Service]\nExecStart=\nExecStart=/bin/false\n"),
    );
    dash.send_command(HOST, "switch").await.unwrap();
    // the activation restarts the agent's changed unit, which fails (exit
    // 4): the agent that ran the switch is gone before it could check
    // anything, so the supervisor rolls back at the deadline and the old
    // generation's agent, started again, reports the one status
    let st = status_for(&dash, HOST, "switch", reg.seq).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    let message = st.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "rolled back to {}: the new generation's agent did not confirm within 12 s",
            base_name(&twin.booted)
        )),
        "{message}\n{}",
        twin.journal()
    );
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-a");
    assert_eq!(twin.read("/boot/loader/default"), "nixos-system-twin-a");
    assert!(
        !twin
            .path("/etc/systemd/system/nixfleet-agent.service.d/generation.conf")
            .exists(),
        "the broken generation's unit settings are gone"
    );
    let statuses = dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "switch")
        .count();
    assert_eq!(statuses, 1, "one status");

    // the agent that reported the rollback restarts onto the rolled-back
    // binary; a command sent the moment its status arrived is refused, never
    // started and then stopped by the restart
    dash.send_command(HOST, "pull").await.unwrap();
    let Some(back) = dash.wait_frame(HOST, "register", st.seq, SLOW).await else {
        panic!(
            "no register after the rollback; journal:\n{}",
            twin.journal()
        );
    };

    // what an earlier process could not deliver comes right after the
    // register: by the second heartbeat it is here
    let first = dash.wait_frame(HOST, "heartbeat", back.seq, SLOW).await;
    let first = first.expect("a heartbeat").seq;
    assert!(
        dash.wait_frame(HOST, "heartbeat", first, SLOW)
            .await
            .is_some()
    );
    for pull in dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "pull")
    {
        assert_eq!(
            pull.payload["message"],
            "the agent is restarting; send the command again once it is back",
            "{}",
            pull.payload
        );
    }

    // a system whose critical components changed (switch inhibitors) is
    // installed for the next boot: the boot loader's default and the
    // profile name it, the running system stays, heartbeats want a reboot
    let inhibited = twin.next(System::named("broker").inhibitors(
        r#"{"dbus-implementation":"broker","systemd":"/nix/store/00000000000000000000000000000000-systemd-252"}"#,
    ));
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let st = status_for(&dash, HOST, "switch", sent).await;
    assert_eq!(
        st.payload["message"],
        "Switch installed for the next boot: dbus-implementation : dbus -> broker; reboot to activate it",
        "{}\n{}",
        st.payload,
        twin.journal()
    );
    assert_eq!(
        twin.read("/boot/loader/default"),
        "nixos-system-twin-broker"
    );
    assert_eq!(twin.read("/etc/nixos-generation"), "nixos-system-twin-a");
    assert_eq!(twin.profile_system(), PathBuf::from(&inhibited));
    let Some(hb) = dash
        .wait_until(SLOW, |d| {
            d.frames(HOST, Some("heartbeat"))
                .into_iter()
                .find(|f| f.seq > st.seq && f.payload["needs_reboot"] == true)
        })
        .await
    else {
        panic!(
            "no heartbeat with needs_reboot; journal:\n{}",
            twin.journal()
        );
    };
    assert_eq!(
        hb.payload["update_status"]["system"]["message"],
        "Switch installed for the next boot — reboot needed: a new system is installed for the next boot"
    );

    // a system with a unit that fails to start: switch-to-configuration
    // activates it, then exits 4; the switch is watched all the same, the
    // new generation passes its checks and stays, and the one status is the
    // tool's failure
    if twin.real_activation.is_some() {
        let flaky = twin.next(System::named("flaky").unit(
            "flaky.service",
            "[Unit]\nDescription=Fails to start\n[Service]\nType=oneshot\nExecStart=/bin/false\n",
        ));
        let sent = dash.last_seq();
        dash.send_command(HOST, "switch").await.unwrap();
        let st = status_for(&dash, HOST, "switch", sent).await;
        let message = st.payload["message"].as_str().unwrap_or_default();
        assert_eq!(st.payload["exit_code"], 4, "{}", st.payload);
        assert!(
            message.starts_with(&format!(
                "Switch failed: `nixfleet-agent --activate nixos switch /nix/var/nix/profiles/system {flaky}` exited 4 after activating the new generation"
            )) && message.ends_with("; the new generation passed its checks and stays"),
            "{message}\n{}",
            twin.journal()
        );
        assert_eq!(
            twin.read("/etc/nixos-generation"),
            "nixos-system-twin-flaky"
        );
        let current = twin.exec(&["readlink", "/run/current-system"]);
        assert_eq!(String::from_utf8_lossy(&current.stdout).trim(), flaky);
        // reported before the agent restarted onto the new generation
        if dash
            .wait_frame(HOST, "register", st.seq, SLOW)
            .await
            .is_none()
        {
            panic!(
                "no register after the restart; journal:\n{}",
                twin.journal()
            );
        }

        // `rollback`: the profile's previous generation (the one installed
        // for the boot above), activated the same way, confirmed once (the
        // failed unit is reset first, or switch-to-configuration reports it
        // again with exit 4)
        twin.exec(&["systemctl", "reset-failed", "flaky.service"]);
        let sent = dash.last_seq();
        dash.send_command(HOST, "rollback").await.unwrap();
        let st = status_for(&dash, HOST, "rollback", sent).await;
        assert_eq!(
            st.payload["message"],
            "Rollback succeeded; the new generation passed its health checks",
            "{}\n{}",
            st.payload,
            twin.journal()
        );
        assert_eq!(
            twin.read("/etc/nixos-generation"),
            "nixos-system-twin-broker"
        );
        assert_eq!(twin.profile_system(), PathBuf::from(&inhibited));
    }
    assert_no_violations(&dash);
}

/// The numbers of the generations of the profile `name` in `dir`
/// (`<name>-<n>-link`).
fn generations(dir: &Path, name: &str) -> Vec<u32> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_prefix(name)?
                .strip_prefix('-')?
                .strip_suffix("-link")?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort();
    numbers
}

/// A store path's name (`<hash>-<name>`).
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An executable health check `hosts/twin/health/<name>`, committed.
fn host_check(repo: &Path, name: &str, body: &str) {
    write_exec(
        &repo.join(format!("hosts/{HOST}/health/{name}")),
        &format!("#!/bin/sh\n{body}\n"),
    );
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", name]);
}

/// Home Manager on Linux for real: the module's user units (rendered from
/// it, `checks/twin/home-manager/`) run under the real `systemd --user` of
/// a lingering user, `alice`, whose agent switches and rolls back her
/// Home Manager generations through the container's real Nix (its daemon:
/// she cannot write the store), with her profile where Home Manager puts it
/// (`~/.local/state/nix/profiles`). Each operation gets exactly one status;
/// the agent restarts itself onto the new generation (its unit is
/// `keep-old`: the activation leaves it running).
/// 1. `switch` to b: ok, SUCCESS after her new agent registers.
/// 2. `rollback`: a again, ok.
/// 3. `switch` to a generation whose agent cannot start: the status `ok`
///    was sent before the restart; the watchdog outside the agent rolls
///    back at the deadline, her agent of the old generation comes back and
///    reports the rollback on the System row, never a second status.
#[tokio::test]
async fn twin_home_manager_user_service_switches_and_rolls_back_under_systemd_user() {
    let Some(base) = twin_root() else {
        return;
    };
    // the test's deadline (40 s) stands for a real one (at least 100 s)
    // that outlasts the hub's window (90 s): the mock's window shrinks with
    // it as the agent's belief of it does (`Twin::boot`), and stays longer
    // than the user unit's RestartSec=5s
    let deadline = 40;
    let dash = nixfleet_mock_dashboard::MockDashboard::start(nixfleet_mock_dashboard::Options {
        reconnect_timeout: Duration::from_millis(deadline * 1000 / 3),
        ..Default::default()
    })
    .await
    .unwrap();
    let fx = Fixture::new();
    let twin = Twin::boot_with(base, &dash, &fx, "nixfleet-twin-4", deadline, true).await;
    let user = home::HOST;
    if dash.wait_frame(user, "register", 0, SLOW).await.is_none() {
        panic!(
            "no register from alice's agent; journal:\n{}",
            twin.user_journal()
        );
    }
    let repo = twin.path(home::REPO);
    let generation = || twin.read("/home/alice/.hm-generation");
    assert_eq!(generation(), "a");
    // her profile, where Home Manager puts it with Nix 2.14 and later
    let profile = twin.path("/home/alice/.local/state/nix/profiles");
    let generations = || generations(&profile, "home-manager");
    assert_eq!(generations(), vec![1]);

    // 1. switch to b: built by her agent through the daemon, activated,
    // checked, one status before the agent restarts itself
    home::Home::named("b").commit(&repo);
    let sent = dash.last_seq();
    let d = dash.dispatch(user, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = user_status(&dash, &twin, "switch", sent).await;
    assert_eq!(
        st.payload["message"],
        "Switch succeeded; the new generation passed its health checks",
        "{}\n{}",
        st.payload,
        twin.user_journal()
    );
    assert_eq!(generation(), "b");
    assert_eq!(generations(), vec![1, 2]);
    let op = dash.wait_op(d.command_id.as_deref().unwrap(), SLOW).await;
    assert_eq!(
        op.as_ref().map(|o| o.status),
        Some("SUCCESS"),
        "{op:?}\n{}",
        twin.user_journal()
    );
    // the agent that switched is gone: her user manager started the next
    // one (exit 101), which registered
    let Some(again) = dash.wait_frame(user, "register", st.seq, SLOW).await else {
        panic!("no register after the switch:\n{}", twin.user_journal());
    };
    let nix = format!("[nixfleet-agent] {} (Nix ", twin.nix_version());
    assert!(
        dash.frames(user, Some("output"))
            .iter()
            .any(|f| f.payload["line"]
                .as_str()
                .is_some_and(|l| l.starts_with(&nix))),
        "the output names {nix:?}"
    );

    // 2. rollback: generation a's activation again, a new profile
    // generation naming it
    let sent = again.seq;
    let d = dash.dispatch(user, "rollback", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = user_status(&dash, &twin, "rollback", sent).await;
    assert_eq!(
        st.payload["message"],
        "Rollback succeeded; the new generation passed its health checks",
        "{}\n{}",
        st.payload,
        twin.user_journal()
    );
    assert_eq!(generation(), "a");
    assert_eq!(generations(), vec![1, 2, 3]);
    let Some(back) = dash.wait_frame(user, "register", st.seq, SLOW).await else {
        panic!("no register after the rollback:\n{}", twin.user_journal());
    };
    let op = dash.wait_op(d.command_id.as_deref().unwrap(), SLOW).await;
    assert_eq!(op.as_ref().map(|o| o.status), Some("SUCCESS"), "{op:?}");

    // 3. a generation whose agent cannot start: the switching agent's
    // checks pass and its status is sent before it restarts; the next one
    // never comes up, so the supervisor outside it rolls back at the
    // deadline, and the agent of the old generation reports it on the
    // System row
    home::Home::named("broken")
        .agent_drop_in("[Service]\nExecStart=\nExecStart=/bin/false\n")
        .commit(&repo);
    // (forced: the hub calls the System row current after the rollback)
    let sent = back.seq;
    let d = dash.dispatch(user, "switch", true);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = user_status(&dash, &twin, "switch", sent).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    let Some(hb) = dash
        .wait_until(SLOW, |d| {
            d.frames(user, Some("heartbeat")).into_iter().find(|f| {
                f.seq > st.seq
                    && f.payload["update_status"]["system"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("rolled back to "))
            })
        })
        .await
    else {
        let last = dash
            .frames(user, Some("heartbeat"))
            .pop()
            .map(|f| f.payload);
        panic!(
            "no heartbeat naming the rollback; the last: {last:?}\n{}",
            twin.user_journal()
        );
    };
    assert_eq!(
        hb.payload["update_status"]["system"]["status"], "error",
        "{}",
        hb.payload
    );
    assert_eq!(generation(), "a", "generation a is active again");
    let op = dash.wait_op(d.command_id.as_deref().unwrap(), SLOW).await;
    assert_eq!(op.as_ref().map(|o| o.status), Some("TIMEOUT"), "{op:?}");
    let statuses = dash
        .frames(user, Some("status"))
        .into_iter()
        .filter(|f| f.seq > sent && f.payload["command"] == "switch")
        .count();
    assert_eq!(statuses, 1, "one status");

    // what she sees with `nixfleet-agent status` (her state directory by
    // default): the last switch was rolled back, her agent runs
    let status = || {
        let out = twin.exec(&[
            "runuser",
            "-u",
            home::USER,
            "--",
            "env",
            "HOME=/home/alice",
            &store("nixfleet-agent/bin/nixfleet-agent"),
            "status",
            "--json",
        ]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = status();
    while seen["last_switch"]["outcome"] != "rolled-back" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = status();
    }
    assert_eq!(seen["last_switch"]["outcome"], "rolled-back", "{seen}");
    assert_eq!(seen["automatic_rollbacks"], 1, "{seen}");
    assert_eq!(seen["agent_running"], true, "{seen}");
    assert_eq!(
        seen["journal"], "journalctl --user -u nixfleet-agent",
        "{seen}"
    );
    assert_no_violations(&dash);
}

/// The status of `host` for `command` after `after`, within [`SLOW`].
async fn slow_status(
    dash: &nixfleet_mock_dashboard::MockDashboard,
    host: &str,
    command: &str,
    after: u64,
) -> Option<nixfleet_mock_dashboard::Frame> {
    dash.wait_until(SLOW, |d| {
        d.frames(host, Some("status"))
            .into_iter()
            .find(|f| f.seq > after && f.payload["command"] == command)
    })
    .await
}

/// The status of alice's agent for `command` after `after`; her journal
/// when none comes.
async fn user_status(
    dash: &nixfleet_mock_dashboard::MockDashboard,
    twin: &Twin,
    command: &str,
    after: u64,
) -> nixfleet_mock_dashboard::Frame {
    let found = slow_status(dash, home::HOST, command, after).await;
    found.unwrap_or_else(|| panic!("no status for {command}:\n{}", twin.user_journal()))
}
