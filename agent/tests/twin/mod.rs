//! The host twin's harness (`host_twin.rs` has the scenarios): a root file
//! system with the module's own units, Debian trixie's `/usr` (its systemd,
//! D-Bus and real Nix 2.26: the twin's root of `common/realnix.rs`) and a
//! store of its own, booted under a real systemd in `systemd-nspawn`, torn
//! down with its test. Its systems are built by that Nix from a flake in the
//! configuration repository (`system.rs`).

pub mod home;
mod system;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nixfleet_mock_dashboard::MockDashboard;

use super::common::realnix::NixRoot;
use super::common::*;
use system::{BOOTED_SYSTEM_UNIT, NIX_CONF, NIX_DAEMON_SERVICE, NIX_DAEMON_SOCKET};
pub use system::{System, TOPLEVEL};

/// The store hash the golden units use for every store path.
pub const HASH: &str = "00000000000000000000000000000000";
/// The container's host name, and so the agent's.
pub const HOST: &str = "twin";
/// Waits that include a restart by systemd (`RestartSec=5s`).
pub const SLOW: Duration = Duration::from_secs(60);

pub fn store(name: &str) -> String {
    format!("/nix/store/{HASH}-{name}")
}

fn required() -> bool {
    std::env::var("NIXFLEET_HOST_TWIN").as_deref() == Ok("require")
}

/// Whether this machine can boot the twin; `None` with the reason if not.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/usr/bin/systemd-nspawn").exists() {
        return Some(
            "/usr/bin/systemd-nspawn is missing (apt-get install systemd-container)".into(),
        );
    }
    None
}

