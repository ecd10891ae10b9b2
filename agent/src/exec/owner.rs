//! Legacy mode: git runs as the checkout's owner.
//!
//! A checkout given as `NIXFLEET_REPO_DIR` belongs to a user (typically
//! `/home/alice/nixcfg` or `/Users/alice/nixcfg`). Pulling it as root would
//! leave root-owned objects and files in it that its owner can no longer
//! write. So the agent, when it runs as root, runs `git pull` as the owner of
//! the checkout's directory: with the owner's uid and primary group, the
//! owner's `HOME` (and so the owner's git configuration, ssh keys and known
//! hosts) and without the agent's own ssh key. An agent that is not root
//! refuses a checkout that belongs to somebody else, with a message saying
//! how to fix it.

use std::ffi::{CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A local account, as the password database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Who runs git in a legacy checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitUser {
    /// The agent itself (it owns the checkout).
    Agent,
    /// The checkout's owner (the agent is root).
    Owner(Account),
}

/// Decides who runs git in `dir`, or why nobody may.
pub fn git_user(dir: &Path) -> Result<GitUser, String> {
    let owner = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read the checkout {}: {e}", dir.display()))?
        .uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    decide(dir, me, owner, account)
}

/// The rule, given the agent's uid and the owner's.
fn decide(
    dir: &Path,
    me: u32,
    owner: u32,
    lookup: impl Fn(u32) -> Option<Account>,
) -> Result<GitUser, String> {
    if owner == me {
        return Ok(GitUser::Agent);
    }
    let name =
        |uid| lookup(uid).map_or(format!("uid {uid}"), |a| format!("{} (uid {uid})", a.name));
    if me != 0 {
        return Err(format!(
            "the checkout {} belongs to {} but the agent runs as {}: git would leave files its owner cannot write. Run the agent as root (it then runs git as the owner), or give it a repository of its own (repoUrl)",
            dir.display(),
            name(owner),
            name(me)
        ));
    }
    lookup(owner).map(GitUser::Owner).ok_or_else(|| {
        format!(
            "the checkout {} belongs to uid {owner}, which has no account here: the agent runs git only as the checkout's owner; chown it to a user",
            dir.display()
        )
    })
}

/// The password database entry of `uid`.
pub fn account(uid: u32) -> Option<Account> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and buf outlives the use
    // of the strings that pwd points into.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both are NUL-terminated strings in buf.
    let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Some(Account {
        name: name.to_string_lossy().into_owned(),
        uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(OsString::from_vec(home.to_bytes().to_vec())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(uid: u32) -> Option<Account> {
        (uid == 1000).then(|| Account {
            name: "alice".into(),
            uid,
            gid: 100,
            home: "/home/alice".into(),
        })
    }

    #[test]
    fn own_checkout_is_pulled_by_the_agent() {
        assert_eq!(
            decide(Path::new("/c"), 1000, 1000, alice),
            Ok(GitUser::Agent)
        );
        assert_eq!(decide(Path::new("/c"), 0, 0, alice), Ok(GitUser::Agent));
    }

    #[test]
    fn root_pulls_as_the_owner() {
        assert_eq!(
            decide(Path::new("/c"), 0, 1000, alice),
            Ok(GitUser::Owner(alice(1000).unwrap()))
        );
        let e = decide(Path::new("/c"), 0, 4242, alice).unwrap_err();
        assert!(e.contains("uid 4242, which has no account"), "{e}");
    }

    #[test]
    fn another_users_checkout_is_refused_with_the_fix() {
        let e = decide(Path::new("/home/alice/nixcfg"), 1001, 1000, alice).unwrap_err();
        assert!(
            e.starts_with("the checkout /home/alice/nixcfg belongs to alice (uid 1000) but the agent runs as uid 1001"),
            "{e}"
        );
        assert!(e.contains("Run the agent as root"), "{e}");
    }

    #[test]
    fn root_has_an_account() {
        let root = account(0).expect("uid 0 in the password database");
        assert_eq!(root.uid, 0);
        assert!(!root.name.is_empty());
    }
}
