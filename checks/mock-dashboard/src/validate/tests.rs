use super::*;
use serde_json::json;

fn register() -> Value {
    json!({"type": "register", "payload": {
        "hostname": "host1", "host_type": "nixos", "agent_version": "0.1.0",
        "os_version": "24.11", "nixpkgs_version": "24.11.20241201.abc1234",
        "generation": "abc1234", "theme_color": "#ff00aa", "heartbeat_interval": 5,
        "location": "home", "device_type": "server", "repo_url": "",
        "repo_dir": "/var/lib/nixfleet-agent/repo"
    }})
}

fn heartbeat() -> Value {
    json!({"type": "heartbeat", "payload": {
        "generation": "abc1234", "nixpkgs_version": "24.11.20241201.abc1234",
        "pending_command": null, "command_pid": null,
        "metrics": {"cpu": 3.5, "ram": 40, "swap": 0, "load": 0.25},
        "update_status": {
            "git": {"status": "", "message": "", "checked_at": ""},
            "lock": {"status": "ok", "message": "Updated today", "checked_at": "2026-12-01T21:27:05Z"},
            "system": {"status": "working", "message": "Switch in progress", "checked_at": "2026-12-01T21:27:05Z"},
            "tests": {"status": "unknown", "message": "not checked yet", "checked_at": ""}
        }
    }})
}

fn problems(v: &Value, registered: bool) -> Vec<String> {
    check(&v.to_string(), registered).problems
}

/// Set `payload.key` to `value` (or remove it when `value` is None).
fn with(mut v: Value, key: &str, value: Option<Value>) -> Value {
    let Some(Value::Object(p)) = v.get_mut("payload") else {
        panic!("no payload")
    };
    match value {
        Some(x) => {
            p.insert(key.to_owned(), x);
        }
        None => {
            p.remove(key);
        }
    }
    v
}

#[test]
fn valid_frames_pass() {
    let c = check(&register().to_string(), false);
    assert_eq!(c.problems, Vec::<String>::new());
    assert_eq!(c.kind, "register");
    assert_eq!(
        c.register,
        Some(Registration {
            hostname: "host1".into(),
            heartbeat_interval: Some(5)
        })
    );
    let optional = with(register(), "binary_hash", Some(json!("a".repeat(64))));
    let optional = with(optional, "store_path", Some(json!("/nix/store/x")));
    let optional = with(optional, "theme_color", Some(json!("")));
    assert!(problems(&optional, false).is_empty());
    assert!(problems(&heartbeat(), true).is_empty());
    let busy = with(heartbeat(), "pending_command", Some(json!("test")));
    let busy = with(busy, "command_pid", Some(json!(1234)));
    let busy = with(busy, "metrics", Some(Value::Null));
    let busy = with(busy, "lock_hash", Some(json!("0f".repeat(32))));
    let busy = with(busy, "source_commit", Some(json!("2c4ef43")));
    let busy = with(busy, "needs_reboot", Some(json!(true)));
    assert!(problems(&busy, true).is_empty());
    let bad = problems(&with(heartbeat(), "needs_reboot", Some(json!("yes"))), true);
    assert_eq!(
        bad,
        vec!["heartbeat: `needs_reboot` must be a boolean, got string \"yes\"".to_owned()]
    );
    for v in [
        json!({"type":"output","payload":{"line":"hi","stream":"stdout","command":"test","is_error":false}}),
        json!({"type":"output","payload":{"line":"","stream":"stderr","command":"test","is_error":true}}),
        json!({"type":"status","payload":{"status":"ok","command":"pull","exit_code":0,"message":"Pull: Updated to abc1234","generation":"abc1234"}}),
        json!({"type":"status","payload":{"status":"stopped","command":"test","exit_code":-15,"message":"Stopped by user","generation":""}}),
        json!({"type":"command_rejected","payload":{"reason":"command already running","current_command":"test","current_pid":42}}),
        json!({"type":"test_progress","payload":{"current":1,"total":2,"passed":1,"running":true,"result":"T01 passed"}}),
        json!({"type":"test_progress","payload":{"current":2,"total":2,"passed":1,"running":false,"result":"1/2 passed"}}),
        json!({"type":"test_progress","payload":{"current":0,"total":0,"passed":0,"running":false,"result":"no tests"}}),
    ] {
        assert_eq!(problems(&v, true), Vec::<String>::new(), "{v}");
    }
}

