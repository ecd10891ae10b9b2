//! The configuration repository's `HEAD` commit, read straight from git's files.
//!
//! No `git` process is started: the heartbeat re-reads the generation every
//! interval, and a few small file reads are far cheaper than a fork. Handled:
//! `.git` as a directory or as a `gitdir: <path>` file (worktrees, submodules,
//! `--separate-git-dir`), `commondir` (worktrees), loose refs, `packed-refs`, and
//! symbolic refs up to [`MAX_SYMREF_DEPTH`] levels. Not handled: the `reftable`
//! ref storage (git ≥ 2.45, opt-in), for which the answer is `None`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{read_small_string, resolve_against};

/// How many symbolic refs are followed before giving up (loops, odd setups).
const MAX_SYMREF_DEPTH: usize = 5;

/// How much of `packed-refs` is scanned at most (streamed line by line).
const PACKED_REFS_CAP: u64 = 64 * 1024 * 1024;

/// How many hex characters of a commit the wire's `generation` carries:
/// upstream's agent sends the first 7 (`detectGeneration` in
/// `internal/agent/heartbeat.go`), its integration test compares
/// `register.generation` with `git rev-parse --short=7 HEAD`, and the dashboard
/// compares and shows 7.
pub const GENERATION_LEN: usize = 7;

/// The first [`GENERATION_LEN`] characters of a commit id (all of a shorter one).
pub fn short_commit(commit: &str) -> &str {
    commit.get(..GENERATION_LEN).unwrap_or(commit)
}

/// The `generation` of `register`, `heartbeat` and `status`: `HEAD`'s commit as
/// its short hash, or empty when it cannot be read. The full id stays internal
/// ([`git_head_commit`]: switch records, signature checks).
pub fn generation(repo_dir: &Path) -> String {
    git_head_commit(repo_dir)
        .map(|c| short_commit(&c).to_owned())
        .unwrap_or_default()
}

/// The full commit id (lowercase hex: 40 digits, or 64 in SHA-256 repositories)
/// that `HEAD` of the work tree at `repo_dir` points to.
///
/// `None` if `repo_dir` is not a git work tree, the branch has no commit yet, or
/// anything read is malformed.
pub fn git_head_commit(repo_dir: &Path) -> Option<String> {
    let git_dir = git_dir_of(repo_dir)?;
    let common_dir = read_small_string(&git_dir.join("commondir"))
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .map(|c| resolve_against(&git_dir, Path::new(&c)))
        .unwrap_or_else(|| git_dir.clone());
    let head = read_small_string(&git_dir.join("HEAD"))?;
    resolve(&git_dir, &common_dir, &head, 0)
}

/// The git directory of the work tree at `repo_dir`: `<repo_dir>/.git` itself, or
/// the target of a `gitdir: <path>` file there (relative to `repo_dir`).
fn git_dir_of(repo_dir: &Path) -> Option<PathBuf> {
    let dot_git = repo_dir.join(".git");
    let meta = std::fs::metadata(&dot_git).ok()?;
    if meta.is_dir() {
        return Some(dot_git);
    }
    if !meta.is_file() {
        return None;
    }
    let text = read_small_string(&dot_git)?;
    let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    if target.is_empty() {
        return None;
    }
    let dir = resolve_against(repo_dir, Path::new(target));
    dir.is_dir().then_some(dir)
}

