//! `serve`: a dashboard until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use nixfleet_mock_dashboard::{DEFAULT_TOKEN, MockDashboard, Options};

use super::option_value;

/// Where `serve` listens unless told otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// Parsed `serve` arguments.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServeOptions {
    listen: SocketAddr,
    tokens: Vec<String>,
}

/// Parse `[--listen ADDR] [--token T]... [--token-file F]...`; token files are read here.
pub(crate) fn parse(args: &[String]) -> Result<ServeOptions, String> {
    let mut listen = None;
    let mut tokens = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = option_value("--listen", arg, &mut it)? {
            listen = Some(
                v.parse::<SocketAddr>()
                    .map_err(|e| format!("--listen {v}: {e} (expected e.g. 127.0.0.1:8000)"))?,
            );
        } else if let Some(v) = option_value("--token", arg, &mut it)? {
            if v.trim().is_empty() {
                return Err("--token: the token is empty".to_owned());
            }
            tokens.push(v.trim().to_owned());
        } else if let Some(v) = option_value("--token-file", arg, &mut it)? {
            tokens.push(read_token_file(Path::new(&v))?);
        } else {
            return Err(format!("unknown argument `{arg}`"));
        }
    }
    if tokens.is_empty() {
        tokens.push(DEFAULT_TOKEN.to_owned());
    }
    let listen = match listen {
        Some(l) => l,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|e| format!("default address: {e}"))?,
    };
    Ok(ServeOptions { listen, tokens })
}

/// A token file holds the bare token or a line `NIXFLEET_TOKEN=<token>`.
fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = token_from_text(&text);
    if token.is_empty() {
        return Err(format!("--token-file {}: no token in it", path.display()));
    }
    Ok(token)
}

fn token_from_text(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("NIXFLEET_TOKEN="))
        .unwrap_or(text)
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// Serve until SIGTERM or SIGINT.
pub(crate) async fn run(opts: ServeOptions) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let dash = match MockDashboard::start(Options {
        listen: opts.listen,
        tokens: opts.tokens,
        keep_output_frames: true,
        ..Options::default()
    })
    .await
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "nixfleet-mock-dashboard: cannot listen on {}: {e}",
                opts.listen
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "nixfleet-mock-dashboard: agents connect to {}, control API at {}/api",
        dash.ws_url(),
        dash.http_url()
    );
    let signal = wait_for_signal().await;
    match signal {
        Ok(name) => eprintln!("nixfleet-mock-dashboard: {name}, stopping"),
        Err(e) => eprintln!("nixfleet-mock-dashboard: cannot wait for signals: {e}"),
    }
    dash.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).expect("parse");
        assert_eq!(o.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(o.tokens, ["test-token"]);
    }

    #[test]
    fn options() {
        let o = parse(&args(&[
            "--listen",
            "0.0.0.0:9000",
            "--token",
            "a",
            "--token=b",
        ]))
        .expect("parse");
        assert_eq!(o.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(o.tokens, ["a", "b"]);
        assert!(parse(&args(&["--listen", "nowhere"])).is_err());
        assert!(parse(&args(&["--listen"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(parse(&args(&["--token", " "])).is_err());
        assert!(parse(&args(&["--token-file", "/nonexistent/token"])).is_err());
    }

    #[test]
    fn token_files() {
        assert_eq!(token_from_text("abc\n"), "abc");
        assert_eq!(token_from_text("  NIXFLEET_TOKEN=abc  \n"), "abc");
        assert_eq!(token_from_text("# x\nNIXFLEET_TOKEN=\"abc\"\n"), "abc");
        let dir = std::env::temp_dir().join(format!("mock-dash-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("token");
        std::fs::write(&file, "NIXFLEET_TOKEN=secret\n").expect("write");
        let o = parse(&args(&["--token-file", &file.to_string_lossy()])).expect("parse");
        assert_eq!(o.tokens, ["secret"]);
        std::fs::write(&file, "\n").expect("write");
        assert!(parse(&args(&["--token-file", &file.to_string_lossy()])).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
