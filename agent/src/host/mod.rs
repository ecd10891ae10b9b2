//! Facts about the machine the agent runs on.
//!
//! Everything here is read cheaply and synchronously from the filesystem (or, on
//! macOS, from two tiny system tools with a short timeout). The functions are
//! meant to be called from a blocking refresher thread (`spawn_blocking`), never
//! from the heartbeat ticker itself, and none of them panics on anything read from
//! the filesystem or the environment: what cannot be read is reported as empty or
//! `None`.
//!
//! - [`HostType`], [`short_hostname`], [`os_version`] and [`nixpkgs_version`]
//!   describe the host for `register` and `heartbeat`;
//! - [`generation`], [`git_head_commit`] and [`flake_lock_hash`] describe the
//!   configuration repository (`generation`, `lock_hash`);
//! - [`MetricsReader`] samples CPU, RAM, swap and load (StaSysMo files when fresh,
//!   else measured directly);
//! - [`binary_freshness`] and [`hash_running_binary`] identify the running agent
//!   binary;
//! - [`require_nix`] finds the Nix the operations run and checks its version;
//!   [`home_manager_profile`] is where Home Manager keeps its generations.

mod boot;
mod freshness;
mod git;
mod metrics;
mod nix;
mod reboot;
mod space;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use boot::{BootNeed, boot_need, separate_filesystem};
pub use freshness::{
    BinaryHash, Freshness, STAMP, binary_freshness, executable_hash, hash_running_binary,
};
pub use git::{GENERATION_LEN, generation, git_head_commit, short_commit};
pub use metrics::{Metrics, MetricsReader, MetricsSource};
pub use nix::{
    MINIMUM as NIX_MINIMUM, NixVersion, detect as detect_nix, home_manager_profile,
    home_manager_profiles, minimum as nix_minimum, require as require_nix,
};
pub use reboot::{NEXT_BOOT, RebootNeed, boot_identity, reboot_need};
pub use space::{free_bytes, free_mib};

/// Cap for small text files (versions, host names, `os-release`, git refs).
const SMALL_FILE_CAP: u64 = 64 * 1024;

/// Cap for `flake.lock`: a larger file is not hashed (it is not a real lock file).
const FLAKE_LOCK_CAP: u64 = 16 * 1024 * 1024;

/// Buffer size used when streaming a file through SHA-256.
const HASH_CHUNK: usize = 64 * 1024;

/// How long a helper tool (`scutil`, `sw_vers`) may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The running system's generation (NixOS and nix-darwin alike).
const CURRENT_SYSTEM: &str = "/run/current-system";

/// The kind of host the agent manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostType {
    /// A NixOS machine (also used for any other Linux host).
    NixOs,
    /// A macOS machine managed with nix-darwin.
    MacOs,
}

impl HostType {
    /// The protocol name of this host type: `"nixos"` or `"macos"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostType::NixOs => "nixos",
            HostType::MacOs => "macos",
        }
    }

    /// The host type of the platform the agent was built for: [`HostType::MacOs`]
    /// on macOS, [`HostType::NixOs`] everywhere else.
    pub fn detect() -> Self {
        if cfg!(target_os = "macos") {
            HostType::MacOs
        } else {
            HostType::NixOs
        }
    }

    /// Parses a protocol name (`"nixos"` or `"macos"`, surrounding white space and
    /// ASCII case ignored), as given in `NIXFLEET_HOST_TYPE`.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("nixos") {
            Some(HostType::NixOs)
        } else if name.eq_ignore_ascii_case("macos") {
            Some(HostType::MacOs)
        } else {
            None
        }
    }
}

