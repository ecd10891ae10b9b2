//! Recovering a repository that an interrupted git left behind.
//!
//! - **Stale lock files.** A git killed mid-operation (SIGKILL, power loss,
//!   a full disk) leaves `index.lock`, `HEAD.lock`, a ref's `.lock` or
//!   `shallow.lock`, and every later git in the repository fails with
//!   "Unable to create '…/index.lock': File exists". Before a pull, in the
//!   agent's own clone only, the agent removes a lock file that no running
//!   process holds open (on Linux it looks at every process's open files in
//!   `/proc`; elsewhere it asks `lsof`, and without `lsof` only a lock older
//!   than [`UNHELD_AGE`] counts): in its own clone no git runs but the
//!   agent's, one at a time, so after a crash the next pull goes through at
//!   once. In a checkout the agent does not own (legacy mode), where a
//!   person's git may hold a lock closed for a while (`git commit -a` while
//!   the editor runs), it never deletes a lock: it says which ones it found
//!   and how to remove them. A `.git` that is not a real directory
//!   (a link, or a worktree's `gitdir:` file) is left alone. Each removal or
//!   finding is logged and shown in the command's output.
//! - **A broken repository.** When a pull fails and the repository itself
//!   is unusable — `HEAD` does not name a commit with a tree, or the index
//!   cannot be read (`git status`) — the agent's own clone (isolated mode) is
//!   removed and cloned again; a checkout the agent does not own (legacy
//!   mode) is never deleted, and the failure says what is wrong and what to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Without a way to see open files, a lock this old is taken for stale.
pub const UNHELD_AGE: Duration = Duration::from_secs(10 * 60);
/// Lock files looked at under `.git` (besides `refs/**/*.lock`).
const TOP_LOCKS: [&str; 7] = [
    "index.lock",
    "HEAD.lock",
    "ORIG_HEAD.lock",
    "FETCH_HEAD.lock",
    "shallow.lock",
    "packed-refs.lock",
    "config.lock",
];
/// Most entries looked at under `.git/refs` (a bound, not a limit in practice).
const MAX_REF_ENTRIES: usize = 100_000;

/// The lock files in `repo/.git` (none when `.git` is not a real directory).
pub fn lock_files(repo: &Path) -> Vec<PathBuf> {
    let git = repo.join(".git");
    if !git.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Vec::new();
    }
    let mut found: Vec<PathBuf> = TOP_LOCKS
        .iter()
        .map(|name| git.join(name))
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect();
    let mut stack = vec![git.join("refs")];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > MAX_REF_ENTRIES {
                return found;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Whether some process has `path` open.
fn held(path: &Path, env: &[(OsString, OsString)]) -> bool {
    let Ok(target) = std::fs::canonicalize(path) else {
        return false;
    };
    if let Ok(procs) = std::fs::read_dir("/proc") {
        let mut any_process = false;
        for p in procs.filter_map(Result::ok) {
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            any_process = true;
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            if fds
                .filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == target))
            {
                return true;
            }
        }
        if any_process {
            return false;
        }
    }
    let lsof = crate::bounded::run(
        "lsof",
        &[
            std::ffi::OsStr::new("-t"),
            std::ffi::OsStr::new("--"),
            target.as_os_str(),
        ],
        env,
        Duration::from_secs(10),
    );
    match lsof {
        Ok(out) => out.status.success() && !out.stdout.is_empty(),
        // no way to tell: only an old lock counts as stale
        Err(_) => std::fs::metadata(&target)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < UNHELD_AGE),
    }
}

/// What was done about the lock files of a repository.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Locks {
    /// Removed (the agent's own clone).
    pub removed: Vec<PathBuf>,
    /// Found, unheld, and left alone: in a checkout the agent does not own.
    pub reported: Vec<PathBuf>,
}

