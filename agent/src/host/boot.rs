//! Room in `/boot` for a new NixOS system: the boot loader copies the
//! system's kernel and initrd there, and a full `/boot` fails the switch
//! half-way ("Failed to install bootloader").
//!
//! Both of NixOS's copying boot loaders name a copy after the file's store
//! directory and name: systemd-boot `EFI/nixos/<store dir>-<file>.efi`
//! (`systemd-boot-builder.py`'s `copy_from_file`), GRUB
//! `kernels/<store dir>-<file>` (`install-grub.pl`'s `copyToKernelsDir`). A
//! kernel or initrd with such a copy needs no room.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the new system's boot files need in `/boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNeed {
    /// Bytes of the kernel and initrd that are not copied yet.
    pub bytes: u64,
    /// Their store paths.
    pub files: Vec<PathBuf>,
}

/// Whether `boot` is a filesystem of its own (not the root's).
pub fn separate_filesystem(boot: &Path, root: &Path) -> bool {
    match (std::fs::metadata(boot), std::fs::metadata(root)) {
        (Ok(b), Ok(r)) => b.dev() != r.dev(),
        _ => false,
    }
}

/// The kernel and initrd of `system` (`<system>/kernel`, `<system>/initrd`)
/// that `boot` has no copy of yet, and their size.
pub fn boot_need(system: &Path, boot: &Path) -> BootNeed {
    let mut need = BootNeed {
        bytes: 0,
        files: Vec::new(),
    };
    for name in ["kernel", "initrd"] {
        let Ok(file) = std::fs::canonicalize(system.join(name)) else {
            continue;
        };
        let (Some(dir), Some(base)) = (file.parent().and_then(Path::file_name), file.file_name())
        else {
            continue;
        };
        let copy = format!("{}-{}", dir.to_string_lossy(), base.to_string_lossy());
        let copied = [
            boot.join("EFI/nixos").join(format!("{copy}.efi")),
            boot.join("kernels").join(&copy),
        ]
        .iter()
        .any(|p| p.is_file());
        if copied {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(&file) {
            need.bytes = need.bytes.saturating_add(meta.len());
            need.files.push(file);
        }
    }
    need
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_files_need_no_room() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let kernel_dir = store.join("aaaa-linux-6.12.1");
        let initrd_dir = store.join("bbbb-initrd-linux-6.12.1");
        std::fs::create_dir_all(&kernel_dir).unwrap();
        std::fs::create_dir_all(&initrd_dir).unwrap();
        std::fs::write(kernel_dir.join("bzImage"), vec![0u8; 3000]).unwrap();
        std::fs::write(initrd_dir.join("initrd"), vec![0u8; 5000]).unwrap();
        let system = tmp.path().join("system");
        std::fs::create_dir_all(&system).unwrap();
        std::os::unix::fs::symlink(kernel_dir.join("bzImage"), system.join("kernel")).unwrap();
        std::os::unix::fs::symlink(initrd_dir.join("initrd"), system.join("initrd")).unwrap();
        let boot = tmp.path().join("boot");
        std::fs::create_dir_all(boot.join("EFI/nixos")).unwrap();
        assert_eq!(boot_need(&system, &boot).bytes, 8000);
        // systemd-boot has the kernel already
        std::fs::write(boot.join("EFI/nixos/aaaa-linux-6.12.1-bzImage.efi"), "k").unwrap();
        let need = boot_need(&system, &boot);
        assert_eq!(need.bytes, 5000);
        assert_eq!(need.files, [initrd_dir.join("initrd")]);
        // GRUB has the initrd
        std::fs::create_dir_all(boot.join("kernels")).unwrap();
        std::fs::write(boot.join("kernels/bbbb-initrd-linux-6.12.1-initrd"), "i").unwrap();
        assert_eq!(boot_need(&system, &boot).bytes, 0);
        assert!(!separate_filesystem(&boot, tmp.path()));
    }
}
