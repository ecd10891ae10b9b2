//! The Lock, System and Tests compartments of the dashboard's host row: the
//! heartbeat's `update_status` (protocol.md, "heartbeat"; upstream
//! `src/internal/agent/status.go` and `commands.go`).
//!
//! - **Lock**: the age of the last commit that touched `flake.lock` (≤ 7 whole
//!   days `ok`, older `outdated`, no history `unknown`), measured with
//!   `git log` on the blocking pool: at start (alongside the first
//!   connection, so that `register` never waits for git; the first heartbeat
//!   carries the persisted value), every [`LOCK_INTERVAL`] ([`lock_loop`]),
//!   and by [`refresh_lock`] before the status of a pull.
//! - **System** and **Tests**: set by the commands (the transition table in
//!   protocol.md): `working` while a switch or a test runs, `outdated` after a
//!   pull that moved HEAD, `ok`/`error` after a switch or a test, Tests
//!   `outdated` after a successful switch.
//! - A `working` left with nothing running for [`STALE_WORKING`] becomes
//!   `unknown` (upstream's P1110 rule), checked on every heartbeat.
//!
//! The compartments are kept in `<state>/compartments.json` (at most
//! [`MAX_FILE`] bytes, written to a temporary file and renamed), so the restart
//! after a switch, a crash or a reboot keeps them. A file that cannot be read
//! or parsed is logged and replaced by the next write, never fatal. Writes run
//! on the blocking pool from [`persist_loop`]: no heartbeat waits for the disk.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::{StatusCheck, UpdateStatus};
use crate::util::clip;
use crate::util::lock;

/// How long a `working` may stay with nothing running before it is `unknown`.
pub const STALE_WORKING: Duration = Duration::from_secs(5 * 60);
/// How often the lock age is measured again without being asked.
pub const LOCK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A `flake.lock` last committed this many whole days ago or fewer is `ok`.
pub const LOCK_MAX_AGE_DAYS: u64 = 7;
/// Largest compartments file read back.
pub const MAX_FILE: u64 = 64 * 1024;
/// Longest compartment message kept, in bytes.
pub const MAX_MESSAGE: usize = 1024;
/// The file's name in the state directory.
pub const FILE_NAME: &str = "compartments.json";
/// How long `git log` may take for the lock age.
const GIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A compartment's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Green.
    Ok,
    /// Yellow: behind.
    Outdated,
    /// Red.
    Error,
    /// Grey: not known.
    Unknown,
    /// Blue pulse: being changed now.
    Working,
}

impl Level {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Outdated => "outdated",
            Level::Error => "error",
            Level::Unknown => "unknown",
            Level::Working => "working",
        }
    }
}

/// One compartment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Its colour.
    pub status: Level,
    /// Why, for the UI.
    pub message: String,
    /// When it was decided, RFC 3339 UTC; empty when never.
    pub checked_at: String,
}

impl Check {
    /// A check decided now.
    pub fn now(status: Level, message: impl Into<String>) -> Check {
        Check::at(status, message, SystemTime::now())
    }

    /// A check decided at `when`.
    pub fn at(status: Level, message: impl Into<String>, when: SystemTime) -> Check {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Check {
            status,
            message,
            checked_at: rfc3339(when),
        }
    }

    fn never() -> Check {
        Check {
            status: Level::Unknown,
            message: "not checked yet".to_string(),
            checked_at: String::new(),
        }
    }

    fn wire(&self) -> StatusCheck {
        StatusCheck {
            status: self.status.as_str().to_string(),
            message: self.message.clone(),
            checked_at: self.checked_at.clone(),
        }
    }
}

/// Which compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Lock.
    Lock,
    /// System.
    System,
    /// Tests.
    Tests,
}

/// The three compartments the agent decides (Git is the dashboard's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compartments {
    /// Lock.
    pub lock: Check,
    /// System.
    pub system: Check,
    /// Tests.
    pub tests: Check,
}

impl Default for Compartments {
    fn default() -> Self {
        Compartments {
            lock: Check::never(),
            system: Check::never(),
            tests: Check::never(),
        }
    }
}

impl Compartments {
    fn part_mut(&mut self, part: Part) -> &mut Check {
        match part {
            Part::Lock => &mut self.lock,
            Part::System => &mut self.system,
            Part::Tests => &mut self.tests,
        }
    }

    /// The heartbeat's `update_status` (`git` empty, as upstream's agent sends it).
    pub fn update_status(&self) -> UpdateStatus {
        UpdateStatus {
            git: StatusCheck::default(),
            lock: self.lock.wire(),
            system: self.system.wire(),
            tests: self.tests.wire(),
        }
    }
}