/// Resolves the content of `HEAD` or of a loose ref file to a commit id.
fn resolve(git_dir: &Path, common_dir: &Path, content: &str, depth: usize) -> Option<String> {
    let content = content.trim();
    let Some(target) = content.strip_prefix("ref:") else {
        return object_id(content);
    };
    if depth >= MAX_SYMREF_DEPTH {
        tracing::debug!(target, "too many levels of symbolic refs");
        return None;
    }
    let name = target.trim();
    if !is_safe_ref_name(name) {
        return None;
    }
    // Per-worktree refs live in the worktree's own git dir, shared ones in the
    // common dir; a shared ref never exists in a worktree's dir, so try both.
    let mut dirs = vec![git_dir];
    if common_dir != git_dir {
        dirs.push(common_dir);
    }
    for dir in dirs {
        let path = dir.join(name);
        if path.is_file()
            && let Some(loose) = read_small_string(&path)
        {
            return resolve(git_dir, common_dir, &loose, depth + 1);
        }
    }
    let packed = File::open(common_dir.join("packed-refs")).ok()?;
    packed_ref(BufReader::new(packed.take(PACKED_REFS_CAP)), name)
}

/// Looks `name` up in a `packed-refs` stream: lines `<id> <refname>`, skipping
/// the `#` header and `^<peeled id>` lines.
fn packed_ref(reader: impl BufRead, name: &str) -> Option<String> {
    for line in reader.lines() {
        let line = line.ok()?;
        if line.starts_with('#') || line.starts_with('^') {
            continue;
        }
        if let Some((id, refname)) = line.trim_end().split_once(' ')
            && refname == name
        {
            return object_id(id);
        }
    }
    None
}

