//! `faultctl verify ID`: the agent probes the fault; one table row per probed pair.
use std::process::ExitCode;

use fault_api::{Outcome, Verification, client::Client};

use crate::output::{CliError, Output, print_json, table};

/// Exit code of a verification that did not verify the fault.
pub const NOT_VERIFIED: u8 = 3;

/// Runs the verification; exit 0 when verified, [`NOT_VERIFIED`] otherwise.
pub fn run(client: &Client, out: Output, id: &str) -> Result<ExitCode, CliError> {
    let v = client.verify(id)?;
    print(out, &v);
    Ok(match v.outcome {
        Outcome::Verified => ExitCode::SUCCESS,
        Outcome::NotVerified => ExitCode::from(NOT_VERIFIED),
    })
}

/// The report: a table per pair and the outcome, or the JSON.
pub fn print(out: Output, v: &Verification) {
    if out == Output::Json {
        return print_json(v);
    }
    let mut rows = vec![
        [
            "FROM",
            "TO",
            "CONTROL",
            "EXPECTED",
            "REACHABLE",
            "LOSS",
            "MIN-RTT",
            "RESULT",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &v.pairs {
        let m = &p.measured;
        rows.push(vec![
            format!("{} ({})", p.from, p.from_ip),
            format!("{}:{}", p.to_ip, p.port),
            p.control_ip.map_or("-".into(), |c| {
                format!("{c} {}", m.control.as_deref().unwrap_or("-"))
            }),
            p.expected.clone(),
            if m.reachable { "yes" } else { "no" }.into(),
            format!(
                "{:.0}% ({}/{})",
                m.loss_percent,
                m.echo_sent - m.echo_received,
                m.echo_sent
            ),
            m.min_rtt_ms.map_or("-".into(), |r| format!("{r:.2}ms")),
            p.outcome.to_string(),
            p.reason.clone(),
        ]);
    }
    table(rows);
    println!(
        "{}: {}{} ({} probe packets, mark {:#x}, {} ms)",
        v.fault_id,
        v.outcome,
        v.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        v.probe_packets,
        v.probe_mark,
        v.took_ms
    );
}
