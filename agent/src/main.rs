//! `nixfleet-agent`: command line, logging and signals; the rest is in the library.

use std::process::ExitCode;

use nixfleet_agent::config::{self, Config, EXIT_CONFIG, LogLevel};
use nixfleet_agent::{VERSION, host, logfile};

const HELP: &str = "\
nixfleet-agent — keeps this host connected to the NixFleet dashboard

Usage:
  nixfleet-agent            run; configuration comes from the environment
  nixfleet-agent --check    validate the configuration, print what was detected, exit
  nixfleet-agent status [--json] [--state-dir DIR]
                            what the agent observed: connection, last operations,
                            systems, watchdog, logs (works while it is stopped)
  nixfleet-agent --version  print the version
  nixfleet-agent --help     print this help

Required: NIXFLEET_URL (ws:// or wss://), a token ($CREDENTIALS_DIRECTORY/token,
NIXFLEET_TOKEN_FILE or NIXFLEET_TOKEN), and NIXFLEET_REPO_URL or NIXFLEET_REPO_DIR.
Every variable: docs/configuration.md.

Exit status: 0 stopped by a signal, 78 invalid configuration,
101 restart requested (after a switch, or the `restart` command).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut check = false;
    match args.first().map(String::as_str) {
        None => {}
        Some("--version" | "-V") => {
            println!(
                "nixfleet-agent {VERSION} (speaks the NixFleet {} dashboard protocol)",
                nixfleet_agent::config::PROTOCOL_RELEASE
            );
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("--check") => check = true,
        Some("status") => {
            return exit(nixfleet_agent::observe::report::status_main(&args[1..]));
        }
        Some(flag) if flag == nixfleet_agent::commands::SUPERVISE_FLAG => {
            return exit(nixfleet_agent::commands::supervise_main(&args[1..]));
        }
        Some(flag) if flag == nixfleet_agent::commands::ACTIVATE_FLAG => {
            return exit(nixfleet_agent::commands::activate_main(&args[1..]));
        }
        Some(other) => {
            eprintln!("nixfleet-agent: unknown argument {other:?}; see --help");
            return exit(2);
        }
    }
    if args.len() > 1 {
        eprintln!("nixfleet-agent: unexpected extra arguments; see --help");
        return exit(2);
    }

    one_malloc_arena();
    let config = match Config::from_process_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nixfleet-agent: invalid configuration: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    if check {
        return exit(print_check(&config));
    }
    init_logging(config.log_level);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // A few blocking threads: the host facts, a reconnect's DNS lookup and
        // a command's 10-60 s checks (git, signatures, units) must not queue
        // behind each other. Idle ones end after tokio's keep-alive (10 s), so
        // an idle agent keeps none of them.
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixfleet-agent: cannot start the runtime: {e}");
            return exit(1);
        }
    };
    let pid_file = config.pid_file.clone();
    let code = runtime.block_on(async {
        tracing::info!(
            version = VERSION,
            reports = %config.reported_version,
            host = %config.hostname,
            "nixfleet-agent starting"
        );
        tokio::spawn(logfile::reopen_on_hangup(config.log_file.clone()));
        if let (Some(path), Some(max)) = (&config.log_file, config.log_max_bytes) {
            tokio::spawn(logfile::bound_size(path.clone(), max));
        }
        if let Some(path) = &pid_file
            && let Err(e) = logfile::write_pid_file(path)
        {
            tracing::warn!("cannot write the pid file {}: {e}", path.display());
        }
        nixfleet_agent::run(config, shutdown_signal()).await
    });
    if let Some(path) = &pid_file {
        logfile::remove_pid_file(path);
    }
    // Don't wait for blocking reads (e.g. a hung disk) on the way out.
    runtime.shutdown_background();
    exit(code)
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; only a kill stops the agent");
            std::future::pending::<()>().await;
        }
    }
}

fn init_logging(level: LogLevel) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    let filter = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    // Quiet the libraries: our own events at `level`, theirs at warn at most.
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(filter.min(LevelFilter::WARN))
        .with_target("nixfleet_agent", filter);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(journald.with_syslog_identifier("nixfleet-agent".into()))
            .with(targets)
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false),
        )
        .with(targets)
        .init();
}

