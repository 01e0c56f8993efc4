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
