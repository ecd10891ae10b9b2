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

/// A system in the fake store: kernel and initrd files of their own (the
/// kernel `kernel_len` bytes, sparse), `switch-inhibitors`.
fn system_parts(
    fakes: &Fakes,
    system: &std::path::Path,
    tag: &str,
    kernel_len: u64,
    inhibitors: &str,
) {
    let kernel_dir = fakes.store.join(format!(
        "{tag}kkkkkkkkkkkkkkkkkkkkkkkkkkkkkk-linux-6.12.{kernel_len}"
    ));
    let initrd_dir = fakes
        .store
        .join(format!("{tag}iiiiiiiiiiiiiiiiiiiiiiiiiiiiii-initrd-linux"));
    std::fs::create_dir_all(&kernel_dir).unwrap();
    std::fs::create_dir_all(&initrd_dir).unwrap();
    let kernel = std::fs::File::create(kernel_dir.join("bzImage")).unwrap();
    kernel.set_len(kernel_len).unwrap();
    std::fs::write(initrd_dir.join("initrd"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir_all(system).unwrap();
    for (name, target) in [
        ("kernel", kernel_dir.join("bzImage")),
        ("initrd", initrd_dir.join("initrd")),
    ] {
        let link = system.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    std::fs::write(system.join("switch-inhibitors"), inhibitors).unwrap();
}

/// The running system: `<store>/…-nixos-system-previewhost-1`, booted and
/// current, with its own activation.
fn running(
    fx: &Fixture,
    fakes: &Fakes,
    inhibitors: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let previous = fakes
        .store
        .join("11111111111111111111111111111111-nixos-system-previewhost-1");
    system_parts(fakes, &previous, "11", 1000, inhibitors);
    write_exec(
        &previous.join("bin/switch-to-configuration"),
        "#!/bin/sh\nexit 0\n",
    );
    let current = fx.tmp.path().join("current-system");
    std::os::unix::fs::symlink(&previous, &current).unwrap();
    std::fs::write(fakes.file("current.link"), current.to_str().unwrap()).unwrap();
    (previous, current)
}

const INHIBITORS_1: &str = r#"{"dbus-implementation":"dbus","systemd":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-systemd-257.9"}"#;

/// What `nix store diff-closures` prints (Nix colours the size deltas).
const DIFF: &str = "firefox: 139.0 → 140.0.1, \u{1b}[31;1m+1520.3 KiB\u{1b}[0m
hello: ∅ → 2.12.2, \u{1b}[31;1m+268.9 KiB\u{1b}[0m
linux: 6.12.1000 → 6.12.9000, \u{1b}[32;1m-12.0 KiB\u{1b}[0m
nano: 8.4 → ∅, \u{1b}[32;1m-2876.3 KiB\u{1b}[0m
";

/// What `switch-to-configuration dry-activate` prints (on stderr).
const WOULD: &str = "would stop the following units: legacy-app.service
would NOT stop the following changed units: dbus.service
would activate the configuration...
would restart systemd
would restart the following units: nginx.service
would start the following units: new-app.service
would reload the following units: sshd.service
";

#[tokio::test]
async fn a_switch_builds_then_previews_then_activates_exactly_what_it_built() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    std::fs::write(fakes.file("nix.plan"), PLAN).unwrap();
    let (previous, current) = running(&fx, &fakes, INHIBITORS_1);
    // the new system: another kernel, the same critical components
    system_parts(&fakes, &fakes.system, "22", 9000, INHIBITORS_1);
    std::fs::write(fakes.file("nix.diff"), DIFF).unwrap();
    std::fs::write(
        fakes.file("nix.sizes"),
        format!(
            "{}\t  1073741824\n{}\t  1178599424\n",
            previous.display(),
            fakes.system.display()
        ),
    )
    .unwrap();
    std::fs::write(fakes.file("units.would"), WOULD).unwrap();
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .env("NIXFLEET_BOOTED_SYSTEM", previous.to_str().unwrap())
        .env("NIXFLEET_ROLLBACK_ON_FAILURE", "0")
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
    assert_eq!(st["message"], "Switch succeeded");
    assert_eq!(
        fakes.read("nix-dry-run.argv"),
        format!(
            "--extra-experimental-features nix-command flakes build --dry-run --no-link {}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel\n",
            fx.repo.display()
        )
    );
    let block: Vec<&str> = lines
        .iter()
        .map(String::as_str)
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
            "[nixfleet-agent] package changes:",
            "[nixfleet-agent]   firefox: 139.0 → 140.0.1, +1520.3 KiB",
            "[nixfleet-agent]   hello: ∅ → 2.12.2, +268.9 KiB",
            "[nixfleet-agent]   linux: 6.12.1000 → 6.12.9000, -12.0 KiB",
            "[nixfleet-agent]   nano: 8.4 → ∅, -2876.3 KiB",
            "[nixfleet-agent] closure size: 1024.0 MiB → 1124.0 MiB (+100.0 MiB)",
            "[nixfleet-agent] units:",
            "[nixfleet-agent]   would stop the following units: legacy-app.service",
            "[nixfleet-agent]   would NOT stop the following changed units: dbus.service",
            "[nixfleet-agent]   would activate the configuration...",
            "[nixfleet-agent]   would restart systemd",
            "[nixfleet-agent]   would restart the following units: nginx.service",
            "[nixfleet-agent]   would start the following units: new-app.service",
            "[nixfleet-agent]   would reload the following units: sshd.service",
            "[nixfleet-agent] reboot needed: kernel, initrd changed (after this switch)",
        ],
        "{lines:?}"
    );
    // the dry run's listing is not streamed, the summary is
    assert!(
        !lines.iter().any(|l| l.contains("openssl-3.5.1")),
        "{lines:?}"
    );
    // in order: dry run, building, the preview, activating the built path
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:?}"))
    };
    let order = [
        at("[nixfleet-agent] dry run: builds 3 derivations"),
        at("[nixfleet-agent] building "),
        at(&format!(
            "[nixfleet-agent] built {}",
            fakes.system.display()
        )),
        at("[nixfleet-agent] ── preview ──"),
        at("[nixfleet-agent] ── end of preview ──"),
        at(&format!(
            "[nixfleet-agent] activating {} (switch)",
            fakes.system.display()
        )),
        at("switched"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?}: {lines:?}"
    );
    // exactly the built path: the profile, then its activation
    assert_eq!(std::fs::canonicalize(&fakes.profile).unwrap(), fakes.system);
    assert_eq!(std::fs::canonicalize(&current).unwrap(), fakes.system);
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
    assert_eq!(statuses(&dash), 1);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn changed_switch_inhibitors_install_the_system_for_the_next_boot() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let (previous, current) = running(&fx, &fakes, INHIBITORS_1);
    system_parts(
        &fakes,
        &fakes.system,
        "22",
        1000,
        r#"{"dbus-implementation":"broker","systemd":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-systemd-257.9","new-key":"x"}"#,
    );
    let mut a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .env("NIXFLEET_BOOTED_SYSTEM", previous.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, lines) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(
        st["message"],
        "Switch installed for the next boot: dbus-implementation : dbus -> broker; reboot to activate it"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "[nixfleet-agent]   dbus-implementation : dbus -> broker"),
        "{lines:?}"
    );
    // the boot loader's default is the new system, the running one is untouched
    assert_eq!(fakes.read("rebuild.argv"), "boot\n");
    assert_eq!(std::fs::canonicalize(&fakes.profile).unwrap(), fakes.system);
    assert_eq!(std::fs::canonicalize(&current).unwrap(), previous);
    // not watched (nothing changed that could fail): one status, then the
    // restart the hub's switch lifecycle waits for
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));
    assert!(
        !fx.state
            .join("switch")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.path().join("watch").exists())
    );
    let seen = dash.last_seq();
    let _b = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .env("NIXFLEET_BOOTED_SYSTEM", previous.to_str().unwrap())
        .spawn();
    let (_, hb) = heartbeat_where(&dash, HOST, seen, "needs_reboot", |hb| {
        hb["needs_reboot"] == true
    })
    .await;
    assert_eq!(
        hb["update_status"]["system"]["message"],
        "Switch installed for the next boot — reboot needed: a new system is installed for the next boot",
        "{hb}"
    );
    assert_eq!(statuses(&dash), 1);
    assert_no_violations(&dash);
}