#[test]
fn register_field_problems() {
    let cases: Vec<(Value, &str)> = vec![
        (
            with(register(), "host_type", Some(json!("linux"))),
            "host_type",
        ),
        (
            with(register(), "location", Some(json!("office"))),
            "location",
        ),
        (
            with(register(), "device_type", Some(json!("phone"))),
            "device_type",
        ),
        (
            with(register(), "theme_color", Some(json!("red"))),
            "theme_color",
        ),
        (
            with(register(), "theme_color", Some(json!("#12345"))),
            "theme_color",
        ),
        (
            with(register(), "heartbeat_interval", Some(json!(0))),
            "heartbeat_interval",
        ),
        (
            with(register(), "heartbeat_interval", Some(json!(1.5))),
            "heartbeat_interval",
        ),
        (
            with(register(), "heartbeat_interval", Some(json!("30"))),
            "heartbeat_interval",
        ),
        (
            with(register(), "generation", Some(json!(1234567))),
            "generation",
        ),
        (
            with(register(), "generation", Some(json!("unknown"))),
            "generation",
        ),
        // upstream's agent sends 7 characters (detectGeneration), its test
        // compares them exactly: the full hash is a violation
        (
            with(
                register(),
                "generation",
                Some(json!("abc1234abc1234abc1234abc1234abc1234abc12")),
            ),
            "generation",
        ),
        (
            with(register(), "generation", Some(json!("abc123"))),
            "generation",
        ),
        (
            with(register(), "hostname", Some(json!("host1.example.com"))),
            "hostname",
        ),
        (with(register(), "repo_dir", None), "repo_dir"),
        (
            with(register(), "agent_version", Some(json!(1))),
            "agent_version",
        ),
        (with(register(), "hostnme", Some(json!("x"))), "hostnme"),
        (
            with(register(), "binary_hash", Some(json!("abc"))),
            "binary_hash",
        ),
    ];
    for (v, field) in cases {
        let p = problems(&v, false);
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert!(p[0].contains(field), "{p:?} should name {field}");
        assert!(p[0].starts_with("register: "), "{p:?}");
    }
    // A register without a usable host name registers nothing.
    let c = check(&with(register(), "hostname", None).to_string(), false);
    assert!(c.register.is_none());
    assert!(c.problems[0].contains("missing field `hostname`"));
}

#[test]
fn heartbeat_field_problems() {
    let cases: Vec<(Value, &str)> = vec![
        (
            with(heartbeat(), "pending_command", None),
            "pending_command",
        ),
        (with(heartbeat(), "command_pid", None), "command_pid"),
        (with(heartbeat(), "metrics", None), "metrics"),
        (
            with(heartbeat(), "command_pid", Some(json!("12"))),
            "command_pid",
        ),
        (
            with(heartbeat(), "command_pid", Some(json!(12))),
            "command_pid",
        ),
        (
            with(heartbeat(), "pending_command", Some(json!(3))),
            "pending_command",
        ),
        (with(heartbeat(), "metrics", Some(json!([1, 2]))), "metrics"),
        (
            with(
                heartbeat(),
                "metrics",
                Some(json!({"cpu": "3", "ram": 1, "swap": 0, "load": 0})),
            ),
            "metrics.cpu",
        ),
        (
            with(
                heartbeat(),
                "metrics",
                Some(json!({"ram": 1, "swap": 0, "load": 0})),
            ),
            "metrics.cpu",
        ),
        (
            with(
                heartbeat(),
                "metrics",
                Some(json!({"cpu": 300, "ram": 1, "swap": 0, "load": 0})),
            ),
            "metrics.cpu",
        ),
        (
            with(
                heartbeat(),
                "metrics",
                Some(json!({"cpu": 1, "ram": 1, "swap": 0, "load": 0, "disk": 3})),
            ),
            "metrics.disk",
        ),
        (
            with(heartbeat(), "lock_hash", Some(json!("xyz"))),
            "lock_hash",
        ),
        (
            with(heartbeat(), "store_free_mib", Some(json!("lots"))),
            "store_free_mib",
        ),
        (
            with(heartbeat(), "boot_free_mib", Some(json!(-3))),
            "boot_free_mib",
        ),
        (with(heartbeat(), "generation", None), "generation"),
    ];
    for (v, field) in cases {
        let p = problems(&v, true);
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert!(p[0].contains(field), "{p:?} should name {field}");
    }
}

#[test]
fn other_payload_problems() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type":"output","payload":{"line":"x","stream":"stderr","command":"test","is_error":false}}),
            "is_error",
        ),
        (
            json!({"type":"output","payload":{"line":"x","stream":"err","command":"test","is_error":true}}),
            "stream",
        ),
        (
            json!({"type":"output","payload":{"line":"a\nb","stream":"stdout","command":"test","is_error":false}}),
            "newline",
        ),
        (
            json!({"type":"output","payload":{"line":"x","stream":"stdout","is_error":false}}),
            "command",
        ),
        (
            json!({"type":"status","payload":{"status":"done","command":"pull","exit_code":0,"message":"","generation":"abc1234"}}),
            "status",
        ),
        (
            json!({"type":"status","payload":{"status":"ok","command":"pull","exit_code":"0","message":"","generation":"abc1234"}}),
            "exit_code",
        ),
        (
            json!({"type":"status","payload":{"status":"ok","command":"pull","exit_code":2,"message":"","generation":"abc1234"}}),
            "exit_code 2",
        ),
        (
            json!({"type":"status","payload":{"status":"error","command":"pull","exit_code":1,"generation":"abc1234"}}),
            "message",
        ),
        (
            json!({"type":"command_rejected","payload":{"reason":"busy","current_command":"test","current_pid":null}}),
            "current_pid",
        ),
        (
            json!({"type":"test_progress","payload":{"current":3,"total":2,"passed":1,"running":true,"result":""}}),
            "greater than `total`",
        ),
        (
            json!({"type":"test_progress","payload":{"current":1,"total":2,"passed":2,"running":true,"result":""}}),
            "greater than `current`",
        ),
        (
            json!({"type":"test_progress","payload":{"current":1,"total":2,"passed":1,"running":"no","result":""}}),
            "running",
        ),
        (
            json!({"type":"test_progress","payload":{"current":0,"total":0,"passed":0,"running":false,"result":"0/0 passed"}}),
            "no tests",
        ),
        (
            json!({"type":"test_progress","payload":{"current":2,"total":2,"passed":2,"running":false,"result":"done"}}),
            "2/2 passed",
        ),
    ];
    for (v, needle) in cases {
        let p = problems(&v, true);
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert!(p[0].contains(needle), "{p:?} should contain {needle}");
    }
}

