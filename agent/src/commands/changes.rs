//! The preview block a switch shows after it built the new system and before
//! it activates it (docs/commands.md, "A switch, phase by phase"):
//!
//! - what the dry run said was built and fetched (`preview.rs`);
//! - package changes against the running system: `nix store diff-closures
//!   <running> <new>` (versions changed, added `∅ → 1.2`, removed `1.2 → ∅`,
//!   size deltas); identical closures print nothing: "no package changes";
//! - the closure size before and after (`nix path-info --closure-size`);
//! - NixOS: the units the activation would stop, start, restart and reload,
//!   the "would …" lines of the new system's `switch-to-configuration
//!   dry-activate`, run outside the agent's sandbox like the activation;
//! - NixOS: whether a reboot will be needed (kernel, initrd, modules), as
//!   heartbeats compute it;
//! - NixOS: the switch inhibitors (`<system>/switch-inhibitors`, a JSON
//!   object of strings, nixpkgs' `system.switch.inhibitors`). A key present
//!   in both the running and the new system with another value refuses a
//!   live switch (`switch-to-configuration`'s pre-switch check
//!   `switchInhibitors`: "There are changes to critical components of the
//!   system", exit 1): the system is installed for the next boot instead.
//!
//! The block is cut at [`PREVIEW_LINES`] lines with a counted marker; the
//! command's log gets all of it.

use std::ffi::OsStr;
use std::path::Path;

use super::preview::{Plan, mib, summary_lines};
use super::*;
use crate::deploy::{Action, Kind, activation, transient_unit};

/// Lines of the preview block sent to the dashboard at most.
pub const PREVIEW_LINES: usize = 200;
/// What a switch-inhibitors file may hold at most.
const INHIBITORS_CAP: u64 = 1024 * 1024;

/// What the preview found that decides the activation.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// The switch inhibitors that changed ("key : old -> new"): the system is
    /// installed for the next boot instead of switched into.
    pub(super) inhibited: Vec<String>,
}

/// The switch inhibitors that changed between `old` and `new` (both JSON
/// objects of strings): keys in both whose values differ, as
/// "key : old -> new", the way nixpkgs' check prints them. A file that is
/// not such an object counts as empty, as the check's `try fromjson` does.
pub fn inhibitor_changes(old: &str, new: &str) -> Vec<String> {
    let parse = |text: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        serde_json::from_str(text).unwrap_or_default()
    };
    let (old, new) = (parse(old), parse(new));
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    old.iter()
        .filter_map(|(key, before)| {
            let after = new.get(key)?;
            (after != before).then(|| format!("{key} : {} -> {}", show(before), show(after)))
        })
        .collect()
}

/// The change of the init interface between the running system `old` and
/// the new one (`init-interface-version` of each, e.g. `systemd 2`), as
/// switch-to-configuration compares them: it refuses to switch into a
/// system whose interface differs, with exit 100, after the boot loader
/// was installed. A missing file on either side is no change.
pub fn init_interface_change(old: &str, new: &str) -> Option<String> {
    let (old, new) = (old.trim(), new.trim());
    (!old.is_empty() && !new.is_empty() && old != new)
        .then(|| format!("init-interface-version : {old} -> {new}"))
}

/// `text` without ANSI escape sequences (Nix colours diff-closures' sizes).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The closure size `nix path-info --closure-size` printed for `path`: the
/// number of bytes at the end of its line (or a size with its unit, as
/// `--human-readable` prints it).
pub fn closure_size(lines: &[String], path: &Path) -> Option<u64> {
    let path = path.to_string_lossy();
    let words: Vec<&str> = lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(&*path))?
        .split_whitespace()
        .skip(1)
        .collect();
    match words.as_slice() {
        [.., bytes] if bytes.parse::<u64>().is_ok() => bytes.parse().ok(),
        [.., number, unit] => super::preview::parse_size(&format!("{number} {unit}")),
        _ => None,
    }
}

/// "+12.3 MiB" / "-1.0 MiB".
fn delta(before: u64, after: u64) -> String {
    if after >= before {
        format!("+{}", mib(after - before))
    } else {
        format!("-{}", mib(before - after))
    }
}

