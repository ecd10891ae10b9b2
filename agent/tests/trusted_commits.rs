//! End-to-end: only trusted commits are deployed (docs/commands.md, "Trusted
//! commits"). Real git repositories; commits signed in the test with SSH keys
//! made by `ssh-keygen` (and one GPG key made by `gpg`); the agent checks
//! them with `git verify-commit` against the key files it is given.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use nixfleet_mock_dashboard::MockDashboard;
use serde_json::Value;

const HOST: &str = "trusthost";

/// An SSH signing key: the private key's path and its allowed-signers line.
struct SshKey {
    private: PathBuf,
    allowed: String,
}

fn ssh_key(dir: &Path, name: &str) -> SshKey {
    let private = dir.join(name);
    let public = ssh_keygen(&private, name);
    SshKey {
        private,
        allowed: format!("{name}@fleet.invalid {public}"),
    }
}

/// Commits a change to `name`, signed with `key` (or unsigned).
fn commit(repo: &Path, name: &str, key: Option<&SshKey>) -> String {
    std::fs::write(repo.join(name), format!("{name}\n")).unwrap();
    git(repo, &["add", "-A"]);
    match key {
        Some(key) => {
            let signing = format!("user.signingkey={}", key.private.display());
            git(
                repo,
                &[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing,
                    "commit",
                    "-q",
                    "-S",
                    "-m",
                    name,
                ],
            );
        }
        None => {
            git(repo, &["commit", "-q", "-m", name]);
        }
    }
    git(repo, &["rev-parse", "HEAD"])
}

struct Setup {
    dash: MockDashboard,
    fx: Fixture,
    fakes: Fakes,
    bare: PathBuf,
    trusted: SshKey,
    signers: PathBuf,
}

async fn setup() -> Setup {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let keys = fx.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let trusted = ssh_key(&keys, "alice");
    let signers = keys.join("allowed_signers");
    std::fs::write(&signers, format!("{}\n", trusted.allowed)).unwrap();
    Setup {
        dash,
        fx,
        fakes,
        bare,
        trusted,
        signers,
    }
}

impl Setup {
    /// An isolated agent; `signed`: signatures required against `signers`.
    fn agent(&self, signed: bool) -> AgentBuilder {
        let a = AgentBuilder::new(&self.dash.ws_url(), HOST, &self.fx)
            .without("NIXFLEET_REPO_DIR")
            .env("NIXFLEET_REPO_URL", self.bare.to_str().unwrap())
            .with_fakes(&self.fakes);
        if signed {
            a.env("NIXFLEET_REQUIRE_SIGNED_COMMITS", "1")
                .env("NIXFLEET_TRUSTED_SIGNERS", self.signers.to_str().unwrap())
        } else {
            a
        }
    }

    fn clone_head(&self) -> String {
        git(&self.fx.state.join("repo"), &["rev-parse", "HEAD"])
    }

    fn push(&self) {
        git(&self.fx.repo, &["push", "-q", "-f", "origin", "main"]);
    }

    /// Sends `command` once the agent registered after `after`; its status.
    async fn run(&self, command: &str, after: u64) -> Value {
        wait_register(&self.dash, HOST, after).await;
        let seq = self.dash.last_seq();
        self.dash.send_command(HOST, command).await.expect("send");
        status_for(&self.dash, HOST, command, seq).await.payload
    }
}

