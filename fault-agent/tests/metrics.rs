//! `/metrics` scraped by a real Prometheus: the dropped share of a 30% loss fault, read with
//! PromQL over Prometheus's HTTP API, against what the receiver measured on real packets; and
//! the fault's series gone after recover, from `/metrics` and from Prometheus.
mod common;
mod prometheus;

use common::scrape_metrics;

use std::time::{Duration, Instant};

use fault_api::{FaultSpec, client::Client};
use fault_testkit::{
    DynamoEnv, Family, StreamOpts,
    probe::{udp_stream, udp_stream_background},
    serial,
};
use prometheus::Prometheus;

const TOKEN: &str = "metrics-test-token";

/// Polls `query` until `done` holds for its result, or `within` passes.
fn wait_query(
    p: &Prometheus,
    query: &str,
    within: Duration,
    done: impl Fn(&[prometheus::Sample]) -> bool,
) -> Vec<prometheus::Sample> {
    let start = Instant::now();
    loop {
        let v = p.query(query).expect("query runs");
        if done(&v) || start.elapsed() > within {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn single(v: &[prometheus::Sample], what: &str) -> f64 {
    assert_eq!(v.len(), 1, "{what}: one sample expected, got {v:?}");
    v[0].value
}

#[test]
fn prometheus_sees_the_dropped_share_of_a_loss_fault_and_its_series_go_after_recover() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let env = DynamoEnv::start_with(&["--token-file", token_file.to_str().unwrap()]).unwrap();
    let url = env.agent.api_url();
    let client = Client::new(&url).with_token(Some(TOKEN.into()));
    let p = &env.pods;
    let base = udp_stream(&p.decode0, &p.prefill, Family::V4, &StreamOpts::default()).unwrap();
    assert_eq!(
        base.received, base.sent,
        "baseline must be lossless: {base}"
    );

    // Same auth as the rest of the API.
    assert_eq!(scrape_metrics(&url, None).0, 401);
    assert_eq!(scrape_metrics(&url, Some("wrong")).0, 403);
    let prom = Prometheus::start(env.agent.listen_addr(), &token_file).unwrap();

    let mut spec = FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
    spec.protocol = Some(fault_api::Protocol::Udp);
    spec.loss_percent = Some("30".parse().unwrap());
    let fault = client.create(&spec).unwrap();
    let id = fault.id.clone();

    let (code, text) = scrape_metrics(&url, Some(TOKEN));
    assert_eq!(code, 200, "{text}");
    let series = format!("fault_id=\"{id}\"");
    assert!(
        text.lines()
            .any(|l| l.starts_with("faultline_fault_matched_packets_total{")
                && l.contains(&series)
                && l.contains("kind=\"loss\"")
                && l.contains("namespace=\"dynamo\"")
                && l.contains("direction=\"egress\"")),
        "{text}"
    );
    assert!(
        text.contains(
            "chaos_network_partitions_created_total{scenario=\"loss\",partition_type=\"custom\"} 1"
        ),
        "{text}"
    );

    // 2,000 datagrams a second for 14 s, Prometheus scraping every second.
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 2_000,
        ..StreamOpts::default()
    };
    let stream = udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    std::thread::sleep(Duration::from_secs(14));
    let dropped = format!("faultline_fault_dropped_packets_total{{{series}}}");
    let matched = format!("faultline_fault_matched_packets_total{{{series}}}");
    let rate_query = format!("sum(rate({dropped}[10s])) / sum(rate({matched}[10s]))");
    let rate_share = single(&prom.query(&rate_query).unwrap(), &rate_query) * 100.0;
    let r = stream.stop().unwrap();
    let receiver = r.loss_ratio() * 100.0;

    // After the stream, the last scrape holds every count: the shares of the totals.
    let kernel = client.get_fault(&id).unwrap().counters;
    let total_query = format!("{dropped} / {matched}");
    let settled = wait_query(&prom, &matched, Duration::from_secs(10), |v| {
        v.first().is_some_and(|s| s.value as u64 == kernel.matched)
    });
    assert_eq!(
        single(&settled, &matched) as u64,
        kernel.matched,
        "Prometheus's last scrape has the kernel's count"
    );
    let total_share = single(&prom.query(&total_query).unwrap(), &total_query) * 100.0;
    eprintln!(
        "receiver: {r}; loss {receiver:.2}%; PromQL {rate_query} = {rate_share:.2}%; {total_query} = {total_share:.2}%; kernel {kernel:?}"
    );
    assert!(r.sent >= 20_000, "{r}");
    assert!(
        (rate_share - receiver).abs() <= 3.0,
        "dropped share over the last 10 s {rate_share:.2}% vs the receiver's {receiver:.2}%"
    );
    assert!(
        (total_share - receiver).abs() <= 3.0,
        "dropped share of the totals {total_share:.2}% vs the receiver's {receiver:.2}%"
    );
    assert_eq!(
        kernel.dropped,
        r.sent - r.received,
        "the kernel's count is what the receiver missed"
    );

    client.recover(&id).unwrap();
    let (_, text) = scrape_metrics(&url, Some(TOKEN));
    assert!(
        !text.contains(&series),
        "a recovered fault's series are gone from /metrics:\n{text}"
    );
    assert!(
        text.contains("faultline_faults{phase=\"recovered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chaos_experiment_status{experiment_type=\"network_degradation\",status=\"recovered\"} 1"),
        "{text}"
    );
    // Prometheus marks them stale at its next scrape: the instant query is empty.
    let gone = wait_query(&prom, &matched, Duration::from_secs(10), |v| v.is_empty());
    assert!(gone.is_empty(), "still in Prometheus: {gone:?}");
    let lifted = wait_query(
        &prom,
        "faultline_fault_lift_duration_seconds_count",
        Duration::from_secs(10),
        |v| v.first().is_some_and(|s| s.value == 1.0),
    );
    assert_eq!(single(&lifted, "lift count"), 1.0);
    assert!(prom.target_up(), "{}", prom.log());
}

/// Every `expr` string anywhere in `v` (Grafana panel targets, rule groups).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push(e.to_owned()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names of a PromQL expression that are ours (`faultline_*`, `chaos_*`): its
/// identifiers outside quoted strings.
fn our_metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("faultline_") || word.starts_with("chaos_") {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

/// A Grafana expression as Prometheus can run it: the dashboard's variables replaced by what
/// "All" and the default interval give.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", ".*")
        .replace("$node", ".*")
        .replace("$job", ".*")
}

#[test]
fn the_grafana_dashboard_and_the_alert_rules_use_served_metrics_and_run_in_prometheus() {
    let _s = serial();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let rules_file = root.join("faultline-alerts.yaml");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("faultline-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let rules: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules_file).unwrap())
            .expect("the rules are YAML");
    let (mut panel_exprs, mut rule_exprs) = (Vec::new(), Vec::new());
    exprs(&dashboard["panels"], &mut panel_exprs);
    exprs(&rules, &mut rule_exprs);
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");
    assert_eq!(rule_exprs.len(), 7, "{rule_exprs:?}");

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let env = DynamoEnv::start_with(&["--token-file", token_file.to_str().unwrap()]).unwrap();
    let url = env.agent.api_url();
    let client = Client::new(&url).with_token(Some(TOKEN.into()));
    let mut spec = FaultSpec::new("dynamo");
    spec.pod_prefix = Some("vllm-decode-0".into());
    spec.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
    spec.loss_percent = Some("30".parse().unwrap());
    spec.duration = Some("5m".parse().unwrap());
    let id = client.create(&spec).unwrap().id;

    // Every one of our names the dashboard and the rules use is a sample /metrics serves
    // (with a live fault, so that the per-fault families have samples).
    let (code, text) = scrape_metrics(&url, Some(TOKEN));
    assert_eq!(code, 200, "{text}");
    // The sample names each declared family has (a histogram without observations yet, e.g.
    // the duration of ended experiments, is declared with no samples).
    let served: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .flat_map(|(name, kind)| {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for e in panel_exprs.iter().chain(&rule_exprs) {
        used.extend(our_metric_names(e));
    }
    let missing: Vec<_> = used.iter().filter(|n| !served.contains(*n)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");
    assert!(used.len() >= 15, "{used:?}");

    // Prometheus loads the rules, every rule evaluates, none fires on a healthy agent, and
    // every panel's query runs; the per-fault panels show the live fault.
    let prom =
        Prometheus::start_with_rules(env.agent.listen_addr(), &token_file, Some(&rules_file))
            .unwrap();
    let stream = udp_stream_background(
        &env.pods.decode0,
        &env.pods.prefill,
        Family::V4,
        &StreamOpts {
            count: u64::MAX,
            rate_pps: 500,
            ..StreamOpts::default()
        },
    )
    .unwrap();
    // Prometheus's discovery hands it the target about 5 s after start; then a few scrapes
    // for the rates.
    let start = Instant::now();
    while !prom.target_up() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        prom.target_up(),
        "{}\n{}",
        prom.api("/api/v1/targets").unwrap(),
        prom.log()
    );
    let groups = prom.api("/api/v1/rules").unwrap();
    let loaded: Vec<&serde_json::Value> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), 7, "{groups}");
    for r in &loaded {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {r}",
            r["name"]
        );
        assert_ne!(
            r["state"], "firing",
            "{} fires on a healthy agent: {r}",
            r["name"]
        );
    }
    for e in &panel_exprs {
        let q = as_promql(e);
        let v = prom.query(&q).unwrap_or_else(|err| panic!("{err:#}"));
        if e.contains("faultline_fault_matched_packets_total")
            || e.contains("faultline_fault_expiry_timestamp_seconds")
        {
            assert!(
                v.iter()
                    .any(|s| s.labels.get("fault_id") == Some(&id.clone().into())),
                "{q}: no series of {id}: {v:?}"
            );
        }
    }
    let left = format!(
        "max by (fault_id) (faultline_fault_expiry_timestamp_seconds{{fault_id=\"{id}\"}}) - time()"
    );
    let left = single(&prom.query(&left).unwrap(), &left);
    assert!(
        (240.0..=300.0).contains(&left),
        "time left {left} s of a 5 m fault"
    );
    stream.stop().unwrap();
    client.recover(&id).unwrap();
}
