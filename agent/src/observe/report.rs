//! `nixfleet-agent status [--json] [--state-dir DIR]`: what the agent
//! observed, for the host's owner (root, or the Home Manager user), read
//! from the state directory alone: it works while the dashboard is down
//! and while the agent is stopped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::ledger::{self, Observed, Operation, now};

/// The usage line.
pub const USAGE: &str = "usage: nixfleet-agent status [--json] [--state-dir DIR]";

/// The state directory the agent of this user uses: `NIXFLEET_STATE_DIR`,
/// else `/var/lib/nixfleet-agent` for root, else Home Manager's
/// `${XDG_STATE_HOME:-$HOME/.local/state}/nixfleet-agent`.
pub fn default_state_dir(var: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = var("NIXFLEET_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/nixfleet-agent");
    }
    let state = var("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_default()).join(".local/state"));
    state.join("nixfleet-agent")
}

/// What `status` shows: the file, whether its agent runs, the watchdog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// `observed.json` as the agent last wrote it.
    #[serde(flatten)]
    pub observed: Observed,
    /// Whether the process that wrote it still runs.
    pub agent_running: bool,
    /// The latest watched switch: on probation, or rolled back.
    pub watchdog: Option<String>,
    /// The state directory read.
    pub state_dir: PathBuf,
}

/// Reads the status from `dir`; `Err` says why not, and what to do.
pub fn read(dir: &Path) -> Result<Status, String> {
    let path = ledger::path(dir);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot read {}: permission denied; run it as root (sudo nixfleet-agent status) or as the user whose agent it is",
            dir.display()
        ),
        std::io::ErrorKind::NotFound => format!(
            "no agent state in {} ({} is missing): the agent has not run with this state directory; name another with --state-dir",
            dir.display(),
            ledger::FILE
        ),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    let observed: Observed = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not what the agent writes: {e}", path.display()))?;
    Ok(Status {
        agent_running: process_runs(observed.pid),
        watchdog: crate::deploy::confirm::watch_summary(&dir.join("switch")),
        state_dir: dir.to_path_buf(),
        observed,
    })
}

/// Whether `pid` is a running agent.
fn process_runs(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim().starts_with("nixfleet-agent"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// "12 s ago", "3 min ago", "2 h ago", "4 d ago".
fn ago(at: u64, now: u64) -> String {
    let s = now.saturating_sub(at);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn operation_line(op: &Operation, now: u64) -> String {
    let first = op.message.lines().next().unwrap_or_default();
    let took = op
        .duration_secs
        .map(|d| format!(", took {d:.0} s"))
        .unwrap_or_default();
    format!(
        "{:<14} {:<11} {}{took}: {first}",
        op.command,
        op.outcome,
        ago(op.finished_at, now)
    )
}

/// The status as text for a person.
pub fn text(status: &Status) -> String {
    let o = &status.observed;
    let t = now();
    let mut s = String::new();
    let _ = writeln!(s, "nixfleet-agent {}", o.version);
    if status.agent_running {
        let _ = writeln!(
            s,
            "agent:        running (pid {}), up since {}",
            o.pid,
            ago(o.started_at, t)
        );
        let link = if o.connected {
            "connected"
        } else {
            "not connected"
        };
        let _ = writeln!(s, "dashboard:    {link} ({})", o.dashboard);
    } else {
        let _ = writeln!(
            s,
            "agent:        not running (last seen {})",
            ago(o.written_at, t)
        );
        let _ = writeln!(s, "dashboard:    {}", o.dashboard);
    }
    let contact = match (o.last_heartbeat_at, o.last_register_at) {
        // (the file is written on changes: while connected, heartbeats flow)
        _ if status.agent_running && o.connected => "connected now, heartbeats flowing".to_string(),
        (Some(h), _) => format!("last heartbeat sent {}", ago(h, t)),
        (None, Some(r)) => format!("registered {}", ago(r, t)),
        (None, None) => "never reached".to_string(),
    };
    let _ = writeln!(
        s,
        "contact:      {contact}; {} reconnect(s) by this process",
        o.registrations.saturating_sub(1)
    );
    if let Some(running) = &o.running.as_ref().filter(|_| status.agent_running) {
        let _ = writeln!(s, "running:      {running}");
    }
    let show = |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
    if o.systems != Default::default() {
        let _ = writeln!(s, "current:      {}", show(&o.systems.current));
        let _ = writeln!(s, "booted:       {}", show(&o.systems.booted));
        let _ = writeln!(s, "profile:      {}", show(&o.systems.profile));
    }
    let _ = writeln!(
        s,
        "needs reboot: {}",
        if o.needs_reboot { "yes" } else { "no" }
    );
    let _ = writeln!(
        s,
        "generation:   {}",
        if o.generation.is_empty() {
            "-"
        } else {
            &o.generation
        }
    );
    if let Some(w) = &status.watchdog {
        let _ = writeln!(s, "watchdog:     {w}");
    }
    let _ = writeln!(
        s,
        "rollbacks:    {} automatic rollback(s)",
        o.history.automatic_rollbacks
    );
    if let Some(last) = &o.history.last_switch {
        let _ = writeln!(s, "last switch:  {}", operation_line(last, t));
    }
    if !o.history.operations.is_empty() {
        let _ = writeln!(s, "operations (newest first):");
        for op in o.history.operations.iter().rev().take(10) {
            let _ = writeln!(s, "  {}", operation_line(op, t));
        }
    }
    let _ = writeln!(
        s,
        "logs:         {} (the agent: {})",
        o.log_dir.display(),
        o.journal
    );
    let _ = writeln!(s, "state:        {}", status.state_dir.display());
    s
}

/// `nixfleet-agent status …`; the exit code (0, or 1 with the reason on
/// stderr, or 2 for a bad argument).
pub fn status_main(args: &[String]) -> i32 {
    let mut json = false;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--state-dir" => match it.next() {
                Some(d) => dir = Some(PathBuf::from(d)),
                None => {
                    eprintln!("nixfleet-agent status: --state-dir needs a directory; {USAGE}");
                    return 2;
                }
            },
            other => {
                eprintln!("nixfleet-agent status: unknown argument {other:?}; {USAGE}");
                return 2;
            }
        }
    }
    let dir = dir.unwrap_or_else(|| default_state_dir(&|n| std::env::var(n).ok()));
    match read(&dir) {
        Ok(status) if json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("nixfleet-agent status: {e}");
                1
            }
        },
        Ok(status) => {
            print!("{}", text(&status));
            0
        }
        Err(why) => {
            eprintln!("nixfleet-agent status: {why}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_the_agents_of_this_user() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            default_state_dir(&vars(&[("NIXFLEET_STATE_DIR", "/srv/agent")])),
            PathBuf::from("/srv/agent")
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(
                default_state_dir(&vars(&[("HOME", "/home/alice")])),
                PathBuf::from("/home/alice/.local/state/nixfleet-agent")
            );
        }
    }

    #[test]
    fn times_read_as_a_person_says_them() {
        assert_eq!(ago(100, 112), "12 s ago");
        assert_eq!(ago(0, 180), "3 min ago");
        assert_eq!(ago(0, 7200), "2 h ago");
        assert_eq!(ago(0, 4 * 86_400), "4 d ago");
    }
}
