//! What the hub does with an agent's frames, rule by rule, from upstream
//! `src/internal/dashboard/hub.go` (NixFleet 3.1.5):
//!
//! - `register` (`handleAgentRegister`, `updateHost`): stores `agent_version`
//!   and `generation`, clears `pending_command`, and tells the lifecycle
//!   (`HandleAgentReconnect`).
//! - `heartbeat` (`handleHeartbeat`): Lock is computed from `lock_hash` when
//!   the dashboard has a remote desired state ([`Remote`], upstream's version
//!   fetcher), else taken from the agent's `update_status.lock`; System is the
//!   agent's, forced `outdated` while Lock is `outdated` (P3800); Lock, System
//!   and Tests are stored only when their `status` is non-empty (SQL
//!   `COALESCE`), Tests with the heartbeat's generation. Then the lifecycle's
//!   deferred post-check runs (`HandleHeartbeat`).
//! - `status` (`handleStatus`): stores the generation; `switch`/`rollback` set
//!   System `ok` "Last … succeeded" or `error`, and a successful one with a
//!   generation sets Tests `outdated`; `test` sets Tests `ok`/`error`. Then the
//!   lifecycle completes the command (`HandleCommandComplete`).
//! - Agent compartment (`handlers.go`): `outdated` when `agent_version`
//!   differs from the dashboard's own release ([`crate::Options::dashboard_version`]).
//! - Git compartment (`version_fetcher.go` `GetGitStatus`): without a remote,
//!   `error` "Version tracking not configured"; with one, `ok` when the
//!   generation equals the remote commit in full or in its 7-character prefix.
//! - What the UI shows (the heartbeat's broadcast, CORE-006 gating): System
//!   and Tests are never green unless Git and Lock are green; that view is
//!   [`HostInfo::row`](crate::HostInfo), the stored one `stored`.

use serde::Serialize;
use serde_json::Value;

/// A compartment: `{status, message, checked_at}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `ok`, `outdated`, `error`, `unknown` or `working`.
    pub status: String,
    /// The UI's text.
    pub message: String,
    /// RFC 3339, or empty.
    pub checked_at: String,
}

impl Check {
    fn new(status: &str, message: impl Into<String>) -> Check {
        Check {
            status: status.to_owned(),
            message: message.into(),
            checked_at: String::new(),
        }
    }

    fn from_json(v: Option<&Value>) -> Option<Check> {
        let v = v?;
        let status = v.get("status")?.as_str()?;
        if status.is_empty() {
            return None;
        }
        Some(Check {
            status: status.to_owned(),
            message: text(v, "message"),
            checked_at: text(v, "checked_at"),
        })
    }

    fn is(&self, status: &str) -> bool {
        self.status == status
    }
}

/// The string field `key` of `v`, empty when missing.
pub(crate) fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// The dashboard's desired state (upstream: `version.json` on the config
/// repository's pages, read by the version fetcher).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Remote {
    /// The commit hosts should be at.
    pub commit: String,
    /// SHA-256 hex of the desired `flake.lock`; empty: not published.
    #[serde(default)]
    pub lock_hash: String,
}

/// The five compartments of a host row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compartments {
    /// The agent's version against the dashboard's.
    pub agent: Check,
    /// The generation against the remote.
    pub git: Check,
    /// `flake.lock`.
    pub lock: Check,
    /// The running system.
    pub system: Check,
    /// The host tests.
    pub tests: Check,
}

/// What the hub's database holds of one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stored {
    pub(crate) agent_version: String,
    pub(crate) generation: String,
    pub(crate) lock_hash: String,
    pub(crate) lock: Option<Check>,
    pub(crate) system: Option<Check>,
    pub(crate) tests: Option<Check>,
    pub(crate) tests_generation: String,
    /// The lifecycle's `pending_command` column.
    pub(crate) pending_command: Option<String>,
}

/// `GetGitStatus`.
pub(crate) fn git_status(remote: Option<&Remote>, generation: &str) -> Check {
    let Some(remote) = remote else {
        return Check::new(
            "error",
            "Version tracking not configured (remote desired state unavailable)",
        );
    };
    if remote.commit.is_empty() {
        return Check::new("error", "Remote version missing gitCommit (version.json)");
    }
    if generation.is_empty() {
        return Check::new("unknown", "Agent has not reported generation");
    }
    let short = |s: &str| s.get(..7).unwrap_or(s).to_owned();
    let same = generation == remote.commit
        || (generation.len() >= 7
            && remote.commit.len() >= 7
            && short(generation) == short(&remote.commit));
    if same {
        Check::new("ok", "Up to date with remote")
    } else {
        Check::new(
            "outdated",
            format!(
                "Behind remote ({} → {})",
                short(generation),
                short(&remote.commit)
            ),
        )
    }
}