fn message(st: &Value) -> &str {
    st["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_pull_moves_only_to_a_commit_signed_by_a_trusted_key() {
    let s = setup().await;
    let _agent = s.agent(true).spawn();
    // the first start clones before it registers
    wait_register(&s.dash, HOST, 0).await;
    let start = s.fx.head.clone();

    // unsigned: refused, the clone stays where it was
    let unsigned = commit(&s.fx.repo, "unsigned.nix", None);
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).starts_with(&format!(
            "Pull refused: commit {} is not signed by a trusted key (",
            &unsigned[..7]
        )),
        "{st}"
    );
    assert!(
        message(&st).ends_with(&format!("the checkout stays at {}", &start[..7])),
        "{st}"
    );
    assert_eq!(s.clone_head(), start);

    // signed by a key the host does not trust: refused as well
    let keys = s.fx.tmp.path().join("keys");
    let mallory = ssh_key(&keys, "mallory");
    let foreign = commit(&s.fx.repo, "foreign.nix", Some(&mallory));
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).contains(&format!("commit {} is not signed", &foreign[..7])),
        "{st}"
    );
    assert_eq!(s.clone_head(), start);

    // signed by the trusted key: the pull goes through
    let signed = commit(&s.fx.repo, "signed.nix", Some(&s.trusted));
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(s.clone_head(), signed);
    let said = s.dash.frames(HOST, Some("output")).into_iter().any(|f| {
        f.payload["line"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!(
                "commit {} is signed by a trusted key",
                &signed[..7]
            ))
    });
    assert!(said, "the output says the commit was verified");
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_switch_builds_only_the_verified_signed_commit() {
    let s = setup().await;
    let mut agent = s.agent(true).spawn();
    // the clone's HEAD is the fixture's unsigned first commit
    let st = s.run("switch", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).starts_with(&format!(
            "Switch refused: commit {} is not signed by a trusted key",
            &s.fx.head[..7]
        )),
        "{st}"
    );
    assert!(
        !s.fakes.file("nix-build.argv").exists(),
        "nothing was built"
    );
    assert!(
        !s.fakes.file("rebuild.argv").exists(),
        "nothing was activated"
    );

    // `update` would deploy a lock no signed commit holds
    let st = s.run("update", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).starts_with("Update refused: only signed commits"),
        "{st}"
    );
    assert!(
        !s.fakes.file("nix.argv").exists(),
        "nix flake update did not run"
    );

    // a signed HEAD with a change to a tracked file on top: the switch
    // builds the verified commit itself, never the working tree
    let signed = commit(&s.fx.repo, "signed.nix", Some(&s.trusted));
    s.push();
    assert_eq!(s.run("pull", 0).await["status"], "ok");
    std::fs::write(s.fx.state.join("repo/flake.lock"), "{}\n").unwrap();
    let st = s.run("switch", 0).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(
        s.fakes.built_installable(),
        format!(
            "git+file://{}?rev={signed}#nixosConfigurations.\"{HOST}\".config.system.build.toplevel",
            s.fx.state.join("repo").display()
        ),
        "the verified commit is what is built"
    );
    assert_eq!(s.fakes.read("rebuild.argv"), "switch\n", "and activated");
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_force_pushed_branch_is_refused_unless_allowed() {
    let s = setup().await;
    let mut agent = s.agent(false).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let first = commit(&s.fx.repo, "one.nix", None);
    s.push();
    assert_eq!(s.run("pull", 0).await["status"], "ok");
    assert_eq!(s.clone_head(), first);

    // the branch is rewritten: its new tip does not descend from the clone's
    git(&s.fx.repo, &["reset", "-q", "--hard", &s.fx.head]);
    let rewritten = commit(&s.fx.repo, "rewritten.nix", None);
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    let msg = message(&st);
    assert!(
        msg.starts_with(&format!(
            "Pull refused: origin/main ({}) does not descend from the current commit {}",
            &rewritten[..7],
            &first[..7]
        )),
        "{msg}"
    );
    assert!(msg.contains("allowForcePush"), "{msg}");
    assert_eq!(s.clone_head(), first);

    // a branch reset to an older commit is the same
    git(&s.fx.repo, &["reset", "-q", "--hard", &s.fx.head]);
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert_eq!(s.clone_head(), first);

    // allowed: the clone follows the branch
    agent.signal(libc::SIGTERM);
    agent.wait_exit(WAIT).await;
    let seen = s.dash.last_seq();
    let _agent = s.agent(false).env("NIXFLEET_ALLOW_FORCE_PUSH", "1").spawn();
    let st = s.run("pull", seen).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(s.clone_head(), s.fx.head);
    assert_no_violations(&s.dash);
}

/// A GPG home with one signing key; returns (home, armoured public key file).
fn gpg_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let uid = format!("{name} <{name}@fleet.invalid>");
    gpg(&["--quick-gen-key", &uid, "ed25519", "sign", "never"]);
    let public = dir.join(format!("{name}.asc"));
    std::fs::write(&public, gpg(&["--armor", "--export", &uid])).unwrap();
    (home, public)
}

