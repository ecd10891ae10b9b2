//! End-to-end: every operation that runs Nix first finds the Nix on the
//! operations' `PATH` and refuses at once, naming what it found and what
//! it needs, when it is too old (below 2.8) or prints no version; nothing
//! is pulled, built, set or activated, and the status is one true error.
//! The same operations on real Nix 2.8, 2.26 and 2.34: `real_nix.rs`.

mod common;

use common::cmdhost::*;
use common::*;

const NEED_NIX: [&str; 6] = [
    "switch",
    "pull-switch",
    "update",
    "force-rebuild",
    "rollback",
    "refresh-system",
];

async fn refused_with(version: &str, expected: &str) {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(fakes.file("nix.version"), version).unwrap();
    let _agent = agent(&dash, &fx, &fakes).spawn();
    registered(&dash).await;
    for name in NEED_NIX {
        let after = command(&dash, name).await;
        let st = status(&dash, after).await;
        let p = &st.payload;
        assert_eq!(s(p, "command"), name);
        assert_eq!(s(p, "status"), "error", "{p}");
        assert_eq!(
            s(p, "message"),
            format!("{name} refused: {expected}"),
            "{p}"
        );
        let statuses = dash
            .frames(HOST, Some("status"))
            .into_iter()
            .filter(|f| f.seq > after && f.payload["command"] == name)
            .count();
        assert_eq!(statuses, 1, "exactly one status for {name}");
    }
    for file in [
        "nix-dry-run.argv",
        "nix-build.argv",
        "nix.argv",
        "nix-env.argv",
        "rebuild.argv",
    ] {
        assert!(!fakes.file(file).exists(), "{file}: something ran");
    }
    assert!(!fakes.profile.exists(), "the profile was not touched");
    assert_eq!(
        git(&fx.repo, &["rev-parse", "HEAD"]),
        fx.head,
        "nothing pulled"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_nix_older_than_2_8_is_refused_with_both_versions() {
    refused_with(
        "nix (Nix) 2.6.0\n",
        "this host runs Nix 2.6.0 (`nix (Nix) 2.6.0`); the agent needs Nix 2.8 or later",
    )
    .await;
}

#[tokio::test]
async fn a_nix_that_prints_no_version_is_refused_with_what_it_printed() {
    refused_with(
        "error: unexpected output\n",
        "`nix --version` printed \"error: unexpected output\", which names no Nix version; the agent needs Nix 2.8 or later",
    )
    .await;
}

/// Lix and Determinate Nix name themselves otherwise; the Nix version
/// they carry decides, and the switch runs.
#[tokio::test]
async fn lix_and_determinate_nix_are_taken_by_the_nix_version_they_carry() {
    for (line, number) in [
        ("nix (Lix, like Nix) 2.91.1", "2.91.1"),
        ("nix (Determinate Nix 3.6.2) 2.29.0", "2.29.0"),
    ] {
        let dash = dashboard().await;
        let fx = Fixture::new();
        let fakes = Fakes::new(&fx);
        std::fs::write(fakes.file("nix.version"), format!("{line}\n")).unwrap();
        let _agent = agent(&dash, &fx, &fakes).spawn();
        registered(&dash).await;
        let after = command(&dash, "switch").await;
        let st = status(&dash, after).await;
        assert_eq!(s(&st.payload, "status"), "ok", "{}", st.payload);
        let out = outputs(&dash, after, st.seq);
        let named = format!("[nixfleet-agent] {line} (Nix {number})");
        assert!(out.iter().any(|o| o["line"] == named.as_str()), "{out:?}");
    }
}
