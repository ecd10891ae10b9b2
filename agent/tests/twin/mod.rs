//! The host twin's harness (`host_twin.rs` has the scenarios): a root file
//! system with the module's own units and the fake Nix tools, booted under
//! a real systemd in `systemd-nspawn`, torn down with its test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nixfleet_mock_dashboard::MockDashboard;

use super::common::*;

/// The store hash the golden units use for every store path.
pub const HASH: &str = "00000000000000000000000000000000";
/// The container's host name, and so the agent's.
pub const HOST: &str = "twin";
/// Waits that include a restart by systemd (`RestartSec=5s`).
pub const SLOW: Duration = Duration::from_secs(60);

pub fn store(name: &str) -> String {
    format!("/nix/store/{HASH}-{name}")
}

/// Whether this machine can boot the twin; `None` with the reason if not.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["/usr/bin/systemd-nspawn", "/usr/lib/systemd/systemd"] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (apt-get install systemd-container)"
            ));
        }
    }
    None
}

/// `true` when the twin can run; otherwise says why, and fails where the
/// twin is required.
pub fn twin_available() -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var("NIXFLEET_HOST_TWIN").as_deref() == Ok("require") {
        panic!("the host twin is required but cannot run: {why}");
    }
    eprintln!("host twin skipped: {why}");
    false
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn symlink(target: &str, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// `nix-env -p PROFILE --set PATH` and `--rollback`: numbered generation
/// links beside the profile, as the real one makes them.
pub const FAKE_NIX_ENV: &str = r#"#!/bin/sh
[ "$1" = -p ] || { echo "nix-env (twin fake): unsupported: $*" >&2; exit 1; }
base=$(basename "$2")
cur=$(readlink "$2"); n=${cur#"$base"-}; n=${n%-link}
case "$3" in
  --set)
    m=$((n + 1))
    while [ -e "$2-$m-link" ] || [ -L "$2-$m-link" ]; do m=$((m + 1)); done
    ln -s "$4" "$2-$m-link" && ln -sfn "$base-$m-link" "$2" ;;
  --rollback)
    m=$((n - 1))
    while [ "$m" -gt 0 ] && [ ! -L "$2-$m-link" ]; do m=$((m - 1)); done
    [ "$m" -gt 0 ] || { echo "error: no generation older than the current ($n) exists" >&2; exit 1; }
    echo "switching profile from version $n to $m" >&2
    ln -sfn "$base-$m-link" "$2" ;;
  *) echo "nix-env (twin fake): unsupported: $*" >&2; exit 1 ;;
esac
"#;

/// `nix`: the dry run (what Nix's `printMissing` prints for a system whose
/// parts are all in the store), the build of the system named in
/// `/twin/next-system` (its out-link, its path on stdout), and the
/// preview's `store diff-closures` and `path-info --closure-size`.
pub const FAKE_NIX: &str = r#"#!/bin/sh
if [ "$1" = --version ]; then
  echo 'nix (Nix) 2.34.0'
  exit 0
fi
prev=
building=
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then
    echo "this path will be fetched (0.10 MiB download, 0.50 MiB unpacked):" >&2
    echo "  /nix/store/00000000000000000000000000000000-etc" >&2
    exit 0
  fi
  [ "$prev" = --out-link ] && out_link="$arg"
  case "$prev $arg" in
    "store diff-closures") echo "twin-config: 1 → 2, +0.1 KiB"; exit 0 ;;
    "path-info --closure-size") exit 0 ;;
    "build --json") building=1 ;;
  esac
  prev="$arg"
done
if [ -n "$building" ]; then
  new=$(cat /twin/next-system) || { echo "error: nothing to build" >&2; exit 1; }
  echo "building '/nix/store/00000000000000000000000000000000-$(basename "$new" | cut -d- -f2-).drv'..." >&2
  [ -n "$out_link" ] && ln -sfn "$new" "$out_link"
  printf '[{"drvPath":"/nix/store/00000000000000000000000000000000-x.drv","outputs":{"out":"%s"}}]\n' "$new"
  exit 0
fi
echo "nix (twin fake): unsupported: $*" >&2
exit 1
"#;

/// A system's `bin/switch-to-configuration` where NixOS's real one cannot run
/// (`../shared/tools/switch-to-configuration-ng` missing): `switch` installs
/// the boot loader first (the system's `install-bootloader`), then runs the
/// system's `activate`, as switch-to-configuration-ng does; `boot` only
/// installs the boot loader; `dry-activate` says what a switch would do and
/// changes nothing. Its exit codes are the real one's.
pub const FAKE_SWITCH_TO_CONFIGURATION: &str = r#"#!/bin/sh
top=$(dirname "$(dirname "$(readlink -f "$0")")")
case "$1" in
  dry-activate)
    echo "would activate the configuration..." >&2
    exit 0 ;;
  switch|boot) ;;
  *) echo "unsupported action $1" >&2; exit 1 ;;
