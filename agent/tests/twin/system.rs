//! The twin's systems: a flake in the configuration repository whose
//! `nixosConfigurations.twin` is built by the container's real Nix into a
//! NixOS toplevel laid out as switch-to-configuration-ng wants one, and the
//! scripts each system carries.
//!
//! Which system the flake builds is `twin/system.json`, committed by the
//! test ([`System`]); the agent's switch builds whatever the repository's
//! flake says, as on a real host.

use std::path::Path;

use serde_json::json;

use super::{HOST, write};
use crate::common::{git, write_exec};

/// One system of the flake: `nixos-system-twin-<name>`, with what a test
/// varies.
#[derive(Debug, Clone, Default)]
pub struct System {
    pub name: String,
    /// A kernel of this many bytes (sparse) and an initrd, as store paths of
    /// their own that `/boot` does not hold yet.
    pub kernel_bytes: Option<u64>,
    /// One more unit (`name`, `text`), wanted by multi-user.target.
    pub unit: Option<(String, String)>,
    /// The switch inhibitors (JSON), if not [`SWITCH_INHIBITORS`].
    pub inhibitors: Option<String>,
    /// A drop-in for the agent's unit (`nixfleet-agent.service.d/generation.conf`).
    pub agent_drop_in: Option<String>,
    /// Its activation hangs (nixpkgs#378535: a unit whose start never
    /// ends), having written its PID to `/twin/hang.pid`.
    pub hangs: bool,
}

impl System {
    pub fn named(name: &str) -> System {
        System {
            name: name.to_string(),
            ..System::default()
        }
    }

    pub fn kernel(mut self, bytes: u64) -> System {
        self.kernel_bytes = Some(bytes);
        self
    }

    pub fn unit(mut self, name: &str, text: &str) -> System {
        self.unit = Some((name.to_string(), text.to_string()));
        self
    }

    pub fn inhibitors(mut self, json: &str) -> System {
        self.inhibitors = Some(json.to_string());
        self
    }

    pub fn hangs(mut self) -> System {
        self.hangs = true;
        self
    }

    pub fn agent_drop_in(mut self, text: &str) -> System {
        self.agent_drop_in = Some(text.to_string());
        self
    }

    /// Writes it as the flake's system and commits it.
    pub fn commit(&self, repo: &Path) {
        let (unit_name, unit_text) = self.unit.clone().unwrap_or_default();
        let spec = json!({
            "name": self.name,
            "kernelBytes": self.kernel_bytes,
            "unitName": unit_name,
            "unitText": unit_text,
            "inhibitors": self.inhibitors.as_deref().unwrap_or(SWITCH_INHIBITORS),
            "dropIn": self.agent_drop_in.clone().unwrap_or_default(),
            "hangs": self.hangs,
        });
        write(&repo.join("twin/system.json"), &format!("{spec:#}\n"));
        git(repo, &["add", "-A"]);
        git(repo, &["commit", "-qm", &format!("system {}", self.name)]);
    }
}

/// The flake attribute the agent builds (`NIXFLEET_FLAKE=/srv/nixcfg#twin`).
pub const TOPLEVEL: &str = "/srv/nixcfg#nixosConfigurations.twin.config.system.build.toplevel";

/// The flake: no inputs, real derivations (`builtins.derivation`, `/bin/sh`
/// and the container's `/usr/bin`), the system [`System`] wrote.
pub fn flake() -> String {
    let system = crate::common::realnix::nix_system();
    format!(
        r#"{{
  outputs =
    {{ self }}:
    let
      spec = builtins.fromJSON (builtins.readFile ./twin/system.json);
      sh =
        name: script: attrs:
        builtins.derivation (
          {{
            inherit name;
            system = "{system}";
            builder = "/bin/sh";
            args = [ "-c" script ];
            PATH = "/usr/bin:/bin";
          }}
          // attrs
        );
      kernel = sh "linux-6.12-${{spec.name}}" ''
        mkdir -p $out && truncate -s ${{toString spec.kernelBytes}} $out/bzImage
      '' {{ }};
      initrd = sh "initrd-linux-6.12-${{spec.name}}" ''
        mkdir -p $out && echo initrd > $out/initrd
      '' {{ }};
      boot =
        if spec.kernelBytes == null then
          ""
        else
          "ln -s ${{kernel}}/bzImage $out/kernel && ln -s ${{initrd}}/initrd $out/initrd";
      toplevel = sh "nixos-system-{HOST}-${{spec.name}}" ''
        set -e
        mkdir -p $out/bin $out/specialisation $out/etc/systemd
        cp ${{./twin/switch-to-configuration}} $out/bin/switch-to-configuration
        cp ${{./twin/activate}} $out/activate
        cp ${{./twin/install-bootloader}} $out/install-bootloader
        printf '#!/bin/sh\nexit 0\n' > $out/dry-activate
        printf '#!/bin/sh\nexit 0\n' > $out/pre-switch-check
        chmod +x $out/bin/switch-to-configuration $out/activate $out/install-bootloader $out/dry-activate $out/pre-switch-check
        echo 'systemd 2' > $out/init-interface-version
        echo 26.05.twin > $out/nixos-version
        echo {system} > $out/system
        printf '%s' "$inhibitors" > $out/switch-inhibitors
        cp -r ${{./twin/units}} $out/etc/systemd/system
        chmod -R u+w $out/etc/systemd/system
        touch $out/etc/fstab
        if [ -n "$unitName" ]; then
          printf '%s' "$unitText" > $out/etc/systemd/system/$unitName
          ln -s ../$unitName $out/etc/systemd/system/multi-user.target.wants/$unitName
        fi
        if [ -n "$dropIn" ]; then
          mkdir -p $out/etc/systemd/system/nixfleet-agent.service.d
          printf '%s' "$dropIn" > $out/etc/systemd/system/nixfleet-agent.service.d/generation.conf
        fi
        if [ -n "$hangs" ]; then
          printf '#!/bin/sh\necho $$ > /twin/hang.pid\nexec sleep 3600\n' > $out/activate
        fi
        ${{boot}}
      '' {{
        inherit (spec) inhibitors unitName unitText dropIn;
        hangs = if spec.hangs then "1" else "";
      }};
    in
    {{
      nixosConfigurations.{HOST}.config.system.build.toplevel = toplevel;
    }};
}}
"#
    )
}

