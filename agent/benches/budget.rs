//! The agent's resource budget (issue 5), measured end to end.
//!
//! ```text
//! cargo bench -p nixfleet-agent --bench budget                     # ~2 min
//! BUDGET_QUICK=1 cargo bench -p nixfleet-agent --bench budget      # smoke run, < 1 min
//! BUDGET_ONLY=throughput,latency cargo bench -p nixfleet-agent --bench budget
//! ```
//!
//! The real agent binary (built by cargo in the bench profile, i.e. release)
//! runs as a separate process on loopback. The receivers run in this process:
//!
//! - the mock dashboard with `keep_output_frames = false` (output frames
//!   validated and counted, not stored): idle, startup, and one validated run
//!   of the flood;
//! - the mock dashboard keeping every frame: latency (receive instants) and
//!   the stalled dashboard (`pause`/`resume`, the drop marker);
//! - a fast receiver written here (below), because the mock tops out near
//!   1 M frames/s, the budget itself: the throughput and heartbeat-under-flood
//!   figures. It checks every line's number on the fly.
//!
//! The ceiling of both receivers is measured with a trivial client and
//! printed. Keys for `BUDGET_ONLY`: ceiling, idle-rss, idle-cpu, startup,
//! throughput, latency, heartbeat, stall, size. What each figure means and how
//! it is measured: `docs/benchmarks.md`. Prints one table (Markdown), then
//! notes with the details behind each figure. Exits 0 even when a budget
//! fails, unless `BUDGET_STRICT=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{DEFAULT_TOKEN, Frame, MockDashboard, Options};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_nixfleet-agent");
const MIB: f64 = 1024.0 * 1024.0;

/// Lines of the flood command (figures 4 and 7).
const FLOOD_LINES: u64 = 1_000_000;
/// How long any single wait may take before the figure is given up.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    only: Option<BTreeSet<String>>,
    /// Idle window of figures 1 and 2.
    idle: Duration,
    startup_runs: usize,
    throughput_runs: usize,
    /// Lines the receiver-ceiling client sends.
    ceiling_lines: u64,
    /// Duration of the 1000 lines/s command (figure 5).
    latency_secs: u64,
    /// Duration of the full-speed flood while heartbeats are watched (figure 6).
    flood_secs: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("BUDGET_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let only = std::env::var("BUDGET_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        if quick {
            Settings {
                quick,
                only,
                idle: Duration::from_secs(10),
                startup_runs: 5,
                throughput_runs: 1,
                ceiling_lines: 300_000,
                latency_secs: 3,
                flood_secs: 3,
            }
        } else {
            Settings {
                quick,
                only,
                idle: Duration::from_secs(60),
                startup_runs: 20,
                throughput_runs: 3,
                ceiling_lines: 1_000_000,
                latency_secs: 10,
                flood_secs: 6,
            }
        }
    }

    fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(key))
    }
}

// ---------------------------------------------------------------------------
// The table

#[derive(Debug, Clone)]
enum Verdict {
    Pass,
    Fail,
    Info,
    NotRun,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }

    fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "**FAIL**",
            Verdict::Info => "info",
            Verdict::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    figure: &'static str,
    measured: String,
    budget: &'static str,
    verdict: Verdict,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, figure: &'static str, budget: &'static str, measured: String, v: Verdict) {
        eprintln!("[budget] {figure}: {measured} ({})", v.label());
        self.rows.push(Row {
            figure,
            measured,
            budget,
            verdict: v,
        });
    }

    fn note(&mut self, text: String) {
        eprintln!("[budget] note: {text}");
        self.notes.push(text);
    }
}

// ---------------------------------------------------------------------------
// /proc readings

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, so that index 0 is
/// field 3 (`state`) of proc(5).
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of the whole process (all threads, dead ones included), in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = proc_stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// On-CPU time of each live thread in ns, by thread id (`/proc/<pid>/task/*/schedstat`).
fn proc_threads_runtime_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| {
            let ns = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let ns = ns.split_whitespace().next()?.parse::<u64>().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), ns))
        })
        .collect()
}