esac
if ! "$top/install-bootloader" "$top"; then
  echo "Failed to install bootloader" >&2
  exit 1
fi
[ "$1" = boot ] && exit 0
"$top/activate" || exit 2
systemctl daemon-reload
"#;

/// NixOS's wrapper around the real `switch-to-configuration-ng` (nixpkgs'
/// `system.build.toplevel` writes it): the program reads the system from its
/// environment. `SYSTEMD=/usr`: the container's systemd is this machine's.
pub const REAL_SWITCH_TO_CONFIGURATION: &str = r#"#!/bin/sh
top=$(dirname "$(dirname "$(readlink -f "$0")")")
export OUT="$top" TOPLEVEL="$top" DISTRO_ID=nixos SYSTEMD=/usr
export INSTALL_BOOTLOADER="$top/install-bootloader" PRE_SWITCH_CHECK="$top/pre-switch-check"
exec /nix/store/00000000000000000000000000000000-switch-to-configuration-ng/bin/switch-to-configuration "$@"
"#;

/// A system's `activate` (run by switch-to-configuration): `/etc` (the
/// generation's name, its units), then `/run/current-system`, as NixOS's
/// activation script does.
pub const ACTIVATE: &str = r#"#!/bin/sh
top=$(dirname "$(readlink -f "$0")")
name=$(basename "$top" | cut -d- -f2-)
if ! echo "$name" > /etc/nixos-generation; then
  echo "Activation script snippet 'etc' failed" >&2
  exit 1
fi
# the system's units replace the running ones (NixOS links /etc/static)
rm -rf /etc/systemd/system.new
cp -a "$top/etc/systemd/system" /etc/systemd/system.new || exit 1
rm -rf /etc/systemd/system && mv /etc/systemd/system.new /etc/systemd/system || exit 1
ln -sfn "$top" /run/current-system
echo "activated $name"
"#;

/// A system's boot loader installation: the default entry is the system.
pub const INSTALL_BOOTLOADER: &str = r#"#!/bin/sh
name=$(basename "$1" | cut -d- -f2-)
mkdir -p /boot/loader && echo "$name" > /boot/loader/default
"#;

/// Every system's `switch-inhibitors` (nixpkgs' `system.switch.inhibitors`,
/// as JSON), unless a test gives one.
pub const SWITCH_INHIBITORS: &str = r#"{"dbus-implementation":"dbus","systemd":"/nix/store/00000000000000000000000000000000-systemd-252"}"#;

/// Where NixOS's real activation program is, if this machine has it.
pub fn real_switch_to_configuration() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/switch-to-configuration-ng");
    path.is_file().then_some(path)
}

