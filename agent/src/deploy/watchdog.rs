//! The rollback watchdog (docs/commands.md, "Automatic rollback").
//!
//! Before a switch (`switch`, `pull-switch`, `update`, `rollback`) the agent
//! records, in the switch record's `watch` file, the store path of the system
//! that runs now (`/run/current-system`, or the current Home Manager
//! generation), the deadline and, on NixOS, the units that are active
//! (`units.before`). When the tool succeeds, the switch supervisor does not
//! exit: it waits for the *verdict* of the agent of the new generation, which
//! must register with the dashboard and pass the host's health checks. If
//! that agent confirms in time, the supervisor ends; if it reports a failed
//! check, or nothing comes before the deadline, the supervisor switches back
//! to the recorded store path itself: on NixOS `nix-env --set` of the system
//! profile (so the bootloader's default is the old generation again) and the
//! old system's `bin/switch-to-configuration switch`; on nix-darwin the
//! profile and `activate`; for Home Manager the old generation's `activate`.
//! It does not pick "the generation before", which can be the wrong one.
//!
//! The verdict is one file, `verdict`, made with a hard link that fails when
//! it exists: whoever decides first (the agent: `confirmed`, or a failed
//! check; the supervisor: the deadline) decides, and the other one reads it.
//! The supervisor keeps `confirm.left`, the seconds left, up to date: after a
//! reboot inside the window, the new agent starts a supervisor that guards
//! the rest of it. A rollback is never watched itself and nothing is retried:
//! a rolled-back generation stays rolled back until someone switches again.
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `watch` | agent | `previous=<store path>`, `kind=nixos\|darwin\|home-manager`, `profile=<path>`, `deadline=<seconds>` |
//! | `units.before` | agent | NixOS: the units active before the switch, one a line |
//! | `confirm.left` | supervisor | seconds left in the window |
//! | `verdict` | agent or supervisor | `confirmed`, or `rollback` and the reason on the next line |
//! | `rollback.log` | supervisor | the rollback's output |
//! | `rollback.exit` | supervisor | the rollback's exit code |

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use super::activation::Kind;
use super::activation::{Action, Target, activate, unit_name};
use super::record::{EXIT_NOT_STARTED, Record};

/// How often the supervisor looks for the verdict.
const POLL: Duration = Duration::from_millis(100);
/// How often the supervisor writes `confirm.left`.
const KEEP_LEFT: Duration = Duration::from_secs(2);

/// What switches back, and to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The store path of the system (or Home Manager generation) before the
    /// switch.
    pub previous: PathBuf,
    /// How to activate it.
    pub kind: Kind,
    /// The system profile set back to `previous` (NixOS and nix-darwin).
    pub profile: PathBuf,
    /// The link that names the running system (`/run/current-system`, or the
    /// Home Manager profile): whether a switch activated is told by where it
    /// points, not by the tool's exit code.
    pub current: Option<PathBuf>,
    /// The confirmation window.
    pub deadline: Duration,
}

/// The decision on a watched switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The new generation's agent registered and its checks passed.
    Confirmed,
    /// Switch back, for this reason.
    RollBack(String),
}

impl Watch {
    /// Writes the `watch` file of `record`.
    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        let mut text = format!(
            "previous={}\nkind={}\nprofile={}\ndeadline={}\n",
            self.previous.display(),
            self.kind.as_str(),
            self.profile.display(),
            self.deadline.as_secs()
        );
        if let Some(current) = &self.current {
            text.push_str(&format!("current={}\n", current.display()));
        }
        record.write_file("watch", text.as_bytes())
    }

    /// The `watch` file of `record`, if the switch is watched.
    pub fn load(record: &Record) -> Option<Watch> {
        let text = record.read_small("watch")?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let kind = Kind::parse(&field("kind")?)?;
        Some(Watch {
            previous: PathBuf::from(field("previous")?),
            kind,
            profile: PathBuf::from(field("profile")?),
            deadline: Duration::from_secs(field("deadline")?.parse().ok()?),
            current: field("current").map(PathBuf::from),
        })
    }

    /// Whether the running system is no longer the one before the switch:
    /// the switch activated, whatever the tool's exit code says.
    pub fn activated(&self) -> bool {
        self.current
            .as_deref()
            .and_then(|c| fs::canonicalize(c).ok())
            .is_some_and(|now| now != self.previous)
    }

    /// The name of the generation rolled back to: its store path's name.
    pub fn previous_name(&self) -> String {
        self.previous
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.previous.display().to_string())
    }
}

