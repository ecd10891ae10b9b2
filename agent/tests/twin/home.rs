//! The twin's Home Manager user: `alice` (uid 1000), lingering, so that
//! logind starts her `systemd --user` at boot; her Home Manager generations
//! are built by the container's real Nix (through its daemon: she cannot
//! write the store) from a flake in her own repository
//! (`/home/alice/nixcfg`), and each carries the Home Manager module's own
//! user units (`checks/twin/home-manager/`, rendered from the module).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{copy_tree, symlink, write};
use crate::common::{git, write_exec};

/// The user, her uid, and the name her agent reports (the reference's
/// `hostname`).
pub const USER: &str = "alice";
pub const UID: u32 = 1000;
pub const HOST: &str = "alice-twin";
/// Her configuration repository, inside the container.
pub const REPO: &str = "/home/alice/nixcfg";

/// One Home Manager generation of the flake.
#[derive(Debug, Clone, Default)]
pub struct Home {
    pub name: String,
    /// A drop-in for the agent's user unit.
    pub agent_drop_in: Option<String>,
}

impl Home {
    pub fn named(name: &str) -> Home {
        Home {
            name: name.to_string(),
            ..Home::default()
        }
    }

    pub fn agent_drop_in(mut self, text: &str) -> Home {
        self.agent_drop_in = Some(text.to_string());
        self
    }

    /// Writes it as the flake's generation and commits it, as root on her
    /// repository (`safe.directory`), which stays hers.
    pub fn commit(&self, repo: &Path) {
        let spec = json!({
            "name": self.name,
            "dropIn": self.agent_drop_in.clone().unwrap_or_default(),
        });
        write(&repo.join("home.json"), &format!("{spec:#}\n"));
        git(repo, &["-c", "safe.directory=*", "add", "-A"]);
        git(
            repo,
            &[
                "-c",
                "safe.directory=*",
                "commit",
                "-qm",
                &format!("home {}", self.name),
            ],
        );
        chown(repo);
    }
}

/// `chown -R alice:alice path` (symlinks themselves).
pub fn chown(path: &Path) {
    let status = Command::new("chown")
        .args(["-Rh", &format!("{UID}:{UID}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {}", path.display());
}

/// The flake of her repository: her Home Manager generation, a real
/// derivation whose `home-files` hold her user units.
fn flake() -> String {
    let system = crate::common::realnix::nix_system();
    format!(
        r#"{{
  outputs =
    {{ self }}:
    let
      spec = builtins.fromJSON (builtins.readFile ./home.json);
      generation = builtins.derivation {{
        name = "home-manager-generation";
        system = "{system}";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        generationName = spec.name;
        inherit (spec) dropIn;
        args = [
          "-c"
          ''
            set -e
            units=$out/home-files/.config/systemd/user
            mkdir -p $out/home-path $out/home-files/.config/systemd
            cp ${{./activate}} $out/activate
            chmod +x $out/activate
            cp -r ${{./units}} $units
            chmod -R u+w $units
            echo "$generationName" > $out/generation-name
            if [ -n "$dropIn" ]; then
              mkdir -p $units/nixfleet-agent.service.d
              printf '%s' "$dropIn" > $units/nixfleet-agent.service.d/generation.conf
            fi
          ''
        ];
      }};
    in
    {{
      homeConfigurations."{USER}@{HOST}".activationPackage = generation;
    }};
}}
"#
    )
}

