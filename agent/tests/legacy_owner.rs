//! End-to-end: legacy mode (`NIXFLEET_REPO_DIR`) in a checkout that belongs
//! to another user. An agent running as root runs `git pull` as the
//! checkout's owner, so the pull leaves no root-owned file in it (docs/nix.md,
//! "Legacy mode"). Needs root to hand the checkout to `nobody`; elsewhere the
//! test says so and does nothing (the refusal of an agent that is not root is
//! a unit test of `commands::owner`).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

const HOST: &str = "legacyhost";
const NOBODY: u32 = 65534;

fn chown_nobody(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {}", path.display());
}

#[tokio::test]
async fn root_pulls_a_users_checkout_as_its_owner() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to give the checkout to another user");
        return;
    }
    let dash = dashboard().await;
    let fx = Fixture::new();
    let bare = bare_origin(&fx);
    let new = upstream_commit(&fx, &bare, "hosts/legacyhost/configuration.nix");
    // the checkout and its origin belong to nobody, who can reach them
    std::fs::set_permissions(
        fx.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    chown_nobody(&fx.repo);
    chown_nobody(&bare);

    let _agent = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    let (reg, seq) = wait_register(&dash, HOST, 0).await;
    // root read the checkout it does not own (safe.directory for its own git)
    assert_eq!(reg["generation"], short7(&fx.head), "{reg}");
    dash.send_command(HOST, "pull").await.expect("send");
    let st = status_for(&dash, HOST, "pull", seq).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(st.payload["generation"], short7(&new));
    let said = dash.frames(HOST, Some("output")).into_iter().any(|f| {
        f.payload["line"]
            .as_str()
            .is_some_and(|l| l.contains("git runs as nobody"))
    });
    assert!(said, "the output names the user git runs as");
    // everything the pull wrote belongs to the owner, not to root
    for written in [
        fx.repo.join("hosts/legacyhost/configuration.nix"),
        fx.repo.join(".git/ORIG_HEAD"),
        fx.repo.join(".git/FETCH_HEAD"),
    ] {
        let uid = std::fs::metadata(&written).unwrap().uid();
        assert_eq!(uid, NOBODY, "{} belongs to uid {uid}", written.display());
    }
    assert_no_violations(&dash);
}
