//! `pull`: fetch and reset the agent's own clone, or `git pull` a checkout.

use super::owner::{self, GitUser};
use super::*;

pub(super) fn is_git_checkout(dir: &Path) -> bool {
    dir.join(".git").exists()
}

/// Clones the repository (isolated mode).
pub(super) async fn clone_repo(
    sink: &Sink,
    ctl: &Control,
    env: &ChildEnv,
    config: &Config,
    url: &str,
) -> Result<(), Report> {
    let dir = &config.repo_dir;
    let Some(parent) = dir.parent() else {
        return Err(Report::error(
            NOT_RUN,
            format!("Clone failed: {} has no parent directory", dir.display()),
        ));
    };
    if let Err(e) = std::fs::create_dir_all(parent) {
        return Err(Report::error(
            NOT_RUN,
            format!("Clone failed: cannot create {}: {e}", parent.display()),
        ));
    }
    let args: [&OsStr; 6] = [
        OsStr::new("clone"),
        OsStr::new("--branch"),
        OsStr::new(&config.branch),
        OsStr::new("--"),
        OsStr::new(url),
        dir.as_os_str(),
    ];
    step(sink, ctl, env, "Clone", OsStr::new("git"), &args, parent).await?;
    // The agent's own clone is private, as upstream's (`repo.go` chmods it
    // 0700): it may live outside the private state directory, and the
    // configuration can hold host details nobody else needs to read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        Report::error(
            NOT_RUN,
            format!(
                "Clone failed: cannot make {} private (0700): {e}",
                dir.display()
            ),
        )
    })
}

impl Run {
    /// `pull` with its progress dots and the System compartment after it.
    pub(super) async fn pull(&mut self) -> Result<String, Report> {
        let commands = self.commands.clone();
        let row = commands.row();
        row.begin(Phase::Pull);
        let before = host::git_head_commit(&self.inner().config.repo_dir).unwrap_or_default();
        let result = self.pull_steps().await;
        match &result {
            Ok(_) => {
                row.end(Phase::Pull, PhaseEnd::Complete);
                let after =
                    host::git_head_commit(&self.inner().config.repo_dir).unwrap_or_default();
                if after != before {
                    row.pulled_new_commit();
                }
                // The heartbeat right after the status must carry the new
                // lock hash and Lock: a hub with version tracking runs the
                // pull's post-check (Lock ok) on that heartbeat.
                let repo = self.inner().config.repo_dir.clone();
                if let Ok(hash) =
                    tokio::task::spawn_blocking(move || host::flake_lock_hash(&repo)).await
                {
                    self.inner().state.set_lock_hash(hash);
                }
                self.commands.refresh_lock().await;
            }
            Err(_) => row.end(Phase::Pull, PhaseEnd::Failed),
        }
        result
    }