impl Run {
    /// Runs `program args` for the preview; its lines are kept (and written
    /// to the command's log), not streamed. `Err`: why it gave nothing.
    async fn preview_run(&self, program: &OsStr, args: &[&OsStr]) -> Result<Vec<String>, String> {
        let cwd = self.inner().config.repo_dir.clone();
        let spec = Spec {
            program,
            args,
            cwd: &cwd,
        };
        let (sink, captured) = Sink::capturing(self.ctl.name(), self.sink.log_handle());
        let result = run_step(&sink, &self.ctl, &self.inner().env, &spec).await;
        let lines: Vec<String> = lock(&captured)
            .take()
            .iter()
            .map(|l| strip_ansi(l))
            .collect();
        match result {
            Err(e) => Err(format!("cannot run {}: {e}", program.to_string_lossy())),
            Ok(r) if r.code != 0 => Err(format!("`{}` exited with {}", spec.label(), r.code)),
            Ok(_) => Ok(lines),
        }
    }

    /// Shows the preview block of a built `system` against the running
    /// one (`current`, when known) and returns what decides the activation.
    pub(super) async fn show_preview(
        &mut self,
        kind: Kind,
        plan: &Plan,
        current: Option<&Path>,
        system: &Path,
    ) -> Changes {
        let mut block = vec!["── preview ──".to_string()];
        block.extend(summary_lines(plan));
        let mut changes = Changes::default();
        let nix = OsStr::new("nix");
        let features = [
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
        ];
        match current {
            None => {
                block.push("no package changes shown: the running system is not known".to_string())
            }
            Some(current) => {
                let mut args = features.to_vec();
                args.extend([
                    OsStr::new("store"),
                    OsStr::new("diff-closures"),
                    current.as_os_str(),
                    system.as_os_str(),
                ]);
                match self.preview_run(nix, &args).await {
                    Ok(lines) if lines.iter().all(|l| l.trim().is_empty()) => {
                        block.push("no package changes".to_string())
                    }
                    Ok(lines) => {
                        block.push("package changes:".to_string());
                        block.extend(
                            lines
                                .iter()
                                .filter(|l| !l.trim().is_empty())
                                .map(|l| format!("  {}", l.trim_end())),
                        );
                    }
                    Err(why) => block.push(format!("no package changes shown: {why}")),
                }
                let mut args = features.to_vec();
                args.extend([
                    OsStr::new("path-info"),
                    OsStr::new("--closure-size"),
                    current.as_os_str(),
                    system.as_os_str(),
                ]);
                if let Ok(lines) = self.preview_run(nix, &args).await
                    && let (Some(before), Some(after)) =
                        (closure_size(&lines, current), closure_size(&lines, system))
                {
                    block.push(format!(
                        "closure size: {} → {} ({})",
                        mib(before),
                        mib(after),
                        delta(before, after)
                    ));
                }
            }
        }
        if kind == Kind::NixOs {
            self.nixos_preview(current, system, &mut block, &mut changes)
                .await;
        }
        block.push("── end of preview ──".to_string());
        self.send_block(block).await;
        changes
    }

    /// The NixOS part: units, reboot, switch inhibitors.
    async fn nixos_preview(
        &self,
        current: Option<&Path>,
        system: &Path,
        block: &mut Vec<String>,
        changes: &mut Changes,
    ) {
        let unit = transient_unit("dry-activate");
        let (program, args, _) =
            activation(&Kind::NixOs.activator(system), Action::DryActivate, &unit);
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        match self.preview_run(program.as_os_str(), &args).await {
            Ok(lines) => {
                let would: Vec<String> = lines
                    .iter()
                    .map(|l| l.trim())
                    .filter(|l| l.starts_with("would "))
                    .map(str::to_string)
                    .collect();
                if would.is_empty() {
                    block.push("units: the activation changes no unit".to_string());
                } else {
                    block.push("units:".to_string());
                    block.extend(would.iter().map(|l| format!("  {l}")));
                }
            }
            Err(why) => block.push(format!("no unit preview: {why}")),
        }
        let config = self.inner().config.clone();
        let booted = config.booted_system.clone();
        let (old, new) = (current.map(Path::to_path_buf), system.to_path_buf());
        let (need, inhibited, interface) = tokio::task::spawn_blocking(move || {
            let read = |dir: &Path, name: &str| {
                crate::util::read_capped(&dir.join(name), INHIBITORS_CAP).unwrap_or_default()
            };
            let inhibited = old
                .as_deref()
                .map(|old| {
                    inhibitor_changes(
                        &read(old, "switch-inhibitors"),
                        &read(&new, "switch-inhibitors"),
                    )
                })
                .unwrap_or_default();
            let interface = old.as_deref().and_then(|old| {
                init_interface_change(
                    &read(old, "init-interface-version"),
                    &read(&new, "init-interface-version"),
                )
            });
            (
                crate::host::reboot_need(&booted, &new, None),
                inhibited,
                interface,
            )
        })
        .await
        .unwrap_or_default();
        // unknown without a booted system: nothing to say
        if let Some(need) = need {
            block.push(match need.message() {
                Some(message) => format!("{message} (after this switch)"),
                None => "no reboot needed".to_string(),
            });
        }
        if !inhibited.is_empty() {
            block.push(
                "switch inhibitors changed (critical components): installing for the next boot instead of switching:"
                    .to_string(),
            );
            block.extend(inhibited.iter().map(|l| format!("  {l}")));
        }
        let mut inhibited = inhibited;
        if let Some(change) = interface {
            // switch-to-configuration would install it for the boot, then
            // refuse the switch with exit 100: say so, and install it
            block.push(format!(
                "the init interface changed ({change}): the new system cannot be switched into while this one runs; installing for the next boot instead"
            ));
            inhibited.push(change);
        }
        changes.inhibited = inhibited;
    }