/// The twin's root (made when missing) when the twin can run; otherwise
/// says why, and fails where the twin is required.
pub fn twin_root() -> Option<NixRoot> {
    if let Some(why) = unavailable() {
        assert!(
            !required(),
            "the host twin is required but cannot run: {why}"
        );
        eprintln!("host twin skipped: {why}");
        return None;
    }
    NixRoot::twin(required())
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn symlink(target: &str, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Before the first boot, in the container: the store paths the units name
/// made valid and rooted, then the flake's first system built and made
/// generation 1 of the system profile; prints its path.
const FIRST_SYSTEM: &str = r#"set -e
for p in /nix/store/00000000000000000000000000000000-*; do printf '%s\n\n0\n' "$p"; done | nix-store --register-validity
mkdir -p /nix/var/nix/gcroots/twin
for p in /nix/store/00000000000000000000000000000000-*; do ln -sfn "$p" /nix/var/nix/gcroots/twin/; done
first=$(nix --extra-experimental-features 'nix-command flakes' build --no-link --print-out-paths /srv/nixcfg#nixosConfigurations.twin.config.system.build.toplevel)
nix-env -p /nix/var/nix/profiles/system --set "$first"
echo "$first"
"#;

/// Where NixOS's real activation program is, if this machine has it.
pub fn real_switch_to_configuration() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/switch-to-configuration-ng");
    path.is_file().then_some(path)
}

/// A tmpfs of `size` mounted on a directory of its own (the twin's `/boot`,
/// a filesystem as an EFI system partition is); unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs for /boot");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The size of the twin's `/boot`.
pub const BOOT_SIZE: &str = "64m";

/// One booted container.
pub struct Twin {
    pub root: PathBuf,
    /// The Debian root whose `/usr` (systemd, D-Bus, Nix) the container runs.
    pub base: NixRoot,
    /// The configuration repository (`/srv/nixcfg` inside), whose flake
    /// builds the systems.
    pub repo: PathBuf,
    /// NixOS's real `switch-to-configuration-ng`, when this machine has it
    /// (else the systems carry the fake).
    pub real_activation: Option<PathBuf>,
    /// The container's `/boot`: a tmpfs of [`BOOT_SIZE`].
    pub boot: Tmpfs,
    pub exchange: PathBuf,
    pub secrets: PathBuf,
    pub nspawn: Child,
    /// The container's PID 1, as seen from here.
    pub init: i32,
    /// The system the twin booted (`nixos-system-twin-a`).
    pub booted: String,
    pub _tmp: tempfile::TempDir,
}

impl Twin {
    /// Builds the root file system, builds its first system with real Nix,
    /// and boots it; the agent starts with the system (`multi-user.target`).
    pub async fn boot(
        base: NixRoot,
        dash: &MockDashboard,
        fx: &Fixture,
        name: &str,
        deadline_secs: u64,
    ) -> Twin {
        Twin::boot_with(base, dash, fx, name, deadline_secs, false).await
    }

    /// [`Twin::boot`], with the Home Manager user `alice` (`home.rs`) when
    /// `home`: her agent runs under her own `systemd --user`.
    pub async fn boot_with(
        base: NixRoot,
        dash: &MockDashboard,
        fx: &Fixture,
        name: &str,
        deadline_secs: u64,
        home: bool,
    ) -> Twin {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let exchange = tmp.path().join("exchange");
        let secrets = tmp.path().join("secrets");
        for dir in [
            "var",
            "run",
            "tmp",
            "boot",
            "root",
            "usr",
            "srv/nixcfg",
            "nix/var/nix/daemon-socket",
            "nix/var/nix/gcroots",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::create_dir_all(&exchange).unwrap();
        // a token of this twin's own: an agent of another test's container
        // can never register with this dashboard
        write(&secrets.join("nixfleet-token"), &twin_token(name));
        dash.add_token(&twin_token(name));
        dash.remove_token(TOKEN);
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            symlink(target, &root.join(link));
        }
        // /etc: the Debian root's (its users, PAM, D-Bus and systemd
        // configuration, matching its /usr), with the units of the systems
        // instead of Debian's
        let etc = root.join("etc");
        copy_tree(&base.dir.join("etc"), &etc);
        std::fs::remove_dir_all(etc.join("systemd/system")).unwrap();
        // (nspawn looks for it before /usr is bound: a file, not Debian's link)
        let _ = std::fs::remove_file(etc.join("os-release"));
        std::fs::copy(base.dir.join("usr/lib/os-release"), etc.join("os-release")).unwrap();
        write(&etc.join("machine-id"), "");
        write(&etc.join("hostname"), &format!("{HOST}\n"));
        write(&etc.join("NIXOS"), "");
        write(&etc.join("fstab"), "");
        write(&etc.join("nix/nix.conf"), NIX_CONF);

        // the units every system carries: the module's, unchanged, and a
        // drop-in for the test's dashboard and timing (Environment= only)
        let units = tmp.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../checks/twin");
        for unit in [
            "nixfleet-agent.service",
            "nixfleet-agent-token.path",
            "nixfleet-agent-token-changed.service",
        ] {
            std::fs::copy(golden.join(unit), units.join(unit)).unwrap();
        }
        // the test's short deadlines stand for real ones (at least 100 s,
        // the modules refuse less) that outlast the hub's 90 s window: the
        // window shrinks with them (register_hold.rs)
        let window_ms = (deadline_secs * 1000 / 3).max(1000);
        // and the watchdog's 60 s shrink to 5 s, the activation's 900 s to
        // 20 s
        let drop_in = format!(
            "[Service]\nWatchdogSec=5s\nEnvironment=\"NIXFLEET_ACTIVATION_TIMEOUT=20\"\nEnvironment=\"NIXFLEET_URL={}\"\nEnvironment=\"NIXFLEET_INTERVAL=1\"\nEnvironment=\"NIXFLEET_ROLLBACK_DEADLINE={deadline_secs}\"\nEnvironment=\"NIXFLEET_HUB_RECONNECT_WINDOW_MS={window_ms}\"\nEnvironment=\"NIXFLEET_LOG_LEVEL=debug\"\n",
            dash.ws_url()
        );
        write(&units.join("nixfleet-agent.service.d/twin.conf"), &drop_in);
        if home {
            home::prepare(&root, &drop_in, &twin_token(name));
        }
        write(
            &units.join("twin-booted-system.service"),
            BOOTED_SYSTEM_UNIT,
        );
        write(&units.join("nix-daemon.socket"), NIX_DAEMON_SOCKET);
        write(&units.join("nix-daemon.service"), NIX_DAEMON_SERVICE);
        // the targets switch-to-configuration restarts come from the system
        std::fs::copy(
            base.dir.join("usr/lib/systemd/system/multi-user.target"),
            units.join("multi-user.target"),
        )
        .unwrap();
        write(
            &units.join("sysinit-reactivation.target"),
            "[Unit]\nDescription=Reactivate sysinit units\n",
        );
        symlink("multi-user.target", &units.join("default.target"));
        let wants = units.join("multi-user.target.wants");
        for unit in [
            "nixfleet-agent.service",
            "nixfleet-agent-token.path",
            "twin-booted-system.service",
            "nix-daemon.service",
        ] {
            symlink(&format!("../{unit}"), &wants.join(unit));
        }
        symlink(
            "../nix-daemon.socket",
            &units.join("sockets.target.wants/nix-daemon.socket"),
        );

        // the store paths the units name: the tools of the unit's PATH are
        // the container's /usr (Nix's among them), the agent and NixOS's
        // activation program are bound in; registered as valid and rooted
        // before the first build, as they would be in a system's closure
        let nix_store = root.join("nix/store");
        let usr_bin = nix_store.join(format!("{HASH}-twin-usr/bin"));
        let nix_bin = nix_store.join(format!("{HASH}-nix/bin"));
        std::fs::create_dir_all(&usr_bin).unwrap();
        std::fs::create_dir_all(&nix_bin).unwrap();
        for entry in std::fs::read_dir(base.dir.join("usr/bin"))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = if name.starts_with("nix") {
                &nix_bin
            } else {
                &usr_bin
            };
            symlink(&format!("/usr/bin/{name}"), &dir.join(&name));
        }
        for pkg in [
            "bash",
            "coreutils",
            "git",
            "gnutar",
            "gzip",
            "xz",
            "openssh",
            "findutils",
            "gnugrep",
            "gnused",
            "systemd",
        ] {
            let dir = nix_store.join(format!("{HASH}-{pkg}"));
            symlink(&store("twin-usr/bin"), &dir.join("bin"));
            symlink("/usr/sbin", &dir.join("sbin"));
        }
        // copies, not binds: Nix makes a valid path's files read-only
        let agent = nix_store.join(format!("{HASH}-nixfleet-agent/bin/nixfleet-agent"));
        std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
        std::fs::copy(agent_binary(), &agent).unwrap();
        let real_activation = real_switch_to_configuration();
        if let Some(stc) = &real_activation {
            let to = nix_store.join(format!(
                "{HASH}-switch-to-configuration-ng/bin/switch-to-configuration"
            ));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(stc, &to).unwrap();
        }
        match &real_activation {
            Some(stc) => eprintln!("host twin: systems activate with NixOS's {}", stc.display()),
            None => eprintln!(
                "host twin: systems activate with a fake: ../shared/tools/switch-to-configuration-ng is missing"
            ),
        }
        system::write_flake(
            &fx.repo,
            &units,
            real_activation.is_some(),
            &System::named("a"),
        );
        let mut twin = Twin {
            root,
            base,
            repo: fx.repo.clone(),
            real_activation,
            boot: Tmpfs::new(BOOT_SIZE),
            exchange,
            secrets,
            nspawn: Command::new("true").spawn().unwrap(),
            init: 0,
            booted: String::new(),
            _tmp: tmp,
        };
        // the first system, built by the container's Nix before it boots:
        // generation 1 of the system profile, its units in /etc, its boot
        // entry the default (as if installed)
        let out = twin
            .nspawn_command(name, false)
            .args(["/bin/sh", "-c"])
            .arg(if home {
                format!("{FIRST_SYSTEM}{}", home::FIRST_HOME)
            } else {
                FIRST_SYSTEM.to_string()
            })
            .stdin(Stdio::null())
            .output()
            .expect("systemd-nspawn");
        assert!(
            out.status.success(),
            "the first system: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        twin.booted = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(twin.booted.ends_with("-nixos-system-twin-a"), "{out:?}");
        copy_tree(
            &twin.path(&twin.booted).join("etc/systemd/system"),
            &twin.root.join("etc/systemd/system"),
        );
        write(
            &twin.root.join("etc/nixos-generation"),
            "nixos-system-twin-a\n",
        );
        write(&twin.path("/boot/loader/default"), "nixos-system-twin-a\n");
        let twin = twin.start(name);
        eprintln!("host twin: {} runs {}", name, twin.nix_version());
        twin
    }

    /// Commits `system` as the flake's system (what the next switch
    /// builds); its store path, evaluated by the container's Nix.
    pub fn next(&self, system: System) -> String {
        system.commit(&self.repo);
        let out = self.exec(&[
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--raw",
            &format!("{TOPLEVEL}.outPath"),
        ]);
        assert!(
            out.status.success(),
            "nix eval: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `nix --version` inside the container.
    pub fn nix_version(&self) -> String {
        let out = self.exec(&["nix", "--version"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The system the system profile names (through its generation link).
    pub fn profile_system(&self) -> PathBuf {
        let profiles = self.path("/nix/var/nix/profiles");
        let generation = std::fs::read_link(profiles.join("system")).unwrap();
        std::fs::read_link(profiles.join(generation)).unwrap()
    }

    /// A path inside the container, as seen from here.
    pub fn path(&self, inside: &str) -> PathBuf {
        match inside.strip_prefix("/boot") {
            Some(rest) => self.boot.path().join(rest.trim_start_matches('/')),
            None => self.root.join(inside.trim_start_matches('/')),
        }
    }

    /// `systemd-nspawn` on the root with every bind the twin has: booting
    /// its systemd (`boot`), or running the command that follows.
    fn nspawn_command(&self, name: &str, boot: bool) -> Command {
        // nspawn refuses to clean up its propagation directory on a
        // non-tmpfs /run (as on a machine without systemd as PID 1)
        ensure_tmpfs("/run/systemd/nspawn");
        let bind = |from: &Path, to: &str| format!("--bind={}:{to}", from.display());
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg(format!("--directory={}", self.root.display()))
            .arg(format!("--machine={name}"))
            .args(["--register=no", "--keep-unit"])
            .arg(format!(
                "--bind-ro={}:/usr",
                self.base.dir.join("usr").display()
            ))
            .arg(bind(&self.repo, "/srv/nixcfg"))
            .arg(bind(&self.secrets, "/run/agenix"))
            .arg(bind(&self.exchange, "/twin"))
            .arg(bind(self.boot.path(), "/boot"));
        if boot {
            cmd.arg("--boot");
        } else {
            cmd.args(["--as-pid2", "--pipe", "--"]);
        }
        cmd
    }

    pub fn start(mut self, name: &str) -> Twin {
        let _ = self.nspawn.wait();
        let log = std::fs::File::create(self.exchange.join("../nspawn.log")).unwrap();
        self.nspawn = self
            .nspawn_command(name, true)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        let Some(init) = find_init(self.nspawn.id() as i32) else {
            let log = std::fs::read_to_string(self.exchange.join("../nspawn.log"));
            panic!(
                "the container's systemd did not start:\n{}",
                log.unwrap_or_default()
            );
        };
        self.init = init;
        self
    }

    /// Runs a command inside the container (all its namespaces); its output.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--target={}", self.init))
            .arg("--all")
            .args(args)
            .output()
            .expect("nsenter")
    }

    pub fn read(&self, inside: &str) -> String {
        std::fs::read_to_string(self.path(inside))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Alice's agent's journal (her user manager's unit), for failure
    /// messages.
    pub fn user_journal(&self) -> String {
        let out = self.exec(&[
            "journalctl",
            "--user-unit",
            "nixfleet-agent",
            "_UID=1000",
            "--no-pager",
            "-n",
            "80",
        ]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&self.exec(&["journalctl", "-n", "40", "--no-pager"]).stdout)
        )
    }

    /// The agent's journal, for failure messages.
    pub fn journal(&self) -> String {
        let out = self.exec(&[
            "journalctl",
            "-u",
            "nixfleet-agent",
            "--no-pager",
            "-n",
            "80",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Twin {
    /// Whether nspawn ended within `wait`.
    pub fn nspawn_ends_within(&mut self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Twin {
    /// The container never outlives its test: a leftover one keeps running
    /// an agent on the host's network, which would dial a later test's
    /// dashboard when it gets the same port.
    fn drop(&mut self) {
        // SIGRTMIN+3 to the container's systemd: a clean halt
        if self.init > 0 {
            unsafe { libc::kill(self.init, libc::SIGRTMIN() + 3) };
        }
        if self.nspawn_ends_within(Duration::from_secs(15)) {
            return;
        }
        // SIGKILL to its PID 1 ends every process of its PID namespace
        if self.init > 0 {
            unsafe { libc::kill(self.init, libc::SIGKILL) };
        }
        if !self.nspawn_ends_within(Duration::from_secs(10)) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

/// The token of the twin `name` (its machine name and this test process).
pub fn twin_token(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Mounts a tmpfs at `dir` unless one is there.
pub fn ensure_tmpfs(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split(' ').nth(1) == Some(dir)) {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", dir])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs on {dir}");
}

/// The container's systemd: the descendant of nspawn whose PID is 1 in its
/// own namespace.
pub fn find_init(nspawn: i32) -> Option<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut todo = vec![nspawn];
        while let Some(pid) = todo.pop() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
                && pid != nspawn
            {
                return Some(pid);
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies the tree `from` to `to`, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