/// Deals with the lock files of `repo` (blocking): in the agent's own clone
/// (`own`, where no git but the agent's runs, and none while it repairs)
/// the ones nobody holds are removed, however recent; in another checkout
/// the unheld ones are only reported.
pub fn stale_locks(repo: &Path, env: &[(OsString, OsString)], own: bool) -> Locks {
    let mut locks = Locks::default();
    for lock in lock_files(repo) {
        if held(&lock, env) {
            tracing::info!(
                "{} is held by a running process; left alone",
                lock.display()
            );
            continue;
        }
        if !own {
            tracing::warn!(
                "git lock {} in a checkout the agent does not own: left alone",
                lock.display()
            );
            locks.reported.push(lock);
            continue;
        }
        match std::fs::remove_file(&lock) {
            Ok(()) => {
                tracing::warn!(
                    "removed the stale git lock {} (left by a git that did not finish)",
                    lock.display()
                );
                locks.removed.push(lock);
            }
            Err(e) => tracing::warn!("cannot remove the stale git lock {}: {e}", lock.display()),
        }
    }
    locks
}

/// Why the repository is unusable, if it is (blocking): `HEAD` must name a
/// commit with a tree, and `git status` must be able to read the index.
pub fn broken(repo: &Path, env: &[(OsString, OsString)]) -> Option<String> {
    let checks: [&[&str]; 2] = [
        &["rev-parse", "--verify", "--quiet", "HEAD^{tree}"],
        &["status", "--porcelain", "--untracked-files=no"],
    ];
    for args in checks {
        let mut argv = vec![std::ffi::OsStr::new("-C"), repo.as_os_str()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        match crate::bounded::run("git", &argv, env, Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                return Some(if first.is_empty() {
                    format!("`git {}` failed", args.join(" "))
                } else {
                    first.trim().to_string()
                });
            }
            // cannot run git at all: nothing to learn about the repository
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(path: &Path, age: Duration) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
    }

    #[test]
    fn finds_top_and_ref_locks_and_removes_the_unheld_ones() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads/feature")).unwrap();
        let old = Duration::from_secs(3600);
        std::fs::write(git.join("index.lock"), "").unwrap();
        aged(&git.join("index.lock"), old);
        std::fs::write(git.join("refs/heads/feature/x.lock"), "").unwrap();
        aged(&git.join("refs/heads/feature/x.lock"), old);
        std::fs::write(git.join("refs/heads/main"), "").unwrap();
        let held_lock = git.join("HEAD.lock");
        std::fs::write(&held_lock, "").unwrap();
        aged(&held_lock, old);
        // left a moment ago by a git that was killed: no git runs in the
        // agent's own clone but its own, so it is stale at once
        let fresh = git.join("config.lock");
        std::fs::write(&fresh, "").unwrap();
        let names: Vec<String> = lock_files(dir.path())
            .iter()
            .map(|p| p.strip_prefix(&git).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "HEAD.lock",
                "config.lock",
                "index.lock",
                "refs/heads/feature/x.lock"
            ]
        );
        // this process holds HEAD.lock open, as a running git would
        let _open = std::fs::File::open(&held_lock).unwrap();
        let locks = stale_locks(dir.path(), &[], true);
        assert_eq!(locks.removed.len(), 3, "{locks:?}");
        assert!(held_lock.exists(), "a held lock stays");
        assert!(!fresh.exists(), "a recent unheld lock goes too");
        assert!(!git.join("index.lock").exists());
    }

    #[test]
    fn in_a_checkout_of_somebody_else_locks_are_reported_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(&git).unwrap();
        std::fs::write(git.join("index.lock"), "").unwrap();
        aged(&git.join("index.lock"), Duration::from_secs(3600));
        let locks = stale_locks(dir.path(), &[], false);
        assert_eq!(locks.reported, [git.join("index.lock")]);
        assert!(locks.removed.is_empty());
        assert!(git.join("index.lock").exists());
    }

    #[test]
    fn a_dot_git_that_is_a_link_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("index.lock"), "").unwrap();
        aged(&elsewhere.join("index.lock"), Duration::from_secs(3600));
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::os::unix::fs::symlink(&elsewhere, repo.join(".git")).unwrap();
        assert!(lock_files(&repo).is_empty());
        assert_eq!(stale_locks(&repo, &[], true), Locks::default());
        assert!(elsewhere.join("index.lock").exists());
    }
}
