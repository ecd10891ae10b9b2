//! End-to-end against REAL Nix, on every version the tests have a root for
//! (`common/realnix.rs`: Debian bookworm's Nix 2.8, trixie's 2.26, sid's
//! 2.34). The real agent binary runs inside the root against the mock
//! dashboard on loopback; the configuration is a flake the test makes, with
//! no inputs, whose systems are real derivations (`builtins.derivation`,
//! `/bin/sh` as builder, an explicit `PATH`, no nixpkgs): a package
//! `hello-<version>` and a system holding it, with an activation program
//! that does what NixOS's `switch-to-configuration` does to the host where
//! the agent looks (it points the running-system link at its system, prints
//! its `dry-activate` lines, exits with its code), and for Home Manager a
//! generation whose `activate` sets its profile with the real `nix-env`, in
//! the directory Home Manager's own activation picks.
//!
//! Everything else is the real tool: `nix build --dry-run`, `nix build
//! --json --out-link`, `nix store diff-closures`, `nix path-info
//! --closure-size`, `nix-env --set` / `--rollback` / `--list-generations`,
//! the store, the profiles, the GC roots. The tests assert on what the real
//! store and profiles hold afterwards.
//!
//! docs/testing.md lists what each test covers.

mod common;
mod realhost;

use std::path::PathBuf;

use common::cmdhost::{command, status};
use common::*;
use realhost::*;

/// Runs `$scenario(suite)` on each Nix the tests have a root for.
macro_rules! on_every_nix {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn nix_2_8_bookworm() {
                super::$scenario("bookworm").await
            }
            #[tokio::test]
            async fn nix_2_26_trixie() {
                super::$scenario("trixie").await
            }
            #[tokio::test]
            async fn nix_2_34_sid() {
                super::$scenario("sid").await
            }
        }
    };
}

// ---------------------------------------------------------------- switch

/// `switch`: the Nix found is named; the dry run, the preview (real
/// `diff-closures`, real closure sizes, the activation's dry run), the
/// build into a GC-rooted out-link, the profile's new generation, the
/// activation of exactly the built path, the restart, and the new
/// generation's confirmation.
async fn switch(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let mut agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let wanted = h.evaluated();
    assert!(!h.in_store(&wanted), "not built before the switch");
    let after = command(&h.dash, "switch").await;
    let named = h.line(after, "[nixfleet-agent] nix (Nix) ").await;
    assert!(
        named.contains(&format!("(Nix {}.", h.root.nix)),
        "names the Nix it runs: {named}"
    );
    // the preview, from the real tools
    h.line(after, "[nixfleet-agent] dry run: builds 2 derivations")
        .await;
    h.line(after, "hello: 1.0 → 2.0").await;
    h.line(after, "closure size:").await;
    h.line(after, "would restart the following units: hello.service")
        .await;
    let (st, _next) = h.restarted(&mut agent, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "ok", "{p}");
    assert!(
        text(p, "message").ends_with("succeeded; the new generation passed its health checks"),
        "{p}"
    );
    // what the store and the profile hold now
    let built = h.resolve(&h.fx.state.join("built-system"));
    assert_eq!(built, wanted, "the configuration's system was built");
    assert!(h.in_store(&built));
    assert_eq!(h.resolve(&h.profile), built, "the profile names it");
    assert_eq!(h.generations(&h.profile), (vec![1, 2], 2));
    assert_eq!(h.resolve(&h.current), built, "it runs");
    assert_eq!(
        h.activations(),
        format!("switch {built}\n"),
        "activated once"
    );
    let roots = h.roots_of(&built);
    assert!(
        roots.contains(&format!(
            "{} -> {built}",
            h.fx.state.join("built-system").display()
        )),
        "the out-link is a GC root: {roots}"
    );
    assert_ne!(built, h.booted);
    assert_no_violations(&h.dash);
}
on_every_nix!(switch);

/// `force-rebuild`: the same switch with the cache bypass, which every Nix
/// version takes as an option (`--option narinfo-cache-negative-ttl 0`).
async fn force_rebuild(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let mut agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "force-rebuild").await;
    h.line(
        after,
        "force rebuild: --option narinfo-cache-negative-ttl 0",
    )
    .await;
    let (st, _next) = h.restarted(&mut agent, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "ok", "{p}");
    assert_eq!(text(p, "command"), "force-rebuild");
    let built = h.resolve(&h.fx.state.join("built-system"));
    assert_eq!(built, h.evaluated());
    assert_eq!(h.resolve(&h.current), built);
    assert_eq!(h.generations(&h.profile), (vec![1, 2], 2));
}
on_every_nix!(force_rebuild);