/// The stale-`working` rule. `idle_since` is when nothing was first seen
/// running while a compartment was `working`; returns true when it changed
/// something.
pub fn expire_stale(
    c: &mut Compartments,
    idle_since: &mut Option<Instant>,
    running: bool,
    now: Instant,
    wall: SystemTime,
) -> bool {
    let working = [Part::System, Part::Tests]
        .into_iter()
        .filter(|p| c.part_mut(*p).status == Level::Working)
        .count();
    if running || working == 0 {
        *idle_since = None;
        return false;
    }
    let since = *idle_since.get_or_insert(now);
    if now.duration_since(since) < STALE_WORKING {
        return false;
    }
    for part in [Part::System, Part::Tests] {
        let check = c.part_mut(part);
        if check.status == Level::Working {
            *check = Check::at(
                Level::Unknown,
                "Status stale: nothing has run for 5 minutes (the agent may have restarted during the command)",
                wall,
            );
        }
    }
    *idle_since = None;
    true
}

/// The lock rule: `seconds` is the age of the last commit touching
/// `flake.lock`, `None` when it has no history.
pub fn lock_check_for_age(age: Option<Duration>, when: SystemTime) -> Check {
    let Some(age) = age else {
        return Check::at(Level::Unknown, "flake.lock has no git history", when);
    };
    let days = age.as_secs() / 86_400;
    let ago = match days {
        0 => "Updated today".to_string(),
        1 => "Updated yesterday".to_string(),
        n => format!("Updated {n} days ago"),
    };
    if days <= LOCK_MAX_AGE_DAYS {
        Check::at(Level::Ok, ago, when)
    } else {
        Check::at(
            Level::Outdated,
            format!("{ago} - older than {LOCK_MAX_AGE_DAYS} days, consider updating"),
            when,
        )
    }
}

/// Measures the Lock compartment of the repository in `repo` (blocking: runs
/// `git log -1 --format=%ct -- flake.lock` with the children's clean
/// environment `env`).
pub fn measure_lock(repo: &Path, env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Check {
    let now = SystemTime::now();
    if !repo.join("flake.lock").is_file() {
        return Check::at(Level::Unknown, "flake.lock not found", now);
    }
    if crate::host::git_head_commit(repo).is_none_or(|h| h.is_empty()) {
        // no commit at all (git log would fail)
        return lock_check_for_age(None, now);
    }
    let args: [&OsStr; 7] = [
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("log"),
        OsStr::new("-1"),
        OsStr::new("--format=%ct"),
        OsStr::new("--"),
        OsStr::new("flake.lock"),
    ];
    let output = match crate::bounded::run("git", &args, env, GIT_TIMEOUT) {
        Ok(o) => o,
        Err(e) => {
            return Check::at(Level::Error, format!("cannot check flake.lock: {e}"), now);
        }
    };
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        return Check::at(
            Level::Error,
            format!("cannot check flake.lock: git log failed: {first}"),
            now,
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let text = text.trim();
    if text.is_empty() {
        return lock_check_for_age(None, now);
    }
    let Ok(secs) = text.parse::<u64>() else {
        return Check::at(
            Level::Error,
            format!("cannot check flake.lock: git printed {:?}", clip(text, 40)),
            now,
        );
    };
    let committed = UNIX_EPOCH + Duration::from_secs(secs);
    let age = now.duration_since(committed).unwrap_or(Duration::ZERO);
    lock_check_for_age(Some(age), now)
}

/// The compartments of one agent process, shared by its tasks.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    /// `None`: kept in memory only.
    path: Option<PathBuf>,
    dirty: Notify,
    lock_asked: Notify,
    writes: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    c: Compartments,
    idle_since: Option<Instant>,
}

impl Store {
    /// Reads `<state_dir>/compartments.json` (blocking; at start-up). A missing
    /// file starts every compartment `unknown`; a bad one is logged, then
    /// replaced by the next write.
    pub fn load(state_dir: &Path) -> Store {
        let path = state_dir.join(FILE_NAME);
        let c = match read_file(&path) {
            Ok(Some(c)) => c,
            Ok(None) => Compartments::default(),
            Err(why) => {
                tracing::warn!(
                    "ignoring the compartments file {}: {why}; it is replaced",
                    path.display()
                );
                Compartments::default()
            }
        };
        Store {
            inner: Mutex::new(Inner {
                c,
                idle_since: None,
            }),
            path: Some(path),
            dirty: Notify::new(),
            lock_asked: Notify::new(),
            writes: AtomicU64::new(0),
        }
    }

    /// Compartments kept in memory only (every one `unknown` at first).
    pub fn in_memory() -> Store {
        Store {
            inner: Mutex::new(Inner {
                c: Compartments::default(),
                idle_since: None,
            }),
            path: None,
            dirty: Notify::new(),
            lock_asked: Notify::new(),
            writes: AtomicU64::new(0),
        }
    }

    /// The compartments now.
    pub fn get(&self) -> Compartments {
        lock(&self.inner).c.clone()
    }

    /// Sets one compartment (and has it written to disk soon).
    pub fn set(&self, part: Part, check: Check) {
        {
            let mut inner = lock(&self.inner);
            let slot = inner.c.part_mut(part);
            if *slot == check {
                return;
            }
            *slot = check;
        }
        self.dirty.notify_one();
    }

    /// The `update_status` for a heartbeat, after applying the stale-`working`
    /// rule (`running`: whether a command runs now). Never waits for the disk.
    pub fn heartbeat_view(&self, running: bool) -> UpdateStatus {
        let mut inner = lock(&self.inner);
        let Inner { c, idle_since } = &mut *inner;
        if expire_stale(c, idle_since, running, Instant::now(), SystemTime::now()) {
            tracing::info!("a `working` compartment went stale with nothing running: now unknown");
            self.dirty.notify_one();
        }
        c.update_status()
    }

    /// Asks [`lock_loop`] to measure the lock age now.
    pub fn request_lock_check(&self) {
        self.lock_asked.notify_one();
    }

    /// How many times the file was written (for tests and logs).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes the compartments now (blocking): on the way out, so that the
    /// transitions just before an exit (a switch's `ok` before exit 101)
    /// reach the next process.
    pub fn flush(&self) {
        self.write_now();
    }

    fn write_now(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let c = self.get();
        match write_file(path, &c) {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("compartments written to {}", path.display());
            }
            Err(e) => tracing::warn!(
                "cannot write the compartments to {}: {e} (they stay in memory)",
                path.display()
            ),
        }
    }
}

