//! Reboot awareness (NixOS): does the running kernel still match the system?
//!
//! A switch activates a new system but keeps the booted kernel, initrd and
//! kernel modules until the next boot. The booted system
//! (`/run/booted-system`) and the current one (`/run/current-system`) are
//! compared component by component, by the store path each link resolves
//! to. Version labels are not compared: two generations can carry the same
//! kernel version with different builds (patches, configuration).
//!
//! nix-darwin has no such split (macOS updates its own kernel), so there the
//! question does not apply and heartbeats carry no `needs_reboot`.

use std::path::{Path, PathBuf};

/// The components that only a reboot brings into use, with their names.
const COMPONENTS: &[(&str, &str)] = &[
    ("kernel", "kernel"),
    ("initrd", "initrd"),
    ("kernel-modules", "kernel modules"),
];

/// Whether the host needs a reboot, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootNeed {
    /// The components whose store paths differ (empty: no reboot needed).
    pub changed: Vec<&'static str>,
}

impl RebootNeed {
    /// Whether anything changed.
    pub fn needed(&self) -> bool {
        !self.changed.is_empty()
    }

    /// "reboot needed: kernel, initrd changed", or `None` when none is needed.
    pub fn message(&self) -> Option<String> {
        if !self.needed() {
            return None;
        }
        let parts: Vec<&str> = self
            .changed
            .iter()
            .copied()
            .filter(|c| *c != NEXT_BOOT)
            .collect();
        let mut reasons = Vec::new();
        if !parts.is_empty() {
            reasons.push(format!("{} changed", parts.join(", ")));
        }
        if self.changed.contains(&NEXT_BOOT) {
            reasons.push(format!("a {NEXT_BOOT}"));
        }
        Some(format!("reboot needed: {}", reasons.join("; ")))
    }
}

/// What identifies the current boot: the boot-id file (Linux), else the boot time.
pub fn boot_identity(boot_id_file: &Path) -> String {
    match std::fs::read_to_string(boot_id_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().chars().take(128).collect(),
        _ => format!("booted at {}", sysinfo::System::boot_time()),
    }
}

/// Compares the booted and the current system. `None` when it cannot be
/// told: no booted system (not NixOS, or a container without one).
///
/// With `profile` (the system profile), a profile that names another system
/// than the running one counts too: a system installed for the next boot
/// only (`switch-to-configuration boot`) waits for a reboot.
pub fn reboot_need(booted: &Path, current: &Path, profile: Option<&Path>) -> Option<RebootNeed> {
    let booted = std::fs::canonicalize(booted).ok()?;
    let current = std::fs::canonicalize(current).ok()?;
    let resolve = |root: &PathBuf, name: &str| std::fs::canonicalize(root.join(name)).ok();
    let mut changed: Vec<&'static str> = COMPONENTS
        .iter()
        .filter(|(file, _)| resolve(&booted, file) != resolve(&current, file))
        .map(|(_, label)| *label)
        .collect();
    if profile
        .and_then(|p| std::fs::canonicalize(p).ok())
        .is_some_and(|next| next != current && !is_specialisation_of(&current, &next))
    {
        changed.push(NEXT_BOOT);
    }
    Some(RebootNeed { changed })
}

/// Whether `current` is one of `system`'s specialisations (a host booted or
/// switched into `<system>/specialisation/<name>` runs what its profile
/// names: nothing waits for a reboot).
fn is_specialisation_of(current: &Path, system: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(system.join("specialisation")) else {
        return false;
    };
    entries
        .flatten()
        .take(256)
        .any(|e| std::fs::canonicalize(e.path()).is_ok_and(|s| s == current))
}

/// The reason of a reboot that a system installed for the next boot waits for.
pub const NEXT_BOOT: &str = "new system is installed for the next boot";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A system tree whose components link to `store/<name>`.
    fn system(root: &Path, name: &str, parts: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, target) in parts {
            let t = root.join("store").join(target);
            std::fs::create_dir_all(&t).unwrap();
            symlink(&t, dir.join(file)).unwrap();
        }
        dir
    }

    #[test]
    fn same_components_need_no_reboot() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = [("kernel", "k1"), ("initrd", "i1"), ("kernel-modules", "m1")];
        let booted = system(tmp.path(), "booted", &parts);
        let current = system(tmp.path(), "current", &parts);
        let need = reboot_need(&booted, &current, None).unwrap();
        assert!(!need.needed());
        assert_eq!(need.message(), None);
    }

    #[test]
    fn each_changed_component_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let booted = system(
            tmp.path(),
            "booted",
            &[("kernel", "k1"), ("initrd", "i1"), ("kernel-modules", "m1")],
        );
        let current = system(
            tmp.path(),
            "current",
            &[("kernel", "k2"), ("initrd", "i1"), ("kernel-modules", "m2")],
        );
        let need = reboot_need(&booted, &current, None).unwrap();
        assert_eq!(need.changed, vec!["kernel", "kernel modules"]);
        assert_eq!(
            need.message().as_deref(),
            Some("reboot needed: kernel, kernel modules changed")
        );
    }

    #[test]
    fn a_profile_naming_another_system_waits_for_a_boot_unless_it_is_a_specialisation() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = [("kernel", "k1"), ("initrd", "i1"), ("kernel-modules", "m1")];
        let running = system(tmp.path(), "running", &parts);
        let next = system(tmp.path(), "next", &parts);
        let need = reboot_need(&running, &running, Some(&next)).unwrap();
        assert_eq!(need.changed, [NEXT_BOOT]);
        assert_eq!(
            need.message().unwrap(),
            "reboot needed: a new system is installed for the next boot"
        );
        assert!(
            !reboot_need(&running, &running, Some(&running))
                .unwrap()
                .needed()
        );
        // booted into a specialisation of the profile's system
        std::fs::create_dir_all(next.join("specialisation")).unwrap();
        symlink(&running, next.join("specialisation/web")).unwrap();
        assert!(
            !reboot_need(&running, &running, Some(&next))
                .unwrap()
                .needed()
        );
        // no profile (or none that resolves): nothing pending
        assert!(
            !reboot_need(&running, &running, Some(&tmp.path().join("none")))
                .unwrap()
                .needed()
        );
    }

    #[test]
    fn a_link_to_the_same_system_needs_no_reboot_and_no_booted_system_cannot_tell() {
        let tmp = tempfile::tempdir().unwrap();
        let real = system(tmp.path(), "sys", &[("kernel", "k1")]);
        let link = tmp.path().join("current");
        symlink(&real, &link).unwrap();
        assert!(!reboot_need(&real, &link, None).unwrap().needed());
        assert_eq!(reboot_need(&tmp.path().join("missing"), &link, None), None);
    }
}
