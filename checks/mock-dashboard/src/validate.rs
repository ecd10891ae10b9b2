//! Checks what an agent sends against `protocol.md`, as plain JSON.
//!
//! Deliberately independent of the agent's own types: a field the agent
//! misspells is a violation here, not an agreement with itself.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Kind of a frame that is not a JSON object with a string `type`.
pub(crate) const MALFORMED: &str = "<malformed>";

/// Kind of a binary frame.
pub(crate) const BINARY: &str = "<binary>";

/// Raw text kept of a malformed frame.
const MAX_RAW: usize = 64 * 1024;

/// The frame types an agent may send.
const AGENT_TYPES: [&str; 6] = [
    "register",
    "heartbeat",
    "output",
    "status",
    "command_rejected",
    "test_progress",
];

/// A checked frame.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The frame's type, or [`MALFORMED`].
    pub(crate) kind: Cow<'static, str>,
    /// The payload (see [`crate::Frame::payload`]).
    pub(crate) payload: Value,
    /// Everything wrong with it.
    pub(crate) problems: Vec<String>,
    /// For a `register` with a usable host name: what the dashboard needs.
    pub(crate) register: Option<Registration>,
}

/// The parts of a `register` the dashboard acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) hostname: String,
    /// `None` when missing or invalid.
    pub(crate) heartbeat_interval: Option<u64>,
}

/// Parse and check one text frame. `registered` tells whether this connection
/// already sent a `register`.
pub(crate) fn check(text: &str, registered: bool) -> Checked {
    let mut problems = Vec::new();
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("malformed JSON: {e}"));
            return Checked {
                kind: Cow::Borrowed(MALFORMED),
                payload: Value::String(truncate(text, MAX_RAW).to_owned()),
                problems,
                register: None,
            };
        }
    };
    let Value::Object(mut envelope) = value else {
        problems.push(format!(
            "a frame must be a JSON object {{\"type\", \"payload\"}}, got {}",
            describe(&value)
        ));
        return malformed(value, problems);
    };
    let kind = match envelope.get("type") {
        Some(Value::String(s)) => known_kind(s),
        Some(other) => {
            problems.push(format!("`type` must be a string, got {}", describe(other)));
            return malformed(Value::Object(envelope), problems);
        }
        None => {
            problems.push("missing `type`".to_owned());
            return malformed(Value::Object(envelope), problems);
        }
    };
    for key in envelope.keys() {
        if key != "type" && key != "payload" {
            problems.push(format!(
                "{kind}: unexpected top-level field `{key}` (a frame is {{\"type\", \"payload\"}})"
            ));
        }
    }
    let payload = envelope.remove("payload");
    let mut register = None;
    if !AGENT_TYPES.contains(&kind.as_ref()) {
        problems.push(format!(
            "unknown frame type `{kind}` (an agent sends {})",
            AGENT_TYPES.join(", ")
        ));
    } else if kind != "register" && !registered {
        problems.push(format!(
            "{kind} before register: register must be the first frame on every connection"
        ));
    } else if kind == "register" && registered {
        problems.push("a second register on the same connection".to_owned());
    }
    match &payload {
        None => problems.push(format!("{kind}: missing `payload`")),
        Some(Value::Object(map)) => {
            let mut f = Fields {
                kind: &kind,
                map,
                problems: &mut problems,
            };
            match kind.as_ref() {
                "register" => register = check_register(&mut f),
                "heartbeat" => check_heartbeat(&mut f),
                "output" => check_output(&mut f),
                "status" => check_status(&mut f),
                "command_rejected" => check_command_rejected(&mut f),
                "test_progress" => check_test_progress(&mut f),
                _ => {}
            }
        }
        Some(other) => problems.push(format!(
            "{kind}: `payload` must be an object, got {}",
            describe(other)
        )),
    }
    Checked {
        kind,
        payload: payload.unwrap_or(Value::Null),
        problems,
        register,
    }
}

fn malformed(value: Value, problems: Vec<String>) -> Checked {
    Checked {
        kind: Cow::Borrowed(MALFORMED),
        payload: value,
        problems,
        register: None,
    }
}

/// Avoid an allocation for the known types (the output path runs a million times).
fn known_kind(s: &str) -> Cow<'static, str> {
    match AGENT_TYPES.iter().find(|t| **t == s) {
        Some(t) => Cow::Borrowed(t),
        None => Cow::Owned(s.to_owned()),
    }
}

