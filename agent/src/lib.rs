//! The NixFleet agent: keeps one WebSocket open to the NixFleet dashboard,
//! reports the host in heartbeats and runs the fleet operations the dashboard
//! asks for, streaming their output live.
//!
//! The binary (`main.rs`) only parses the command line, sets up logging and
//! signals, and calls [`run`]. The wire contract is in [`protocol`]; the
//! configuration in [`config`] (documented in `docs/configuration.md`).

pub mod atomic;
pub mod backoff;
pub mod bounded;
pub mod commands;
pub mod compartments;
pub mod config;
pub mod connection;
pub mod deploy;
pub mod exec;
pub mod heartbeat;
pub mod host;
pub mod logfile;
pub mod observe;
pub mod outbound;
pub mod protocol;
pub mod register_hold;
pub mod state;
pub mod tls;
pub mod undelivered;
pub mod util;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::connection::{Connection, Identity, Stop};
use crate::protocol::Register;
use crate::state::AgentState;

pub use config::VERSION;

/// How long the first connection waits for start-up work (the initial clone).
const STARTUP_HEAD_START: std::time::Duration = std::time::Duration::from_secs(60);

/// The static part of `register`: everything but generation and nixpkgs version.
pub fn identity(config: &Config, freshness: host::Freshness) -> Identity {
    Identity {
        register: Register {
            hostname: config.hostname.clone(),
            host_type: config.host_type.as_str().to_string(),
            agent_version: config.reported_version.clone(),
            os_version: host::os_version(config.host_type),
            nixpkgs_version: String::new(),
            generation: String::new(),
            theme_color: config.theme_color.clone(),
            heartbeat_interval: config.interval_secs,
            location: config.location.clone(),
            device_type: config.device_type.clone(),
            // a credential in the URL never reaches the dashboard
            repo_url: config::redact_repo_url(config.repo_url()),
            repo_dir: config.repo_dir.display().to_string(),
            freshness,
        },
        binary_hash: host::BinaryHash::default(),
    }
}

/// Runs the agent until a signal or an exit request; returns the exit status.
///
/// `signal` resolves when SIGTERM/SIGINT arrives.
pub async fn run(config: Config, signal: impl std::future::Future<Output = ()>) -> i32 {
    state::process_started();
    let config = Arc::new(config);
    // Private state: the clone, switch records and command logs live here.
    // (systemd's StateDirectory and the darwin activation create it 0700 too.)
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
        {
            tracing::warn!("cannot create {}: {e}", config.state_dir.display());
        }
    }
    let (out, rx) = outbound::lanes(config.timing.stall_timeout);

    // Facts that cost a disk read: the first snapshot before the first register,
    // off the runtime thread; the binary's hash from the cache, else below.
    let mut metrics = host::MetricsReader::new(config.stasysmo_dir.clone());
    let cfg = config.clone();
    let first = tokio::task::spawn_blocking(move || {
        let snapshot = heartbeat::read_snapshot(&cfg, &mut metrics);
        let identity = identity(&cfg, host::binary_freshness(&cfg.state_dir));
        let store = compartments::Store::load(&cfg.state_dir);
        let undelivered = undelivered::load(&cfg.state_dir);
        let ledger = observe::ledger::Ledger::load(&cfg.state_dir);
        (snapshot, identity, metrics, store, undelivered, ledger)
    });
    let (snapshot, identity, metrics, store, undelivered, ledger) = match first.await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("reading host facts failed: {e}");
            return 1;
        }
    };
    hash_in_background(&identity, &config.state_dir);
    // statuses an earlier process could not deliver go first
    out.restore(undelivered);
    tokio::spawn(undelivered::persist_loop(
        out.clone(),
        config.state_dir.clone(),
    ));
    let store = Arc::new(store);
    let state = Arc::new(AgentState::with_compartments(store.clone()));
    state.publish(snapshot);
    tokio::spawn(heartbeat::refresher(config.clone(), state.clone(), metrics));
    let ledger = Arc::new(ledger);
    tokio::spawn(observe::liveness::run(
        config.clone(),
        state.clone(),
        out.clone(),
        ledger.clone(),
    ));
    tokio::spawn(compartments::persist_loop(store.clone()));

    let commands =
        commands::Commands::with_ledger(config.clone(), state.clone(), out.clone(), ledger.clone());
    tokio::spawn(compartments::lock_loop(
        store,
        config.repo_dir.clone(),
        commands.child_env().vars().to_vec(),
    ));
    if let Some(addr) = config.metrics_listen {
        let endpoint = Arc::new(observe::serve::Endpoint {
            state: state.clone(),
            out: out.clone(),
            ledger: ledger.clone(),
            watchdog: observe::notify::systemd_watchdog().or(config.watchdog),
            nix_version: Default::default(),
        });
        let env = commands.child_env().vars().to_vec();
        tokio::spawn(observe::serve::start(addr, endpoint, env));
    }
    // On a first start in isolated mode this clones the repository. Give it a
    // head start so that the first `register` already carries the generation;
    // a clone slower than that goes on in the background while the agent
    // connects (heartbeats then bring the generation).
    let mut startup = {
        let commands = commands.clone();
        tokio::spawn(async move { commands.startup().await })
    };
    tokio::pin!(signal);
    tokio::select! {
        _ = &mut startup => {}
        _ = tokio::time::sleep(STARTUP_HEAD_START) => {
            tracing::info!("the initial clone is still running; connecting meanwhile");
        }
        _ = &mut signal => {
            observe::notify::stopping("shutdown");
            commands.shutdown(false).await;
            write_state_on_exit(&config, &state, &out, &ledger).await;
            return 0;
        }
    }
    // initialised: the configuration read, the state and the switches of
    // earlier processes recovered (the first start's clone done or given
    // its head start); the dashboard need not have answered
    observe::notify::ready(&observe::liveness::status_line(
        false,
        observe::facts::dashboard_host(&config.url),
        state.running().map(|r| r.command).as_deref(),
    ));
    let sink: connection::CommandSink = {
        let commands = commands.clone();
        Arc::new(move |msg| commands.handle(msg))
    };

    // The register never waits for the hash (host/freshness.rs).
    let (stop_tx, stop_rx) = watch::channel(None);
    let conn = Connection::new(
        config.clone(),
        state.clone(),
        out.clone(),
        rx,
        identity,
        sink,
    );
    let connection = tokio::spawn(conn.run(stop_rx));

    let stop = tokio::select! {
        _ = signal => Stop { code: 0, reason: "shutdown" },
        code = state.exit_requested() => Stop { code, reason: "restart" },
    };
    tracing::info!("stopping ({})", stop.reason);
    observe::notify::stopping(stop.reason);
    // the running command first, while the socket is still open: its status
    // (a switch stopped before its activation: an error) reaches the
    // dashboard before the agent leaves, not from the next process, whose
    // reconnect the hub would take for the switch's success
    commands.shutdown(stop.code == config::EXIT_RESTART).await;
    let _ = stop_tx.send(Some(stop));
    let stop = match connection.await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("connection task failed: {e}");
            stop
        }
    };
    write_state_on_exit(&config, &state, &out, &ledger).await;
    stop.code
}

