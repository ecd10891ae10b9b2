//! What identifies the running agent binary: the `register` (and `heartbeat`)
//! fields `source_commit`, `store_path` and `binary_hash` that the hub keeps as
//! the host's agent freshness (`hub.go`, P2810).
//!
//! The commit and the store path cost a stat and a tiny read. The hash reads
//! the whole executable: a few milliseconds for the release binary, seconds
//! for a debug build of tens of megabytes. So registration never waits for
//! it (waiting cost a first start about 3 ms of its 7.5 ms to `register`,
//! docs/benchmarks.md):
//! - the hash is remembered in the state directory, keyed by the identity of
//!   the executable file (device, inode, size, modification and change time),
//!   so a restart of the same binary has it at once;
//! - otherwise it is computed on a thread of its own, and the heartbeats
//!   carry it as soon as it is (the first one, right after `registered`,
//!   for a release binary), and the hub
//!   updates the freshness from every heartbeat that has one (`hub.go`
//!   `handleHeartbeat`). A register without the hash makes the hub's
//!   comparison "unknown" (`validation.go` `CompareFreshness`: insufficient
//!   data), never a false "stale".

use std::path::{Component, Path};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::{read_small_string, sha256_file};

/// The cache's file in the state directory.
const CACHE_FILE: &str = "binary-hash";

/// What identifies the running agent binary (the optional `register` and
/// `heartbeat` fields `source_commit`, `store_path` and `binary_hash`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The commit the binary was built from, if known: `NIXFLEET_SOURCE_COMMIT`
    /// at build time, else the package's stamp ([`STAMP`], written next to the
    /// binary after the build so that the build itself does not depend on
    /// the commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    /// The Nix store path the binary lives in (`/nix/store/<hash>-<name>`), if it
    /// runs from the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_path: Option<String>,
    /// Lowercase hex SHA-256 of the binary, if it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_hash: Option<String>,
}

/// Identifies the running binary: the commit and the store path, and the hash
/// when the cache in `state_dir` holds it for this very file (else `None`:
/// [`hash_running_binary`] computes it).
pub fn binary_freshness(state_dir: &Path) -> Freshness {
    let exe = std::env::current_exe().ok();
    let canonical = exe.as_deref().and_then(|p| std::fs::canonicalize(p).ok());
    let source_commit = option_env!("NIXFLEET_SOURCE_COMMIT")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .or_else(|| canonical.as_deref().and_then(stamped_commit));
    let store_path = canonical
        .as_deref()
        .or(exe.as_deref())
        .and_then(store_path_of);
    Freshness {
        source_commit,
        store_path,
        binary_hash: cached_hash(state_dir),
    }
}

/// Hashes the running executable (blocking: it reads the whole file) and
/// remembers the hash in `state_dir` for the next start of the same file.
pub fn hash_running_binary(state_dir: &Path) -> Option<String> {
    let before = executable_identity();
    let hash = executable_hash()?;
    // remembered only when the file did not change while it was read
    if let Some(identity) = before.filter(|id| Some(id) == executable_identity().as_ref()) {
        let cache = state_dir.join(CACHE_FILE);
        if let Err(e) = crate::atomic::write(&cache, format!("{identity}\n{hash}\n").as_bytes()) {
            tracing::debug!(
                "cannot remember the binary's hash in {}: {e}",
                cache.display()
            );
        }
    }
    Some(hash)
}

/// The hash of the running binary once it is known, shared by the start-up
/// (which fills it) and the frames (which carry it).
#[derive(Debug, Clone, Default)]
pub struct BinaryHash(Arc<OnceLock<String>>);

impl BinaryHash {
    /// The hash, once known.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Records the hash (the first one wins).
    pub fn set(&self, hash: String) {
        let _ = self.0.set(hash);
    }

    /// `freshness` with the hash filled in when it is known and missing there.
    pub fn fill(&self, freshness: &mut Freshness) {
        if freshness.binary_hash.is_none() {
            freshness.binary_hash = self.get().map(str::to_owned);
        }
    }
}

/// The path through which the running image is read: on Linux
/// `/proc/self/exe`, the running image even when the file on disk was
/// replaced or removed; elsewhere the executable's path.
fn executable_path() -> Option<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        return Some("/proc/self/exe".into());
    }
    std::env::current_exe().ok()
}

