//! Tests of the configuration parser.

use super::*;
use std::collections::HashMap;

fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&move |name| map.get(name).cloned())
}

const BASE: [(&str, &str); 4] = [
    ("NIXFLEET_URL", "wss://fleet.example.com/ws"),
    ("NIXFLEET_TOKEN", "s3cret-token"),
    ("NIXFLEET_REPO_DIR", "/etc/nixos"),
    ("NIXFLEET_HOSTNAME", "hsb0"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
    let mut vars: Vec<(&str, &str)> = BASE.to_vec();
    vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    vars.extend_from_slice(extra);
    vars.retain(|(_, v)| !v.is_empty());
    parse(&vars)
}

#[test]
fn defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.url, "wss://fleet.example.com/ws");
    assert_eq!(c.token.expose(), "s3cret-token");
    assert_eq!(c.repo_mode, RepoMode::Legacy);
    assert_eq!(c.repo_dir, PathBuf::from("/etc/nixos"));
    assert_eq!(c.branch, "main");
    assert_eq!(c.interval_secs, 5);
    assert_eq!(c.reported_version, PROTOCOL_RELEASE);
    assert_eq!(c.location, "home");
    assert_eq!(c.device_type, "server");
    assert_eq!(c.theme_color, "");
    assert_eq!(c.flake, "/etc/nixos#hsb0");
    assert_eq!(c.timing, Timing::default());
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.ssh, SshSettings::default());
    assert_eq!(c.trust, TrustSettings::default());
    assert_eq!(c.rollback, RollbackSettings::default());
    assert!(c.rollback.enabled);
    let c = with(&[
        ("NIXFLEET_ROLLBACK_ON_FAILURE", "0"),
        ("NIXFLEET_ROLLBACK_DEADLINE", "30"),
    ])
    .unwrap();
    assert!(!c.rollback.enabled);
    assert_eq!(c.rollback.deadline, Duration::from_secs(30));
    let e = with(&[("NIXFLEET_ROLLBACK_DEADLINE", "0")]).unwrap_err();
    assert_eq!(e.var, "NIXFLEET_ROLLBACK_DEADLINE");
}

#[test]
fn trust_settings_name_existing_absolute_key_files() {
    let c = with(&[
        ("NIXFLEET_REQUIRE_SIGNED_COMMITS", "yes"),
        ("NIXFLEET_TRUSTED_SIGNERS", "/dev/null::/etc/hostname"),
        ("NIXFLEET_ALLOW_FORCE_PUSH", "1"),
    ])
    .unwrap();
    assert!(c.trust.require_signed && c.trust.allow_force_push);
    assert_eq!(
        c.trust.signers,
        vec![PathBuf::from("/dev/null"), PathBuf::from("/etc/hostname")]
    );
    let e = with(&[("NIXFLEET_REQUIRE_SIGNED_COMMITS", "1")]).unwrap_err();
    assert_eq!(e.var, "NIXFLEET_REQUIRE_SIGNED_COMMITS");
    assert!(e.message.contains("names no key file"), "{e}");
    let e = with(&[("NIXFLEET_TRUSTED_SIGNERS", "keys/alice.pub")]).unwrap_err();
    assert_eq!(e.var, "NIXFLEET_TRUSTED_SIGNERS");
    let e = with(&[("NIXFLEET_TRUSTED_SIGNERS", "/nonexistent/alice.pub")]).unwrap_err();
    assert!(
        e.message.contains("cannot read /nonexistent/alice.pub"),
        "{e}"
    );
    let e = with(&[("NIXFLEET_ALLOW_FORCE_PUSH", "maybe")]).unwrap_err();
    assert_eq!(e.var, "NIXFLEET_ALLOW_FORCE_PUSH");
    let c = with(&[("NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS", "true")]).unwrap();
    assert!(c.ssh.require_known_hosts);
}

#[test]
fn isolated_mode_defaults_to_state_dir() {
    let c = with(&[
        ("NIXFLEET_REPO_DIR", ""),
        ("NIXFLEET_REPO_URL", "git@github.com:me/nixcfg.git"),
        ("NIXFLEET_STATE_DIR", "/var/lib/x"),
    ])
    .unwrap();
    assert_eq!(
        c.repo_mode,
        RepoMode::Isolated {
            url: "git@github.com:me/nixcfg.git".into()
        }
    );
    assert_eq!(c.repo_dir, PathBuf::from("/var/lib/x/repo"));
    assert_eq!(c.log_dir, PathBuf::from("/var/lib/x/logs"));
    assert_eq!(c.repo_url(), "git@github.com:me/nixcfg.git");
}

#[test]
fn legacy_nixcfg_name() {
    let c = with(&[
        ("NIXFLEET_REPO_DIR", ""),
        ("NIXFLEET_NIXCFG", "/home/me/nixcfg"),
    ])
    .unwrap();
    assert_eq!(c.repo_dir, PathBuf::from("/home/me/nixcfg"));
}

#[test]
fn home_manager_flake() {
    let c = with(&[("NIXFLEET_SWITCH_TOOL", "home-manager")]).unwrap();
    assert_eq!(c.flake, "/etc/nixos#hsb0", "upstream's <repo>#<hostname>");
    let c = with(&[
        ("NIXFLEET_SWITCH_TOOL", "home-manager"),
        ("NIXFLEET_HOME_MANAGER_USER", "mba"),
    ])
    .unwrap();
    assert_eq!(c.flake, "/etc/nixos#mba@hsb0");
    assert_eq!(c.switch_tool.program(), "home-manager");
}

