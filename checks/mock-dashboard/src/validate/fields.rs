//! Field access on one payload of an agent's frame, collecting the
//! problems found, and the small predicates the checks share.

use serde_json::{Map, Value};

/// Field access on one payload, collecting problems.
pub(super) struct Fields<'a> {
    pub(super) kind: &'a str,
    pub(super) map: &'a Map<String, Value>,
    pub(super) problems: &'a mut Vec<String>,
}

impl<'a> Fields<'a> {
    /// The fields of an object inside this payload, reporting into the same list.
    pub(super) fn nested<'b>(&'b mut self, map: &'b Map<String, Value>) -> Fields<'b> {
        Fields {
            kind: self.kind,
            map,
            problems: &mut *self.problems,
        }
    }

    pub(super) fn problem(&mut self, message: String) {
        self.problems.push(format!("{}: {message}", self.kind));
    }

    /// Flag fields the protocol does not define (a misspelt optional field).
    pub(super) fn known(&mut self, fields: &[&str]) {
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

    pub(super) fn prefix_known(&mut self, prefix: &str, fields: &[&str]) {
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

    pub(super) fn get(&mut self, key: &str) -> Option<&'a Value> {
        let v = self.map.get(key);
        if v.is_none() {
            self.problem(format!("missing field `{key}`"));
        }
        v
    }

    pub(super) fn wrong(&mut self, key: &str, expected: &str, v: &Value) {
        self.problem(format!("`{key}` must be {expected}, got {}", describe(v)));
    }

    /// A required string.
    pub(super) fn string(&mut self, key: &str) -> Option<&'a str> {
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
    pub(super) fn optional_string(&mut self, key: &str) -> Option<&'a str> {
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
    pub(super) fn command(&mut self, key: &str) {
        if self.string(key).is_some_and(str::is_empty) {
            self.problem(format!("`{key}` is empty"));
        }
    }

    /// A required string out of `allowed`.
    pub(super) fn one_of(&mut self, key: &str, allowed: &[&str]) -> Option<String> {
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
    pub(super) fn int(&mut self, key: &str, min: i64) -> Option<i64> {
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

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
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
    pub(super) fn nullable(
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

    /// A required generation: a git commit's short hash, exactly 7 hex digits,
    /// or empty when the agent does not know it yet. Upstream's agent sends
    /// the first 7 characters of the commit (`detectGeneration` in
    /// `internal/agent/heartbeat.go`) and its own integration test
    /// (`tests/integration/t12_isolated_repo_test.go`) compares
    /// `register.generation` with `git rev-parse --short=7 HEAD` exactly; the
    /// hub stores the string as sent and shows and compares 7 characters
    /// (`version_fetcher.go` `GetGitStatus`), so a longer one reaches other
    /// consumers of its data unlike upstream's.
    pub(super) fn generation(&mut self, key: &str) {
        if let Some(g) = self.string(key)
            && !g.is_empty()
            && !is_hex(g, 7, 7)
        {
            self.problem(format!(
                "`{key}` {g:?} is not a short commit hash (exactly 7 hex digits, as upstream's detectGeneration sends)"
            ));
        }
    }
}

pub(super) fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn is_colour(s: &str) -> bool {
    s.strip_prefix('#').is_some_and(|h| is_hex(h, 6, 6))
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
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
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {:?}", truncate(s, 60)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}
