//! End-to-end: reboot awareness (docs/commands.md, "Reboot awareness"). Fixture
//! trees stand for `/run/booted-system` and `/run/current-system`; their
//! `kernel`, `initrd` and `kernel-modules` link into a fake store. Heartbeats
//! carry `needs_reboot`, and an `ok` System compartment names what changed.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use nixfleet_mock_dashboard::MockDashboard;
use serde_json::Value;

const HOST: &str = "boothost";

/// A system tree `<root>/<name>` whose kernel is `<root>/store/<kernel>`
/// (initrd and modules shared by all).
fn system(root: &Path, name: &str, kernel: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, target) in [
        ("kernel", kernel),
        ("initrd", "initrd"),
        ("kernel-modules", "modules"),
    ] {
        let t = root.join("store").join(target);
        std::fs::create_dir_all(&t).unwrap();
        symlink(&t, dir.join(file)).unwrap();
    }
    dir
}

fn point(link: &Path, target: &Path) {
    let _ = std::fs::remove_file(link);
    symlink(target, link).unwrap();
}

async fn heartbeat_where(
    dash: &MockDashboard,
    after: u64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (u64, Value) {
    common::heartbeat_where(dash, HOST, after, what, pred).await
}

fn system_message(hb: &Value) -> &str {
    hb["update_status"]["system"]["message"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn needs_reboot_follows_the_booted_and_the_current_kernel() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let root = fx.tmp.path().join("systems");
    let booted = system(&root, "booted", "kernel-1");
    // the same kernel as booted, by store path, under another generation
    let same = system(&root, "gen-2", "kernel-1");
    let newer = system(&root, "gen-3", "kernel-2");
    let current = root.join("current-system");
    point(&current, &newer);
    // the switch builds gen-3, and its activation points the link at it
    fakes.build_system_at(&newer);
    std::fs::write(fakes.file("current.link"), current.to_str().unwrap()).unwrap();
    let agent = || {
        AgentBuilder::new(&dash.ws_url(), HOST, &fx)
            .with_fakes(&fakes)
            .env("NIXFLEET_BOOTED_SYSTEM", booted.to_str().unwrap())
            .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
            .env("NIXFLEET_NIX_STORE", root.to_str().unwrap())
            .env("NIXFLEET_ROLLBACK_ON_FAILURE", "0")
    };
    let mut a = agent().spawn();
    wait_register(&dash, HOST, 0).await;
    heartbeat_where(&dash, 0, "needs_reboot true", |hb| {
        hb["needs_reboot"] == true
    })
    .await;

    // a switch leaves System ok: its message says what a reboot would bring
    let before = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let st = status_for(&dash, HOST, "switch", before).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    let (_, hb) = heartbeat_where(&dash, st.seq, "System ok", |hb| {
        hb["update_status"]["system"]["status"] == "ok"
    })
    .await;
    assert_eq!(
        system_message(&hb),
        "Switch succeeded — reboot needed: kernel changed"
    );
    assert_eq!(hb["needs_reboot"], true);
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));

    // the current system runs the booted kernel again: no reboot needed,
    // and the note is gone from the stored System message
    // (switched to gen-2: the system profile names it too, else the next
    // boot would bring gen-3 and its kernel back)
    point(&current, &same);
    point(&fakes.profile, &same);
    let seen = dash.last_seq();
    let _b = agent().spawn();
    let (_, reg) = wait_register(&dash, HOST, seen).await;
    let _ = reg;
    let (_, hb) = heartbeat_where(&dash, seen, "needs_reboot false", |hb| {
        hb["needs_reboot"] == false
    })
    .await;
    assert_eq!(system_message(&hb), "Switch succeeded");
    let info = dash.host(HOST).expect("host");
    assert_eq!(info.stored.system.message, "Switch succeeded");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn macos_and_a_host_without_a_booted_system_send_no_needs_reboot() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let root = fx.tmp.path().join("systems");
    let booted = system(&root, "booted", "kernel-1");
    let current = system(&root, "current", "kernel-2");
    for (host_type, booted) in [
        ("macos", booted.clone()),
        ("nixos", root.join("no-booted-system")),
    ] {
        let seen = dash.last_seq();
        let mut a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
            .env("NIXFLEET_HOST_TYPE", host_type)
            .env("NIXFLEET_BOOTED_SYSTEM", booted.to_str().unwrap())
            .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
            .spawn();
        wait_register(&dash, HOST, seen).await;
        // two heartbeats: the second comes after the first background refresh
        let (first, hb) = heartbeat_where(&dash, seen, "a heartbeat", |_| true).await;
        assert!(hb.get("needs_reboot").is_none(), "{host_type}: {hb}");
        let (_, hb) = heartbeat_where(&dash, first, "another", |_| true).await;
        assert!(hb.get("needs_reboot").is_none(), "{host_type}: {hb}");
        a.signal(libc::SIGTERM);
        a.wait_exit(WAIT).await;
    }
    assert_no_violations(&dash);
}
