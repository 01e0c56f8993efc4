//! `faultctl watch` and `faultctl get -w`: a table of faults refreshed every `--interval`,
//! like `kubectl get -w` and `top`, with packet rates from successive polls.
//!
//! On a terminal each refresh redraws the screen (plain ANSI: cursor home, clear); otherwise
//! (a pipe, a file, a test) each refresh prints a whole table after a blank line. With
//! `-o json`, one JSON object per refresh and line.
use std::{
    collections::HashMap,
    io::IsTerminal as _,
    num::NonZeroU64,
    time::{Duration, Instant},
};

use clap::Args;
use fault_api::{Counters, Fault, client::Client};

use crate::output::{CliError, Output, action, table};

/// The shortest and longest `--interval`.
const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// How often and how many times to refresh.
#[derive(Args, Debug, Clone)]
pub struct Refresh {
    /// Time between refreshes (100ms to 1h; e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = interval)]
    interval: Duration,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<NonZeroU64>,
}

/// `faultctl watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    #[command(flatten)]
    refresh: Refresh,
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 500ms or 2s ({e})"))?;
    let (min, max) = INTERVAL_RANGE;
    if d < min || d > max {
        return Err(format!(
            "{s} is out of range: the interval must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// What to poll: every fault (of a namespace), or one.
pub enum Subject {
    All { namespace: Option<String> },
    One { id: String },
}

impl Subject {
    fn poll(&self, client: &Client) -> Result<Vec<Fault>, CliError> {
        Ok(match self {
            Subject::All { namespace } => client.list(namespace.as_deref())?.faults,
            Subject::One { id } => vec![client.get_fault(id)?],
        })
    }
}

/// One fault's line of a refresh. Rates are packets per second since the previous refresh
/// (`None` on the first one).
#[derive(Debug, serde::Serialize)]
struct Row {
    id: String,
    namespace: String,
    kind: String,
    phase: String,
    /// Seconds until the deadline (`None` once ended).
    left_s: Option<i64>,
    matched_per_s: Option<f64>,
    dropped_per_s: Option<f64>,
    counters: Counters,
}

/// The previous poll's counters of each fault, and when they were read.
#[derive(Default)]
struct Rates {
    last: HashMap<String, (Counters, Instant)>,
}

impl Rates {
    /// Rows for `faults` read at `now`; remembers their counters for the next refresh.
    fn rows(&mut self, faults: &[Fault], now: Instant) -> Vec<Row> {
        let rows = faults
            .iter()
            .map(|f| {
                let per_s = self.last.get(&f.id).and_then(|(c, at)| {
                    let secs = now.duration_since(*at).as_secs_f64();
                    (secs > 0.0).then(|| {
                        let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
                        (
                            rate(f.counters.matched, c.matched),
                            rate(f.counters.dropped, c.dropped),
                        )
                    })
                });
                Row {
                    id: f.id.clone(),
                    namespace: f.spec.namespace.clone(),
                    kind: action(f),
                    phase: f.state.to_string(),
                    left_s: f.state.is_live().then(|| {
                        f.expires_at
                            .duration_since(jiff::Timestamp::now())
                            .as_secs()
                            .max(0)
                    }),
                    matched_per_s: per_s.map(|r| r.0),
                    dropped_per_s: per_s.map(|r| r.1),
                    counters: f.counters,
                }
            })
            .collect();
        self.last = faults
            .iter()
            .map(|f| (f.id.clone(), (f.counters, now)))
            .collect();
        rows
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.1}"))
}

fn render(out: Output, rows: &[Row], tty: bool) {
    if out == Output::Json {
        return print_json_line(rows);
    }
    if tty {
        // Cursor home, clear the screen: redraw in place.
        print!("\x1b[H\x1b[2J");
    } else {
        println!();
    }
    let mut lines = vec![
        [
            "ID",
            "NAMESPACE",
            "KIND",
            "PHASE",
            "LEFT",
            "MATCHED/S",
            "DROPPED/S",
        ]
        .map(String::from)
        .to_vec(),
    ];
    lines.extend(rows.iter().map(|r| {
        vec![
            r.id.clone(),
            r.namespace.clone(),
            r.kind.clone(),
            r.phase.clone(),
            r.left_s.map_or("-".into(), |s| format!("{s}s")),
            rate(r.matched_per_s),
            rate(r.dropped_per_s),
        ]
    }));
    if rows.is_empty() {
        println!("no faults");
    } else {
        table(lines);
    }
}

fn print_json_line(rows: &[Row]) {
    match serde_json::to_string(&serde_json::json!({
        "at": jiff::Timestamp::now(),
        "faults": rows,
    })) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// Polls `subject` every `refresh.interval` and prints a table each time, `refresh.count`
/// times (or until interrupted). Fails with the first error of a poll (the agent gone, the
/// fault unknown).
pub fn run(
    client: &Client,
    out: Output,
    subject: Subject,
    refresh: Refresh,
) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut rates = Rates::default();
    let mut done = 0u64;
    loop {
        let started = Instant::now();
        let faults = subject.poll(client)?;
        render(out, &rates.rows(&faults, Instant::now()), tty);
        done += 1;
        if refresh.count.is_some_and(|n| done >= n.get()) {
            return Ok(());
        }
        std::thread::sleep(refresh.interval.saturating_sub(started.elapsed()));
    }
}

/// `faultctl watch` as a [`Subject`] and its [`Refresh`].
pub fn split(args: WatchArgs) -> (Subject, Refresh) {
    (
        Subject::All {
            namespace: args.namespace,
        },
        args.refresh,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(matched: u64, dropped: u64) -> Fault {
        let now = jiff::Timestamp::now();
        Fault {
            id: "f-0123456789".into(),
            spec: fault_api::FaultSpec::new("dynamo"),
            state: fault_api::FaultState::Active,
            message: None,
            created_at: now,
            expires_at: now + jiff::SignedDuration::from_secs(60),
            ended_at: None,
            targets: vec![],
            peers: vec![],
            peer_cidrs: vec![],
            protected: Default::default(),
            counters: Counters {
                matched,
                dropped,
                ..Counters::default()
            },
            nodes: Default::default(),
            warnings: vec![],
            verification: None,
            blast_radius: None,
            schedule: None,
            steady: vec![],
        }
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_time_between_polls() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let first = rates.rows(&[fault(100, 30)], t0);
        assert_eq!(first[0].matched_per_s, None, "no rate before a second poll");
        let second = rates.rows(&[fault(4100, 1230)], t0 + Duration::from_secs(2));
        assert_eq!(second[0].matched_per_s, Some(2000.0));
        assert_eq!(second[0].dropped_per_s, Some(600.0));
        assert!(second[0].left_s.is_some_and(|s| (0..=60).contains(&s)));
    }

    #[test]
    fn an_interval_out_of_range_is_refused_with_the_range() {
        assert_eq!(interval("500ms"), Ok(Duration::from_millis(500)));
        let e = interval("10ms").unwrap_err();
        assert!(e.contains("100ms") && e.contains("1h"), "{e}");
        assert!(interval("soon").unwrap_err().contains("500ms or 2s"));
    }
}