/// `GetLockStatus`.
fn lock_from_hash(remote: &Remote, hash: &str) -> Check {
    if remote.lock_hash.is_empty() {
        return Check::new("error", "Remote version missing lockHash (version.json)");
    }
    if hash.is_empty() {
        return Check::new("unknown", "Agent has not reported lock hash");
    }
    if hash == remote.lock_hash {
        Check::new("ok", "flake.lock is current")
    } else {
        Check::new("outdated", "flake.lock outdated")
    }
}

impl Stored {
    /// `updateHost`.
    pub(crate) fn on_register(&mut self, payload: &Value) {
        self.agent_version = text(payload, "agent_version");
        self.generation = text(payload, "generation");
        self.pending_command = None;
    }

    /// `handleHeartbeat` (the database part).
    pub(crate) fn on_heartbeat(&mut self, remote: Option<&Remote>, payload: &Value) {
        let us = payload.get("update_status");
        let hash = text(payload, "lock_hash");
        let lock = match remote {
            Some(r) => Some(lock_from_hash(r, &hash)),
            None => Check::from_json(us.and_then(|u| u.get("lock"))),
        };
        let mut system = Check::from_json(us.and_then(|u| u.get("system")));
        if let (Some(l), Some(s)) = (&lock, &system)
            && l.is("outdated")
            && s.is("ok")
        {
            system = Some(Check {
                checked_at: l.checked_at.clone(),
                ..Check::new("outdated", "System outdated (flake.lock is behind)")
            });
        }
        let tests = Check::from_json(us.and_then(|u| u.get("tests")));
        let generation = text(payload, "generation");
        if lock.is_some() {
            self.lock = lock;
        }
        if system.is_some() {
            self.system = system;
        }
        if tests.is_some() {
            self.tests = tests;
            if !generation.is_empty() {
                self.tests_generation = generation.clone();
            }
        }
        self.generation = generation;
        self.lock_hash = hash;
    }

    /// `handleStatus` (the database part).
    pub(crate) fn on_status(&mut self, payload: &Value) {
        let command = text(payload, "command");
        let message = text(payload, "message");
        let generation = text(payload, "generation");
        let exit = payload
            .get("exit_code")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if !generation.is_empty() {
            self.generation = generation.clone();
        }
        match command.as_str() {
            "switch" | "rollback" => {
                self.system = Some(if exit == 0 {
                    Check::new("ok", format!("Last {command} succeeded"))
                } else if message.is_empty() {
                    Check::new("error", format!("Last {command} failed"))
                } else {
                    Check::new("error", message)
                });
                if exit == 0 && !generation.is_empty() {
                    self.tests = Some(Check::new("outdated", "Tests need re-run after deploy"));
                    self.tests_generation = generation;
                }
            }
            "test" => {
                self.tests = Some(if exit == 0 {
                    Check::new("ok", "Tests passed")
                } else if message.is_empty() {
                    Check::new("error", "Tests failed")
                } else {
                    Check::new("error", message)
                });
                self.tests_generation = if generation.is_empty() {
                    self.generation.clone()
                } else {
                    generation
                };
            }
            _ => {}
        }
    }

    /// Lock as validation and post-checks read it (`getUpdateStatus`).
    pub(crate) fn lock_status(&self) -> &str {
        self.lock.as_ref().map_or("unknown", |c| c.status.as_str())
    }

    /// System as validation and post-checks read it.
    pub(crate) fn system_status(&self) -> &str {
        self.system
            .as_ref()
            .map_or("unknown", |c| c.status.as_str())
    }

    /// Whether the Agent compartment is `outdated`.
    pub(crate) fn agent_outdated(&self, dashboard_version: &str) -> bool {
        !self.agent_version.is_empty() && self.agent_version != dashboard_version
    }

    /// The compartments as stored (what validation and post-checks see).
    pub(crate) fn stored_view(
        &self,
        remote: Option<&Remote>,
        dashboard_version: &str,
    ) -> Compartments {
        let waiting = || Check::new("unknown", "Waiting for agent heartbeat");
        Compartments {
            agent: self.agent_check(dashboard_version),
            git: git_status(remote, &self.generation),
            lock: self.lock.clone().unwrap_or_else(waiting),
            system: self.system.clone().unwrap_or_else(waiting),
            tests: self.tests.clone().unwrap_or_else(waiting),
        }
    }

    fn agent_check(&self, dashboard_version: &str) -> Check {
        if self.agent_outdated(dashboard_version) {
            Check::new(
                "outdated",
                format!(
                    "Agent {} differs from the dashboard's {dashboard_version}",
                    self.agent_version
                ),
            )
        } else if self.agent_version.is_empty() {
            Check::new("unknown", "Agent has not registered")
        } else {
            Check::new("ok", format!("Agent {}", self.agent_version))
        }
    }