    pub(super) async fn pull_steps(&mut self) -> Result<String, Report> {
        let config = self.inner().config.clone();
        let repo = &config.repo_dir;
        let before = host::git_head_commit(repo).unwrap_or_default();
        if is_git_checkout(repo) {
            self.remove_stale_locks().await;
        }
        let mut recloned = None;
        match &config.repo_mode {
            RepoMode::Isolated { url } => {
                if is_git_checkout(repo) {
                    if let Err(failed) = self.isolated_pull(url, &config.branch).await {
                        // an unusable clone of our own is cloned again
                        let Some(why) = self.broken().await else {
                            return Err(failed);
                        };
                        self.sink
                            .note(format!(
                                "[nixfleet-agent] the clone in {} is broken ({why}); cloning it again",
                                repo.display()
                            ))
                            .await;
                        tracing::warn!(
                            "the clone in {} is broken ({why}); re-cloning",
                            repo.display()
                        );
                        let dir = repo.clone();
                        let removed =
                            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
                                .await
                                .map_err(std::io::Error::other)
                                .and_then(|r| r);
                        if let Err(e) = removed {
                            return Err(failed.after(&format!(
                                "the clone is broken ({why}) and cannot be removed: {e}"
                            )));
                        }
                        clone_repo(&self.sink, &self.ctl, &self.inner().env, &config, url)
                            .await
                            .map_err(|mut r| {
                                r.message = format!(
                                    "Pull failed: the clone was broken ({why}); {}",
                                    r.message
                                );
                                r
                            })?;
                        recloned = Some(why);
                    }
                } else {
                    clone_repo(&self.sink, &self.ctl, &self.inner().env, &config, url)
                        .await
                        .map_err(|mut r| {
                            r.message = format!("Pull failed: {}", r.message);
                            r
                        })?;
                }
            }
            RepoMode::Legacy => {
                if !repo.is_dir() {
                    return Err(Report::error(
                        NOT_RUN,
                        format!(
                            "Pull failed: the repository directory {} does not exist",
                            repo.display()
                        ),
                    ));
                }
                let env = match owner::git_user(repo) {
                    Ok(GitUser::Agent) => self.inner().env.clone(),
                    Ok(GitUser::Owner(account)) => {
                        self.sink
                            .note(format!(
                                "[nixfleet-agent] git runs as {}, the owner of {}",
                                account.name,
                                repo.display()
                            ))
                            .await;
                        self.inner().env.as_owner(&account)
                    }
                    Err(why) => {
                        return Err(Report::error(NOT_RUN, format!("Pull failed: {why}")));
                    }
                };
                let pulled = if config.trust.require_signed {
                    // fetch, check the upstream's signature, then fast-forward
                    let before = host::git_head_commit(repo).unwrap_or_default();
                    match self.git_in(&env, "Pull", &["fetch"]).await {
                        Ok(_) => {
                            let target = self.check_move(&before, "@{upstream}", false).await?;
                            self.git_in(&env, "Pull", &["merge", "--ff-only", &target])
                                .await
                        }
                        Err(failed) => Err(failed),
                    }
                } else {
                    self.git_in(&env, "Pull", &["pull"]).await
                };
                if let Err(failed) = pulled {
                    // never delete a checkout the agent does not own
                    return Err(match self.broken().await {
                        Some(why) => failed.after(&format!(
                            "the checkout {} is broken ({why}); the agent never deletes a checkout it does not own: repair it (e.g. `git -C {} fsck`) or clone it again",
                            repo.display(),
                            repo.display()
                        )),
                        None => failed,
                    });
                }
            }
        }
        let after = host::git_head_commit(repo).unwrap_or_default();
        let state = &self.inner().state;
        state.set_generation(host::short_commit(&after));
        state.request_refresh();
        let message = if after.is_empty() {
            "Pull: done".to_string()
        } else if after == before {
            format!("Pull: Already at {}", short(&after))
        } else {
            format!("Pull: Updated to {}", short(&after))
        };
        Ok(match recloned {
            Some(why) => format!("{message} (cloned again: the old clone was broken: {why})"),
            None => message,
        })
    }

    /// `pull` in the agent's own clone: fetch, the trust checks, then reset.
    async fn isolated_pull(&mut self, url: &str, branch: &str) -> Result<(), Report> {
        let origin = format!("origin/{branch}");
        let before = host::git_head_commit(&self.inner().config.repo_dir).unwrap_or_default();
        self.git("Pull", &["remote", "set-url", "origin", url])
            .await?;
        self.git("Pull", &["fetch", "origin", branch]).await?;
        let target = self.check_move(&before, &origin, true).await?;
        self.git("Pull", &["reset", "--hard", &target]).await?;
        self.git("Pull", &["clean", "-fd"]).await?;
        Ok(())
    }

    /// Removes the stale git locks of the agent's own clone, or reports
    /// those of a checkout it does not own, saying so in the output.
    async fn remove_stale_locks(&mut self) {
        let repo = self.inner().config.repo_dir.clone();
        let env = self.inner().env.vars().to_vec();
        let own = matches!(self.inner().config.repo_mode, RepoMode::Isolated { .. });
        let locks = tokio::task::spawn_blocking(move || repair::stale_locks(&repo, &env, own))
            .await
            .unwrap_or_default();
        for lock in locks.removed {
            self.sink
                .note(format!(
                    "[nixfleet-agent] removed a stale git lock: {} (left by a git that did not finish)",
                    lock.display()
                ))
                .await;
        }
        for lock in locks.reported {
            self.sink
                .note(format!(
                    "[nixfleet-agent] {} exists and no process holds it; the agent never deletes files in a checkout it does not own: if no git is running there, remove it (rm {})",
                    lock.display(),
                    lock.display()
                ))
                .await;
        }
    }

    /// Why the repository is unusable, if it is.
    async fn broken(&self) -> Option<String> {
        let repo = self.inner().config.repo_dir.clone();
        let env = self.inner().env.vars().to_vec();
        tokio::task::spawn_blocking(move || repair::broken(&repo, &env))
            .await
            .ok()
            .flatten()
    }
}