/// The guards on real Nix output: a substitute-only host refuses a switch
/// whose real dry run plans local builds; nothing is built, the profile
/// and the running system stay.
async fn guard_refuses_local_builds(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let _agent = h.agent().env("NIXFLEET_BUILD_ON_HOST", "0").spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("3.0", 0);
    let wanted = h.evaluated();
    let after = command(&h.dash, "switch").await;
    let st = status(&h.dash, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    let message = text(p, "message");
    assert!(message.contains("refused"), "{message}");
    assert!(
        message.contains("hello-3.0"),
        "names what it would build: {message}"
    );
    assert!(!h.in_store(&wanted), "nothing built");
    assert_eq!(h.generations(&h.profile), (vec![1], 1));
    assert_eq!(h.resolve(&h.current), h.booted);
    assert_eq!(h.activations(), "");
}
on_every_nix!(guard_refuses_local_builds);

/// The dashboard's `rollback` after a switch: real `nix-env --rollback`
/// takes the profile back one generation, and that system is activated.
async fn rollback(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let mut agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "switch").await;
    let (st, mut agent2) = h.restarted(&mut agent, after).await;
    assert_eq!(text(&st.payload, "status"), "ok", "{}", st.payload);
    let switched = h.resolve(&h.current);
    // the new generation's agent sent the status: it is registered; the
    // rollback is watched like a switch
    let after = command(&h.dash, "rollback").await;
    let (st, _agent3) = h.restarted(&mut agent2, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "ok", "{p}");
    assert_eq!(text(p, "command"), "rollback");
    assert_eq!(h.resolve(&h.profile), h.booted, "the profile is back");
    assert_eq!(h.generations(&h.profile), (vec![1, 2], 1));
    assert_eq!(h.resolve(&h.current), h.booted, "the booted system runs");
    assert_eq!(
        h.activations(),
        format!("switch {switched}\nswitch {}\n", h.booted)
    );
}
on_every_nix!(rollback);

/// The watchdog's rollback: the new generation's health check fails (the
/// agent that ran the switch checks it before it leaves), so the host goes
/// back to the recorded system through the real `nix-env --set`; the status
/// says so.
async fn watchdog_rolls_back(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    host_test_dir(
        &h.fx.repo,
        "health",
        "broken.sh",
        "echo 'hello is broken' >&2\nexit 1",
    );
    let _agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "switch").await;
    // checked before the agent leaves: rolled back, reported, no restart
    let st = status(&h.dash, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    let message = text(p, "message");
    assert!(
        message.starts_with("rolled back to ")
            && message.ends_with(": health check broken.sh failed (exit 1)"),
        "{message}"
    );
    let built = h.resolve(&h.dir().join("profiles/system-2-link"));
    assert!(
        !h.fx.state.join("built-system").exists(),
        "the rolled-back system is not kept by the build's out-link"
    );
    assert!(!h.roots_of(&built).contains("built-system"));
    assert_eq!(h.resolve(&h.current), h.booted, "the old system runs again");
    assert_eq!(h.resolve(&h.profile), h.booted, "the profile names it");
    let (gens, current) = h.generations(&h.profile);
    assert_eq!(gens.len(), 3, "set, then set back: {gens:?}");
    assert_eq!(current, 3);
    assert_eq!(
        h.activations(),
        format!("switch {built}\nswitch {}\n", h.booted)
    );
}
on_every_nix!(watchdog_rolls_back);

