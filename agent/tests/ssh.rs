//! End-to-end: git over ssh with the agent's host-key policy (docs/nix.md,
//! "SSH host keys"). A real OpenSSH server (`sshd -i`, spoken to through
//! ssh's `ProxyCommand`, no port) serves the bare origin; the agent's
//! `GIT_SSH_COMMAND` reaches the real `ssh` through a wrapper that only adds
//! the `ProxyCommand`. Where sshd is missing (it is installed by `.ci/run`)
//! the tests say so and do nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use nixfleet_mock_dashboard::MockDashboard;

const HOST: &str = "sshhost";
/// The ssh host name of the origin, as known hosts files name it.
const SERVER: &str = "fleet-git";

/// An sshd for the current user, a client key, and a `bin/ssh` wrapper.
struct SshServer {
    /// The server's public host key line (`ssh-ed25519 AAAA…`).
    host_key: String,
    /// The client's private key, for `NIXFLEET_SSH_KEY`.
    client_key: PathBuf,
    /// The origin's URL.
    url: String,
}

fn sshd() -> Option<PathBuf> {
    let found = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    // as root, sshd needs its privilege separation directory
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !Path::new("/run/sshd").is_dir() {
        return None;
    }
    Some(found)
}

/// Sets up the server for the fixture's bare origin, or `None` without sshd.
fn server(fx: &Fixture, fakes: &Fakes, bare: &Path) -> Option<SshServer> {
    let Some(sshd) = sshd() else {
        eprintln!(
            "SKIP: no usable sshd here (install openssh-server; as root also mkdir /run/sshd)"
        );
        return None;
    };
    let dir = fx.tmp.path().join("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    let host_key = ssh_keygen(&dir.join("host"), "");
    let client_key = dir.join("client");
    let client_public = ssh_keygen(&client_key, "");
    std::fs::write(dir.join("authorized_keys"), format!("{client_public}\n")).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "HostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("client_config"),
        format!(
            "Host {SERVER}\n  ProxyCommand {} -i -f {d}/sshd_config\n",
            sshd.display()
        ),
    )
    .unwrap();
    let real_ssh = which("ssh");
    write_exec(
        &fakes.bin.join("ssh"),
        &format!(
            "#!/bin/sh\nexec {} -F {d}/client_config \"$@\"\n",
            real_ssh.display()
        ),
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    Some(SshServer {
        host_key,
        client_key,
        url: format!("ssh://{}@{SERVER}{}", user.trim(), bare.display()),
    })
}

fn which(tool: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not on PATH"))
}

struct Setup {
    dash: MockDashboard,
    fx: Fixture,
    fakes: Fakes,
    server: SshServer,
    /// Stands for /etc/ssh/ssh_known_hosts (absent unless a test writes it).
    system_known_hosts: PathBuf,
}

async fn setup() -> Option<Setup> {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let server = server(&fx, &fakes, &bare)?;
    let system_known_hosts = fx.tmp.path().join("ssh_known_hosts");
    Some(Setup {
        dash,
        fx,
        fakes,
        server,
        system_known_hosts,
    })
}

impl Setup {
    fn agent(&self) -> AgentBuilder {
        AgentBuilder::new(&self.dash.ws_url(), HOST, &self.fx)
            .without("NIXFLEET_REPO_DIR")
            .env("NIXFLEET_REPO_URL", &self.server.url)
            .with_fakes(&self.fakes)
            .env("NIXFLEET_SSH_KEY", self.server.client_key.to_str().unwrap())
            .env(
                "NIXFLEET_SSH_KNOWN_HOSTS",
                self.system_known_hosts.to_str().unwrap(),
            )
    }

    /// Runs `pull` once the agent registered after `after`, returns its status.
    async fn pull(&self, after: u64) -> serde_json::Value {
        wait_register(&self.dash, HOST, after).await;
        let after = self.dash.last_seq();
        self.dash.send_command(HOST, "pull").await.expect("send");
        status_for(&self.dash, HOST, "pull", after).await.payload
    }

    fn list_in_system(&self, key: &str) {
        std::fs::write(&self.system_known_hosts, format!("{SERVER} {key}\n")).unwrap();
    }

    fn tofu_file(&self) -> PathBuf {
        self.fx.state.join("ssh_known_hosts")
    }
}

#[tokio::test]
async fn an_unlisted_server_is_trusted_on_first_use_and_remembered() {
    let Some(s) = setup().await else { return };
    let _agent = s.agent().spawn();
    let st = s.pull(0).await;
    assert_eq!(st["status"], "ok", "{st}");
    let remembered = std::fs::read_to_string(s.tofu_file()).expect("agent's known hosts");
    assert!(
        remembered.contains(&format!("{SERVER} {}", s.server.host_key)),
        "{remembered}"
    );
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_server_listed_in_the_system_known_hosts_is_checked_strictly() {
    let Some(s) = setup().await else { return };
    // listed with another key: refused, even though trust on first use is on
    let other = ssh_keygen(&s.fx.tmp.path().join("other"), "");
    s.list_in_system(&other);
    let _agent = s.agent().spawn();
    let st = s.pull(0).await;
    assert_eq!(st["status"], "error", "{st}");
    let msg = st["message"].as_str().unwrap();
    assert!(msg.contains("Host key verification failed"), "{msg}");
    assert!(
        !std::fs::read_to_string(s.tofu_file())
            .unwrap_or_default()
            .contains(&s.server.host_key),
        "a listed server's other key was remembered"
    );
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn required_known_hosts_refuse_an_unlisted_server_and_accept_a_listed_one() {
    let Some(s) = setup().await else { return };
    let mut agent = s
        .agent()
        .env("NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS", "1")
        .spawn();
    let st = s.pull(0).await;
    assert_eq!(st["status"], "error", "{st}");
    let msg = st["message"].as_str().unwrap();
    assert!(msg.contains("Host key verification failed"), "{msg}");
    assert!(!s.tofu_file().exists(), "nothing is trusted on first use");
    agent.signal(libc::SIGTERM);
    agent.wait_exit(WAIT).await;

    s.list_in_system(&s.server.host_key);
    let again = s.dash.last_seq();
    let _agent = s
        .agent()
        .env("NIXFLEET_SSH_REQUIRE_KNOWN_HOSTS", "1")
        .spawn();
    let st = s.pull(again).await;
    assert_eq!(st["status"], "ok", "{st}");
    assert_no_violations(&s.dash);
}