/// The record's GC root on the system the watchdog would roll back to.
const TARGET_ROOT: &str = "rollback-target";

/// How long `nix-store --add-root` may take.
const ROOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Holds a GC root on `watch.previous` from before the activation until
/// the switch is settled ([`release_target`]): once the switch moved the
/// profile, the system to roll back to may be referenced by nothing else
/// (its profile generation deleted by `nix-collect-garbage -d`, no longer
/// booted nor current), and a garbage collection would take it away from
/// under the rollback. `nix-store --realise <path> --add-root
/// <record>/rollback-target --indirect`, through the host's Nix (its
/// daemon where `NIX_REMOTE=daemon`), with the operations' environment
/// `env`.
pub fn hold_target(
    record: &Record,
    watch: &Watch,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<(), String> {
    let link = record.dir().join(TARGET_ROOT);
    let args = [
        OsStr::new("--realise"),
        watch.previous.as_os_str(),
        OsStr::new("--add-root"),
        link.as_os_str(),
        OsStr::new("--indirect"),
    ];
    let out = crate::bounded::run("nix-store", &args, env, ROOT_TIMEOUT)
        .map_err(|e| format!("cannot run nix-store: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`nix-store --realise … --add-root …` failed ({}): {}",
            out.status,
            crate::util::clip(String::from_utf8_lossy(&out.stderr).trim(), 300)
        ))
    }
}

/// The GC root of the last built system, in the state directory.
pub const BUILT_LINK: &str = "built-system";

/// Drops the out-link of the last build (`<state_dir>/built-system`): a
/// system refused after its build, or rolled back, is not kept from the
/// garbage collector until the next build.
pub fn drop_built_link(state_dir: &Path) {
    remove_root(&state_dir.join(BUILT_LINK), "the out-link");
}

/// Removes the GC root `link` (`what` names it in an error); gone already
/// is fine.
fn remove_root(link: &Path, what: &str) {
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("nixfleet-agent: cannot drop {what} {}: {e}", link.display()),
    }
}

/// Drops the GC root of [`hold_target`] (the switch is confirmed, or the
/// host is back on the system it held: its profile generation keeps it).
pub fn release_target(record: &Record) {
    remove_root(&record.dir().join(TARGET_ROOT), "the GC root");
}

/// The record's marker of a switch whose tool failed after it had activated
/// the new system (its content: the tool's exit code).
const ACTIVATED_MARKER: &str = "activated.exit";

/// Called by the supervisor when the tool ended with `code`, before the code
/// is on record: a failed tool whose switch activated all the same is marked,
/// so that it is watched (health checks, failed units, the restart onto the
/// new generation) like a switch that succeeded. Returns whether the switch
/// is to be watched.
pub fn note_tool_end(record: &Record, watch: &Watch, code: i32) -> bool {
    if code == 0 {
        return true;
    }
    if !watch.activated() {
        return false;
    }
    if let Err(e) = record.write_file(ACTIVATED_MARKER, code.to_string().as_bytes()) {
        eprintln!("nixfleet-agent: cannot mark the switch as activated: {e}");
        return false;
    }
    true
}

/// The exit code of a tool that failed after activating, if the supervisor
/// marked it so.
pub fn activated_with_error(record: &Record) -> Option<i32> {
    record.read_small(ACTIVATED_MARKER)?.trim().parse().ok()
}

/// Whether a switch that ended with `code` is watched: it succeeded, or it
/// failed after activating.
pub fn engaged(record: &Record, code: i32) -> bool {
    code == 0 || activated_with_error(record) == Some(code)
}