fn read_file(path: &Path) -> Result<Option<Compartments>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    serde_json::from_slice::<Compartments>(&text)
        .map(Some)
        .map_err(|e| format!("not a compartments file: {e}"))
}

fn write_file(path: &Path, c: &Compartments) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &text)
}

/// Writes the compartments whenever they change, on the blocking pool.
pub async fn persist_loop(store: std::sync::Arc<Store>) {
    loop {
        store.dirty.notified().await;
        let s = store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.write_now()).await {
            tracing::warn!("writing the compartments failed: {e}");
        }
    }
}

/// Measures the lock age at once, then every [`LOCK_INTERVAL`] and when asked.
pub async fn lock_loop(
    store: std::sync::Arc<Store>,
    repo: PathBuf,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
) {
    let env = std::sync::Arc::new(env);
    loop {
        refresh_lock(&store, &repo, &env).await;
        tokio::select! {
            _ = tokio::time::sleep(LOCK_INTERVAL) => {}
            _ = store.lock_asked.notified() => {}
        }
    }
}

/// Measures the lock age now on the blocking pool and stores it (what
/// `pull`, `switch` and `refresh-lock` wait for before their status).
pub async fn refresh_lock(
    store: &Store,
    repo: &Path,
    env: &std::sync::Arc<Vec<(std::ffi::OsString, std::ffi::OsString)>>,
) -> Check {
    let (r, e) = (repo.to_path_buf(), env.clone());
    let check = match tokio::task::spawn_blocking(move || measure_lock(&r, &e)).await {
        Ok(check) => check,
        Err(e) => Check::now(Level::Error, format!("measuring the lock age failed: {e}")),
    };
    store.set(Part::Lock, check.clone());
    check
}

/// The System compartment with the reboot need added to its message while it
/// is `ok` ("Switch succeeded — reboot needed: kernel changed"). Added when
/// the heartbeat is built, so it goes away by itself after the reboot.
pub fn with_reboot_need(
    mut status: UpdateStatus,
    need: Option<&crate::host::RebootNeed>,
) -> UpdateStatus {
    if let Some(note) = need.and_then(crate::host::RebootNeed::message)
        && status.system.status == Level::Ok.as_str()
    {
        status.system.message = if status.system.message.is_empty() {
            note
        } else {
            format!("{} — {note}", status.system.message)
        };
    }
    status
}

/// `time` as RFC 3339 UTC with whole seconds, e.g. `2026-12-01T21:27:05Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;
