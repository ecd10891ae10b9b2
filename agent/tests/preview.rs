//! End-to-end: the preview and the guards before a switch
//! (docs/commands.md, "Preview and guards"), with the real agent against the
//! mock dashboard and a fake `nix` whose dry run prints what Nix's
//! `printMissing` prints. Each refusal comes before anything is built or
//! activated, with exactly one status.

mod common;

use common::*;
use nixfleet_mock_dashboard::MockDashboard;

const HOST: &str = "previewhost";

const PLAN: &str = "these 3 derivations will be built:
  /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-previewhost-26.05.drv
  /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-etc.drv
  /nix/store/cccccccccccccccccccccccccccccccc-unit-nginx.service.drv
these 2 paths will be fetched (12.50 MiB download, 48.25 MiB unpacked):
  /nix/store/dddddddddddddddddddddddddddddddd-nginx-1.28.0
  /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-openssl-3.5.1
";

async fn switch(dash: &MockDashboard) -> (serde_json::Value, Vec<String>) {
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.unwrap();
    let st = status_for(dash, HOST, "switch", sent).await;
    let lines = dash
        .frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > sent && f.seq < st.seq)
        .map(|f| f.payload["line"].as_str().unwrap_or("").to_owned())
        .collect();
    (st.payload, lines)
}

fn statuses(dash: &MockDashboard) -> usize {
    dash.frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "switch")
        .count()
}

#[tokio::test]
async fn a_switch_shows_what_it_will_build_and_fetch_before_it_switches() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(fakes.file("nix.plan"), PLAN).unwrap();
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_NIX_STORE", fx.tmp.path().to_str().unwrap())
        .spawn();
    let (_, seq) = wait_register(&dash, HOST, 0).await;
    // heartbeats carry the store's free space (an extension the hub ignores)
    let (_, hb) = heartbeat_where(&dash, HOST, seq, "the store's free space", |hb| {
        hb.get("store_free_mib").is_some()
    })
    .await;
    assert!(hb["store_free_mib"].as_u64().is_some_and(|m| m > 0), "{hb}");
    let (st, lines) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(
        fakes.read("nix-dry-run.argv"),
        format!(
            "--extra-experimental-features nix-command flakes build --dry-run --no-link {}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel\n",
            fx.repo.display()
        )
    );
    let block: Vec<&String> = lines
        .iter()
        .skip_while(|l| *l != "[nixfleet-agent] ── preview ──")
        .take_while(|l| *l != "[nixfleet-agent] ── end of preview ──")
        .collect();
    assert_eq!(
        block,
        [
            "[nixfleet-agent] ── preview ──",
            "[nixfleet-agent] builds 3 derivations, fetches 2 paths (12.5 MiB download, 48.2 MiB unpacked)",
            "[nixfleet-agent]   build nixos-system-previewhost-26.05.drv",
            "[nixfleet-agent]   build etc.drv",
            "[nixfleet-agent]   build unit-nginx.service.drv",
        ],
        "{lines:?}"
    );
    // the dry run's listing is not streamed, the summary is
    assert!(
        !lines.iter().any(|l| l.contains("openssl-3.5.1")),
        "{lines:?}"
    );
    // then the switch itself
    let preview_end = lines
        .iter()
        .position(|l| l == "[nixfleet-agent] ── end of preview ──")
        .unwrap();
    let switched = lines.iter().position(|l| l == "switched").unwrap();
    assert!(preview_end < switched, "{lines:?}");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_switch_is_refused_when_the_store_would_fill_up() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(fakes.file("nix.plan"), PLAN).unwrap();
    // no filesystem here has a petabyte free
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_MIN_FREE_SPACE", "1073741824")
        .env("NIXFLEET_NIX_STORE", fx.tmp.path().to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "error", "{st}");
    let message = st["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Switch refused: the Nix store ({}) has ",
            fx.tmp.path().display()
        )) && message.contains("48.2 MiB unpacked + minFreeSpace 1073741824.0 MiB")
            && message.contains("nix-collect-garbage"),
        "{message}"
    );
    assert!(!fakes.file("rebuild.argv").exists(), "nothing was switched");
    assert_eq!(statuses(&dash), 1);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_substitute_only_host_refuses_a_switch_that_would_build() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(fakes.file("nix.plan"), PLAN).unwrap();
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_BUILD_ON_HOST", "0")
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "error", "{st}");
    assert_eq!(
        st["message"],
        "Switch refused: 3 derivations would be built on this host, which only substitutes (buildOnHost is off): nixos-system-previewhost-26.05.drv, etc.drv, unit-nginx.service.drv; build them where the binary cache is filled, then switch again"
    );
    assert!(!fakes.file("rebuild.argv").exists(), "nothing was switched");
    assert_eq!(statuses(&dash), 1);

    // everything in the cache: it switches
    std::fs::write(
        fakes.file("nix.plan"),
        "these 2 paths will be fetched (1.00 MiB download, 4.00 MiB unpacked):\n  /nix/store/dddddddddddddddddddddddddddddddd-x\n  /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-y\n",
    )
    .unwrap();
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert!(fakes.file("rebuild.argv").exists());
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_configuration_that_does_not_evaluate_is_refused_before_anything_runs() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("nix.plan.fail");
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "error", "{st}");
    assert_eq!(st["exit_code"], 1);
    let message = st["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Switch failed: `nix --extra-experimental-features nix-command flakes build --dry-run"
        ) && message.contains("attribute 'frobnicator' missing"),
        "{message}"
    );
    assert!(!fakes.file("rebuild.argv").exists(), "nothing was switched");
    assert_eq!(statuses(&dash), 1);
    assert_no_violations(&dash);
}
