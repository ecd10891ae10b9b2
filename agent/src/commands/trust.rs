//! Only trusted commits are deployed (docs/commands.md, "Trusted commits").
//!
//! - With `requireSignedCommits`, a commit is trusted when `git verify-commit`
//!   accepts its signature against the configured keys alone: SSH
//!   allowed-signers files (through `gpg.ssh.allowedSignersFile`) and GPG
//!   public keys (imported into a keyring made for this one check, so no
//!   other key on the host counts). The keys come from the host's
//!   configuration by path, never from the dashboard.
//! - In isolated mode a pull refuses history that does not descend from the
//!   current commit (a force-push, or a branch reset to an older commit),
//!   unless `allowForcePush` is set.
//!
//! Every check runs git itself, with a time limit, on the blocking pool.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bounded::run as run_bounded;

/// How long one git or gpg call of a check may take.
const LIMIT: Duration = Duration::from_secs(60);
/// The largest key file read.
const MAX_KEY_FILE: u64 = 1024 * 1024;
/// What starts an ASCII-armoured GPG public key.
const GPG_ARMOUR: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// `git` in `repo` with `args`, bounded; `Ok(output)` when it ran.
fn git(
    repo: &Path,
    args: &[&OsStr],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<std::process::Output, String> {
    let mut all: Vec<&OsStr> = vec![OsStr::new("-C"), repo.as_os_str()];
    all.extend_from_slice(args);
    run_bounded("git", &all, env, LIMIT).map_err(|e| format!("cannot run git: {e}"))
}

/// The commit `rev` names in `repo`.
pub fn rev_parse(
    repo: &Path,
    rev: &str,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<String, String> {
    let out = git(
        repo,
        &[
            OsStr::new("rev-parse"),
            OsStr::new("--verify"),
            OsStr::new("--quiet"),
            OsStr::new(&format!("{rev}^{{commit}}")),
        ],
        env,
    )?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !commit.is_empty() {
        Ok(commit)
    } else {
        Err(format!("{rev} names no commit"))
    }
}

/// Whether `new` descends from (or is) `old`.
pub fn descends(
    repo: &Path,
    old: &str,
    new: &str,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<bool, String> {
    let out = git(
        repo,
        &[
            OsStr::new("merge-base"),
            OsStr::new("--is-ancestor"),
            OsStr::new(old),
            OsStr::new(new),
        ],
        env,
    )?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(format!(
            "git merge-base failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Whether tracked files differ from HEAD (a flake build would include them).
pub fn tracked_changes(
    repo: &Path,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<bool, String> {
    let out = git(
        repo,
        &[
            OsStr::new("status"),
            OsStr::new("--porcelain"),
            OsStr::new("--untracked-files=no"),
        ],
        env,
    )?;
    if !out.status.success() {
        return Err(format!(
            "git status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(!out.stdout.is_empty())
}

/// Verifies the signature of `commit` against `signers` only. `Err` says why
/// it is not trusted (git's own words, shortened).
pub fn verify_commit(
    repo: &Path,
    commit: &str,
    signers: &[PathBuf],
    scratch: &Path,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<(), String> {
    let keys = Keyring::build(signers, scratch, env)?;
    let mut env = env.to_vec();
    env.retain(|(k, _)| k != "GNUPGHOME");
    env.push(("GNUPGHOME".into(), keys.gnupg.clone().into_os_string()));
    let allowed = format!("gpg.ssh.allowedSignersFile={}", keys.allowed.display());
    let out = git(
        repo,
        &[
            OsStr::new("-c"),
            OsStr::new(&allowed),
            OsStr::new("verify-commit"),
            OsStr::new(commit),
        ],
        &env,
    )?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let reason = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|l| {
            !l.starts_with("gpg: Signature made") && !l.starts_with("gpg:                using")
        })
        .unwrap_or("no signature");
    Err(crate::util::clip(reason, 300).to_string())
}

/// The keys of one check, in a private directory removed afterwards.
struct Keyring {
    dir: PathBuf,
    gnupg: PathBuf,
    allowed: PathBuf,
    /// The children's environment (PATH above all), for the cleanup's gpgconf.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Keyring {
    fn build(
        signers: &[PathBuf],
        scratch: &Path,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> Result<Keyring, String> {
        use std::io::Read;
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = scratch.join(format!("trust.{}.{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gnupg = dir.join("gnupg");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&gnupg)
            .map_err(|e| format!("cannot create {}: {e}", gnupg.display()))?;
        let keys = Keyring {
            allowed: dir.join("allowed_signers"),
            dir,
            gnupg,
            env: env.to_vec(),
        };
        let mut allowed = String::new();
        for path in signers {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
                .map_err(|e| format!("cannot read the trusted key file {}: {e}", path.display()))?;
            if text.contains(GPG_ARMOUR) {
                let out = run_bounded(
                    "gpg",
                    &[
                        OsStr::new("--batch"),
                        OsStr::new("--quiet"),
                        OsStr::new("--homedir"),
                        keys.gnupg.as_os_str(),
                        OsStr::new("--import"),
                        path.as_os_str(),
                    ],
                    env,
                    LIMIT,
                )
                .map_err(|e| format!("cannot run gpg to read {}: {e}", path.display()))?;
                if !out.status.success() {
                    return Err(format!(
                        "gpg cannot import the trusted key {}: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            } else {
                allowed.push_str(text.trim_end());
                allowed.push('\n');
            }
        }
        std::fs::write(&keys.allowed, allowed)
            .map_err(|e| format!("cannot write {}: {e}", keys.allowed.display()))?;
        Ok(keys)
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        // gpg may have started helpers (an agent, keyboxd) for this home:
        // they end with it
        let helpers = std::fs::read_dir(&self.gnupg)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("S."))
            })
            .unwrap_or(false);
        if helpers {
            // the children's environment, so that gpgconf is found and its
            // helpers for this home are the ones it ends
            let mut env = self.env.clone();
            env.retain(|(k, _)| k != "GNUPGHOME");
            env.push(("GNUPGHOME".into(), self.gnupg.clone().into_os_string()));
            let killed = run_bounded(
                "gpgconf",
                &[
                    OsStr::new("--homedir"),
                    self.gnupg.as_os_str(),
                    OsStr::new("--kill"),
                    OsStr::new("all"),
                ],
                &env,
                Duration::from_secs(10),
            );
            if let Err(e) = killed {
                tracing::warn!(
                    "cannot end the gpg helpers of {}: {e}",
                    self.gnupg.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a check on the blocking pool; a panic or cancellation is an `Err`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("the check did not finish: {e}")))
}

use crate::host::short_commit as short;

impl super::Run {
    /// Refuses to move the checkout from `old` to `rev` unless it may:
    /// descent from `old` (isolated mode, unless force-pushes are allowed)
    /// and a trusted signature (when required). Returns the commit `rev`
    /// names.
    pub(super) async fn check_move(
        &mut self,
        old: &str,
        rev: &str,
        isolated: bool,
    ) -> Result<String, super::Report> {
        let inner = self.inner();
        let repo = inner.config.repo_dir.clone();
        let env = inner.env.vars().to_vec();
        let trust = inner.config.trust.clone();
        let scratch = inner.config.state_dir.clone();
        let refused =
            |why: String| super::Report::error(super::NOT_RUN, format!("Pull refused: {why}"));
        let new = {
            let (repo, env, rev) = (repo.clone(), env.clone(), rev.to_string());
            blocking(move || rev_parse(&repo, &rev, &env))
                .await
                .map_err(refused)?
        };
        if old.is_empty() || old == new {
            return Ok(new);
        }
        if isolated && !trust.allow_force_push {
            let (repo, env, o, n) = (repo.clone(), env.clone(), old.to_string(), new.clone());
            let descends = blocking(move || descends(&repo, &o, &n, &env))
                .await
                .map_err(refused)?;
            if !descends {
                return Err(refused(format!(
                    "{rev} ({}) does not descend from the current commit {} (a force-push, or the branch was reset to an older commit); the checkout stays at {}. Set allowForcePush to accept such history",
                    short(&new),
                    short(old),
                    short(old)
                )));
            }
        }
        if trust.require_signed {
            let (r, e, n) = (repo, env, new.clone());
            if let Err(why) =
                blocking(move || verify_commit(&r, &n, &trust.signers, &scratch, &e)).await
            {
                return Err(refused(format!(
                    "commit {} is not signed by a trusted key ({why}); the checkout stays at {}",
                    short(&new),
                    short(old)
                )));
            }
            self.sink
                .note(format!(
                    "[nixfleet-agent] commit {} is signed by a trusted key",
                    short(&new)
                ))
                .await;
            self.verified = Some(new.clone());
        }
        Ok(new)
    }

    /// When signed commits are required: refuses to build a HEAD without a
    /// trusted signature; returns the verified commit, which the switch then
    /// builds exactly ([`pinned_flake`]). Changes to tracked files on top of
    /// it are refused where the build would take the working tree; where it
    /// takes the commit, they do not matter and `git status` is not run (in a
    /// checkout another user owns it could run that user's filters as root).
    pub(super) async fn check_head(
        &self,
        what: &str,
        pinned: bool,
    ) -> Result<Option<String>, super::Report> {
        let inner = self.inner();
        let trust = inner.config.trust.clone();
        if !trust.require_signed {
            return Ok(None);
        }
        let repo = inner.config.repo_dir.clone();
        let env = inner.env.vars().to_vec();
        let scratch = inner.config.state_dir.clone();
        let verified = self.verified.clone();
        let refused =
            |why: String| super::Report::error(super::NOT_RUN, format!("{what} refused: {why}"));
        let (head, newly) = blocking(move || {
            let head = rev_parse(&repo, "HEAD", &env)?;
            if !pinned && tracked_changes(&repo, &env)? {
                return Err(format!(
                    "the checkout has changes to tracked files on top of {}, and only signed commits are deployed",
                    short(&head)
                ));
            }
            // the pull of this run verified it already
            if verified.as_deref() == Some(head.as_str()) {
                return Ok((head, false));
            }
            verify_commit(&repo, &head, &trust.signers, &scratch, &env).map_err(|why| {
                format!(
                    "commit {} is not signed by a trusted key ({why})",
                    short(&head)
                )
            })?;
            Ok((head, true))
        })
        .await
        .map_err(refused)?;
        if newly {
            self.sink
                .note(format!(
                    "[nixfleet-agent] commit {} is signed by a trusted key",
                    short(&head)
                ))
                .await;
        }
        Ok(Some(head))
    }
}

/// The flake reference that builds exactly `commit` of the checkout, for a
/// `flake` that names the checkout itself (`<repo_dir>#<attr>`):
/// `git+file://<repo_dir>?rev=<commit>#<attr>`. Nix takes the tree from the
/// commit, never the working tree, so what was verified is what is built.
/// `None` for any other flake, or a path a URL cannot carry as it is.
pub fn pinned_flake(repo_dir: &Path, flake: &str, commit: &str) -> Option<String> {
    let repo = repo_dir.to_str()?;
    let attr = flake.strip_prefix(repo)?.strip_prefix('#')?;
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.+@".contains(&b))
    };
    (repo.starts_with('/') && plain(repo) && plain(attr) && !attr.is_empty())
        .then(|| format!("git+file://{repo}?rev={commit}#{attr}"))
}

#[cfg(test)]
mod pin_tests {
    use super::pinned_flake;
    use std::path::Path;

    #[test]
    fn only_the_checkout_itself_is_pinned() {
        let repo = Path::new("/srv/nixcfg");
        assert_eq!(
            pinned_flake(repo, "/srv/nixcfg#web-1", "abc").as_deref(),
            Some("git+file:///srv/nixcfg?rev=abc#web-1")
        );
        assert_eq!(
            pinned_flake(repo, "/srv/nixcfg#alice@mac", "abc").as_deref(),
            Some("git+file:///srv/nixcfg?rev=abc#alice@mac")
        );
        assert_eq!(pinned_flake(repo, "/srv/other#web-1", "abc"), None);
        assert_eq!(pinned_flake(repo, "/srv/nixcfg/sub#web-1", "abc"), None);
        assert_eq!(pinned_flake(repo, "github:me/cfg#web-1", "abc"), None);
        assert_eq!(
            pinned_flake(Path::new("/srv/nix cfg"), "/srv/nix cfg#w", "abc"),
            None
        );
    }
}