impl std::fmt::Display for HostType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host's short name, without any domain.
///
/// On macOS this is the `LocalHostName` (`scutil --get LocalHostName`), falling
/// back to `gethostname(3)`. Elsewhere it is `gethostname(3)`, falling back to
/// `/proc/sys/kernel/hostname`. Everything from the first `.` on is dropped. Never
/// empty: when nothing usable is found the result is `"localhost"`.
pub fn short_hostname() -> String {
    let mac_local_name = || {
        if cfg!(target_os = "macos") {
            run_command("/usr/sbin/scutil", &["--get", "LocalHostName"])
        } else {
            None
        }
    };
    let proc_hostname = || {
        if cfg!(target_os = "linux") {
            read_small_string(Path::new("/proc/sys/kernel/hostname"))
        } else {
            None
        }
    };
    mac_local_name()
        .and_then(|name| strip_domain(&name))
        .or_else(|| system_hostname().and_then(|name| strip_domain(&name)))
        .or_else(|| proc_hostname().and_then(|name| strip_domain(&name)))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `gethostname(3)`, or `None` if it fails or is not valid UTF-8.
fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // POSIX does not promise NUL termination when the name is truncated.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end]).ok().map(str::to_owned)
}

/// The part of a host name before the first `.`, trimmed; `None` if that is empty.
fn strip_domain(name: &str) -> Option<String> {
    let short = name.trim().split('.').next().unwrap_or_default().trim();
    (!short.is_empty()).then(|| short.to_owned())
}

/// The operating system's version: `VERSION_ID` from `/etc/os-release` (e.g.
/// `"24.11"`) for [`HostType::NixOs`], `sw_vers -productVersion` (e.g. `"15.1"`)
/// for [`HostType::MacOs`]. Empty if unknown.
pub fn os_version(host_type: HostType) -> String {
    match host_type {
        HostType::MacOs => run_command("/usr/bin/sw_vers", &["-productVersion"]),
        HostType::NixOs => read_os_release().and_then(|text| os_release_value(&text, "VERSION_ID")),
    }
    .unwrap_or_default()
}

/// `/etc/os-release`, or `/usr/lib/os-release` when the former is missing (as
/// os-release(5) asks).
fn read_os_release() -> Option<String> {
    read_small_string(Path::new("/etc/os-release"))
        .or_else(|| read_small_string(Path::new("/usr/lib/os-release")))
}

/// The value of `key` in an os-release(5) text, unquoted and unescaped; `None` if
/// the key is missing or its value empty.
///
/// Lines are `KEY=value`; values may be in double quotes (with `\"`, `\\`, `\$`
/// and `` \` `` escapes) or single quotes; `#` starts a comment line.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let (k, v) = line.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let value = unquote_shell_value(v.trim());
        (!value.is_empty()).then_some(value)
    })
}

/// Removes one level of shell-style quoting from an os-release value.
fn unquote_shell_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    out.push(q);
                }
            }
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => out.push('\\'),
                        },
                        other => out.push(other),
                    }
                }
            }
            '\\' => {
                if let Some(e) = chars.next() {
                    out.push(e);
                }
            }
            other => out.push(other),
        }
    }
    out.trim().to_owned()
}

/// The running system's nixpkgs version with revision, e.g.
/// `"24.11.20241201.abc1234"`; empty if unknown.
///
/// In order, the first usable answer wins:
///
/// 1. `/run/current-system/nixos-version` (NixOS), when it looks like a version
///    (it holds `system.nixos.label`, which users may customise);
/// 2. `BUILD_ID` from `/etc/os-release` on NixOS (`system.nixos.version`);
/// 3. `nixpkgsVersion` from `/run/current-system/darwin-version.json`. Current
///    nix-darwin writes only `darwinLabel`, `darwinRevision`, `nixpkgsRevision`
///    and `configurationRevision` there, so this key is honoured only if present;
/// 4. `configured` (`NIXFLEET_NIXPKGS_VERSION`), when not blank. On nix-darwin
///    this is the only source of the full version: the module is expected to set
///    it from `config.system.nixpkgsVersion`;
/// 5. the raw `nixos-version` label, even if it does not look like a version.
pub fn nixpkgs_version(configured: Option<&str>) -> String {
    let current = Path::new(CURRENT_SYSTEM);
    nixpkgs_version_from(
        &current.join("nixos-version"),
        Path::new("/etc/os-release"),
        &current.join("darwin-version.json"),
        configured,
    )
}

