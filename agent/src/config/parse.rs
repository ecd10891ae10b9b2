//! Reading one variable of the agent's configuration: the error that names
//! it, and the small parsers the settings share (a choice of words, a
//! duration in milliseconds, a flag, a colour, an absolute path).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An invalid configuration: which variable, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable at fault.
    pub var: &'static str,
    /// What is wrong and how to fix it (never contains the token).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(super) fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Reads one variable; empty counts as unset.
pub(super) struct Env<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }
}

/// The names in `NIXFLEET_PASS_ENV` (separated by spaces or commas): more
/// variables of the agent's environment that its operations' children get.
/// A name must be a plain variable name; the agent's own (`NIXFLEET_*`,
/// the token among them) and `CREDENTIALS_DIRECTORY` are refused.
pub fn pass_names(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|n| !n.is_empty())
    {
        let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(format!("{name:?} is not a variable name"));
        }
        if name.starts_with("NIXFLEET_") || name == "CREDENTIALS_DIRECTORY" {
            return Err(format!(
                "{name} is the agent's own and never reaches its children"
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

pub(super) fn one_of(
    env: &Env<'_>,
    var: &'static str,
    allowed: &[&str],
    default: &str,
) -> Result<String, ConfigError> {
    match env.get(var) {
        None => Ok(default.to_string()),
        Some(v) => {
            let v = v.trim().to_ascii_lowercase();
            if allowed.contains(&v.as_str()) {
                Ok(v)
            } else {
                Err(err(
                    var,
                    format!(
                        "{v:?} is not one of {}; set one of those",
                        allowed.join(", ")
                    ),
                ))
            }
        }
    }
}

pub(super) fn millis(
    env: &Env<'_>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms >= 1 => Ok(Duration::from_millis(ms)),
            _ => Err(err(
                var,
                format!(
                    "{v:?} is not a whole number of milliseconds ≥ 1; unset it to use the default"
                ),
            )),
        },
    }
}

/// A yes/no variable: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`.
pub(super) fn flag(env: &Env<'_>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match env.get(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(err(
                var,
                format!("{v:?} is not true or false; use 1 or 0, or unset it"),
            )),
        },
    }
}

pub(super) fn is_hex_color(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].chars().all(|c| c.is_ascii_hexdigit())
}

/// An optional absolute path from `var`.
pub(super) fn absolute_path(
    env: &Env<'_>,
    var: &'static str,
) -> Result<Option<PathBuf>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if Path::new(v.trim()).is_absolute() => Ok(Some(PathBuf::from(v.trim()))),
        Some(v) => Err(err(
            var,
            format!(
                "{:?} is not an absolute path; use e.g. /var/log/nixfleet-agent.log",
                v.trim()
            ),
        )),
    }
}
