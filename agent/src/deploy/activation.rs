//! Activating a built system: the one path for a switch and for the rollback
//! watchdog's switch back. The system profile is set to the store path
//! (NixOS and nix-darwin; Home Manager's `activate` links its own profile),
//! then the system is activated: NixOS `bin/switch-to-configuration <action>`
//! the way nixos-rebuild 26.05 (`nixos-rebuild-ng`) runs it, in a transient
//! unit of its own started with `systemd-run`; nix-darwin and Home Manager
//! their `activate`.
//!
//! A switch runs it as `nixfleet-agent --activate <kind> <action> <profile>
//! <system>` ([`ACTIVATE_FLAG`], dispatched by `main` to [`activate_main`])
//! under the switch supervisor, the `rollback` command with
//! `--previous-generation` for the system; every argument is written by the
//! agent: the store path is what `nix build` printed, never anything the
//! dashboard sent.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use super::record::ACTIVATE_FLAG;
use super::record::{EXIT_NOT_STARTED, Record, TIMEOUT_ARG};
use crate::config::SwitchTool;

/// Where transient units are started: systemd is the service manager
/// (`sd_booted`: `/run/systemd/system` exists).
const SYSTEMD_RUNTIME: &str = "/run/systemd/system";

/// The kind of system that is switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NixOS: `bin/switch-to-configuration <action>`.
    NixOs,
    /// nix-darwin: `activate`.
    Darwin,
    /// Home Manager: the generation's `activate`.
    HomeManager,
}

impl Kind {
    /// The kind of system `tool`'s host switches.
    pub fn of(tool: SwitchTool) -> Kind {
        match tool {
            SwitchTool::NixosRebuild => Kind::NixOs,
            SwitchTool::DarwinRebuild => Kind::Darwin,
            SwitchTool::HomeManager => Kind::HomeManager,
        }
    }

    /// The name in a watch file and on `--activate`'s command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NixOs => "nixos",
            Kind::Darwin => "darwin",
            Kind::HomeManager => "home-manager",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "nixos" => Some(Kind::NixOs),
            "darwin" => Some(Kind::Darwin),
            "home-manager" => Some(Kind::HomeManager),
            _ => None,
        }
    }

    /// What a built `system` of this kind must hold, as the rebuild tools
    /// expect it (a system `nixos-rebuild` would switch to: its
    /// `nixos-version` and activation program; nix-darwin's `darwin-version`
    /// and `activate`; a Home Manager generation's `activate`); `Err` names
    /// what is missing. Checked before the profile is touched.
    pub fn check_system(self, system: &Path) -> Result<(), String> {
        let (what, marker) = match self {
            Kind::NixOs => ("a NixOS system", Some("nixos-version")),
            Kind::Darwin => ("a nix-darwin system", Some("darwin-version")),
            Kind::HomeManager => ("a Home Manager generation", None),
        };
        let activator = self.activator(system);
        let mut missing: Vec<String> = Vec::new();
        if let Some(marker) = marker
            && !system.join(marker).exists()
        {
            missing.push(marker.to_string());
        }
        if !executable(&activator) {
            missing.push(format!(
                "{} (executable)",
                activator
                    .strip_prefix(system)
                    .unwrap_or(&activator)
                    .display()
            ));
        }
        if !missing.is_empty() {
            return Err(format!(
                "{} is not {what}: it has no {}",
                system.display(),
                missing.join(" and no ")
            ));
        }
        if self == Kind::Darwin && legacy_activate_user(system) {
            // darwin-rebuild runs it as $SUDO_USER before `activate`, and
            // refuses without one: the agent, started by launchd, has none
            return Err(format!(
                "{} was built by a nix-darwin older than 25.05: its legacy `activate-user` must run as the user who ran `sudo darwin-rebuild`, which the agent cannot tell; update nix-darwin in the configuration (25.05 or later), or switch once by hand with `sudo darwin-rebuild switch`",
                system.display()
            ));
        }
        Ok(())
    }

    /// The program that activates `system` of this kind.
    pub fn activator(self, system: &Path) -> PathBuf {
        match self {
            Kind::NixOs => system.join("bin/switch-to-configuration"),
            Kind::Darwin | Kind::HomeManager => system.join("activate"),
        }
    }
}

/// What an activation does with the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make it the running system and the boot default.
    Switch,
    /// Make it the boot default only (NixOS: `switch-to-configuration boot`),
    /// for a system that must not be switched into while running.
    Boot,
    /// Say what a switch would do, change nothing (NixOS).
    DryActivate,
}