/// Home Manager: the profile is where Home Manager puts it (Nix makes the
/// per-user directory for root on every version; the agent looked only in
/// `~/.local/state/nix/profiles` before), so the switch is watched and
/// confirmed, and `rollback` goes to the generation before.
async fn home_manager(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    // one Home Manager test per root uses root's per-user profile: start clean
    h.sh("rm -f /nix/var/nix/profiles/per-user/root/home-manager*");
    h.home_manager.set(true);
    // the first generation, activated as `home-manager switch` would
    let first = h.sh(&format!(
        "nix {FEATURES} build --out-link {dir}/hm1 '{repo}#homeConfigurations.\"{HM_USER}@{HOST}\".activationPackage' && {dir}/hm1/activate >/dev/null && readlink -f {dir}/hm1",
        dir = h.dir().display(),
        repo = h.fx.repo.display()
    ));
    let profiles = PathBuf::from("/nix/var/nix/profiles/per-user/root");
    let profile = profiles.join("home-manager");
    assert_eq!(h.resolve(&profile), first);
    let mut a = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "switch").await;
    h.line(after, "hello: 1.0 → 2.0").await;
    let (st, mut b) = h.restarted(&mut a, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "ok", "{p}");
    assert!(
        text(p, "message").ends_with("the new generation passed its health checks"),
        "watched: {p}"
    );
    let second = h.resolve(&profile);
    assert_ne!(second, first);
    // the agent's HOME_MANAGER_BACKUP_EXT reached the activation
    assert!(
        h.activations()
            .ends_with(&format!("activate {second}\nbackup-ext bak\n")),
        "{}",
        h.activations()
    );
    assert_eq!(h.resolve(&h.fx.state.join("built-system")), second);
    assert_eq!(h.generations(&profile), (vec![1, 2], 2));
    // rollback: the generation before (the agent that sent the status is
    // registered)
    let after = command(&h.dash, "rollback").await;
    let (st, _c) = h.restarted(&mut b, after).await;
    assert_eq!(text(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(
        h.resolve(&profile),
        first,
        "the first generation is active again"
    );
    // that made generation 3, a copy of 1: a second rollback walks back
    // from 1 (there is nothing before it) instead of toggling to 2
    assert_eq!(h.generations(&profile), (vec![1, 2, 3], 3));
    let after = command(&h.dash, "rollback").await;
    let st = status(&h.dash, after).await;
    assert_eq!(text(&st.payload, "status"), "error", "{}", st.payload);
    assert!(
        text(&st.payload, "message").contains("no Home Manager generation before 3"),
        "{}",
        st.payload
    );
    assert_eq!(h.resolve(&profile), first, "no toggle back to the second");
}
on_every_nix!(home_manager);

/// `--check` on the host names the real Nix it found.
async fn check_names_the_real_nix(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let out = h
        .agent()
        .command()
        .arg("--check")
        .output()
        .await
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("  nix:"))
        .unwrap_or_else(|| panic!("no nix line: {stdout}"));
    assert!(
        line.contains(&format!("nix (Nix) {}.", h.root.nix))
            && line.ends_with("the agent needs 2.8 or later)"),
        "{line}"
    );
}
on_every_nix!(check_names_the_real_nix);

