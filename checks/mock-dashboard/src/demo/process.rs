//! The agent process of the demo: started with a given environment, its
//! output echoed, its exit watched; started again after a switch, as the
//! service manager does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// How the agent process ended.
#[derive(Clone)]
pub(super) struct Exit {
    /// As `ExitStatus` shows it, e.g. "exit status: 0".
    pub(super) how: String,
    /// The exit code, when it exited (not killed by a signal).
    pub(super) code: Option<i32>,
}

impl Exit {
    /// Exit status 0.
    pub(super) fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// How to start the agent.
pub(super) struct Launch {
    /// The binary.
    pub(super) agent: PathBuf,
    /// Its working directory.
    pub(super) dir: PathBuf,
    /// The variables set on top of the caller's environment (less any
    /// `NIXFLEET_*` and service-manager variable of the caller's own).
    pub(super) env: Vec<(String, OsString)>,
}

/// A started agent.
pub(super) struct Process {
    /// Its pid.
    pub(super) pid: Option<u32>,
    /// `Some` once it exited.
    pub(super) exited: watch::Receiver<Option<Exit>>,
}

impl Launch {
    /// Starts the agent.
    pub(super) fn start(&self) -> Result<Process, String> {
        let mut cmd = Command::new(&self.agent);
        // Nothing from the caller's own agent setup may leak in.
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("NIXFLEET_")
                || matches!(
                    n.as_ref(),
                    "CREDENTIALS_DIRECTORY"
                        | "STATE_DIRECTORY"
                        | "LOGS_DIRECTORY"
                        | "JOURNAL_STREAM"
                )
            {
                cmd.env_remove(&name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.agent.display()))?;
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(echo_lines(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(echo_lines(err));
        }
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit {
                    how: status.to_string(),
                    code: status.code(),
                },
                Err(e) => Exit {
                    how: format!("unknown ({e})"),
                    code: None,
                },
            };
            exit_tx.send_replace(Some(exit));
        });
        Ok(Process { pid, exited })
    }

    /// The agent binary's path, for the transcript.
    pub(super) fn agent(&self) -> &Path {
        &self.agent
    }
}

/// Send a signal with kill(1).
pub(super) async fn signal(pid: u32, name: &str) {
    let result = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        println!("(cannot run kill: {e})");
    }
}

/// Print the agent's own output, marked.
async fn echo_lines(stream: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{:>9}  | {line}", "");
    }
}