    /// The row the UI shows: the stored view with the heartbeat broadcast's
    /// gating (System and Tests green only when Git and Lock are green; Tests
    /// of another generation are `outdated`).
    pub(crate) fn row_view(
        &self,
        remote: Option<&Remote>,
        dashboard_version: &str,
    ) -> Compartments {
        let mut row = self.stored_view(remote, dashboard_version);
        let (g, l) = (row.git.status.clone(), row.lock.status.clone());
        let unknown = |s: &str| s.is_empty() || s == "unknown";
        let not_green = g != "ok" || l != "ok";
        let gate = |c: &Check, what: &str| -> Check {
            if g == "outdated" || l == "outdated" {
                Check::new(
                    "outdated",
                    format!("{what} not current vs remote (Git/Lock behind)"),
                )
            } else if g == "error" || l == "error" {
                Check::new("outdated", "Remote verification degraded (Git/Lock error)")
            } else if unknown(&g) || unknown(&l) {
                Check::new(
                    "unknown",
                    format!("Cannot verify {what} vs remote (insufficient signal)"),
                )
            } else {
                c.clone()
            }
        };
        if row.system.is("ok") && not_green {
            row.system = gate(&row.system, "System");
        }
        if !self.tests_generation.is_empty()
            && !self.generation.is_empty()
            && self.tests_generation != self.generation
            && self.tests.is_some()
        {
            row.tests = Check::new("outdated", "Tests outdated for current deployed state");
        }
        if row.tests.is("ok") && (not_green || !row.system.is("ok")) {
            row.tests = if not_green {
                gate(&row.tests, "Tests")
            } else {
                Check::new("outdated", "Tests outdated for current deployed state")
            };
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn beat(lock: &str, system: &str, tests: &str) -> Value {
        let c = |s: &str| json!({"status": s, "message": "", "checked_at": ""});
        json!({"generation": "abcdef1234", "lock_hash": "aa",
               "update_status": {"git": c(""), "lock": c(lock), "system": c(system), "tests": c(tests)}})
    }

    #[test]
    fn empty_statuses_keep_what_was_stored() {
        let mut s = Stored::default();
        s.on_heartbeat(None, &beat("ok", "ok", "ok"));
        s.on_heartbeat(None, &beat("", "", ""));
        assert_eq!(s.lock_status(), "ok");
        assert_eq!(s.system_status(), "ok");
        assert_eq!(s.tests.as_ref().map(|c| c.status.as_str()), Some("ok"));
    }

    #[test]
    fn an_outdated_lock_makes_an_ok_system_outdated() {
        let mut s = Stored::default();
        s.on_heartbeat(None, &beat("outdated", "ok", ""));
        assert_eq!(s.system_status(), "outdated");
    }

    #[test]
    fn a_remote_decides_git_and_lock() {
        let remote = Remote {
            commit: "abcdef1999".into(),
            lock_hash: "aa".into(),
        };
        let mut s = Stored::default();
        s.on_heartbeat(Some(&remote), &beat("outdated", "ok", "ok"));
        assert_eq!(s.lock_status(), "ok", "from the hash, not the agent");
        assert_eq!(
            git_status(Some(&remote), &s.generation).status,
            "ok",
            "7-char prefix"
        );
        assert_eq!(git_status(Some(&remote), "1234567").status, "outdated");
        assert_eq!(git_status(None, "1234567").status, "error");
        let row = s.row_view(Some(&remote), "3.1.5");
        assert_eq!(
            (row.system.status.as_str(), row.tests.status.as_str()),
            ("ok", "ok")
        );
        let ungated = s.row_view(None, "3.1.5");
        assert_eq!(
            ungated.system.status, "outdated",
            "no remote: git error gates System"
        );
    }

    #[test]
    fn status_frames_set_system_and_tests() {
        let mut s = Stored::default();
        s.on_status(
            &json!({"command": "switch", "exit_code": 0, "generation": "g1", "message": ""}),
        );
        assert_eq!(s.system_status(), "ok");
        assert_eq!(
            s.tests.as_ref().map(|c| c.status.as_str()),
            Some("outdated")
        );
        s.on_status(&json!({"command": "test", "exit_code": 1, "generation": "g1", "message": "1/2 passed"}));
        assert_eq!(
            s.tests.as_ref().map(|c| c.message.as_str()),
            Some("1/2 passed")
        );
    }

    #[test]
    fn agent_outdated_is_an_inequality() {
        let mut s = Stored::default();
        s.on_register(&json!({"agent_version": "0.1.0"}));
        assert!(s.agent_outdated("3.1.5"));
        s.on_register(&json!({"agent_version": "3.1.5"}));
        assert!(!s.agent_outdated("3.1.5"));
    }
}
