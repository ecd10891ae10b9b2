//! `demo`: find the agent, run [`nixfleet_mock_dashboard::demo`], turn its
//! outcome into the exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use nixfleet_mock_dashboard::demo;

use super::option_value;

/// Parsed `demo` arguments.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DemoOptions {
    agent: Option<PathBuf>,
}

/// Parse `[--agent PATH]`.
pub(crate) fn parse(args: &[String]) -> Result<DemoOptions, String> {
    let mut agent = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = option_value("--agent", arg, &mut it)? {
            agent = Some(PathBuf::from(v));
        } else {
            return Err(format!("unknown argument `{arg}`"));
        }
    }
    Ok(DemoOptions { agent })
}

/// Run the demo: 0 when every step got its answer without a protocol
/// violation, 1 otherwise, 2 when the agent binary is not found.
pub(crate) async fn run(opts: DemoOptions) -> ExitCode {
    let agent = match demo::find_agent(opts.agent) {
        Ok(a) => a,
        Err(hint) => {
            eprintln!("nixfleet-mock-dashboard demo: {hint}");
            return ExitCode::from(2);
        }
    };
    let outcome = demo::run(agent).await;
    if let Some(e) = &outcome.setup_error {
        eprintln!("nixfleet-mock-dashboard demo: {e}");
    }
    if outcome.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_args() {
        assert_eq!(parse(&[]), Ok(DemoOptions { agent: None }));
        let a = vec!["--agent".to_owned(), "/x/agent".to_owned()];
        assert_eq!(
            parse(&a),
            Ok(DemoOptions {
                agent: Some(PathBuf::from("/x/agent"))
            })
        );
        assert_eq!(
            parse(&["--agent=/y".to_owned()]),
            Ok(DemoOptions {
                agent: Some(PathBuf::from("/y"))
            })
        );
        assert!(parse(&["--nope".to_owned()]).is_err());
        assert!(parse(&["--agent".to_owned()]).is_err());
    }
}
