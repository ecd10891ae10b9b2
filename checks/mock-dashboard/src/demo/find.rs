//! Where the demo finds the agent binary.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{AGENT_NAME, AGENT_VAR, HINT};

/// The agent binary: `explicit` (the `--agent` option), else
/// `$NIXFLEET_AGENT_BIN` (when set and not empty), else `nixfleet-agent` next
/// to the running program, else the first executable `nixfleet-agent` on
/// `PATH`.
///
/// An explicit path or `$NIXFLEET_AGENT_BIN` that is not an executable file is
/// an error (the search does not go on). The path returned is absolute. The
/// error is one or two lines for people, ending with what to do (`cargo build`).
pub fn find_agent(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    search_agent(
        explicit,
        std::env::var_os(AGENT_VAR),
        beside.as_deref(),
        std::env::var_os("PATH"),
    )
}

/// [`find_agent`] with its inputs as parameters: the `--agent` value, the value
/// of `$NIXFLEET_AGENT_BIN`, the running program's directory, and `$PATH`.
pub(super) fn search_agent(
    explicit: Option<PathBuf>,
    env_bin: Option<OsString>,
    beside: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    let named = |what: String, path: PathBuf| -> Result<PathBuf, String> {
        if !path.is_file() {
            Err(format!("{what}: no such file.\n{HINT}"))
        } else if !is_executable(&path) {
            Err(format!("{what}: not executable.\n{HINT}"))
        } else {
            Ok(absolute(path))
        }
    };
    if let Some(path) = explicit {
        return named(format!("--agent {}", path.display()), path);
    }
    if let Some(path) = env_bin.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return named(format!("{AGENT_VAR}={}", path.display()), path);
    }
    let on_path = path_var
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(AGENT_NAME));
    beside
        .map(|d| d.join(AGENT_NAME))
        .into_iter()
        .chain(on_path)
        .find(|p| is_executable(p))
        .map(absolute)
        .ok_or_else(|| {
            format!(
                "the agent binary `{AGENT_NAME}` was not found \
                 (not next to this program, not on PATH).\n{HINT}"
            )
        })
}

/// `path` made absolute against the current directory (the agent is started
/// in the demo's temporary directory, where a relative path means nothing).
pub(super) fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system's temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "mock-dash-find-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }

        /// `<scratch>/<dir>/nixfleet-agent`, executable or not.
        fn agent(&self, dir: &str, executable: bool) -> PathBuf {
            let d = self.0.join(dir);
            std::fs::create_dir_all(&d).expect("dir");
            let p = d.join(AGENT_NAME);
            std::fs::write(&p, "#!/bin/sh\n").expect("write");
            let mode = if executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        }

        fn dir(&self, dir: &str) -> PathBuf {
            self.0.join(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    fn path_of(dirs: &[PathBuf]) -> Option<OsString> {
        Some(std::env::join_paths(dirs).expect("join"))
    }

    #[test]
    fn explicit_path_comes_first_and_must_exist() {
        let s = Scratch::new("explicit");
        let explicit = s.agent("explicit", true);
        let env = s.agent("env", true);
        s.agent("beside", true);
        s.agent("path", true);
        let path = path_of(&[s.dir("path")]);
        let found = search_agent(
            Some(explicit.clone()),
            Some(env.clone().into()),
            Some(&s.dir("beside")),
            path.clone(),
        );
        assert_eq!(found, Ok(explicit));
        // A missing explicit path is an error, however many agents are elsewhere.
        let missing = s.dir("nowhere").join(AGENT_NAME);
        let err = search_agent(
            Some(missing.clone()),
            Some(env.into()),
            Some(&s.dir("beside")),
            path.clone(),
        )
        .expect_err("missing");
        assert!(err.contains(&format!("--agent {}: no such file", missing.display())));
        assert!(err.contains("cargo build"), "{err}");
        // So is one that is not executable.
        let plain = s.agent("plain", false);
        let err = search_agent(Some(plain), None, Some(&s.dir("beside")), path)
            .expect_err("not executable");
        assert!(err.contains("not executable"), "{err}");
    }

    #[test]
    fn the_variable_comes_before_the_program_dir_and_path() {
        let s = Scratch::new("env");
        let env = s.agent("env", true);
        s.agent("beside", true);
        s.agent("path", true);
        let path = path_of(&[s.dir("path")]);
        let found = search_agent(
            None,
            Some(env.clone().into()),
            Some(&s.dir("beside")),
            path.clone(),
        );
        assert_eq!(found, Ok(env));
        let missing = s.dir("nowhere").join(AGENT_NAME);
        let err = search_agent(
            None,
            Some(missing.into()),
            Some(&s.dir("beside")),
            path.clone(),
        )
        .expect_err("missing");
        assert!(err.starts_with("NIXFLEET_AGENT_BIN="), "{err}");
        assert!(err.contains("cargo build"), "{err}");
        // Empty means unset.
        let found = search_agent(None, Some(OsString::new()), Some(&s.dir("beside")), path);
        assert_eq!(found, Ok(s.dir("beside").join(AGENT_NAME)));
    }

    #[test]
    fn the_program_dir_comes_before_path_and_path_goes_in_order() {
        let s = Scratch::new("order");
        let beside = s.agent("beside", true);
        s.agent("plain", false);
        let second = s.agent("second", true);
        s.agent("third", true);
        let path = path_of(&[
            s.dir("missing"),
            s.dir("plain"),
            s.dir("second"),
            s.dir("third"),
        ]);
        assert_eq!(
            search_agent(None, None, Some(&s.dir("beside")), path.clone()),
            Ok(beside)
        );
        // Nothing next to the program (or not executable there): the first
        // executable one on PATH.
        assert_eq!(
            search_agent(None, None, Some(&s.dir("missing")), path.clone()),
            Ok(second.clone())
        );
        assert_eq!(
            search_agent(None, None, Some(&s.dir("plain")), path.clone()),
            Ok(second.clone())
        );
        assert_eq!(search_agent(None, None, None, path), Ok(second));
    }

    #[test]
    fn nowhere_gives_the_hint() {
        let s = Scratch::new("nowhere");
        s.agent("plain", false);
        let err = search_agent(
            None,
            None,
            Some(&s.dir("missing")),
            path_of(&[s.dir("plain"), s.dir("missing")]),
        )
        .expect_err("not found");
        assert!(err.contains("`nixfleet-agent` was not found"), "{err}");
        assert!(err.contains("cargo build"), "{err}");
        assert!(search_agent(None, None, None, None).is_err());
    }

    #[test]
    fn found_paths_are_absolute() {
        // The agent runs in the demo's directory, so `--agent target/debug/…`
        // must not stay relative.
        let cwd = std::env::current_dir().expect("cwd");
        let s = Scratch::new("relative");
        let agent = s.agent("rel", true);
        let relative: PathBuf = match agent.strip_prefix(&cwd) {
            Ok(r) => r.to_path_buf(),
            // The temp dir is not below the current directory: go up to `/`.
            Err(_) => cwd
                .components()
                .skip(1)
                .map(|_| Path::new(".."))
                .collect::<PathBuf>()
                .join(agent.strip_prefix("/").expect("absolute temp dir")),
        };
        assert!(relative.is_relative());
        let found = search_agent(Some(relative), None, None, None).expect("found");
        assert!(found.is_absolute(), "{}", found.display());
        assert!(is_executable(&found));
    }
}