/// A ref name that is safe to join onto a git dir: `refs/...`, relative, without
/// `.`/`..`/empty components or odd characters.
fn is_safe_ref_name(name: &str) -> bool {
    name.starts_with("refs/")
        && name.len() <= 1024
        && !name
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == ':')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// `s` as a lowercase object id, if it is 40 (SHA-1) or 64 (SHA-256) hex digits.
fn object_id(s: &str) -> Option<String> {
    let s = s.trim();
    ((s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs git in `dir` with a clean, deterministic configuration.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn commit(dir: &Path, msg: &str) -> String {
        std::fs::write(dir.join("file.txt"), msg).expect("write");
        git(dir, &["add", "file.txt"]);
        git(dir, &["commit", "-q", "-m", msg]);
        git(dir, &["rev-parse", "HEAD"])
    }

    fn new_repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q"]);
        dir
    }

    #[test]
    fn fresh_repo_with_loose_ref() {
        let repo = new_repo();
        let id = commit(repo.path(), "one");
        assert_eq!(id.len(), 40);
        assert_eq!(git_head_commit(repo.path()), Some(id));
    }

    #[test]
    fn unborn_branch_is_none() {
        let repo = new_repo();
        assert_eq!(git_head_commit(repo.path()), None);
    }

    #[test]
    fn packed_refs_after_pack_refs() {
        let repo = new_repo();
        commit(repo.path(), "one");
        let id = commit(repo.path(), "two");
        git(repo.path(), &["tag", "-a", "-m", "annotated", "v1"]);
        git(repo.path(), &["pack-refs", "--all"]);
        assert!(!repo.path().join(".git/refs/heads/main").exists());
        assert_eq!(git_head_commit(repo.path()), Some(id));
    }

    #[test]
    fn detached_head() {
        let repo = new_repo();
        let first = commit(repo.path(), "one");
        commit(repo.path(), "two");
        git(repo.path(), &["checkout", "-q", "--detach", &first]);
        assert_eq!(git_head_commit(repo.path()), Some(first));
    }

    #[test]
    fn worktree_uses_gitdir_file_and_commondir() {
        let repo = new_repo();
        let main_id = commit(repo.path(), "one");
        let parent = tempfile::tempdir().expect("tempdir");
        let wt = parent.path().join("wt");
        let wt_str = wt.to_str().expect("utf-8 temp path");
        git(
            repo.path(),
            &["worktree", "add", "-q", "-b", "feature", wt_str],
        );
        assert!(wt.join(".git").is_file());
        // Same commit as main, found through commondir's loose ref.
        assert_eq!(git_head_commit(&wt), Some(main_id.clone()));
        let feature_id = commit(&wt, "feature work");
        assert_eq!(git_head_commit(&wt), Some(feature_id.clone()));
        assert_eq!(git_head_commit(repo.path()), Some(main_id.clone()));
        // And through the common dir's packed-refs.
        git(repo.path(), &["pack-refs", "--all"]);
        assert_eq!(git_head_commit(&wt), Some(feature_id));
        assert_eq!(git_head_commit(repo.path()), Some(main_id));
    }

    #[test]
    fn relative_gitdir_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let work = root.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        let id = commit(&work, "one");
        std::fs::rename(work.join(".git"), root.path().join("store.git")).expect("move .git");
        std::fs::write(work.join(".git"), "gitdir: ../store.git\n").expect("write .git file");
        assert_eq!(git_head_commit(&work), Some(id));
    }

    #[test]
    fn missing_repo_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(git_head_commit(dir.path()), None);
        assert_eq!(git_head_commit(&dir.path().join("does-not-exist")), None);
    }

    #[test]
    fn garbage_head_is_none() {
        let repo = new_repo();
        commit(repo.path(), "one");
        let head = repo.path().join(".git/HEAD");
        for garbage in [
            "not a ref at all\n",
            "ref: ../../../etc/passwd\n",
            "ref: refs/heads/../../HEAD\n",
            "0123456789abcdef\n",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n",
            "",
        ] {
            std::fs::write(&head, garbage).expect("write HEAD");
            assert_eq!(git_head_commit(repo.path()), None, "HEAD = {garbage:?}");
        }
    }

    #[test]
    fn garbage_gitdir_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".git"), "nonsense\n").expect("write");
        assert_eq!(git_head_commit(dir.path()), None);
        std::fs::write(dir.path().join(".git"), "gitdir: nowhere\n").expect("write");
        assert_eq!(git_head_commit(dir.path()), None);
    }

    #[test]
    fn symbolic_ref_chain_and_loop() {
        let repo = new_repo();
        let id = commit(repo.path(), "one");
        let git_dir = repo.path().join(".git");
        std::fs::write(git_dir.join("refs/heads/alias"), "ref: refs/heads/main\n").expect("write");
        std::fs::write(git_dir.join("HEAD"), "ref: refs/heads/alias\n").expect("write");
        assert_eq!(git_head_commit(repo.path()), Some(id));
        std::fs::write(git_dir.join("refs/heads/loop"), "ref: refs/heads/loop\n").expect("write");
        std::fs::write(git_dir.join("HEAD"), "ref: refs/heads/loop\n").expect("write");
        assert_eq!(git_head_commit(repo.path()), None);
    }

    #[test]
    fn packed_refs_parser() {
        let text = "# pack-refs with: peeled fully-peeled sorted \n\
                    1111111111111111111111111111111111111111 refs/heads/main\n\
                    2222222222222222222222222222222222222222 refs/tags/v1\n\
                    ^3333333333333333333333333333333333333333\n\
                    not-hex refs/heads/bad\n";
        assert_eq!(
            packed_ref(text.as_bytes(), "refs/heads/main").as_deref(),
            Some("1111111111111111111111111111111111111111")
        );
        assert_eq!(
            packed_ref(text.as_bytes(), "refs/tags/v1").as_deref(),
            Some("2222222222222222222222222222222222222222")
        );
        assert_eq!(packed_ref(text.as_bytes(), "refs/heads/bad"), None);
        assert_eq!(packed_ref(text.as_bytes(), "refs/heads/missing"), None);
    }

    #[test]
    fn object_ids() {
        let sha1 = "ABCDEF0123456789abcdef0123456789abcdef01";
        assert_eq!(object_id(sha1), Some(sha1.to_ascii_lowercase()));
        let sha256 = "a".repeat(64);
        assert_eq!(object_id(&sha256), Some(sha256.clone()));
        assert_eq!(object_id(&"a".repeat(41)), None);
        assert_eq!(object_id(""), None);
    }
}
