//! `test`: every executable `*.sh` in `<repo>/hosts/<hostname>/tests/`, in
//! byte order of the file name, as upstream runs them (`for f in …/*.sh; do
//! [ -x "$f" ] && "$f"; done`).
//!
//! A script is a regular file (symbolic links are followed) with any execute
//! bit set. A `*.sh` that is not executable is listed as skipped in the
//! output; other names and directories are ignored. Nothing from the
//! dashboard goes into the path: the host name is the configured one.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory of a host's tests.
pub fn tests_dir(repo_dir: &Path, hostname: &str) -> PathBuf {
    repo_dir.join("hosts").join(hostname).join("tests")
}

/// What is in a tests directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The scripts to run, in name order.
    pub scripts: Vec<PathBuf>,
    /// `*.sh` files that are not executable (or not readable), in name order.
    pub skipped: Vec<PathBuf>,
}

/// The test scripts in `dir`; none if `dir` does not exist.
pub fn discover(dir: &Path) -> Found {
    let Ok(entries) = fs::read_dir(dir) else {
        return Found::default();
    };
    let mut found = Found::default();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let is_sh = path
            .file_name()
            .is_some_and(|n| n.len() > 3 && n.as_bytes().ends_with(b".sh"));
        if !is_sh {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => found.scripts.push(path),
            Ok(m) if m.is_dir() => {}
            _ => found.skipped.push(path),
        }
    }
    found
        .scripts
        .sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    found
        .skipped
        .sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    found
}

/// A script's file name for messages.
pub fn name_of(script: &Path) -> String {
    script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

mod run {
    //! The `test` command's run.
    use super::super::*;

    impl Run {
        pub(in crate::commands) async fn test(&mut self) -> Report {
            let config = self.inner().config.clone();
            let dir = host_tests::tests_dir(&config.repo_dir, &config.hostname);
            let found = host_tests::discover(&dir);
            for skipped in &found.skipped {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] skipped (not executable): {}",
                        host_tests::name_of(skipped)
                    ))
                    .await;
            }
            let scripts = found.scripts;
            let total = u32::try_from(scripts.len()).unwrap_or(u32::MAX);
            let out = self.inner().out.clone();
            let progress = |current: u32, passed: u32, running: bool, result: String| {
                out.reliable(Outgoing::TestProgress(TestProgress {
                    current,
                    total,
                    passed,
                    running,
                    result,
                }));
            };
            self.commands.row().tests_begin(scripts.len());
            self.test_dots = Some(TestDots::new(scripts.len()));
            if scripts.is_empty() {
                self.sink
                    .note(format!("[nixfleet-agent] no tests in {}", dir.display()))
                    .await;
                progress(0, 0, false, "no tests".to_string());
                return Report::ok("no tests".to_string());
            }
            let mut current = 0u32;
            let mut passed = 0u32;
            let mut failed: Vec<String> = Vec::new();
            let mut last_code = NOT_RUN;
            for script in &scripts {
                if self.ctl.stop_cause().is_some() {
                    break;
                }
                let name = host_tests::name_of(script);
                self.sink.note(format!("==> {name}")).await;
                let spec = Spec {
                    program: script.as_os_str(),
                    args: &[],
                    cwd: &config.repo_dir,
                };
                // whether it passed, and how its line ends
                let (ok, verdict) =
                    match run_step(&self.sink, &self.ctl, &self.inner().env, &spec).await {
                        Ok(r) if r.code == 0 => {
                            last_code = 0;
                            passed += 1;
                            (true, "passed".to_string())
                        }
                        Ok(r) => {
                            last_code = r.code;
                            failed.push(name.clone());
                            (false, format!("FAILED (exit {})", r.code))
                        }
                        Err(e) => {
                            last_code = 127;
                            failed.push(name.clone());
                            (false, format!("FAILED (cannot start: {e})"))
                        }
                    };
                self.sink.note(format!("<== {name} {verdict}")).await;
                let index = current as usize;
                current += 1;
                if let Some(dots) = &mut self.test_dots {
                    dots.record(index, ok);
                }
                if self.ctl.stop_cause().is_some() {
                    break;
                }
                if current < total {
                    progress(current, passed, true, String::new());
                    if let Some(dots) = &self.test_dots {
                        self.commands.row().tests_dots(dots, "in_progress");
                    }
                }
            }
            let stopped = self.ctl.stop_cause().is_some();
            let summary = format!("{passed}/{total} passed");
            progress(
                current,
                passed,
                false,
                if stopped {
                    format!("{summary} (stopped)")
                } else {
                    summary.clone()
                },
            );
            let mut report = if failed.is_empty() && current == total {
                Report::ok(summary)
            } else if failed.is_empty() {
                Report::error(NOT_RUN, summary)
            } else {
                Report::error(1, format!("{summary}; failed: {}", failed.join(", ")))
            };
            if stopped {
                // the exit code of the script the stop ended (128 + signal)
                report.exit_code = last_code;
            }
            report.stop_detail = Some(format!(
                "{passed}/{total} tests passed, {current} run before the stop"
            ));
            report
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn finds_executable_sh_scripts_in_order_and_lists_the_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tests_dir(tmp.path(), "hsb0");
        fs::create_dir_all(&dir).unwrap();
        touch(&dir, "T10-late.sh", 0o755);
        touch(&dir, "T02-b.sh", 0o700);
        touch(&dir, "T01-a.sh", 0o755);
        touch(&dir, "T03-not-executable.sh", 0o644);
        touch(&dir, "X01-other-prefix.sh", 0o755);
        touch(&dir, "T04-wrong-suffix.bash", 0o755);
        touch(&dir, "helper.sh", 0o755);
        fs::create_dir(dir.join("T05-dir.sh")).unwrap();
        std::os::unix::fs::symlink(dir.join("T01-a.sh"), dir.join("T06-link.sh")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("T07-dangling.sh")).unwrap();
        let found = discover(&dir);
        let names = |v: &[PathBuf]| v.iter().map(|p| name_of(p)).collect::<Vec<_>>();
        assert_eq!(
            names(&found.scripts),
            [
                "T01-a.sh",
                "T02-b.sh",
                "T06-link.sh",
                "T10-late.sh",
                "X01-other-prefix.sh",
                "helper.sh"
            ]
        );
        assert_eq!(
            names(&found.skipped),
            ["T03-not-executable.sh", "T07-dangling.sh"]
        );
    }

    #[test]
    fn missing_dir_means_no_tests() {
        assert_eq!(
            discover(Path::new("/nonexistent/hosts/x/tests")),
            Found::default()
        );
    }
}
