//! Checks what an agent sends against `protocol.md`, as plain JSON.
//!
//! Deliberately independent of the agent's own types: a field the agent
//! misspells is a violation here, not an agreement with itself.

use std::borrow::Cow;

use serde_json::Value;

mod fields;
use fields::{Fields, describe, is_colour, is_hex, truncate};

/// Kind of a frame that is not a JSON object with a string `type`.
pub(crate) const MALFORMED: &str = "<malformed>";

/// Kind of a binary frame.
pub(crate) const BINARY: &str = "<binary>";

/// Raw text kept of a malformed frame.
const MAX_RAW: usize = 64 * 1024;

/// The frame types an agent may send.
const AGENT_TYPES: [&str; 7] = [
    "register",
    "heartbeat",
    "output",
    "status",
    "command_rejected",
    "test_progress",
    "operation_progress",
];

/// A compartment's statuses (`""`: not reported, as upstream's agent sends `git`).
const CHECK_STATUSES: [&str; 6] = ["", "ok", "outdated", "error", "unknown", "working"];

/// A progress phase's statuses (upstream `messages.go` `PhaseProgress`).
const PHASE_STATUSES: [&str; 4] = ["pending", "in_progress", "complete", "error"];

/// Most test dots (upstream caps the tests phase at 8 for display).
const MAX_TEST_DOTS: usize = 8;

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
                "operation_progress" => check_operation_progress(&mut f),
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
        "source_commit",
        "store_path",
        "binary_hash",
        // This agent's extension. The hub decodes every payload with
        // json.Unmarshal into a struct (messages.go `ParsePayload`), which
        // ignores fields it does not know, so it is accepted and checked here.
        "needs_reboot",
        // likewise: free MiB of the Nix store's filesystem and of /boot
        "store_free_mib",
        "boot_free_mib",
    ]);
    for key in ["store_free_mib", "boot_free_mib"] {
        if let Some(v) = f.map.get(key)
            && !v.is_u64()
        {
            f.problem(format!(
                "`{key}` must be a whole number of MiB, got {}",
                describe(v)
            ));
        }
    }
    if let Some(v) = f.map.get("needs_reboot")
        && !v.is_boolean()
    {
        f.problem(format!(
            "`needs_reboot` must be a boolean, got {}",
            describe(v)
        ));
    }
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
        let mut mf = f.nested(m);
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
    f.optional_string("source_commit");
    f.optional_string("store_path");
    if let Some(h) = f.optional_string("binary_hash")
        && !h.is_empty()
        && !is_hex(h, 64, 64)
    {
        f.problem(format!("`binary_hash` {h:?} is not a SHA-256 in hex"));
    }
    match f.map.get("update_status") {
        None => f.problem("missing field `update_status`".to_owned()),
        Some(Value::Object(m)) => {
            let mut uf = f.nested(m);
            check_update_status(&mut uf);
        }
        Some(v) => f.problem(format!(
            "`update_status` must be an object, got {}",
            describe(v)
        )),
    }
}

/// `update_status`: `git`, `lock`, `system`, `tests`, each
/// `{status, message, checked_at}` (upstream `messages.go` `StatusCheck`).
fn check_update_status(f: &mut Fields<'_>) {
    const PARTS: [&str; 4] = ["git", "lock", "system", "tests"];
    f.prefix_known("update_status", &PARTS);
    for part in PARTS {
        let Some(v) = f.map.get(part) else {
            f.problem(format!("missing field `update_status.{part}`"));
            continue;
        };
        let Value::Object(m) = v else {
            f.problem(format!(
                "`update_status.{part}` must be an object, got {}",
                describe(v)
            ));
            continue;
        };
        let mut cf = f.nested(m);
        cf.prefix_known(
            &format!("update_status.{part}"),
            &["status", "message", "checked_at"],
        );
        match m.get("status").map(|s| (s, s.as_str())) {
            Some((_, Some(s))) if CHECK_STATUSES.contains(&s) => {}
            Some((v, _)) => cf.problem(format!(
                "`update_status.{part}.status` is {}, not one of ok, outdated, error, unknown, working (or empty)",
                describe(v)
            )),
            None => cf.problem(format!("missing field `update_status.{part}.status`")),
        }
        for key in ["message", "checked_at"] {
            match m.get(key) {
                Some(Value::String(_)) => {}
                Some(v) => cf.problem(format!(
                    "`update_status.{part}.{key}` must be a string, got {}",
                    describe(v)
                )),
                None => cf.problem(format!("missing field `update_status.{part}.{key}`")),
            }
        }
        if let Some(Value::String(at)) = m.get("checked_at")
            && !at.is_empty()
            && !is_rfc3339_utc(at)
        {
            cf.problem(format!(
                "`update_status.{part}.checked_at` {at:?} is not RFC 3339 UTC (e.g. 2026-12-01T21:27:05Z)"
            ));
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1) && b.len() > 21))
}

/// `operation_progress`: `{progress: {pull|lock|system: {current, total,
/// status}, tests: {current, total, results, status}}}` (upstream
/// `messages.go` `OperationProgress`).
fn check_operation_progress(f: &mut Fields<'_>) {
    f.known(&["progress"]);
    let Some(v) = f.map.get("progress") else {
        f.problem("missing field `progress`".to_owned());
        return;
    };
    let Value::Object(m) = v else {
        f.problem(format!("`progress` must be an object, got {}", describe(v)));
        return;
    };
    let mut pf = f.nested(m);
    pf.prefix_known("progress", &["pull", "lock", "system", "tests"]);
    if m.is_empty() {
        pf.problem("`progress` names no phase".to_owned());
    }
    for (phase, v) in m {
        let Value::Object(pm) = v else {
            pf.problem(format!(
                "`progress.{phase}` must be an object, got {}",
                describe(v)
            ));
            continue;
        };
        let mut ph = pf.nested(pm);
        let tests = phase == "tests";
        let known: &[&str] = if tests {
            &["current", "total", "results", "status"]
        } else {
            &["current", "total", "status"]
        };
        ph.prefix_known(&format!("progress.{phase}"), known);
        let current = ph.int("current", 0);
        let total = ph.int("total", 0);
        ph.one_of("status", &PHASE_STATUSES);
        if let (Some(c), Some(t)) = (current, total)
            && c > t
        {
            ph.problem(format!(
                "`progress.{phase}`: `current` {c} is greater than `total` {t}"
            ));
        }
        if tests {
            match pm.get("results") {
                Some(Value::Array(list)) => {
                    if list.len() > MAX_TEST_DOTS {
                        ph.problem(format!(
                            "`progress.tests.results` has {} entries (at most {MAX_TEST_DOTS} are shown)",
                            list.len()
                        ));
                    }
                    if list
                        .iter()
                        .any(|r| !matches!(r.as_str(), Some("pass" | "fail" | "pending")))
                    {
                        ph.problem("`progress.tests.results` holds something other than pass, fail, pending".to_owned());
                    }
                    if let Some(t) = total
                        && t != list.len() as i64
                    {
                        ph.problem(format!(
                            "`progress.tests.total` {t} differs from the {} results",
                            list.len()
                        ));
                    }
                }
                Some(other) => ph.problem(format!(
                    "`progress.tests.results` must be an array, got {}",
                    describe(other)
                )),
                None => ph.problem("missing field `progress.tests.results`".to_owned()),
            }
        }
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
    // upstream's hub tolerates these four (protocol.md, "status")
    let status = f.one_of("status", &["ok", "error", "stopped", "warning"]);
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

#[cfg(test)]
mod tests;