fn print_check(config: &Config) -> i32 {
    let mut metrics = host::MetricsReader::new(config.stasysmo_dir.clone());
    let (sample, source) = metrics.sample();
    let generation = host::git_head_commit(&config.repo_dir);
    let mode = match &config.repo_mode {
        config::RepoMode::Isolated { url } => {
            format!("isolated (own clone of {})", config::redact_repo_url(url))
        }
        config::RepoMode::Legacy => "legacy (existing checkout)".to_string(),
    };
    println!("configuration OK");
    println!("  agent version:    {VERSION}");
    println!(
        "  reported version: {} (the agent_version the dashboard compares with its release)",
        config.reported_version
    );
    println!(
        "  dashboard:        {}",
        nixfleet_agent::config::redact_url(&config.url)
    );
    println!(
        "  token:            {} (from the configured source)",
        config.token
    );
    println!("  hostname:         {}", config.hostname);
    println!("  host type:        {}", config.host_type.as_str());
    println!(
        "  OS version:       {}",
        or_unknown(&host::os_version(config.host_type))
    );
    println!(
        "  nixpkgs version:  {}",
        or_unknown(&host::nixpkgs_version(config.nixpkgs_version.as_deref()))
    );
    println!("  repository:       {} — {mode}", config.repo_dir.display());
    println!(
        "  commits:          {}{}",
        if config.trust.require_signed {
            format!(
                "signed by a trusted key only ({} key file(s))",
                config.trust.signers.len()
            )
        } else {
            "signatures not required".to_string()
        },
        match (&config.repo_mode, config.trust.allow_force_push) {
            (config::RepoMode::Isolated { .. }, false) => "; force-pushed history refused",
            (config::RepoMode::Isolated { .. }, true) => "; force-pushed history followed",
            (config::RepoMode::Legacy, _) => "",
        }
    );
    println!(
        "  rollback:         {}",
        if config.rollback.enabled {
            format!(
                "a switch not confirmed within {} s is rolled back (health checks: {}/hosts/{}/health/*.sh)",
                config.rollback.deadline.as_secs(),
                config.repo_dir.display(),
                config.hostname
            )
        } else {
            "off (NIXFLEET_ROLLBACK_ON_FAILURE=0)".to_string()
        }
    );
    println!(
        "  ssh host keys:    {}",
        if config.ssh.require_known_hosts {
            format!("only those in {}", config.ssh.system_known_hosts.display())
        } else {
            format!(
                "strict for servers in {}, trusted on first use otherwise",
                config.ssh.system_known_hosts.display()
            )
        }
    );
    println!(
        "  generation:       {}",
        generation
            .as_deref()
            .unwrap_or("unknown (no git checkout yet)")
    );
    println!(
        "  switch:           nix build {}, then activate it ({})",
        nixfleet_agent::commands::system_installable(
            config.switch_tool,
            &config.flake,
            &config.hostname
        ),
        match config.switch_tool {
            config::SwitchTool::NixosRebuild => "switch-to-configuration switch",
            config::SwitchTool::DarwinRebuild => "the system's activate",
            config::SwitchTool::HomeManager => "the generation's activate",
        }
    );
    let env = nixfleet_agent::exec::env::ChildEnv::for_config(config);
    println!(
        "  nix:              {}",
        match host::require_nix(env.vars()) {
            Ok(nix) => format!(
                "{} (Nix {}; the agent needs {} or later)",
                nix.line,
                nix.number(),
                host::nix_minimum()
            ),
            Err(why) => format!(
                "{why}: switch, pull-switch, update, force-rebuild, rollback and refresh-system are refused"
            ),
        }
    );
    println!("  heartbeat:        every {} s", config.interval_secs);
    println!("  metrics source:   {}", source.as_str());
    if let Some(m) = sample {
        println!(
            "  metrics now:      cpu {:.1} %, ram {:.1} %, swap {:.1} %, load {:.2}",
            m.cpu, m.ram, m.swap, m.load
        );
    }
    println!("  state directory:  {}", config.state_dir.display());
    0
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// glibc gives each thread that allocates an arena of its own, and the
/// agent's few threads (blocking work, run logs, the hash) allocate little
/// and rarely: their arenas kept about 0.2 MiB resident for the life of the
/// process (idle RSS 0.75 → 0.56 MiB anonymous, docs/benchmarks.md). One
/// arena for all, set before any thread starts.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no other thread
    // exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