fn check_register(f: &mut Fields<'_>) -> Option<Registration> {
    f.known(&[
        "hostname",
        "host_type",
        "agent_version",
        "os_version",
        "nixpkgs_version",
        "generation",
        "theme_color",
        "heartbeat_interval",
        "location",
        "device_type",
        "repo_url",
        "repo_dir",
        "source_commit",
        "store_path",
        "binary_hash",
    ]);
    let hostname = f.string("hostname").and_then(|h| {
        if h.is_empty() {
            f.problem("`hostname` is empty".to_owned());
            None
        } else if !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            f.problem(format!(
                "`hostname` {h:?} is not a host name without domain (letters, digits, - and _)"
            ));
            // Still usable as a key.
            Some(h.to_owned())
        } else {
            Some(h.to_owned())
        }
    });
    f.one_of("host_type", &["nixos", "macos"]);
    if f.string("agent_version").is_some_and(str::is_empty) {
        f.problem("`agent_version` is empty".to_owned());
    }
    f.string("os_version");
    f.string("nixpkgs_version");
    f.generation("generation");
    if let Some(c) = f.string("theme_color")
        && !c.is_empty()
        && !is_colour(c)
    {
        f.problem(format!("`theme_color` {c:?} is neither empty nor #rrggbb"));
    }
    let interval = f
        .int("heartbeat_interval", 1)
        .and_then(|i| u64::try_from(i).ok());
    f.one_of("location", &["home", "work", "cloud"]);
    f.one_of("device_type", &["server", "desktop", "laptop", "gaming"]);
    f.string("repo_url");
    if f.string("repo_dir").is_some_and(str::is_empty) {
        f.problem("`repo_dir` is empty".to_owned());
    }
    f.optional_string("source_commit");
    f.optional_string("store_path");
    if let Some(h) = f.optional_string("binary_hash")
        && !h.is_empty()
        && !is_hex(h, 64, 64)
    {
        f.problem(format!("`binary_hash` {h:?} is not a SHA-256 in hex"));
    }
    hostname.map(|hostname| Registration {
        hostname,
        heartbeat_interval: interval,
    })
}

fn check_heartbeat(f: &mut Fields<'_>) {
    f.known(&[
        "generation",
        "nixpkgs_version",
        "pending_command",
        "command_pid",
        "metrics",
        "lock_hash",
        "update_status",
    ]);
    f.generation("generation");
    f.string("nixpkgs_version");
    let pending = f.nullable(
        "pending_command",
        "a string or null",
        Value::is_string,
        |f, v| {
            if v.as_str() == Some("") {
                f.problem("`pending_command` is empty (null when idle)".to_owned());
            }
        },
    );
    let pid = f.nullable(
        "command_pid",
        "an integer or null",
        |v| v.as_i64().is_some(),
        |f, v| {
            if v.as_i64().is_some_and(|p| p < 1) {
                f.problem(format!("`command_pid` {v} is not a process id"));
            }
        },
    );
    if pending == Some(false) && pid == Some(true) {
        f.problem("`command_pid` is set but `pending_command` is null".to_owned());
    }
    let map = f.map;
    if let Some(Value::Object(m)) = map.get("metrics") {
        let mut mf = Fields {
            kind: f.kind,
            map: m,
            problems: &mut *f.problems,
        };
        mf.prefix_known("metrics", &["cpu", "ram", "swap", "load"]);
        for key in ["cpu", "ram", "swap", "load"] {
            match m.get(key) {
                None => mf.problem(format!("missing field `metrics.{key}`")),
                Some(v) => match v.as_f64() {
                    None => mf.problem(format!(
                        "`metrics.{key}` must be a number, got {}",
                        describe(v)
                    )),
                    Some(x) if x < 0.0 || (key != "load" && x > 100.5) => mf.problem(format!(
                        "`metrics.{key}` = {x} is out of range{}",
                        if key == "load" { "" } else { " (a percentage)" }
                    )),
                    Some(_) => {}
                },
            }
        }
    } else {
        f.nullable("metrics", "an object or null", Value::is_object, |_, _| {});
    }
    if let Some(h) = f.optional_string("lock_hash")
        && !is_hex(h, 64, 64)
    {
        f.problem(format!("`lock_hash` {h:?} is not a SHA-256 in hex"));
    }
    if let Some(v) = f.map.get("update_status")
        && !v.is_object()
        && !v.is_null()
    {
        f.problem(format!(
            "`update_status` must be an object, got {}",
            describe(v)
        ));
    }
}

fn check_output(f: &mut Fields<'_>) {
    f.known(&["line", "stream", "command", "is_error"]);
    if f.string("line").is_some_and(|l| l.contains('\n')) {
        f.problem("`line` contains a newline (one frame per line)".to_owned());
    }
    let stream = f.one_of("stream", &["stdout", "stderr"]);
    f.command("command");
    if let (Some(stream), Some(is_error)) = (stream, f.bool("is_error"))
        && is_error != (stream == "stderr")
    {
        f.problem(format!(
            "`is_error` is {is_error} for stream {stream} (true exactly for stderr)"
        ));
    }
}

fn check_status(f: &mut Fields<'_>) {
    f.known(&["status", "command", "exit_code", "message", "generation"]);
    let status = f.one_of("status", &["ok", "error", "stopped"]);
    f.command("command");
    let code = f.int("exit_code", i64::MIN);
    f.string("message");
    f.generation("generation");
    if let (Some("ok"), Some(code)) = (status.as_deref(), code)
        && code != 0
    {
        f.problem(format!("status ok with exit_code {code}"));
    }
}

fn check_command_rejected(f: &mut Fields<'_>) {
    f.known(&["reason", "current_command", "current_pid"]);
    f.string("reason");
    f.command("current_command");
    f.int("current_pid", 0);
}