/// [`nixpkgs_version`] with every path given, for tests.
fn nixpkgs_version_from(
    nixos_version: &Path,
    os_release: &Path,
    darwin_version_json: &Path,
    configured: Option<&str>,
) -> String {
    let label = read_small_string(nixos_version)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(label) = label.as_deref().filter(|l| looks_like_version(l)) {
        return label.to_owned();
    }
    if let Some(build_id) = read_small_string(os_release).and_then(|text| nixos_build_id(&text)) {
        return build_id;
    }
    if let Some(version) =
        read_small_string(darwin_version_json).and_then(|t| darwin_nixpkgs_version(&t))
    {
        return version;
    }
    if let Some(configured) = configured.map(str::trim).filter(|c| !c.is_empty()) {
        return configured.to_owned();
    }
    label.unwrap_or_default()
}

/// `BUILD_ID` of an os-release text whose `ID` (or `ID_LIKE`) is `nixos`, if it
/// looks like a version.
fn nixos_build_id(os_release: &str) -> Option<String> {
    let is_nixos = os_release_value(os_release, "ID").as_deref() == Some("nixos")
        || os_release_value(os_release, "ID_LIKE")
            .is_some_and(|like| like.split_whitespace().any(|id| id == "nixos"));
    if !is_nixos {
        return None;
    }
    os_release_value(os_release, "BUILD_ID").filter(|v| looks_like_version(v))
}

/// `nixpkgsVersion` from nix-darwin's `darwin-version.json`, if present and not
/// blank.
fn darwin_nixpkgs_version(json: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let version = value.get("nixpkgsVersion")?.as_str()?.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

/// Whether `s` looks like a nixpkgs version: starts with a digit, has a `.`, no
/// white space, not absurdly long (`"24.11.20241201.abc1234"`, `"25.05pre-git"`).
fn looks_like_version(s: &str) -> bool {
    s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.contains('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Lowercase hex SHA-256 of `<repo_dir>/flake.lock`; `None` if it is missing,
/// unreadable or larger than 16 MiB.
pub fn flake_lock_hash(repo_dir: &Path) -> Option<String> {
    let path = repo_dir.join("flake.lock");
    match sha256_file(&path, Some(FLAKE_LOCK_CAP)) {
        Ok(hash) => hash,
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), error = %err, "cannot hash flake.lock");
            }
            None
        }
    }
}

/// Lowercase hex SHA-256 of a file (blocking: reads it whole); `None` if it
/// cannot be read.
pub fn file_sha256(path: &Path) -> Option<String> {
    sha256_file(path, None).ok().flatten()
}