/// A new system whose init interface differs from the running one's
/// (`init-interface-version`): switch-to-configuration would install its
/// boot entry and then refuse the switch with exit 100, a failure; the
/// agent sees it in the preview and installs it for the next boot, as for
/// changed switch inhibitors.
#[tokio::test]
async fn a_changed_init_interface_installs_the_system_for_the_next_boot() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let (previous, current) = running(&fx, &fakes, INHIBITORS_1);
    std::fs::write(previous.join("init-interface-version"), "systemd 2\n").unwrap();
    system_parts(&fakes, &fakes.system, "22", 1000, INHIBITORS_1);
    std::fs::write(fakes.system.join("init-interface-version"), "systemd 3\n").unwrap();
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .env("NIXFLEET_BOOTED_SYSTEM", previous.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, lines) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(
        st["message"],
        "Switch installed for the next boot: init-interface-version : systemd 2 -> systemd 3; reboot to activate it"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(
            "[nixfleet-agent] the init interface changed (init-interface-version : systemd 2 -> systemd 3)"
        )),
        "{lines:?}"
    );
    assert_eq!(fakes.read("rebuild.argv"), "boot\n");
    assert_eq!(
        std::fs::canonicalize(&current).unwrap(),
        previous,
        "still running"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_switch_is_refused_when_the_new_kernel_does_not_fit_in_boot() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    // /boot of its own: a tmpfs (the root filesystem is not one)
    let boot = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    std::fs::create_dir_all(boot.path().join("EFI/nixos")).unwrap();
    // a kernel of 1 TiB (sparse) fits in no /boot
    system_parts(&fakes, &fakes.system, "22", 1 << 40, "{}");
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_BOOT_DIR", boot.path().to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "error", "{st}");
    let message = st["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("Switch refused: {} has ", boot.path().display()))
            && message.contains(" free; the new kernel and initrd need 1048576.0 MiB; delete old generations first: nix-collect-garbage"),
        "{message}"
    );
    assert!(
        !fakes.file("nix-env.argv").exists(),
        "the profile was not set"
    );
    assert!(
        !fakes.file("rebuild.argv").exists(),
        "nothing was activated"
    );
    assert_eq!(statuses(&dash), 1);

    // the boot loader copied this kernel already: only the initrd needs room
    let kernel = std::fs::canonicalize(fakes.system.join("kernel")).unwrap();
    let copy = format!(
        "{}-bzImage.efi",
        kernel
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    std::fs::write(boot.path().join("EFI/nixos").join(copy), "").unwrap();
    let (st, lines) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[nixfleet-agent] /boot: ")
                && l.ends_with(" free, the new kernel and initrd need 0.0 MiB")),
        "{lines:?}"
    );
    assert_eq!(fakes.read("rebuild.argv"), "switch\n");
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
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, _) = switch(&dash).await;
    assert_eq!(st["status"], "error", "{st}");
    let message = st["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Switch refused: the Nix store ({}) has ",
            fakes.store.display()
        )) && message.contains("48.2 MiB unpacked + minFreeSpace 1073741824.0 MiB")
            && message.contains("nix-collect-garbage"),
        "{message}"
    );
    assert!(!fakes.file("nix-build.argv").exists(), "nothing was built");
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
    assert!(!fakes.file("nix-build.argv").exists(), "nothing was built");
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
    // the dry run and the build alike: Nix may build nothing here, so a
    // plan that turns out wrong fails instead of building
    for file in ["nix-dry-run.argv", "nix-build.argv"] {
        let argv = fakes.read(file);
        let last = argv.lines().last().unwrap_or_default();
        assert!(last.contains(" --max-jobs 0 "), "{file}: {last}");
    }
    assert_no_violations(&dash);
}