    /// Sends the block, one line each, cut at [`PREVIEW_LINES`] with a
    /// counted marker; the command's log gets every line.
    async fn send_block(&self, block: Vec<String>) {
        let prefixed: Vec<String> = block
            .into_iter()
            .map(|l| format!("[nixfleet-agent] {l}"))
            .collect();
        if prefixed.len() <= PREVIEW_LINES {
            self.sink.note(prefixed.join("\n")).await;
            return;
        }
        // the head, the marker, the end marker; the rest to the log only
        let keep = PREVIEW_LINES - 2;
        let cut = prefixed.len() - 1 - keep;
        let mut sent: Vec<String> = prefixed[..keep].to_vec();
        sent.push(format!(
            "[nixfleet-agent] … {cut} more lines of the preview (the command's log has all of them)"
        ));
        sent.push(prefixed[prefixed.len() - 1].clone());
        // the log gets every line, in order, as one chunk that waits for
        // room in its queue (a note would be left out while it is full);
        // the dashboard the cut block
        self.sink
            .log()
            .write_lines(prefixed.iter().map(|l| l.as_bytes()))
            .await;
        self.sink.announce(&sent).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inhibitors_compare_keys_in_both() {
        let old =
            r#"{"systemd":"/nix/store/a-systemd-257","dbus-implementation":"dbus","gone":"x"}"#;
        let new =
            r#"{"systemd":"/nix/store/b-systemd-258","dbus-implementation":"dbus","added":"y"}"#;
        assert_eq!(
            inhibitor_changes(old, new),
            ["systemd : /nix/store/a-systemd-257 -> /nix/store/b-systemd-258"]
        );
        assert!(inhibitor_changes(old, old).is_empty());
        assert!(inhibitor_changes("", new).is_empty());
        assert!(inhibitor_changes("not json", new).is_empty());
        assert!(inhibitor_changes("[1]", new).is_empty());
    }

    #[test]
    fn an_init_interface_change_is_a_change_of_both_known_versions() {
        assert_eq!(
            init_interface_change("systemd 2\n", "systemd 3\n").as_deref(),
            Some("init-interface-version : systemd 2 -> systemd 3")
        );
        assert_eq!(init_interface_change("systemd 2", "systemd 2\n"), None);
        assert_eq!(init_interface_change("", "systemd 3"), None);
        assert_eq!(init_interface_change("systemd 2", ""), None);
    }

    #[test]
    fn ansi_colours_are_dropped() {
        assert_eq!(
            strip_ansi("firefox: 120.0 → 121.0, \u{1b}[31;1m+1234.5 KiB\u{1b}[0m"),
            "firefox: 120.0 → 121.0, +1234.5 KiB"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn closure_sizes() {
        let lines = vec![
            "/nix/store/aaaa-nixos-system-a\t  1073741824".to_string(),
            "/nix/store/bbbb-nixos-system-b\t  1178599424".to_string(),
        ];
        assert_eq!(
            closure_size(&lines, Path::new("/nix/store/bbbb-nixos-system-b")),
            Some(1_178_599_424)
        );
        assert_eq!(closure_size(&lines, Path::new("/nix/store/c")), None);
        let human = vec!["/nix/store/c-x   1.5 GiB".to_string()];
        assert_eq!(
            closure_size(&human, Path::new("/nix/store/c-x")),
            Some(3 << 29)
        );
        assert_eq!(delta(10 << 20, 12 << 20), "+2.0 MiB");
        assert_eq!(delta(12 << 20, 10 << 20), "-2.0 MiB");
    }
}