/// What tells one executable file from another without reading it: device,
/// inode, size, modification and change time (the change time moves with
/// every write and cannot be set back).
fn executable_identity() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(executable_path()?).ok()?;
    Some(format!(
        "{} {} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The remembered hash, if it was made for the running executable file.
fn cached_hash(state_dir: &Path) -> Option<String> {
    let text = read_small_string(&state_dir.join(CACHE_FILE))?;
    let mut lines = text.lines();
    let (identity, hash) = (lines.next()?, lines.next()?);
    let valid = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (valid && Some(identity) == executable_identity().as_deref()).then(|| hash.to_owned())
}

/// Where the package keeps the commit it was built from, relative to the
/// directory of the binary (`$out/bin/../share/nixfleet-agent/source-commit`).
pub const STAMP: &str = "../share/nixfleet-agent/source-commit";

/// The commit in the stamp next to `exe`: a git hash, optionally `-dirty`;
/// anything else (or a file past 100 bytes) is ignored.
fn stamped_commit(exe: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(exe.parent()?.join(STAMP)).ok()?;
    let mut text = String::new();
    file.take(100).read_to_string(&mut text).ok()?;
    let commit = text.trim();
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    let valid = (7..=64).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| commit.to_string())
}

/// Lowercase hex SHA-256 of the running executable (blocking: reads it whole).
pub fn executable_hash() -> Option<String> {
    sha256_file(&executable_path()?, None).ok().flatten()
}

/// The `/nix/store/<hash>-<name>` prefix of `path`, if it lies inside the store.
fn store_path_of(path: &Path) -> Option<String> {
    let mut components = path.components();
    let prefix = [components.next()?, components.next()?, components.next()?];
    if prefix
        != [
            Component::RootDir,
            Component::Normal("nix".as_ref()),
            Component::Normal("store".as_ref()),
        ]
    {
        return None;
    }
    match components.next()? {
        Component::Normal(entry) => {
            let entry = entry.to_str()?;
            // Strip the " (deleted)" Linux appends to a removed executable.
            let entry = entry.strip_suffix(" (deleted)").unwrap_or(entry);
            (!entry.is_empty()).then(|| format!("/nix/store/{entry}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_next_to_the_binary_names_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let share = tmp.path().join("share/nixfleet-agent");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        let exe = bin.join("nixfleet-agent");
        assert_eq!(stamped_commit(&exe), None);
        let rev = "0123456789abcdef0123456789abcdef01234567";
        for (content, expected) in [
            (format!("{rev}\n"), Some(rev.to_string())),
            (format!("{rev}-dirty"), Some(format!("{rev}-dirty"))),
            ("not a commit".to_string(), None),
            (String::new(), None),
        ] {
            std::fs::write(share.join("source-commit"), content).unwrap();
            assert_eq!(stamped_commit(&exe), expected);
        }
    }

    #[test]
    fn store_path_prefix() {
        assert_eq!(
            store_path_of(Path::new(
                "/nix/store/abcd1234-nixfleet-agent-0.1.0/bin/nixfleet-agent"
            ))
            .as_deref(),
            Some("/nix/store/abcd1234-nixfleet-agent-0.1.0")
        );
        assert_eq!(
            store_path_of(Path::new("/nix/store/abcd-x (deleted)")).as_deref(),
            Some("/nix/store/abcd-x")
        );
        assert_eq!(store_path_of(Path::new("/nix/store")), None);
        assert_eq!(store_path_of(Path::new("/usr/bin/nixfleet-agent")), None);
        assert_eq!(store_path_of(Path::new("nix/store/abcd-x/bin/a")), None);
    }

    #[test]
    fn freshness_of_test_binary() {
        let state = tempfile::tempdir().unwrap();
        let f = binary_freshness(state.path());
        assert_eq!(f.binary_hash, None, "nothing cached yet");
        let hash = hash_running_binary(state.path()).expect("the test binary is readable");
        // remembered for the same file
        assert_eq!(
            binary_freshness(state.path()).binary_hash.as_deref(),
            Some(hash.as_str())
        );
        // a cache made for another file is not used
        let cache = state.path().join(CACHE_FILE);
        std::fs::write(&cache, format!("1 2 3 4.5 6.7\n{hash}\n")).unwrap();
        assert_eq!(binary_freshness(state.path()).binary_hash, None);
        std::fs::write(&cache, "garbage").unwrap();
        assert_eq!(binary_freshness(state.path()).binary_hash, None);
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let exe = std::env::current_exe().expect("current exe");
        if !exe.starts_with("/nix/store") {
            assert_eq!(f.store_path, None);
        }
        let json = serde_json::to_value(Freshness::default()).expect("serialize");
        assert_eq!(json, serde_json::json!({}));
    }
}