impl Action {
    /// `switch-to-configuration`'s name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::DryActivate => "dry-activate",
        }
    }

    fn parse(name: &str) -> Option<Action> {
        match name {
            "switch" => Some(Action::Switch),
            "boot" => Some(Action::Boot),
            _ => None,
        }
    }
}

/// How NixOS's own `nixos-rebuild` (nixpkgs 26.05, `nixos-rebuild-ng`) runs
/// `switch-to-configuration`: in a transient unit of its own, outside the
/// caller's sandbox and cgroup. The agent's unit has `ProtectSystem=full`
/// (read-only `/etc` and `/boot`, which activation writes) and
/// `KillMode=process`; in a transient unit the activation gets PID 1's
/// environment, a writable system, and outlives whatever happens to the
/// agent's unit meanwhile. `--wait --pipe` make it behave like a child: its
/// output comes back, its exit code decides.
pub fn activation(
    switch: &Path,
    action: Action,
    unit: &str,
) -> (PathBuf, Vec<OsString>, &'static str) {
    let direct = || {
        (
            switch.to_path_buf(),
            vec![OsString::from(action.as_str())],
            "directly (systemd is not the service manager here, or systemd-run is missing)",
        )
    };
    if !Path::new(SYSTEMD_RUNTIME).is_dir() {
        return direct();
    }
    let Some(systemd_run) = on_path("systemd-run") else {
        return direct();
    };
    let mut args: Vec<OsString> = Vec::new();
    for name in [
        "LOCALE_ARCHIVE",
        "NIXOS_INSTALL_BOOTLOADER",
        "NIXOS_NO_CHECK",
    ] {
        args.push("-E".into());
        args.push(name.into());
    }
    for flag in [
        "--collect",
        "--no-ask-password",
        "--pipe",
        "--quiet",
        "--service-type=exec",
        "--wait",
    ] {
        args.push(flag.into());
    }
    args.push(format!("--unit={unit}").into());
    args.push(switch.as_os_str().to_owned());
    args.push(action.as_str().into());
    (
        systemd_run,
        args,
        "in a transient unit (systemd-run), as nixos-rebuild does",
    )
}

/// Whether `system` (nix-darwin) has a legacy `activate-user` that
/// darwin-rebuild would run: executable, and not the stub nix-darwin 25.05
/// and later leave (`# nix-darwin: deprecated`).
fn legacy_activate_user(system: &Path) -> bool {
    let path = system.join("activate-user");
    executable(&path)
        && !crate::util::read_capped(&path, 1024 * 1024)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "# nix-darwin: deprecated")
}

/// What an exit code of NixOS's `switch-to-configuration` means (nixpkgs
/// `switch-to-configuration-ng`), and of `systemd-run --wait` around it
/// (`via_systemd_run`: 255, the transient unit was killed by a signal).
pub fn switch_exit_meaning(code: i32, via_systemd_run: bool) -> Option<&'static str> {
    Some(match code {
        1 => {
            "the usage was wrong, the pre-switch check failed, or the boot loader could not be installed"
        }
        2 => "an activation script failed",
        3 => "systemd could not reload its configuration",
        4 => "some units failed to start or to restart",
        11 => "another activation is running (switch-to-configuration's lock is held)",
        100 => {
            "the new system's init interface differs from the running one's: it is installed for the next boot; reboot to run it"
        }
        255 if via_systemd_run => "the activation's transient unit was killed by a signal",
        _ => return None,
    })
}

/// What the system profile is set to before the activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A system in the store (a switch's build, the watchdog's previous
    /// system): `nix-env -p <profile> --set <system>`.
    System(PathBuf),
    /// The profile's generation before the current one (the `rollback`
    /// command): `nix-env -p <profile> --rollback`, as `nixos-rebuild switch
    /// --rollback` and `darwin-rebuild switch --rollback` do.
    PreviousGeneration,
}

/// `--activate`'s last argument for [`Target::PreviousGeneration`].
const PREVIOUS_GENERATION: &str = "--previous-generation";