/// Decides, unless decided already; returns the verdict that holds.
pub fn decide(record: &Record, verdict: &Verdict) -> Verdict {
    let text = match verdict {
        Verdict::Confirmed => "confirmed\n".to_string(),
        Verdict::RollBack(why) => format!("rollback\n{why}\n"),
    };
    let tmp = record
        .dir()
        .join(format!(".verdict.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        // the link fails when `verdict` exists: the first decision stays
        .and_then(|()| fs::hard_link(&tmp, record.dir().join("verdict")));
    let _ = fs::remove_file(&tmp);
    if let Err(e) = &written
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        tracing::warn!(
            "cannot write the verdict of {}: {e}",
            record.dir().display()
        );
    }
    verdict_of(record).unwrap_or_else(|| verdict.clone())
}

/// The verdict, once there is one.
pub fn verdict_of(record: &Record) -> Option<Verdict> {
    let text = record.read_small("verdict")?;
    let mut lines = text.lines();
    match lines.next()? {
        "confirmed" => Some(Verdict::Confirmed),
        "rollback" => Some(Verdict::RollBack(
            lines.next().unwrap_or("no reason given").to_string(),
        )),
        _ => None,
    }
}

/// The rollback's exit code, once it ended.
pub fn rollback_exit(record: &Record) -> Option<i32> {
    record.read_small("rollback.exit")?.parse().ok()
}

/// When the rollback ended (its `rollback.exit` was written).
pub fn rollback_time(record: &Record) -> Option<std::time::SystemTime> {
    fs::metadata(record.dir().join("rollback.exit"))
        .and_then(|m| m.modified())
        .ok()
}

/// The seconds left in the window, as the last supervisor wrote them.
pub fn left(record: &Record) -> Option<Duration> {
    record
        .read_small("confirm.left")?
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// The supervisor's exit status when its record was deleted while it
/// guarded the window ([`guard`]).
pub const EXIT_RECORD_GONE: i32 = 1;

/// Whether the record's `watch` file is known to be gone: the record was
/// deleted (its state directory wiped) while the window was open. An error
/// other than "not found" is not taken for gone.
fn record_gone(record: &Record) -> bool {
    matches!(record.dir().join("watch").try_exists(), Ok(false))
}

/// The supervisor's part after the tool succeeded: waits for the verdict
/// (the rest of the window when resumed after a reboot), rolls back if that
/// is the verdict. Returns the supervisor's exit status.
///
/// A record deleted while the window is open ends the guard without a
/// rollback ([`EXIT_RECORD_GONE`]): without it no agent can confirm the
/// switch, so the deadline would roll back a healthy generation, and no
/// agent could learn of the rollback or report it.
pub fn guard(record: &Record, watch: &Watch) -> i32 {
    let window = left(record).unwrap_or(watch.deadline).min(watch.deadline);
    let end = Instant::now() + window;
    let mut last_kept: Option<Instant> = None;
    let verdict = loop {
        if let Some(v) = verdict_of(record) {
            break v;
        }
        if record_gone(record) {
            eprintln!(
                "nixfleet-agent: the switch record {} was deleted: the watchdog stops without rolling back (no agent could confirm the switch or report a rollback)",
                record.dir().display()
            );
            return EXIT_RECORD_GONE;
        }
        let now = Instant::now();
        if now >= end {
            break decide(
                record,
                &Verdict::RollBack(format!(
                    "the new generation's agent did not confirm within {} s (it did not reach the dashboard, or its health checks did not finish)",
                    watch.deadline.as_secs()
                )),
            );
        }
        if last_kept.is_none_or(|t| now.duration_since(t) >= KEEP_LEFT) {
            let secs = end.saturating_duration_since(now).as_secs();
            let _ = record.write_file("confirm.left", secs.to_string().as_bytes());
            last_kept = Some(now);
        }
        std::thread::sleep(POLL);
    };
    match verdict {
        Verdict::Confirmed => {
            release_target(record);
            0
        }
        Verdict::RollBack(why) => {
            eprintln!(
                "nixfleet-agent: rolling back to {}: {why}",
                watch.previous.display()
            );
            let code = roll_back(record, watch);
            if let Err(e) = record.write_file("rollback.exit", code.to_string().as_bytes()) {
                eprintln!("nixfleet-agent: cannot record the rollback's exit code {code}: {e}");
            }
            if code == 0 {
                // the profile's generation and the running system hold it
                // now; after a failed rollback the root stays with the record
                // (pruned with it) for a rollback by hand
                release_target(record);
                // the rolled-back system is not kept alive by the build's
                // out-link until the next build (record: <state>/switch/<id>)
                if let Some(state) = record.dir().parent().and_then(Path::parent) {
                    drop_built_link(state);
                }
            }
            code
        }
    }
}

/// Activates the recorded system again; returns the first failing step's
/// exit code, or 0. The output goes to `rollback.log` and, once the step
/// ended, to the supervisor's own output (the switch's output).
fn roll_back(record: &Record, watch: &Watch) -> i32 {
    let log_path = record.dir().join("rollback.log");
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path);
    let note = |line: &str| {
        eprintln!("{line}");
        if let Ok(mut log) = log.as_ref() {
            use std::io::Write;
            let _ = writeln!(log, "{line}");
        }
    };
    let mut run = |program: &Path, args: &[&OsStr]| -> i32 {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        if let Ok(log) = &log
            && let (Ok(out), Ok(err)) = (log.try_clone(), log.try_clone())
        {
            cmd.stdout(out).stderr(err);
        }
        match cmd.status() {
            Ok(status) => crate::exec::runner::exit_code(status),
            Err(e) => {
                note(&format!(
                    "nixfleet-agent: cannot run {}: {e}",
                    program.display()
                ));
                EXIT_NOT_STARTED
            }
        }
    };
    let code = activate(
        watch.kind,
        Action::Switch,
        &watch.profile,
        &Target::System(watch.previous.clone()),
        &unit_name(record, "rollback"),
        &mut run,
        &note,
    );
    if code != 0 {
        realign(record, watch, &mut run, &note);
    }
    // the switch's output gets what the rollback printed
    if let Ok(text) = fs::read(&log_path) {
        use std::io::Write;
        let _ = std::io::stderr().write_all(&text[text.len().saturating_sub(64 * 1024)..]);
    }
    code
}

/// The record's note of the system a host runs after a rollback failed.
const RUNS_AFTER_FAILED_ROLLBACK: &str = "rollback.runs";

/// After a rollback whose activation failed: the profile already names the
/// old system, but the host may still run the new one (a boot loader step
/// that failed before anything switched), and the next boot would run
/// another system than the one running now. When the running system is not
/// the old one, the profile is set back to what runs and (NixOS) its boot
/// entry made the default again (`switch-to-configuration boot`), so that
/// profile, boot default and running system agree; what runs is kept in
/// the record for the status ([`runs_after_failed_rollback`]).
fn realign(
    record: &Record,
    watch: &Watch,
    run: &mut dyn FnMut(&Path, &[&OsStr]) -> i32,
    note: &dyn Fn(&str),
) {
    if watch.kind == Kind::HomeManager {
        return;
    }
    let Some(runs) = watch
        .current
        .as_deref()
        .and_then(|c| fs::canonicalize(c).ok())
    else {
        return;
    };
    if runs == watch.previous {
        // the old system runs (it failed after switching): the profile
        // already names it
        let _ = record.write_file(
            RUNS_AFTER_FAILED_ROLLBACK,
            runs.as_os_str().as_encoded_bytes(),
        );
        return;
    }
    note(&format!(
        "nixfleet-agent: the rollback failed and the host still runs {}: its profile and boot entry name it again",
        runs.display()
    ));
    let code = match watch.kind {
        // the profile and the boot loader's default entry
        Kind::NixOs => activate(
            watch.kind,
            Action::Boot,
            &watch.profile,
            &Target::System(runs.clone()),
            &unit_name(record, "realign"),
            run,
            note,
        ),
        // nix-darwin boots what its profile names: the profile alone (its
        // `activate` would activate again what runs)
        _ => {
            let set = [
                OsStr::new("-p"),
                watch.profile.as_os_str(),
                OsStr::new("--set"),
                runs.as_os_str(),
            ];
            run(Path::new("nix-env"), &set)
        }
    };
    if code == 0 {
        let _ = record.write_file(
            RUNS_AFTER_FAILED_ROLLBACK,
            runs.as_os_str().as_encoded_bytes(),
        );
    } else {
        note(&format!(
            "nixfleet-agent: the profile and the boot entry could not be set back to {} (exit {code})",
            runs.display()
        ));
    }
}

/// The system a host runs after its rollback failed, with its profile and
/// boot default agreeing, when the supervisor could tell and align them.
pub fn runs_after_failed_rollback(record: &Record) -> Option<PathBuf> {
    record
        .read_small(RUNS_AFTER_FAILED_ROLLBACK)
        .filter(|s| !s.trim().is_empty())
        .map(|s| PathBuf::from(s.trim()))
}

/// The last lines of the rollback's output.
pub fn rollback_tail(record: &Record) -> String {
    let Ok(text) = fs::read(record.dir().join("rollback.log")) else {
        return String::new();
    };
    let from = text.len().saturating_sub(4096);
    crate::exec::runner::Tail::from_bytes(&text[from..]).text()
}
