//! End-to-end: the command line and configuration errors (exit status 78).

mod common;

use common::*;

async fn run(builder: &AgentBuilder, args: &[&str]) -> (Option<i32>, String, String) {
    let out = builder
        .command()
        .args(args)
        .output()
        .await
        .expect("run nixfleet-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn version_and_help() {
    let fx = Fixture::new();
    let b = AgentBuilder::new("ws://127.0.0.1:9/ws", "cli", &fx);
    let (code, out, _) = run(&b, &["--version"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!(
            "nixfleet-agent {} (speaks the NixFleet 3.1.5 dashboard protocol)",
            env!("CARGO_PKG_VERSION")
        )
    );
    let (code, out, _) = run(&b, &["--help"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--check") && out.contains("NIXFLEET_URL"),
        "{out}"
    );
    let (code, _, err) = run(&b, &["--frobnicate"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("--frobnicate"), "{err}");
}

#[tokio::test]
async fn check_prints_what_was_detected_without_connecting() {
    let fx = Fixture::new();
    for (name, value) in [("cpu", "5"), ("ram", "6"), ("swap", "7"), ("load", "0.5")] {
        std::fs::write(fx.stasysmo.join(name), value).unwrap();
    }
    // port 9 (discard) is closed: --check must not try to connect at all
    let b = AgentBuilder::new("ws://127.0.0.1:9/ws", "checked", &fx)
        .env("NIXFLEET_NIXPKGS_VERSION", "26.05.20260601.0123456");
    let (code, out, err) = run(&b, &["--check"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("checked"), "{out}");
    assert!(out.contains("nixos"), "{out}");
    assert!(out.contains("26.05.20260601.0123456"), "{out}");
    assert!(out.contains(&fx.head), "{out}");
    assert!(out.contains("stasysmo"), "{out}");
    // what a switch runs: the build of the configuration, then its activation
    assert!(
        out.contains(&format!(
            "  switch:           nix build {}#nixosConfigurations.\"checked\".config.system.build.toplevel, then activate it (switch-to-configuration switch)",
            fx.repo.display()
        )),
        "{out}"
    );
    assert!(
        !out.contains(TOKEN) && !err.contains(TOKEN),
        "token printed"
    );
}

#[tokio::test]
async fn invalid_configuration_exits_78_naming_the_variable() {
    let fx = Fixture::new();
    let token_dir = tempfile::tempdir().unwrap();
    let empty_token = token_dir.path().join("empty");
    std::fs::write(&empty_token, "\n").unwrap();
    let empty_token = empty_token.to_str().unwrap().to_string();
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        ("NIXFLEET_URL", None, "NIXFLEET_URL"),
        ("NIXFLEET_URL", Some("http://dash/ws"), "NIXFLEET_URL"),
        ("NIXFLEET_TOKEN", None, "NIXFLEET_TOKEN"),
        ("NIXFLEET_INTERVAL", Some("0"), "NIXFLEET_INTERVAL"),
        ("NIXFLEET_INTERVAL", Some("fast"), "NIXFLEET_INTERVAL"),
        ("NIXFLEET_LOCATION", Some("mars"), "NIXFLEET_LOCATION"),
        (
            "NIXFLEET_DEVICE_TYPE",
            Some("fridge"),
            "NIXFLEET_DEVICE_TYPE",
        ),
        ("NIXFLEET_LOG_LEVEL", Some("verbose"), "NIXFLEET_LOG_LEVEL"),
        (
            "NIXFLEET_TOKEN_FILE",
            Some("/nonexistent/token"),
            "NIXFLEET_TOKEN_FILE",
        ),
        (
            "NIXFLEET_TOKEN_FILE",
            Some(&empty_token),
            "NIXFLEET_TOKEN_FILE",
        ),
        ("NIXFLEET_REPO_DIR", None, "NIXFLEET_REPO_URL"),
        ("NIXFLEET_THEME_COLOR", Some("blue"), "NIXFLEET_THEME_COLOR"),
        (
            "NIXFLEET_PASS_ENV",
            Some("NIX_CONFIG NIXFLEET_TOKEN"),
            "NIXFLEET_PASS_ENV",
        ),
    ];
    for (var, value, blamed) in cases {
        let mut b = AgentBuilder::new("ws://127.0.0.1:9/ws", "bad", &fx);
        b = match value {
            Some(v) => b.env(var, v),
            None => b.without(var),
        };
        if var == "NIXFLEET_TOKEN_FILE" {
            b = b.without("NIXFLEET_TOKEN");
        }
        let (code, _, err) = run(&b, &[]).await;
        assert_eq!(code, Some(78), "{var}={value:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one clear line expected for {var}: {err}");
        assert!(lines[0].contains(blamed), "{var}={value:?} → {err}");
        assert!(!err.contains(TOKEN), "token in the error");
    }
}

/// `--check` names the Nix the operations would run, and says what is
/// refused when there is none, or an old one.
#[tokio::test]
async fn check_names_the_nix_found() {
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let b = AgentBuilder::new("ws://127.0.0.1:9/ws", "checked", &fx).with_fakes(&fakes);
    std::fs::write(fakes.file("nix.version"), "nix (Lix, like Nix) 2.91.1\n").unwrap();
    let (code, out, err) = run(&b, &["--check"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "  nix:              nix (Lix, like Nix) 2.91.1 (Nix 2.91.1; the agent needs 2.8 or later)"
        ),
        "{out}"
    );
    std::fs::write(fakes.file("nix.version"), "nix (Nix) 2.6.0\n").unwrap();
    let (code, out, _) = run(&b, &["--check"]).await;
    assert_eq!(code, Some(0), "the configuration is valid");
    assert!(
        out.contains("  nix:              this host runs Nix 2.6.0 (`nix (Nix) 2.6.0`); the agent needs Nix 2.8 or later: switch, pull-switch, update, force-rebuild, rollback and refresh-system are refused"),
        "{out}"
    );
}