#[test]
fn envelope_problems() {
    let c = check("{not json", true);
    assert_eq!(c.kind, MALFORMED);
    assert_eq!(c.payload, json!("{not json"));
    assert!(c.problems[0].starts_with("malformed JSON"));

    let c = check("[1,2]", true);
    assert_eq!(c.kind, MALFORMED);
    assert_eq!(c.problems.len(), 1);

    let c = check(r#"{"payload":{}}"#, true);
    assert_eq!(c.kind, MALFORMED);
    assert!(c.problems[0].contains("missing `type`"));

    let c = check(r#"{"type":7,"payload":{}}"#, true);
    assert_eq!(c.kind, MALFORMED);

    let c = check(r#"{"type":"heartbeet","payload":{}}"#, true);
    assert_eq!(c.kind, "heartbeet");
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].contains("unknown frame type `heartbeet`"));

    let c = check(r#"{"type":"heartbeat"}"#, true);
    assert!(
        c.problems[0].contains("missing `payload`"),
        "{:?}",
        c.problems
    );
    assert_eq!(c.payload, Value::Null);

    let c = check(r#"{"type":"heartbeat","payload":[]}"#, true);
    assert!(c.problems[0].contains("must be an object"));

    let mut v = heartbeat();
    v["extra"] = json!(1);
    let p = problems(&v, true);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("unexpected top-level field `extra`"));
}

#[test]
fn register_must_come_first() {
    let p = problems(&heartbeat(), false);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("heartbeat before register"));
    let p = problems(&register(), true);
    assert_eq!(p, ["a second register on the same connection"]);
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("abc", 5), "abc");
}

#[test]
fn update_status_problems() {
    let base = heartbeat();
    assert!(
        problems(&base, true).is_empty(),
        "{:?}",
        problems(&base, true)
    );
    let mut missing = base.clone();
    missing["payload"]
        .as_object_mut()
        .unwrap()
        .remove("update_status");
    assert!(
        problems(&missing, true)
            .iter()
            .any(|p| p.contains("missing field `update_status`"))
    );
    let mut bad = base.clone();
    bad["payload"]["update_status"]["system"]["status"] = json!("green");
    bad["payload"]["update_status"]["lock"]["checked_at"] = json!("yesterday");
    bad["payload"]["update_status"]["tests"]
        .as_object_mut()
        .unwrap()
        .remove("message");
    bad["payload"]["update_status"]["extra"] = json!({});
    let p = problems(&bad, true);
    for needle in [
        "update_status.system.status",
        "not RFC 3339",
        "update_status.tests.message",
        "update_status.extra",
    ] {
        assert!(p.iter().any(|x| x.contains(needle)), "{needle}: {p:?}");
    }
    assert!(is_rfc3339_utc("2026-12-01T21:27:05Z"));
    assert!(is_rfc3339_utc("2026-12-01T21:27:05.123Z"));
    assert!(!is_rfc3339_utc("2026-12-01 21:27:05Z"));
    assert!(!is_rfc3339_utc("2026-12-01T21:27:05+01:00"));
}

#[test]
fn operation_progress_problems() {
    let ok = json!({"type": "operation_progress", "payload": {"progress": {
        "pull": {"current": 0, "total": 4, "status": "in_progress"},
        "tests": {"current": 1, "total": 2, "results": ["pass", "pending"], "status": "in_progress"}
    }}});
    assert!(problems(&ok, true).is_empty(), "{:?}", problems(&ok, true));
    let bad = json!({"type": "operation_progress", "payload": {"progress": {
        "pull": {"current": 5, "total": 4, "status": "running"},
        "tests": {"current": 0, "total": 9, "results": ["pass","pass","pass","pass","pass","pass","pass","pass","ok"], "status": "complete"},
        "deploy": {}
    }}});
    let p = problems(&bad, true);
    for needle in [
        "greater than `total`",
        "`status`",
        "at most 8",
        "other than pass",
        "progress.deploy",
    ] {
        assert!(p.iter().any(|x| x.contains(needle)), "{needle}: {p:?}");
    }
    let empty = json!({"type": "operation_progress", "payload": {"progress": {}}});
    assert!(
        problems(&empty, true)
            .iter()
            .any(|x| x.contains("names no phase"))
    );
}