/// The compartments, the undelivered statuses and what the agent observed,
/// written before the process exits, however it exits.
async fn write_state_on_exit(
    config: &Arc<Config>,
    state: &Arc<AgentState>,
    out: &Arc<outbound::Outbound>,
    ledger: &Arc<observe::ledger::Ledger>,
) {
    let compartments = state.compartments().clone();
    let (c, s, o, l) = (config.clone(), state.clone(), out.clone(), ledger.clone());
    let flushed = tokio::task::spawn_blocking(move || {
        compartments.flush();
        undelivered::flush(&o, &c.state_dir);
        observe::liveness::write_on_exit(&c, &s, &o, &l);
    });
    if let Err(e) = flushed.await {
        tracing::warn!("writing the state on exit failed: {e}");
    }
}

/// Hashes the binary on a thread of its own when the cache did not have the
/// hash (it may take seconds for a large debug build, and must not hold the
/// blocking pool the host facts use); the hash is in `identity` once done.
/// On Linux the thread runs under `SCHED_IDLE`: it takes only CPU time nothing
/// else wants, so it never slows the start-up and the first `register` (on a
/// one-core board it would otherwise take turns with them).
fn hash_in_background(identity: &Identity, state_dir: &std::path::Path) {
    if identity.register.freshness.binary_hash.is_some() {
        return;
    }
    let (cell, dir) = (identity.binary_hash.clone(), state_dir.to_path_buf());
    let spawned = std::thread::Builder::new()
        .name("binary-hash".into())
        .spawn(move || {
            background_priority();
            if let Some(hash) = host::hash_running_binary(&dir) {
                cell.set(hash);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot hash the agent binary: {e}");
    }
}

/// Lowers the calling thread to `SCHED_IDLE` (Linux; elsewhere nothing).
fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_param is plain integers (more of them on musl), for
        // which all zeroes is valid (SCHED_IDLE wants priority 0); the call
        // sets the calling thread's (pid 0) policy and shares no memory.
        let rc = unsafe {
            let param: libc::sched_param = std::mem::zeroed();
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        };
        if rc != 0 {
            tracing::debug!(
                "cannot lower the hash thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
