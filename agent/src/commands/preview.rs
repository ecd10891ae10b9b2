//! Before a switch builds anything: what it will build and fetch (a line in
//! the command's output, and the start of the preview block after the
//! build, `changes.rs`), and the guards that refuse it before anything is
//! fetched (docs/commands.md, "A switch, phase by phase").
//!
//! - **The dry run**: `nix build --dry-run` of the configuration the switch
//!   builds (`nixosConfigurations.<host>.config.system.build.toplevel`,
//!   `darwinConfigurations.<host>.system`,
//!   `homeConfigurations.<user@host>.activationPackage`). Nix prints what is
//!   missing: "these N derivations will be built:", then "these M paths will
//!   be fetched (X download, Y unpacked):", each followed by the paths (Nix's
//!   `printMissing`; sizes as `%.2f MiB` in older Nix, `renderSize`'s
//!   "12.3 MiB" / "1.2 GiB" in newer). Its listing goes to the command's log;
//!   the output gets the summary.
//! - **Substitute-only hosts** (`NIXFLEET_BUILD_ON_HOST=0`): a switch that
//!   would build derivations here is refused, naming how many and the first
//!   few.
//! - **Space**: the Nix store's filesystem must have `NIXFLEET_MIN_FREE_SPACE`
//!   (MiB, default 2048) free on top of what the switch unpacks, else the
//!   switch is refused with the figures.

use std::ffi::OsStr;

use super::refresh::system_installable;
use super::*;

/// Derivations named in a refusal at most.
const NAMED: usize = 5;

/// What Nix's dry run says a build needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The derivations that will be built here (store paths of `.drv`s).
    pub builds: Vec<String>,
    /// How many paths will be fetched from a substituter.
    pub fetches: usize,
    /// Their download size, bytes.
    pub download: u64,
    /// Their unpacked size, bytes.
    pub unpacked: u64,
}

/// Reads Nix's dry-run report (`printMissing`), whichever Nix wrote it.
pub fn parse_dry_run(lines: &[String]) -> Plan {
    let mut plan = Plan::default();
    let mut in_builds = false;
    for line in lines {
        let trimmed = line.trim();
        if let Some(path) = line.strip_prefix("  ") {
            if in_builds && path.starts_with('/') {
                plan.builds.push(path.trim().to_string());
            }
            continue;
        }
        in_builds = false;
        if trimmed == "this derivation will be built:"
            || (trimmed.starts_with("these ") && trimmed.ends_with(" derivations will be built:"))
        {
            in_builds = true;
        } else if let Some(rest) = trimmed
            .strip_prefix("this path will be fetched (")
            .map(|r| ("1", r))
            .or_else(|| {
                let r = trimmed.strip_prefix("these ")?;
                let (n, r) = r.split_once(" paths will be fetched (")?;
                Some((n, r))
            })
        {
            let (count, sizes) = rest;
            plan.fetches = count.parse().unwrap_or(0);
            let sizes = sizes.trim_end_matches("):");
            if let Some((download, unpacked)) = sizes.split_once(" download, ") {
                plan.download = parse_size(download).unwrap_or(0);
                plan.unpacked = parse_size(unpacked.trim_end_matches(" unpacked")).unwrap_or(0);
            }
        }
    }
    plan
}

/// `"12.34 MiB"`, `"1.2 GiB"`, `"512.0 KiB"`, `"17 B"` in bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "PiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some((number * scale) as u64)
}

/// `bytes` as MiB with one decimal, the unit the guards speak.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The summary line of a plan.
pub fn summary(plan: &Plan) -> String {
    if plan.builds.is_empty() && plan.fetches == 0 {
        return "nothing to build or fetch: everything is in the store".to_string();
    }
    let builds = format!(
        "builds {} derivation{}",
        plan.builds.len(),
        if plan.builds.len() == 1 { "" } else { "s" }
    );
    let fetches = format!(
        "fetches {} path{} ({} download, {} unpacked)",
        plan.fetches,
        if plan.fetches == 1 { "" } else { "s" },
        mib(plan.download),
        mib(plan.unpacked)
    );
    match (plan.builds.is_empty(), plan.fetches == 0) {
        (false, true) => builds,
        (true, false) => fetches,
        _ => format!("{builds}, {fetches}"),
    }
}

/// The preview block's first lines: the summary, then the first
/// [`NAMED`] derivations built here.
pub(super) fn summary_lines(plan: &Plan) -> Vec<String> {
    let mut lines = vec![summary(plan)];
    for drv in plan.builds.iter().take(NAMED) {
        lines.push(format!("  build {}", drv_name(drv)));
    }
    if plan.builds.len() > NAMED {
        lines.push(format!(
            "  … and {} more (the command's log lists them all)",
            plan.builds.len() - NAMED
        ));
    }
    lines
}

/// The name of a derivation without its store directory and hash.
fn drv_name(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.split_once('-').map_or(name, |(_, rest)| rest)
}