fn check_test_progress(f: &mut Fields<'_>) {
    f.known(&["current", "total", "passed", "running", "result"]);
    let current = f.int("current", 0);
    let total = f.int("total", 0);
    let passed = f.int("passed", 0);
    let running = f.bool("running");
    let result = f.string("result").map(str::to_owned);
    if let (Some(c), Some(t)) = (current, total)
        && c > t
    {
        f.problem(format!("`current` {c} is greater than `total` {t}"));
    }
    if let (Some(p), Some(c)) = (passed, current)
        && p > c
    {
        f.problem(format!("`passed` {p} is greater than `current` {c}"));
    }
    if let (Some(false), Some(c), Some(t), Some(p), Some(r)) =
        (running, current, total, passed, result)
    {
        if t == 0 && r != "no tests" {
            f.problem(format!(
                "final test_progress with total 0: `result` is {r:?}, not \"no tests\""
            ));
        } else if t > 0 && c == t && !r.contains(&format!("{p}/{t}")) {
            f.problem(format!(
                "final test_progress: `result` {r:?} does not read like \"{p}/{t} passed\""
            ));
        }
    }
}

/// Field access on one payload, collecting problems.
struct Fields<'a> {
    kind: &'a str,
    map: &'a Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl<'a> Fields<'a> {
    fn problem(&mut self, message: String) {
        self.problems.push(format!("{}: {message}", self.kind));
    }

    /// Flag fields the protocol does not define (a misspelt optional field).
    fn known(&mut self, fields: &[&str]) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !fields.contains(&k.as_str()))
            .map(|k| format!("unknown field `{k}` (the dashboard ignores it)"))
            .collect();
        for u in unknown {
            self.problem(u);
        }
    }

    fn prefix_known(&mut self, prefix: &str, fields: &[&str]) {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !fields.contains(&k.as_str()))
            .map(|k| format!("unknown field `{prefix}.{k}`"))
            .collect();
        for u in unknown {
            self.problem(u);
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        let v = self.map.get(key);
        if v.is_none() {
            self.problem(format!("missing field `{key}`"));
        }
        v
    }

    fn wrong(&mut self, key: &str, expected: &str, v: &Value) {
        self.problem(format!("`{key}` must be {expected}, got {}", describe(v)));
    }

    /// A required string.
    fn string(&mut self, key: &str) -> Option<&'a str> {
        let v = self.get(key)?;
        match v.as_str() {
            Some(s) => Some(s),
            None => {
                self.wrong(key, "a string", v);
                None
            }
        }
    }

    /// An optional string: absent, null or a string.
    fn optional_string(&mut self, key: &str) -> Option<&'a str> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                self.wrong(key, "a string", v);
                None
            }
        }
    }

    /// A required, non-empty command name.
    fn command(&mut self, key: &str) {
        if self.string(key).is_some_and(str::is_empty) {
            self.problem(format!("`{key}` is empty"));
        }
    }

    /// A required string out of `allowed`.
    fn one_of(&mut self, key: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(key)?;
        if allowed.contains(&s) {
            Some(s.to_owned())
        } else {
            self.problem(format!(
                "`{key}` is {s:?}, not one of {}",
                allowed.join(", ")
            ));
            None
        }
    }

    /// A required integer ≥ `min`.
    fn int(&mut self, key: &str, min: i64) -> Option<i64> {
        let v = self.get(key)?;
        match v.as_i64() {
            Some(i) if i >= min => Some(i),
            Some(i) => {
                self.problem(format!("`{key}` is {i}, less than {min}"));
                None
            }
            None => {
                self.wrong(key, "an integer", v);
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong(key, "a boolean", v);
                None
            }
        }
    }

    /// A required field that is null or passes `is_value` (then `more` checks
    /// it further). Returns whether it is non-null, `None` when missing or wrong.
    fn nullable(
        &mut self,
        key: &str,
        expected: &str,
        is_value: impl Fn(&Value) -> bool,
        more: impl FnOnce(&mut Self, &Value),
    ) -> Option<bool> {
        let v = self.get(key)?;
        if v.is_null() {
            Some(false)
        } else if is_value(v) {
            more(self, v);
            Some(true)
        } else {
            self.wrong(key, expected, v);
            None
        }
    }

    /// A required generation: a git commit (7–40 hex digits), or empty when
    /// the agent does not know it yet.
    fn generation(&mut self, key: &str) {
        if let Some(g) = self.string(key)
            && !g.is_empty()
            && !is_hex(g, 7, 40)
        {
            self.problem(format!(
                "`{key}` {g:?} is not a git commit (7 to 40 hex digits)"
            ));
        }
    }
}

fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_colour(s: &str) -> bool {
    s.strip_prefix('#').is_some_and(|h| is_hex(h, 6, 6))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A short description of a JSON value for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {:?}", truncate(s, 60)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
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
            "metrics": {"cpu": 3.5, "ram": 40, "swap": 0, "load": 0.25}
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
        let busy = with(busy, "update_status", Some(json!({"anything": 1})));
        assert!(problems(&busy, true).is_empty());
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
}
