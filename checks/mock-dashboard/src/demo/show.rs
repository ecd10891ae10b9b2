//! One transcript line per frame.

use std::fmt::Write as _;

use serde_json::Value;

pub(super) fn code(c: Option<u16>) -> String {
    c.map_or("-".to_owned(), |c| c.to_string())
}

/// Cut to `max` characters.
pub(super) fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

pub(super) fn text<'a>(p: &'a Value, key: &str) -> &'a str {
    p[key].as_str().unwrap_or("?")
}

/// A commit as `git log --oneline` shows it.
pub(super) fn generation(p: &Value) -> String {
    text(p, "generation").chars().take(7).collect()
}

/// One line about a frame.
pub(super) fn summarize(kind: &str, p: &Value) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = match kind {
        "register" => write!(
            s,
            "hostname={} {} agent={} os={} gen={} interval={}s location={} device={}",
            text(p, "hostname"),
            text(p, "host_type"),
            text(p, "agent_version"),
            text(p, "os_version"),
            generation(p),
            p["heartbeat_interval"],
            text(p, "location"),
            text(p, "device_type"),
        ),
        "heartbeat" => {
            let metrics = match &p["metrics"] {
                Value::Object(m) => {
                    let num = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    format!(
                        "cpu={:.1}% ram={:.1}% load={:.2}",
                        num("cpu"),
                        num("ram"),
                        num("load")
                    )
                }
                _ => "metrics=null".to_owned(),
            };
            let pending = match (p["pending_command"].as_str(), p["command_pid"].as_i64()) {
                (Some(c), Some(pid)) => format!("{c} (pid {pid})"),
                (Some(c), None) => c.to_owned(),
                _ => "-".to_owned(),
            };
            write!(s, "gen={} {metrics} pending={pending}", generation(p))
        }
        "output" => write!(
            s,
            "[{}{}] {}",
            text(p, "command"),
            if p["stream"] == "stderr" {
                ", stderr"
            } else {
                ""
            },
            short(text(p, "line"), 100)
        ),
        "status" => write!(
            s,
            "{} {} exit={} gen={} {:?}",
            text(p, "command"),
            text(p, "status"),
            p["exit_code"],
            generation(p),
            short(text(p, "message"), 80)
        ),
        "command_rejected" => write!(
            s,
            "{}: busy with {} (pid {})",
            text(p, "reason"),
            text(p, "current_command"),
            p["current_pid"]
        ),
        "test_progress" => {
            // the agent sends an empty result while tests run: print nothing then
            let result = match text(p, "result") {
                "" => String::new(),
                r => format!(": {}", short(r, 60)),
            };
            write!(
                s,
                "{}/{} done, {} passed, {}{result}",
                p["current"],
                p["total"],
                p["passed"],
                if p["running"] == true {
                    "running"
                } else {
                    "finished"
                },
            )
        }
        _ => write!(s, "{}", short(&p.to_string(), 100)),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries() {
        let hb = json!({"generation": "abcdef0123", "nixpkgs_version": "x",
            "pending_command": "test", "command_pid": 42,
            "metrics": {"cpu": 3.04, "ram": 40, "swap": 0, "load": 0.5}});
        assert_eq!(
            summarize("heartbeat", &hb),
            "gen=abcdef0 cpu=3.0% ram=40.0% load=0.50 pending=test (pid 42)"
        );
        let idle = json!({"generation": "abc1234", "pending_command": null, "command_pid": null, "metrics": null});
        assert_eq!(
            summarize("heartbeat", &idle),
            "gen=abc1234 metrics=null pending=-"
        );
        let out = json!({"line": "hello", "stream": "stderr", "command": "test", "is_error": true});
        assert_eq!(summarize("output", &out), "[test, stderr] hello");
        let st = json!({"status": "ok", "command": "pull", "exit_code": 0, "message": "Pull: Updated to abc1234", "generation": "abc1234"});
        assert_eq!(
            summarize("status", &st),
            "pull ok exit=0 gen=abc1234 \"Pull: Updated to abc1234\""
        );
        let tp =
            json!({"current": 2, "total": 3, "passed": 2, "running": true, "result": "T02 passed"});
        assert_eq!(
            summarize("test_progress", &tp),
            "2/3 done, 2 passed, running: T02 passed"
        );
        let running = json!({"current": 1, "total": 3, "passed": 1, "running": true, "result": ""});
        assert_eq!(
            summarize("test_progress", &running),
            "1/3 done, 1 passed, running"
        );
        assert_eq!(summarize("weird", &json!({"a": 1})), "{\"a\":1}");
        // Missing fields do not break the transcript.
        assert_eq!(summarize("status", &json!({})), "? ? exit=null gen=? \"?\"");
    }
}