/// Sets `profile` to `target` (NixOS, nix-darwin) and activates the system
/// it names with `action`; returns the first failing step's exit code, or 0.
/// `run` runs one program to its end and returns its exit code; `note` tells
/// what happens.
pub fn activate(
    kind: Kind,
    action: Action,
    profile: &Path,
    target: &Target,
    unit: &str,
    run: &mut dyn FnMut(&Path, &[&OsStr]) -> i32,
    note: &dyn Fn(&str),
) -> i32 {
    let set: Vec<&OsStr> = match target {
        Target::System(system) => vec![
            OsStr::new("-p"),
            profile.as_os_str(),
            OsStr::new("--set"),
            system.as_os_str(),
        ],
        Target::PreviousGeneration => {
            vec![
                OsStr::new("-p"),
                profile.as_os_str(),
                OsStr::new("--rollback"),
            ]
        }
    };
    let system = match (kind, target) {
        (Kind::HomeManager, Target::System(system)) => system.clone(),
        (Kind::HomeManager, Target::PreviousGeneration) => {
            note(
                "nixfleet-agent: a Home Manager profile is rolled back by the generation's own activate",
            );
            return EXIT_NOT_STARTED;
        }
        (Kind::NixOs | Kind::Darwin, Target::System(system)) => {
            let code = run(Path::new("nix-env"), &set);
            if code != 0 {
                return code;
            }
            system.clone()
        }
        (Kind::NixOs | Kind::Darwin, Target::PreviousGeneration) => {
            let code = run(Path::new("nix-env"), &set);
            if code != 0 {
                return code;
            }
            // the generation the profile names now
            match fs::canonicalize(profile) {
                Ok(system) => system,
                Err(e) => {
                    note(&format!(
                        "nixfleet-agent: the profile {} names no system: {e}",
                        profile.display()
                    ));
                    return 1;
                }
            }
        }
    };
    let system = system.as_path();
    match kind {
        Kind::NixOs => {
            let (program, args, how) = activation(&kind.activator(system), action, unit);
            note(&format!(
                "nixfleet-agent: activating {} ({}) {how}",
                system.display(),
                action.as_str()
            ));
            let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
            let code = run(&program, &args);
            let via_systemd_run = program.file_name() == Some(OsStr::new("systemd-run"));
            if let Some(meaning) = switch_exit_meaning(code, via_systemd_run) {
                // the last line of the output: the status's words
                note(&format!(
                    "nixfleet-agent: switch-to-configuration {} exited {code}: {meaning}",
                    action.as_str()
                ));
            }
            code
        }
        Kind::Darwin | Kind::HomeManager => {
            note(&format!("nixfleet-agent: activating {}", system.display()));
            run(&kind.activator(system), &[])
        }
    }
}

/// What `--activate` exits with when the activation did not end within its
/// deadline and was stopped (as timeout(1)).
pub const EXIT_TIMED_OUT: i32 = 124;

/// The command line of a switch's (or a rollback's) activation, run by the
/// switch supervisor; `timeout` bounds the activation.
pub fn activate_argv(
    kind: Kind,
    action: Action,
    profile: &Path,
    target: &Target,
    timeout: Duration,
) -> std::io::Result<Vec<OsString>> {
    Ok(vec![
        std::env::current_exe()?.into_os_string(),
        ACTIVATE_FLAG.into(),
        kind.as_str().into(),
        action.as_str().into(),
        profile.as_os_str().to_owned(),
        match target {
            Target::System(system) => system.as_os_str().to_owned(),
            Target::PreviousGeneration => PREVIOUS_GENERATION.into(),
        },
        format!("{TIMEOUT_ARG}{}", timeout.as_secs().max(1)).into(),
    ])
}