/// Streams a file through SHA-256 in [`HASH_CHUNK`] pieces.
///
/// Returns `Ok(None)` when `cap` is given and the file is larger than it.
fn sha256_file(path: &Path, cap: Option<u64>) -> io::Result<Option<String>> {
    let file = File::open(path)?;
    let limit = cap.map_or(u64::MAX, |c| c.saturating_add(1));
    let mut reader = file.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        total = total.saturating_add(n as u64);
        if cap.is_some_and(|c| total > c) {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Reads at most `SMALL_FILE_CAP` bytes of a file as (lossy) UTF-8; `None` if it
/// cannot be read.
fn read_small_string(path: &Path) -> Option<String> {
    read_capped(path, SMALL_FILE_CAP)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads at most `cap` bytes of a file.
fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Runs a small helper tool and returns its trimmed standard output if it exits
/// successfully within [`COMMAND_TIMEOUT`] and prints something; the tool is
/// killed on timeout. It gets nothing of the agent's environment (so never the
/// token): only a system `PATH`.
fn run_command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Option<String> {
    run_command_with_timeout(program, args, COMMAND_TIMEOUT)
}

/// [`run_command`] with an explicit timeout, for tests.
fn run_command_with_timeout(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    timeout: Duration,
) -> Option<String> {
    let program = program.as_ref();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let env = [("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into())];
    let out = crate::bounded::run(program, &args, &env, timeout)
        .map_err(|err| tracing::debug!(program = ?program, error = %err, "helper failed"))
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Resolves `path` against `base` unless it is absolute.
fn resolve_against(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_type_names() {
        assert_eq!(HostType::NixOs.as_str(), "nixos");
        assert_eq!(HostType::MacOs.as_str(), "macos");
        assert_eq!(HostType::parse(" MacOS "), Some(HostType::MacOs));
        assert_eq!(HostType::parse("nixos"), Some(HostType::NixOs));
        assert_eq!(HostType::parse("windows"), None);
        let expected = if cfg!(target_os = "macos") {
            HostType::MacOs
        } else {
            HostType::NixOs
        };
        assert_eq!(HostType::detect(), expected);
        assert_eq!(HostType::MacOs.to_string(), "macos");
    }

    #[test]
    fn hostname_is_short_and_not_empty() {
        let name = short_hostname();
        assert!(!name.is_empty());
        assert!(!name.contains('.'), "{name}");
        assert_eq!(name, name.trim());
    }

    #[test]
    fn domain_is_stripped() {
        assert_eq!(strip_domain("web1.example.com").as_deref(), Some("web1"));
        assert_eq!(strip_domain(" web1 \n").as_deref(), Some("web1"));
        assert_eq!(strip_domain("web1").as_deref(), Some("web1"));
        assert_eq!(strip_domain(".example.com"), None);
        assert_eq!(strip_domain(""), None);
        assert_eq!(strip_domain("  \n"), None);
    }

    #[test]
    fn os_release_parser() {
        let text = "\
# a comment
NAME=NixOS
ID=nixos
VERSION=\"24.11 (Vicuna)\"
VERSION_ID=\"24.11\"
BUILD_ID=\"24.11.20241201.abc1234\"
PRETTY_NAME='NixOS 24.11 (Vicuna)'
  # VERSION_ID=99
ESCAPED=\"a \\\"b\\\" \\$c\"
EMPTY=
";
        assert_eq!(
            os_release_value(text, "VERSION_ID").as_deref(),
            Some("24.11")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("nixos"));
        assert_eq!(
            os_release_value(text, "VERSION").as_deref(),
            Some("24.11 (Vicuna)")
        );
        assert_eq!(
            os_release_value(text, "PRETTY_NAME").as_deref(),
            Some("NixOS 24.11 (Vicuna)")
        );
        assert_eq!(
            os_release_value(text, "ESCAPED").as_deref(),
            Some("a \"b\" $c")
        );
        assert_eq!(os_release_value(text, "EMPTY"), None);
        assert_eq!(os_release_value(text, "MISSING"), None);
        assert_eq!(os_release_value(text, "VERSION_"), None);
        assert_eq!(os_release_value("", "VERSION_ID"), None);
        assert_eq!(
            os_release_value("VERSION_ID=12\r\n", "VERSION_ID").as_deref(),
            Some("12")
        );
    }

    #[test]
    fn os_version_does_not_panic() {
        // Content depends on the machine; it must simply be a trimmed line.
        let v = os_version(HostType::detect());
        assert_eq!(v, v.trim());
        assert!(!v.contains('\n'));
    }

    struct VersionFiles {
        dir: tempfile::TempDir,
    }

    impl VersionFiles {
        fn new() -> Self {
            VersionFiles {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.path(name), text).expect("write fixture");
        }
        fn version(&self, configured: Option<&str>) -> String {
            nixpkgs_version_from(
                &self.path("nixos-version"),
                &self.path("os-release"),
                &self.path("darwin-version.json"),
                configured,
            )
        }
    }

    #[test]
    fn nixpkgs_version_from_nixos_version_file() {
        let f = VersionFiles::new();
        f.write("nixos-version", "24.11.20241201.abc1234");
        f.write("os-release", "ID=nixos\nBUILD_ID=\"0.0.0.other\"\n");
        assert_eq!(f.version(Some("99.99")), "24.11.20241201.abc1234");
    }

    #[test]
    fn nixpkgs_version_custom_label_uses_build_id() {
        let f = VersionFiles::new();
        f.write("nixos-version", "my-custom-label\n");
        f.write(
            "os-release",
            "ID=nixos\nVERSION_ID=\"24.11\"\nBUILD_ID=\"24.11.20241201.abc1234\"\n",
        );
        assert_eq!(f.version(None), "24.11.20241201.abc1234");
        // Without a usable BUILD_ID the configured value beats the odd label ...
        f.write("os-release", "ID=debian\nBUILD_ID=\"24.11.1\"\n");
        assert_eq!(f.version(Some("24.11.1.def5678")), "24.11.1.def5678");
        // ... and the label beats nothing.
        assert_eq!(f.version(None), "my-custom-label");
    }

    #[test]
    fn nixpkgs_version_from_darwin_json() {
        let f = VersionFiles::new();
        // What nix-darwin writes today: no nixpkgsVersion, so the configured value wins.
        f.write(
            "darwin-version.json",
            r#"{"darwinLabel":"25.05.56c666e","darwinRevision":"56c666e108467d87d13508936aade6d567f2a501","nixpkgsRevision":"a0991c886dc83e6e9de01d5266e4842985b1850e"}"#,
        );
        assert_eq!(
            f.version(Some(" 25.05.20250601.a0991c8 ")),
            "25.05.20250601.a0991c8"
        );
        assert_eq!(f.version(None), "");
        // A nixpkgsVersion key, when present, is used.
        f.write(
            "darwin-version.json",
            r#"{"darwinLabel":"25.05.56c666e","nixpkgsVersion":"25.05.20250601.a0991c8"}"#,
        );
        assert_eq!(f.version(Some("1.0")), "25.05.20250601.a0991c8");
        // Broken JSON is ignored.
        f.write("darwin-version.json", "{not json");
        assert_eq!(f.version(Some("1.0")), "1.0");
    }

    #[test]
    fn nixpkgs_version_unknown_is_empty() {
        let f = VersionFiles::new();
        assert_eq!(f.version(None), "");
        assert_eq!(f.version(Some("   ")), "");
        assert_eq!(f.version(Some("24.05")), "24.05");
    }

    #[test]
    fn flake_lock_hash_matches_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(flake_lock_hash(dir.path()), None);
        std::fs::write(dir.path().join("flake.lock"), "abc").expect("write");
        assert_eq!(
            flake_lock_hash(dir.path()).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        std::fs::write(dir.path().join("flake.lock"), "").expect("write");
        assert_eq!(
            flake_lock_hash(dir.path()).as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        // A directory named flake.lock is not a lock file.
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(other.path().join("flake.lock")).expect("mkdir");
        assert_eq!(flake_lock_hash(other.path()), None);
    }

    #[test]
    fn sha256_streams_and_respects_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        // More than one chunk, not a multiple of the chunk size.
        let data: Vec<u8> = (0..(HASH_CHUNK * 3 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let expected = hex(&Sha256::digest(&data));
        assert_eq!(
            sha256_file(&path, None).expect("hash"),
            Some(expected.clone())
        );
        let len = data.len() as u64;
        assert_eq!(sha256_file(&path, Some(len)).expect("hash"), Some(expected));
        assert_eq!(sha256_file(&path, Some(len - 1)).expect("hash"), None);
    }

    #[test]
    fn helper_commands() {
        assert_eq!(
            run_command_with_timeout("sh", &["-c", "echo '  hi  '"], Duration::from_secs(5))
                .as_deref(),
            Some("hi")
        );
        assert_eq!(
            run_command_with_timeout("sh", &["-c", "echo out; exit 3"], Duration::from_secs(5)),
            None
        );
        assert_eq!(
            run_command_with_timeout("/nonexistent/tool", &[], Duration::from_secs(5)),
            None
        );
        let start = std::time::Instant::now();
        assert_eq!(
            run_command_with_timeout("sleep", &["10"], Duration::from_millis(100)),
            None
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