impl Run {
    /// The dry run of `flake`'s configuration, its preview in the output, and
    /// the guards. `Err` refuses the switch (`what` names it) before anything
    /// is built or fetched.
    pub(super) async fn preview_and_guard(
        &mut self,
        what: &str,
        flake: &str,
        options: &[&str],
    ) -> Result<Plan, Report> {
        let config = self.inner().config.clone();
        let installable = system_installable(config.switch_tool, flake, &config.hostname);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
            OsStr::new("build"),
            OsStr::new("--dry-run"),
            OsStr::new("--no-link"),
        ];
        // the build's own options: a plan made without force-rebuild's
        // cache bypass would trust the very answers it exists to forget
        args.extend(options.iter().map(OsStr::new));
        args.push(OsStr::new(&installable));
        let spec = Spec {
            program: OsStr::new("nix"),
            args: &args,
            cwd: &config.repo_dir,
        };
        let (sink, captured) = Sink::capturing(self.ctl.name(), self.sink.log_handle());
        self.sink
            .note(format!(
                "[nixfleet-agent] preview: nix build --dry-run {installable}"
            ))
            .await;
        let result = run_step(&sink, &self.ctl, &self.inner().env, &spec).await;
        let lines = lock(&captured).take();
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.sink
                    .note("[nixfleet-agent] no preview: nix is not on PATH".to_string())
                    .await;
                let plan = Plan::default();
                self.guard_space(what, &plan).await?;
                return Ok(plan);
            }
            Err(e) => {
                return Err(Report::error(
                    127,
                    format!("{what} failed: cannot start nix for the preview: {e}"),
                ));
            }
            Ok(r) => {
                super::run::exited(what, &spec, r)?;
            }
        }
        let plan = parse_dry_run(&lines);
        self.sink
            .note(format!("[nixfleet-agent] dry run: {}", summary(&plan)))
            .await;
        if !config.guard.build_on_host && !plan.builds.is_empty() {
            let named: Vec<&str> = plan
                .builds
                .iter()
                .take(NAMED)
                .map(|d| drv_name(d))
                .collect();
            return Err(Report::error(
                NOT_RUN,
                format!(
                    "{what} refused: {} derivation{} would be built on this host, which only substitutes (buildOnHost is off): {}{}; build them where the binary cache is filled, then switch again",
                    plan.builds.len(),
                    if plan.builds.len() == 1 { "" } else { "s" },
                    named.join(", "),
                    if plan.builds.len() > NAMED {
                        ", …"
                    } else {
                        ""
                    }
                ),
            ));
        }
        self.guard_space(what, &plan).await?;
        Ok(plan)
    }

    /// Refuses the switch when the store's filesystem would keep less than
    /// the configured free space after unpacking what the plan fetches.
    async fn guard_space(&mut self, what: &str, plan: &Plan) -> Result<(), Report> {
        let guard = self.inner().config.guard.clone();
        if guard.min_free_bytes == 0 {
            return Ok(());
        }
        let store = guard.nix_store.clone();
        let free = tokio::task::spawn_blocking(move || crate::host::free_bytes(&store))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let free = match free {
            Ok(free) => free,
            Err(e) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] no space check: cannot measure {}: {e}",
                        guard.nix_store.display()
                    ))
                    .await;
                return Ok(());
            }
        };
        let need = guard.min_free_bytes.saturating_add(plan.unpacked);
        if free < need {
            return Err(Report::error(
                NOT_RUN,
                format!(
                    "{what} refused: the Nix store ({}) has {} free; the switch needs {} ({} unpacked + minFreeSpace {}); free space first: nix-collect-garbage --delete-older-than 14d",
                    guard.nix_store.display(),
                    mib(free),
                    mib(need),
                    mib(plan.unpacked),
                    mib(guard.min_free_bytes)
                ),
            ));
        }
        self.sink
            .note(format!(
                "[nixfleet-agent] space: {} free in the Nix store, {} needed",
                mib(free),
                mib(need)
            ))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn reads_what_older_and_newer_nix_print() {
        let older = lines(
            "these 2 derivations will be built:\n  /nix/store/aaaa-nixos-system-web-1-26.05.drv\n  /nix/store/bbbb-etc.drv\nthese 3 paths will be fetched (12.50 MiB download, 50.00 MiB unpacked):\n  /nix/store/cccc-hello-2.12\n  /nix/store/dddd-x\n  /nix/store/eeee-y",
        );
        let plan = parse_dry_run(&older);
        assert_eq!(plan.builds.len(), 2);
        assert_eq!(drv_name(&plan.builds[0]), "nixos-system-web-1-26.05.drv");
        assert_eq!(plan.fetches, 3);
        assert_eq!(plan.download, 12 * 1024 * 1024 + 512 * 1024);
        assert_eq!(plan.unpacked, 50 * 1024 * 1024);
        let newer = lines(
            "this derivation will be built:\n  /nix/store/aaaa-x.drv\nthis path will be fetched (1.5 GiB download, 4.0 GiB unpacked):\n  /nix/store/cccc-y",
        );
        let plan = parse_dry_run(&newer);
        assert_eq!(plan.builds.len(), 1);
        assert_eq!(plan.fetches, 1);
        assert_eq!(plan.unpacked, 4 * 1024 * 1024 * 1024);
        assert_eq!(parse_dry_run(&[]), Plan::default());
        assert_eq!(
            summary(&Plan::default()),
            "nothing to build or fetch: everything is in the store"
        );
        let fetch_only = Plan {
            fetches: 1,
            download: 1 << 20,
            unpacked: 4 << 20,
            ..Plan::default()
        };
        assert_eq!(
            summary(&fetch_only),
            "fetches 1 path (1.0 MiB download, 4.0 MiB unpacked)"
        );
        let build_only = Plan {
            builds: vec!["/nix/store/aaaa-x.drv".to_string()],
            ..Plan::default()
        };
        assert_eq!(summary(&build_only), "builds 1 derivation");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("17 B"), Some(17));
        assert_eq!(parse_size("2.0 KiB"), Some(2048));
        assert_eq!(parse_size("x MiB"), None);
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(mib(3 * 1024 * 1024), "3.0 MiB");
    }
}