/// On-CPU time since `before` of the threads alive now (time of threads that
/// ended in between is not seen).
fn runtime_since(pid: u32, before: &std::collections::BTreeMap<String, u64>) -> u64 {
    proc_threads_runtime_ns(pid)
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// A field of `/proc/<pid>/smaps_rollup`, in KiB.
fn proc_rollup_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident KiB per mapped object (file name, `[heap]`, `[stack]`, `[anon]`),
/// largest first.
fn rss_by_object(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");
            current = path.rsplit('/').next().unwrap_or(path).to_owned();
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            *by.entry(current.clone()).or_default() += kib;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

fn proc_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let ppid = pid.to_string();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat_fields(*p).is_some_and(|f| f.get(1) == Some(&ppid)))
        .collect()
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------
// The machine

fn machine() -> Vec<String> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .map_or_else(|| "unknown".to_owned(), |m| m.trim().to_owned());
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split_once(':').map(|x| x.1))
        .map_or_else(String::new, |m| format!(" @ {} MHz", m.trim()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or_else(
            || "unknown".to_owned(),
            |k| format!("{:.1} GiB", k as f64 / MIB),
        );
    vec![
        format!("CPU: {model}{mhz}, {nproc} logical CPUs (nproc)"),
        format!("kernel: Linux {kernel}, RAM: {mem}"),
        format!(
            "agent binary: {AGENT_BIN} (cargo bench profile = release, {})",
            linking()
        ),
    ]
}

// ---------------------------------------------------------------------------
// Fixture: a configuration repository with one test script per scenario host

fn git(dir: &Path, args: &[&str]) {
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
fn scripts(s: &Settings) -> Vec<(&'static str, &'static str, String)> {
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

struct Fixture {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    next: AtomicU32,
}

impl Fixture {
    fn new(s: &Settings) -> Fixture {
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
    fn spawn(&self, dash: &MockDashboard, host: &str, interval: u64) -> Agent {
        self.spawn_url(&dash.ws_url(), host, interval)
    }

    /// Starts an agent for `host` against the dashboard at `url`.
    fn spawn_url(&self, url: &str, host: &str, interval: u64) -> Agent {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let state = self.tmp.path().join(format!("state-{n}-{host}"));
        let log = self.tmp.path().join(format!("agent-{n}-{host}.log"));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let mut cmd = Command::new(AGENT_BIN);
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

struct Agent {
    child: Child,
    pid: u32,
    host: String,
    log: PathBuf,
}

impl Agent {
    /// SIGTERM, then SIGKILL if it has not exited within 7 s.
    async fn stop(mut self) {
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
    fn log_tail(&self) -> String {
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

// ---------------------------------------------------------------------------
// Waiting on the mock

/// Waits for the first frame of `kind` from `host` after `after` (event-driven).
async fn wait_frame(dash: &MockDashboard, host: &str, kind: &str, after: u64) -> Option<Frame> {
    dash.wait_frame(host, kind, after, WAIT).await
}

/// Polls (every 2 ms, so that a flood of frames does not also wake this task a
/// million times) for the first frame of `kind` with seq > `after`.
async fn poll_frame(
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Thousands separated by a thin space, e.g. `1 000 000`.
fn group(n: u64) -> String {
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

// ---------------------------------------------------------------------------
// The fast receiver: a minimal dashboard for the throughput figures
//
// The mock dashboard parses and validates every frame into a `serde_json::Value`
// under one lock; that tops out near 1 M frames/s on a small machine, i.e. at
// the budget itself. This receiver speaks just enough of the protocol
// (bearer token, `register` → `registered`, `command`, pongs) and handles an
// `output` frame by finding its `"line":"…"` and checking the number in it
// against the next one due, so that completeness and order are verified on
// the fly, without storing anything. Every other frame is parsed as JSON.

/// What the fast receiver saw of one `status`.
#[derive(Debug, Clone)]
struct StatusSeen {
    at: Instant,
    payload: serde_json::Value,
    /// Output frames since the previous status.
    outputs: u64,
    /// Numbered lines 1..=n received in order since the previous status.
    in_order: u64,
    /// The first out-of-order number, if any.
    first_break: Option<String>,
    /// Lines that are not a bare number (the runner's own lines).
    other: Vec<String>,
}

#[derive(Default)]
struct FastHost {
    heartbeats: Vec<Instant>,
    statuses: Vec<StatusSeen>,
    out: Option<tokio::sync::mpsc::UnboundedSender<Message>>,
}

#[derive(Default)]
struct FastShared {
    hosts: std::sync::Mutex<std::collections::HashMap<String, FastHost>>,
    notify: tokio::sync::Notify,
}

#[derive(Clone)]
struct FastReceiver {
    addr: std::net::SocketAddr,
    shared: std::sync::Arc<FastShared>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FastReceiver {
    async fn start() -> FastReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fast receiver");
        let addr = listener.local_addr().expect("fast receiver address");
        let shared = std::sync::Arc::new(FastShared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(fast_conn(tcp, s.clone()));
            }
        });
        FastReceiver { addr, shared }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn send_command(&self, host: &str, command: &str) -> bool {
        let text = format!(r#"{{"type":"command","payload":{{"command":"{command}"}}}}"#);
        lock(&self.shared.hosts)
            .get(host)
            .and_then(|h| h.out.as_ref())
            .is_some_and(|out| out.send(Message::text(text)).is_ok())
    }

    fn heartbeats(&self, host: &str) -> Vec<Instant> {
        lock(&self.shared.hosts)
            .get(host)
            .map(|h| h.heartbeats.clone())
            .unwrap_or_default()
    }

    fn statuses(&self, host: &str) -> usize {
        lock(&self.shared.hosts)
            .get(host)
            .map_or(0, |h| h.statuses.len())
    }

    /// Waits for the `n`-th status (1-based) of `host`.
    async fn wait_status(&self, host: &str, n: usize, timeout: Duration) -> Option<StatusSeen> {
        self.wait(timeout, || {
            lock(&self.shared.hosts)
                .get(host)
                .and_then(|h| h.statuses.get(n - 1).cloned())
        })
        .await
    }

    async fn wait_heartbeat(&self, host: &str, timeout: Duration) -> Option<Instant> {
        self.wait(timeout, || {
            lock(&self.shared.hosts)
                .get(host)
                .and_then(|h| h.heartbeats.first().copied())
        })
        .await
    }

    async fn wait<T>(&self, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check() {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check();
            }
        }
    }
}

/// The number in an agent's `output` frame, without parsing the JSON.
fn output_line(text: &str) -> Option<&str> {
    if !text.starts_with(r#"{"type":"output""#) {
        return None;
    }
    let start = text.find(r#""line":""#)? + 8;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn fast_conn(tcp: tokio::net::TcpStream, shared: std::sync::Arc<FastShared>) {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let expected = format!("Bearer {DEFAULT_TOKEN}");
        if req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
        {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(None);
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(r)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut host = String::new();
    let (mut outputs, mut next, mut first_break, mut other) = (0u64, 1u64, None, Vec::new());
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(p) => {
                let _ = tx.send(Message::Pong(p));
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        if let Some(line) = output_line(&text) {
            outputs += 1;
            match line.parse::<u64>() {
                Ok(n) if n == next => next += 1,
                Ok(n) => {
                    first_break.get_or_insert_with(|| format!("{n} where {next} was due"));
                }
                Err(_) => other.push(line.to_owned()),
            }
            continue;
        }
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let payload = v["payload"].clone();
        match v["type"].as_str() {
            Some("register") => {
                host = payload["hostname"].as_str().unwrap_or_default().to_owned();
                lock(&shared.hosts).entry(host.clone()).or_default().out = Some(tx.clone());
                let reply = format!(r#"{{"type":"registered","payload":{{"host_id":"{host}"}}}}"#);
                let _ = tx.send(Message::text(reply));
            }
            Some("heartbeat") => {
                lock(&shared.hosts)
                    .entry(host.clone())
                    .or_default()
                    .heartbeats
                    .push(now);
            }
            Some("status") => {
                let seen = StatusSeen {
                    at: now,
                    payload,
                    outputs,
                    in_order: next - 1,
                    first_break: first_break.take(),
                    other: std::mem::take(&mut other),
                };
                (outputs, next) = (0, 1);
                lock(&shared.hosts)
                    .entry(host.clone())
                    .or_default()
                    .statuses
                    .push(seen);
            }
            Some("output") => {
                // an output frame the fast path did not recognise
                outputs += 1;
                other.push(payload["line"].as_str().unwrap_or_default().to_owned());
                continue;
            }
            _ => continue,
        }
        shared.notify.notify_waiters();
    }
}

// ---------------------------------------------------------------------------
// Figure 8: binary size

/// What the ELF header of the agent binary says: whether a symbol table
/// (`SHT_SYMTAB` section) is left, and whether it asks for a dynamic loader
/// (`PT_INTERP`, i.e. dynamically linked). `None`: not a little-endian ELF64.
fn elf_facts(bytes: &[u8]) -> Option<(bool, bool)> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None;
    }
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let shentsize = usize::from(u16_at(0x3A)?);
    let shnum = usize::from(u16_at(0x3C)?);
    let symtab = (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == Some(2));
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(3));
    Some((symtab, interp))
}

fn linking() -> &'static str {
    match std::fs::read(AGENT_BIN).ok().as_deref().and_then(elf_facts) {
        Some((_, true)) => "dynamically linked",
        Some((_, false)) => "statically linked",
        None => "linking unknown",
    }
}

fn figure_size(r: &mut Report) {
    let bytes = std::fs::read(AGENT_BIN).expect("read the agent binary");
    let size = bytes.len() as u64;
    let stripped = match elf_facts(&bytes).map(|f| f.0) {
        Some(false) => "stripped",
        Some(true) => "NOT stripped (has .symtab)",
        None => "not an ELF64 file?",
    };
    r.row(
        "stripped release binary",
        "≤ 5 MiB",
        format!(
            "{:.2} MiB ({} bytes, {stripped})",
            size as f64 / MIB,
            group(size)
        ),
        Verdict::of(size as f64 <= 5.0 * MIB && stripped == "stripped"),
    );
}

// ---------------------------------------------------------------------------
// Receiver ceiling: a trivial client that sends exactly the agent's frames

const REGISTER_JSON: &str = r#"{"type":"register","payload":{"hostname":"bench-ceiling","host_type":"nixos","agent_version":"0.0.0","os_version":"24.11","nixpkgs_version":"24.11.20241201.abc1234","generation":"0123456","theme_color":"","heartbeat_interval":30,"location":"home","device_type":"server","repo_url":"","repo_dir":"/tmp/repo"}}"#;

/// Sends `lines` output frames then one `status` as fast as the socket takes
/// them, on its own thread and runtime (like a separate agent process).
fn ceiling_client(url: String, lines: u64) -> std::thread::JoinHandle<Result<Instant, String>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut req = url.into_client_request().map_err(|e| e.to_string())?;
            let auth = HeaderValue::from_str(&format!("Bearer {DEFAULT_TOKEN}"))
                .map_err(|e| e.to_string())?;
            req.headers_mut().insert("authorization", auth);
            let (ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sink, mut stream) = ws.split();
            sink.send(Message::text(REGISTER_JSON))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("registered") => break,
                    Some(Ok(_)) => {}
                    other => return Err(format!("no `registered`: {other:?}")),
                }
            }
            // Keep reading (pongs etc.) so that the socket never stalls.
            tokio::spawn(async move { while stream.next().await.is_some() {} });
            let started = Instant::now();
            for i in 1..=lines {
                let frame = format!(
                    r#"{{"type":"output","payload":{{"line":"{i}","stream":"stdout","command":"test","is_error":false}}}}"#
                );
                sink.feed(Message::text(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                if i % 256 == 0 {
                    sink.flush().await.map_err(|e| e.to_string())?;
                }
            }
            let status = r#"{"type":"status","payload":{"status":"ok","command":"test","exit_code":0,"message":"","generation":"0123456"}}"#;
            sink.send(Message::text(status))
                .await
                .map_err(|e| e.to_string())?;
            // Stay connected until the dashboard has seen everything.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(started)
        })
    })
}

async fn figure_ceiling(
    r: &mut Report,
    s: &Settings,
    dash: &MockDashboard,
    fast: &FastReceiver,
) -> Option<f64> {
    let budget = "must exceed the agent's throughput";
    let mut fast_rate = None;
    for which in ["mock", "fast"] {
        let (fig, url) = if which == "mock" {
            (
                "receiver ceiling: mock dashboard (keep_output_frames = false), trivial client",
                dash.ws_url(),
            )
        } else {
            (
                "receiver ceiling: the bench's fast receiver, trivial client",
                fast.ws_url(),
            )
        };
        let client = ceiling_client(url, s.ceiling_lines);
        let (end, count) = if which == "mock" {
            let st = poll_frame(dash, "bench-ceiling", "status", 0, Duration::from_secs(120)).await;
            (st.map(|f| f.received), dash.output_count("bench-ceiling"))
        } else {
            let st = fast
                .wait_status("bench-ceiling", 1, Duration::from_secs(120))
                .await;
            let count = st.as_ref().map_or(0, |st| st.outputs);
            (st.map(|st| st.at), count)
        };
        let started = tokio::task::spawn_blocking(move || client.join())
            .await
            .expect("join the ceiling client");
        match (started, end) {
            (Ok(Ok(started)), Some(end)) => {
                let secs = end.duration_since(started).as_secs_f64();
                let rate = count as f64 / secs;
                r.row(
                    fig,
                    budget,
                    format!(
                        "{:.2} M frames/s ({} frames in {:.0} ms)",
                        rate / 1e6,
                        group(count),
                        secs * 1000.0
                    ),
                    Verdict::Info,
                );
                if which == "fast" {
                    fast_rate = Some(rate);
                }
            }
            (started, end) => r.row(
                fig,
                budget,
                format!("failed: client {started:?}, status seen: {}", end.is_some()),
                Verdict::Fail,
            ),
        }
    }
    fast_rate
}

// ---------------------------------------------------------------------------
// Figures 1 and 2: idle

async fn figure_idle(r: &mut Report, s: &Settings, fx: &Fixture, dash: &MockDashboard) {
    let rss_agent = s
        .wants("idle-rss")
        .then(|| fx.spawn(dash, "bench-idle-rss", 1));
    let cpu_agent = s
        .wants("idle-cpu")
        .then(|| fx.spawn(dash, "bench-idle-cpu", 5));
    let mut ok = true;
    for a in rss_agent.iter().chain(cpu_agent.iter()) {
        if wait_frame(dash, &a.host, "heartbeat", 0).await.is_none() {
            r.note(format!("{} never registered; {}", a.host, a.log_tail()));
            ok = false;
        }
    }
    if !ok {
        r.row(
            "idle figures",
            "",
            "agent did not register".into(),
            Verdict::Fail,
        );
        return;
    }
    let tck = clock_ticks_per_sec();
    let cpu_start = cpu_agent.as_ref().map(|a| {
        (
            Instant::now(),
            proc_cpu_ticks(a.pid).unwrap_or(0),
            proc_threads_runtime_ns(a.pid),
        )
    });
    tokio::time::sleep(s.idle).await;
    let window = format!("{} s", s.idle.as_secs());

    if let Some(a) = rss_agent {
        let rss = proc_status_kib(a.pid, "VmRSS").unwrap_or(0);
        let anon = proc_status_kib(a.pid, "RssAnon").unwrap_or(0);
        let file = proc_status_kib(a.pid, "RssFile").unwrap_or(0);
        let hwm = proc_status_kib(a.pid, "VmHWM").unwrap_or(0);
        let hbs = dash.frames(&a.host, Some("heartbeat")).len();
        r.row(
            "resident memory, connected and idle, interval 1 s",
            "≤ 4 MiB",
            format!(
                "{:.2} MiB after {window} (anon {:.2} + file {:.2} MiB; peak {:.2} MiB; {} threads; {hbs} heartbeats)",
                kib_to_mib(rss),
                kib_to_mib(anon),
                kib_to_mib(file),
                kib_to_mib(hwm),
                proc_threads(a.pid)
            ),
            Verdict::of(rss <= 4096),
        );
        let pss = proc_rollup_kib(a.pid, "Pss").unwrap_or(0);
        let by_object = rss_by_object(a.pid)
            .iter()
            .map(|(name, kib)| format!("{name} {kib} kB"))
            .collect::<Vec<_>>()
            .join(", ");
        r.note(format!(
            "idle RSS by mapping (/proc/<pid>/smaps): {by_object}; PSS {pss} kB (file pages shared with other processes counted once)"
        ));
        a.stop().await;
    }
    if let (Some(a), Some((t0, ticks0, ns0))) = (cpu_agent, cpu_start) {
        let wall = t0.elapsed().as_secs_f64();
        let ticks = proc_cpu_ticks(a.pid).unwrap_or(0).saturating_sub(ticks0);
        let ns = runtime_since(a.pid, &ns0);
        let pct = ticks as f64 / tck as f64 / wall * 100.0;
        let pct_ns = ns as f64 / 1e9 / wall * 100.0;
        let resolution = 100.0 / tck as f64 / wall;
        r.row(
            "CPU while idle, interval 5 s (the default)",
            "≤ 0.05 % of one core",
            format!(
                "{pct:.3} % over {window} ({ticks} ticks of {} ms, resolution {resolution:.3} %; live threads' schedstat: {:.1} ms = {pct_ns:.4} %)",
                1000 / tck,
                ns as f64 / 1e6
            ),
            Verdict::of(pct <= 0.05),
        );
        a.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Figure 3: startup

async fn figure_startup(r: &mut Report, s: &Settings, fx: &Fixture, dash: &MockDashboard) {
    let mut to_register = Vec::new();
    let mut to_registered = Vec::new();
    for i in 0..s.startup_runs {
        let host = format!("bench-start-{i}");
        let t0 = Instant::now();
        let agent = fx.spawn(dash, &host, 30);
        let reg = wait_frame(dash, &host, "register", 0).await;
        let hb = wait_frame(dash, &host, "heartbeat", 0).await;
        match (reg, hb) {
            (Some(reg), Some(hb)) => {
                to_register.push(millis(reg.received.duration_since(t0)));
                to_registered.push(millis(hb.received.duration_since(t0)));
            }
            _ => r.note(format!("startup run {i} failed; {}", agent.log_tail())),
        }
        agent.stop().await;
    }
    if to_registered.is_empty() {
        r.row(
            "startup to `registered`",
            "≤ 20 ms median",
            "no run registered".into(),
            Verdict::Fail,
        );
        return;
    }
    let med = median(&to_registered);
    let mut sorted = to_registered.clone();
    sorted.sort_by(f64::total_cmp);
    r.row(
        "startup to `registered` (dashboard already up)",
        "≤ 20 ms median",
        format!(
            "{med:.1} ms median of {} (min {:.1}, max {:.1}); spawn → `register` received {:.1} ms median",
            sorted.len(),
            sorted[0],
            sorted[sorted.len() - 1],
            median(&to_register)
        ),
        Verdict::of(med <= 20.0),
    );
}

// ---------------------------------------------------------------------------
// Commands: does this agent run them yet?

/// Extra output lines the `test` runner prints around one script's own output,
/// or `None` when the agent does not run commands.
async fn probe_commands(r: &mut Report, fx: &Fixture, rec: &MockDashboard) -> Option<u64> {
    let agent = fx.spawn(rec, "bench-probe", 30);
    let hb = wait_frame(rec, "bench-probe", "heartbeat", 0).await?;
    rec.send_command("bench-probe", "test").await.ok()?;
    let status = rec
        .wait_frame("bench-probe", "status", hb.seq, Duration::from_secs(10))
        .await;
    let result = match status {
        Some(st) => {
            let lines: Vec<String> = rec
                .frames("bench-probe", Some("output"))
                .iter()
                .filter_map(|f| f.payload["line"].as_str().map(str::to_owned))
                .collect();
            r.note(format!(
                "`test` with one script printing `probe`: status {}, output lines {lines:?}",
                st.payload
            ));
            Some(lines.len().saturating_sub(1) as u64)
        }
        None => {
            r.note(format!(
                "the agent sent no `status` for `test` within 10 s: commands are not implemented in this build; {}",
                agent.log_tail()
            ));
            None
        }
    };
    agent.stop().await;
    result
}

// ---------------------------------------------------------------------------
// Figure 4: throughput (+ order)

/// Sends `test` to an agent on the fast receiver and waits for its status.
async fn fast_flood(
    fast: &FastReceiver,
    host: &str,
    timeout: Duration,
) -> Option<(f64, StatusSeen)> {
    let n = fast.statuses(host) + 1;
    let t0 = Instant::now();
    if !fast.send_command(host, "test") {
        return None;
    }
    let st = fast.wait_status(host, n, timeout).await?;
    Some((st.at.duration_since(t0).as_secs_f64(), st))
}

async fn figure_throughput(
    r: &mut Report,
    s: &Settings,
    fx: &Fixture,
    dash: &MockDashboard,
    fast: &FastReceiver,
    extras: u64,
    ceiling: Option<f64>,
) {
    let fig = "output throughput, 1 000 000 short lines (`seq`)";
    let budget = "≥ 1 000 000 lines/s, every line, in order, before `status`";
    let host = "bench-flood";
    let agent = fx.spawn_url(&fast.ws_url(), host, 30);
    if fast.wait_heartbeat(host, WAIT).await.is_none() {
        r.row(
            fig,
            budget,
            format!("no register; {}", agent.log_tail()),
            Verdict::Fail,
        );
        return;
    }
    let mut rates = Vec::new();
    let mut complete = true;
    for i in 0..s.throughput_runs {
        let Some((secs, st)) = fast_flood(fast, host, Duration::from_secs(300)).await else {
            r.note(format!(
                "throughput run {i}: no status; {}",
                agent.log_tail()
            ));
            complete = false;
            continue;
        };
        let rate = FLOOD_LINES as f64 / secs;
        let ok = st.in_order == FLOOD_LINES
            && st.first_break.is_none()
            && st.outputs == FLOOD_LINES + extras;
        complete &= ok;
        r.note(format!(
            "throughput run {i}: {:.0} ms command sent → `status` received, {:.2} M lines/s; before the status: {} output frames, numbered lines 1..={} in order{}, other lines {:?}; status {}",
            secs * 1000.0,
            rate / 1e6,
            group(st.outputs),
            group(st.in_order),
            st.first_break
                .as_ref()
                .map_or_else(String::new, |b| format!(", first break: {b}")),
            st.other.iter().take(4).collect::<Vec<_>>(),
            st.payload
        ));
        rates.push(rate);
    }
    agent.stop().await;

    // the same command through the mock dashboard: every frame validated
    let agent = fx.spawn(dash, host, 30);
    if wait_frame(dash, host, "heartbeat", 0).await.is_some() {
        let after = dash.last_seq();
        let before = dash.output_count(host);
        let t0 = Instant::now();
        let sent = dash.send_command(host, "test").await.is_ok();
        let st = match sent {
            true => poll_frame(dash, host, "status", after, Duration::from_secs(300)).await,
            false => None,
        };
        match st {
            Some(st) => {
                let secs = st.received.duration_since(t0).as_secs_f64();
                let n = dash.output_count(host) - before;
                complete &= n == FLOOD_LINES + extras;
                r.note(format!(
                    "through the mock dashboard (validates every frame; ceiling above): {:.2} M lines/s, {} output frames counted before the status",
                    FLOOD_LINES as f64 / secs / 1e6,
                    group(n)
                ));
            }
            None => r.note(format!("mock run: no status; {}", agent.log_tail())),
        }
    }
    agent.stop().await;

    if rates.is_empty() {
        r.row(fig, budget, "no run finished".into(), Verdict::Fail);
        return;
    }
    let med = median(&rates);
    let bottleneck = ceiling.is_some_and(|c| c < med * 1.2);
    r.row(
        fig,
        budget,
        format!(
            "{:.2} M lines/s (median of {}, command sent → `status` received, fast receiver); every line, in order, before `status`: {}{}",
            med / 1e6,
            rates.len(),
            if complete { "yes" } else { "NO" },
            if bottleneck { " (receiver near its ceiling!)" } else { "" }
        ),
        Verdict::of(med >= 1e6 && complete),
    );
}

// ---------------------------------------------------------------------------
// Figure 5: latency at 1000 lines/s

/// Maps `Instant`s to wall-clock seconds since the epoch.
struct WallClock {
    at: Instant,
    epoch_secs: f64,
}

impl WallClock {
    fn calibrate() -> WallClock {
        let mut best: Option<(Duration, Instant, f64)> = None;
        for _ in 0..50 {
            let a = Instant::now();
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs_f64();
            let b = Instant::now();
            let spread = b - a;
            if best.is_none_or(|(d, _, _)| spread < d) {
                best = Some((spread, a + spread / 2, wall));
            }
        }
        let (_, at, epoch_secs) = best.expect("calibrated");
        WallClock { at, epoch_secs }
    }

    fn wall(&self, i: Instant) -> f64 {
        if i >= self.at {
            self.epoch_secs + (i - self.at).as_secs_f64()
        } else {
            self.epoch_secs - (self.at - i).as_secs_f64()
        }
    }
}

async fn figure_latency(r: &mut Report, s: &Settings, fx: &Fixture, rec: &MockDashboard) {
    let fig = "line latency at 1 000 lines/s, produced → received";
    let budget = "p99 ≤ 5 ms";
    let agent = fx.spawn(rec, "bench-latency", 30);
    let Some(hb) = wait_frame(rec, "bench-latency", "heartbeat", 0).await else {
        r.row(
            fig,
            budget,
            format!("no register; {}", agent.log_tail()),
            Verdict::Fail,
        );
        return;
    };
    let clock = WallClock::calibrate();
    if rec.send_command("bench-latency", "test").await.is_err() {
        r.row(fig, budget, "command not sent".into(), Verdict::Fail);
        return;
    }
    let status = poll_frame(
        rec,
        "bench-latency",
        "status",
        hb.seq,
        Duration::from_secs(s.latency_secs * 3 + 30),
    )
    .await;
    let clock_end = WallClock::calibrate();
    agent.stop().await;
    if status.is_none() {
        r.row(fig, budget, "no status".into(), Verdict::Fail);
        return;
    }
    let mut lat = Vec::new();
    for f in rec.frames("bench-latency", Some("output")) {
        let line = f.payload["line"].as_str().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(_n), Some(ts)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(produced) = ts.parse::<f64>() else {
            continue;
        };
        lat.push((clock.wall(f.received) - produced) * 1000.0);
    }
    let expected = s.latency_secs * 1000;
    lat.sort_by(f64::total_cmp);
    let drift_ms = (clock_end.epoch_secs - clock.wall(clock_end.at)) * 1000.0;
    r.note(format!(
        "latency: wall clock vs monotonic drift over the run {drift_ms:.3} ms (the error bound of the mapping)"
    ));
    let p99 = percentile(&lat, 99.0);
    r.row(
        fig,
        budget,
        format!(
            "p99 {p99:.2} ms (p50 {:.2}, p99.9 {:.2}, max {:.2} ms; {} of {} lines)",
            percentile(&lat, 50.0),
            percentile(&lat, 99.9),
            lat.last().copied().unwrap_or(f64::NAN),
            group(lat.len() as u64),
            group(expected)
        ),
        Verdict::of(p99 <= 5.0 && lat.len() as u64 == expected),
    );
}

// ---------------------------------------------------------------------------
// Figure 6: heartbeats during a full-speed flood

async fn figure_heartbeat(r: &mut Report, s: &Settings, fx: &Fixture, fast: &FastReceiver) {
    let fig = "heartbeat delay while output floods at full speed (interval 1 s)";
    let budget = "never more than 1 interval late";
    let host = "bench-hb";
    let agent = fx.spawn_url(&fast.ws_url(), host, 1);
    if fast.wait_heartbeat(host, WAIT).await.is_none() {
        r.row(
            fig,
            budget,
            format!("no register; {}", agent.log_tail()),
            Verdict::Fail,
        );
        return;
    }
    // a few heartbeats of calm first
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let run = fast_flood(fast, host, Duration::from_secs(s.flood_secs * 10 + 30)).await;
    let t_end = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.stop().await;
    let Some((secs, st)) = run else {
        r.row(fig, budget, "no status".into(), Verdict::Fail);
        return;
    };
    let hbs = fast.heartbeats(host);
    // the last heartbeat before the command, every one during, the first after
    let first = hbs.iter().rposition(|h| *h <= t0).unwrap_or(0);
    let last = hbs
        .iter()
        .position(|h| *h >= t_end)
        .unwrap_or(hbs.len().saturating_sub(1));
    let window = &hbs[first..=last.max(first)];
    let gaps: Vec<f64> = window
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    let during = hbs.iter().filter(|h| **h > t0 && **h < t_end).count();
    r.row(
        fig,
        budget,
        format!(
            "max gap {:.0} ms = {:.0} ms late ({} heartbeats during a {:.1} s flood of {} lines, {:.2} M lines/s)",
            max_gap * 1000.0,
            (max_gap - 1.0).max(0.0) * 1000.0,
            during,
            secs,
            group(st.outputs),
            st.outputs as f64 / secs / 1e6
        ),
        Verdict::of(!gaps.is_empty() && max_gap <= 2.0),
    );
}

// ---------------------------------------------------------------------------
// Figure 7: a dashboard that stops reading

async fn figure_stall(r: &mut Report, fx: &Fixture, rec: &MockDashboard, extras: u64) {
    let fig = "peak memory while the dashboard stops reading during a 1 000 000-line command";
    let budget = "≤ 16 MiB, and the agent recovers when it reads again";
    let host = "bench-stall";
    let agent = fx.spawn(rec, host, 1);
    let Some(hb) = wait_frame(rec, host, "heartbeat", 0).await else {
        r.row(
            fig,
            budget,
            format!("no register; {}", agent.log_tail()),
            Verdict::Fail,
        );
        return;
    };
    let hwm_before = proc_status_kib(agent.pid, "VmHWM").unwrap_or(0);
    rec.pause(host);
    let paused_at = Instant::now();
    if rec.send_command(host, "test").await.is_err() {
        r.row(fig, budget, "command not sent".into(), Verdict::Fail);
        return;
    }
    // The command runs while nobody reads: wait until its process is gone.
    let mut started = None;
    let mut ended = None;
    let mut max_rss = 0;
    let limit = Instant::now() + Duration::from_secs(120);
    while Instant::now() < limit {
        max_rss = max_rss.max(proc_status_kib(agent.pid, "VmRSS").unwrap_or(0));
        let kids = children_of(agent.pid);
        if started.is_none() && !kids.is_empty() {
            started = Some(Instant::now());
        }
        if started.is_some() && kids.is_empty() {
            ended = Some(Instant::now());
            break;
        }
        if started.is_none() && paused_at.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hwm_paused = proc_status_kib(agent.pid, "VmHWM").unwrap_or(0);
    let resumed_at = Instant::now();
    rec.resume(host);
    let status = rec
        .wait_frame(host, "status", hb.seq, Duration::from_secs(60))
        .await;
    let recovered_in = status
        .as_ref()
        .map(|f| f.received.duration_since(resumed_at));
    // a heartbeat after the status shows the connection is healthy again
    let hb_after = match &status {
        Some(st) => {
            rec.wait_frame(host, "heartbeat", st.seq, Duration::from_secs(5))
                .await
        }
        None => None,
    };
    // VmHWM can lag the per-CPU RSS counters a little: take the larger.
    let hwm_end = proc_status_kib(agent.pid, "VmHWM")
        .unwrap_or(0)
        .max(max_rss);
    let reconnects = rec
        .events()
        .iter()
        .filter(|e| e.kind == "connected" && e.host.as_deref() == Some(host) && e.seq > hb.seq)
        .count();
    let outputs = rec.frames(host, Some("output"));
    let lines: Vec<&str> = outputs
        .iter()
        .filter(|f| f.seq > hb.seq)
        .filter_map(|f| f.payload["line"].as_str())
        .collect();
    let markers: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("[nixfleet-agent]") && l.contains("dropped"))
        .collect();
    // every line the command printed (and the runner's own) that arrived
    let delivered = (lines.len() - markers.len()) as u64;
    // "[nixfleet-agent] N output line(s) dropped: …"
    let dropped: u64 = markers
        .iter()
        .filter_map(|m| m.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum();
    let accounted = delivered + dropped == FLOOD_LINES + extras;
    agent.stop().await;
    let ran = match (started, ended) {
        (Some(a), Some(b)) => format!("{:.1} s", (b - a).as_secs_f64()),
        _ => "?".into(),
    };
    r.note(format!(
        "stall: paused {:.1} s; command ran {ran} while paused; VmHWM before {:.2} MiB, while paused {:.2} MiB, at the end {:.2} MiB; max VmRSS sampled while paused {:.2} MiB",
        (resumed_at - paused_at).as_secs_f64(),
        kib_to_mib(hwm_before),
        kib_to_mib(hwm_paused),
        kib_to_mib(hwm_end),
        kib_to_mib(max_rss)
    ));
    r.note(format!(
        "stall: after resume: status {} in {}, heartbeat after it: {}, reconnects: {reconnects}; lines delivered {} + dropped (per the agent's marker) {} = {} of {} ({}); markers {:?}",
        status.as_ref().map_or_else(|| "MISSING".to_owned(), |f| f.payload.to_string()),
        recovered_in.map_or_else(|| "-".to_owned(), |d| format!("{:.0} ms", millis(d))),
        hb_after.is_some(),
        group(delivered),
        group(dropped),
        group(delivered + dropped),
        group(FLOOD_LINES + extras),
        if accounted { "every line accounted for" } else { "LINES UNACCOUNTED" },
        markers
    ));
    let recovered = status.is_some() && hb_after.is_some() && accounted;
    r.row(
        fig,
        budget,
        format!(
            "peak {:.2} MiB (VmHWM); recovered: {}{}; {} lines delivered, {} dropped and reported",
            kib_to_mib(hwm_end),
            if recovered { "yes" } else { "NO" },
            recovered_in.map_or_else(String::new, |d| format!(
                " (`status` {:.0} ms after reading resumed, heartbeats continue)",
                millis(d)
            )),
            group(delivered),
            group(dropped)
        ),
        Verdict::of(hwm_end <= 16 * 1024 && recovered),
    );
}

// ---------------------------------------------------------------------------

fn not_run(r: &mut Report, figure: &'static str, budget: &'static str, why: &str) {
    r.row(figure, budget, why.to_owned(), Verdict::NotRun);
}

async fn run(s: Settings) -> Report {
    let mut r = Report::default();
    let fx = Fixture::new(&s);
    // counting receiver: output frames validated and counted, not stored
    let dash = MockDashboard::start(Options {
        keep_output_frames: false,
        ..Options::default()
    })
    .await
    .expect("start the counting mock dashboard");
    // recording receiver: every frame kept (order, latency, stall)
    let rec = MockDashboard::start(Options::default())
        .await
        .expect("start the recording mock dashboard");

    // fast receiver: the throughput figures
    let fast = FastReceiver::start().await;

    let mut ceiling = None;
    if s.wants("ceiling") {
        ceiling = figure_ceiling(&mut r, &s, &dash, &fast).await;
    }
    if s.wants("idle-rss") || s.wants("idle-cpu") {
        figure_idle(&mut r, &s, &fx, &dash).await;
    }
    if s.wants("startup") {
        figure_startup(&mut r, &s, &fx, &dash).await;
    }
    let needs_commands = ["throughput", "latency", "heartbeat", "stall"]
        .iter()
        .any(|k| s.wants(k));
    let extras = if needs_commands {
        probe_commands(&mut r, &fx, &rec).await
    } else {
        None
    };
    let why = "the agent does not run commands yet (no `status` for `test`)";
    if s.wants("throughput") {
        match extras {
            Some(x) => figure_throughput(&mut r, &s, &fx, &dash, &fast, x, ceiling).await,
            None => not_run(&mut r, "output throughput", "≥ 1 000 000 lines/s", why),
        }
    }
    if s.wants("latency") {
        match extras {
            Some(_) => figure_latency(&mut r, &s, &fx, &rec).await,
            None => not_run(&mut r, "line latency at 1 000 lines/s", "p99 ≤ 5 ms", why),
        }
    }
    if s.wants("heartbeat") {
        match extras {
            Some(_) => figure_heartbeat(&mut r, &s, &fx, &fast).await,
            None => not_run(
                &mut r,
                "heartbeat delay during a flood",
                "≤ 1 interval late",
                why,
            ),
        }
    }
    if s.wants("stall") {
        match extras {
            Some(x) => figure_stall(&mut r, &fx, &rec, x).await,
            None => not_run(&mut r, "peak memory, stalled dashboard", "≤ 16 MiB", why),
        }
    }
    if s.wants("size") {
        figure_size(&mut r);
    }
    for (name, d) in [("counting", &dash), ("recording", &rec)] {
        let v = d.violations();
        if !v.is_empty() {
            r.note(format!(
                "{} protocol violations on the {name} mock, first: {:?}",
                v.len(),
                v.first()
            ));
        }
    }
    dash.shutdown().await;
    rec.shutdown().await;
    r
}

fn main() {
    let s = Settings::from_env();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let report = rt.block_on(run(s.clone()));
    rt.shutdown_timeout(Duration::from_secs(1));

    println!();
    println!(
        "## NixFleet agent resource budget{}",
        if s.quick {
            " (BUDGET_QUICK: shortened windows)"
        } else {
            ""
        }
    );
    println!();
    for line in machine() {
        println!("- {line}");
    }
    println!("- run took {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("| figure | measured | budget | result |");
    println!("| --- | --- | --- | --- |");
    for row in &report.rows {
        println!(
            "| {} | {} | {} | {} |",
            row.figure,
            row.measured.replace('|', "\\|"),
            row.budget,
            row.verdict.label()
        );
    }
    if !report.notes.is_empty() {
        println!();
        println!("Notes:");
        for n in &report.notes {
            println!("- {n}");
        }
    }
    let failed = report
        .rows
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Fail));
    let strict = std::env::var("BUDGET_STRICT").is_ok_and(|v| !v.is_empty() && v != "0");
    if failed && strict {
        std::process::exit(1);
    }
}
