use super::*;

fn t0() -> SystemTime {
    // 2026-12-01T21:27:05Z
    UNIX_EPOCH + Duration::from_secs(1_796_160_425)
}

#[test]
fn rfc3339_formats_utc_seconds() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(t0()), "2026-12-01T21:27:05Z");
    // a leap day
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
}

#[test]
fn lock_age_rule() {
    let day = Duration::from_secs(86_400);
    let ok = lock_check_for_age(Some(Duration::from_secs(60)), t0());
    assert_eq!(
        (ok.status, ok.message.as_str()),
        (Level::Ok, "Updated today")
    );
    assert_eq!(ok.checked_at, "2026-12-01T21:27:05Z");
    let y = lock_check_for_age(Some(day), t0());
    assert_eq!(
        (y.status, y.message.as_str()),
        (Level::Ok, "Updated yesterday")
    );
    // 7 whole days is still ok, as upstream counts whole days
    let seven = lock_check_for_age(Some(day * 8 - Duration::from_secs(1)), t0());
    assert_eq!(seven.status, Level::Ok);
    assert_eq!(seven.message, "Updated 7 days ago");
    let eight = lock_check_for_age(Some(day * 8), t0());
    assert_eq!(eight.status, Level::Outdated);
    assert!(
        eight.message.starts_with("Updated 8 days ago"),
        "{}",
        eight.message
    );
    let none = lock_check_for_age(None, t0());
    assert_eq!(none.status, Level::Unknown);
}

fn working() -> Compartments {
    Compartments {
        system: Check::at(Level::Working, "Switch in progress…", t0()),
        tests: Check::at(Level::Ok, "3/3 passed", t0()),
        ..Compartments::default()
    }
}

#[tokio::test(start_paused = true)]
async fn stale_working_becomes_unknown_after_five_idle_minutes() {
    let mut c = working();
    let mut idle = None;
    // first seen idle: the clock starts
    assert!(!expire_stale(
        &mut c,
        &mut idle,
        false,
        Instant::now(),
        t0()
    ));
    tokio::time::advance(STALE_WORKING - Duration::from_secs(1)).await;
    assert!(!expire_stale(
        &mut c,
        &mut idle,
        false,
        Instant::now(),
        t0()
    ));
    assert_eq!(c.system.status, Level::Working);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(expire_stale(&mut c, &mut idle, false, Instant::now(), t0()));
    assert_eq!(c.system.status, Level::Unknown);
    assert!(c.system.message.contains("stale"), "{}", c.system.message);
    // other compartments are left alone
    assert_eq!(c.tests.status, Level::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_running_command_keeps_working_and_restarts_the_clock() {
    let mut c = working();
    let mut idle = None;
    expire_stale(&mut c, &mut idle, false, Instant::now(), t0());
    tokio::time::advance(Duration::from_secs(200)).await;
    // something runs again (an adopted switch): the idle clock resets
    assert!(!expire_stale(&mut c, &mut idle, true, Instant::now(), t0()));
    assert_eq!(idle, None);
    tokio::time::advance(Duration::from_secs(200)).await;
    assert!(!expire_stale(
        &mut c,
        &mut idle,
        false,
        Instant::now(),
        t0()
    ));
    tokio::time::advance(Duration::from_secs(200)).await;
    assert!(!expire_stale(
        &mut c,
        &mut idle,
        false,
        Instant::now(),
        t0()
    ));
    assert_eq!(c.system.status, Level::Working);
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(expire_stale(&mut c, &mut idle, false, Instant::now(), t0()));
    assert_eq!(c.system.status, Level::Unknown);
}

#[test]
fn nothing_working_never_expires() {
    let mut c = Compartments::default();
    let mut idle = None;
    assert!(!expire_stale(
        &mut c,
        &mut idle,
        false,
        Instant::now(),
        t0()
    ));
    assert_eq!(idle, None);
}

#[test]
fn messages_are_bounded_on_a_char_boundary() {
    let c = Check::at(Level::Error, "é".repeat(MAX_MESSAGE), t0());
    assert!(c.message.len() <= MAX_MESSAGE);
    assert!(c.message.chars().all(|ch| ch == 'é'));
}

#[test]
fn the_file_round_trips_and_a_bad_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::load(dir.path());
    assert_eq!(store.get(), Compartments::default());
    store.set(Part::Tests, Check::at(Level::Error, "1/2 passed", t0()));
    store.write_now();
    let again = Store::load(dir.path());
    assert_eq!(again.get().tests.status, Level::Error);
    assert_eq!(again.get().tests.message, "1/2 passed");

    std::fs::write(dir.path().join(FILE_NAME), b"{ not json").unwrap();
    let bad = Store::load(dir.path());
    assert_eq!(bad.get(), Compartments::default());
    bad.set(Part::System, Check::at(Level::Ok, "Switch succeeded", t0()));
    bad.write_now();
    assert_eq!(Store::load(dir.path()).get().system.status, Level::Ok);

    let huge = vec![b' '; MAX_FILE as usize + 10];
    std::fs::write(dir.path().join(FILE_NAME), huge).unwrap();
    assert_eq!(Store::load(dir.path()).get(), Compartments::default());
}

#[test]
fn lock_is_measured_from_the_last_commit_touching_flake_lock() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let git = |args: &[&str], date: &str| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_DATE", date)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = vec![
        ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
        ("HOME".into(), repo.as_os_str().to_owned()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
    ];
    git(&["init", "-q", "-b", "main"], "2020-01-01T00:00:00Z");
    assert_eq!(
        measure_lock(repo, &env).status,
        Level::Unknown,
        "no flake.lock"
    );
    std::fs::write(repo.join("flake.lock"), "{}").unwrap();
    assert_eq!(
        measure_lock(repo, &env).status,
        Level::Unknown,
        "no history"
    );
    git(&["add", "flake.lock"], "2020-01-01T00:00:00Z");
    git(&["commit", "-q", "-m", "lock"], "2020-01-01T00:00:00Z");
    // a later commit that does not touch flake.lock does not make it younger
    std::fs::write(repo.join("other"), "x").unwrap();
    git(&["add", "other"], "2099-01-01T00:00:00Z");
    git(&["commit", "-q", "-m", "other"], "2099-01-01T00:00:00Z");
    let old = measure_lock(repo, &env);
    assert_eq!(old.status, Level::Outdated, "{old:?}");
    std::fs::write(repo.join("flake.lock"), "{\"v\":1}").unwrap();
    let now = rfc3339(SystemTime::now());
    git(&["commit", "-q", "-am", "bump"], &now);
    assert_eq!(measure_lock(repo, &env).status, Level::Ok);
}