/// `force-rebuild`'s dry run makes its plan with the build's cache bypass:
/// without it the plan trusts the cached "not in the binary cache" answers
/// the operation exists to forget (and a substitute-only host refuses it).
#[tokio::test]
async fn force_rebuild_plans_with_the_cache_bypass_it_builds_with() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_ROLLBACK_ON_FAILURE", "0")
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let after = dash.last_seq();
    dash.send_command(HOST, "force-rebuild").await.unwrap();
    let st = status_for(&dash, HOST, "force-rebuild", after).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    for file in ["nix-dry-run.argv", "nix-build.argv"] {
        let argv = fakes.read(file);
        assert!(
            argv.contains(" --option narinfo-cache-negative-ttl 0 "),
            "{file}: {argv}"
        );
        assert!(
            !argv.contains("--max-jobs"),
            "{file}: builds allowed: {argv}"
        );
    }
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
    assert!(!fakes.file("nix-build.argv").exists(), "nothing was built");
    assert!(!fakes.file("rebuild.argv").exists(), "nothing was switched");
    assert_eq!(statuses(&dash), 1);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_long_preview_is_cut_with_a_counted_marker_and_logged_whole() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let (_, current) = running(&fx, &fakes, "{}");
    let diff: String = (0..300)
        .map(|i| format!("package-{i:03}: 1.0 → 1.1, +1.0 KiB\n"))
        .collect();
    std::fs::write(fakes.file("nix.diff"), diff).unwrap();
    let _a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .with_fakes(&fakes)
        .env("NIXFLEET_CURRENT_SYSTEM", current.to_str().unwrap())
        .env("NIXFLEET_ROLLBACK_ON_FAILURE", "0")
        .spawn();
    wait_register(&dash, HOST, 0).await;
    let (st, lines) = switch(&dash).await;
    assert_eq!(st["status"], "ok", "{st}");
    let block: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l != "[nixfleet-agent] ── preview ──")
        .collect();
    let end = block
        .iter()
        .position(|l| *l == "[nixfleet-agent] ── end of preview ──")
        .expect("the end marker is sent");
    // 200 lines with both markers: 198 of the block, the count, the end
    assert_eq!(end + 1, 200, "{block:?}");
    // the block: start, summary, "package changes:", 300 packages, units
    // line, end = 305 lines; 198 sent, 106 cut
    assert_eq!(
        block[198],
        "[nixfleet-agent] … 106 more lines of the preview (the command's log has all of them)"
    );
    assert!(block.contains(&"[nixfleet-agent]   package-194: 1.0 → 1.1, +1.0 KiB"));
    assert!(!block.contains(&"[nixfleet-agent]   package-195: 1.0 → 1.1, +1.0 KiB"));
    // the command's log has every line
    let logs: String = std::fs::read_dir(fx.state.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-switch.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    // the block itself, the lines cut from the output too
    for i in [0, 195, 299] {
        assert!(
            logs.contains(&format!(
                "[nixfleet-agent]   package-{i:03}: 1.0 → 1.1, +1.0 KiB"
            )),
            "package-{i:03} of the block is not in the log"
        );
    }
    // in order: the head, the middle cut from the output, the end; and the
    // output's marker is not in the log (it has the lines themselves)
    let at = |needle: &str| {
        logs.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in the log"))
    };
    let order = [
        at("[nixfleet-agent] ── preview ──"),
        at("[nixfleet-agent]   package-000: 1.0 → 1.1, +1.0 KiB"),
        at("[nixfleet-agent]   package-195: 1.0 → 1.1, +1.0 KiB"),
        at("[nixfleet-agent]   package-299: 1.0 → 1.1, +1.0 KiB"),
        at("[nixfleet-agent] ── end of preview ──"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(!logs.contains("more lines of the preview"));
    assert_no_violations(&dash);
}