/// Runs `program args` to its end, or stops it at `timeout`: a transient
/// unit (`unit`, when `program` is systemd-run) with `systemctl stop`, which
/// stops switch-to-configuration itself (killing the systemd-run client
/// would not), then the process group. Returns the exit code, or
/// [`EXIT_TIMED_OUT`]. What the host runs afterwards decides the outcome
/// (the watchdog's [`super::Watch::activated`]), never this code: a unit
/// stopped so makes `systemd-run --wait` exit 0.
fn run_bounded(
    program: &Path,
    args: &[&OsStr],
    timeout: Option<Duration>,
    unit: &str,
    note: &dyn Fn(&str),
) -> i32 {
    use std::os::unix::process::CommandExt;
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("nixfleet-agent: cannot run {}: {e}", program.display());
            return EXIT_NOT_STARTED;
        }
    };
    let Some(timeout) = timeout else {
        return match child.wait() {
            Ok(status) => crate::exec::runner::exit_code(status),
            Err(e) => {
                eprintln!("nixfleet-agent: cannot wait for {}: {e}", program.display());
                EXIT_NOT_STARTED
            }
        };
    };
    // the exit is seen the moment it happens (a waiting thread), the
    // deadline by the channel's timeout
    let pid = child.id() as i32;
    let (ended, exit) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = ended.send(child.wait());
    });
    let code = |r: std::io::Result<std::process::ExitStatus>| match r {
        Ok(status) => crate::exec::runner::exit_code(status),
        Err(e) => {
            eprintln!("nixfleet-agent: cannot wait for the activation: {e}");
            EXIT_NOT_STARTED
        }
    };
    if let Ok(r) = exit.recv_timeout(timeout) {
        let _ = waiter.join();
        return code(r);
    }
    let secs = timeout.as_secs();
    if program.file_name() == Some(OsStr::new("systemd-run")) {
        note(&format!(
            "nixfleet-agent: the activation did not end within {secs} s: stopping its unit {unit}"
        ));
        let stop = [OsStr::new("stop"), OsStr::new(unit)];
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        if let Err(e) = crate::bounded::run("systemctl", &stop, &env, Duration::from_secs(120)) {
            note(&format!("nixfleet-agent: cannot stop {unit}: {e}"));
        }
    } else {
        note(&format!(
            "nixfleet-agent: the activation did not end within {secs} s: stopping it"
        ));
    }
    crate::exec::runner::signal_group(pid, libc::SIGTERM);
    if exit.recv_timeout(Duration::from_secs(10)).is_err() {
        crate::exec::runner::signal_group(pid, libc::SIGKILL);
        let _ = exit.recv();
    }
    let _ = waiter.join();
    EXIT_TIMED_OUT
}

/// Entry point of `nixfleet-agent --activate <kind> <action> <profile>
/// <system>`: the switch's activation, its children's output on its own;
/// returns the exit status.
pub fn activate_main(args: &[String]) -> i32 {
    let (args, timeout) = match args {
        [rest @ .., last] if last.starts_with(TIMEOUT_ARG) => {
            match last[TIMEOUT_ARG.len()..].parse::<u64>() {
                Ok(secs) if secs > 0 => (rest, Some(Duration::from_secs(secs))),
                _ => {
                    eprintln!("nixfleet-agent: {ACTIVATE_FLAG}: {last:?} is not a timeout");
                    return 2;
                }
            }
        }
        all => (all, None),
    };
    let [kind, action, profile, system] = args else {
        eprintln!(
            "nixfleet-agent: {ACTIVATE_FLAG} needs <kind> <action> <profile> <system> [{TIMEOUT_ARG}<seconds>]"
        );
        return 2;
    };
    let (Some(kind), Some(action)) = (Kind::parse(kind), Action::parse(action)) else {
        eprintln!("nixfleet-agent: {ACTIVATE_FLAG}: unknown kind {kind:?} or action {action:?}");
        return 2;
    };
    let target = match system.as_str() {
        PREVIOUS_GENERATION => Target::PreviousGeneration,
        path => Target::System(PathBuf::from(path)),
    };
    let profile = Path::new(profile);
    let absolute = match &target {
        Target::System(system) => system.is_absolute(),
        Target::PreviousGeneration => true,
    };
    if !profile.is_absolute() || !absolute {
        eprintln!(
            "nixfleet-agent: {ACTIVATE_FLAG}: the profile and the system must be absolute paths"
        );
        return 2;
    }
    let unit = transient_unit("switch");
    let note = |line: &str| eprintln!("{line}");
    // the deadline bounds the activation (its last step); setting the
    // profile is quick
    let mut run = |program: &Path, args: &[&OsStr]| -> i32 {
        let bounded = program.file_name() != Some(OsStr::new("nix-env"));
        run_bounded(program, args, timeout.filter(|_| bounded), &unit, &note)
    };
    let code = activate(kind, action, profile, &target, &unit, &mut run, &note);
    if code == EXIT_TIMED_OUT {
        note(&format!(
            "nixfleet-agent: the activation was stopped after {} s; what the host runs decides the outcome",
            timeout.map_or(0, |t| t.as_secs())
        ));
    }
    code
}

/// A transient unit name used once: a stale unit of an earlier attempt
/// ("already loaded") can never block this one.
pub(super) fn unit_name(record: &Record, purpose: &str) -> String {
    let id: String = record
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    format!(
        "nixfleet-agent-{purpose}-{id}-{}-{:x}",
        std::process::id(),
        nanos()
    )
}

