//! End-to-end: the Home Manager switch path (`modules/home-manager`, macOS
//! without nix-darwin). The switch builds the configuration's
//! `activationPackage` (a fake `nix build` prints the next generation's store
//! path) and runs that generation's `activate`, which does what Home
//! Manager's does where it matters: it links itself as the profile's new
//! generation (`linkGeneration`), then reloads the changed launchd agent the
//! way `setupLaunchAgents` does: `launchctl bootout --wait` (SIGTERM to the
//! running agent, waited for), then `bootstrap` (here the test starts the
//! next agent process, as launchd would). The agent is killed in the middle
//! of its own switch (upstream's P1920); the switch must survive, and the
//! next agent reports its one status, under the rollback watchdog.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nixfleet_mock_dashboard::MockDashboard;

const HOST: &str = "mac-1";

/// The `activate` of a Home Manager generation: records itself, links its
/// generation as the profile's newest (unless the profile names it
/// already), then reloads the agent (bootout --wait of the process in the
/// pid file; the test plays launchd's bootstrap when `bootstrap.<n>`
/// appears).
fn activate_script(fakes: &Fakes, pid_file: &Path) -> String {
    let d = fakes.dir.display();
    let pid = pid_file.display();
    format!(
        r#"#!/bin/sh
echo "$0" >> {d}/activated
echo "Starting Home Manager activation"
gen=$(cd "$(dirname "$0")" && pwd -P)
profiles="$HOME/.local/state/nix/profiles"
if [ "$(readlink -f "$profiles/home-manager")" != "$gen" ]; then
  last=$(ls "$profiles" | sed -n 's/^home-manager-\([0-9]*\)-link$/\1/p' | sort -n | tail -1)
  n=$((last + 1))
  ln -s "$gen" "$profiles/home-manager-$n-link"
  ln -sfn "home-manager-$n-link" "$profiles/home-manager"
fi
echo "Activating setupLaunchAgents"
if pid=$(cat {pid} 2>/dev/null); then
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
fi
n=$(ls {d} | grep -c '^bootstrap\.')
touch {d}/bootstrap.$n
"#
    )
}

struct Setup {
    dash: MockDashboard,
    fx: Fixture,
    fakes: Fakes,
    profiles: PathBuf,
    pid_file: PathBuf,
    /// launchd's bootstraps seen so far.
    bootstraps: usize,
}

/// The hub's reconnect window in these tests (NixFleet's is 90 s): the
/// mock's, and the one the agent knows (NIXFLEET_HUB_RECONNECT_WINDOW_MS).
const WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

async fn setup() -> Setup {
    let dash = MockDashboard::start(nixfleet_mock_dashboard::Options {
        reconnect_timeout: WINDOW,
        ..Default::default()
    })
    .await
    .unwrap();
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let profiles = fx.tmp.path().join(".local/state/nix/profiles");
    let pid_file = fx.tmp.path().join("agent.pid");
    let first = fx.tmp.path().join("store/hm-gen-1");
    write_exec(&first.join("activate"), &activate_script(&fakes, &pid_file));
    std::fs::create_dir_all(&profiles).unwrap();
    std::os::unix::fs::symlink(&first, profiles.join("home-manager-1-link")).unwrap();
    std::os::unix::fs::symlink("home-manager-1-link", profiles.join("home-manager")).unwrap();
    // what the switch builds: the next generation
    let second = fx.tmp.path().join("store/hm-gen-2");
    write_exec(
        &second.join("activate"),
        &activate_script(&fakes, &pid_file),
    );
    std::fs::write(fakes.file("nix.out"), second.to_str().unwrap()).unwrap();
    Setup {
        dash,
        fx,
        fakes,
        profiles,
        pid_file,
        bootstraps: 0,
    }
}

impl Setup {
    fn agent(&self) -> AgentBuilder {
        AgentBuilder::new(&self.dash.ws_url(), HOST, &self.fx)
            .with_fakes(&self.fakes)
            .env("HOME", self.fx.tmp.path().to_str().unwrap())
            .env("NIXFLEET_SWITCH_TOOL", "home-manager")
            .env("NIXFLEET_HOME_MANAGER_USER", "alice")
            .env("NIXFLEET_PID_FILE", self.pid_file.to_str().unwrap())
            .env("NIXFLEET_ROLLBACK_DEADLINE", "60")
            .env(
                "NIXFLEET_HUB_RECONNECT_WINDOW_MS",
                &WINDOW.as_millis().to_string(),
            )
    }

