//! The encoded text: every documented series is there with its type, labels are the documented
//! ones, and a fault's series exist only while it is live.
use std::{collections::BTreeSet, time::Duration};

use fault_api::{Counters, FaultSpec, FaultState};

use super::{
    Metrics, Recorder, Source,
    snapshot::{FaultCounters, FaultPhase, MapFill, Snapshot},
};

fn live_fault() -> FaultCounters {
    FaultCounters {
        fault_id: "f-abc".into(),
        namespace: "dynamo".into(),
        kind: "loss".into(),
        direction: "egress",
        node: "host-a".into(),
        counters: Counters {
            matched: 1000,
            dropped: 300,
            ..Counters::default()
        },
        expires_at: 1_700_000_000,
    }
}

fn snapshot(live: bool) -> Snapshot {
    Snapshot {
        counters: if live { vec![live_fault()] } else { vec![] },
        phases: vec![FaultPhase {
            state: if live {
                FaultState::Active
            } else {
                FaultState::Recovered
            },
            experiment_type: "network_degradation",
        }],
        maps: vec![MapFill {
            map: "FL_RULES",
            entries: 12,
            capacity: 262_144,
        }],
        pods: vec![("local", 5), ("remote", 0), ("unresolved", 0)],
        unattached: Some(0),
        last_reconcile: Some(1_700_000_000),
        kill_switch: Some(false),
    }
}

fn encoded(live: bool) -> String {
    let recorder = Recorder::default();
    let mut spec = FaultSpec::new("dynamo");
    spec.loss_percent = Some("30".parse().unwrap());
    recorder.created(&spec);
    recorder.applied(Duration::from_millis(3));
    recorder.lifted(Duration::from_millis(2));
    recorder.reconcile_took(Duration::from_millis(1));
    recorder.expired_late(Duration::from_millis(4));
    recorder.attach_failed(2);
    recorder.ended(&spec, Duration::from_secs(30));
    Metrics::new(recorder, Some(Source::Fixed(snapshot(live))))
        .encode()
        .unwrap()
}

/// `(name, type)` of each `# TYPE` line.
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// The series names of the metrics table in DEVELOPERS.md (first column, in backticks).
fn documented() -> BTreeSet<String> {
    let doc = include_str!("../../../DEVELOPERS.md");
    let table = doc
        .split("<!-- metrics table -->")
        .nth(1)
        .expect("DEVELOPERS.md has the metrics table between <!-- metrics table --> markers");
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// A sample's name: a family's, with the suffixes OpenMetrics adds.
fn family_of(sample: &str, families: &BTreeSet<(String, String)>) -> Option<String> {
    let name = sample.split(['{', ' ']).next()?;
    families
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            name == n.as_str()
                || ["_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|s| name.strip_prefix(n.as_str()) == Some(s))
        })
        .max_by_key(|n| n.len())
        .cloned()
}

#[test]
fn every_series_is_documented_and_every_documented_one_is_served() {
    let text = encoded(true);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let fams = families(&text);
    // A counter's samples end in _total: the table names the samples.
    let served: BTreeSet<String> = fams
        .iter()
        .map(|(n, t)| match t.as_str() {
            "counter" => format!("{n}_total"),
            _ => n.clone(),
        })
        .collect();
    let docs = documented();
    assert_eq!(
        served, docs,
        "served (left) vs DEVELOPERS.md's table (right)"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            family_of(line, &fams).is_some(),
            "a sample of no family: {line}"
        );
    }
}

#[test]
fn a_live_faults_counters_carry_its_labels_and_are_gone_once_it_ended() {
    let text = encoded(true);
    let labels =
        r#"{fault_id="f-abc",namespace="dynamo",kind="loss",direction="egress",node="host-a"}"#;
    for (name, value) in [
        ("faultline_fault_matched_packets_total", 1000),
        ("faultline_fault_dropped_packets_total", 300),
        ("faultline_fault_corrupted_packets_total", 0),
        ("faultline_fault_duplicated_packets_total", 0),
        ("faultline_fault_delayed_packets_total", 0),
        ("faultline_fault_expiry_timestamp_seconds", 1_700_000_000),
    ] {
        let line = format!("{name}{labels} {value}");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for line in [
        r#"faultline_faults{phase="active"} 1"#,
        r#"faultline_faults{phase="recovered"} 0"#,
        r#"chaos_experiment_status{experiment_type="network_degradation",status="active"} 1"#,
        r#"chaos_experiment_status{experiment_type="network_partition",status="active"} 0"#,
        r#"chaos_network_partitions_created_total{scenario="loss",partition_type="custom"} 1"#,
        r#"chaos_experiment_duration_seconds_count{experiment_type="network_degradation"} 1"#,
        r#"faultline_map_entries{map="FL_RULES"} 12"#,
        r#"faultline_map_capacity_entries{map="FL_RULES"} 262144"#,
        r#"faultline_pods{scope="local"} 5"#,
        "faultline_attach_failures_total 2",
        "faultline_fault_apply_duration_seconds_count 1",
        "faultline_last_reconcile_timestamp_seconds 1700000000",
        "faultline_kill_switch_engaged 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let ended = encoded(false);
    assert!(!ended.contains("f-abc"), "{ended}");
    assert!(
        ended.contains(r#"faultline_faults{phase="recovered"} 1"#),
        "{ended}"
    );
    // The families stay declared (with no samples): dashboards see no type change.
    assert_eq!(families(&ended), families(&text));
}
