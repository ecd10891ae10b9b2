//! `nixfleet-mock-dashboard`: the mock dashboard as a program.
//!
//! `serve` (the default) runs a dashboard until SIGTERM/SIGINT, for NixOS VM
//! tests driven with `curl`; `demo` shows a real agent at work. See
//! `docs/mock-dashboard.md`.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

const USAGE: &str = "\
usage:
  nixfleet-mock-dashboard [serve] [--listen ADDR] [--token TOKEN]... [--token-file FILE]...
  nixfleet-mock-dashboard demo [--agent PATH]
  nixfleet-mock-dashboard --help

serve  listen on ADDR (default 127.0.0.1:8000) for agents on /ws and the control
       API on /api; accept the given tokens (default: test-token). A token file
       holds the bare token or a line NIXFLEET_TOKEN=<token>. Stops on SIGTERM/SIGINT.
demo   start a dashboard and the agent (--agent, else $NIXFLEET_AGENT_BIN, else
       nixfleet-agent next to this program, else on PATH) against a throw-away
       configuration repository, and print what crosses the wire. Exits 0 when
       every step got its answer without a protocol violation, 1 otherwise, 2
       when the agent is not found.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("serve") => ("serve", &args[1..]),
        Some("demo") => ("demo", &args[1..]),
        Some(flag) if flag.starts_with('-') => ("serve", &args[..]),
        None => ("serve", &args[..]),
        Some(other) => {
            eprintln!("nixfleet-mock-dashboard: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nixfleet-mock-dashboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        "demo" => cli::demo::parse(rest).map(|opts| runtime.block_on(cli::demo::run(opts))),
        _ => cli::serve::parse(rest).map(|opts| runtime.block_on(cli::serve::run(opts))),
    };
    match result {
        Ok(code) => code,
        Err(usage_error) => {
            eprintln!("nixfleet-mock-dashboard: {usage_error}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
