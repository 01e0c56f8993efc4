//! Rendering: one function per shape, in the format the user chose; errors too.
use std::process::ExitCode;

use clap::ValueEnum;
use fault_api::{ApiError, Fault, client::ClientError};

/// `-o table|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags, caught before calling the agent (exit 2).
    Usage(ApiError),
    /// The agent said no, or could not be reached (exit 1).
    Client(ClientError),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// Prints the error in the chosen format (on stderr) and returns the exit code.
pub fn fail(out: Output, e: CliError) -> ExitCode {
    let (code, error, status) = match e {
        CliError::Usage(err) => (2, err, None),
        CliError::Client(ClientError::Api { status, error }) => (1, error, Some(status)),
        CliError::Client(ClientError::Transport(m)) => (1, ApiError::new("unreachable", m), None),
    };
    match out {
        Output::Json => match serde_json::to_string_pretty(&fault_api::ErrorBody {
            error: error.clone(),
        }) {
            Ok(s) => eprintln!("{s}"),
            Err(_) => eprintln!("error: {}", error.message),
        },
        Output::Table => {
            let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            eprintln!("error{status}: {}", error.message);
        }
    }
    ExitCode::from(code)
}

fn counters(c: &fault_api::Counters) -> String {
    format!(
        "matched {} dropped {} corrupted {} duplicated {} delayed {}",
        c.matched, c.dropped, c.corrupted, c.duplicated, c.delayed
    )
}

fn ago_or_in(t: jiff::Timestamp) -> String {
    let secs = t.duration_since(jiff::Timestamp::now()).as_secs();
    if secs >= 0 {
        format!("in {secs}s")
    } else {
        format!("{}s ago", -secs)
    }
}

pub fn action(f: &Fault) -> String {
    let s = &f.spec;
    let mut parts = Vec::new();
    if let Some(p) = s.partition {
        parts.push(format!("partition({p})"));
    }
    if let Some(p) = s.loss_percent {
        parts.push(format!("loss {p}"));
    }
    if let Some(p) = s.corrupt_percent {
        parts.push(format!("corrupt {p}"));
    }
    if let Some(d) = s.delay {
        parts.push(format!("delay {d}"));
    }
    if let Some(p) = s.duplicate_percent {
        parts.push(format!("duplicate {p}"));
    }
    if let Some(r) = s.rate {
        parts.push(format!("rate {r}"));
    }
    parts.join(",")
}

pub fn table(rows: Vec<Vec<String>>) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

impl Output {
    /// A list of faults.
    pub fn faults(self, faults: &[Fault]) {
        if self == Output::Json {
            return print_json(&serde_json::json!({ "faults": faults }));
        }
        let mut rows = vec![
            [
                "ID",
                "NAMESPACE",
                "STATE",
                "ACTION",
                "DIRECTION",
                "TARGETS",
                "PEERS",
                "EXPIRES",
                "MATCHED",
                "DROPPED",
                "CORRUPTED",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for f in faults {
            let peers = if f.spec.all_peers() {
                "all".into()
            } else {
                (f.peers.len() + f.peer_cidrs.len()).to_string()
            };
            rows.push(vec![
                f.id.clone(),
                f.spec.namespace.clone(),
                f.state.to_string(),
                action(f),
                format!("{:?}", f.spec.direction).to_lowercase(),
                f.targets.len().to_string(),
                peers,
                if f.state.is_live() {
                    ago_or_in(f.expires_at)
                } else {
                    "-".into()
                },
                f.counters.matched.to_string(),
                f.counters.dropped.to_string(),
                f.counters.corrupted.to_string(),
            ]);
        }
        table(rows);
    }

    /// One fault, in detail.
    pub fn fault(self, f: &Fault) {
        if self == Output::Json {
            return print_json(f);
        }
        println!("id:         {}", f.id);
        println!(
            "state:      {}{}",
            f.state,
            f.message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        println!("action:     {}", action(f));
        println!("direction:  {:?}", f.spec.direction);
        println!("created:    {}", f.created_at);
        println!("expires:    {} ({})", f.expires_at, ago_or_in(f.expires_at));
        println!(
            "targets:    {}",
            f.targets
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if f.spec.all_peers() {
            println!("peers:      all");
        } else {
            let mut peers: Vec<String> = f
                .peers
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            peers.extend(f.peer_cidrs.iter().map(|c| c.to_string()));
            println!("peers:      {}", peers.join(", "));
        }
        for m in &f.steady {
            let state = if m.breached { "breached" } else { "holds" };
            println!("steady:     {} {state}: {}", m.condition, m.detail);
        }
        for (why, ips) in &f.protected {
            println!(
                "protected:  {why}: {}",
                ips.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(b) = &f.blast_radius {
            println!("blast:      {}", blast(b));
        }
        println!("counters:   {}", counters(&f.counters));
        for (node, c) in &f.nodes {
            println!("  {node}: {}", counters(c));
        }
        for w in &f.warnings {
            println!("warning:    {w}");
        }
    }

    /// A new fault: its id (warnings on stderr), or all of it in JSON.
    pub fn created(self, f: &Fault) {
        for w in &f.warnings {
            eprintln!("warning: {w}");
        }
        match self {
            Output::Json => print_json(f),
            Output::Table => println!("{}", f.id),
        }
    }

    /// A dry run's plan: targets and peers per node, rule count, blast radius, and the
    /// guards it would trip; or all of it in JSON.
    pub fn plan(self, p: &fault_api::FaultPlan) {
        if self == Output::Json {
            return print_json(p);
        }
        let verdict = if p.accepted {
            "would be accepted"
        } else {
            "would be refused"
        };
        println!("dry run:    {verdict} (nothing applied)");
        for r in &p.refusals {
            println!("refused:    {r}");
        }
        println!("duration:   {}", p.duration);
        if let Some(b) = &p.blast_radius {
            println!("blast:      {}", blast(b));
        }
        for (node, n) in &p.nodes {
            let node = if node.is_empty() { "(no node)" } else { node };
            println!("node {node}:");
            println!("  targets:  {}", n.targets.join(", "));
            if !n.peers.is_empty() {
                println!("  peers:    {}", n.peers.join(", "));
            }
        }
        if let Some(r) = p.rules {
            println!("rules:      {r}");
        }
        for w in &p.warnings {
            println!("warning:    {w}");
        }
    }

    /// A recovered fault.
    pub fn recovered(self, f: &Fault) {
        match self {
            Output::Json => print_json(f),
            Output::Table => println!("{} {}", f.id, f.state),
        }
    }
}

/// `mode[ value]: chosen of candidates: pods`.
fn blast(b: &fault_api::BlastRadius) -> String {
    let value = b.value.map(|v| format!(" {v}")).unwrap_or_default();
    format!(
        "mode {}{value}: {} of {} matching: {}",
        b.mode,
        b.chosen.len(),
        b.candidates,
        b.chosen.join(", ")
    )
}