/// Writes the flake and what its systems carry into `repo` (`units`: the
/// directory of units every system has), and commits them with `first`.
pub fn write_flake(repo: &Path, units: &Path, real_activation: bool, first: &System) {
    write(&repo.join("flake.nix"), &flake());
    write(
        &repo.join("flake.lock"),
        "{\"nodes\":{\"root\":{}},\"root\":\"root\",\"version\":7}\n",
    );
    let switch = if real_activation {
        REAL_SWITCH_TO_CONFIGURATION
    } else {
        FAKE_SWITCH_TO_CONFIGURATION
    };
    write_exec(&repo.join("twin/switch-to-configuration"), switch);
    write_exec(&repo.join("twin/activate"), ACTIVATE);
    write_exec(&repo.join("twin/install-bootloader"), INSTALL_BOOTLOADER);
    super::copy_tree(units, &repo.join("twin/units"));
    first.commit(repo);
}

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
/// environment. `SYSTEMD=/usr`: the container's systemd is Debian's.
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
chmod -R u+w /etc/systemd/system.new
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

/// Points `/run/current-system` and `/run/booted-system` at the system
/// profile once per boot (`/run` is a tmpfs), as NixOS's stage 2 does, not
/// when an activation starts multi-user.target again; and makes both roots of the
/// garbage collector, as NixOS does (`/nix/var/nix/gcroots/current-system`,
/// `booted-system`).
pub const BOOTED_SYSTEM_UNIT: &str = "[Unit]
Description=The booted system (as NixOS's stage 2 links it)
Before=nixfleet-agent.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '[ -e /run/booted-system ] && exit 0; p=$(readlink -f /nix/var/nix/profiles/system); ln -sfn $p /run/current-system; ln -sfn $p /run/booted-system; ln -sfn /run/current-system /nix/var/nix/gcroots/current-system; ln -sfn /run/booted-system /nix/var/nix/gcroots/booted-system'

[Install]
WantedBy=multi-user.target
";

/// Nix's own `nix-daemon.socket` (Nix's `misc/systemd`), which NixOS
/// enables: `NIX_REMOTE=daemon` in the agent's unit reaches the store
/// through it.
pub const NIX_DAEMON_SOCKET: &str = "[Unit]
Description=Nix Daemon Socket
Before=multi-user.target
RequiresMountsFor=/nix/store
ConditionPathIsReadWrite=/nix/var/nix/daemon-socket

[Socket]
ListenStream=/nix/var/nix/daemon-socket/socket

[Install]
WantedBy=sockets.target
";

/// Nix's own `nix-daemon.service` (Nix's `misc/systemd`), on the
/// container's Nix.
pub const NIX_DAEMON_SERVICE: &str = "[Unit]
Description=Nix Daemon
RequiresMountsFor=/nix/store
RequiresMountsFor=/nix/var
RequiresMountsFor=/nix/var/nix/db
ConditionPathIsReadWrite=/nix/var/nix/daemon-socket

[Service]
ExecStart=@/usr/bin/nix-daemon nix-daemon --daemon
KillMode=process
LimitNOFILE=1048576
TasksMax=1048576
Delegate=yes

[Install]
WantedBy=multi-user.target
";

/// The container's `nix.conf`: one root user, no sandbox, no binary cache
/// (what this machine can do); everything else Nix's defaults, as on NixOS
/// (flakes are the agent's `--extra-experimental-features`).
pub const NIX_CONF: &str = "sandbox = false
build-users-group =
substituters =
";
