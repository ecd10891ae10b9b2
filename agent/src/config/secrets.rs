//! The secrets of the configuration: the token (its sources and file
//! format) and the dashboard URL, whose credentials are never shown.

use std::fmt;
use std::path::{Path, PathBuf};

use super::parse::{ConfigError, Env, err};

/// Largest token file the agent reads.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The agent's secret: prints as a placeholder in `Debug` and `Display`, so it
/// cannot leak into a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses the content of a token file: the bare token or `NIXFLEET_TOKEN=<token>`.
pub fn parse_token_file(content: &str) -> Option<Token> {
    for line in content.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value = match line.strip_prefix("NIXFLEET_TOKEN=") {
            Some(rest) => rest.trim().trim_matches('"').trim_matches('\''),
            None => line,
        };
        if value.is_empty() {
            return None;
        }
        return Some(Token::new(value));
    }
    None
}

fn read_token_file(path: &Path, var: &'static str) -> Result<Token, ConfigError> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        err(
            var,
            format!("cannot read the token file {shown}: {e}; check the path and that the agent may read it"),
        )
    })?;
    let mut content = String::new();
    file.take(MAX_TOKEN_FILE)
        .read_to_string(&mut content)
        .map_err(|e| {
            err(
                var,
                format!("cannot read the token file {shown}: {e}; it must be a small text file"),
            )
        })?;
    parse_token_file(&content).ok_or_else(|| {
        err(
            var,
            format!("the token file {shown} is empty; write the agent token into it"),
        )
    })
}

/// Where the token comes from, so that it can be read again after a
/// rotation (agenix, sops-nix and `NIXFLEET_TOKEN_FILE` rewrite the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file: `$CREDENTIALS_DIRECTORY/token` or `NIXFLEET_TOKEN_FILE`.
    File {
        /// Its path.
        path: PathBuf,
        /// The variable that named it, for errors.
        var: &'static str,
    },
    /// `NIXFLEET_TOKEN`: fixed for the life of the process.
    Environment,
}

impl TokenSource {
    /// Reads the token again (blocking; a small file). `None` for a token
    /// from the environment, which cannot change.
    pub fn reread(&self) -> Option<Result<Token, ConfigError>> {
        match self {
            TokenSource::File { path, var } => Some(read_token_file(path, var)),
            TokenSource::Environment => None,
        }
    }
}

pub(super) fn token(env: &Env<'_>) -> Result<(Token, TokenSource), ConfigError> {
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join("token");
        if path.exists() {
            let var = "CREDENTIALS_DIRECTORY";
            return Ok((
                read_token_file(&path, var)?,
                TokenSource::File { path, var },
            ));
        }
    }
    if let Some(file) = env.get("NIXFLEET_TOKEN_FILE") {
        let path = PathBuf::from(file.trim());
        let var = "NIXFLEET_TOKEN_FILE";
        return Ok((
            read_token_file(&path, var)?,
            TokenSource::File { path, var },
        ));
    }
    if let Some(token) = env.get("NIXFLEET_TOKEN") {
        return Ok((Token::new(token.trim()), TokenSource::Environment));
    }
    Err(err(
        "NIXFLEET_TOKEN",
        "no token; set NIXFLEET_TOKEN_FILE to a file holding the agent token (or NIXFLEET_TOKEN, or a systemd credential named \"token\")",
    ))
}

pub(super) fn url(env: &Env<'_>) -> Result<String, ConfigError> {
    let Some(url) = env.get("NIXFLEET_URL") else {
        return Err(err(
            "NIXFLEET_URL",
            "not set; set it to the dashboard's WebSocket URL, e.g. wss://fleet.example.com/ws",
        ));
    };
    let url = url.trim().to_string();
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(' ') => Ok(url),
        _ => Err(err(
            "NIXFLEET_URL",
            format!(
                "{:?} is not a ws:// or wss:// URL; use e.g. wss://fleet.example.com/ws",
                redact_url(&url)
            ),
        )),
    }
}

/// A repository URL fit for a log line, `--check`, a status message or the
/// dashboard (`register.repo_url`): a credential in it is replaced by `***`.
/// For `http(s)://` the whole user-info part counts as one (a token is often
/// the user name: `https://<token>@host/…`); for `ssh://` and scp-like
/// `user@host:path` only a password (`user:password@`), since the user name is
/// not secret; query values as [`redact_url`] does.
pub fn redact_repo_url(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return redact_url(url);
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') && !userinfo.contains('/') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

/// `url` fit for a log line, an error or `--check`: a password or token in
/// it is replaced by `***` — the user-info part (`user:password@`), and the
/// value of every query parameter.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match authority_and_path.find('/') {
        Some(i) => authority_and_path.split_at(i),
        None => (authority_and_path, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let mut out = String::new();
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(&authority);
    out.push_str(path);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}