    /// Waits for the reload's bootout of `agent` and plays launchd's
    /// bootstrap: the next agent process.
    async fn reloaded(&mut self, agent: &mut Agent) -> Agent {
        // SIGTERM: a clean exit, without the switch's status (reaped here,
        // as launchd reaps its job, so that bootout's wait ends)
        assert_eq!(agent.wait_exit(WAIT).await.code(), Some(0));
        file_appears(&self.fakes.file(&format!("bootstrap.{}", self.bootstraps))).await;
        self.bootstraps += 1;
        let next = self.agent().spawn();
        wait_for_pid_file(&self.pid_file, next.pid()).await;
        next
    }

    fn statuses(&self) -> Vec<serde_json::Value> {
        self.dash
            .frames(HOST, Some("status"))
            .into_iter()
            .map(|f| f.payload)
            .filter(|p| p["command"] == "switch")
            .collect()
    }

    fn current_generation(&self) -> String {
        std::fs::read_link(self.profiles.join("home-manager"))
            .unwrap()
            .display()
            .to_string()
    }
}

async fn wait_for_pid_file(path: &Path, pid: i32) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        != Some(pid.to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no pid file for {pid}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_home_manager_switch_survives_the_agent_reload_and_is_confirmed_once() {
    let mut s = setup().await;
    let mut a = s.agent().spawn();
    wait_for_pid_file(&s.pid_file, a.pid()).await;
    let (_, seq) = wait_register(&s.dash, HOST, 0).await;
    let d = s.dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    // the activation reloads the agent in the middle of its own switch
    let _b = s.reloaded(&mut a).await;
    let st = status_for(&s.dash, HOST, "switch", seq).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(
        st.payload["message"],
        "Switch succeeded; confirmed by the new generation"
    );
    assert_eq!(
        s.fakes.built_installable(),
        format!(
            "{}#homeConfigurations.\"alice@{HOST}\".activationPackage",
            s.fx.repo.display()
        )
    );
    assert!(s.fakes.read("activated").ends_with("hm-gen-2/activate\n"));
    assert_eq!(s.current_generation(), "home-manager-2-link");
    // the hub: a disconnect during a switch awaits the reconnect (P1920)
    let op = s
        .dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_home_manager_generation_that_fails_its_health_check_is_rolled_back() {
    let mut s = setup().await;
    host_check(
        &s.fx.repo,
        "fail.sh",
        "echo 'the mail client does not start'; exit 1",
    );
    let mut a = s.agent().spawn();
    wait_for_pid_file(&s.pid_file, a.pid()).await;
    let (_, seq) = wait_register(&s.dash, HOST, 0).await;
    let d = s.dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    // the switch's activation reloads the agent; the new one checks before
    // it registers, fails its check, and the rollback's activation (the
    // first generation's) reloads it again; the agent after that reports,
    // once the hub's reconnect window has passed
    let mut b = s.reloaded(&mut a).await;
    let _c = s.reloaded(&mut b).await;
    let st = status_for(&s.dash, HOST, "switch", seq).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    let message = st.payload["message"].as_str().unwrap();
    assert!(
        message.starts_with("rolled back to hm-gen-1: health check fail.sh failed"),
        "{message}"
    );
    let activated = s.fakes.read("activated");
    assert!(
        activated.ends_with("hm-gen-1/activate\n") && activated.contains("hm-gen-2/activate"),
        "{activated}"
    );
    assert_eq!(s.statuses().len(), 1, "reported once");
    // the dashboard never took it for a success
    let op = s.dash.op(d.command_id.as_deref().unwrap()).unwrap();
    assert_eq!(op.status, "TIMEOUT", "{op:?}");
    assert_no_violations(&s.dash);
}

/// An executable health check `hosts/<HOST>/health/<name>`.
fn host_check(repo: &Path, name: &str, body: &str) {
    write_exec(
        &repo.join(format!("hosts/{HOST}/health/{name}")),
        &format!("#!/bin/sh\n{body}\n"),
    );
}