/// A transient unit name for `purpose` used once (this process's id and
/// the clock's nanoseconds).
pub fn transient_unit(purpose: &str) -> String {
    format!(
        "nixfleet-agent-{purpose}-{}-{:x}",
        std::process::id(),
        nanos()
    )
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The first executable `name` in `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Whether `path` is a file anyone may execute.
fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exec(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn switch_to_configuration_exit_codes_in_words() {
        assert_eq!(
            switch_exit_meaning(4, false),
            Some("some units failed to start or to restart")
        );
        assert!(
            switch_exit_meaning(11, true)
                .unwrap()
                .contains("another activation is running")
        );
        assert!(
            switch_exit_meaning(100, false)
                .unwrap()
                .contains("next boot")
        );
        assert!(
            switch_exit_meaning(255, true)
                .unwrap()
                .contains("killed by a signal")
        );
        assert_eq!(switch_exit_meaning(255, false), None);
        assert_eq!(switch_exit_meaning(0, true), None);
        assert_eq!(switch_exit_meaning(42, true), None);
    }

    /// The words reach the output after the code, and nothing is said for
    /// a step that succeeded.
    #[test]
    fn a_failed_activation_says_what_its_exit_code_means() {
        let tmp = tempfile::tempdir().unwrap();
        let system = tmp.path().join("system");
        let said = std::cell::RefCell::new(Vec::new());
        let note = |l: &str| said.borrow_mut().push(l.to_string());
        let mut run = |program: &Path, _: &[&OsStr]| -> i32 {
            if program.ends_with("nix-env") { 0 } else { 4 }
        };
        let code = activate(
            Kind::NixOs,
            Action::Switch,
            &tmp.path().join("profile"),
            &Target::System(system),
            "unit",
            &mut run,
            &note,
        );
        assert_eq!(code, 4);
        let said = said.borrow();
        assert_eq!(
            said.last().unwrap(),
            "nixfleet-agent: switch-to-configuration switch exited 4: some units failed to start or to restart"
        );
        let mut ok = |_: &Path, _: &[&OsStr]| -> i32 { 0 };
        let quiet = std::cell::RefCell::new(Vec::new());
        let note = |l: &str| quiet.borrow_mut().push(l.to_string());
        activate(
            Kind::NixOs,
            Action::Switch,
            &tmp.path().join("profile"),
            &Target::System(tmp.path().join("system")),
            "unit",
            &mut ok,
            &note,
        );
        assert!(!quiet.borrow().iter().any(|l| l.contains("exited")));
    }

    #[test]
    fn a_built_path_must_be_a_system_of_its_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let system = tmp.path().join("system");
        fs::create_dir_all(&system).unwrap();
        let err = Kind::NixOs.check_system(&system).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{} is not a NixOS system: it has no nixos-version and no bin/switch-to-configuration (executable)",
                system.display()
            )
        );
        fs::write(system.join("nixos-version"), "26.05").unwrap();
        // present but not executable
        fs::create_dir_all(system.join("bin")).unwrap();
        fs::write(system.join("bin/switch-to-configuration"), "").unwrap();
        assert!(Kind::NixOs.check_system(&system).is_err());
        exec(&system.join("bin/switch-to-configuration"));
        assert_eq!(Kind::NixOs.check_system(&system), Ok(()));
        // nix-darwin: darwin-version and activate
        let err = Kind::Darwin.check_system(&system).unwrap_err();
        assert!(
            err.contains("is not a nix-darwin system: it has no darwin-version and no activate"),
            "{err}"
        );
        exec(&system.join("activate"));
        fs::write(system.join("darwin-version"), "{}").unwrap();
        assert_eq!(Kind::Darwin.check_system(&system), Ok(()));
        // a legacy activate-user (nix-darwin before 25.05) is refused; the
        // stub of later versions is not
        fs::write(
            system.join("activate-user"),
            "#!/bin/sh\n# nix-darwin: deprecated\n",
        )
        .unwrap();
        fs::set_permissions(
            system.join("activate-user"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(Kind::Darwin.check_system(&system), Ok(()));
        exec(&system.join("activate-user"));
        let err = Kind::Darwin.check_system(&system).unwrap_err();
        assert!(err.contains("legacy `activate-user`"), "{err}");
        assert_eq!(
            Kind::NixOs.check_system(&system),
            Ok(()),
            "NixOS has no such thing"
        );
        // Home Manager: activate
        let generation = tmp.path().join("generation");
        fs::create_dir_all(&generation).unwrap();
        assert!(Kind::HomeManager.check_system(&generation).is_err());
        exec(&generation.join("activate"));
        assert_eq!(Kind::HomeManager.check_system(&generation), Ok(()));
    }
}
