//! The fixture (a configuration repository with one test script per
//! scenario host), the agent under measurement, and waiting on the mock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nixfleet_mock_dashboard::{DEFAULT_TOKEN, Frame, MockDashboard};
use tokio::process::{Child, Command};

use crate::settings::*;

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test scripts, one host each: `(host, file name, script)`.
pub(crate) fn scripts(s: &Settings) -> Vec<(&'static str, &'static str, String)> {
    let latency_lines = s.latency_secs * 1000;
    vec![
        (
            "bench-probe",
            "T01-probe.sh",
            "#!/bin/sh\necho probe\n".to_owned(),
        ),
        (
            "bench-flood",
            "T01-flood.sh",
            format!("#!/bin/sh\nexec seq 1 {FLOOD_LINES}\n"),
        ),
        (
            "bench-stall",
            "T01-flood.sh",
            format!("#!/bin/sh\nexec seq 1 {FLOOD_LINES}\n"),
        ),
        (
            "bench-hb",
            "T01-flood.sh",
            format!(
                "#!/bin/sh\n# full speed for {secs} s\ntimeout {secs} seq 1 1000000000000\nexit 0\n",
                secs = s.flood_secs
            ),
        ),
        (
            "bench-latency",
            "T01-latency.sh",
            format!(
                r#"#!/bin/sh
# {latency_lines} lines at 1000 lines/s, each "<n> <CLOCK_REALTIME seconds>" taken just before the write
exec perl -e '
use strict; use warnings;
use Time::HiRes qw(clock_gettime nanosleep CLOCK_REALTIME CLOCK_MONOTONIC);
$| = 1;
my $t0 = clock_gettime(CLOCK_MONOTONIC);
for my $i (1 .. {latency_lines}) {{
    my $wait = $t0 + $i / 1000 - clock_gettime(CLOCK_MONOTONIC);
    nanosleep($wait * 1e9) if $wait > 0;
    printf "%d %.6f\n", $i, clock_gettime(CLOCK_REALTIME);
}}
'
"#
            ),
        ),
    ]
}

pub(crate) struct Fixture {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) repo: PathBuf,
    pub(crate) next: AtomicU32,
}

impl Fixture {
    pub(crate) fn new(s: &Settings) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir repo");
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("flake.lock"), "{\"nodes\":{},\"version\":7}\n")
            .expect("write flake.lock");
        for (host, name, text) in scripts(s) {
            let dir = repo.join("hosts").join(host).join("tests");
            std::fs::create_dir_all(&dir).expect("mkdir tests");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write test script");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod test script");
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "bench fixture"]);
        Fixture {
            tmp,
            repo,
            next: AtomicU32::new(0),
        }
    }

    /// Starts an agent for `host` against `dash` with heartbeat `interval` s.
    pub(crate) fn spawn(&self, dash: &MockDashboard, host: &str, interval: u64) -> Agent {
        self.spawn_url(&dash.ws_url(), host, interval)
    }

    /// Starts an agent for `host` against the dashboard at `url`.
    pub(crate) fn spawn_url(&self, url: &str, host: &str, interval: u64) -> Agent {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let state = self.tmp.path().join(format!("state-{n}-{host}"));
        let log = self.tmp.path().join(format!("agent-{n}-{host}.log"));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let mut cmd = Command::new(agent_bin());
        cmd.env_clear()
            .env("NIXFLEET_URL", url)
            .env("NIXFLEET_TOKEN", DEFAULT_TOKEN)
            .env("NIXFLEET_HOSTNAME", host)
            .env("NIXFLEET_REPO_DIR", &self.repo)
            .env("NIXFLEET_STATE_DIR", &state)
            .env("NIXFLEET_INTERVAL", interval.to_string())
            .env("NIXFLEET_HOST_TYPE", "nixos")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn nixfleet-agent");
        let pid = child.id().expect("agent pid");
        Agent {
            child,
            pid,
            host: host.to_owned(),
            log,
        }
    }
}

pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) host: String,
    pub(crate) log: PathBuf,
}

impl Agent {
    /// SIGTERM, then SIGKILL if it has not exited within 7 s.
    pub(crate) async fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(7), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// The last lines of the agent's log, for a figure that went wrong.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(8);
        format!(
            "agent {} log tail:\n    {}",
            self.host,
            lines[from..].join("\n    ")
        )
    }
}

/// Waits for the first frame of `kind` from `host` after `after` (event-driven).
pub(crate) async fn wait_frame(
    dash: &MockDashboard,
    host: &str,
    kind: &str,
    after: u64,
) -> Option<Frame> {
    dash.wait_frame(host, kind, after, WAIT).await
}

/// Polls (every 2 ms, so that a flood of frames does not also wake this task a
/// million times) for the first frame of `kind` with seq > `after`.
pub(crate) async fn poll_frame(
    dash: &MockDashboard,
    host: &str,
    kind: &str,
    after: u64,
    timeout: Duration,
) -> Option<Frame> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(f) = dash
            .frames(host, Some(kind))
            .into_iter()
            .find(|f| f.seq > after)
        {
            return Some(f);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

/// `(min, median, max)` of a non-empty sample.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let lo = s.first().copied().unwrap_or(f64::NAN);
    let hi = s.last().copied().unwrap_or(f64::NAN);
    (lo, percentile(&s, 50.0), hi)
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Thousands separated by a thin space, e.g. `1 000 000`.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}