/// A built path that is not a system (no `bin/switch-to-configuration`):
/// refused after the build and before anything points at it; the profile,
/// the boot default and the running system stay (before, `nix-env --set`
/// moved the profile first and the activation failed with 127).
async fn not_a_system_is_refused_before_the_profile_moves(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let _agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    commit_file(
        &h.fx.repo,
        "flake.nix",
        &flake_with(&h.salt, "2.0", 0, false),
    );
    let after = command(&h.dash, "switch").await;
    let st = status(&h.dash, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    let built = h.evaluated();
    assert_eq!(
        text(p, "message"),
        format!(
            "Switch refused: {built} is not a NixOS system: it has no bin/switch-to-configuration (executable); nothing was set or activated"
        )
    );
    assert!(
        !h.fx.state.join("built-system").exists(),
        "the refused system is not kept by the build's out-link"
    );
    assert_eq!(h.generations(&h.profile), (vec![1], 1), "the profile stays");
    assert_eq!(h.resolve(&h.current), h.booted);
    assert_eq!(h.activations(), "");
}
on_every_nix!(not_a_system_is_refused_before_the_profile_moves);

/// A substitute-only host (`buildOnHost = false`) whose new system is in
/// the store already: the real dry run plans nothing to build, and the
/// real build runs with `--max-jobs 0` (every version takes it) and
/// switches.
async fn substitute_only_host_switches_what_it_need_not_build(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let mut agent = h.agent().env("NIXFLEET_BUILD_ON_HOST", "0").spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    // what a binary cache would have provided
    let wanted = h.sh(&format!(
        "nix {FEATURES} build --out-link {dir}/cached '{repo}#nixosConfigurations.{HOST}.config.system.build.toplevel' && readlink {dir}/cached",
        dir = h.dir().display(),
        repo = h.fx.repo.display()
    ));
    let after = command(&h.dash, "switch").await;
    h.line(
        after,
        "substitute-only host (buildOnHost is off): --max-jobs 0",
    )
    .await;
    let (st, _next) = h.restarted(&mut agent, after).await;
    assert_eq!(text(&st.payload, "status"), "ok", "{}", st.payload);
    assert_eq!(h.resolve(&h.current), wanted);
}
on_every_nix!(substitute_only_host_switches_what_it_need_not_build);

/// A garbage collection during the new generation's probation cannot take
/// the system the watchdog would roll back to: its profile generation is
/// deleted (as `nix-collect-garbage -d` does to the system profile) and the
/// store collected while the health check runs, then the check fails; the
/// rollback finds the booted system in the store because the agent held a
/// GC root on it from before the activation (and dropped it after).
async fn a_garbage_collection_during_probation_keeps_the_rollback_target(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let dir = h.dir().display().to_string();
    // nothing but the profile's generation keeps the booted system
    std::fs::remove_file(h.dir().join("booted")).unwrap();
    host_test_dir(
        &h.fx.repo,
        "health",
        "gc.sh",
        &format!(
            "nix-env -p {dir}/profiles/system --delete-generations old >&2\nnix-store --gc >/dev/null 2>&1\necho 'collected; the service is broken' >&2\nexit 1"
        ),
    );
    let _agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "switch").await;
    let st = status(&h.dash, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    let message = text(p, "message");
    assert!(
        message.starts_with("rolled back to ")
            && message.ends_with(": health check gc.sh failed (exit 1)"),
        "the rollback succeeded: {message}"
    );
    assert!(h.in_store(&h.booted), "the booted system was kept");
    assert_eq!(h.resolve(&h.current), h.booted, "and runs again");
    assert_eq!(h.resolve(&h.profile), h.booted);
    // settled: the agent's root is gone (the profile holds it now)
    let roots = h.roots_of(&h.booted);
    assert!(!roots.contains("rollback-target"), "{roots}");
}
on_every_nix!(a_garbage_collection_during_probation_keeps_the_rollback_target);

/// An activation that exits 4 after activating (a unit failed to start):
/// the new generation passes its checks and stays; the status, sent before
/// the agent restarts, is ERROR with exit code 4 and its meaning — as the
/// dashboard's operation log shows it.
async fn an_activation_that_exits_4_is_an_error_with_its_meaning(suite: &'static str) {
    let Some(h) = Host::new(suite).await else {
        return;
    };
    let mut agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 4);
    let after = h.dash.last_seq();
    let d = h.dash.dispatch(HOST, "switch", true);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let id = d.command_id.expect("id");
    let (st, _next) = h.restarted(&mut agent, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    assert_eq!(p["exit_code"], 4, "{p}");
    let message = text(p, "message");
    assert!(
        message.contains("exited 4 after activating the new generation (nixfleet-agent: switch-to-configuration switch exited 4: some units failed to start or to restart); the new generation passed its checks and stays"),
        "{message}"
    );
    let op = h.dash.op(&id).expect("op");
    assert_eq!(
        op.status, "ERROR",
        "the reconnect did not make it a success: {op:?}"
    );
    assert_eq!(op.exit_code, Some(4));
    let built = h.resolve(&h.fx.state.join("built-system"));
    assert_eq!(h.resolve(&h.current), built, "the new generation stays");
    assert_no_violations(&h.dash);
}
on_every_nix!(an_activation_that_exits_4_is_an_error_with_its_meaning);

/// A rollback whose activation fails (the old system's boot loader step)
/// leaves no split host: the new system still runs, so its profile and
/// boot entry name it again, and the status says exactly what runs.
async fn a_failed_rollback_leaves_profile_boot_and_running_system_agreeing(suite: &'static str) {
    let Some(h) = Host::booted_with(suite, 1).await else {
        return;
    };
    host_test_dir(&h.fx.repo, "health", "broken.sh", "exit 1");
    let _agent = h.agent().spawn();
    wait_register(&h.dash, HOST, 0).await;
    h.commit("2.0", 0);
    let after = command(&h.dash, "switch").await;
    let st = status(&h.dash, after).await;
    let p = &st.payload;
    assert_eq!(text(p, "status"), "error", "{p}");
    let built = h.resolve(&h.fx.state.join("built-system"));
    let name = built.rsplit('/').next().unwrap();
    let message = text(p, "message");
    assert!(
        message.contains(&format!(
            "failed (exit 1): health check broken.sh failed (exit 1); the host runs {name}, which its profile and boot default name"
        )),
        "{message}"
    );
    assert_eq!(h.resolve(&h.current), built, "the new system still runs");
    assert_eq!(h.resolve(&h.profile), built, "and the profile names it");
    assert_eq!(
        h.activations(),
        format!("switch {built}\nboot {built}\n"),
        "its boot entry is the default again"
    );
}
on_every_nix!(a_failed_rollback_leaves_profile_boot_and_running_system_agreeing);