/// A generation's `activate`, doing what Home Manager's does where the
/// agent looks: the profile where Home Manager's `setupVars` puts it, set
/// with `nix-env`; the generation's files linked into the home (here the
/// user units); then, when the user manager runs (found as Home Manager's
/// `reloadSystemd` finds it), reloaded, as `sd-switch` does, which leaves a
/// running unit marked `X-SwitchMethod=keep-old` (the agent) alone.
const ACTIVATE: &str = r#"#!/bin/sh
set -e
gen=$(cd "$(dirname "$0")" && pwd -P)
state=${XDG_STATE_HOME:-$HOME/.local/state}
global=${NIX_STATE_DIR:-/nix/var/nix}/profiles/per-user/$USER
if [ -d "$state/nix/profiles" ]; then dir=$state/nix/profiles
elif [ -d "$global" ]; then dir=$global
else echo "Could not find suitable profile directory, tried $state/nix/profiles and $global" >&2; exit 1
fi
echo "Starting Home Manager activation"
nix-env --profile "$dir/home-manager" --set "$gen"
mkdir -p "$HOME/.config/systemd"
ln -sfn "$gen/home-files/.config/systemd/user" "$HOME/.config/systemd/user"
cat "$gen/generation-name" > "$HOME/.hm-generation"
# (Home Manager's reloadSystemd: its own XDG_RUNTIME_DIR where unset)
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
status=$(systemctl --user is-system-running 2>&1 || true)
if [ "$status" = running ] || [ "$status" = degraded ]; then
  systemctl --user daemon-reload
  echo "Reloaded the user's systemd; units marked keep-old keep running"
else
  echo "User systemd daemon not running. Skipping reload."
fi
"#;

/// Sets her up in the container's root before it boots: her account, her
/// linger, her token file, her home with Nix's per-user profile directory,
/// and her repository with the flake (generation `a` committed); the user
/// units of every generation are the module's plus `drop_in` (the test's
/// dashboard and timing). Returns her repository, as seen from here.
pub fn prepare(root: &Path, drop_in: &str, token: &str) -> PathBuf {
    let etc = root.join("etc");
    append(
        &etc.join("passwd"),
        &format!("{USER}:x:{UID}:{UID}:Alice:/home/{USER}:/bin/sh\n"),
    );
    append(&etc.join("group"), &format!("{USER}:x:{UID}:\n"));
    append(&etc.join("shadow"), &format!("{USER}:!:20000::::::\n"));
    // logind starts a lingering user's manager at boot
    write(&root.join("var/lib/systemd/linger").join(USER), "");
    let home = root.join("home").join(USER);
    write(&home.join(".config/nixfleet/token"), token);
    std::fs::create_dir_all(home.join(".local/state/nix/profiles")).unwrap();

    let repo = home.join("nixcfg");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(&repo.join("flake.nix"), &flake());
    write(
        &repo.join("flake.lock"),
        "{\"nodes\":{\"root\":{}},\"root\":\"root\",\"version\":7}\n",
    );
    write_exec(&repo.join("activate"), ACTIVATE);
    let units = repo.join("units");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../checks/twin/home-manager"),
        &units,
    );
    std::fs::remove_file(units.join("reference.nix")).unwrap();
    write(&units.join("nixfleet-agent.service.d/twin.conf"), drop_in);
    // Home Manager's links for `Install.WantedBy = [ "default.target" ]`
    for unit in ["nixfleet-agent.service", "nixfleet-agent-token.path"] {
        symlink(
            &format!("../{unit}"),
            &units.join("default.target.wants").join(unit),
        );
    }
    Home::named("a").commit(&repo);
    chown(&home);
    std::fs::set_permissions(
        home.join(".config/nixfleet/token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    repo
}

/// Before the first boot, in the container (after the first system): her
/// first generation built and activated (as root, with no user manager
/// running yet), then her home made hers again.
pub const FIRST_HOME: &str = r#"
gen=$(nix --extra-experimental-features 'nix-command flakes' build --no-link --print-out-paths "path:/home/alice/nixcfg#homeConfigurations.\"alice@alice-twin\".activationPackage")
HOME=/home/alice USER=alice "$gen/activate" >&2
chown -Rh 1000:1000 /home/alice
"#;

fn append(path: &Path, line: &str) {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    text.push_str(line);
    std::fs::write(path, text).unwrap();
}