#[tokio::test]
async fn gpg_signatures_count_only_for_the_given_public_keys() {
    if Command::new("gpg").arg("--version").output().is_err() {
        eprintln!("SKIP: no gpg here");
        return;
    }
    let s = setup().await;
    let keys = s.fx.tmp.path().join("keys");
    let (home, public) = gpg_key(&keys, "carol");
    let (other_home, _) = gpg_key(&keys, "dave");
    // git signs through a wrapper that picks the signer's GPG home
    let sign_with = |home: &Path, signer: &str, file: &str| {
        let wrapper = keys.join(format!("gpg-{file}"));
        write_exec(
            &wrapper,
            &format!(
                "#!/bin/sh\nexec gpg --homedir {} --batch --pinentry-mode loopback --passphrase '' \"$@\"\n",
                home.display()
            ),
        );
        std::fs::write(s.fx.repo.join(file), "x\n").unwrap();
        git(&s.fx.repo, &["add", "-A"]);
        let program = format!("gpg.program={}", wrapper.display());
        let key = format!("user.signingkey={signer}@fleet.invalid");
        git(
            &s.fx.repo,
            &["-c", &program, "-c", &key, "commit", "-q", "-S", "-m", file],
        );
        git(&s.fx.repo, &["rev-parse", "HEAD"])
    };
    // trusted: the SSH allowed signers and carol's public key
    let signers = format!("{}:{}", s.signers.display(), public.display());
    let _agent = s
        .agent(false)
        .env("NIXFLEET_REQUIRE_SIGNED_COMMITS", "1")
        .env("NIXFLEET_TRUSTED_SIGNERS", &signers)
        .spawn();

    wait_register(&s.dash, HOST, 0).await;
    sign_with(&other_home, "dave", "dave.nix");
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).contains("is not signed by a trusted key"),
        "{st}"
    );
    assert_eq!(s.clone_head(), s.fx.head);

    let carols = sign_with(&home, "carol", "carol.nix");
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(s.clone_head(), carols);
    // the check's own keyring is gone
    let left: Vec<_> = std::fs::read_dir(&s.fx.state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("trust."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_legacy_checkout_fast_forwards_only_to_a_signed_upstream() {
    let s = setup().await;
    // the host's checkout is a clone of the origin; another clone pushes
    let checkout = s.fx.tmp.path().join("checkout");
    git(
        s.fx.tmp.path(),
        &[
            "clone",
            "-q",
            s.bare.to_str().unwrap(),
            checkout.to_str().unwrap(),
        ],
    );
    let _agent = AgentBuilder::new(&s.dash.ws_url(), HOST, &s.fx)
        .env("NIXFLEET_REPO_DIR", checkout.to_str().unwrap())
        .with_fakes(&s.fakes)
        .env("NIXFLEET_REQUIRE_SIGNED_COMMITS", "1")
        .env("NIXFLEET_TRUSTED_SIGNERS", s.signers.to_str().unwrap())
        .spawn();
    let unsigned = commit(&s.fx.repo, "unsigned.nix", None);
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "error", "{st}");
    assert!(
        message(&st).starts_with(&format!(
            "Pull refused: commit {} is not signed by a trusted key",
            &unsigned[..7]
        )),
        "{st}"
    );
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), s.fx.head);

    let signed = commit(&s.fx.repo, "signed.nix", Some(&s.trusted));
    s.push();
    let st = s.run("pull", 0).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), signed);
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_pull_switch_verifies_the_new_commit_once() {
    let s = setup().await;
    let mut agent = s.agent(true).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let signed = commit(&s.fx.repo, "signed.nix", Some(&s.trusted));
    s.push();
    let st = s.run("pull-switch", 0).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert!(s.fakes.file("rebuild.argv").exists(), "it switched");
    let notes = s
        .dash
        .frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| {
            f.payload["line"].as_str().unwrap_or_default()
                == format!(
                    "[nixfleet-agent] commit {} is signed by a trusted key",
                    &signed[..7]
                )
        })
        .count();
    assert_eq!(notes, 1, "the pull verified it, the switch did not again");
    assert_eq!(agent.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&s.dash);
}