#[test]
fn credentials_in_urls_are_redacted() {
    assert_eq!(
        redact_url("wss://alice:s3cret@fleet.example.com/ws"),
        "wss://***@fleet.example.com/ws"
    );
    assert_eq!(
        redact_url("ws://127.0.0.1:8000/ws?token=s3cret&x=1"),
        "ws://127.0.0.1:8000/ws?token=***&x=***"
    );
    assert_eq!(
        redact_url("wss://fleet.example.com/ws"),
        "wss://fleet.example.com/ws"
    );
    assert_eq!(redact_url("ws://a:b@c@host"), "ws://***@host");
    let e = with(&[("NIXFLEET_URL", "https://bob:s3cret@x/ws")]).unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[test]
fn rejects_bad_values_naming_the_variable() {
    let cases: &[(&str, &str)] = &[
        ("NIXFLEET_URL", ""),
        ("NIXFLEET_URL", "https://fleet.example.com/ws"),
        ("NIXFLEET_URL", "ws://"),
        ("NIXFLEET_INTERVAL", "0"),
        ("NIXFLEET_INTERVAL", "1.5"),
        ("NIXFLEET_INTERVAL", "abc"),
        ("NIXFLEET_INTERVAL", "-3"),
        ("NIXFLEET_LOCATION", "moon"),
        ("NIXFLEET_DEVICE_TYPE", "toaster"),
        ("NIXFLEET_LOG_LEVEL", "loud"),
        ("NIXFLEET_THEME_COLOR", "red"),
        ("NIXFLEET_TOKEN_FILE", "/nonexistent/token"),
        ("NIXFLEET_BRANCH", "--upload-pack=x"),
        ("NIXFLEET_PING_INTERVAL_MS", "soon"),
        ("NIXFLEET_REPORTED_VERSION", "3.1.5; rm -rf /"),
        ("NIXFLEET_LOG_FILE", "relative.log"),
        ("NIXFLEET_PID_FILE", "agent.pid"),
    ];
    for (var, value) in cases {
        let mut extra = vec![(*var, *value)];
        if *var == "NIXFLEET_TOKEN_FILE" {
            extra.push(("NIXFLEET_TOKEN", ""));
        }
        let e = match with(&extra) {
            Ok(_) => panic!("{var}={value:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(e.var, *var, "{var}={value:?} blamed {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

#[test]
fn missing_token_and_repo() {
    assert_eq!(
        with(&[("NIXFLEET_TOKEN", "")]).unwrap_err().var,
        "NIXFLEET_TOKEN"
    );
    assert_eq!(
        with(&[("NIXFLEET_REPO_DIR", "")]).unwrap_err().var,
        "NIXFLEET_REPO_URL"
    );
}

#[test]
fn token_sources_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("token"), "from-credential\n").unwrap();
    let file = dir.path().join("token-file");
    std::fs::write(&file, "NIXFLEET_TOKEN=from-file\n").unwrap();
    let creds_s = creds.to_str().unwrap();
    let file_s = file.to_str().unwrap();

    let c = parse(&[
        BASE[0],
        BASE[2],
        ("CREDENTIALS_DIRECTORY", creds_s),
        ("NIXFLEET_TOKEN_FILE", file_s),
        ("NIXFLEET_TOKEN", "from-env"),
    ])
    .unwrap();
    assert_eq!(c.token.expose(), "from-credential");
    let c = parse(&[
        BASE[0],
        BASE[2],
        ("NIXFLEET_TOKEN_FILE", file_s),
        ("NIXFLEET_TOKEN", "from-env"),
    ])
    .unwrap();
    assert_eq!(c.token.expose(), "from-file");
    let c = parse(&[BASE[0], BASE[2], ("NIXFLEET_TOKEN", "from-env")]).unwrap();
    assert_eq!(c.token.expose(), "from-env");
}

#[test]
fn token_file_formats() {
    assert_eq!(parse_token_file("abc\n").unwrap().expose(), "abc");
    assert_eq!(
        parse_token_file("# comment\nNIXFLEET_TOKEN=\"xyz\"\n")
            .unwrap()
            .expose(),
        "xyz"
    );
    assert!(parse_token_file("\n  \n").is_none());
    assert!(parse_token_file("NIXFLEET_TOKEN=").is_none());
}

#[test]
fn token_is_redacted() {
    let t = Token::new("hunter2");
    assert_eq!(format!("{t}"), "<redacted>");
    assert!(!format!("{t:?}").contains("hunter2"));
    let c = with(&[("NIXFLEET_TOKEN", "hunter2")]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn repository_credentials_are_redacted_but_not_ssh_user_names() {
    use super::redact_repo_url as r;
    assert_eq!(
        r("https://user:tok@github.com/me/cfg.git"),
        "https://***@github.com/me/cfg.git"
    );
    assert_eq!(
        r("https://ghp_secret@github.com/me/cfg.git"),
        "https://***@github.com/me/cfg.git"
    );
    assert_eq!(r("git@github.com:me/cfg.git"), "git@github.com:me/cfg.git");
    assert_eq!(r("ssh://git@host/me/cfg.git"), "ssh://git@host/me/cfg.git");
    assert_eq!(
        r("ssh://git:pw@host/me/cfg.git"),
        "ssh://git:***@host/me/cfg.git"
    );
    assert_eq!(r("/srv/git/cfg.git"), "/srv/git/cfg.git");
    assert_eq!(r("--branch"), "--branch");
}
