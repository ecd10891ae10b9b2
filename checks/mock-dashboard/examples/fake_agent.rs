//! A tiny stand-in for `nixfleet-agent`, just enough for the `demo` to be
//! tested on its own: register, heartbeats, `pull`, `test` with progress,
//! `stop`, and a clean close on SIGTERM. Not a reference implementation.
//!
//! Reads NIXFLEET_URL, NIXFLEET_TOKEN, NIXFLEET_REPO_URL, NIXFLEET_REPO_DIR,
//! NIXFLEET_HOSTNAME and NIXFLEET_INTERVAL like the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Fail = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Result<String, Fail> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn frame(kind: &str, payload: Value) -> Message {
    Message::text(json!({"type": kind, "payload": payload}).to_string())
}

async fn git(dir: &Path, args: &[&str]) -> Result<String, Fail> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .await?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What the runner tells the connection.
enum Report {
    Started(u32),
    Frame(Message),
    Done,
}

#[tokio::main]
async fn main() -> Result<(), Fail> {
    let url = env("NIXFLEET_URL")?;
    let token = env("NIXFLEET_TOKEN")?;
    let repo_url = env("NIXFLEET_REPO_URL")?;
    let repo = PathBuf::from(env("NIXFLEET_REPO_DIR")?);
    let host = env("NIXFLEET_HOSTNAME")?;
    let interval: u64 = env("NIXFLEET_INTERVAL")?.parse()?;
    if !repo.exists() {
        let parent = repo.parent().ok_or("NIXFLEET_REPO_DIR has no parent")?;
        std::fs::create_dir_all(parent)?;
        git(parent, &["clone", "-q", &repo_url, &repo.to_string_lossy()]).await?;
    }
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let generation = git(&repo, &["rev-parse", "HEAD"]).await?;
    ws.send(frame(
        "register",
        json!({
            "hostname": host, "host_type": "nixos", "agent_version": "0.0.0-fake",
            "os_version": "24.11", "nixpkgs_version": "24.11.20241201.abc1234",
            "generation": generation, "theme_color": "", "heartbeat_interval": interval,
            "location": "home", "device_type": "server", "repo_url": repo_url,
            "repo_dir": repo.to_string_lossy(),
        }),
    ))
    .await?;

    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(interval));
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut running: Option<(String, u32)> = None;
    let mut registered = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tick.tick(), if registered => {
                let generation = git(&repo, &["rev-parse", "HEAD"]).await?;
                ws.send(frame("heartbeat", json!({
                    "generation": generation, "nixpkgs_version": "24.11.20241201.abc1234",
                    "pending_command": running.as_ref().map(|r| r.0.clone()),
                    "command_pid": running.as_ref().map(|r| r.1),
                    "metrics": {"cpu": 1.0, "ram": 10.0, "swap": 0.0, "load": 0.1},
                }))).await?;
            }
            Some(report) = reports.recv() => match report {
                Report::Started(pid) => {
                    if let Some(r) = running.as_mut() { r.1 = pid; }
                }
                Report::Frame(msg) => ws.send(msg).await?,
                Report::Done => running = None,
            },
            msg = ws.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let Message::Text(text) = msg? else { continue };
                let v: Value = serde_json::from_str(text.as_str())?;
                match (v["type"].as_str(), v["payload"]["command"].as_str()) {
                    (Some("registered"), _) => {
                        registered = true;
                        tick.reset_immediately();
                    }
                    (Some("command"), Some("stop")) => {
                        if let Some((_, pid)) = &running {
                            let _ = Command::new("kill").args(["-s", "TERM", "--", &format!("-{pid}")]).status().await;
                        }
                    }
                    (Some("command"), Some(_)) if running.is_some() => {
                        let (current, pid) = running.clone().unwrap_or_default();
                        ws.send(frame("command_rejected", json!({
                            "reason": "command already running", "current_command": current, "current_pid": pid,
                        }))).await?;
                    }
                    (Some("command"), Some(cmd)) => {
                        running = Some((cmd.to_owned(), 0));
                        tokio::spawn(run(cmd.to_owned(), repo.clone(), host.clone(), report_tx.clone()));
                    }
                    _ => {}
                }
            }
        }
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "shutdown".into(),
    }))
    .await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// Run a script in its own process group, streaming its stdout; its exit code.
async fn script(
    command: &str,
    path: &Path,
    cwd: &Path,
    tx: &mpsc::UnboundedSender<Report>,
) -> Option<i32> {
    let mut child = Command::new(path)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .ok()?;
    let _ = tx.send(Report::Started(child.id().unwrap_or(0)));
    if let Some(out) = child.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let payload =
                json!({"line": line, "stream": "stdout", "command": command, "is_error": false});
            let _ = tx.send(Report::Frame(frame("output", payload)));
        }
    }
    let status = child.wait().await.ok()?;
    Some(status.code().unwrap_or(-1))
}

async fn run(command: String, repo: PathBuf, host: String, tx: mpsc::UnboundedSender<Report>) {
    let send = |kind: &str, payload: Value| {
        let _ = tx.send(Report::Frame(frame(kind, payload)));
    };
    let (status, code, message) = match command.as_str() {
        "pull" => {
            let ok = git(&repo, &["fetch", "-q", "origin", "main"]).await.is_ok()
                && git(&repo, &["reset", "-q", "--hard", "origin/main"])
                    .await
                    .is_ok();
            let head = git(&repo, &["rev-parse", "--short=7", "HEAD"])
                .await
                .unwrap_or_default();
            if ok {
                ("ok", 0, format!("Pull: Updated to {head}"))
            } else {
                ("error", 1, "Pull failed".to_owned())
            }
        }
        "test" => {
            let dir = repo.join("hosts").join(&host).join("tests");
            let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            scripts.sort();
            let total = scripts.len();
            let mut passed = 0;
            let mut stopped = false;
            for (i, path) in scripts.iter().enumerate() {
                match script(&command, path, &repo, &tx).await {
                    Some(0) => passed += 1,
                    Some(c) if c < 0 => {
                        stopped = true;
                        break;
                    }
                    _ => {}
                }
                let last = i + 1 == total;
                let result = if last {
                    format!("{passed}/{total} passed")
                } else {
                    format!("{} done", i + 1)
                };
                send(
                    "test_progress",
                    json!({"current": i + 1, "total": total, "passed": passed, "running": !last, "result": result}),
                );
            }
            if stopped {
                ("stopped", -15, "Stopped by user".to_owned())
            } else if passed == total {
                ("ok", 0, format!("{passed}/{total} passed"))
            } else {
                ("error", 1, format!("{passed}/{total} passed"))
            }
        }
        _ => ("error", 1, "unknown command".to_owned()),
    };
    let generation = git(&repo, &["rev-parse", "HEAD"]).await.unwrap_or_default();
    send(
        "status",
        json!({"status": status, "command": command, "exit_code": code, "message": message, "generation": generation}),
    );
    let _ = tx.send(Report::Done);
}
