//! The metrics, in Prometheus' text format (0.0.4), rendered into one
//! string per scrape: the only allocation a scrape makes besides its
//! connection (the sources are read in place, under their locks). Names
//! follow comin's where one fits (`comin_build_info`, `comin_deployment_info`
//! → `nixfleet_agent_build_info`, `nixfleet_agent_last_switch_info`).

use std::fmt::Write as _;
use std::time::Duration;

use super::ledger::{Ledger, now};
use crate::outbound::Outbound;
use crate::state::AgentState;

/// What a scrape reads.
pub struct Sources<'a> {
    /// The agent's version.
    pub version: &'a str,
    /// The Nix version the operations run, once known (empty: not yet).
    pub nix_version: &'a str,
    /// The watchdog's period: systemd's or the agent's own; `None`: off.
    pub watchdog: Option<Duration>,
    pub state: &'a AgentState,
    pub out: &'a Outbound,
    pub ledger: &'a Ledger,
}

/// Writes a label value with `\`, `"` and newlines escaped.
fn label(s: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
}

fn head(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

fn one(s: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    head(s, name, kind, help);
    let _ = writeln!(s, "{name} {value}");
}

/// The whole exposition.
pub fn render(src: &Sources) -> String {
    let mut s = String::with_capacity(4096);
    let c = src.out.counters();

    head(
        &mut s,
        "nixfleet_agent_build_info",
        "gauge",
        "The agent's version and the Nix version its operations run.",
    );
    s.push_str("nixfleet_agent_build_info{version=\"");
    label(&mut s, src.version);
    s.push_str("\",nix_version=\"");
    label(&mut s, src.nix_version);
    s.push_str("\"} 1\n");

    one(
        &mut s,
        "nixfleet_agent_start_time_seconds",
        "gauge",
        "When the agent process started, in seconds since the epoch.",
        super::facts::started_at(),
    );
    one(
        &mut s,
        "nixfleet_agent_connected",
        "gauge",
        "Whether the dashboard is connected and has registered the agent (1) or not (0).",
        u8::from(src.out.is_connected()),
    );
    one(
        &mut s,
        "nixfleet_agent_reconnects_total",
        "counter",
        "Times the dashboard registered this agent process again after the first.",
        src.state.registrations().saturating_sub(1),
    );
    if let Some(at) = src.state.last_heartbeat_at() {
        one(
            &mut s,
            "nixfleet_agent_last_heartbeat_age_seconds",
            "gauge",
            "Seconds since the last heartbeat was written to a registered connection.",
            now().saturating_sub(at),
        );
    }
    one(
        &mut s,
        "nixfleet_agent_watchdog_seconds",
        "gauge",
        "The watchdog's period (systemd's WatchdogSec or the agent's own); 0 when off.",
        src.watchdog.map_or(0, |d| d.as_secs()),
    );
    src.state.with_snapshot(|snap| {
        one(
            &mut s,
            "nixfleet_agent_needs_reboot",
            "gauge",
            "Whether the host needs a reboot to run what is installed (NixOS).",
            u8::from(snap.reboot.as_ref().is_some_and(|r| r.needed())),
        );
        head(
            &mut s,
            "nixfleet_agent_generation_info",
            "gauge",
            "The configuration repository's commit the host is on.",
        );
        s.push_str("nixfleet_agent_generation_info{generation=\"");
        label(&mut s, &snap.generation);
        s.push_str("\"} 1\n");
    });
    src.ledger.with_history(|h| {
        head(
            &mut s,
            "nixfleet_agent_operations_total",
            "counter",
            "Operations that ended, by command and outcome (kept across the agent's restarts).",
        );
        for (command, outcomes) in &h.counts {
            for (outcome, n) in outcomes {
                s.push_str("nixfleet_agent_operations_total{command=\"");
                label(&mut s, command);
                s.push_str("\",outcome=\"");
                label(&mut s, outcome);
                let _ = writeln!(s, "\"}} {n}");
            }
        }
        one(
            &mut s,
            "nixfleet_agent_automatic_rollbacks_total",
            "counter",
            "Switches the watchdog rolled back (kept across the agent's restarts).",
            h.automatic_rollbacks,
        );
        if let Some(last) = &h.last_switch {
            head(
                &mut s,
                "nixfleet_agent_last_switch_info",
                "gauge",
                "The last switch-like operation: its command and outcome (ok, error, stopped, rolled-back).",
            );
            s.push_str("nixfleet_agent_last_switch_info{command=\"");
            label(&mut s, &last.command);
            s.push_str("\",outcome=\"");
            label(&mut s, &last.outcome);
            s.push_str("\"} 1\n");
            one(
                &mut s,
                "nixfleet_agent_last_switch_success",
                "gauge",
                "Whether the last switch-like operation succeeded (1) or not (0).",
                u8::from(last.outcome == "ok"),
            );
            one(
                &mut s,
                "nixfleet_agent_last_switch_timestamp_seconds",
                "gauge",
                "When the last switch-like operation ended, in seconds since the epoch.",
                last.finished_at,
            );
            if let Some(d) = last.duration_secs {
                one(
                    &mut s,
                    "nixfleet_agent_last_switch_duration_seconds",
                    "gauge",
                    "How long the last switch-like operation ran.",
                    format_args!("{d:.3}"),
                );
            }
        }
    });
    one(
        &mut s,
        "nixfleet_agent_output_lines_total",
        "counter",
        "Output lines of commands streamed to the dashboard.",
        c.lines,
    );
    one(
        &mut s,
        "nixfleet_agent_output_bytes_total",
        "counter",
        "Bytes of those lines.",
        c.bytes,
    );
    one(
        &mut s,
        "nixfleet_agent_output_lines_dropped_total",
        "counter",
        "Output lines dropped because the dashboard did not keep up (the command's log has them).",
        c.dropped,
    );
    one(
        &mut s,
        "nixfleet_agent_output_queued_bytes",
        "gauge",
        "Output bytes waiting to be written to the dashboard.",
        c.queued_bytes,
    );
    one(
        &mut s,
        "nixfleet_agent_outbox_frames",
        "gauge",
        "Frames (statuses and the like) waiting in the outbox.",
        c.outbox,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }
}