/// Points `/run/current-system` and `/run/booted-system` at the system
/// profile at boot, as NixOS's stage 2 does.
pub const BOOTED_SYSTEM_UNIT: &str = "[Unit]
Description=The booted system (as NixOS's stage 2 links it)
Before=nixfleet-agent.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'p=$(readlink -f /nix/var/nix/profiles/system); ln -sfn $p /run/current-system; ln -sfn $p /run/booted-system'

[Install]
WantedBy=multi-user.target
";

/// One booted container.
pub struct Twin {
    pub root: PathBuf,
    /// The units every system carries.
    pub units: PathBuf,
    /// NixOS's real `switch-to-configuration-ng`, when this machine has it
    /// (else the systems carry the fake).
    pub real_activation: Option<PathBuf>,
    /// The container's `/boot`: a directory on a tmpfs.
    pub boot: tempfile::TempDir,
    pub exchange: PathBuf,
    pub secrets: PathBuf,
    pub nspawn: Child,
    /// The container's PID 1, as seen from here.
    pub init: i32,
    pub _tmp: tempfile::TempDir,
}

impl Twin {
    /// Builds the root file system and boots it; the agent starts with the
    /// system (`multi-user.target`).
    pub async fn boot(dash: &MockDashboard, fx: &Fixture, name: &str, deadline_secs: u64) -> Twin {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let exchange = tmp.path().join("exchange");
        let secrets = tmp.path().join("secrets");
        for dir in [
            "etc",
            "var",
            "run",
            "tmp",
            "boot",
            "root",
            "usr",
            "srv/nixcfg",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::create_dir_all(&exchange).unwrap();
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            symlink(target, &root.join(link));
        }
        let etc = root.join("etc");
        for file in [
            "passwd",
            "group",
            "shadow",
            "nsswitch.conf",
            "ld.so.cache",
            "ld.so.conf",
        ] {
            std::fs::copy(Path::new("/etc").join(file), etc.join(file)).unwrap();
        }
        std::fs::copy("/usr/lib/os-release", etc.join("os-release")).unwrap();
        write(&etc.join("machine-id"), "");
        write(&etc.join("hostname"), &format!("{HOST}\n"));

        write(&etc.join("NIXOS"), "");
        write(&etc.join("fstab"), "");
        // the module's units, unchanged, and a drop-in for the test's
        // dashboard and timing (Environment= only): every system carries
        // them in its etc/systemd/system, and the root gets the first
        // system's, as if it had been activated
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
        write(
            &units.join("nixfleet-agent.service.d/twin.conf"),
            &format!(
                "[Service]\nEnvironment=\"NIXFLEET_URL={}\"\nEnvironment=\"NIXFLEET_INTERVAL=1\"\nEnvironment=\"NIXFLEET_ROLLBACK_DEADLINE={deadline_secs}\"\nEnvironment=\"NIXFLEET_HUB_RECONNECT_WINDOW_MS={window_ms}\"\nEnvironment=\"NIXFLEET_LOG_LEVEL=debug\"\n",
                dash.ws_url()
            ),
        );
        write(
            &units.join("twin-booted-system.service"),
            BOOTED_SYSTEM_UNIT,
        );
        // the targets switch-to-configuration restarts come from the system
        std::fs::copy(
            "/usr/lib/systemd/system/multi-user.target",
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
        ] {
            symlink(&format!("../{unit}"), &wants.join(unit));
        }

        // the store: the tools the unit's PATH names are the container's
        // /usr, but for the fakes of nix and nix-env
        // (this machine's own Nix tools, if any, are left out: the fakes come
        // later on the unit's PATH)
        let nix_store = root.join("nix/store");
        let usr_bin = nix_store.join(format!("{HASH}-twin-usr/bin"));
        std::fs::create_dir_all(&usr_bin).unwrap();
        for entry in std::fs::read_dir("/usr/bin").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nix") {
                symlink(&format!("/usr/bin/{name}"), &usr_bin.join(&name));
            }
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
        write_exec(
            &nix_store.join(format!("{HASH}-nix/bin/nix-env")),
            FAKE_NIX_ENV,
        );
        write_exec(&nix_store.join(format!("{HASH}-nix/bin/nix")), FAKE_NIX);
        std::fs::create_dir_all(nix_store.join(format!("{HASH}-nixfleet-agent/bin"))).unwrap();
        let real_activation = real_switch_to_configuration();
        match &real_activation {
            Some(stc) => eprintln!("host twin: systems activate with NixOS's {}", stc.display()),
            None => eprintln!(
                "host twin: systems activate with a fake: ../shared/tools/switch-to-configuration-ng is missing"
            ),
        }
        let twin = Twin {
            units,
            real_activation,
            root,
            boot: tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm for /boot"),
            exchange,
            secrets,
            nspawn: Command::new("true").spawn().unwrap(),
            init: 0,
            _tmp: tmp,
        };
        let first = twin.system("a");
        copy_tree(
            &twin.path(&first).join("etc/systemd/system"),
            &twin.root.join("etc/systemd/system"),
        );
        symlink(
            &first,
            &twin.root.join("nix/var/nix/profiles/system-1-link"),
        );
        symlink(
            "system-1-link",
            &twin.root.join("nix/var/nix/profiles/system"),
        );
        write(
            &twin.root.join("etc/nixos-generation"),
            "nixos-system-twin-a\n",
        );
        write(&twin.path("/boot/loader/default"), "nixos-system-twin-a\n");
        // a token of this twin's own: an agent of another test's container
        // can never register with this dashboard
        write(&twin.secrets.join("nixfleet-token"), &twin_token(name));
        dash.add_token(&twin_token(name));
        dash.remove_token(TOKEN);
        twin.start(fx, name)
    }

    /// A system toplevel `nixos-system-twin-<n>` in the store, laid out as
    /// switch-to-configuration-ng wants one; its path.
    pub fn system(&self, n: &str) -> String {
        let path = store(&format!("nixos-system-twin-{n}"));
        let top = self.path(&path);
        let switch = match self.real_activation {
            Some(_) => REAL_SWITCH_TO_CONFIGURATION,
            None => FAKE_SWITCH_TO_CONFIGURATION,
        };
        write_exec(&top.join("bin/switch-to-configuration"), switch);
        write_exec(&top.join("activate"), ACTIVATE);
        write_exec(&top.join("dry-activate"), "#!/bin/sh\nexit 0\n");
        write_exec(&top.join("install-bootloader"), INSTALL_BOOTLOADER);
        write_exec(&top.join("pre-switch-check"), "#!/bin/sh\nexit 0\n");
        write(&top.join("init-interface-version"), "systemd 2\n");
        write(&top.join("nixos-version"), "26.05.twin\n");
        write(&top.join("system"), "x86_64-linux\n");
        std::fs::create_dir_all(top.join("specialisation")).unwrap();
        write(&top.join("etc/fstab"), "");
        write(&top.join("switch-inhibitors"), SWITCH_INHIBITORS);
        copy_tree(&self.units, &top.join("etc/systemd/system"));
        path
    }

    /// A system with one more unit, `name`, wanted by multi-user.target.
    pub fn system_with_unit(&self, n: &str, name: &str, text: &str) -> String {
        let path = self.system(n);
        let units = self.path(&path).join("etc/systemd/system");
        write(&units.join(name), text);
        symlink(
            &format!("../{name}"),
            &units.join("multi-user.target.wants").join(name),
        );
        path
    }

    /// A system whose switch inhibitors are `inhibitors` (a JSON object).
    pub fn system_with_inhibitors(&self, n: &str, inhibitors: &str) -> String {
        let path = self.system(n);
        write(&self.path(&path).join("switch-inhibitors"), inhibitors);
        path
    }

    /// A system whose kernel (`kernel_len` bytes, sparse) and initrd are
    /// files of its own, not copied to `/boot` yet.
    pub fn system_with_kernel(&self, n: &str, kernel_len: u64) -> String {
        let path = self.system(n);
        let kernel_dir = store(&format!("linux-6.12-{n}"));
        let initrd_dir = store(&format!("initrd-linux-6.12-{n}"));
        std::fs::create_dir_all(self.path(&kernel_dir)).unwrap();
        std::fs::File::create(self.path(&kernel_dir).join("bzImage"))
            .unwrap()
            .set_len(kernel_len)
            .unwrap();
        write(&self.path(&initrd_dir).join("initrd"), "initrd");
        symlink(
            &format!("{kernel_dir}/bzImage"),
            &self.path(&path).join("kernel"),
        );
        symlink(
            &format!("{initrd_dir}/initrd"),
            &self.path(&path).join("initrd"),
        );
        path
    }

    /// A system whose units give the agent's unit `drop_in`.
    pub fn system_with_agent_settings(&self, n: &str, drop_in: &str) -> String {
        let path = self.system(n);
        write(
            &self
                .path(&path)
                .join("etc/systemd/system/nixfleet-agent.service.d/generation.conf"),
            drop_in,
        );
        path
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

    pub fn start(mut self, fx: &Fixture, name: &str) -> Twin {
        let _ = self.nspawn.wait();
        // nspawn refuses to clean up its propagation directory on a
        // non-tmpfs /run (as on a machine without systemd as PID 1)
        ensure_tmpfs("/run/systemd/nspawn");
        let agent = env!("CARGO_BIN_EXE_nixfleet-agent");
        let log = std::fs::File::create(self.exchange.join("../nspawn.log")).unwrap();
        let bind = |from: &Path, to: &str| format!("--bind={}:{to}", from.display());
        self.nspawn = Command::new("systemd-nspawn")
            .arg("--quiet")
            .arg(format!("--directory={}", self.root.display()))
            .arg(format!("--machine={name}"))
            .args(["--boot", "--register=no", "--keep-unit", "--bind-ro=/usr"])
            .arg(format!(
                "--bind-ro={agent}:{}",
                store("nixfleet-agent/bin/nixfleet-agent")
            ))
            .arg(bind(&fx.repo, "/srv/nixcfg"))
            .arg(bind(&self.secrets, "/run/agenix"))
            .arg(bind(&self.exchange, "/twin"))
            .arg(bind(self.boot.path(), "/boot"))
            .args(self.real_activation.iter().map(|stc| {
                format!(
                    "--bind-ro={}:{}",
                    stc.display(),
                    store("switch-to-configuration-ng/bin/switch-to-configuration")
                )
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        self.init = find_init(self.nspawn.id() as i32);
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
pub fn find_init(nspawn: i32) -> i32 {
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
                return pid;
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container's systemd did not start"
        );
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
